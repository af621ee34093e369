/*
 * cuda_decode_fused.cu — the decode step in one launch (sm_90): encode, match and attend of a batch of
 * one query per sequence, where the step's precondition holds.
 *
 * Precondition (SPEC "Select"): the candidates are [sink, n − local), so with local ≥ the step's new
 * tokens the match never reads a code this step writes, and the new keys' codes (needed from the next
 * step on) can be encoded beside it instead of before it. The grid: a thread-block cluster per item
 * (sequence b, selection head s), a block per chunk of its candidates (C ≤ 8), as the one-launch match
 * (cuda_match_cluster.cu) has it, and nothing else. A cluster's blocks, in three phases:
 *   1. the item's encodes as tasks, task t by block t mod C: the query heads s·G + t (t < G; G query
 *      heads per selection head), then the step's new keys of sequence b under key head s (the
 *      key-code heads are the selection heads) into the code cache; each as the one-row encode does it
 *      (cuda_encode_row.cuh, 8 warps taking two warps' outputs each); a query code goes into the
 *      block's shared memory (and into the plan's q_codes, as the three-kernel step leaves them).
 *      Blocks without a query head prefetch their chunk's key codes to L2;
 *   2. a cluster barrier; every block reads the G codes through distributed shared memory and runs the
 *      cluster match of its chunk (cuda_match_cluster.cuh), which writes the item's index row;
 *   3. a cluster barrier (the row is complete and visible); block c attends over the c-th of C equal
 *      parts of the index row (cuda_attend.cuh: balanced by kept rows, not by chunk; for groups of 4 with
 *      16-bit K/V the tensor-core walk of cuda_attend_mma.cuh), its (m, l, sums)
 *      per head in shared memory; after a cluster barrier each block merges a share of the outputs
 *      from the C partial results through distributed shared memory and writes them.
 *
 * Nothing goes through global memory between the phases but the index row; no partials, no arrival
 * counters, no allocation, no host synchronisation (one launch, graph-capturable). The rule that picks
 * it (cu_decode_fused) falls back to the three launches (return with *launched false) wherever an
 * instance or a precondition is missing: sm_89 or HASHATTN_CUDA_PORTABLE=1, codes of more than one word
 * or not contiguous, groups other than 1 and 4, K/V rows not 16-byte aligned, MLPs without the one-row
 * layout, local < new tokens; by default also where a block would take turns at encodes (G + new
 * tokens > C), where not every cluster is resident at once, and for plans of more than
 * CU_FUSED_MAX_TOKENS tokens (HASHATTN_CUDA_FUSED=1 takes it there too, =0 never). Measurements:
 * docs/cuda_performance.md, "Session 5b".
 */
#include "cuda_attend_mma.cuh"
#include "cuda_encode_row.cuh"
#include "cuda_match_cluster.cuh"

typedef struct fused_params {
    match_params m;
    attend_params a;
    encode_job query;     /**< one row per sequence                                  */
    encode_job key;       /**< the new keys (heads = the selection heads)            */
    int32_t key_rows;     /**< new keys per sequence (0: none)                       */
    int64_t part_offset;  /**< floats of shared memory before a block's partial result */
} fused_params;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
/* Block c's share of the outputs of heads h0.. of sequence b: each element merged from the C blocks'
 * parts ([G][2 + d]: m in base 2, l, sums) by their log-sum-exp, read through distributed shared memory. */
template <int G>
static __device__ __forceinline__ void merge_parts(const attend_params &a, cooperative_groups::cluster_group cluster,
                                                   float *part, int32_t b, int32_t h0)
{
    const int32_t C = (int32_t)cluster.num_blocks(), c = (int32_t)cluster.block_rank(), d = a.head_dim;
    for (int e = c * blockDim.x + threadIdx.x; e < G * d; e += C * blockDim.x) {
        const int h = e / d, i = e % d;
        float Mk[CU_MATCH_CLUSTER_MAX], Lk[CU_MATCH_CLUSTER_MAX], Ak[CU_MATCH_CLUSTER_MAX];
#pragma unroll
        for (int k = 0; k < CU_MATCH_CLUSTER_MAX; k++) { /* the C remote loads in flight together */
            Mk[k] = -INFINITY;
            Lk[k] = 0.0f;
            Ak[k] = 0.0f;
            if (k < C) {
                const float *r = cluster.map_shared_rank(part, k) + h * (d + 2);
                Mk[k] = r[0];
                Lk[k] = r[1];
                Ak[k] = r[2 + i];
            }
        }
        float M = -INFINITY, L = 0.0f, A = 0.0f;
#pragma unroll
        for (int k = 0; k < CU_MATCH_CLUSTER_MAX; k++)
            if (Lk[k] > 0.0f)
                M = fmaxf(M, Mk[k]);
#pragma unroll
        for (int k = 0; k < CU_MATCH_CLUSTER_MAX; k++)
            if (Lk[k] > 0.0f) {
                const float w = exp2f(Mk[k] - M);
                L = fmaf(w, Lk[k], L);
                A = fmaf(w, Ak[k], A);
            }
        store_out(a, b, h0 + h, i, L > 0.0f ? A / L : 0.0f);
        if (i == 0 && a.lse)
            a.lse[(int64_t)b * a.q_heads + h0 + h] = L > 0.0f ? (M + log2f(L)) * 0.69314718055994531f : -INFINITY;
    }
}
#endif

/* The default rule takes the fused step only for plans of at most this many tokens: at B1 n128K it
 * was slower than the three launches in both modes (call 2 of session 5b; its attend phase has a
 * cluster's 8 blocks per item where the attend kernel spreads an item over up to 33), faster at 32K. */
#define CU_FUSED_MAX_TOKENS 65536

/* Blocks per SM the registers of the instance for a group of G allow: the 4 heads' queries and sums
 * of the attend phase (64 registers) do not fit 128 registers beside the rest without spills. */
static __host__ __device__ constexpr int fused_blocks_per_sm(int G)
{
    return G == 1 ? 2 : 1;
}

/* The attend phase of the instances for groups of G > 1 with 16-bit K/V walks the tensor cores
 * (attend_rows_mma, a slot per warp; the host takes the step there only where it fits). */
static __host__ __device__ constexpr bool fused_attend_mma(int G, int DT)
{
    return G > 1 && DT != HA_F32;
}

/* G: query heads per selection head (= the attend unit's heads); HL: the match's histogram copies;
 * DT: the K/V dtype (16-byte loads). */
template <int G, int HL, int DT>
static __global__ void __launch_bounds__(CU_MATCH_THREADS, fused_blocks_per_sm(G)) decode_fused_kernel(const fused_params p)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    constexpr int VEC = 16 / (DT == HA_F32 ? 4 : 2);
    extern __shared__ __align__(16) uint32_t smem[];
    __shared__ __align__(16) float act[2][CU_ENCODE_ROW_WIDTH];
    __shared__ float last_out[CU_ENCODE_ROW_WIDTH];
    __shared__ uint32_t query_code[G];
    cu_let_next_grid_start();
    cg::cluster_group cluster = cg::this_cluster();
    const int32_t C = p.m.chunks, c = (int32_t)cluster.block_rank();
    const int64_t item = blockIdx.x / C;
    const int32_t b = (int32_t)(item / p.m.sel_heads), s = (int32_t)(item % p.m.sel_heads);

    /* 1. the cluster's encodes, task t by block t mod C: the group's query heads s·G + t (t < G), then
     *    the new keys j = t − G of sequence b under key head s (the key-code heads are the selection
     *    heads), written to the code cache for the steps after this one */
    for (int t = c; t < G + p.key_rows; t += C) {
        if (t != c)
            __syncthreads(); /* the previous task is done with act and last_out */
        const bool key = t >= G; /* one inlined copy of the encode (two cost spills) */
        encode_row_item<2>(key ? p.key : p.query, key ? s : s * G + t, key ? (int64_t)b * p.key_rows + (t - G) : b,
                           act, last_out, key ? NULL : &query_code[t]);
    }
    cu_wait_prior_grids(); /* lengths, key codes, K and V of the earlier kernels */
    const item_geometry g = geometry(p.m, b);
    if (c >= G && !g.keep_all) { /* no code to make: the chunk's key codes to L2 while the others encode */
        int64_t lo, hi;
        chunk_range(g, C, c, &lo, &hi);
        const uint32_t *codes = (const uint32_t *)p.m.k_codes.data + b * p.m.k_codes.stride_seq +
                                s * p.m.k_codes.stride_head;
        for (int64_t t = (lo & ~(int64_t)31) + 32 * threadIdx.x; t < hi; t += 32 * blockDim.x) /* 128-byte lines */
            asm volatile("prefetch.global.L2 [%0];\n" ::"l"(codes + t));
    }
    cluster.sync(); /* every code of the group is in its block's shared memory */

    /* 2. the match of this block's chunk */
    /* what phase 3 needs of the geometry, through shared memory: not held in registers across phase 2 */
    __shared__ int64_t length_s, kept_s;
    if (threadIdx.x == 0) {
        length_s = g.n;
        kept_s = g.keep_all ? g.n : g.lo + g.heavy + (g.n - g.hi);
    }
    int32_t *row = p.m.indices + item * p.m.index_stride;
    const uint32_t mask = cu_code_word_mask(0, p.m.bits);
    match_cluster_item<4, G, uint8_t, HL>(p.m, smem, g, item, b, s, row, [&](uint32_t *qs) {
        if (threadIdx.x < G)
            qs[threadIdx.x] = *cluster.map_shared_rank(&query_code[threadIdx.x], threadIdx.x % C) & mask;
    });
    cluster.sync(); /* the whole index row is written and visible to every block of the cluster */

    /* 3. attend over the c-th part of the row, then merge the C parts */
    const int64_t count = kept_s;
    const int32_t h0 = s * G, d = p.a.head_dim;
    float *fsmem = (float *)smem, *part = fsmem + p.part_offset; /* part: [G][2 + d] */
    if constexpr (fused_attend_mma(G, DT))
        attend_rows_mma<DT, CU_MMA_MAX_DIM>(p.a, fsmem, b, h0, h0 / p.a.group, length_s,
                                            p.m.indices + item * p.m.index_stride, count * c / C, count * (c + 1) / C);
    else
        attend_rows<DT, VEC, G, attend_rows_in_flight<DT, G>()>(p.a, attend_lane_layout(p.a), fsmem, b, h0,
                                                                h0 / p.a.group, length_s,
                                                                p.m.indices + item * p.m.index_stride, count * c / C,
                                                                count * (c + 1) / C);
    const int slots = fused_attend_mma(G, DT) ? (int)(blockDim.x >> 5) : attend_slot_count(p.a);
    attend_slot_weights(p.a, fsmem, slots);
    for (int e = threadIdx.x; e < G * d; e += blockDim.x) {
        const int h = e / d, i = e % d;
        float M, L, A;
        attend_slot_merge(p.a, fsmem, slots, h, i, &M, &L, &A);
        part[h * (d + 2) + 2 + i] = A;
        if (i == 0) {
            part[h * (d + 2)] = M;
            part[h * (d + 2) + 1] = L;
        }
    }
    cluster.sync(); /* every block's part is complete */
    merge_parts<G>(p.a, cluster, part, (int32_t)(blockIdx.x / p.m.chunks / p.m.sel_heads),
                   (int32_t)(blockIdx.x / p.m.chunks % p.m.sel_heads) * G);
    cluster.sync(); /* the other blocks are done with this one's part */
#else
    (void)p;
    __trap(); /* launched only on sm_90 and newer */
#endif
}

/* ---- host side ---------------------------------------------------------------------------------------- */

typedef void (*fused_kernel_fn)(const fused_params);

template <int G, int HL>
static fused_kernel_fn pick_dtype(ha_dtype dt)
{
    switch (dt) {
    case HA_F16: return decode_fused_kernel<G, HL, HA_F16>;
    case HA_BF16: return decode_fused_kernel<G, HL, HA_BF16>;
    default: return decode_fused_kernel<G, HL, HA_F32>;
    }
}

/* The instance for the group and the histogram copies; NULL where none is built. */
static fused_kernel_fn pick_kernel(int32_t group, int32_t hist_lanes, ha_dtype dt)
{
    if (group == 1)
        return hist_lanes > 1 ? pick_dtype<1, 32>(dt) : pick_dtype<1, 1>(dt);
    if (group == 4 && hist_lanes == 1)
        return pick_dtype<4, 1>(dt);
    return NULL;
}

ha_status cu_decode_fused_prepare(const cu_ctx *ctx)
{
    if (!ctx->sm90)
        return HA_OK;
    const ha_dtype types[3] = {HA_F32, HA_F16, HA_BF16};
    const int32_t variants[3][2] = {{1, 1}, {1, 32}, {4, 1}};
    ha_status st = HA_OK;
    for (int t = 0; t < 3 && st == HA_OK; t++)
        for (int v = 0; v < 3 && st == HA_OK; v++)
            st = cu_prepare_kernel(pick_kernel(variants[v][0], variants[v][1], types[t]), ctx,
                                   "cuda init: fused decode kernel");
    return st;
}

ha_status cu_decode_fused(const cu_ctx *ctx, const cu_plan *plan, const ha_decode_args *d, bool *launched)
{
    *launched = false;
    const ha_match_args *ma = &d->match;
    const ha_attend_args *aa = &d->attend;
    const ha_encode_args *qa = &d->query_encode, *ka = &d->key_encode;
    if (!ctx->sm90 || ctx->fused == 0 || ma->batch < 1 || aa->batch != ma->batch || qa->batch != ma->batch ||
        qa->count != 1 || ma->words != 1 || !cu_codes_vectorizable(ma) || ka->count > ma->local ||
        !aa->indices || aa->indices != ma->indices || aa->counts != ma->counts || aa->sel_heads != ma->sel_heads ||
        aa->q_heads != ma->q_heads || aa->seq_lens != ma->seq_lens ||
        (ctx->fused < 0 && plan->desc.max_tokens > CU_FUSED_MAX_TOKENS)) /* by default: see there */
        return HA_OK;
    fused_params p;
    memset(&p, 0, sizeof p);
    /* the stages' own checks: a failure here is the one the three launches would report */
    ha_status st = cu_match_params(plan, ma, &p.m);
    bool vector = false, empty = true;
    if (st == HA_OK)
        st = cu_attend_params(ctx, plan, aa, &p.a, &vector);
    if (st == HA_OK)
        st = cu_encode_job(plan, qa, &p.query, &empty);
    if (st != HA_OK || empty || !cu_encode_row_fits(&p.query) || p.query.words != 1)
        return st;
    const int32_t G = p.m.group;
    if ((G != 1 && G != 4) || !vector || p.a.unit_heads != G || p.a.group % G != 0)
        return HA_OK;
    if (ka->count > 0) {
        st = cu_encode_job(plan, ka, &p.key, &empty);
        if (st != HA_OK || (!empty && (!cu_encode_row_fits(&p.key) || p.key.heads != ma->sel_heads)) ||
            p.key.words > CU_MATCH_THREADS / 32)
            return st;
        p.key_rows = empty ? 0 : p.key.count;
    }

    /* the match's partition: the most chunks (≤ the one-launch match's) whose clusters all run at once
     * (a cluster left for a second wave doubles the step: call 2 of session 5b) */
    const int64_t items = (int64_t)ma->batch * ma->sel_heads;
    const bool mma = fused_attend_mma(G, aa->k.dtype);
    if (mma && !attend_mma_fits(aa->k.dtype, vector, G, p.a.head_dim))
        return HA_OK;
    const int32_t warps = CU_MATCH_THREADS / 32, slots = mma ? warps : warps * (32 / p.a.lanes_per_row);
    p.part_offset = (int64_t)attend_smem_floats(slots, G, p.a.head_dim);
    size_t attend_smem = ((size_t)p.part_offset + (size_t)G * (p.a.head_dim + 2)) * sizeof(float);
    if (mma) { /* the tiles overlap the part, which is written after the walk (1 block per SM: 3 buffers) */
        p.a.mma_ring = 3;
        const size_t tiles = attend_mma_smem_bytes(warps, G, p.a.head_dim, p.a.mma_ring);
        attend_smem = tiles > attend_smem ? tiles : attend_smem;
    }
    fused_kernel_fn kernel = NULL;
    size_t smem = 0;
    int32_t C = cu_match_cluster_size(plan, items);
    for (; C >= 1; C--) {
        p.m.chunks = C;
        if (!cu_match_cluster_fits(ctx, p.m, (p.m.max_tokens + C - 1) / C))
            return HA_OK;
        const size_t match_smem = cu_match_cluster_setup(ctx, &p.m);
        smem = match_smem > attend_smem ? match_smem : attend_smem;
        kernel = pick_kernel(G, p.m.hist_lanes, aa->k.dtype);
        if (!kernel || smem + 4096 > ctx->smem_optin) /* 4 KB: the kernel's static shared memory */
            return HA_OK;
        if (ctx->fused == 1)
            break; /* tests: wherever it applies */
        if (G + p.key_rows > C) /* the encodes would take turns */
            return HA_OK;
        int active = 0;
        st = cu_max_active_clusters(ctx, kernel, C, smem, &active);
        if (st != HA_OK)
            return st;
        if (items <= active)
            break;
    }
    if (C < 1)
        return HA_OK;
    p.a.splits = 1;
    st = cu_launch(ctx, kernel, (unsigned)(items * C), CU_MATCH_THREADS, smem, (cudaStream_t)qa->stream, (unsigned)C,
                   "cuda decode: fused kernel launch", p);
    *launched = st == HA_OK;
    return st;
}
