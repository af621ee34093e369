/*
 * cuda_match_cluster.cuh — the match of one item by a thread-block cluster (sm_90) as a device
 * function: the body of the one-launch match (cuda_match_cluster.cu) and the fused decode step's
 * match phase (cuda_decode_fused.cu). See cuda_match_cluster.cu for how it works.
 */
#ifndef HA_CUDA_MATCH_CLUSTER_CUH
#define HA_CUDA_MATCH_CLUSTER_CUH

#include <cooperative_groups.h>

#include "cuda_match.cuh"

/* Tokens a lane looks at per round of the ordered write: its scores are 16 consecutive tokens'. */
#define WRITE_SPAN 16
/* The chunk's scores start at a multiple of WRITE_SPAN tokens (base), so that each lane's span is one
 * or two aligned 16-byte loads. */
#define SCORE_ALIGN WRITE_SPAN
/* The plan gives each warp of a block a quad of lanes, and each chunk of a cluster a quad (≤ 8 chunks)
 * or a pair (≤ MATCH_CLUSTER_WIDE). */
static_assert(MATCH_WARPS == 8, "the plan's quads of lanes assume 8 warps");
static_assert(MATCH_CLUSTER_WIDE * 2 <= 32, "the plan gives each chunk at least a pair of lanes");

/* One word of scores (S) of 4 consecutive tokens from their distances d (each ≤ best, so no byte or
 * half borrows from the next): best − d, a byte each, or two words of halves. */
template <typename S>
static __device__ __forceinline__ void store_unit_scores(uint32_t *dst, uint32_t best, const uint32_t (&d)[4])
{
    if constexpr (sizeof(S) == 1) { /* the 4 bytes packed by byte permutes (3 instructions, not 5) */
        dst[0] = best * 0x01010101u - __byte_perm(__byte_perm(d[0], d[1], 0x0040), __byte_perm(d[2], d[3], 0x0040), 0x5410);
    } else {
        dst[0] = best * 0x00010001u - (d[0] | d[1] << 16);
        dst[1] = best * 0x00010001u - (d[2] | d[3] << 16);
    }
}

/* Bit k set where the k-th score (S) of word w is ≥ x (x ≤ the largest S + 1). Bytes: the even and
 * the odd ones as 16-bit fields, where field + 0x8000 − x reaches 0x8000 exactly when field ≥ x and
 * never carries into the next field; the top bits of the fields, gathered. */
template <typename S>
static __device__ __forceinline__ uint32_t at_least(uint32_t w, uint32_t x)
{
    if constexpr (sizeof(S) == 1) {
        const uint32_t k = (0x8000u - x) * 0x00010001u;
        const uint32_t even = ((w & 0x00ff00ffu) + k) & 0x80008000u;        /* bytes 0, 2: bits 15, 31 */
        const uint32_t odd = (((w >> 8) & 0x00ff00ffu) + k) & 0x80008000u; /* bytes 1, 3: bits 15, 31 */
        const uint32_t n = even >> 15 | odd >> 14;                          /* bits 0, 1, 16, 17       */
        return (n | n >> 14) & 0xfu;
    } else {
        return ((w & 0xffffu) >= x ? 1u : 0u) | ((w >> 16) >= x ? 2u : 0u);
    }
}

/* Bits 4i..4i+3 set where the 4 byte scores of word w are ≥ x, for scores ≤ 127 and x ≤ 128 (x4 =
 * x · 0x01010101): byte | 0x80 − x keeps bit 7 exactly when byte ≥ x and never borrows from the next
 * byte; the multiply gathers bits 7, 15, 23, 31 into bits 28..31 in order (no two partial products
 * meet), 5 instructions a word where at_least takes ~12. */
static __device__ __forceinline__ uint32_t at_least_small(uint32_t w_or_80, uint32_t x4, int i)
{
    return ((((w_or_80 - x4) & 0x80808080u) * 0x00204081u) >> 28) << (4 * i);
}

/*
 * The warp's kept candidates of its slice [rlo, rhi) (relative to the scores' base), in order, to dst:
 * a score above T is kept, the tie ranked r (0-based, ascending in the chunk) iff r ≥ skip; a kept
 * token's place counts the kept tokens before it. above_run, ties_run: those of the chunk's earlier
 * warps. Each round a lane takes WRITE_SPAN consecutive tokens' scores (whole 16-byte loads) and
 * makes two masks of them (above T; at least T), and one warp prefix sum gives it its place.
 */
template <typename S, bool SMALL>
static __device__ __forceinline__ void write_kept(const S *scores, int32_t rlo, int32_t rhi, int64_t base, uint32_t T,
                                                  int32_t skip, int32_t *dst, int32_t above_run, int32_t ties_run)
{
    static_assert(!SMALL || sizeof(S) == 1, "SMALL: byte scores, every one ≤ 127");
    constexpr int W = WRITE_SPAN * (int)sizeof(S) / 4; /* words of a lane's span */
    constexpr int PER_WORD = 4 / (int)sizeof(S);      /* scores per word        */
    const int lane = threadIdx.x & 31;
    for (int32_t r0 = rlo & ~(WRITE_SPAN - 1); r0 < rhi; r0 += 32 * WRITE_SPAN) {
        const int32_t t0 = r0 + lane * WRITE_SPAN; /* the lane's span, relative */
        uint32_t w[W];
#pragma unroll
        for (int i = 0; i < W; i++)
            w[i] = 0;
        if (t0 < rhi) {
            const uint4 *src = (const uint4 *)(scores + t0);
#pragma unroll
            for (int i = 0; i < W / 4; i++) {
                const uint4 x = src[i];
                w[4 * i] = x.x;
                w[4 * i + 1] = x.y;
                w[4 * i + 2] = x.z;
                w[4 * i + 3] = x.w;
            }
        }
        /* bit j: token t0 + j; only those of the slice */
        const int32_t from = rlo - t0 < 0 ? 0 : rlo - t0 > WRITE_SPAN ? WRITE_SPAN : rlo - t0;
        const int32_t to = rhi - t0 < 0 ? 0 : rhi - t0 > WRITE_SPAN ? WRITE_SPAN : rhi - t0;
        const uint32_t valid = ((1u << to) - 1u) & ~((1u << from) - 1u);
        uint32_t gt = 0, ge = 0;
#pragma unroll
        for (int i = 0; i < W; i++) {
            if constexpr (SMALL) {
                const uint32_t h = w[i] | 0x80808080u;
                gt |= at_least_small(h, (T + 1) * 0x01010101u, i);
                ge |= at_least_small(h, T * 0x01010101u, i);
            } else {
                gt |= at_least<S>(w[i], T + 1) << (i * PER_WORD);
                ge |= at_least<S>(w[i], T) << (i * PER_WORD);
            }
        }
        gt &= valid;
        ge &= valid;
        const uint32_t above = __popc(gt);
        /* above in the low half, ties in the high half: at most 32 × WRITE_SPAN of each */
        const uint32_t mine = above | (__popc(ge) - above) << 16;
        uint32_t before = cu_warp_inclusive_scan(mine);
        const uint32_t round_total = __shfl_sync(0xffffffffu, before, 31);
        before -= mine; /* exclusive */
        int32_t above_before = above_run + (int32_t)(before & 0xffffu);
        int32_t ties_before = ties_run + (int32_t)(before >> 16);
        const int32_t first = (int32_t)(base + t0); /* the span's first token */
        for (uint32_t f = ge; f != 0; f &= f - 1) { /* most lanes keep nothing */
            const int j = __ffs(f) - 1;
            place_candidate(dst, first + j, gt >> j & 1u, skip, &above_before, &ties_before);
        }
        above_run += (int32_t)(round_total & 0xffffu);
        ties_run += (int32_t)(round_total >> 16);
    }
}

/* Adds 1 to the shared-memory word at shared address `at` (nothing returned). */
static __device__ __forceinline__ void shared_inc(uint32_t at)
{
    asm volatile("red.shared.add.u32 [%0], 1;\n" ::"r"(at) : "memory");
}

/*
 * V = 4: one-word codes, contiguous and aligned (a 16-byte load gives a lane 4 tokens); G > 0: the
 * group size, the query codes in registers. V = 1: any layout, one token per lane and step
 * (round_scores). S: uint8_t where every score fits a byte (bins ≤ 256), else uint16_t. HL: copies
 * of each warp's histogram, 32 (one per lane, bin-major: no two lanes ever add to one word or bank)
 * where they fit, else 1 (the warp's lanes collide on the likely scores).
 */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900 /* thread-block clusters */
/*
 * The match of item (b, s) by block c of its cluster (C = p.chunks blocks): the body of
 * match_cluster_kernel (below) and the fused decode step's phase 2. Every thread of every block of
 * the cluster calls it, after the codes it reads are complete; g is the item's geometry, out its index
 * row. query_codes(qs) puts the group's query codes (padding bits cleared) into qs[group × words]
 * (shared memory) by the block's threads; a barrier follows. smem: the dynamic shared memory
 * (cluster_smem bytes). On return every index of the item that this block writes is written, and the
 * other blocks are done with this one's shared memory; the others' writes are not yet visible to it.
 */
template <int V, int G, typename S, int HL, class QueryCodes>
static __device__ __forceinline__ void match_cluster_item(const match_params &p, uint32_t *smem,
                                                          const item_geometry &g, int64_t item, int32_t b,
                                                          int32_t s, int32_t *out, QueryCodes query_codes)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    __shared__ int32_t warp_above_run[MATCH_WARPS], warp_ties_run[MATCH_WARPS];
    __shared__ int32_t offset_s, skip_s;
    __shared__ uint32_t threshold_s;
    const int32_t bins = p.bins;
    const int32_t lane_bins = (bins + 3) & ~3;                 /* a warp's histogram: [lane_bins][HL]  */
    uint32_t *hist = smem;                                     /* [MATCH_WARPS][lane_bins][HL]         */
    uint32_t *warp_hist = hist + MATCH_WARPS * lane_bins * HL; /* [MATCH_WARPS][bins]: each warp's     */
    uint32_t *chunk_hist = warp_hist + MATCH_WARPS * bins;     /* [bins]: this chunk's, read by others */
    uint32_t *total = chunk_hist + bins;                       /* [bins]: the item's                   */
    uint32_t *qs = total + bins;                               /* [group × words + QS_PAD]             */
    S *scores = (S *)(smem + ((qs + p.group * p.words + QS_PAD - smem + 3) & ~3)); /* [score_capacity] */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int32_t C = p.chunks, c = (int32_t)cluster.block_rank();

    if (!write_fixed_rows(p, g, item, c, out))
        return; /* the same in every block of the cluster: none waits for another */
    int64_t lo, hi, wlo, whi;
    chunk_range(g, C, c, &lo, &hi);
    warp_slice<WRITE_SPAN>(lo, hi, warp, &wlo, &whi);
    const int64_t base = lo & ~(int64_t)(SCORE_ALIGN - 1);
    const int32_t rlo = (int32_t)(wlo - base), rhi = (int32_t)(whi - base); /* the slice, relative to base */
    {
        uint4 *h4 = (uint4 *)hist;
        for (int i = tid; i < MATCH_WARPS * lane_bins * HL / 4; i += blockDim.x)
            h4[i] = make_uint4(0, 0, 0, 0);
    }
    query_codes(qs);
    __syncthreads();

    /* score once: count, and keep */
    uint32_t *mine = hist + warp * lane_bins * HL + (HL > 1 ? lane : 0); /* bin v at mine[v × HL] */
    if constexpr (V == 4) {
        const uint4 *row = (const uint4 *)((const uint32_t *)p.k_codes.data + b * p.k_codes.stride_seq +
                                           s * p.k_codes.stride_head + base);
        const int group = G > 0 ? G : p.group;
        uint32_t q[G > 0 ? G : 1];
#pragma unroll
        for (int h = 0; h < (G > 0 ? G : 1); h++)
            q[h] = qs[h];
        const uint32_t mask = cu_code_word_mask(0, p.bits), best = (uint32_t)(group * p.bits);
        /* distance d counts at the shared address at_best − d · 4 HL: one multiply-add a token */
        const uint32_t at_best = (uint32_t)__cvta_generic_to_shared(mine + best * HL);
        for (int32_t r = (rlo & ~3) + 4 * lane; r < rhi; r += 4 * 32 * MATCH_STEPS) {
            uint4 key[MATCH_STEPS];
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++) {
                const int32_t r0 = r + 4 * 32 * st;
                key[st] = r0 < rhi ? __ldg(row + r0 / 4) : make_uint4(0, 0, 0, 0);
            }
            uint32_t *dst = (uint32_t *)(scores + r); /* the scores of the lane's first unit */
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++) {
                const int32_t r0 = r + 4 * 32 * st;
                if (r0 >= rhi)
                    break;
                const uint32_t k[4] = {key[st].x, key[st].y, key[st].z, key[st].w};
                uint32_t d[4];
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    d[j] = 0;
                    if constexpr (G > 0) {
#pragma unroll
                        for (int h = 0; h < G; h++)
                            d[j] += __popc((q[h] ^ k[j]) & mask);
                    } else {
                        for (int h = 0; h < group; h++)
                            d[j] += __popc((qs[h] ^ k[j]) & mask);
                    }
                }
                if (r0 >= rlo && r0 + 4 <= rhi) { /* the whole unit is the warp's */
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        shared_inc(at_best - d[j] * (4 * HL));
                } else {
#pragma unroll
                    for (int j = 0; j < 4; j++)
                        if (r0 + j >= rlo && r0 + j < rhi)
                            shared_inc(at_best - d[j] * (4 * HL));
                }
                store_unit_scores<S>(dst + st * 32 * (int)sizeof(S), best, d);
            }
        }
    } else {
        for (int64_t unit0 = wlo; unit0 < whi; unit0 += 32 * MATCH_STEPS) {
            uint32_t sc[MATCH_STEPS][1];
            round_scores<1>(p, qs, b, s, unit0, wlo, whi, sc);
#pragma unroll
            for (int st = 0; st < MATCH_STEPS; st++)
                if (sc[st][0] != UINT32_MAX) {
                    atomicAdd(&mine[sc[st][0] * HL], 1u);
                    scores[unit0 + 32 * st + lane - base] = (S)sc[st][0];
                }
        }
    }
    /* the warp's histogram: the sum of its copies (lane l adds up bin l, its copies in an order that
     * puts the 32 lanes on 32 banks; bins past 32 by a warp sum each) */
    __syncwarp();
    if constexpr (HL > 1) {
        const uint32_t *copies = hist + warp * lane_bins * HL;
        if (lane < bins) {
            const uint32_t *bin = copies + lane * HL;
            uint32_t sum = 0;
#pragma unroll
            for (int k = 0; k < HL; k++)
                sum += bin[k ^ lane];
            warp_hist[warp * bins + lane] = sum;
        }
        for (int v = 32; v < bins; v++) {
            uint32_t x = copies[v * HL + lane];
#pragma unroll
            for (int d = 16; d > 0; d >>= 1)
                x += __shfl_xor_sync(0xffffffffu, x, d);
            if (lane == 0)
                warp_hist[warp * bins + v] = x;
        }
    } else {
        for (int v = lane; v < bins; v += 32)
            warp_hist[warp * bins + v] = hist[warp * lane_bins + v];
    }
    __syncthreads();
    for (int v = tid; v < bins; v += blockDim.x) {
        uint32_t sum = 0;
#pragma unroll
        for (int k = 0; k < MATCH_WARPS; k++)
            sum += warp_hist[k * bins + v];
        chunk_hist[v] = sum;
    }
    cluster.sync(); /* every chunk's histogram is complete */

    /* the item's histogram: a thread per bin, its loads from the chunks in flight together, 8 at a time
     * (one distributed-shared-memory round trip per 8 chunks, not one per chunk and 32 bins; 8, not all
     * 16 of a wide cluster: registers) */
    for (int v = tid; v < bins; v += blockDim.x) {
        uint32_t sum = 0;
        for (int k0 = 0; k0 < C; k0 += MATCH_WARPS) {
            uint32_t h[MATCH_WARPS];
#pragma unroll
            for (int k = 0; k < MATCH_WARPS; k++)
                h[k] = k0 + k < C ? cluster.map_shared_rank(chunk_hist, k0 + k)[v] : 0u;
#pragma unroll
            for (int k = 0; k < MATCH_WARPS; k++)
                sum += h[k];
        }
        total[v] = sum;
    }
    __syncthreads();

    /* the item's plan, the same in every block, by its first warp: the threshold T, the ties each
     * chunk keeps (the most recent chunks first), this chunk's offset and skipped ties, and the
     * candidates of its warps before each warp. Lanes 4k..4k+3 (2k, 2k+1 where C > 8) count chunk k's
     * candidates above T (and its ties), and lanes 4k..4k+3 warp k's. */
    if (warp == 0) {
        long long above_T;
        const uint32_t T = find_threshold_warp(total, bins, g.heavy, &above_T);
        const int quad = lane >> 2, part = lane & 3;
        const int per = C > MATCH_WARPS ? 2 : 4; /* lanes per chunk */
        uint32_t chunk_above = 0, chunk_ties = 0, above = 0, ties = 0;
        if (lane / per < C) {
            const uint32_t *h = cluster.map_shared_rank(chunk_hist, lane / per);
#pragma unroll 4
            for (int v = (int)T + 1 + lane % per; v < bins; v += per) /* unrolled: remote loads in flight */
                chunk_above += h[v];
            chunk_ties = h[T];
        }
        { /* MATCH_WARPS == 8: a quad each */
            const uint32_t *h = warp_hist + quad * bins;
            for (int v = (int)T + 1 + part; v < bins; v += 4)
                above += h[v];
            ties = h[T];
        }
#pragma unroll
        for (int d = 1; d < 4; d <<= 1) {
            const uint32_t other = __shfl_xor_sync(0xffffffffu, chunk_above, d);
            chunk_above += d < per ? other : 0u;
            above += __shfl_xor_sync(0xffffffffu, above, d);
        }
        long long wanted = g.heavy - above_T, offset = 0, skip = 0; /* wanted: taken at score T */
        for (int k = C - 1; k >= 0; k--) {
            const long long a = __shfl_sync(0xffffffffu, chunk_above, per * k);
            const long long t = __shfl_sync(0xffffffffu, chunk_ties, per * k);
            const long long take = wanted < 0 ? 0 : wanted > t ? t : wanted;
            wanted -= take;
            if (k < c)
                offset += a + take;
            else if (k == c)
                skip = t - take;
        }
        int32_t above_run = 0, ties_run = 0;
        for (int k = 0; k < MATCH_WARPS; k++) {
            const int32_t a = (int32_t)__shfl_sync(0xffffffffu, above, 4 * k);
            const int32_t t = (int32_t)__shfl_sync(0xffffffffu, ties, 4 * k);
            if (lane == k) {
                warp_above_run[k] = above_run;
                warp_ties_run[k] = ties_run;
            }
            above_run += a;
            ties_run += t;
        }
        if (lane == 0) {
            threshold_s = T;
            offset_s = (int32_t)offset;
            skip_s = (int32_t)skip;
        }
    }
    __syncthreads();
    cluster.barrier_arrive(); /* done with the other blocks' shared memory */

    /* the ordered write from the kept scores */
    /* one-word codes of a group of 1: every score ≤ 32 */
    write_kept<S, V == 4 && G == 1>(scores, rlo, rhi, base, threshold_s, skip_s, out + g.lo + offset_s,
                                    warp_above_run[warp], warp_ties_run[warp]);
    cluster.barrier_wait(); /* the other blocks are done with this one's histogram */
}

#endif

/* Clusters of C blocks (CU_MATCH_THREADS threads, smem bytes each) of kernel that the device runs at
 * once: an occupancy query, no device work, remembered per thread for the last few shapes asked (so a
 * step pays it once per shape). */
template <typename Kernel>
static ha_status cu_max_active_clusters(const cu_ctx *ctx, Kernel kernel, int32_t C, size_t smem, int *out)
{
    struct entry {
        Kernel kernel;
        int device;
        int32_t C;
        size_t smem;
        int active;
    };
    static thread_local entry seen[16];
    static thread_local unsigned next;
    for (const entry &e : seen)
        if (e.kernel == kernel && e.device == ctx->device && e.C == C && e.smem == smem) {
            *out = e.active;
            return HA_OK;
        }
    cudaLaunchAttribute attr;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)C;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)C);
    cfg.blockDim = dim3(CU_MATCH_THREADS);
    cfg.dynamicSmemBytes = smem;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int active = 0;
    ha_status st = cu_check(cudaOccupancyMaxActiveClusters(&active, kernel, &cfg),
                            "cuda: cudaOccupancyMaxActiveClusters");
    if (st != HA_OK)
        return st;
    seen[next++ % 16] = entry{kernel, ctx->device, C, smem, active};
    *out = active;
    return HA_OK;
}

#endif /* HA_CUDA_MATCH_CLUSTER_CUH */
