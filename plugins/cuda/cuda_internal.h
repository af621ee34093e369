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

/** Threads of an attend block: 8 warps, each walking its own slice of the block's tokens. */
#define CU_ATTEND_THREADS 256
/** Elements of a K or V row one lane holds (a row spreads over at most 32 lanes). */
#define CU_ATTEND_LANE_ELEMS 8
#define CU_MAX_HEAD_DIM (32 * CU_ATTEND_LANE_ELEMS)
/** Most query heads one attend block serves (they share a KV head and a token list). */
#define CU_ATTEND_MAX_HEADS 8
/** Most splits of one attend unit's token list (the merge keeps a weight per split). */
#define CU_ATTEND_MAX_SPLITS 128
/** Threads of the match blocks; also the most candidate chunks per (sequence, head). */
#define CU_MATCH_THREADS 256
/** Threads of an encode block (a multiple of 32: each warp packs 32 output bits with one ballot). */
#define CU_ENCODE_THREADS 256
/** Most rows (tokens) an encode block runs through the MLP together (each weight read once per tile). */
#define CU_ENCODE_MAX_TILE 16
/** Threads of a row-encode block (16 warps; a code word per warp, so codes of ≤ 16 words) and the
 *  widest layer (inputs and outputs) it runs: 4 inputs per lane, 8 outputs per warp. */
#define CU_ENCODE_ROW_THREADS 512
#define CU_ENCODE_ROW_WIDTH 128
/** Most rows a block of the row kernel runs through the MLP (warp r stages input row r). */
#define CU_ENCODE_ROW_MAX_TILE 16
/** Most blocks of a thread-block cluster (the portable cluster size): chunks per item of the one-launch
 *  match and of the fused decode step. */
#define CU_MATCH_CLUSTER_MAX 8

/* ---- objects --------------------------------------------------------------------------------- */

typedef struct cu_ctx {
    int device;
    int sm_count;
    size_t smem_optin;    /**< largest dynamic shared memory a block may ask for */
    /** sm_90 launch features in use: thread-block clusters (the one-launch match) and programmatic
     *  dependent launch (a kernel starts while the stream's previous one drains). Off before sm_90
     *  and where HASHATTN_CUDA_PORTABLE=1 (which tests the sm_89 paths on an sm_90 device). */
    bool sm90;
    /** HASHATTN_CUDA_MATCH_LANES: 1, the one-launch match keeps a histogram per lane wherever the
     *  scores are few (so short test cases run that path too); 0, never; -1 (unset): by chunk length. */
    int match_lanes;
    /** HASHATTN_CUDA_ENCODE_ROWS: 1, every encode whose MLP fits the row kernel runs there (rows per
     *  block by the rule, 16 where no tile fits one wave; tests); 2, 4, 8 or 16: the same with that many
     *  rows per block; 0, never; -1 (unset): where a block per (head, tile of ≤ 16 rows) fits one wave. */
    int encode_rows;
    /** HASHATTN_CUDA_FUSED: 1, the decode step runs as one launch wherever the fused kernel applies
     *  (cuda_decode_fused.cu; tests); 0, never; -1 (unset): where it applies and fits one wave. */
    int fused;
    void (*log)(ha_log_level level, const char *message);
    char description[192];
} cu_ctx;

/** An MLP in device memory, one contiguous block of head_floats floats per head (16-byte aligned, so
 *  an encode block copies its head's parameters to shared memory with 16-byte copies). In a head's
 *  block, layer i's weights transposed to [in, out] (the threads of a block, one output each, read
 *  consecutive addresses) start at w_off[i], its biases [out] at b_off[i]. */
typedef struct cu_mlp {
    int32_t heads;
    int32_t depth;
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    int32_t widest_input;  /**< widest layer input (head_dim or a hidden width) */
    int32_t widest_output; /**< widest layer output                             */
    int64_t head_floats;   /**< floats per head, a multiple of 4                */
    int64_t w_off[HA_PLUGIN_MAX_MLP_DEPTH];
    int64_t b_off[HA_PLUGIN_MAX_MLP_DEPTH];
    float *storage;        /**< [heads][head_floats]                            */
    /** The same parameters output-major for the row encode (cuda_encode_row.cu), made only where
     *  every layer is at most CU_ENCODE_ROW_WIDTH wide (else NULL): per head, layer i's weights
     *  [out][in rounded up to 4, zero-padded] at row_w_off[i], its biases [out] at row_b_off[i]. */
    float *row_storage;    /**< [heads][row_head_floats]                        */
    int64_t row_head_floats;
    int64_t row_w_off[HA_PLUGIN_MAX_MLP_DEPTH];
    int64_t row_b_off[HA_PLUGIN_MAX_MLP_DEPTH];
} cu_mlp;

/** Per-plan scratch, sized in plan_create for the plan's limits so that the stages never allocate. */
typedef struct cu_plan {
    ha_plan_desc desc;
    int32_t target_blocks;    /**< blocks the device keeps resident at once (one wave) */
    /* match: per (item, chunk) slot a histogram and {offset, skip}; per item a threshold */
    int32_t match_bins;       /**< group × bits + 1 (0: the plan has no codes)       */
    int64_t match_slots;
    uint32_t *match_hist;     /**< [match_slots][match_bins]                         */
    uint32_t *match_warp_hist;/**< [match_slots][cu_match_warps()][match_bins]        */
    int32_t *match_chunk;     /**< [match_slots][2]                                  */
    uint32_t *match_threshold;/**< [max_batch × selection heads]                     */
    uint32_t *match_arrived;  /**< [max_batch × selection heads] chunks done, 0 between launches */
    /* attend: per (query head, split) m, l and head_dim partial sums */
    int64_t partial_slots;
    float *partials;          /**< [partial_slots][head_dim + 2]                     */
    uint32_t *attend_arrived; /**< [max_batch × q_heads] splits done per unit, 0 between launches */
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

/** Shared memory of an encode block for `mlp` with `tile` rows, its parameters in shared memory
 *  (staged) or read from global memory. */
CU_HIDDEN size_t cu_encode_smem(const cu_mlp *mlp, int32_t tile, bool staged);
/** Shared memory of the match histogram pass for `bins` scores and `code_words` query-code words. */
CU_HIDDEN size_t cu_match_smem(int32_t bins, int32_t code_words);
/** Warps of a match block (each keeps a histogram of its slice of a chunk). */
CU_HIDDEN int32_t cu_match_warps(void);
/** (item, chunk) slots the match stage uses for `items` items under the plan. */
CU_HIDDEN int32_t cu_match_chunks(const cu_plan *plan, int64_t items);
/** Blocks per cluster (chunks per item, ≤ the match block's warps) of the one-launch match. */
CU_HIDDEN int32_t cu_match_cluster_size(const cu_plan *plan, int64_t items);
/** Splits per attend unit for `units` units of up to `max_len` tokens under the plan. */
CU_HIDDEN int32_t cu_attend_splits(const cu_plan *plan, int64_t units, int64_t max_len);

CU_HIDDEN ha_status cu_encode(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *a);
/** Both encodes of a decode step in one launch: the new keys (keys NULL: none) and the queries. */
CU_HIDDEN ha_status cu_encode_pair(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *keys,
                                   const ha_encode_args *queries);
CU_HIDDEN ha_status cu_match(const cu_ctx *ctx, const cu_plan *plan, const ha_match_args *a);
CU_HIDDEN ha_status cu_attend(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a);
/** The whole decode step in one launch where it applies (*launched true); else nothing is launched and
 *  the caller runs the stages. */
CU_HIDDEN ha_status cu_decode_fused(const cu_ctx *ctx, const cu_plan *plan, const ha_decode_args *d, bool *launched);
CU_HIDDEN ha_status cu_decode_fused_prepare(const cu_ctx *ctx);

#endif /* HA_CUDA_INTERNAL_H */
