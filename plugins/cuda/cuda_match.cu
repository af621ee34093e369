/*
 * cuda_match.cu — the match stage: per (sequence b, selection head s) "item", the heavy candidates
 * [sink, n - local) with the best Hamming similarity, chosen by a histogram threshold (scores take
 * only group × bits + 1 values) under the tie rule (equal scores: the more recent first). Three
 * launches, each item's candidates split into `chunks` contiguous chunks so that a few long
 * sequences still fill the device:
 *
 *   1. hist   per (item, chunk): the histogram of the chunk's scores (XOR + popcount);
 *   2. plan   per item: the threshold score T from the summed histograms, how many ties with score T
 *             each chunk keeps (the most recent chunks first), every chunk's output offset, and the
 *             item's count;
 *   3. write  per (item, chunk): the sinks and locals (spread over the chunks), and the chunk's
 *             selected candidates in order, placed with a block-wide prefix sum.
 *
 * Scores are recomputed in pass 3 rather than stored: codes are a few bytes per token. Indices are
 * written ascending: sinks, then the candidates chunk by chunk, then the locals.
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
    int32_t hist_copies; /**< sub-histograms of pass 1        */
    uint32_t *hist;      /**< [items × chunks][bins]          */
    int32_t *chunk_info; /**< [items × chunks][2]: offset, ties to skip */
    uint32_t *threshold; /**< [items]                         */
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

/* ---- pass 1: chunk histograms ------------------------------------------------------------------------ */

static __global__ void __launch_bounds__(CU_MATCH_THREADS) match_hist_kernel(const match_params p)
{
    extern __shared__ uint32_t smem[];
    uint32_t *hist = smem, *qs = smem + p.hist_copies * p.bins;
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        if (g.keep_all || g.heavy == 0)
            continue;
        int64_t lo, hi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        __syncthreads(); /* the previous item is done with shared memory */
        for (int i = threadIdx.x; i < p.hist_copies * p.bins; i += blockDim.x)
            hist[i] = 0;
        load_query_codes(p, b, s, qs);
        __syncthreads();
        /* one sub-histogram per warp (when they fit): fewer collisions on the few likely scores */
        uint32_t *mine = hist + (int64_t)((threadIdx.x >> 5) % p.hist_copies) * p.bins;
        for (int64_t t = lo + threadIdx.x; t < hi; t += blockDim.x)
            atomicAdd(&mine[score(p, qs, b, s, t)], 1u);
        __syncthreads();
        uint32_t *dst = p.hist + w * p.bins;
        for (int v = threadIdx.x; v < p.bins; v += blockDim.x) {
            uint32_t sum = 0;
            for (int k = 0; k < p.hist_copies; k++)
                sum += hist[k * p.bins + v];
            dst[v] = sum;
        }
    }
}

/* ---- pass 2: threshold, ties and offsets --------------------------------------------------------------- */

static __global__ void __launch_bounds__(CU_MATCH_THREADS) match_plan_kernel(const match_params p)
{
    extern __shared__ uint32_t total[]; /* [bins] */
    __shared__ long long scan[33];
    __shared__ int32_t take_of[CU_MATCH_THREADS];
    __shared__ uint32_t threshold_s;
    __shared__ long long above_s;
    const int64_t items = (int64_t)p.batch * p.sel_heads;
    const int tid = threadIdx.x;
    for (int64_t item = blockIdx.x; item < items; item += gridDim.x) {
        const int32_t b = (int32_t)(item / p.sel_heads);
        const item_geometry g = geometry(p, b);
        if (tid == 0)
            p.counts[item] = (int32_t)(g.keep_all ? g.n : g.lo + g.heavy + (g.n - g.hi));
        if (g.keep_all || g.heavy == 0)
            continue;
        const uint32_t *h = p.hist + item * p.chunks * p.bins;
        __syncthreads(); /* the previous item is done with shared memory */
        for (int v = tid; v < p.bins; v += blockDim.x) {
            uint32_t sum = 0;
            for (int c = 0; c < p.chunks; c++)
                sum += h[(int64_t)c * p.bins + v];
            total[v] = sum;
        }
        if (tid == 0) {
            threshold_s = 0;
            above_s = 0;
        }
        __syncthreads();

        /* The threshold T: the highest score with count(score ≥ T) ≥ heavy. Thread i sums the i-th
         * segment of scores from the top; a prefix sum gives each segment the count above it. */
        const int seg = (p.bins + blockDim.x - 1) / blockDim.x;
        const int top = p.bins - 1 - tid * seg, bottom = top - seg + 1 > 0 ? top - seg + 1 : 0;
        long long mine = 0, all;
        for (int v = top; v >= bottom; v--)
            mine += total[v];
        long long above = cu_block_exclusive_scan<long long>(mine, &all, scan);
        for (int v = top; v >= bottom; v--) {
            if (above + total[v] >= g.heavy) {
                if (above < g.heavy) { /* the one crossing */
                    threshold_s = (uint32_t)v;
                    above_s = above;
                }
                break;
            }
            above += total[v];
        }
        __syncthreads();
        const uint32_t T = threshold_s;
        const long long wanted = g.heavy - above_s; /* candidates taken at score T */

        /* Ties are taken from the most recent chunk down: thread i looks at chunk chunks-1-i. */
        const int rc = p.chunks - 1 - tid;
        const long long ties_rc = tid < p.chunks ? h[(int64_t)rc * p.bins + T] : 0;
        const long long ties_after = cu_block_exclusive_scan<long long>(ties_rc, &all, scan);
        if (tid < p.chunks) {
            long long take = wanted - ties_after;
            take_of[rc] = (int32_t)(take < 0 ? 0 : take > ties_rc ? ties_rc : take);
        }
        __syncthreads();
        long long selected = 0, ties = 0;
        if (tid < p.chunks) {
            const uint32_t *hc = h + (int64_t)tid * p.bins;
            ties = hc[T];
            for (int v = (int)T + 1; v < p.bins; v++)
                selected += hc[v];
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
}

/* ---- pass 3: ordered writes ----------------------------------------------------------------------------- */

static __global__ void __launch_bounds__(CU_MATCH_THREADS) match_write_kernel(const match_params p)
{
    extern __shared__ uint32_t qs[];
    __shared__ uint32_t scan[33];
    const int64_t work = (int64_t)p.batch * p.sel_heads * p.chunks;
    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t item = w / p.chunks;
        const int32_t c = (int32_t)(w % p.chunks), b = (int32_t)(item / p.sel_heads), s = (int32_t)(item % p.sel_heads);
        const item_geometry g = geometry(p, b);
        int32_t *out = p.indices + item * p.index_stride;
        if (g.keep_all) {
            for (int64_t j = g.n * c / p.chunks + threadIdx.x; j < g.n * (c + 1) / p.chunks; j += blockDim.x)
                out[j] = (int32_t)j;
            continue;
        }
        /* sinks [0, lo) at their index, locals [hi, n) after the heavy ones: spread over the chunks */
        const int64_t fixed = g.lo + (g.n - g.hi);
        for (int64_t f = (int64_t)c * blockDim.x + threadIdx.x; f < fixed; f += (int64_t)p.chunks * blockDim.x) {
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
        int64_t lo, hi;
        chunk_range(g, p.chunks, c, &lo, &hi);
        __syncthreads(); /* the previous item is done with shared memory */
        load_query_codes(p, b, s, qs);
        __syncthreads();
        /* Candidates in order, a block-wide tile at a time. The tie ranked r (0-based, ascending) in
         * this chunk is kept iff r ≥ skip; a kept token's place counts the kept tokens before it. */
        int64_t above_run = 0, ties_run = 0;
        for (int64_t base = lo; base < hi; base += blockDim.x) {
            const int64_t t = base + threadIdx.x;
            const bool valid = t < hi;
            const uint32_t sc = valid ? score(p, qs, b, s, t) : 0;
            const bool is_above = valid && sc > T, is_tie = valid && sc == T;
            /* two counters in one word: a tile has at most CU_MATCH_THREADS < 65536 of each */
            uint32_t tile_total;
            const uint32_t before =
                cu_block_exclusive_scan<uint32_t>((uint32_t)is_above | ((uint32_t)is_tie << 16), &tile_total, scan);
            const int64_t above_before = above_run + (before & 0xffffu), ties_before = ties_run + (before >> 16);
            if (is_above)
                dst[above_before + (ties_before > skip ? ties_before - skip : 0)] = (int32_t)t;
            else if (is_tie && ties_before >= skip)
                dst[above_before + ties_before - skip] = (int32_t)t;
            above_run += tile_total & 0xffffu;
            ties_run += tile_total >> 16;
        }
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

/* Per-warp sub-histograms while they stay small; one shared histogram otherwise. */
static int32_t hist_copies(int32_t bins)
{
    const int32_t warps = CU_MATCH_THREADS / 32;
    return (size_t)warps * bins * sizeof(uint32_t) <= 32 * 1024 ? warps : 1;
}

size_t cu_match_smem(int32_t bins, int32_t code_words)
{
    return ((size_t)hist_copies(bins) * (size_t)bins + (size_t)code_words) * sizeof(uint32_t);
}

ha_status cu_match_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(match_hist_kernel, ctx, "cuda init: match histogram kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(match_plan_kernel, ctx, "cuda init: match planning kernel");
    if (st == HA_OK)
        st = cu_prepare_kernel(match_write_kernel, ctx, "cuda init: match write kernel");
    return st;
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
    p.hist_copies = hist_copies(p.bins);
    p.hist = plan->match_hist;
    p.chunk_info = plan->match_chunk;
    p.threshold = plan->match_threshold;
    if (items * p.chunks > plan->match_slots)
        return cu_fail(HA_ERR_STATE, "cuda match: %lld work slots exceed this plan's %lld", (long long)(items * p.chunks),
                       (long long)plan->match_slots);

    cudaStream_t stream = (cudaStream_t)a->stream;
    const size_t code_bytes = (size_t)(group * a->words) * sizeof(uint32_t);
    match_hist_kernel<<<cu_grid(items * p.chunks), CU_MATCH_THREADS, cu_match_smem(p.bins, (int32_t)(group * a->words)),
                        stream>>>(p);
    ha_status st = cu_check(cudaGetLastError(), "cuda match: histogram kernel launch");
    if (st != HA_OK)
        return st;
    match_plan_kernel<<<cu_grid(items), CU_MATCH_THREADS, (size_t)p.bins * sizeof(uint32_t), stream>>>(p);
    st = cu_check(cudaGetLastError(), "cuda match: planning kernel launch");
    if (st != HA_OK)
        return st;
    match_write_kernel<<<cu_grid(items * p.chunks), CU_MATCH_THREADS, code_bytes, stream>>>(p);
    return cu_check(cudaGetLastError(), "cuda match: write kernel launch");
}
