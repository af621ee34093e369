/*
 * handles.c — the registry of live objects behind the public handles.
 *
 * A handle (ha_runtime *, ha_weights *, ha_plan *, ha_cache *) is not the object's address but a
 * token: the index of a slot in this registry and the slot's generation, packed into a pointer-sized
 * value. Every public call looks its handles up here before touching anything, so a handle that was
 * already destroyed (the slot's generation has moved on, even if the slot or the object's old
 * address was reused since), one of another kind, or a value that never was a handle is answered with
 * a status and a message instead of undefined behaviour. Nothing the caller passes is dereferenced.
 *
 * Lookups are lock-free (slots never move: they live in chunks that are allocated once and kept
 * until the process ends); registration, removal and the lifetime counts of the objects take one
 * process-wide mutex, which only object creation and destruction touch.
 */
#include <pthread.h>
#include <stdlib.h>

#include "internal.h"

#define CHUNK_SLOTS 1024
#define MAX_CHUNKS 16384 /* 16M live objects at most */
/* generation in the high half of the handle, slot + 1 in the low half (a handle is never NULL) */
#define HALF_BITS (sizeof(uintptr_t) * 4)
#define LOW_MASK ((((uintptr_t)1) << HALF_BITS) - 1)

typedef struct slot {
    uint32_t generation; /* of the handle that names this slot now (atomic)        */
    uint32_t kind;       /* ha_kind of the live object, HA_KIND_NONE when free      */
    void *object;
    uint32_t next_free;  /* index + 1 of the next free slot (under the mutex)       */
} slot;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static slot *chunks[MAX_CHUNKS];
static uint32_t slots_made; /* slots handed out so far (they are recycled through free_list) */
static uint32_t free_list;  /* index + 1 of the first free slot, 0: none */

static const char *kind_name(uint32_t kind)
{
    switch (kind) {
    case HA_KIND_RUNTIME: return "runtime";
    case HA_KIND_WEIGHTS: return "weights";
    case HA_KIND_PLAN: return "plan";
    case HA_KIND_CACHE: return "cache";
    default: return "object";
    }
}

static const char *arg_name(ha_kind kind)
{
    switch (kind) {
    case HA_KIND_RUNTIME: return "rt";
    case HA_KIND_WEIGHTS: return "w";
    case HA_KIND_PLAN: return "plan";
    default: return "cache";
    }
}

static uint32_t generation_limit(void)
{
    return HALF_BITS >= 32 ? UINT32_MAX : (uint32_t)LOW_MASK;
}

void ha_lifecycle_lock(void)
{
    pthread_mutex_lock(&lock);
}

void ha_lifecycle_unlock(void)
{
    pthread_mutex_unlock(&lock);
}

/** Slot of index i (i < slots_made), or NULL. Safe without the mutex. */
static slot *slot_at(uintptr_t i)
{
    if (i >= (uintptr_t)MAX_CHUNKS * CHUNK_SLOTS)
        return NULL;
    slot *chunk = __atomic_load_n(&chunks[i / CHUNK_SLOTS], __ATOMIC_ACQUIRE);
    return chunk ? &chunk[i % CHUNK_SLOTS] : NULL;
}

void *ha_handle_register(ha_kind kind, void *object)
{
    slot *s = NULL;
    uint32_t index = 0;
    if (free_list) {
        index = free_list - 1;
        s = slot_at(index);
        free_list = s->next_free;
    } else {
        index = slots_made;
        if ((uintptr_t)index + 1 > LOW_MASK || index >= (uint32_t)MAX_CHUNKS * CHUNK_SLOTS)
            return NULL;
        slot **chunk = &chunks[index / CHUNK_SLOTS];
        if (!*chunk) {
            slot *fresh = ha_calloc(CHUNK_SLOTS, sizeof(slot));
            if (!fresh)
                return NULL;
            for (int i = 0; i < CHUNK_SLOTS; i++)
                fresh[i].generation = 1;
            __atomic_store_n(chunk, fresh, __ATOMIC_RELEASE);
        }
        __atomic_store_n(&slots_made, slots_made + 1, __ATOMIC_RELAXED);
        s = slot_at(index);
    }
    __atomic_store_n(&s->object, object, __ATOMIC_RELAXED);
    __atomic_store_n(&s->kind, (uint32_t)kind, __ATOMIC_RELEASE);
    uint32_t gen = __atomic_load_n(&s->generation, __ATOMIC_RELAXED);
    return (void *)(((uintptr_t)gen << HALF_BITS) | ((uintptr_t)index + 1));
}

void ha_handle_unregister(const void *handle)
{
    uintptr_t v = (uintptr_t)handle, index = (v & LOW_MASK) - 1;
    slot *s = slot_at(index);
    uint32_t next = s->generation == generation_limit() ? 1 : s->generation + 1;
    __atomic_store_n(&s->kind, (uint32_t)HA_KIND_NONE, __ATOMIC_RELAXED);
    __atomic_store_n(&s->generation, next, __ATOMIC_RELEASE);
    __atomic_store_n(&s->object, NULL, __ATOMIC_RELAXED);
    s->next_free = free_list;
    free_list = (uint32_t)index + 1;
}

/* What a handle value names; found without side effects, so that it may run under the lock. */
typedef enum found { FOUND, FOUND_NULL, FOUND_FOREIGN, FOUND_DESTROYED, FOUND_OTHER_KIND } found;

static found find(ha_kind kind, const void *handle, void **object, uint32_t *seen_kind)
{
    *object = NULL;
    if (!handle)
        return FOUND_NULL;
    uintptr_t v = (uintptr_t)handle;
    uint32_t gen = (uint32_t)(v >> HALF_BITS);
    uintptr_t low = v & LOW_MASK;
    slot *s = gen && low && low <= __atomic_load_n(&slots_made, __ATOMIC_RELAXED) ? slot_at(low - 1) : NULL;
    if (!s)
        return FOUND_FOREIGN;
    *seen_kind = __atomic_load_n(&s->kind, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&s->generation, __ATOMIC_ACQUIRE) != gen || *seen_kind == HA_KIND_NONE)
        return FOUND_DESTROYED;
    if (*seen_kind != (uint32_t)kind)
        return FOUND_OTHER_KIND;
    *object = __atomic_load_n(&s->object, __ATOMIC_RELAXED);
    return FOUND;
}

/** The status and message of what find said (outside the lock: ha_fail runs the log callback). */
static ha_status report(const char *fn, ha_kind kind, const void *handle, found f, uint32_t seen_kind)
{
    const char *arg = arg_name(kind);
    switch (f) {
    case FOUND: return HA_OK;
    case FOUND_NULL: return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, arg);
    case FOUND_FOREIGN:
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s = %p is not a handle the library returned", fn, arg, handle);
    case FOUND_DESTROYED:
        return ha_fail(HA_ERR_STATE, "%s: %s = %p was already destroyed (used after being freed or closed)", fn, arg,
                       handle);
    default:
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s = %p is a %s handle, not a %s handle", fn, arg, handle,
                       kind_name(seen_kind), kind_name(kind));
    }
}

ha_status ha_handle_lookup(const char *fn, ha_kind kind, const void *handle, void **object)
{
    uint32_t seen_kind = HA_KIND_NONE;
    found f = find(kind, handle, object, &seen_kind);
    return report(fn, kind, handle, f, seen_kind);
}

ha_status ha_handle_take(const char *fn, ha_kind kind, const void *handle, void **object)
{
    uint32_t seen_kind = HA_KIND_NONE;
    ha_lifecycle_lock();
    found f = find(kind, handle, object, &seen_kind);
    if (f == FOUND)
        ha_handle_unregister(handle);
    ha_lifecycle_unlock();
    return report(fn, kind, handle, f, seen_kind);
}

void *ha_handle_publish(ha_kind kind, void *object, int *parent_users, int *grandparent_users)
{
    ha_lifecycle_lock();
    void *handle = ha_handle_register(kind, object);
    if (handle) {
        if (parent_users)
            ++*parent_users;
        if (grandparent_users)
            ++*grandparent_users;
    }
    ha_lifecycle_unlock();
    return handle;
}

int ha_lifecycle_drop_user(int *users, const int *released)
{
    ha_lifecycle_lock();
    int last = --*users == 0 && *released;
    ha_lifecycle_unlock();
    return last;
}

int ha_lifecycle_release(int *released, const int *users, int *users_left)
{
    ha_lifecycle_lock();
    *released = 1;
    *users_left = *users;
    ha_lifecycle_unlock();
    return *users_left == 0;
}
