/*
 * cuda_encode.cu — the encode stage: vectors → sign bits of the mapping MLP. A block runs a tile of
 * up to TILE tokens of one (sequence, MLP head) through every layer: activations stay in shared
 * memory, each thread computes one output for all tokens of the tile (so each weight is read once
 * per tile, coalesced across the block), and the last layer's signs are packed 32 at a time with a
 * warp ballot.
 */
#include "cuda_device.cuh"

typedef struct encode_params {
    ha_rows in;
    ha_rows out;
    int32_t heads;         /**< MLP heads                         */
    int32_t per_in_head;   /**< MLP heads reading one input head  */
    int32_t depth;
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    const float *wt[HA_PLUGIN_MAX_MLP_DEPTH];
    const float *bias[HA_PLUGIN_MAX_MLP_DEPTH];
    int32_t width;         /**< row stride of the activation buffers (widest layer input) */
    int32_t words;         /**< code words written per token       */
    int32_t batch;
    int32_t count;
    const int32_t *end;
    int64_t max_tokens;
    int64_t tiles;         /**< tiles per (sequence, head)         */
} encode_params;

static __device__ __forceinline__ float silu(float y)
{
    return y / (1.0f + expf(-y));
}

template <int TILE>
static __global__ void __launch_bounds__(CU_ENCODE_THREADS) encode_kernel(const encode_params p)
{
    extern __shared__ float smem[];
    const int64_t items = (int64_t)p.batch * p.heads * p.tiles;
    const size_t in_elem = ha_elem_size(p.in.dtype);
    const int64_t count = p.count < p.max_tokens ? p.count : p.max_tokens;
    const int lane = threadIdx.x & 31;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const int32_t b = (int32_t)(item / (p.heads * p.tiles));
        const int32_t m = (int32_t)(item / p.tiles % p.heads);
        const int64_t tile = item % p.tiles;
        const int64_t end = p.end ? cu_clamp_len(p.end[b], p.max_tokens) : count;
        const int64_t t0 = (end - count > 0 ? end - count : 0) + tile * TILE;
        if (t0 >= end)
            continue; /* the same for the whole block */
        const int n = end - t0 < TILE ? (int)(end - t0) : TILE;
        const int32_t in_head = m / p.per_in_head;

        float *x = smem, *y = smem + TILE * p.width;
        const int d0 = p.dims[0];
        for (int e = threadIdx.x; e < TILE * d0; e += blockDim.x) {
            const int t = e / d0, k = e % d0;
            x[t * p.width + k] = t < n ? ha_load_f32(cu_row(p.in, in_elem, b, in_head, t0 + t), p.in.dtype, k) : 0.0f;
        }
        __syncthreads();
        for (int l = 0; l < p.depth; l++) {
            const int in_dim = p.dims[l], out_dim = p.dims[l + 1];
            const float *wt = p.wt[l] + (size_t)m * in_dim * out_dim;
            const float *bias = p.bias[l] + (size_t)m * out_dim;
            const bool last = l == p.depth - 1;
            /* the last layer covers every bit of every word, so whole warps take part in each ballot */
            const int o_end = last ? p.words * 32 : out_dim;
            for (int o0 = 0; o0 < o_end; o0 += blockDim.x) {
                const int o = o0 + threadIdx.x;
                const bool valid = o < out_dim;
                float acc[TILE];
                const float b0 = valid ? bias[o] : 0.0f;
#pragma unroll
                for (int t = 0; t < TILE; t++)
                    acc[t] = b0;
                if (valid) {
#pragma unroll 4
                    for (int k = 0; k < in_dim; k++) {
                        const float w = wt[(size_t)k * out_dim + o];
#pragma unroll
                        for (int t = 0; t < TILE; t++)
                            acc[t] = fmaf(x[t * p.width + k], w, acc[t]);
                    }
                }
                if (!last) {
                    if (valid) {
#pragma unroll
                        for (int t = 0; t < TILE; t++)
                            y[t * p.width + o] = silu(acc[t]);
                    }
                    continue;
                }
#pragma unroll
                for (int t = 0; t < TILE; t++) {
                    const unsigned word = __ballot_sync(0xffffffffu, valid && acc[t] > 0.0f);
                    if (lane == 0 && t < n && (o >> 5) < p.words)
                        ((uint32_t *)cu_row(p.out, sizeof(uint32_t), b, m, t0 + t))[o >> 5] = word;
                }
            }
            __syncthreads();
            float *swap = x;
            x = y;
            y = swap;
        }
    }
}

size_t cu_encode_smem(int32_t width, int32_t tile)
{
    return 2 * (size_t)tile * (size_t)width * sizeof(float);
}

ha_status cu_encode_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(encode_kernel<CU_ENCODE_TILE>, ctx, "cuda init: encode kernel");
    return st != HA_OK ? st : cu_prepare_kernel(encode_kernel<1>, ctx, "cuda init: encode kernel");
}

ha_status cu_encode(const cu_ctx *ctx, const cu_plan *plan, const ha_encode_args *a)
{
    const cu_mlp *mlp = (const cu_mlp *)a->mlp;
    if (!mlp || a->in.heads < 1 || mlp->heads % a->in.heads != 0 || a->in.dim < mlp->dims[0] || a->out.dim < 1 ||
        (int64_t)a->out.dim * 32 < mlp->dims[mlp->depth] || a->out.heads != mlp->heads)
        return cu_fail(HA_ERR_SHAPE, "cuda encode: MLP heads %d, input heads %d, input dim %d, out heads %d, out words "
                       "%d do not fit together", mlp ? mlp->heads : 0, a->in.heads, a->in.dim, a->out.heads,
                       a->out.dim);
    if (a->batch > plan->desc.max_batch)
        return cu_fail(HA_ERR_STATE, "cuda encode: batch %d exceeds the plan's %d", a->batch, plan->desc.max_batch);
    if (a->batch <= 0 || a->count <= 0)
        return HA_OK;

    encode_params p;
    memset(&p, 0, sizeof p);
    p.in = a->in;
    p.out = a->out;
    p.heads = mlp->heads;
    p.per_in_head = mlp->heads / a->in.heads;
    p.depth = mlp->depth;
    for (int i = 0; i <= mlp->depth; i++)
        p.dims[i] = mlp->dims[i];
    for (int i = 0; i < mlp->depth; i++) {
        p.wt[i] = mlp->wt[i];
        p.bias[i] = mlp->bias[i];
    }
    p.width = mlp->widest_input;
    p.words = a->out.dim;
    p.batch = a->batch;
    p.count = a->count;
    p.end = a->end;
    p.max_tokens = plan->desc.max_tokens;
    const int64_t count = a->count < p.max_tokens ? a->count : p.max_tokens;
    cudaStream_t stream = (cudaStream_t)a->stream;

    const bool wide = cu_encode_smem(p.width, CU_ENCODE_TILE) > ctx->smem_optin;
    const int tile = wide ? 1 : CU_ENCODE_TILE;
    const size_t smem = cu_encode_smem(p.width, tile);
    p.tiles = (count + tile - 1) / tile;
    const unsigned grid = cu_grid((int64_t)p.batch * p.heads * p.tiles);
    if (wide)
        encode_kernel<1><<<grid, CU_ENCODE_THREADS, smem, stream>>>(p);
    else
        encode_kernel<CU_ENCODE_TILE><<<grid, CU_ENCODE_THREADS, smem, stream>>>(p);
    return cu_check(cudaGetLastError(), "cuda encode: kernel launch");
}
