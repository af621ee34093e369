/*
 * cuda_match.cu — the match stage: per (sequence b, selection head s) "item", the heavy candidates
 * [sink, n - local) with the best Hamming similarity, chosen by a histogram threshold (scores take
 * only group × bits + 1 values) under the tie rule (equal scores: the more recent first). Each
 * item's candidates are split into `chunks` contiguous chunks so that a few long sequences still
 * fill the device, and each chunk into one contiguous slice per warp. Two launches:
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
#include "cuda_device.cuh"

typedef struct match_params {
    int32_t batch;
    int32_t q_heads;
    int32_t sel_heads;
    int32_t group;       /**< query heads per selection head */
    int32_t words;
    int32_t bits;
    const uint32_t *q_codes;
    ha_rows k_codes;
    const int32_t *seq_lens;
    int32_t sink;
    int32_t local;
    double heavy_fraction;
    int64_t heavy_count;
    int32_t *indices;
    int64_t index_stride;
    int32_t *counts;
    int64_t max_tokens;
    int32_t chunks;      /**< per item                        */
    int32_t bins;        /**< group × bits + 1                */
    uint32_t *hist;      /**< [items × chunks][bins]          */
    uint32_t *warp_hist; /**< [items × chunks][warps][bins]   */
    int32_t *chunk_info; /**< [items × chunks][2]: offset, ties to skip */
    uint32_t *threshold; /**< [items]                         */
    uint32_t *arrived;   /**< [items]: chunks done in pass 1  */
} match_params;

/* What the budget rule makes of one sequence: keep all n, or sinks [0, lo) + heavy of the candidates
 * [lo, hi) + locals [hi, n). Unless keep_all, the candidates outnumber heavy. */
typedef struct item_geometry {
    int64_t n;
    int64_t heavy;
    int64_t lo;
    int64_t hi;
    bool keep_all;
} item_geometry;

static __device__ item_geometry geometry(const match_params &p, int32_t b)
{
    item_geometry g;
    g.n = cu_clamp_len(p.seq_lens[b], p.max_tokens);
    g.keep_all = ha_kept_for_length(g.n, p.sink, p.local, p.heavy_fraction, p.heavy_count) == g.n;
    g.heavy = ha_heavy_for_length(g.n, p.heavy_fraction, p.heavy_count);
    g.lo = p.sink;
    g.hi = ha_local_start(g.n, p.sink, p.local);
    return g;
}

static __device__ __forceinline__ void chunk_range(const item_geometry &g, int32_t chunks, int32_t c, int64_t *lo,
                                                   int64_t *hi)
{
    *lo = g.lo + (g.hi - g.lo) * c / chunks;
    *hi = g.lo + (g.hi - g.lo) * (c + 1) / chunks;
}

/* The item's query codes, padding bits cleared, into shared memory: [group][words]. */
static __device__ void load_query_codes(const match_params &p, int32_t b, int32_t s, uint32_t *qs)
{
    const uint32_t *q = p.q_codes + ((int64_t)b * p.q_heads + (int64_t)s * p.group) * p.words;
    for (int i = threadIdx.x; i < p.group * p.words; i += blockDim.x)
        qs[i] = q[i] & cu_code_word_mask(i % p.words, p.bits);
}

/* Similarity of token t: the group's sum of bits - popcount(q XOR k). */
static __device__ __forceinline__ uint32_t score(const match_params &p, const uint32_t *qs, int32_t b, int32_t s,
                                                 int64_t t)
{
    const uint32_t *key = (const uint32_t *)cu_row(p.k_codes, sizeof(uint32_t), b, s, t);
    uint32_t distance = 0;
    for (int w = 0; w < p.words; w++) {
        const uint32_t k = key[w] & cu_code_word_mask(w, p.bits);
        for (int h = 0; h < p.group; h++)
            distance += __popc(qs[h * p.words + w] ^ k);
    }
    return (uint32_t)(p.group * p.bits) - distance;
}

/* Rounds of a warp: MATCH_STEPS loads per lane in flight, each of V consecutive tokens' codes. */
#define MATCH_STEPS 4
#define MATCH_WARPS (CU_MATCH_THREADS / 32)

/* Warp w's slice [*wlo, *whi) of the chunk [lo, hi). */
static __device__ __forceinline__ void warp_slice(int64_t lo, int64_t hi, int w, int64_t *wlo, int64_t *whi)
{
    *wlo = lo + (hi - lo) * w / MATCH_WARPS;
    *whi = lo + (hi - lo) * (w + 1) / MATCH_WARPS;
}

/*
 * Scores of one round of a warp over its slice [wlo, whi): the lane's tokens are
 * t = (unit0 + 32 st + lane) × V + j (st < MATCH_STEPS, j < V), in ascending order st, lane, j;
 * UINT32_MAX outside the slice. V = 4: one-word codes, contiguous and aligned, one 16-byte load per
 * step; V = 1: any layout, the key words of every step loaded before the first popcount.
 */
template <int V>
static __device__ __forceinline__ void round_scores(const match_params &p, const uint32_t *qs, int32_t b, int32_t s,
                                                    int64_t unit0, int64_t wlo, int64_t whi,
                                                    uint32_t (&sc)[MATCH_STEPS][V])
{
    const int lane = threadIdx.x & 31;
    if constexpr (V == 4) {
        const uint4 *row = (const uint4 *)((const uint32_t *)p.k_codes.data + b * p.k_codes.stride_seq +
                                           s * p.k_codes.stride_head);
        uint4 key[MATCH_STEPS];
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            const int64_t unit = unit0 + 32 * st + lane;
            key[st] = unit * 4 < whi && unit * 4 + 3 >= wlo ? __ldg(row + unit) : make_uint4(0, 0, 0, 0);
        }
        const uint32_t mask = cu_code_word_mask(0, p.bits), best = (uint32_t)(p.group * p.bits);
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            const uint32_t k[4] = {key[st].x & mask, key[st].y & mask, key[st].z & mask, key[st].w & mask};
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int64_t t = (unit0 + 32 * st + lane) * 4 + j;
                uint32_t distance = 0;
                for (int h = 0; h < p.group; h++)
                    distance += __popc(qs[h] ^ k[j]);
                sc[st][j] = t >= wlo && t < whi ? best - distance : UINT32_MAX;
            }
        }
    } else if (p.words == 1) {
        uint32_t key[MATCH_STEPS];
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            const int64_t t = unit0 + 32 * st + lane;
            key[st] = t >= wlo && t < whi ? *(const uint32_t *)cu_row(p.k_codes, sizeof(uint32_t), b, s, t) : 0u;
        }
        const uint32_t mask = cu_code_word_mask(0, p.bits), best = (uint32_t)(p.group * p.bits);
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            const int64_t t = unit0 + 32 * st + lane;
            uint32_t distance = 0;
            for (int h = 0; h < p.group; h++)
                distance += __popc(qs[h] ^ (key[st] & mask));
            sc[st][0] = t >= wlo && t < whi ? best - distance : UINT32_MAX;
        }
    } else {
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            const int64_t t = unit0 + 32 * st + lane;
            sc[st][0] = t >= wlo && t < whi ? score(p, qs, b, s, t) : UINT32_MAX;
        }
    }
}

/* ---- pass 1: histograms, and the plan of each item by its last chunk ------------------------------------ */

/* Plans one item from its chunks' histograms (every thread of the block calls it): the threshold
 * T = the highest score with count(score ≥ T) ≥ heavy, the ties each chunk keeps (the most recent
 * chunks first) and each chunk's output offset. total: shared [bins]. */
static __device__ void plan_item(const match_params &p, int64_t item, int64_t heavy, uint32_t *total)
{
    __shared__ long long scan[33];
    __shared__ int32_t take_of[CU_MATCH_THREADS];
    __shared__ uint32_t threshold_s;
    __shared__ long long above_s;
    const int tid = threadIdx.x;
    const uint32_t *h = p.hist + item * p.chunks * p.bins;
    /* written by other blocks of this launch: read through L2 */
    for (int v = tid; v < p.bins; v += blockDim.x) {
        uint32_t sum = 0;
        for (int c = 0; c < p.chunks; c++)
            sum += __ldcg(&h[(int64_t)c * p.bins + v]);
        total[v] = sum;
    }
    if (tid == 0) {
        threshold_s = 0;
        above_s = 0;
    }
    __syncthreads();

    /* Thread i sums the i-th segment of scores from the top; a prefix sum gives each segment the
     * count above it, and the thread whose segment crosses heavy finds T in it. */
    const int seg = (p.bins + blockDim.x - 1) / blockDim.x;
    const int top = p.bins - 1 - tid * seg, bottom = top - seg + 1 > 0 ? top - seg + 1 : 0;
    long long mine = 0, all;
    for (int v = top; v >= bottom; v--)
        mine += total[v];
    long long above = cu_block_exclusive_scan<long long>(mine, &all, scan);
    for (int v = top; v >= bottom; v--) {
        if (above + total[v] >= heavy) {
            if (above < heavy) { /* the one crossing */
                threshold_s = (uint32_t)v;
                above_s = above;
            }
            break;
        }
        above += total[v];
    }
    __syncthreads();
    const uint32_t T = threshold_s;
    const long long wanted = heavy - above_s; /* candidates taken at score T */

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
    __shared__ bool last_s;
    uint32_t *hist = smem, *qs = smem + MATCH_WARPS * p.bins; /* a histogram per warp, then the query codes */
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        if (g.keep_all || g.heavy == 0)
            continue; /* the same for every chunk of the item: none plans it */
        int64_t lo, hi, wlo, whi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        warp_slice(lo, hi, warp, &wlo, &whi);
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
        /* the last chunk of the item to get here plans it (and resets the counter for the next launch) */
        __threadfence();
        __syncthreads();
        if (tid == 0)
            last_s = atomicAdd(&p.arrived[item], 1u) == (uint32_t)p.chunks - 1u;
        __syncthreads();
        if (!last_s)
            continue;
        __threadfence();
        plan_item(p, item, g.heavy, hist);
        if (tid == 0)
            p.arrived[item] = 0;
    }
}

/* ---- pass 2: ordered writes ----------------------------------------------------------------------------- */

template <int V>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, 2) match_write_kernel(const match_params p)
{
    extern __shared__ uint32_t qs[];
    __shared__ uint32_t warp_above[MATCH_WARPS], warp_ties[MATCH_WARPS];
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        int32_t *out = p.indices + item * p.index_stride;
        if (c == 0 && tid == 0)
            p.counts[item] = (int32_t)(g.keep_all ? g.n : g.lo + g.heavy + (g.n - g.hi));
        if (g.keep_all) {
            for (int64_t j = g.n * c / p.chunks + tid; j < g.n * (c + 1) / p.chunks; j += blockDim.x)
                out[j] = (int32_t)j;
            continue;
        }
        /* sinks [0, lo) at their index, locals [hi, n) after the heavy ones: spread over the chunks */
        const int64_t fixed = g.lo + (g.n - g.hi);
        for (int64_t f = (int64_t)c * blockDim.x + tid; f < fixed; f += (int64_t)p.chunks * blockDim.x) {
            if (f < g.lo)
                out[f] = (int32_t)f;
            else
                out[g.lo + g.heavy + (f - g.lo)] = (int32_t)(g.hi + (f - g.lo));
        }
        if (g.heavy == 0)
            continue;

        const uint32_t T = p.threshold[item];
        const int32_t offset = p.chunk_info[w * 2], skip = p.chunk_info[w * 2 + 1];
        int32_t *dst = out + g.lo + offset;
        int64_t lo, hi, wlo, whi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        warp_slice(lo, hi, warp, &wlo, &whi);
        __syncthreads(); /* the previous item is done with shared memory */
        load_query_codes(p, b, s, qs);
        /* this warp's candidates above T and ties, from its histogram of pass 1 */
        const uint32_t *wh = p.warp_hist + (w * MATCH_WARPS + warp) * p.bins;
        uint32_t above = 0;
        for (int v = (int)T + 1 + lane; v < p.bins; v += 32)
            above += wh[v];
        for (int d = 16; d > 0; d >>= 1)
            above += __shfl_xor_sync(0xffffffffu, above, d);
        if (lane == 0) {
            warp_above[warp] = above;
            warp_ties[warp] = wh[T];
        }
        __syncthreads();
        /* The tie ranked r (0-based, ascending) in this chunk is kept iff r ≥ skip; a kept token's
         * place counts the kept tokens before it. */
        int64_t above_run = 0, ties_run = 0;
        for (int i = 0; i < warp; i++) {
            above_run += warp_above[i];
            ties_run += warp_ties[i];
        }
        for (int64_t unit0 = wlo / V; unit0 * V < whi; unit0 += 32 * MATCH_STEPS) {
            uint32_t sc[MATCH_STEPS][V];
            round_scores<V>(p, qs, b, s, unit0, wlo, whi, sc);
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++) {
                /* the lane's counts in the low and high halves of one word: a step has ≤ 32 V of each */
                uint32_t mine = 0;
#pragma unroll
                for (int j = 0; j < V; j++)
                    mine += (sc[st][j] != UINT32_MAX && sc[st][j] > T) + ((uint32_t)(sc[st][j] == T) << 16);
                uint32_t before = mine;
#pragma unroll
                for (int d = 1; d < 32; d <<= 1) {
                    const uint32_t up = __shfl_up_sync(0xffffffffu, before, d);
                    if (lane >= d)
                        before += up;
                }
                const uint32_t step_total = __shfl_sync(0xffffffffu, before, 31);
                before -= mine; /* exclusive */
                int64_t above_before = above_run + (before & 0xffffu), ties_before = ties_run + (before >> 16);
#pragma unroll
                for (int j = 0; j < V; j++) {
                    const int32_t t = (int32_t)((unit0 + 32 * st + lane) * V + j);
                    if (sc[st][j] != UINT32_MAX && sc[st][j] > T) {
                        dst[above_before + (ties_before > skip ? ties_before - skip : 0)] = t;
                        above_before++;
                    } else if (sc[st][j] == T) {
                        if (ties_before >= skip)
                            dst[above_before + ties_before - skip] = t;
                        ties_before++;
                    }
                }
                above_run += step_total & 0xffffu;
                ties_run += step_total >> 16;
            }
        }
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

/* The query codes get QS_PAD spare words: the compiler may read a few words past the last one it
 * uses (a merged load in an unrolled loop), which must stay inside the allocation. */
#define QS_PAD 4

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
    return st;
}

/* 4 tokens' codes per 16-byte load: one word per token, rows contiguous, every row 16-byte aligned
 * and a whole number of 4-token groups long (so no group crosses a row's end). */
static bool codes_vectorizable(const ha_match_args *a)
{
    const ha_rows &r = a->k_codes;
    return a->words == 1 && r.page_size == 0 && r.stride_token == 1 && (uintptr_t)r.data % 16 == 0 &&
           r.stride_seq % 4 == 0 && r.stride_head % 4 == 0;
}

ha_status cu_match(const cu_ctx *ctx, const cu_plan *plan, const ha_match_args *a)
{
    (void)ctx;
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
    if (a->batch <= 0)
        return HA_OK;

    match_params p;
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
    const int64_t items = (int64_t)a->batch * a->sel_heads;
    p.chunks = cu_match_chunks(plan, items);
    p.bins = (int32_t)bins;
    p.hist = plan->match_hist;
    p.warp_hist = plan->match_warp_hist;
    p.chunk_info = plan->match_chunk;
    p.threshold = plan->match_threshold;
    p.arrived = plan->match_arrived;
    if (items * p.chunks > plan->match_slots)
        return cu_fail(HA_ERR_STATE, "cuda match: %lld work slots exceed this plan's %lld", (long long)(items * p.chunks),
                       (long long)plan->match_slots);

    cudaStream_t stream = (cudaStream_t)a->stream;
    const size_t code_bytes = (size_t)(group * a->words + QS_PAD) * sizeof(uint32_t);
    const size_t hist_smem = cu_match_smem(p.bins, (int32_t)(group * a->words));
    const unsigned grid = cu_grid(items * p.chunks);
    const bool vector = codes_vectorizable(a);
    if (vector)
        match_hist_kernel<4><<<grid, CU_MATCH_THREADS, hist_smem, stream>>>(p);
    else
        match_hist_kernel<1><<<grid, CU_MATCH_THREADS, hist_smem, stream>>>(p);
    ha_status st = cu_check(cudaGetLastError(), "cuda match: histogram kernel launch");
    if (st != HA_OK)
        return st;
    if (vector)
        match_write_kernel<4><<<grid, CU_MATCH_THREADS, code_bytes, stream>>>(p);
    else
        match_write_kernel<1><<<grid, CU_MATCH_THREADS, code_bytes, stream>>>(p);
    return cu_check(cudaGetLastError(), "cuda match: write kernel launch");
}
