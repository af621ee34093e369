/*
 * ptr_set.c — see ptr_set.h.
 */
#include <stdint.h>
#include <stdlib.h>

#include "host_alloc.h"
#include "ptr_set.h"

static size_t home(const ha_ptr_set *s, const void *p)
{
    uint64_t h = (uint64_t)(uintptr_t)p * 0x9e3779b97f4a7c15ull; /* Fibonacci hashing */
    return (size_t)(h >> 32) & (s->capacity - 1);
}

void ha_ptr_set_init(ha_ptr_set *s)
{
    pthread_mutex_init(&s->lock, NULL);
    s->slots = NULL;
    s->capacity = s->count = 0;
}

void ha_ptr_set_destroy(ha_ptr_set *s)
{
    free(s->slots);
    pthread_mutex_destroy(&s->lock);
}

static void insert(ha_ptr_set *s, void *p)
{
    size_t i = home(s, p);
    while (s->slots[i])
        i = (i + 1) & (s->capacity - 1);
    s->slots[i] = p;
    s->count++;
}

/** Keeps the load at most 1/2 (capacity a power of two). */
static int reserve(ha_ptr_set *s)
{
    if (2 * (s->count + 1) <= s->capacity)
        return 1;
    size_t capacity = s->capacity ? 2 * s->capacity : 16;
    void **slots = ha_calloc(capacity, sizeof *slots), **old = s->slots;
    if (!slots)
        return 0;
    size_t old_capacity = s->capacity;
    s->slots = slots;
    s->capacity = capacity;
    s->count = 0;
    for (size_t i = 0; i < old_capacity; i++)
        if (old[i])
            insert(s, old[i]);
    free(old);
    return 1;
}

int ha_ptr_set_add(ha_ptr_set *s, void *p)
{
    pthread_mutex_lock(&s->lock);
    int ok = reserve(s);
    if (ok)
        insert(s, p);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

int ha_ptr_set_remove(ha_ptr_set *s, void *p)
{
    pthread_mutex_lock(&s->lock);
    size_t i = s->capacity ? home(s, p) : 0;
    int found = 0;
    while (s->capacity && s->slots[i]) {
        if (s->slots[i] == p) {
            found = 1;
            break;
        }
        i = (i + 1) & (s->capacity - 1);
    }
    if (found) {
        /* backward-shift deletion: move later entries of the probe run into the hole */
        s->slots[i] = NULL;
        s->count--;
        for (size_t j = (i + 1) & (s->capacity - 1); s->slots[j]; j = (j + 1) & (s->capacity - 1)) {
            size_t h = home(s, s->slots[j]);
            /* the entry at j may move to the hole i unless its home lies cyclically in (i, j] */
            int stays = i <= j ? (h > i && h <= j) : (h > i || h <= j);
            if (!stays) {
                s->slots[i] = s->slots[j];
                s->slots[j] = NULL;
                i = j;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

size_t ha_ptr_set_count(ha_ptr_set *s)
{
    pthread_mutex_lock(&s->lock);
    size_t n = s->count;
    pthread_mutex_unlock(&s->lock);
    return n;
}
