/*
 * host_alloc.h — every host allocation of the core (objects, file parsing, the reference backend)
 * goes through these wrappers, so that a test can make the N-th allocation fail and check that each
 * allocation site fails cleanly (fault injection). Internal; not installed.
 */
#ifndef HA_HOST_ALLOC_H
#define HA_HOST_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void *ha_malloc(size_t bytes);
void *ha_calloc(size_t count, size_t size);
/** aligned_alloc with bytes rounded up to a multiple of alignment (a power of two). */
void *ha_aligned_alloc(size_t alignment, size_t bytes);
char *ha_strdup(const char *s);
char *ha_strndup(const char *s, size_t n);
void ha_free(void *p);

/** 1 when the fault-injection hook says this allocation must fail (counts it); for allocations made
 *  elsewhere, such as the core's requests for backend memory. */
int ha_alloc_should_fail(void);

/*
 * The test hook: symbols exported from libhashattn for its own tests only (they are not part of the
 * API in hashattn.h and may change at any time). While armed, every allocation through the wrappers
 * above and every jansson allocation is counted; the n-th one after arming fails (only that one).
 */
#define HA_TEST_HOOK __attribute__((visibility("default")))
/** Arms the hook: the n-th allocation from now on fails; n = 0 disarms it. */
HA_TEST_HOOK void ha_test_alloc_fail_at(uint64_t n);
/** Allocations counted since the hook was last armed. */
HA_TEST_HOOK uint64_t ha_test_alloc_count(void);
/** 1 when the allocation the hook failed was one of jansson's (since arming). */
HA_TEST_HOOK int ha_test_alloc_failed_in_json(void);

#endif /* HA_HOST_ALLOC_H */
