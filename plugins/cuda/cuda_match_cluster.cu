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
#include "cuda_match_cluster.cuh"

template <int V, int G, typename S, int HL>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, 2) match_cluster_kernel(const match_params p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    extern __shared__ __align__(16) uint32_t smem[];
    const int64_t item = blockIdx.x / p.chunks;
    const int32_t b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the query and key codes of the encode stage */
    match_cluster_item<V, G, S, HL>(p, smem, geometry(p, b), item, b, s, p.indices + item * p.index_stride,
                                    [&](uint32_t *qs) { load_query_codes(p, b, s, qs); });
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

/* Copies of a warp's histogram: one per lane where the bins are few (paper mode: 33) and the chunks
 * long enough for the collisions of one copy to cost more than its shared memory (which, taken, keeps
 * the match blocks from starting beside the encode blocks that they wait for);
 * HASHATTN_CUDA_MATCH_LANES=1 (tests) takes them wherever the bins allow, =0 never. */
static int32_t hist_lanes(const cu_ctx *ctx, const match_params &p, int64_t capacity)
{
    const bool few = p.bins <= 40;
    if (ctx->match_lanes >= 0)
        return few && ctx->match_lanes ? 32 : 1;
    return few && capacity >= 4096 ? 32 : 1;
}

static size_t cluster_smem(const match_params &p, int64_t capacity)
{
    const size_t lane_bins = ((size_t)p.bins + 3) & ~(size_t)3;
    const size_t words = (size_t)MATCH_WARPS * lane_bins * (size_t)p.hist_lanes +
                         (size_t)(MATCH_WARPS + 2) * (size_t)p.bins + (size_t)p.group * (size_t)p.words + QS_PAD;
    return ((words + 3) & ~(size_t)3) * sizeof(uint32_t) + (size_t)capacity * score_bytes(p.bins);
}

/* spare scores: a chunk is at most ceil(candidates / chunks) long, its scores start up to
 * SCORE_ALIGN − 1 tokens before it, and the last lane's span of the write ends up to WRITE_SPAN
 * tokens after it */
static int64_t capacity_for(int64_t max_chunk)
{
    return (max_chunk + SCORE_ALIGN + WRITE_SPAN + 15) & ~(int64_t)15;
}

bool cu_match_cluster_fits(const cu_ctx *ctx, const match_params &p0, int64_t max_chunk)
{
    match_params p = p0;
    p.hist_lanes = hist_lanes(ctx, p, capacity_for(max_chunk));
    return p.bins <= 65536 && p.chunks >= 1 && p.chunks <= MATCH_CLUSTER_WIDE &&
           cluster_smem(p, capacity_for(max_chunk)) + 1024 <= ctx->smem_optin;
}

typedef void (*match_cluster_fn)(const match_params);

/* The instance for the code layout, the group size, the score width and the histogram copies (one-word
 * codes of a group of 1 have at most 33 bins; a group of 4, at most 129). */
static match_cluster_fn instance(const match_params &p, bool vector)
{
    const bool lanes = p.hist_lanes > 1;
    if (score_bytes(p.bins) == 2)
        return vector ? match_cluster_kernel<4, 0, uint16_t, 1> : match_cluster_kernel<1, 0, uint16_t, 1>;
    if (!vector)
        return lanes ? match_cluster_kernel<1, 0, uint8_t, 32> : match_cluster_kernel<1, 0, uint8_t, 1>;
    if (p.group == 1)
        return lanes ? match_cluster_kernel<4, 1, uint8_t, 32> : match_cluster_kernel<4, 1, uint8_t, 1>;
    if (p.group == 4 && !lanes)
        return match_cluster_kernel<4, 4, uint8_t, 1>;
    return lanes ? match_cluster_kernel<4, 0, uint8_t, 32> : match_cluster_kernel<4, 0, uint8_t, 1>;
}

size_t cu_match_cluster_setup(const cu_ctx *ctx, match_params *p)
{
    p->score_capacity = (int32_t)capacity_for((p->max_tokens + p->chunks - 1) / p->chunks);
    p->hist_lanes = hist_lanes(ctx, *p, p->score_capacity);
    return cluster_smem(*p, p->score_capacity);
}

ha_status cu_match_cluster(const cu_ctx *ctx, const match_params &p0, int32_t narrow, bool vector,
                           cudaStream_t stream)
{
    match_params p = p0;
    size_t smem = cu_match_cluster_setup(ctx, &p);
    match_cluster_fn kernel = instance(p, vector);
    int active = 1;
    /* an error of the query (a cluster size this device refuses) reads as: not this size */
    if (p.chunks > CU_MATCH_CLUSTER_MAX && cu_max_active_clusters(ctx, kernel, p.chunks, smem, &active) != HA_OK) {
        cudaGetLastError();
        active = 0;
    }
    if (active < 1) {
        p.chunks = narrow;
        smem = cu_match_cluster_setup(ctx, &p);
        kernel = instance(p, vector);
    }
    const unsigned grid = (unsigned)((int64_t)p.batch * p.sel_heads * p.chunks);
    return cu_launch(ctx, kernel, grid, CU_MATCH_THREADS, smem, stream, (unsigned)p.chunks,
                     "cuda match: cluster kernel launch", p);
}

ha_status cu_match_cluster_prepare(const cu_ctx *ctx)
{
    void (*kernels[])(const match_params) = {
        match_cluster_kernel<1, 0, uint8_t, 32>, match_cluster_kernel<1, 0, uint8_t, 1>,
        match_cluster_kernel<4, 1, uint8_t, 32>, match_cluster_kernel<4, 1, uint8_t, 1>,
        match_cluster_kernel<4, 4, uint8_t, 1>,
        match_cluster_kernel<4, 0, uint8_t, 32>, match_cluster_kernel<4, 0, uint8_t, 1>,
        match_cluster_kernel<1, 0, uint16_t, 1>, match_cluster_kernel<4, 0, uint16_t, 1>};
    ha_status st = HA_OK;
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0] && st == HA_OK; i++) {
        st = cu_prepare_kernel(kernels[i], ctx, "cuda init: match cluster kernel");
        if (st == HA_OK) /* clusters of up to MATCH_CLUSTER_WIDE blocks */
            st = cu_check(cudaFuncSetAttribute(kernels[i], cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
                          "cuda init: match cluster kernel");
    }
    return st;
}
