/*
 * cuda_match_cluster.cu — the match stage in one launch (sm_90): a thread-block cluster per item,
 * one block per chunk of its candidates. Each block scores its chunk once (XOR + popcount), keeps
 * the scores in shared memory (a byte each where they fit), and counts them in per-warp histograms.
 * After a cluster barrier, every block reads the other blocks' chunk histograms through distributed
 * shared memory and plans the item by itself (the same integer arithmetic in each block, so the same
 * plan): the threshold T, the ties each chunk keeps (the most recent chunks first), its own offset.
 * Then each warp writes its slice's kept tokens from the stored scores, in order.
 *
 * Compared with the two-launch form (cuda_match.cu) nothing goes through global memory but the codes
 * in and the indices out: no histogram scratch, no arrival counter, no second read of the codes.
 */
#include <cooperative_groups.h>

#include "cuda_match.cuh"

/* Bytes of scores (S) as one 32-bit word per 4 tokens: 4 bytes, or 2 halves (two words). */
template <typename S>
static __device__ __forceinline__ void store_unit_scores(S *scores, int32_t i, const uint32_t (&sc)[4])
{
    if constexpr (sizeof(S) == 1) {
        *(uint32_t *)(scores + i) = sc[0] | sc[1] << 8 | sc[2] << 16 | sc[3] << 24;
    } else {
        uint32_t *w = (uint32_t *)(scores + i);
        w[0] = sc[0] | sc[1] << 16;
        w[1] = sc[2] | sc[3] << 16;
    }
}

template <typename S>
static __device__ __forceinline__ void load_unit_scores(const S *scores, int32_t i, uint32_t (&sc)[4])
{
    if constexpr (sizeof(S) == 1) {
        const uint32_t w = *(const uint32_t *)(scores + i);
        sc[0] = w & 0xffu;
        sc[1] = (w >> 8) & 0xffu;
        sc[2] = (w >> 16) & 0xffu;
        sc[3] = w >> 24;
    } else {
        const uint32_t *w = (const uint32_t *)(scores + i);
        const uint32_t w0 = w[0], w1 = w[1];
        sc[0] = w0 & 0xffffu;
        sc[1] = w0 >> 16;
        sc[2] = w1 & 0xffffu;
        sc[3] = w1 >> 16;
    }
}

/*
 * V = 4: one-word codes, contiguous and aligned (a 16-byte load gives a lane 4 tokens), the scores
 * kept 4 to a word (scores[i] is token base + i, base = lo rounded down to a multiple of 4; the
 * warps' slices are whole 4-token units, so no two warps write one word); G > 0: the group size, the
 * query codes in registers. V = 1: any layout, one token per lane and step (round_scores).
 * S: uint8_t where every score fits a byte (bins ≤ 256), else uint16_t.
 */
template <int V, int G, typename S>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, 2) match_cluster_kernel(const match_params p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    extern __shared__ __align__(16) uint32_t smem[];
    __shared__ uint32_t chunk_above[MATCH_WARPS], chunk_ties[MATCH_WARPS];
    __shared__ int32_t offset_s, skip_s;
    uint32_t *hist = smem;                              /* [MATCH_WARPS][bins]: each warp's slice     */
    uint32_t *chunk_hist = hist + MATCH_WARPS * p.bins; /* [bins]: this chunk's, read by the cluster  */
    uint32_t *total = chunk_hist + p.bins;              /* [bins]: the item's                         */
    uint32_t *qs = total + p.bins;                      /* [group × words + QS_PAD]                   */
    S *scores = (S *)(qs + p.group * p.words + QS_PAD); /* [score_capacity]: token base + i at i      */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int32_t C = p.chunks, c = (int32_t)cluster.block_rank();
    const int64_t item = blockIdx.x / C;
    const int32_t b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the query and key codes of the encode stage */

    const item_geometry g = geometry(p, b);
    int32_t *out = p.indices + item * p.index_stride;
    if (!write_fixed_rows(p, g, item, c, out))
        return; /* the same in every block of the cluster: none waits for another */
    int64_t lo, hi, wlo, whi;
    chunk_range(g, C, c, &lo, &hi);
    warp_slice<V>(lo, hi, warp, &wlo, &whi);
    const int64_t base = V == 4 ? lo & ~(int64_t)3 : lo;
    const int32_t rlo = (int32_t)(wlo - base), rhi = (int32_t)(whi - base); /* the slice, relative to base */
    for (int i = tid; i < MATCH_WARPS * p.bins; i += blockDim.x)
        hist[i] = 0;
    load_query_codes(p, b, s, qs);
    __syncthreads();

    /* score once: count, and keep */
    uint32_t *mine = hist + warp * p.bins;
    if constexpr (V == 4) {
        const uint4 *row = (const uint4 *)((const uint32_t *)p.k_codes.data + b * p.k_codes.stride_seq +
                                           s * p.k_codes.stride_head);
        const int group = G > 0 ? G : p.group;
        uint32_t q[G > 0 ? G : 1];
#pragma unroll
        for (int h = 0; h < (G > 0 ? G : 1); h++)
            q[h] = qs[h];
        const uint32_t mask = cu_code_word_mask(0, p.bits), best = (uint32_t)(group * p.bits);
        for (int64_t unit0 = wlo / 4; unit0 * 4 < whi; unit0 += 32 * MATCH_STEPS) {
            uint4 key[MATCH_STEPS];
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++) {
                const int64_t unit = unit0 + 32 * st + lane;
                key[st] = unit * 4 < whi ? __ldg(row + unit) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++) {
                const int32_t r0 = (int32_t)((unit0 + 32 * st + lane) * 4 - base);
                if (r0 >= rhi)
                    continue;
                const uint32_t k[4] = {key[st].x & mask, key[st].y & mask, key[st].z & mask, key[st].w & mask};
                uint32_t sc[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    uint32_t distance = 0;
                    if constexpr (G > 0) {
#pragma unroll
                        for (int h = 0; h < G; h++)
                            distance += __popc(q[h] ^ k[j]);
                    } else {
                        for (int h = 0; h < group; h++)
                            distance += __popc(qs[h] ^ k[j]);
                    }
                    sc[j] = best - distance;
                    if (r0 + j >= rlo && r0 + j < rhi)
                        atomicAdd(&mine[sc[j]], 1u);
                }
                store_unit_scores<S>(scores, r0, sc);
            }
        }
    } else {
        for (int64_t unit0 = wlo; unit0 < whi; unit0 += 32 * MATCH_STEPS) {
            uint32_t sc[MATCH_STEPS][1];
            round_scores<1>(p, qs, b, s, unit0, wlo, whi, sc);
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++)
                if (sc[st][0] != UINT32_MAX) {
                    atomicAdd(&mine[sc[st][0]], 1u);
                    scores[unit0 + 32 * st + lane - base] = (S)sc[st][0];
                }
        }
    }
    __syncthreads();
    for (int v = tid; v < p.bins; v += blockDim.x) {
        uint32_t sum = 0;
        for (int k = 0; k < MATCH_WARPS; k++)
            sum += hist[k * p.bins + v];
        chunk_hist[v] = sum;
    }
    cluster.sync(); /* every chunk's histogram is complete */

    /* the item's plan, the same in every block */
    for (int v = tid; v < p.bins; v += blockDim.x) {
        uint32_t sum = 0;
        for (int k = 0; k < C; k++)
            sum += cluster.map_shared_rank(chunk_hist, k)[v];
        total[v] = sum;
    }
    __syncthreads();
    long long above_T;
    const uint32_t T = find_threshold(total, p.bins, g.heavy, &above_T);
    if (warp < C) { /* warp k: chunk k's candidates above T, and its ties */
        const uint32_t *h = cluster.map_shared_rank(chunk_hist, warp);
        uint32_t above = 0;
        for (int v = (int)T + 1 + lane; v < p.bins; v += 32)
            above += h[v];
        for (int d = 16; d > 0; d >>= 1)
            above += __shfl_xor_sync(0xffffffffu, above, d);
        if (lane == 0) {
            chunk_above[warp] = above;
            chunk_ties[warp] = h[T];
        }
    }
    __syncthreads();
    cluster.barrier_arrive(); /* done with the other blocks' shared memory */
    if (tid == 0) {
        long long wanted = g.heavy - above_T, offset = 0, skip = 0; /* wanted: taken at score T */
        for (int k = C - 1; k >= 0; k--) {
            const long long take = wanted < 0 ? 0 : wanted > chunk_ties[k] ? chunk_ties[k] : wanted;
            wanted -= take;
            if (k < c)
                offset += chunk_above[k] + take;
            else if (k == c)
                skip = chunk_ties[k] - take;
        }
        offset_s = (int32_t)offset;
        skip_s = (int32_t)skip;
    }

    /* the ordered write from the kept scores */
    int32_t above_run, ties_run; /* its barriers also publish offset_s, skip_s */
    warp_offsets(mine, p.bins, T, &above_run, &ties_run);
    write_slice<V>(wlo, whi, T, skip_s, out + g.lo + offset_s, above_run, ties_run,
                   [&](int64_t unit0, uint32_t (&sc)[MATCH_STEPS][V]) {
#pragma unroll
                       for (int st = 0; st < MATCH_STEPS; st++) {
                           const int32_t r0 = (int32_t)((unit0 + 32 * st + lane) * V - base);
                           if constexpr (V == 4) {
                               uint32_t u[4] = {0, 0, 0, 0};
                               if (r0 < rhi)
                                   load_unit_scores<S>(scores, r0, u);
#pragma unroll
                               for (int j = 0; j < 4; j++)
                                   sc[st][j] = r0 + j >= rlo && r0 + j < rhi ? u[j] : UINT32_MAX;
                           } else {
                               sc[st][0] = r0 >= rlo && r0 < rhi ? (uint32_t)scores[r0] : UINT32_MAX;
                           }
                       }
                   });
    cluster.barrier_wait(); /* the other blocks are done with this one's histogram */
#else
    (void)p;
    __trap(); /* launched only on sm_90 and newer */
#endif
}

/* ---- host side ---------------------------------------------------------------------------------------- */

static size_t score_bytes(int32_t bins)
{
    return bins <= 256 ? 1 : 2;
}

static size_t cluster_smem(const match_params &p, int64_t capacity)
{
    return ((size_t)(MATCH_WARPS + 2) * (size_t)p.bins + (size_t)p.group * (size_t)p.words + QS_PAD) *
               sizeof(uint32_t) + (size_t)capacity * score_bytes(p.bins);
}

/* spare scores: a chunk is at most ceil(candidates / chunks) long, and its words of 4 scores start
 * up to 3 tokens before it and end up to 3 after it */
static int64_t capacity_for(int64_t max_chunk)
{
    return max_chunk + 8;
}

bool cu_match_cluster_fits(const cu_ctx *ctx, const match_params &p, int64_t max_chunk)
{
    return p.bins <= 65536 && p.chunks >= 1 && p.chunks <= MATCH_WARPS &&
           cluster_smem(p, capacity_for(max_chunk)) + 1024 <= ctx->smem_optin;
}

template <int V, int G, typename S>
static ha_status launch(const cu_ctx *ctx, const match_params &p, cudaStream_t stream)
{
    const size_t smem = cluster_smem(p, p.score_capacity);
    const unsigned grid = (unsigned)((int64_t)p.batch * p.sel_heads * p.chunks);
    return cu_launch(ctx, match_cluster_kernel<V, G, S>, grid, CU_MATCH_THREADS, smem, stream, (unsigned)p.chunks,
                     "cuda match: cluster kernel launch", p);
}

/* The instance for the code layout, the group size and the score width. */
template <typename S>
static ha_status launch_for(const cu_ctx *ctx, const match_params &p, bool vector, cudaStream_t stream)
{
    if (!vector)
        return launch<1, 0, S>(ctx, p, stream);
    switch (p.group) {
    case 1: return launch<4, 1, S>(ctx, p, stream);
    case 4: return launch<4, 4, S>(ctx, p, stream);
    default: return launch<4, 0, S>(ctx, p, stream);
    }
}

ha_status cu_match_cluster(const cu_ctx *ctx, const match_params &p0, bool vector, cudaStream_t stream)
{
    match_params p = p0;
    p.score_capacity = (int32_t)capacity_for((p.max_tokens + p.chunks - 1) / p.chunks);
    return score_bytes(p.bins) == 1 ? launch_for<uint8_t>(ctx, p, vector, stream)
                                    : launch_for<uint16_t>(ctx, p, vector, stream);
}

template <typename S>
static ha_status prepare_width(const cu_ctx *ctx)
{
    void (*kernels[4])(const match_params) = {match_cluster_kernel<1, 0, S>, match_cluster_kernel<4, 1, S>,
                                              match_cluster_kernel<4, 4, S>, match_cluster_kernel<4, 0, S>};
    ha_status st = HA_OK;
    for (int i = 0; i < 4 && st == HA_OK; i++)
        st = cu_prepare_kernel(kernels[i], ctx, "cuda init: match cluster kernel");
    return st;
}

ha_status cu_match_cluster_prepare(const cu_ctx *ctx)
{
    ha_status st = prepare_width<uint8_t>(ctx);
    return st != HA_OK ? st : prepare_width<uint16_t>(ctx);
}
