/*
 * cuda_encode_row.cu — the encode of one row per block: the decode step at batch 1.
 *
 * With one row each weight is used once, so the tile kernel's staging of the head's 148 KB of
 * parameters in shared memory was pure latency (issuing ~36 copies per thread, waiting for layer 0,
 * two barriers per layer). Here every warp streams its outputs' weight rows (cu_mlp row_storage:
 * output-major, rows padded to 4 floats) straight from global memory into registers, 512 contiguous
 * bytes per warp and output, and forms the dot products with shuffles:
 *
 *   - 16 warps; warp w owns outputs j·16 + w (j < 8) of every layer, lane i the inputs 4i..4i+3;
 *   - layers 0 and 1 are loaded before the wait for the previous kernel (the weights are constant),
 *     layer l + 2 is issued into layer l's registers as soon as layer l's products are formed, so the
 *     loads of the next layers are in flight during the current layer's reduction and barrier;
 *   - each warp reads the input row itself (the sequence length, then its 4 inputs per lane), so the
 *     first layer needs no barrier; a layer's 8 sums per warp take 9 shuffles (halving exchanges),
 *     after which lanes 4s..4s+3 hold output slot s; one block barrier per layer hands the
 *     activations on through shared memory (two buffers);
 *   - the last layer's outputs become code bits by one warp ballot per word.
 */
#include "cuda_encode_row.cuh"

typedef struct encode_row_params {
    encode_job job[2];
    int32_t jobs;
} encode_row_params;

static __global__ void __launch_bounds__(CU_ENCODE_ROW_THREADS, 1) encode_row_kernel(const encode_row_params p)
{
    __shared__ __align__(16) float act[2][CU_ENCODE_ROW_WIDTH];
    __shared__ float last_out[CU_ENCODE_ROW_WIDTH]; /* the last layer's outputs (before the signs) */
    const int64_t total = encode_items(p.job, p.jobs);
    cu_let_next_grid_start();

    for (int64_t item = blockIdx.x; item < total; item += gridDim.x) {
        int64_t local;
        const encode_job &J = encode_item(p.job, item, &local);
        int64_t rho;
        const int32_t m = (int32_t)encode_div(local, J.rows, &rho);
        encode_row_item<1>(J, m, rho, act, last_out, NULL);
        if (item + gridDim.x < total)
            __syncthreads(); /* the next item writes act and last_out */
    }
}

ha_status cu_encode_rows_prepare(const cu_ctx *ctx)
{
    return cu_prepare_kernel(encode_row_kernel, ctx, "cuda init: one-row encode kernel");
}

ha_status cu_encode_rows_launch(const cu_ctx *ctx, const encode_job *jobs, int32_t count, cudaStream_t stream)
{
    encode_row_params p;
    memset(&p, 0, sizeof p);
    int64_t total = 0;
    for (int32_t i = 0; i < count; i++) {
        p.job[i] = jobs[i];
        p.job[i].blocks = (int64_t)p.job[i].heads * p.job[i].rows;
        total += p.job[i].blocks;
    }
    p.jobs = count;
    return cu_launch(ctx, encode_row_kernel, cu_grid(total), CU_ENCODE_ROW_THREADS, 0, stream, 1,
                     "cuda encode: one-row kernel launch", p);
}
