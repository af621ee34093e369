/*
 * ptr_set.h — a set of pointers (open addressing, linear probing, backward-shift deletion) with its
 * own mutex: the blocks of backend memory a runtime handed out, so that ha_mem_free can refuse a
 * pointer it never allocated or already freed instead of passing it to the backend's free.
 */
#ifndef HA_PTR_SET_H
#define HA_PTR_SET_H

#include <pthread.h>
#include <stddef.h>

typedef struct ha_ptr_set {
    pthread_mutex_t lock;
    void **slots; /* capacity entries, NULL = empty */
    size_t capacity, count;
} ha_ptr_set;

void ha_ptr_set_init(ha_ptr_set *s);
void ha_ptr_set_destroy(ha_ptr_set *s);
/** Adds p (not NULL, not in the set); 0 when out of memory. */
int ha_ptr_set_add(ha_ptr_set *s, void *p);
/** Removes p; 0 when p was not in the set. */
int ha_ptr_set_remove(ha_ptr_set *s, void *p);
size_t ha_ptr_set_count(ha_ptr_set *s);

#endif /* HA_PTR_SET_H */
