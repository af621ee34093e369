/*
 * hashattn.h — public API of libhashattn, the HashAttention decode runtime.
 *
 * HashAttention (Desai et al., 2024) maps each post-RoPE query and key vector to a short binary code
 * with a small learned MLP, keeps the key codes in a cache, and at each decode step attends exactly
 * over only the tokens whose codes are nearest the query's in Hamming space (plus a few "sink" and
 * "local" tokens). This header is the whole contract between a host application and the runtime;
 * every declaration is documented here.
 *
 * Typical use (one model, one thread):
 *
 *     ha_runtime *rt;   ha_runtime_open(NULL, &rt);            // backend from HASHATTN_BACKEND or probe
 *     ha_weights *w;    ha_weights_load(rt, "codes.safetensors", &w);
 *     ha_plan *plan;    ha_plan_create(rt, w, &plan_config, &plan);
 *     ha_cache *cache;  ha_cache_create(rt, w, &cache_config, &cache);
 *     // after prefill wrote K/V into the host's KV cache:
 *     ha_cache_encode_keys(plan, cache, layer, &kv, batch, seq_lens, prompt_len, NULL);
 *     // each decode step, after the new token's K/V were appended:
 *     ha_decode_step(plan, cache, layer, &step);               // encode + match + attend
 *
 * Memory: the caller owns Q, K, V, outputs and per-step arrays (sequence lengths, block tables) and
 * places them in the backend's memory (host memory for CPU backends; device memory for GPU ones; see
 * ha_runtime_is_host_memory, ha_mem_alloc). The runtime owns what it creates (weights, caches, plans).
 *
 * Errors: every call returns an ha_status; on failure ha_last_error() says what was wrong (which
 * argument, which shape) and no output of the call was half-written by the runtime's validation.
 *
 * Handles: ha_runtime *, ha_weights *, ha_plan * and ha_cache * are opaque handles, not addresses:
 * each names a slot of the library's registry of live objects together with that slot's generation.
 * Every call looks its handles up before using them, so passing a handle that was already destroyed
 * (use after free, closing twice), a handle of another kind, or any value the library never returned
 * is answered with a status (HA_ERR_STATE for a destroyed handle, else HA_ERR_INVALID_ARGUMENT) and
 * a message naming the argument; nothing the caller passed is dereferenced. Calls returning void
 * (close, free, destroy) or a value (getters) report such a handle through ha_last_error() and do
 * nothing. A stale handle stays detectable until its slot has been reused 2^32 times. Pointers to
 * backend memory are plain addresses; ha_mem_free accepts only blocks its runtime's ha_mem_alloc
 * returned and has not freed yet (a second free is reported, not passed on), but cannot tell a block
 * freed and then handed out again at the same address.
 *
 * Lifetimes: a plan or cache keeps the weights and runtime it was made from alive, and weights keep
 * their runtime. ha_weights_free and ha_runtime_close invalidate the handle at once; the object
 * itself goes when its last plan/cache (or weights) is destroyed, so no destruction order crashes.
 *
 * Threads (each object's comment repeats its part; tests/test_threads.c checks it under
 * ThreadSanitizer). "Concurrently" means overlapping in time on different threads; where a call is
 * "one thread at a time", the host must order the calls (a mutex, a join, a queue hand-off: any
 * happens-before edge), and on GPU backends also order the streams (ha_synchronize) before handing
 * an object to another stream.
 *
 *   ha_runtime   shared: every call that takes a runtime (opening other objects from it, loading
 *                weights, ha_mem_*, ha_synchronize, the name/description queries) may run
 *                concurrently with any other call on it or its objects, except ha_runtime_close,
 *                which must come after every other thread's last call that passes this runtime has
 *                returned (objects made from it keep it alive: see Lifetimes). Several runtimes may
 *                be opened and closed concurrently.
 *   ha_weights   shared, read-only after ha_weights_load returns: any number of threads may use one
 *                weights object at once (creating plans and caches, and the stages of those plans).
 *                ha_weights_free comes after every other thread's last call that passes these weights
 *                (plans and caches made with them keep them alive: see Lifetimes).
 *   ha_plan      one thread at a time for the stage calls (ha_cache_encode_keys, ha_encode_queries,
 *                ha_match, ha_attend, ha_dense_attend, ha_decode_step): its scratch is rewritten by
 *                each. Different plans run concurrently, also on one runtime and one weights object.
 *                The const queries (ha_plan_max_kept, ...) may run concurrently with anything but
 *                ha_plan_destroy.
 *   ha_cache     one thread at a time: no two calls that use it (ha_cache_encode_keys, ha_match,
 *                ha_decode_step) may overlap. Give each thread its own cache.
 *   ha_last_error  per thread: the message of this thread's latest call; other threads' calls
 *                never change it.
 *   log callback  ha_set_log_callback may be called at any time from any thread (not from inside the
 *                callback). The callback may run on several threads at once; once
 *                ha_set_log_callback returns, the previous callback is not running and is never
 *                called again, so its user data may be freed.
 *   plugins      loading is safe from any number of threads: each ha_runtime_open searches, loads
 *                and probes on its own, and plugins stay mapped once loaded. A plugin's context is
 *                shared by every thread using its runtime (hashattn_plugin.h says what a plugin
 *                must allow).
 *   environment  HASHATTN_BACKEND and HASHATTN_PLUGIN_PATH are read at each ha_runtime_open,
 *                HASHATTN_LOG once per process: as everywhere in C, the host must not change the
 *                environment (setenv, putenv) while another thread may be inside the library.
 */
#ifndef HASHATTN_H
#define HASHATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define HA_API
#else
#define HA_API __attribute__((visibility("default")))
#endif

/* ---------------------------------------------------------------------------------------------- */
/* Version                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

#define HA_VERSION_MAJOR 0
#define HA_VERSION_MINOR 1
#define HA_VERSION_PATCH 0
/** The version this header describes, as one number: major*10000 + minor*100 + patch. */
#define HA_VERSION (HA_VERSION_MAJOR * 10000 + HA_VERSION_MINOR * 100 + HA_VERSION_PATCH)

/** Version of the library actually loaded (compare with HA_VERSION at run time). */
HA_API uint32_t ha_version(void);
/** Same as a string, e.g. "0.1.0". Static storage. */
HA_API const char *ha_version_string(void);

/* ---------------------------------------------------------------------------------------------- */
/* Status codes and logging                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/** Every call returns one of these. Values are stable; new ones are only appended. */
typedef enum ha_status {
    HA_OK = 0,
    HA_ERR_INVALID_ARGUMENT = 1, /**< a NULL where a pointer is needed, a value out of range   */
    HA_ERR_SHAPE = 2,            /**< shapes, strides or head counts that disagree              */
    HA_ERR_OVERFLOW = 3,         /**< a size whose product does not fit in 64 bits / memory     */
    HA_ERR_OUT_OF_MEMORY = 4,    /**< an allocation failed                                      */
    HA_ERR_IO = 5,               /**< a file could not be opened or read                        */
    HA_ERR_FORMAT = 6,           /**< a file is malformed, truncated or of the wrong kind       */
    HA_ERR_BACKEND_NOT_FOUND = 7,/**< no plugin of that name/path, or none usable here          */
    HA_ERR_ABI_MISMATCH = 8,     /**< a plugin speaks another ABI version or table size         */
    HA_ERR_UNSUPPORTED = 9,      /**< valid request this backend cannot do (dtype, layout, …)   */
    HA_ERR_BACKEND = 10,         /**< the backend failed while running (driver error, …)        */
    HA_ERR_STATE = 11,           /**< called in the wrong order or on a finished object         */
} ha_status;

/** A short, static English name of a status ("invalid argument"). Never NULL. */
HA_API const char *ha_status_string(ha_status status);

/**
 * What went wrong in this thread's most recent call into the library (thread-local), e.g.
 * "ha_plan_create: cfg->head_dim = 64 but the weights' head_dim is 128"; "" when that call
 * succeeded. Each call clears it on entry. Valid until this thread's next call. Never NULL.
 */
HA_API const char *ha_last_error(void);

typedef enum ha_log_level { HA_LOG_ERROR = 0, HA_LOG_WARN = 1, HA_LOG_INFO = 2, HA_LOG_DEBUG = 3 } ha_log_level;

/** Receives log lines (no trailing newline). Called from whichever thread logs, possibly several at once. */
typedef void (*ha_log_fn)(void *user, ha_log_level level, const char *message);

/**
 * Sets the process-wide log callback and the most verbose level delivered. NULL restores the
 * default, which writes WARN and ERROR lines to stderr (more with HASHATTN_LOG=info|debug).
 * Thread-safe: callable from any thread at any time. It waits for callbacks running on other
 * threads to return, so once it returns the previous callback is never called again and its user
 * data may be freed. Called from inside the callback it changes nothing (ha_last_error says so).
 * The callback may run on several threads at once, may call into the library, and must not wait for
 * a thread that is inside ha_set_log_callback.
 */
HA_API void ha_set_log_callback(ha_log_fn fn, void *user, ha_log_level max_level);

/* ---------------------------------------------------------------------------------------------- */
/* Tensors                                                                                         */
/* ---------------------------------------------------------------------------------------------- */

typedef enum ha_dtype { HA_F32 = 0, HA_F16 = 1, HA_BF16 = 2 } ha_dtype;

/** Bytes of one element of dtype, 0 for an unknown value. */
HA_API size_t ha_dtype_size(ha_dtype dtype);

/**
 * A dense tensor [B, H, D] in the backend's memory (queries, outputs). Strides are in elements;
 * the innermost dimension must be contiguous (stride 1 implied). Queries are post-RoPE.
 */
typedef struct ha_tensor3 {
    void *data;
    ha_dtype dtype;
    int64_t stride_batch; /**< elements between consecutive sequences            */
    int64_t stride_head;  /**< elements between consecutive heads of one sequence */
} ha_tensor3;

/**
 * The host's KV cache, in the backend's memory, read-only for the runtime. K and V share one layout:
 *
 *  - contiguous (page_size == 0): element (b, h, t, :) of K is at
 *      k + b*stride_seq + t*stride_token + h*stride_head;
 *    capacity = tokens allocated per sequence (n_max).
 *  - paged (page_size > 0): token t of sequence b lives in page p = block_table[b*block_table_stride
 *    + t/page_size], at k + p*stride_seq + (t%page_size)*stride_token + h*stride_head;
 *    capacity = number of pages in the pool. Page ids must be in [0, capacity).
 *
 * Strides are in elements; head_dim elements of a row are contiguous. Keys are post-RoPE.
 */
typedef struct ha_kv {
    const void *k;
    const void *v;
    ha_dtype dtype;
    int64_t stride_seq;
    int64_t stride_token;
    int64_t stride_head;
    int32_t page_size;
    int32_t block_table_stride;
    const int32_t *block_table;
    int64_t capacity;
} ha_kv;

/* ---------------------------------------------------------------------------------------------- */
/* Runtime and backends                                                                            */
/* ---------------------------------------------------------------------------------------------- */

/**
 * A loaded backend plugin. Backends are found in this order: an explicit choice (options->backend,
 * a name like "cpu_avx512" or a path to a .so), else $HASHATTN_BACKEND (same forms), else every
 * plugin found in $HASHATTN_PLUGIN_PATH (':'-separated; ignored in set-uid processes), the
 * directory of libhashattn itself and its hashattn/ subdirectory, and the install directory
 * ($libdir/hashattn), the one with the highest probe score winning (on a tie, the first found in
 * this order). The core's own scalar "reference" backend is always available with the lowest score.
 *
 * Threads: shared. Every call taking a runtime may run concurrently with others on it (object
 * creation and destruction, weights loading, memory, queries); several runtimes may be opened and
 * closed concurrently. ha_runtime_close comes after every other thread's calls on it have returned
 * (objects made from it should be destroyed first; any still alive keep it alive).
 */
typedef struct ha_runtime ha_runtime;

typedef struct ha_runtime_options {
    uint32_t struct_size; /**< sizeof(ha_runtime_options): lets the struct grow compatibly */
    const char *backend;  /**< NULL: $HASHATTN_BACKEND or the best probe; else a name or path */
    int32_t device;       /**< device ordinal for GPU backends (0 = first)                 */
} ha_runtime_options;

/** Opens a runtime. options may be NULL (all defaults). On failure *out is NULL. */
HA_API ha_status ha_runtime_open(const ha_runtime_options *options, ha_runtime **out);
/**
 * Closes the runtime. Objects created from it should be destroyed first; any still alive keep the
 * backend loaded until they are destroyed (a warning is logged). NULL is a no-op; a handle already
 * closed is reported through ha_last_error() (HA_ERR_STATE) and otherwise ignored.
 */
HA_API void ha_runtime_close(ha_runtime *rt);
/** Name of the backend in use ("cpu_avx512", "cuda", "reference", …). */
HA_API const char *ha_runtime_backend_name(const ha_runtime *rt);
/** One line describing the backend and the code path it chose (e.g. "AVX-512 VPOPCNTDQ, 2 threads"). */
HA_API const char *ha_runtime_backend_description(const ha_runtime *rt);
/** 1 when the backend's memory is ordinary host memory (CPU backends), 0 for device memory. */
HA_API int ha_runtime_is_host_memory(const ha_runtime *rt);

/** Allocates bytes of backend memory (64-byte aligned). ha_mem_free releases it. */
HA_API ha_status ha_mem_alloc(ha_runtime *rt, size_t bytes, void **out);
/** Frees a block ha_mem_alloc of rt returned. NULL is a no-op; any other pointer (freed already, of
 *  another runtime, inside a block) is reported through ha_last_error() and not freed. */
HA_API void ha_mem_free(ha_runtime *rt, void *ptr);
typedef enum ha_copy_kind { HA_COPY_HOST_TO_BACKEND = 0, HA_COPY_BACKEND_TO_HOST = 1, HA_COPY_BACKEND_TO_BACKEND = 2 } ha_copy_kind;
/** Copies bytes (synchronously with respect to the host). */
HA_API ha_status ha_mem_copy(ha_runtime *rt, void *dst, const void *src, size_t bytes, ha_copy_kind kind);
/** Waits until all work queued on stream (NULL = default) has finished. */
HA_API ha_status ha_synchronize(ha_runtime *rt, void *stream);

/* ---------------------------------------------------------------------------------------------- */
/* Mapping-function weights                                                                        */
/* ---------------------------------------------------------------------------------------------- */

/**
 * The learned mapping functions of a model (per layer: a query MLP per query head and a key MLP
 * per key-code head), loaded from safetensors (see docs/architecture.md for the format) and uploaded
 * to the backend once. Threads: read-only after loading; any number of threads may use one weights
 * object at once (plans, caches and their stages). Free it after every other thread's calls that
 * pass it have returned (plans and caches made with it keep it alive).
 */
typedef struct ha_weights ha_weights;

/** Paper mode: one key code per query head. Group mode: one key code per KV head, shared by its group. */
typedef enum ha_mode { HA_MODE_PAPER = 0, HA_MODE_GROUP = 1 } ha_mode;

typedef struct ha_weights_info {
    int32_t num_layers;
    int32_t bits;      /**< code length b (multiple of 32 not required; stored in ceil(b/32) words) */
    int32_t words;     /**< 32-bit words per code                                                 */
    int32_t mlp_depth; /**< linear layers per MLP (1..4)                                          */
    int32_t head_dim;
    int32_t q_heads;   /**< query heads (one query MLP each)                                      */
    int32_t k_heads;   /**< key-code heads: q_heads in paper mode, KV heads in group mode          */
    ha_mode mode;      /**< HA_MODE_GROUP when k_heads < q_heads                                   */
    int32_t num_dense_layers;
} ha_weights_info;

/** Loads weights from a safetensors file; every offset, size, dtype and shape is validated. */
HA_API ha_status ha_weights_load(ha_runtime *rt, const char *path, ha_weights **out);
/** Same, from a buffer (copied; the caller may free it after the call). */
HA_API ha_status ha_weights_load_memory(ha_runtime *rt, const void *data, size_t size, ha_weights **out);
/** Frees the handle; plans and caches made from w keep what they need until they are destroyed.
 *  NULL is a no-op; freeing twice is reported through ha_last_error() and otherwise ignored. */
HA_API void ha_weights_free(ha_weights *w);
HA_API ha_status ha_weights_get_info(const ha_weights *w, ha_weights_info *out);
/** 1 when layer runs dense attention (no mapping functions, or listed in dense_layers), else 0; -1 if out of range. */
HA_API int ha_weights_layer_is_dense(const ha_weights *w, int32_t layer);

/* ---------------------------------------------------------------------------------------------- */
/* Plans: fixed limits and scratch, allocated once                                                 */
/* ---------------------------------------------------------------------------------------------- */

/**
 * A plan fixes the shape limits and the selection budget and allocates all scratch, so that the
 * per-step calls allocate nothing and never synchronize with the host. Threads: one thread at a
 * time for the stage calls (they rewrite its scratch); each thread uses its own plan, and different
 * plans run concurrently. On GPU backends the scratch stays in use until the stream's work finishes:
 * synchronize before using the plan on another stream.
 */
typedef struct ha_plan ha_plan;

typedef struct ha_plan_config {
    uint32_t struct_size;   /**< sizeof(ha_plan_config)                                        */
    int32_t max_batch;      /**< largest B a step will pass                                    */
    int64_t max_tokens;     /**< longest sequence a step will pass                             */
    int32_t num_q_heads;    /**< Hq; must equal the weights' q_heads                           */
    int32_t num_kv_heads;   /**< Hkv; divides Hq                                               */
    int32_t head_dim;       /**< d; must equal the weights' head_dim                           */
    int32_t sink;           /**< first tokens always kept (-1: default 128)                    */
    int32_t local;          /**< last tokens always kept (-1: default 128)                     */
    double heavy_fraction;  /**< > 0: heavy = floor(heavy_fraction * n) tokens chosen by codes  */
    int64_t heavy_count;    /**< used when heavy_fraction == 0: a fixed number of heavy tokens  */
    float scale;            /**< softmax scale; 0: 1/sqrt(head_dim)                            */
} ha_plan_config;

/** Fills a config with defaults: sink 128, local 128, heavy 1/32, scale 1/sqrt(d). */
HA_API void ha_plan_config_init(ha_plan_config *cfg, int32_t max_batch, int64_t max_tokens,
                                int32_t num_q_heads, int32_t num_kv_heads, int32_t head_dim);

/** Creates a plan for weights w (kept alive by the plan). w may be NULL for dense attention only. */
HA_API ha_status ha_plan_create(ha_runtime *rt, const ha_weights *w, const ha_plan_config *cfg, ha_plan **out);
HA_API void ha_plan_destroy(ha_plan *plan);
/** Upper bound of kept tokens per sequence and selection head: the row length of ha_match's indices. */
HA_API int64_t ha_plan_max_kept(const ha_plan *plan);
/** Number of tokens kept for a sequence of length n under the plan's budget (sinks+locals+heavy, ≤ n). */
HA_API int64_t ha_plan_kept_for_length(const ha_plan *plan, int64_t n);
/** Selection heads: q heads in paper mode, KV heads in group mode (rows of ha_match's output). */
HA_API int32_t ha_plan_selection_heads(const ha_plan *plan);

/* ---------------------------------------------------------------------------------------------- */
/* Key-code cache                                                                                  */
/* ---------------------------------------------------------------------------------------------- */

/**
 * The codes of every cached key, for every sparse layer, in backend memory. Its layout follows the
 * host's KV cache: contiguous [B, heads, max_tokens, words] or paged with the same page size and
 * block table as the KV cache. Threads: one thread at a time (give each thread its own cache);
 * different caches, also made from one weights object, are used concurrently.
 */
typedef struct ha_cache ha_cache;

typedef struct ha_cache_config {
    uint32_t struct_size; /**< sizeof(ha_cache_config)                           */
    int32_t page_size;    /**< 0: contiguous; else the KV cache's page size      */
    int32_t max_batch;    /**< contiguous: sequences held                        */
    int64_t max_tokens;   /**< contiguous: tokens held per sequence              */
    int64_t num_pages;    /**< paged: pages in the pool (same ids as the KV's)   */
} ha_cache_config;

HA_API ha_status ha_cache_create(ha_runtime *rt, const ha_weights *w, const ha_cache_config *cfg, ha_cache **out);
HA_API void ha_cache_destroy(ha_cache *cache);
/** Bytes of backend memory the cache holds. */
HA_API size_t ha_cache_bytes(const ha_cache *cache);

/* ---------------------------------------------------------------------------------------------- */
/* Stages                                                                                          */
/* ---------------------------------------------------------------------------------------------- */

/*
 * Arrays named seq_lens / seq_end are int32[batch] in backend memory. A sequence of length n holds
 * tokens 0..n-1; n may be 0 (its outputs are then zeros and its lse -inf).
 */

/**
 * Encodes the keys of tokens [max(0, seq_end[b]-count), seq_end[b]) of every sequence b < batch,
 * read from kv, into the cache for layer. After prefill: count = longest prompt, seq_end = prompt
 * lengths. The KV layout must match the cache's (paged caches use kv.block_table).
 * A dense layer is a no-op.
 */
HA_API ha_status ha_cache_encode_keys(ha_plan *plan, ha_cache *cache, int32_t layer, const ha_kv *kv,
                                      int32_t batch, const int32_t *seq_end, int32_t count, void *stream);

/** Encodes queries q [batch, Hq, d] into codes [batch, Hq, words] (uint32, backend memory). */
HA_API ha_status ha_encode_queries(ha_plan *plan, int32_t layer, const ha_tensor3 *q, int32_t batch,
                                   uint32_t *codes, void *stream);

/**
 * Selects the kept tokens of every (sequence, selection head): sinks ∪ locals ∪ the best heavy
 * candidates by Hamming similarity, ties to the more recent token (SPEC §1). Writes ascending token
 * indices to indices[(b*S + s)*max_kept + i] and their number to counts[b*S + s], S =
 * ha_plan_selection_heads, max_kept = ha_plan_max_kept. q_codes as written by ha_encode_queries.
 * kv supplies the block table of a paged cache (its k, v may be NULL here).
 * On host-memory backends the cache knows which tokens' codes it holds: selecting over a token whose
 * key was never encoded (here or in ha_decode_step) fails with HA_ERR_STATE.
 */
HA_API ha_status ha_match(ha_plan *plan, const ha_cache *cache, int32_t layer, const uint32_t *q_codes,
                          const ha_kv *kv, int32_t batch, const int32_t *seq_lens,
                          int32_t *indices, int32_t *counts, void *stream);

/**
 * Exact attention of q [batch, Hq, d] over the kept tokens (indices/counts as from ha_match) of K, V,
 * fp32 accumulation. out [batch, Hq, d] in out->dtype; lse (optional, float[batch*Hq], may be NULL)
 * receives the natural log-sum-exp of the scaled logits.
 */
HA_API ha_status ha_attend(ha_plan *plan, const ha_tensor3 *q, const ha_kv *kv, int32_t batch,
                           const int32_t *seq_lens, const int32_t *indices, const int32_t *counts,
                           ha_tensor3 *out, float *lse, void *stream);

/** Plain softmax attention of q over all seq_lens[b] tokens (the dense baseline). */
HA_API ha_status ha_dense_attend(ha_plan *plan, const ha_tensor3 *q, const ha_kv *kv, int32_t batch,
                                 const int32_t *seq_lens, ha_tensor3 *out, float *lse, void *stream);

/** Everything one decode step of one layer needs. */
typedef struct ha_step {
    int32_t batch;
    const int32_t *seq_lens; /**< int32[batch], backend memory: lengths including the new tokens */
    int32_t new_tokens;      /**< keys at [seq_lens[b]-new_tokens, seq_lens[b]) are encoded into the
                                  cache first (1 in a normal step; 0 if already encoded)          */
    ha_tensor3 q;            /**< [batch, Hq, d]                                                 */
    ha_kv kv;
    ha_tensor3 out;          /**< [batch, Hq, d]                                                 */
    float *lse;              /**< optional [batch, Hq]                                           */
    void *stream;            /**< GPU stream (cudaStream_t), NULL for the default / CPU           */
} ha_step;

/**
 * One decode step of one layer: encode new keys into the cache, encode the queries, select, attend.
 * Dense layers attend over every token. Allocates nothing; asynchronous on GPU backends.
 */
HA_API ha_status ha_decode_step(ha_plan *plan, ha_cache *cache, int32_t layer, const ha_step *step);

/* ---------------------------------------------------------------------------------------------- */
/* The whole API as one table, for hosts that dlopen the library                                   */
/* ---------------------------------------------------------------------------------------------- */

/**
 * Every public function as a pointer, in an append-only table (new versions only add fields at the
 * end). A host that does not link libhashattn dlopen()s it and calls ha_get_api(HA_API_VERSION).
 */
#define HA_API_VERSION 1

typedef struct ha_api {
    uint32_t version;     /**< the table version returned (== the one asked for)   */
    uint32_t struct_size; /**< sizeof the table the library built                    */
    uint32_t (*version_number)(void);
    const char *(*version_string)(void);
    const char *(*status_string)(ha_status);
    const char *(*last_error)(void);
    void (*set_log_callback)(ha_log_fn, void *, ha_log_level);
    size_t (*dtype_size)(ha_dtype);
    ha_status (*runtime_open)(const ha_runtime_options *, ha_runtime **);
    void (*runtime_close)(ha_runtime *);
    const char *(*runtime_backend_name)(const ha_runtime *);
    const char *(*runtime_backend_description)(const ha_runtime *);
    int (*runtime_is_host_memory)(const ha_runtime *);
    ha_status (*mem_alloc)(ha_runtime *, size_t, void **);
    void (*mem_free)(ha_runtime *, void *);
    ha_status (*mem_copy)(ha_runtime *, void *, const void *, size_t, ha_copy_kind);
    ha_status (*synchronize)(ha_runtime *, void *);
    ha_status (*weights_load)(ha_runtime *, const char *, ha_weights **);
    ha_status (*weights_load_memory)(ha_runtime *, const void *, size_t, ha_weights **);
    void (*weights_free)(ha_weights *);
    ha_status (*weights_get_info)(const ha_weights *, ha_weights_info *);
    int (*weights_layer_is_dense)(const ha_weights *, int32_t);
    void (*plan_config_init)(ha_plan_config *, int32_t, int64_t, int32_t, int32_t, int32_t);
    ha_status (*plan_create)(ha_runtime *, const ha_weights *, const ha_plan_config *, ha_plan **);
    void (*plan_destroy)(ha_plan *);
    int64_t (*plan_max_kept)(const ha_plan *);
    int64_t (*plan_kept_for_length)(const ha_plan *, int64_t);
    int32_t (*plan_selection_heads)(const ha_plan *);
    ha_status (*cache_create)(ha_runtime *, const ha_weights *, const ha_cache_config *, ha_cache **);
    void (*cache_destroy)(ha_cache *);
    size_t (*cache_bytes)(const ha_cache *);
    ha_status (*cache_encode_keys)(ha_plan *, ha_cache *, int32_t, const ha_kv *, int32_t, const int32_t *, int32_t, void *);
    ha_status (*encode_queries)(ha_plan *, int32_t, const ha_tensor3 *, int32_t, uint32_t *, void *);
    ha_status (*match)(ha_plan *, const ha_cache *, int32_t, const uint32_t *, const ha_kv *, int32_t, const int32_t *, int32_t *, int32_t *, void *);
    ha_status (*attend)(ha_plan *, const ha_tensor3 *, const ha_kv *, int32_t, const int32_t *, const int32_t *, const int32_t *, ha_tensor3 *, float *, void *);
    ha_status (*dense_attend)(ha_plan *, const ha_tensor3 *, const ha_kv *, int32_t, const int32_t *, ha_tensor3 *, float *, void *);
    ha_status (*decode_step)(ha_plan *, ha_cache *, int32_t, const ha_step *);
} ha_api;

/** Returns the API table of the given version, or NULL if this library is older than that version. */
HA_API const ha_api *ha_get_api(uint32_t version);

#ifdef __cplusplus
}
#endif
#endif /* HASHATTN_H */
