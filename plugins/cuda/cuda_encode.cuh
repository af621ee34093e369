/*
 * cuda_encode.cuh — what the two encode kernels share: the job of one launch (one MLP over the rows of
 * a batch) and the rule that maps a row of the job to its token.
 *
 * cuda_encode.cu runs tiles of rows with the head's parameters staged in shared memory (prefill: many
 * rows per head); cuda_encode_row.cu runs 1–16 rows per block with the weights streamed straight into
 * registers (decode steps up to batch ~16, where staging was pure latency).
 */
#ifndef HA_CUDA_ENCODE_CUH
#define HA_CUDA_ENCODE_CUH

#include "cuda_device.cuh"

typedef struct encode_job {
    ha_rows in;
    ha_rows out;
    const float *params;   /**< cu_mlp storage: [heads][head_floats]  */
    int64_t head_floats;
    int64_t w_off[HA_PLUGIN_MAX_MLP_DEPTH];
    int64_t b_off[HA_PLUGIN_MAX_MLP_DEPTH];
    const float *row_params; /**< cu_mlp row_storage (output-major), NULL if the MLP has none */
    int32_t row_head_floats;
    int32_t row_w_off[HA_PLUGIN_MAX_MLP_DEPTH];
    int32_t row_b_off[HA_PLUGIN_MAX_MLP_DEPTH];
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    int32_t depth;
    int32_t heads;         /**< MLP heads                             */
    int32_t per_in_head;   /**< MLP heads reading one input head      */
    int32_t words;         /**< code words written per token          */
    int32_t batch;
    int32_t count;         /**< tokens per sequence, ≤ max_tokens     */
    const int32_t *end;
    int64_t max_tokens;
    int64_t rows;          /**< batch × count                          */
    int64_t tiles;         /**< tiles of rows per head                 */
    int64_t blocks;        /**< heads × tiles                          */
} encode_job;

/** Work items (blocks' worth) of a launch of `jobs` jobs; job 0's come first. */
static __device__ __forceinline__ int64_t encode_items(const encode_job (&job)[2], int32_t jobs)
{
    return job[0].blocks + (jobs > 1 ? job[1].blocks : 0);
}

/** The job of work item `item`, and in *local the item's index within it. */
static __device__ __forceinline__ const encode_job &encode_item(const encode_job (&job)[2], int64_t item,
                                                                int64_t *local)
{
    const bool second = item >= job[0].blocks;
    *local = second ? item - job[0].blocks : item;
    return second ? job[1] : job[0];
}

/** x / y and x % y; one row per sequence or head (y = 1, the batch-1 decode step) skips the 64-bit
 *  division, a ~100-instruction dependent chain ahead of the kernels' first loads. */
static __device__ __forceinline__ int64_t encode_div(int64_t x, int64_t y, int64_t *rem)
{
    if (y == 1) {
        *rem = 0;
        return x;
    }
    *rem = x % y;
    return x / y;
}

/** SiLU, the hidden layers' activation (both kernels: the same function as the reference's). */
static __device__ __forceinline__ float encode_silu(float y)
{
    return y / (1.0f + expf(-y));
}

/** Row ρ of job J is token first + ρ % count of sequence ρ / count, where the sequence's `count` newest
 *  tokens end at its length (J.end, read from device memory: call after cu_wait_prior_grids). *t = -1
 *  where the sequence is shorter than that row (nothing is written for it). */
static __device__ __forceinline__ void encode_row_token(const encode_job &J, int64_t rho, int64_t *t, int32_t *b)
{
    *t = -1;
    *b = 0;
    if (rho >= J.rows)
        return;
    int64_t j;
    *b = (int32_t)encode_div(rho, J.count, &j);
    const int64_t end = J.end ? cu_clamp_len(J.end[*b], J.max_tokens) : J.count;
    const int64_t first = end - J.count > 0 ? end - J.count : 0;
    *t = first + j < end ? first + j : -1;
}

/** Whether the row kernel can run job J (its MLP has the output-major copy, the words fit). */
static inline bool cu_encode_row_fits(const encode_job *J)
{
    return J->row_params && J->words <= CU_ENCODE_ROW_THREADS / 32;
}

/** Checks one encode's arguments and fills its job; *empty when it has nothing to do. */
CU_HIDDEN ha_status cu_encode_job(const cu_plan *plan, const ha_encode_args *a, encode_job *J, bool *empty);
/** Rows per block (1, 2, 4, 8 or 16) of the row kernel for `count` jobs: the fewest whose blocks, a
 *  block per (job, head, tile of rows), number at most most_blocks; 0 where 16 rows are still too few. */
CU_HIDDEN int32_t cu_encode_rows_tile(const encode_job *jobs, int32_t count, int64_t most_blocks);
/** Launches the row kernel with `tile` rows per block (cu_encode_rows_tile) for the jobs (1 or 2). */
CU_HIDDEN ha_status cu_encode_rows_launch(const cu_ctx *ctx, const encode_job *jobs, int32_t count, int32_t tile,
                                          cudaStream_t stream);
/** Loads the row kernels (cu_encode_prepare calls it). */
CU_HIDDEN ha_status cu_encode_rows_prepare(const cu_ctx *ctx);

#endif /* HA_CUDA_ENCODE_CUH */
