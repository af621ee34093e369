/*
 * host_alloc.c — see host_alloc.h. Unarmed, each wrapper costs one relaxed atomic load.
 */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "host_alloc.h"

static uint64_t fail_at; /* 0: disarmed */
static uint64_t counted;
static int failed_in_json;

int ha_alloc_should_fail(void)
{
    uint64_t target = __atomic_load_n(&fail_at, __ATOMIC_RELAXED);
    if (target == 0)
        return 0;
    return __atomic_add_fetch(&counted, 1, __ATOMIC_RELAXED) == target;
}

void *ha_malloc(size_t bytes)
{
    return ha_alloc_should_fail() ? NULL : malloc(bytes);
}

void *ha_calloc(size_t count, size_t size)
{
    return ha_alloc_should_fail() ? NULL : calloc(count, size);
}

void *ha_aligned_alloc(size_t alignment, size_t bytes)
{
    if (bytes > SIZE_MAX - (alignment - 1))
        return NULL;
    size_t rounded = bytes == 0 ? alignment : (bytes + alignment - 1) & ~(alignment - 1);
    return ha_alloc_should_fail() ? NULL : aligned_alloc(alignment, rounded);
}

char *ha_strdup(const char *s)
{
    return ha_alloc_should_fail() ? NULL : strdup(s);
}

char *ha_strndup(const char *s, size_t n)
{
    return ha_alloc_should_fail() ? NULL : strndup(s, n);
}

void ha_free(void *p)
{
    free(p);
}

/* jansson's allocations (the safetensors header parse) count too while the hook is armed; its
 * memory still comes from malloc, so blocks allocated before or after arming free alike. */
static void *json_counted_malloc(size_t bytes)
{
    void *p = ha_malloc(bytes);
    if (!p)
        __atomic_store_n(&failed_in_json, 1, __ATOMIC_RELAXED);
    return p;
}

HA_TEST_HOOK void ha_test_alloc_fail_at(uint64_t n)
{
    __atomic_store_n(&counted, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&failed_in_json, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&fail_at, n, __ATOMIC_RELAXED);
    if (n)
        json_set_alloc_funcs(json_counted_malloc, free);
    else
        json_set_alloc_funcs(malloc, free);
}

HA_TEST_HOOK int ha_test_alloc_failed_in_json(void)
{
    return __atomic_load_n(&failed_in_json, __ATOMIC_RELAXED);
}

HA_TEST_HOOK uint64_t ha_test_alloc_count(void)
{
    return __atomic_load_n(&counted, __ATOMIC_RELAXED);
}
