/*
 * cuda_match.cu — the match stage: per (sequence b, selection head s) "item", the heavy candidates
 * [sink, n - local) with the best Hamming similarity, chosen by a histogram threshold (scores take
 * only group × bits + 1 values) under the tie rule (equal scores: the more recent first). Each
 * item's candidates are split into `chunks` contiguous chunks so that a few long sequences still
 * fill the device, and each chunk into one contiguous slice per warp.
 *
 * On sm_90 the stage is one launch of thread-block clusters, a cluster per item
 * (cuda_match_cluster.cu). Elsewhere, and where an item's scores do not fit the shared memory of
 * its cluster, two launches (this file):
 *
 *   1. hist   per (item, chunk): every warp's histogram of its slice's scores (XOR + popcount),
 *             and their sum, the chunk's. The last chunk of an item to finish (a counter per item)
 *             plans the item: the threshold score T from the summed histograms, how many ties with
 *             score T each chunk keeps (the most recent chunks first), and each chunk's offset;
 *   2. write  per (item, chunk): the item's count, the sinks and locals (spread over the chunks), and
 *             the chunk's selected candidates in order: the warps' histograms give each warp its
 *             offset, and each warp walks its slice once, placing its kept tokens by warp prefix sums.
 *
 * Scores are recomputed in pass 2 rather than stored: codes are a few bytes per token. Where the
 * codes are one word per token, contiguous and 16-byte aligned, a lane loads 4 tokens' codes at once.
 * Indices are written ascending: sinks, then the candidates chunk by chunk, then the locals.
 */
#include "cuda_match.cuh"

/* ---- pass 1: histograms, and the plan of each item by its last chunk ------------------------------------ */

/* Plans one item from its chunks' histograms (every thread of the block calls it): the threshold
 * T, the ties each chunk keeps (the most recent chunks first) and each chunk's output offset.
 * total: shared [bins]. */
static __device__ void plan_item(const match_params &p, int64_t item, int64_t heavy, uint32_t *total)
{
    __shared__ long long scan[33];
    __shared__ int32_t take_of[CU_MATCH_THREADS];
    const int tid = threadIdx.x;
    const uint32_t *h = p.hist + item * p.chunks * p.bins;
    /* written by other blocks of this launch: read through L2 */
    for (int v = tid; v < p.bins; v += blockDim.x) {
        uint32_t sum = 0;
        for (int c = 0; c < p.chunks; c++)
            sum += __ldcg(&h[(int64_t)c * p.bins + v]);
        total[v] = sum;
    }
    __syncthreads();
    long long above_T, all;
    const uint32_t T = find_threshold(total, p.bins, heavy, &above_T);
    const long long wanted = heavy - above_T; /* candidates taken at score T */

    /* Ties are taken from the most recent chunk down: thread i looks at chunk chunks-1-i. */
    const int rc = p.chunks - 1 - tid;
    const long long ties_rc = tid < p.chunks ? __ldcg(&h[(int64_t)rc * p.bins + T]) : 0;
    const long long ties_after = cu_block_exclusive_scan<long long>(ties_rc, &all, scan);
    if (tid < p.chunks) {
        long long take = wanted - ties_after;
        take_of[rc] = (int32_t)(take < 0 ? 0 : take > ties_rc ? ties_rc : take);
    }
    __syncthreads();
    long long selected = 0, ties = 0;
    if (tid < p.chunks) {
        const uint32_t *hc = h + (int64_t)tid * p.bins;
        ties = __ldcg(&hc[T]);
        for (int v = (int)T + 1; v < p.bins; v++)
            selected += __ldcg(&hc[v]);
        selected += take_of[tid];
    }
    const long long offset = cu_block_exclusive_scan<long long>(selected, &all, scan);
    if (tid < p.chunks) {
        int32_t *info = p.chunk_info + (item * p.chunks + tid) * 2;
        info[0] = (int32_t)offset;
        info[1] = (int32_t)(ties - take_of[tid]);
    }
    if (tid == 0)
        p.threshold[item] = T;
}

template <int V>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, 2) match_hist_kernel(const match_params p)
{
    extern __shared__ uint32_t smem[];
    uint32_t *hist = smem, *qs = smem + MATCH_WARPS * p.bins; /* a histogram per warp, then the query codes */
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the query and key codes of the encode stage */
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        if (g.keep_all || g.heavy == 0)
            continue; /* the same for every chunk of the item: none plans it */
        int64_t lo, hi, wlo, whi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        warp_slice<V>(lo, hi, warp, &wlo, &whi);
        __syncthreads(); /* the previous item is done with shared memory */
        for (int i = tid; i < MATCH_WARPS * p.bins; i += blockDim.x)
            hist[i] = 0;
        load_query_codes(p, b, s, qs);
        __syncthreads();
        uint32_t *mine = hist + warp * p.bins;
        for (int64_t unit0 = wlo / V; unit0 * V < whi; unit0 += 32 * MATCH_STEPS) {
            uint32_t sc[MATCH_STEPS][V];
            round_scores<V>(p, qs, b, s, unit0, wlo, whi, sc);
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++)
#pragma unroll
                for (int j = 0; j < V; j++)
                    if (sc[st][j] != UINT32_MAX)
                        atomicAdd(&mine[sc[st][j]], 1u);
        }
        __syncwarp();
        uint32_t *warp_dst = p.warp_hist + (w * MATCH_WARPS + warp) * p.bins;
        for (int v = lane; v < p.bins; v += 32)
            warp_dst[v] = mine[v];
        __syncthreads();
        uint32_t *dst = p.hist + w * p.bins;
        for (int v = tid; v < p.bins; v += blockDim.x) {
            uint32_t sum = 0;
            for (int k = 0; k < MATCH_WARPS; k++)
                sum += hist[k * p.bins + v];
            dst[v] = sum;
        }
        /* the last chunk of the item to get here plans it */
        if (cu_last_to_arrive(&p.arrived[item], (uint32_t)p.chunks))
            plan_item(p, item, g.heavy, hist);
    }
}

/* ---- pass 2: ordered writes ----------------------------------------------------------------------------- */

template <int V>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, 2) match_write_kernel(const match_params p)
{
    extern __shared__ uint32_t qs[];
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    const int warp = threadIdx.x >> 5;
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the plans of pass 1 */
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        int32_t *out = p.indices + item * p.index_stride;
        if (!write_fixed_rows(p, g, item, c, out))
            continue;
        const uint32_t T = p.threshold[item];
        const int32_t offset = p.chunk_info[w * 2], skip = p.chunk_info[w * 2 + 1];
        int64_t lo, hi, wlo, whi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        warp_slice<V>(lo, hi, warp, &wlo, &whi);
        __syncthreads(); /* the previous item is done with shared memory */
        load_query_codes(p, b, s, qs);
        int32_t above_run, ties_run; /* its barriers also publish the query codes */
        warp_offsets(p.warp_hist + (w * MATCH_WARPS + warp) * p.bins, p.bins, T, &above_run, &ties_run);
        write_slice<V>(wlo, whi, T, skip, out + g.lo + offset, above_run, ties_run,
                       [&](int64_t unit0, uint32_t (&sc)[MATCH_STEPS][V]) {
                           round_scores<V>(p, qs, b, s, unit0, wlo, whi, sc);
                       });
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

size_t cu_match_smem(int32_t bins, int32_t code_words)
{
    return ((size_t)MATCH_WARPS * (size_t)bins + (size_t)code_words + QS_PAD) * sizeof(uint32_t);
}

int32_t cu_match_warps(void)
{
    return MATCH_WARPS;
}

ha_status cu_match_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(match_hist_kernel<1>, ctx, "cuda init: match histogram kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(match_hist_kernel<4>, ctx, "cuda init: match histogram kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(match_write_kernel<1>, ctx, "cuda init: match write kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(match_write_kernel<4>, ctx, "cuda init: match write kernel");
    if (st == HA_OK && ctx->sm90)
        st = cu_match_cluster_prepare(ctx);
    return st;
}

/* 4 tokens' codes per 16-byte load: one word per token, rows contiguous, every row 16-byte aligned
 * and a whole number of 4-token groups long (so no group crosses a row's end). */
bool cu_codes_vectorizable(const ha_match_args *a)
{
    const ha_rows &r = a->k_codes;
    return a->words == 1 && r.page_size == 0 && r.stride_token == 1 && (uintptr_t)r.data % 16 == 0 &&
           r.stride_seq % 4 == 0 && r.stride_head % 4 == 0;
}

ha_status cu_match_params(const cu_plan *plan, const ha_match_args *a, match_params *out)
{
    if (a->sel_heads < 1 || a->q_heads % a->sel_heads != 0 || a->bits < 1 || a->words < 1 ||
        (int64_t)a->words * 32 < a->bits)
        return cu_fail(HA_ERR_SHAPE, "cuda match: q_heads %d, sel_heads %d, bits %d, words %d do not fit together",
                       a->q_heads, a->sel_heads, a->bits, a->words);
    const int64_t group = a->q_heads / a->sel_heads, bins = group * a->bits + 1;
    if (bins > plan->match_bins)
        return cu_fail(HA_ERR_STATE, "cuda match: scores up to %lld exceed this plan's histogram (%d bins)",
                       (long long)(bins - 1), plan->match_bins);
    if (a->batch > plan->desc.max_batch)
        return cu_fail(HA_ERR_STATE, "cuda match: batch %d exceeds the plan's %d", a->batch, plan->desc.max_batch);
    match_params &p = *out;
    memset(&p, 0, sizeof p);
    p.batch = a->batch;
    p.q_heads = a->q_heads;
    p.sel_heads = a->sel_heads;
    p.group = (int32_t)group;
    p.words = a->words;
    p.bits = a->bits;
    p.q_codes = a->q_codes;
    p.k_codes = a->k_codes;
    p.seq_lens = a->seq_lens;
    p.sink = a->sink;
    p.local = a->local;
    p.heavy_fraction = a->heavy_fraction;
    p.heavy_count = a->heavy_count;
    p.indices = a->indices;
    p.index_stride = a->index_stride;
    p.counts = a->counts;
    p.max_tokens = plan->desc.max_tokens;
    p.bins = (int32_t)bins;
    return HA_OK;
}

ha_status cu_match(const cu_ctx *ctx, const cu_plan *plan, const ha_match_args *a)
{
    match_params p;
    ha_status st = cu_match_params(plan, a, &p);
    if (st != HA_OK || a->batch <= 0)
        return st;
    const int64_t items = (int64_t)a->batch * a->sel_heads;
    const int64_t group = p.group;
    cudaStream_t stream = (cudaStream_t)a->stream;
    const bool vector = cu_codes_vectorizable(a);
    if (ctx->sm90) { /* one launch where an item's scores fit its cluster's shared memory */
        const int32_t narrow = cu_match_cluster_size(plan, items);
        p.chunks = narrow;
        if (cu_match_cluster_fits(ctx, p, (p.max_tokens + p.chunks - 1) / p.chunks)) {
            p.chunks = cu_match_cluster_size_wide(plan, items);
            if (!cu_match_cluster_fits(ctx, p, (p.max_tokens + p.chunks - 1) / p.chunks))
                p.chunks = narrow;
            return cu_match_cluster(ctx, p, narrow, vector, stream);
        }
    }
    p.chunks = cu_match_chunks(plan, items);
    p.hist = plan->match_hist;
    p.warp_hist = plan->match_warp_hist;
    p.chunk_info = plan->match_chunk;
    p.threshold = plan->match_threshold;
    p.arrived = plan->match_arrived;
    if (items * p.chunks > plan->match_slots)
        return cu_fail(HA_ERR_STATE, "cuda match: %lld work slots exceed this plan's %lld", (long long)(items * p.chunks),
                       (long long)plan->match_slots);

    const size_t code_bytes = (size_t)(group * a->words + QS_PAD) * sizeof(uint32_t);
    const size_t hist_smem = cu_match_smem(p.bins, (int32_t)(group * a->words));
    const unsigned grid = cu_grid(items * p.chunks);
    st = cu_launch(ctx, vector ? match_hist_kernel<4> : match_hist_kernel<1>, grid, CU_MATCH_THREADS, hist_smem, stream,
                   1, "cuda match: histogram kernel launch", p);
    if (st != HA_OK)
        return st;
    return cu_launch(ctx, vector ? match_write_kernel<4> : match_write_kernel<1>, grid, CU_MATCH_THREADS, code_bytes,
                     stream, 1, "cuda match: write kernel launch", p);
}
