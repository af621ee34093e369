/*
 * cuda_encode_row.cu — the encode with the weights in registers: a block per (head, tile of R ≤ 16 rows)
 * where those blocks fit one wave (the decode step at batch 1, R = 1; small and medium batches, R > 1).
 *
 * With few rows each weight is used a few times at most, so the tile kernel's staging of the head's
 * 148 KB of parameters in shared memory was pure latency (issuing ~36 copies per thread, waiting for
 * layer 0, two barriers per layer; at batch 8–16 its launch took 16–18 µs on an H200). Here every warp
 * streams its outputs' weight rows (cu_mlp row_storage: output-major, rows padded to 4 floats) straight
 * from global memory into registers, 512 contiguous bytes per warp and output, and forms the dot
 * products with shuffles:
 *
 *   - 16 warps; warp w owns outputs j·16 + w (j < 8) of every layer, lane i the inputs 4i..4i+3;
 *   - layers 0 and 1 are loaded before the wait for the previous kernel (the weights are constant),
 *     layer l + 2 is issued into layer l's registers as soon as layer l's products are formed, so the
 *     loads of the next layers are in flight during the current layer's reduction and barrier;
 *   - a layer's 8 sums per warp and row take 9 shuffles (halving exchanges), after which lanes
 *     4s..4s+3 hold output slot s; one block barrier per layer hands the activations on through
 *     shared memory (two buffers);
 *   - the last layer's outputs become code bits by one warp ballot per word.
 *
 * One row (R = 1, encode_row_item in cuda_encode_row.cuh, shared with the fused decode step): each warp
 * reads the input row itself, so the first layer needs no barrier. R rows (encode_rows_item below):
 * warp r stages input row r in shared memory, and every warp forms the products of the R rows in turn
 * with the layer's weights held in registers, four rows at a time: a row's products and the first
 * three halving shuffles each, then one exchange leaves each of a slot's 4 lanes one row's sum, so the
 * last shuffles and the SiLU are shared by the four rows; the layer of ≤ 32 outputs skips the product
 * slots past its width.
 */
#include "cuda_encode_row.cuh"

static_assert(CU_ENCODE_ROW_MAX_TILE <= ROW_WARPS, "warp r stages input row r");

typedef struct encode_row_params {
    encode_job job[2];
    int32_t jobs;
} encode_row_params;

/* The products of one row: v[j], this lane's part of slot j's sum, for the LIVE first slots (the rest
 * 0: their outputs are past the layer's width, their weights 0). */
template <int LIVE>
static __device__ __forceinline__ void row_products(const float4 x, const row_layer &Ly, float (&v)[ROW_SLOTS])
{
#pragma unroll
    for (int j = 0; j < ROW_SLOTS; j++)
        v[j] = j < LIVE ? fmaf(x.w, Ly.w[j].w, fmaf(x.z, Ly.w[j].z, fmaf(x.y, Ly.w[j].y, x.x * Ly.w[j].x))) : 0.0f;
}

/* Q rows' halved sums p[q] (halve_slots) → in lane l the warp's sum of slot lane_slot(l) for row
 * l mod Q (Q = 4: each of the 4 lanes of a slot a row; Q = 2: lanes l and l ^ 2 the same row). The 4
 * lanes of a slot are added in the order reduce_slots adds them, so a row's sums are the one-row
 * kernel's to the bit. */
template <int Q>
static __device__ __forceinline__ float gather_rows(float (&p)[Q], int lane)
{
    static_assert(Q == 2 || Q == 4, "the 4 lanes of a slot hold 2 or 4 rows");
    const bool b1 = lane & 2, b0 = lane & 1;
    float a[2];
    if constexpr (Q == 4) {
#pragma unroll
        for (int j = 0; j < 2; j++)
            a[j] = (b1 ? p[j + 2] : p[j]) + __shfl_xor_sync(0xffffffffu, b1 ? p[j] : p[j + 2], 2);
    } else {
#pragma unroll
        for (int j = 0; j < 2; j++)
            a[j] = p[j] + __shfl_xor_sync(0xffffffffu, p[j], 2);
    }
    return (b0 ? a[1] : a[0]) + __shfl_xor_sync(0xffffffffu, b0 ? a[0] : a[1], 1);
}

/* Rows rho0 .. rho0 + R - 1 of job J through MLP head m (rows past the job's end: nothing written).
 * act[1] takes the input rows, layer l reads act[(l + 1) & 1] and writes act[l & 1] (the last layer its
 * sums before the signs), every element of a row: 0 past the layer's width, so that no input needs
 * clipping. The rows go Q at a time: each row's products and halving shuffles, then one exchange
 * leaves each of a slot's 4 lanes a row's sum, and one SiLU serves Q rows. Every thread of the block
 * calls it; the caller puts a barrier between calls. */
template <int R>
static __device__ __forceinline__ void encode_rows_item(const encode_job &J, int32_t m, int64_t rho0,
                                                        float (&act)[2][R][CU_ENCODE_ROW_WIDTH],
                                                        int64_t (&row_t)[R], int32_t (&row_b)[R])
{
    constexpr int Q = R >= 4 ? 4 : 2;
    static_assert(R % Q == 0 && R <= CU_ENCODE_ROW_MAX_TILE, "rows go Q at a time, staged a warp each");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, k = 4 * lane;
    const float *P = J.row_params + (int64_t)m * J.row_head_floats;

    row_layer L[2]; /* layers l and l + 1 */
    load_layer(P, J, 0, warp, lane, L[0]);
    if (J.depth > 1)
        load_layer(P, J, 1, warp, lane, L[1]);
    cu_wait_prior_grids();
    if (warp < R) {
        int64_t t;
        int32_t b;
        encode_row_token(J, rho0 + warp, &t, &b);
        *(float4 *)&act[1][warp][k] = load_inputs(J, m, t, b, k);
        if (lane == 0) {
            row_t[warp] = t;
            row_b[warp] = b;
        }
    }
    __syncthreads();

    const int q = lane & (Q - 1); /* the row of a group this lane finishes */
    const bool finishes = (lane & 3) < Q;
#pragma unroll
    for (int l = 0; l < HA_PLUGIN_MAX_MLP_DEPTH; l++) {
        if (l >= J.depth)
            break;
        row_layer &Ly = L[l & 1];
        const float(&src)[R][CU_ENCODE_ROW_WIDTH] = act[(l + 1) & 1];
        float(&dst)[R][CU_ENCODE_ROW_WIDTH] = act[l & 1];
        const int O = J.dims[l + 1];
        const int o = slot_output(lane_slot(lane), warp);
        const bool last = l == J.depth - 1;
        /* slots j with j·16 + warp < O; a layer of ≤ 32 outputs (the codes) has 2 in every warp */
        const bool narrow = O <= 2 * ROW_WARPS;
#pragma unroll 1
        for (int r = 0; r < R; r += Q) {
            float p[Q];
#pragma unroll
            for (int i = 0; i < Q; i++) {
                const float4 x = *(const float4 *)&src[r + i][k];
                float v[ROW_SLOTS];
                if (narrow)
                    row_products<2>(x, Ly, v);
                else
                    row_products<ROW_SLOTS>(x, Ly, v);
                p[i] = halve_slots(v, lane);
            }
            const float y = gather_rows<Q>(p, lane) + Ly.bias;
            if (finishes)
                dst[r + q][o] = o >= O ? 0.0f : last ? y : encode_silu(y);
        }
        if (l + 2 < J.depth) /* Ly's registers are free: layer l + 2 arrives during layer l + 1 */
            load_layer(P, J, l + 2, warp, lane, Ly);
        __syncthreads();
    }

    /* bit i of row r's code is element i of its last sums: one ballot per word (a word's 32 elements are
     * one warp's, as words × 32 and the block are multiples of 32) */
    const float(&out)[R][CU_ENCODE_ROW_WIDTH] = act[(J.depth - 1) & 1];
    const int bits = J.words * 32, O = J.dims[J.depth];
    for (int e = tid; e < R * bits; e += blockDim.x) {
        const int r = e / bits, i = e % bits;
        const unsigned word = __ballot_sync(0xffffffffu, i < O && out[r][i] > 0.0f);
        if (lane == 0 && row_t[r] >= 0)
            ((uint32_t *)cu_row(J.out, sizeof(uint32_t), row_b[r], m, row_t[r]))[i >> 5] = word;
    }
}

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

template <int R>
static __global__ void __launch_bounds__(CU_ENCODE_ROW_THREADS, 1) encode_rows_kernel(const encode_row_params p)
{
    __shared__ __align__(16) float act[2][R][CU_ENCODE_ROW_WIDTH];
    __shared__ int64_t row_t[R];
    __shared__ int32_t row_b[R];
    const int64_t total = encode_items(p.job, p.jobs);
    cu_let_next_grid_start();

    for (int64_t item = blockIdx.x; item < total; item += gridDim.x) {
        int64_t local, tile;
        const encode_job &J = encode_item(p.job, item, &local);
        const int32_t m = (int32_t)encode_div(local, J.tiles, &tile);
        encode_rows_item<R>(J, m, tile * R, act, row_t, row_b);
        if (item + gridDim.x < total)
            __syncthreads(); /* the next item writes act and the row tokens */
    }
}

ha_status cu_encode_rows_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(encode_row_kernel, ctx, "cuda init: one-row encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_rows_kernel<2>, ctx, "cuda init: row encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_rows_kernel<4>, ctx, "cuda init: row encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_rows_kernel<8>, ctx, "cuda init: row encode kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(encode_rows_kernel<16>, ctx, "cuda init: row encode kernel");
    return st;
}

int32_t cu_encode_rows_tile(const encode_job *jobs, int32_t count, int64_t most_blocks)
{
    for (int32_t tile = 1; tile <= CU_ENCODE_ROW_MAX_TILE; tile *= 2) {
        int64_t blocks = 0;
        for (int32_t i = 0; i < count; i++)
            blocks += (int64_t)jobs[i].heads * ((jobs[i].rows + tile - 1) / tile);
        if (blocks <= most_blocks)
            return tile;
    }
    return 0;
}

ha_status cu_encode_rows_launch(const cu_ctx *ctx, const encode_job *jobs, int32_t count, int32_t tile,
                                cudaStream_t stream)
{
    encode_row_params p;
    memset(&p, 0, sizeof p);
    int64_t total = 0;
    for (int32_t i = 0; i < count; i++) {
        p.job[i] = jobs[i];
        p.job[i].tiles = (p.job[i].rows + tile - 1) / tile;
        p.job[i].blocks = (int64_t)p.job[i].heads * p.job[i].tiles;
        total += p.job[i].blocks;
    }
    p.jobs = count;
    void (*kernel)(const encode_row_params) = tile == 1   ? encode_row_kernel
                                              : tile == 2 ? encode_rows_kernel<2>
                                              : tile == 4 ? encode_rows_kernel<4>
                                              : tile == 8 ? encode_rows_kernel<8>
                                                          : encode_rows_kernel<16>;
    return cu_launch(ctx, kernel, cu_grid(total), CU_ENCODE_ROW_THREADS, 0, stream, 1,
                     "cuda encode: row kernel launch", p);
}
