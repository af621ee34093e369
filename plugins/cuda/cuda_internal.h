/*
 * cuda_internal.h — private types of the CUDA plugin: its context, device-resident MLPs, plans with
 * their preallocated scratch, the error helpers and the stage launchers (cuda_{encode,match,attend}.cu).
 *
 * Every launcher only enqueues kernels on the stream it is given and checks the launch: no
 * allocation, no host synchronization, so a whole decode step can be captured in a CUDA graph.
 */
#ifndef HA_CUDA_INTERNAL_H
#define HA_CUDA_INTERNAL_H

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "ha_shared.h"
#include "hashattn_plugin.h"

#define CU_HIDDEN __attribute__((visibility("hidden")))

/* ---- limits of this version's kernels ----------------------------------------------------------- */

/** Threads of an attend block; each holds CU_ATTEND_ACC accumulators, so heads × head_dim of one
 *  block is at most CU_ATTEND_THREADS × CU_ATTEND_ACC. */
#define CU_ATTEND_THREADS 256
#define CU_ATTEND_ACC 8
#define CU_MAX_HEAD_DIM (CU_ATTEND_THREADS * CU_ATTEND_ACC)
/** Most splits of one attend unit's token list (the merge keeps a weight per split). */
#define CU_ATTEND_MAX_SPLITS 128
/** Threads of the match blocks; also the most candidate chunks per (sequence, head). */
#define CU_MATCH_THREADS 256
/** Threads of an encode block (a multiple of 32: each warp packs 32 output bits with one ballot). */
#define CU_ENCODE_THREADS 128
/** Tokens an encode block runs through the MLP together (each weight read once per tile). */
#define CU_ENCODE_TILE 8

/* ---- objects --------------------------------------------------------------------------------- */

typedef struct cu_ctx {
    int device;
    int sm_count;
    size_t smem_optin;    /**< largest dynamic shared memory a block may ask for */
    void (*log)(ha_log_level level, const char *message);
    char description[192];
} cu_ctx;

/** An MLP in device memory: layer i's weights transposed to [heads, in, out] (coalesced across
 *  outputs), biases [heads, out]. */
typedef struct cu_mlp {
    int32_t heads;
    int32_t depth;
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    int32_t widest_input;  /**< widest layer input (head_dim or a hidden width) */
    const float *wt[HA_PLUGIN_MAX_MLP_DEPTH];
    const float *bias[HA_PLUGIN_MAX_MLP_DEPTH];
    float *storage;
} cu_mlp;

/** Per-plan scratch, sized in plan_create for the plan's limits so that the stages never allocate. */
typedef struct cu_plan {
    ha_plan_desc desc;
    int32_t target_blocks;    /**< blocks that fill the device a few times over      */
    /* match: per (item, chunk) slot a histogram and {offset, skip}; per item a threshold */
    int32_t match_bins;       /**< group × bits + 1 (0: the plan has no codes)       */
    int64_t match_slots;
    uint32_t *match_hist;     /**< [match_slots][match_bins]                         */
    int32_t *match_chunk;     /**< [match_slots][2]                                  */
    uint32_t *match_threshold;/**< [max_batch × selection heads]                     */
    /* attend: per (query head, split) m, l and head_dim partial sums */
    int64_t partial_slots;
    float *partials;          /**< [partial_slots][head_dim + 2]                     */
} cu_plan;

/* ---- errors ------------------------------------------------------------------------------------ */

/** Records this thread's last error (what last_error returns) and returns status. */
CU_HIDDEN ha_status cu_fail(ha_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
CU_HIDDEN const char *cu_last_error(void);
/** HA_OK, or HA_ERR_BACKEND with "<what>: <CUDA error name>: <description>". */
CU_HIDDEN ha_status cu_check(cudaError_t err, const char *what);

/* ---- pieces ------------------------------------------------------------------------------------ */

CU_HIDDEN ha_status cu_mlp_upload(const cu_ctx *ctx, const ha_mlp_desc *desc, cu_mlp **out);
CU_HIDDEN void cu_mlp_free(cu_mlp *mlp);
CU_HIDDEN ha_status cu_plan_create(const cu_ctx *ctx, const ha_plan_desc *desc, cu_plan **out);
CU_HIDDEN void cu_plan_destroy(cu_plan *plan);

/** Dynamic shared memory limits of the kernels, raised once at init. */
CU_HIDDEN ha_status cu_encode_prepare(const cu_ctx *ctx);
CU_HIDDEN ha_status cu_match_prepare(const cu_ctx *ctx);
CU_HIDDEN ha_status cu_attend_prepare(const cu_ctx *ctx);

/** Shared memory an encode block needs for an MLP whose widest input is `width` (fits: ≤ smem_optin). */
CU_HIDDEN size_t cu_encode_smem(int32_t width, int32_t tile);
/** Shared memory of the match histogram pass for `bins` scores and `code_words` query-code words. */
CU_HIDDEN size_t cu_match_smem(int32_t bins, int32_t code_words);
/** (item, chunk) slots the match stage uses for `items` items under the plan. */
CU_HIDDEN int32_t cu_match_chunks(const cu_plan *plan, int64_t items);
/** Splits per attend unit for `units` units of up to `max_len` tokens under the plan. */
CU_HIDDEN int32_t cu_attend_splits(const cu_plan *plan, int64_t units, int64_t max_len);

CU_HIDDEN ha_status cu_encode(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *a);
CU_HIDDEN ha_status cu_match(const cu_ctx *ctx, const cu_plan *plan, const ha_match_args *a);
CU_HIDDEN ha_status cu_attend(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a);

#endif /* HA_CUDA_INTERNAL_H */
