/*
 * hashattn_plugin.h — the ABI a backend plugin implements.
 *
 * A plugin is a shared module that exports one C symbol,
 *
 *     const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version);
 *
 * which returns its function table if it can speak core_abi_version, else NULL. The table starts
 * with the ABI version it speaks and its own size, and only ever grows at the end (new members are
 * appended; none is removed or reordered; static_asserts below pin every offset). The core refuses a
 * table whose abi_version differs from HA_PLUGIN_ABI_VERSION or whose struct_size is smaller than
 * HA_PLUGIN_API_V1_SIZE, with a message naming both; it reads a member added later only when
 * struct_size covers it.
 *
 * The core validates every argument before calling a plugin (shapes, strides, NULLs, sizes, limits),
 * so plugins may assume well-formed arguments: sizes fit in int64, every index is in range for host
 * memory backends, batch ≤ plan limits. What lives in backend memory (sequence lengths, block
 * tables) cannot be checked by the core on a GPU; plugins clamp lengths to the plan's max_tokens.
 *
 * Every call returns ha_status (HA_OK = 0). On failure a plugin should make last_error() describe it.
 * Members marked (optional) may be NULL; the comment says what the core does then.
 *
 * Threads: one context serves every thread of its runtime (see hashattn.h, "Threads"). A plugin must
 * allow every member except init and shutdown to be called concurrently on one context: memory
 * calls, mlp_upload/mlp_free, plan_create/plan_destroy, and the stages on different plans (which may
 * share MLP handles: a handle is read-only after mlp_upload). The core never overlaps calls on one
 * plan, never calls shutdown while another call on the context runs, and calls probe and init from
 * any thread, possibly concurrently for different contexts. last_error must describe the calling
 * thread's failure (keep the message thread-local: the core reads it right after the failing call,
 * on the same thread, while other threads may be failing too). Shared mutable state in a context
 * must be atomic or locked.
 */
#ifndef HASHATTN_PLUGIN_H
#define HASHATTN_PLUGIN_H

#include "hashattn.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** The ABI version this header describes. Bumped only for an incompatible change. */
#define HA_PLUGIN_ABI_VERSION 1u
/** Name of the one symbol a plugin exports. */
#define HA_PLUGIN_ENTRY_SYMBOL "hashattn_plugin_get_api"
/** Longest MLP the ABI carries (linear layers). */
#define HA_PLUGIN_MAX_MLP_DEPTH 4

/* ---------------------------------------------------------------------------------------------- */
/* Argument structures                                                                             */
/* ---------------------------------------------------------------------------------------------- */

/**
 * Rows of vectors addressed per (sequence b, head h, token t), contiguous or paged (see ha_kv in
 * hashattn.h; the same rules). Used for keys/values, for queries (t = 0), and for code caches
 * (dtype ignored: uint32 words, dim = words).
 */
typedef struct ha_rows {
    const void *data;
    ha_dtype dtype;
    int32_t heads;
    int32_t dim;              /**< elements (or uint32 words) of one row, contiguous */
    int64_t stride_seq;       /**< per sequence (contiguous) or per page (paged)     */
    int64_t stride_token;
    int64_t stride_head;
    int32_t page_size;        /**< 0 = contiguous                                    */
    int32_t block_table_stride;
    const int32_t *block_table;
} ha_rows;

/** Address of row (b, h, t) in elements of size elem from rows->data. For plugins and the core. */
static inline int64_t ha_rows_offset(const ha_rows *r, int64_t b, int64_t h, int64_t t)
{
    if (r->page_size == 0)
        return b * r->stride_seq + t * r->stride_token + h * r->stride_head;
    int64_t page = r->block_table[b * r->block_table_stride + t / r->page_size];
    return page * r->stride_seq + (t % r->page_size) * r->stride_token + h * r->stride_head;
}

/**
 * One side (query or key) of one layer's mapping functions, host memory, fp32, row-major:
 * w[i] is [heads, dims[i+1], dims[i]], b[i] is [heads, dims[i+1]], i = 0..depth-1;
 * dims[0] = head_dim, dims[depth] = bits. Activation SiLU between layers, none after the last.
 */
typedef struct ha_mlp_desc {
    int32_t heads;
    int32_t depth;
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    const float *w[HA_PLUGIN_MAX_MLP_DEPTH];
    const float *b[HA_PLUGIN_MAX_MLP_DEPTH];
} ha_mlp_desc;

/** What a plan fixes (see ha_plan_config). Selection parameters are resolved (no -1 defaults). */
typedef struct ha_plan_desc {
    int32_t max_batch;
    int64_t max_tokens;
    int32_t q_heads;
    int32_t kv_heads;
    int32_t head_dim;
    int32_t code_heads;     /**< key-code heads: q_heads (paper) or kv_heads (group); 0 = dense only */
    int32_t words;          /**< uint32 words per code; 0 = dense only                              */
    int32_t bits;
    int32_t sink;
    int32_t local;
    double heavy_fraction;
    int64_t heavy_count;
    int64_t max_kept;       /**< row length of index outputs                                         */
    float scale;
} ha_plan_desc;

/**
 * Encode tokens [max(0, end_b - count), end_b) of every sequence b < batch:
 * out(b, m, t) = sign bits of mlp head m applied to in(b, m / (mlp heads / in.heads), t).
 * end NULL means end_b = count for every b. out.dim = words; bits beyond `bits` in the last word are 0.
 */
typedef struct ha_encode_args {
    const void *mlp;          /**< handle from mlp_upload                       */
    const ha_mlp_desc *desc;  /**< the same MLP's description (host memory)     */
    int32_t batch;
    int32_t count;
    const int32_t *end;       /**< int32[batch] backend memory, or NULL         */
    ha_rows in;
    ha_rows out;              /**< data is writable (uint32)                    */
    void *stream;
} ha_encode_args;

/**
 * Select per (b, s): s < sel_heads. Paper mode (sel_heads == q_heads == key-code heads): similarity
 * bits - popcount(q(b,s) ^ k(b,s,j)). Group mode (sel_heads == key-code heads < q_heads, g =
 * q_heads/sel_heads): the sum of that over the group's query heads s*g .. s*g+g-1 against k(b,s,j).
 * Kept: [0, min(sink,n)) ∪ [max(n-local, sink), n) ∪ top heavy of the candidates by similarity,
 * ties to the higher index; all of [0, n) when n ≤ sink + local + heavy. heavy = floor(heavy_fraction
 * * n) when heavy_fraction > 0, else heavy_count. indices ascending.
 */
typedef struct ha_match_args {
    int32_t batch;
    int32_t q_heads;
    int32_t sel_heads;
    int32_t words;
    int32_t bits;
    const uint32_t *q_codes;  /**< [batch, q_heads, words] contiguous            */
    ha_rows k_codes;          /**< heads = sel_heads                             */
    const int32_t *seq_lens;
    int32_t sink;
    int32_t local;
    double heavy_fraction;
    int64_t heavy_count;
    int32_t *indices;         /**< [batch, sel_heads, index_stride]              */
    int64_t index_stride;
    int32_t *counts;          /**< [batch, sel_heads]                            */
    void *stream;
} ha_match_args;

/**
 * out(b, h) = softmax over kept j of scale * q(b,h)·k(b, h/g, j), times v(b, h/g, j); fp32
 * accumulation. indices == NULL: dense over [0, seq_lens[b]). Otherwise query head h uses index row
 * h / (q_heads / sel_heads) of sequence b. Sequences with no kept token get out = 0, lse = -inf.
 */
typedef struct ha_attend_args {
    int32_t batch;
    int32_t q_heads;
    int32_t kv_heads;
    int32_t head_dim;
    ha_rows q;                /**< heads = q_heads, t = 0                      */
    ha_rows k;                /**< heads = kv_heads                            */
    ha_rows v;
    const int32_t *seq_lens;
    const int32_t *indices;   /**< NULL = dense                                */
    int64_t index_stride;
    const int32_t *counts;
    int32_t sel_heads;
    float scale;
    void *out;                /**< rows like q: heads = q_heads, t = 0          */
    ha_dtype out_dtype;
    int64_t out_stride_seq;
    int64_t out_stride_head;
    float *lse;               /**< [batch, q_heads] or NULL                    */
    void *stream;
} ha_attend_args;

/** The fused step: encode the new keys, encode queries, match, attend (see ha_decode_step). */
typedef struct ha_decode_args {
    ha_encode_args key_encode;   /**< count = new tokens (0: skip), end = seq_lens          */
    ha_encode_args query_encode; /**< out = q_codes scratch of the plan                     */
    ha_match_args match;         /**< indices/counts = plan scratch                         */
    ha_attend_args attend;
} ha_decode_args;

/* ---------------------------------------------------------------------------------------------- */
/* Host services and the function table                                                           */
/* ---------------------------------------------------------------------------------------------- */

/** What the core offers a plugin at init. */
typedef struct ha_plugin_host {
    uint32_t struct_size;
    /** Sends a line to the host's log callback. */
    void (*log)(ha_log_level level, const char *message);
    int32_t device; /**< ha_runtime_options.device */
    /* --- appended after version 1: read only when struct_size covers them (else use malloc/free) --- */
    /** Host memory for the plugin's own use (contexts, repacked weights, scratch): aligned to alignment
     *  (a power of two), bytes rounded up to a multiple of it; NULL when out of memory. Going through the
     *  core lets its tests inject allocation failures into plugins too. */
    void *(*host_alloc)(size_t alignment, size_t bytes);
    /** Frees what host_alloc returned (NULL is a no-op). */
    void (*host_free)(void *ptr);
} ha_plugin_host;

typedef struct ha_plugin_api {
    /* --- version 1 --------------------------------------------------------------------------- */
    uint32_t abi_version;  /**< HA_PLUGIN_ABI_VERSION the plugin speaks */
    uint32_t struct_size;  /**< sizeof(ha_plugin_api) as the plugin was built */
    const char *name;      /**< short name: matches HASHATTN_BACKEND=name; 1-63 of [A-Za-z0-9_-] */

    /** Score for automatic choice: 0 = cannot run here (no device, missing instructions); higher wins. */
    int (*probe)(void);
    /** Creates the plugin's context (device, thread pool, CPU path choice). */
    ha_status (*init)(const ha_plugin_host *host, void **ctx);
    void (*shutdown)(void *ctx);
    /** One line describing the code path in use. */
    const char *(*describe)(void *ctx);
    /** Message of the last failure on this context (optional: NULL → the core uses the status name).
     *  Called with ctx == NULL after a failed init: the reason init failed (or NULL). */
    const char *(*last_error)(void *ctx);
    /** 1 if backend memory is host memory. */
    int host_memory;

    /** Backend memory, 64-byte aligned; NULL on failure. mem_free(ctx, NULL) is a no-op. */
    void *(*mem_alloc)(void *ctx, size_t bytes);
    void (*mem_free)(void *ctx, void *ptr);
    ha_status (*mem_copy)(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind);
    ha_status (*synchronize)(void *ctx, void *stream);

    /** Copies an MLP into backend form (may repack); returns an opaque handle. */
    ha_status (*mlp_upload)(void *ctx, const ha_mlp_desc *desc, void **handle);
    void (*mlp_free)(void *ctx, void *handle);

    /** (optional) Per-plan state and scratch. NULL → plans carry no plugin state (plan = NULL below). */
    ha_status (*plan_create)(void *ctx, const ha_plan_desc *desc, void **plan);
    void (*plan_destroy)(void *ctx, void *plan);

    ha_status (*encode)(void *ctx, void *plan, const ha_encode_args *args);
    ha_status (*match)(void *ctx, void *plan, const ha_match_args *args);
    ha_status (*attend)(void *ctx, void *plan, const ha_attend_args *args);
    /** (optional) Fused step. NULL → the core calls encode, encode, match, attend in turn. */
    ha_status (*decode)(void *ctx, void *plan, const ha_decode_args *args);
    /* --- append new members here, never above ------------------------------------------------ */
} ha_plugin_api;

/** Size of the version-1 table: the smallest table the core accepts. */
#define HA_PLUGIN_API_V1_SIZE (offsetof(ha_plugin_api, decode) + sizeof(void *))

/** The entry point's type. */
typedef const ha_plugin_api *(*ha_plugin_get_api_fn)(uint32_t core_abi_version);

/* Layout pins: reordering or inserting members breaks every built plugin. */
#if defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__cplusplus)
#define HA_PLUGIN_STATIC_ASSERT _Static_assert
#else
#define HA_PLUGIN_STATIC_ASSERT static_assert
#endif
HA_PLUGIN_STATIC_ASSERT(offsetof(ha_plugin_api, abi_version) == 0, "abi_version must be first");
HA_PLUGIN_STATIC_ASSERT(offsetof(ha_plugin_api, struct_size) == 4, "struct_size must be second");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, name) == 8, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, probe) == 16, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, host_memory) == 56, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, mem_alloc) == 64, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, encode) == 128, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || offsetof(ha_plugin_api, decode) == 152, "ABI v1 layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || sizeof(ha_plugin_api) == 160, "ABI v1 size");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || sizeof(ha_rows) == 64, "ha_rows layout");
HA_PLUGIN_STATIC_ASSERT(sizeof(void *) != 8 || sizeof(ha_mlp_desc) == 96, "ha_mlp_desc layout");

#ifdef __cplusplus
}
#endif
#endif /* HASHATTN_PLUGIN_H */
