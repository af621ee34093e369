/*
 * internal.h — the core's private objects and helpers (not installed).
 */
#ifndef HA_INTERNAL_H
#define HA_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"
#include "hashattn_plugin.h"
#include "host_alloc.h"
#include "ptr_set.h"
#include "weights_host.h"

#define HA_INTERNAL __attribute__((visibility("hidden")))

/* ---- errors and logging (log.c) ------------------------------------------------------------ */

/** Records msg as this thread's last error, logs it at WARN, returns status. */
HA_INTERNAL ha_status ha_fail(ha_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
HA_INTERNAL void ha_log(ha_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** ha_log without formatting (the log service handed to plugins). */
HA_INTERNAL void ha_log_plain(ha_log_level level, const char *message);
/** Clears this thread's last error (at the start of each public call). */
HA_INTERNAL void ha_clear_error(void);

/* ---- backends (plugin_loader.c) ------------------------------------------------------------ */

typedef struct ha_backend {
    const ha_plugin_api *api;
    void *dl_handle; /**< NULL for the built-in reference */
    void *ctx;
    char path[4096];
} ha_backend;

/** Longest plugin name (ha_plugin_api.name) the core accepts. */
#define HA_PLUGIN_NAME_MAX 63

/**
 * Checks a table returned by a plugin's entry point (where names the plugin in messages): ABI
 * version, table size, the required members, the plan_create/plan_destroy pair and the name.
 * HA_ERR_ABI_MISMATCH with a message naming both sides' versions or the offending member.
 */
HA_INTERNAL ha_status ha_plugin_table_check(const ha_plugin_api *api, const char *where);
/** Resolves the choice (explicit, else $HASHATTN_BACKEND, else probing) and initializes the backend. */
HA_INTERNAL ha_status ha_backend_open(const char *explicit_choice, int32_t device, ha_backend *out);
HA_INTERNAL void ha_backend_close(ha_backend *b);
/** Turns a failed plugin call into ha_fail with the plugin's message. */
HA_INTERNAL ha_status ha_backend_fail(const ha_backend *b, ha_status st, const char *what);

/* ---- handles and lifetimes (handles.c) ----------------------------------------------------- */

typedef enum ha_kind { HA_KIND_NONE = 0, HA_KIND_RUNTIME, HA_KIND_WEIGHTS, HA_KIND_PLAN, HA_KIND_CACHE } ha_kind;

/**
 * The object behind a public handle of that kind. Fails (message naming fn and the argument: rt, w,
 * plan or cache) for NULL, a destroyed handle, a handle of another kind, or any other value; the
 * handle itself is never dereferenced.
 */
HA_INTERNAL ha_status ha_handle_lookup(const char *fn, ha_kind kind, const void *handle, void **object);
/** ha_handle_lookup and, on success, invalidates the handle (one atomic step: destroy, free, close). */
HA_INTERNAL ha_status ha_handle_take(const char *fn, ha_kind kind, const void *handle, void **object);
/** Registers a new object and counts it as a user of its runtime and weights (either may be NULL).
 *  Returns its handle, or NULL when out of memory. */
HA_INTERNAL void *ha_handle_publish(ha_kind kind, void *object, int *parent_users, int *grandparent_users);
/** One user of an object is gone; 1 when it was the last and the object's owner released it already. */
HA_INTERNAL int ha_lifecycle_drop_user(int *users, const int *released);
/** The owner releases an object; 1 when no user is left (*users_left: how many are). */
HA_INTERNAL int ha_lifecycle_release(int *released, const int *users, int *users_left);
/** The process-wide mutex of the registry and of the lifetime counts. */
HA_INTERNAL void ha_lifecycle_lock(void);
HA_INTERNAL void ha_lifecycle_unlock(void);
HA_INTERNAL void *ha_handle_register(ha_kind kind, void *object);   /* under the lock */
HA_INTERNAL void ha_handle_unregister(const void *handle);          /* under the lock */

/* ---- objects ------------------------------------------------------------------------------- */

/*
 * Lifetimes: a plan or cache is a user of its runtime and weights, weights a user of its runtime.
 * Freeing weights or closing a runtime invalidates the handle at once; the object itself lives on
 * until its last user is destroyed (released = 1 meanwhile).
 */
struct ha_runtime {
    ha_backend backend;
    ha_ptr_set blocks; /**< backend memory handed out by ha_mem_alloc and not yet freed */
    int users;    /**< weights, plans, caches alive (under the lifecycle lock) */
    int released; /**< ha_runtime_close was called                            */
};

struct ha_weights {
    ha_runtime *rt;
    ha_weights_host host;
    void **q_handles; /**< [num_layers] from mlp_upload; NULL for dense layers */
    void **k_handles;
    int users;        /**< plans and caches alive */
    int released;     /**< ha_weights_free was called */
};

struct ha_plan {
    ha_runtime *rt;
    ha_weights *w;
    ha_plan_desc desc;
    void *plugin_plan;
    /* scratch in backend memory for the composed decode step */
    uint32_t *q_codes;  /**< [max_batch, q_heads, words]          */
    int32_t *indices;   /**< [max_batch, sel_heads, max_kept]      */
    int32_t *counts;    /**< [max_batch, sel_heads]                */
};

struct ha_cache {
    ha_runtime *rt;
    ha_weights *w;
    ha_cache_config cfg;
    int32_t heads;       /**< key-code heads */
    int32_t words;
    int64_t stride_seq;  /**< in words: per sequence (contiguous) or per page (paged) */
    int64_t stride_head;
    uint32_t **codes;    /**< [num_layers]; NULL for dense layers */
    size_t bytes;
    int32_t *prefix;     /**< host-memory backends: [num_layers, max_batch or num_pages] tokens encoded (cache_state.c) */
};

/* ---- what a cache holds (cache_state.c) ---------------------------------------------------- */

HA_INTERNAL ha_status ha_cache_state_init(ha_cache *c, const char *fn);
HA_INTERNAL void ha_cache_state_free(ha_cache *c);
/** Records a successful encode of tokens [max(0, end[b]-count), end[b]) (arguments validated). */
HA_INTERNAL void ha_cache_note_encoded(ha_cache *c, int32_t layer, const ha_kv *kv, int32_t batch,
                                       const int32_t *end, int32_t count);
/** HA_ERR_STATE unless the codes of tokens [0, lens[b] - new_tokens) of every sequence are in the cache. */
HA_INTERNAL ha_status ha_cache_check_encoded(const char *fn, const ha_cache *c, int32_t layer, const ha_kv *kv,
                                             int32_t batch, const int32_t *lens, int32_t new_tokens);

/** A user of rt (weights, plan, cache) is gone: closes the runtime if it was released and this was the last. */
HA_INTERNAL void ha_runtime_drop_user(ha_runtime *rt);
/** A user of w (plan, cache) is gone: frees the weights if they were released and this was the last. */
HA_INTERNAL void ha_weights_drop_user(ha_weights *w);
/** bytes of backend memory (plan scratch, code caches, ha_mem_alloc); fault injection counts it. On
 *  failure: HA_ERR_OUT_OF_MEMORY, a message naming fn, what and the plugin's reason, *out NULL. */
HA_INTERNAL ha_status ha_backend_alloc(const ha_backend *b, const char *fn, const char *what, size_t bytes, void **out);

/** Selection heads of a plan: key-code heads, or q heads for a plan without weights. */
static inline int32_t ha_plan_sel_heads(const struct ha_plan *p)
{
    return p->desc.code_heads > 0 ? p->desc.code_heads : p->desc.q_heads;
}

/* ---- checked arithmetic (validate.c) ------------------------------------------------------- */

/** *out = a*b; returns 0 on overflow (or negative inputs). */
HA_INTERNAL int ha_mul_i64(int64_t a, int64_t b, int64_t *out);
HA_INTERNAL int ha_add_i64(int64_t a, int64_t b, int64_t *out);

/* ---- argument validation (validate.c): each returns HA_OK or ha_fail(...) naming fn and arg --- */

HA_INTERNAL ha_status ha_check_dtype(const char *fn, const char *what, ha_dtype dt);
/** q-like tensor [batch, heads, dim]; writable = output (rows must not overlap). */
HA_INTERNAL ha_status ha_check_tensor3(const char *fn, const char *what, const ha_tensor3 *t, int32_t batch,
                                       int32_t heads, int32_t dim, int writable);
/** seq_lens (host-memory backends only): every value in [0, max_len]. */
HA_INTERNAL ha_status ha_check_lengths(const ha_runtime *rt, const char *fn, const char *what, const int32_t *lens,
                                       int32_t batch, int64_t max_len);
/** KV layout (strides, sizes) and, on host-memory backends, lengths and block-table entries. */
HA_INTERNAL ha_status ha_check_kv(const ha_runtime *rt, const char *fn, const ha_kv *kv, int32_t batch,
                                  const int32_t *lens, int32_t kv_heads, int32_t head_dim);
HA_INTERNAL ha_status ha_check_plan_batch(const char *fn, const ha_plan *plan, int32_t batch);
HA_INTERNAL ha_status ha_check_layer(const char *fn, const ha_weights *w, int32_t layer);
/** The cache's layout agrees with kv's (page size; contiguous batch/token limits; paged pool size). */
HA_INTERNAL ha_status ha_check_cache_vs_kv(const char *fn, const ha_cache *cache, const ha_kv *kv, int32_t batch,
                                           const int32_t *lens);

/* ---- building plugin arguments (stages.c) -------------------------------------------------- */

HA_INTERNAL ha_rows ha_rows_from_kv(const ha_kv *kv, const void *data, int32_t heads, int32_t dim);
HA_INTERNAL ha_rows ha_rows_from_tensor3(const ha_tensor3 *t, int32_t heads, int32_t dim);

#endif /* HA_INTERNAL_H */
