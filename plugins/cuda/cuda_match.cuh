/*
 * cuda_match.cuh — what the two forms of the match stage share (cuda_match.cu: two launches, any
 * device; cuda_match_cluster.cu: one launch of thread-block clusters, sm_90): the parameters, the
 * geometry of an item, scoring rounds, the threshold search, the rows every item keeps, and the
 * ordered write of a chunk's selected candidates.
 *
 * An item is one (sequence b, selection head s); its heavy candidates [sink, n - local) are split
 * into `chunks` contiguous chunks, each chunk into one contiguous slice per warp.
 */
#ifndef HA_CUDA_MATCH_CUH
#define HA_CUDA_MATCH_CUH

#include "cuda_device.cuh"

/* Rounds of a warp: MATCH_STEPS loads per lane in flight, each of V consecutive tokens' codes. */
#define MATCH_STEPS 4
#define MATCH_WARPS (CU_MATCH_THREADS / 32)
/* Most blocks of an item's cluster in the one-launch match: 16, a non-portable cluster size (sm_90),
 * taken where the items are few (cu_match_cluster_size_wide); elsewhere CU_MATCH_CLUSTER_MAX. */
#define MATCH_CLUSTER_WIDE 16
/* The query codes get QS_PAD spare words: the compiler may read a few words past the last one it
 * uses (a merged load in an unrolled loop), which must stay inside the allocation. */
#define QS_PAD 4

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
    int32_t chunks;      /**< per item (the cluster kernel: blocks per cluster) */
    int32_t bins;        /**< group × bits + 1                */
    int32_t score_capacity; /**< the cluster kernel: scores one block keeps in shared memory */
    int32_t hist_lanes;  /**< the cluster kernel: copies of each warp's histogram (32: one per lane) */
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


/* Warp w's slice [*wlo, *whi) of the chunk [lo, hi): whole V-token units (V-aligned token groups)
 * split evenly over the warps, clipped to the chunk, so that no unit is shared by two warps. */
template <int V>
static __device__ __forceinline__ void warp_slice(int64_t lo, int64_t hi, int w, int64_t *wlo, int64_t *whi)
{
    const int64_t u0 = lo / V, units = (hi + V - 1) / V - u0;
    const int64_t a = (u0 + units * w / MATCH_WARPS) * V, b = (u0 + units * (w + 1) / MATCH_WARPS) * V;
    *wlo = a > lo ? a : lo;
    *whi = b < hi ? b : hi;
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


/* ---- the threshold ----------------------------------------------------------------------------------- */

/* T = the highest score with count(score ≥ T) ≥ heavy, from the item's histogram total[bins] (shared
 * memory), by one warp (every lane calls it and gets both): *above gets count(score > T). Lane l sums
 * the l-th segment of scores from the top; a prefix sum over the lanes gives each segment the count
 * above it, and the lane whose segment crosses heavy finds T in it. T = 0, *above = 0 where the
 * histogram holds fewer than heavy. */
static __device__ uint32_t find_threshold_warp(const uint32_t *total, int32_t bins, int64_t heavy,
                                               long long *above_out)
{
    const int lane = threadIdx.x & 31;
    const int seg = (bins + 31) / 32;
    const int top = bins - 1 - lane * seg, bottom = top - seg + 1 > 0 ? top - seg + 1 : 0;
    long long mine = 0;
    for (int v = top; v >= bottom; v--)
        mine += total[v];
    const long long inclusive = cu_warp_inclusive_scan(mine);
    long long above = inclusive - mine;
    const bool crosses = above < heavy && inclusive >= heavy;
    uint32_t T = 0;
    if (crosses)
        for (int v = top; v >= bottom; v--) {
            if (above + total[v] >= heavy) {
                T = (uint32_t)v;
                break;
            }
            above += total[v];
        }
    const unsigned who = __ballot_sync(0xffffffffu, crosses);
    if (who == 0) {
        *above_out = 0;
        return 0;
    }
    const int src = __ffs(who) - 1;
    *above_out = __shfl_sync(0xffffffffu, above, src);
    return __shfl_sync(0xffffffffu, T, src);
}

/* find_threshold_warp for a whole block: every thread calls it and gets both. */
static __device__ uint32_t find_threshold(const uint32_t *total, int32_t bins, int64_t heavy, long long *above_out)
{
    __shared__ uint32_t threshold_s;
    __shared__ long long above_s;
    if (threadIdx.x < 32) {
        long long above;
        const uint32_t T = find_threshold_warp(total, bins, heavy, &above);
        if (threadIdx.x == 0) {
            threshold_s = T;
            above_s = above;
        }
    }
    __syncthreads();
    *above_out = above_s;
    return threshold_s;
}

/* ---- the rows every item keeps ----------------------------------------------------------------------- */

/* Chunk c's share of the rows an item keeps whatever the codes say, and (chunk 0) the item's count:
 * all n when the budget keeps all, else the sinks [0, lo) at their index and the locals [hi, n)
 * after the heavy ones. True when heavy candidates remain to be chosen (the same for every chunk). */
static __device__ bool write_fixed_rows(const match_params &p, const item_geometry &g, int64_t item, int32_t c,
                                        int32_t *out)
{
    const int tid = threadIdx.x;
    if (c == 0 && tid == 0)
        p.counts[item] = (int32_t)(g.keep_all ? g.n : g.lo + g.heavy + (g.n - g.hi));
    if (g.keep_all) {
        for (int64_t j = g.n * c / p.chunks + tid; j < g.n * (c + 1) / p.chunks; j += blockDim.x)
            out[j] = (int32_t)j;
        return false;
    }
    const int64_t fixed = g.lo + (g.n - g.hi);
    for (int64_t f = (int64_t)c * blockDim.x + tid; f < fixed; f += (int64_t)p.chunks * blockDim.x) {
        if (f < g.lo)
            out[f] = (int32_t)f;
        else
            out[g.lo + g.heavy + (f - g.lo)] = (int32_t)(g.hi + (f - g.lo));
    }
    return g.heavy > 0;
}

/* ---- the ordered write of a chunk ---------------------------------------------------------------------- */

/* Every thread calls it: from each warp's histogram wh (its slice's, global or shared memory), the
 * candidates above T and the ties of the chunk's warps before the caller's. */
static __device__ void warp_offsets(const uint32_t *wh, int32_t bins, uint32_t T, int32_t *above_run,
                                    int32_t *ties_run)
{
    __shared__ uint32_t warp_above[MATCH_WARPS], warp_ties[MATCH_WARPS];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint32_t above = 0;
    for (int v = (int)T + 1 + lane; v < bins; v += 32)
        above += wh[v];
    for (int d = 16; d > 0; d >>= 1)
        above += __shfl_xor_sync(0xffffffffu, above, d);
    __syncthreads(); /* a previous call's readers are done */
    if (lane == 0) {
        warp_above[warp] = above;
        warp_ties[warp] = wh[T];
    }
    __syncthreads();
    *above_run = 0;
    *ties_run = 0;
    for (int i = 0; i < warp; i++) {
        *above_run += (int32_t)warp_above[i];
        *ties_run += (int32_t)warp_ties[i];
    }
}

/* Writes candidate t (score above T, or a tie) at its place among the kept ones: a tie ranked r
 * (0-based, ascending in the chunk) is kept iff r ≥ skip; a kept token's place counts the kept tokens
 * before it. *above_before, *ties_before: the candidates above T and the ties before t, then after. */
static __device__ __forceinline__ void place_candidate(int32_t *dst, int32_t t, bool above, int32_t skip,
                                                       int32_t *above_before, int32_t *ties_before)
{
    if (above) {
        dst[*above_before + (*ties_before > skip ? *ties_before - skip : 0)] = t;
        ++*above_before;
    } else {
        if (*ties_before >= skip)
            dst[*above_before + *ties_before - skip] = t;
        ++*ties_before;
    }
}

/*
 * The warp's kept candidates of its slice [wlo, whi), in order, to dst (the chunk's first output): the
 * tie ranked r (0-based, ascending) in the chunk is kept iff r ≥ skip, and a kept token's place counts
 * the kept tokens before it. above_run, ties_run: those of the chunk's earlier warps (warp_offsets).
 * round(unit0, sc) gives the scores of a round as round_scores does.
 */
template <int V, class Round>
static __device__ __forceinline__ void write_slice(int64_t wlo, int64_t whi, uint32_t T, int32_t skip, int32_t *dst,
                                                   int32_t above_run, int32_t ties_run, Round round)
{
    const int lane = threadIdx.x & 31;
    for (int64_t unit0 = wlo / V; unit0 * V < whi; unit0 += 32 * MATCH_STEPS) {
        uint32_t sc[MATCH_STEPS][V];
        round(unit0, sc);
#pragma unroll
        for (int st = 0; st < MATCH_STEPS; st++) {
            /* the lane's counts in the low and high halves of one word: a step has ≤ 32 V of each */
            uint32_t mine = 0;
#pragma unroll
            for (int j = 0; j < V; j++)
                mine += (sc[st][j] != UINT32_MAX && sc[st][j] > T) + ((uint32_t)(sc[st][j] == T) << 16);
            uint32_t before = cu_warp_inclusive_scan(mine);
            const uint32_t step_total = __shfl_sync(0xffffffffu, before, 31);
            if (mine != 0) { /* most lanes keep nothing */
                before -= mine; /* exclusive */
                int32_t above_before = above_run + (int32_t)(before & 0xffffu);
                int32_t ties_before = ties_run + (int32_t)(before >> 16);
                const int32_t t0 = (int32_t)((unit0 + 32 * st + lane) * V);
#pragma unroll
                for (int j = 0; j < V; j++)
                    if (sc[st][j] != UINT32_MAX && sc[st][j] >= T)
                        place_candidate(dst, t0 + j, sc[st][j] > T, skip, &above_before, &ties_before);
            }
            above_run += (int32_t)(step_total & 0xffffu);
            ties_run += (int32_t)(step_total >> 16);
        }
    }
}

/* ---- the launchers ------------------------------------------------------------------------------------- */

/** Checks a and fills p from it: everything but the partition (chunks) and the scratch pointers. */
CU_HIDDEN ha_status cu_match_params(const cu_plan *plan, const ha_match_args *a, match_params *p);
/** Whether 16-byte loads of 4 tokens' codes apply: one word per token, rows contiguous and aligned. */
CU_HIDDEN bool cu_codes_vectorizable(const ha_match_args *a);
/** Sets p's score capacity and histogram copies for its chunks (the cluster kernel's rule); returns
 *  the dynamic shared memory of a cluster block. */
CU_HIDDEN size_t cu_match_cluster_setup(const cu_ctx *ctx, match_params *p);

/** The one-launch form (sm_90) for p, its chunks per item already chosen (≤ MATCH_CLUSTER_WIDE); false
 *  (and nothing launched) where it does not apply: scores wider than 16 bits, or too many for shared
 *  memory. */
CU_HIDDEN bool cu_match_cluster_fits(const cu_ctx *ctx, const match_params &p, int64_t max_chunk);
/** Launches it; where p.chunks > CU_MATCH_CLUSTER_MAX and this device cannot run clusters that wide for
 *  p, with `narrow` chunks instead (which must fit). */
CU_HIDDEN ha_status cu_match_cluster(const cu_ctx *ctx, const match_params &p, int32_t narrow, bool vector,
                                     cudaStream_t stream);
/** Chunks per item of the one-launch match where the items are few: up to 16 (cuda_plan.cu). */
CU_HIDDEN int32_t cu_match_cluster_size_wide(const cu_plan *plan, int64_t items);
CU_HIDDEN ha_status cu_match_cluster_prepare(const cu_ctx *ctx);

#endif /* HA_CUDA_MATCH_CUH */
