/*
 * cuda_encode_split.cuh — the encodes of one item of the fused decode step (cuda_decode_fused.cu, sm_90),
 * split over the C blocks of its thread-block cluster.
 *
 * An item has E = G + R encodes: its G query rows (query MLP heads s·G + e) and the R new key rows of
 * its sequence (key MLP head s). Block c of the cluster owns the outputs [O·c/C, O·(c+1)/C) of every
 * layer of every one of them. The weights do not depend on the activations, so at the kernel's start
 * warp 0 of each block asks the bulk copy engine for all of the block's weight rows and biases (cu_mlp
 * row_storage: output-major, rows padded to 4 floats; a block's rows of a layer are contiguous: one
 * cp.async.bulk per encode and layer, and one for the 16-byte-aligned span of its biases), each layer
 * completing on its own mbarrier: the chain holds one memory latency where the one-block encode had
 * three (session 5b: a layer's loads could only be issued once the previous layer's registers were
 * free). Then a layer is: wait for its weights and for the previous layer's outputs, 8 output slots
 * per warp (dot products from shared memory, the 8 sums by 9 shuffles: reduce_slots), and each output
 * stored into the activations of all C blocks: st.async into the other blocks' shared memory,
 * completing on their per-layer mbarrier (which expects the bytes of the layer's outputs the others
 * own), a plain store and a block barrier for its own. No cluster barrier per layer (its release is a
 * GPU-wide memory barrier), and no reuse hazard: a block stores layer l + 1 into the buffer that layer
 * l read only after every other block's layer-l outputs arrived, each formed after its warp's reads.
 * After the last layer every block holds every encode's last outputs and forms the codes itself (one
 * ballot per word): the match needs no further hand-off; block e mod C writes encode e's code to
 * global memory.
 *
 * A warp takes 8 output slots at a time; what a slot needs (its weight row, input row, output and bias
 * places in shared memory, the input width, whether it is the last layer) is one entry of a table that
 * the block builds once, a thread an entry, while the input rows are on their way: a slot costs a
 * shared load of its entry instead of the index arithmetic in every lane.
 *
 * Dynamic shared memory of a block (floats; the same layout in every block of the cluster, since the
 * others store into it): [E][w_floats of its job] weights (each layer's rows, then its biases), the
 * output table (int4 entries, layer after layer), [E][2][128] activations (buffer 1 holds the input
 * row, layer l reads buffer (l + 1) & 1 and writes buffer l & 1), [E][128] the last layer's outputs.
 * It is free again once encode_split_run returns.
 */
#ifndef HA_CUDA_ENCODE_SPLIT_CUH
#define HA_CUDA_ENCODE_SPLIT_CUH

#include <cooperative_groups.h>

#include "cuda_encode_row.cuh"

/* The most encodes (query heads of an item + new keys of a step) the fused step splits. */
#define CU_SPLIT_MAX_ENCODES 16

typedef struct split_layout {
    int32_t w_off[2][HA_PLUGIN_MAX_MLP_DEPTH]; /**< [job][layer]: floats into an encode's weights, biases  */
    int32_t w_floats[2];                       /**< [job]: one encode's weights (a multiple of 4)          */
    int32_t tab_off[HA_PLUGIN_MAX_MLP_DEPTH];  /**< [layer]: its first entry in the output table           */
    int32_t queries, encodes, depth;           /**< G, E = G + R, the layers of the deeper MLP             */
    int32_t tab_at, act_at, last_at, floats;   /**< the regions, and the whole, in floats                  */
} split_layout;

/** First output of layer width O that block c of C owns (block c owns [split_lo(c), split_lo(c + 1))). */
static __host__ __device__ __forceinline__ int32_t split_lo(int32_t O, int32_t c, int32_t C)
{
    return O * c / C; /* O ≤ 128, c ≤ 8: 32-bit (a 64-bit division is a ~100-instruction call) */
}

/** Floats after a block's weight rows of a layer (rows of them, ≤ ⌈O / C⌉) for its biases: the
 *  16-byte-aligned span of the row layout's biases around them, copied with the weights. */
static __host__ __device__ __forceinline__ int32_t split_bias_slot(int32_t rows)
{
    return ((rows + 3) & ~3) + 8;
}

/** The shared-memory layout of G query encodes (job q) and R key encodes (job k; unused where R = 0) over
 *  C blocks: every block sized for the largest share, ⌈O / C⌉ rows a layer. Returns its bytes. */
static inline size_t split_plan(const encode_job *q, const encode_job *k, int32_t G, int32_t R, int32_t C,
                                split_layout *L)
{
    memset(L, 0, sizeof *L);
    const encode_job *jobs[2] = {q, k};
    const int32_t count[2] = {G, R};
    int32_t entries = 0;
    for (int j = 0; j < (R > 0 ? 2 : 1); j++) {
        int32_t w = 0;
        for (int32_t l = 0; l < jobs[j]->depth; l++) {
            const int32_t rows = (jobs[j]->dims[l + 1] + C - 1) / C;
            L->w_off[j][l] = w;
            w += rows * ((jobs[j]->dims[l] + 3) & ~3) + split_bias_slot(rows);
        }
        L->w_floats[j] = w;
        L->depth = jobs[j]->depth > L->depth ? jobs[j]->depth : L->depth;
    }
    for (int32_t l = 0; l < L->depth; l++) {
        L->tab_off[l] = entries;
        for (int j = 0; j < (R > 0 ? 2 : 1); j++)
            entries += l < jobs[j]->depth ? count[j] * ((jobs[j]->dims[l + 1] + C - 1) / C) : 0;
    }
    entries = (entries + 3) & ~3;
    L->queries = G;
    L->encodes = G + R;
    L->tab_at = G * L->w_floats[0] + R * L->w_floats[1];
    L->act_at = L->tab_at + 4 * entries;
    L->last_at = L->act_at + L->encodes * 2 * CU_ENCODE_ROW_WIDTH;
    L->floats = L->last_at + L->encodes * CU_ENCODE_ROW_WIDTH;
    return (size_t)L->floats * sizeof(float);
}

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900

/* The mbarriers of the encodes, in the block's static shared memory: per layer, its weights arrived
 * (the bulk copies), and its outputs arrived from every block (the st.async stores). */
struct split_barriers {
    uint64_t weights[HA_PLUGIN_MAX_MLP_DEPTH];
    uint64_t outputs[HA_PLUGIN_MAX_MLP_DEPTH];
};

/* Encode e of the item: its job (0 query, 1 key), MLP head and row of the job. */
struct split_encode {
    int job;
    int32_t head;
    int64_t row;
};

static __device__ __forceinline__ split_encode split_which(const split_layout &L, int e, int32_t b, int32_t s)
{
    const int32_t G = L.queries, R = L.encodes - G;
    return e < G ? split_encode{0, s * G + e, b} : split_encode{1, s, (int64_t)b * R + (e - G)};
}

/* Floats into the block's weights (and biases) where encode e's share starts. */
static __device__ __forceinline__ int32_t split_w_base(const split_layout &L, int e)
{
    return e < L.queries ? e * L.w_floats[0] : L.queries * L.w_floats[0] + (e - L.queries) * L.w_floats[1];
}

/* Outputs of layer l of job j that block c of C owns (0 past the job's depth). */
static __device__ __forceinline__ int32_t split_rows(const encode_job &J, int l, int32_t c, int32_t C)
{
    return l < J.depth ? split_lo(J.dims[l + 1], c + 1, C) - split_lo(J.dims[l + 1], c, C) : 0;
}

static __device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

static __device__ __forceinline__ void mbar_wait(const uint64_t *bar)
{
    uint32_t done = 0;
    while (!done)
        asm volatile("{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n selp.u32 %0, 1, 0, p;\n}\n"
                     : "=r"(done)
                     : "r"(smem_addr(bar))
                     : "memory");
}

/* A 16-byte st.async of v into the shared memory of block `rank` of the cluster at the place of
 * local_dst in this block, completing on that block's mbarrier at the place of local_bar. */
static __device__ __forceinline__ void st_async_v4(const void *local_dst, float4 v, const uint64_t *local_bar, int rank)
{
    uint32_t dst, bar;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(dst) : "r"(smem_addr(local_dst)), "r"(rank));
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(bar) : "r"(smem_addr(local_bar)), "r"(rank));
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(dst),
                 "r"(__float_as_uint(v.x)), "r"(__float_as_uint(v.y)), "r"(__float_as_uint(v.z)), "r"(__float_as_uint(v.w)),
                 "r"(bar)
                 : "memory");
}

/* Item i of a layer's T = G·nq + R·nk outputs of this block: its encode and row of the block's share. */
static __device__ __forceinline__ void split_item(const split_layout &L, int32_t i, int32_t nq, int32_t nk, int *e,
                                                  int32_t *r)
{
    const int32_t Gq = L.queries * nq;
    if (i < Gq) {
        *e = i / nq;
        *r = i - *e * nq;
    } else {
        const int32_t k = (i - Gq) / nk;
        *e = L.queries + k;
        *r = i - Gq - k * nk;
    }
}

/**
 * Start of the encodes: warp 0 sets up the mbarriers, asks for all of this block's weight rows and
 * biases (a lane per layer and encode) and announces the bytes of every layer's outputs that the
 * cluster's other blocks will store here; then every thread arrives (relaxed) at the cluster barrier
 * that encode_split_run waits on before its first store into another block (the mbarriers are set up
 * by then). Touches only constant data: call before cu_wait_prior_grids.
 */
static __device__ __forceinline__ void encode_split_issue(const encode_job (&J)[2], const split_layout &L,
                                                          float *smem, split_barriers &bars, int32_t b, int32_t s)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const int32_t C = (int32_t)cluster.num_blocks(), c = (int32_t)cluster.block_rank();
    const int lane = threadIdx.x & 31;
    if (threadIdx.x < 32) { /* warp 0: lane l announces layer l's bytes, lanes issue the (layer, encode) copies */
        if (lane == 0) {
            for (int l = 0; l < L.depth; l++) {
                asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(&bars.weights[l])));
                asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(smem_addr(&bars.outputs[l])));
            }
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
        __syncwarp();
        if (lane < L.depth) {
            const int l = lane;
            uint32_t bytes = 0, outputs = 0; /* outputs: the other blocks' (this block's own are plain stores) */
            for (int e = 0; e < L.encodes; e++) {
                const encode_job &Je = J[split_which(L, e, b, s).job];
                const int32_t n = split_rows(Je, l, c, C), lo = l < Je.depth ? split_lo(Je.dims[l + 1], c, C) : 0;
                if (n > 0)
                    bytes += (uint32_t)n * (uint32_t)((Je.dims[l] + 3) & ~3) * 4u +
                             (uint32_t)(((lo + n + 3) & ~3) - (lo & ~3)) * 4u;
                outputs += l < Je.depth ? (uint32_t)(Je.dims[l + 1] - n) : 0u;
            }
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(&bars.weights[l])),
                         "r"(bytes)
                         : "memory");
            asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(&bars.outputs[l])),
                         "r"(outputs * 4u)
                         : "memory");
        }
        for (int pr = lane; pr < L.depth * L.encodes; pr += 32) {
            const int l = pr / L.encodes, e = pr - l * L.encodes;
            const split_encode w = split_which(L, e, b, s);
            const encode_job &Je = J[w.job];
            const int32_t n = split_rows(Je, l, c, C);
            if (n == 0)
                continue;
            const int32_t KP = (Je.dims[l] + 3) & ~3, lo = split_lo(Je.dims[l + 1], c, C);
            const float *P = Je.row_params + (int64_t)w.head * Je.row_head_floats;
            float *dst = smem + split_w_base(L, e) + L.w_off[w.job][l];
            const uint32_t bar = smem_addr(&bars.weights[l]);
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                             smem_addr(dst)),
                         "l"(P + Je.row_w_off[l] + lo * KP), "r"((uint32_t)(n * KP * 4)), "r"(bar)
                         : "memory");
            /* the biases: the 16-byte-aligned span around [lo, lo + n) (the row layout's bias arrays start
             * at multiples of 4 floats and the head's block is padded to one) */
            asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(
                             smem_addr(dst + n * KP)),
                         "l"(P + Je.row_b_off[l] + (lo & ~3)), "r"((uint32_t)((((lo + n + 3) & ~3) - (lo & ~3)) * 4)),
                         "r"(bar)
                         : "memory");
        }
    }
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}

/* The output table, an entry per output slot of every layer (built once, by a thread each, so that a
 * warp's slot costs one shared load of its entry): the slot's weight row, input row and output in shared
 * memory, and (bias place << 9 | input width << 1 | last layer). */
static __device__ __forceinline__ void build_table(const encode_job (&J)[2], const split_layout &L, float *smem,
                                                   int32_t C, int32_t c)
{
    int32_t rows_q[HA_PLUGIN_MAX_MLP_DEPTH], rows_k[HA_PLUGIN_MAX_MLP_DEPTH], total = 0;
#pragma unroll
    for (int l = 0; l < HA_PLUGIN_MAX_MLP_DEPTH; l++) {
        rows_q[l] = split_rows(J[0], l, c, C);
        rows_k[l] = L.encodes > L.queries ? split_rows(J[1], l, c, C) : 0;
        total += L.queries * rows_q[l] + (L.encodes - L.queries) * rows_k[l];
    }
    int4 *tab = (int4 *)(smem + L.tab_at);
    for (int32_t i = threadIdx.x; i < total; i += blockDim.x) {
        int l = 0;
        int32_t j = i, nq = rows_q[0], nk = rows_k[0];
#pragma unroll
        for (int q = 0; q + 1 < HA_PLUGIN_MAX_MLP_DEPTH; q++) /* the layer of item i, by compile-time indices */
            if (l == q && j >= L.queries * rows_q[q] + (L.encodes - L.queries) * rows_k[q]) {
                j -= L.queries * rows_q[q] + (L.encodes - L.queries) * rows_k[q];
                l = q + 1;
                nq = rows_q[q + 1];
                nk = rows_k[q + 1];
            }
        int e;
        int32_t r;
        split_item(L, j, nq, nk, &e, &r);
        const int job = e < L.queries ? 0 : 1;
        const encode_job &Je = J[job];
        const int32_t I = Je.dims[l], KP = (I + 3) & ~3, lo = split_lo(Je.dims[l + 1], c, C);
        const int32_t n = job == 0 ? nq : nk, w = split_w_base(L, e) + L.w_off[job][l];
        const bool out = l == Je.depth - 1;
        tab[L.tab_off[l] + j] = make_int4(
            w + r * KP, L.act_at + (e * 2 + ((l + 1) & 1)) * CU_ENCODE_ROW_WIDTH,
            (out ? L.last_at + e * CU_ENCODE_ROW_WIDTH : L.act_at + (e * 2 + (l & 1)) * CU_ENCODE_ROW_WIDTH) + lo + r,
            (w + n * KP + (lo & 3) + r) << 9 | I << 1 | (out ? 1 : 0));
    }
}

/**
 * The rest of the encodes, after cu_wait_prior_grids: the input rows into every block, the layers, and
 * the codes: written to the jobs' outputs (by block e mod C) and, for the query encodes, to
 * query_code[e] (shared memory, the first word). Every thread of every block of the cluster calls it
 * (8 warps); tok: E int64 of shared memory. Ends with a block barrier, and every store into this block
 * has landed: the dynamic shared memory is free again.
 */
static __device__ __forceinline__ void encode_split_run(const encode_job (&J)[2], const split_layout &L, float *smem,
                                                        split_barriers &bars, int64_t *tok, uint32_t *query_code,
                                                        int32_t b, int32_t s)
{
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    const int32_t C = (int32_t)cluster.num_blocks(), c = (int32_t)cluster.block_rank();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5, k = 4 * lane;
    constexpr int W = CU_ENCODE_ROW_WIDTH;
    static_assert(CU_SPLIT_MAX_ENCODES <= 2 * (CU_MATCH_THREADS / 32), "a warp stages at most two rows");
    float *act = smem + L.act_at, *last = smem + L.last_at;

    /* the input rows, encodes warp and warp + 8 by warp `warp`: both tokens, then both rows' loads (zero
     * past the row's width, and where the sequence is shorter than the row) */
    {
        int64_t t[2];
        int32_t bb[2];
        float4 x[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int e = warp + h * warps;
            t[h] = -1;
            if (e < L.encodes)
                encode_row_token(J[split_which(L, e, b, s).job], split_which(L, e, b, s).row, &t[h], &bb[h]);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int e = warp + h * warps;
            x[h] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (e < L.encodes && t[h] >= 0) {
                const split_encode w = split_which(L, e, b, s);
                const encode_job &Je = J[w.job];
                const int I = Je.dims[0];
                const void *row = cu_row(Je.in, ha_elem_size(Je.in.dtype), bb[h], w.head / Je.per_in_head, t[h]);
                x[h].x = k < I ? cu_load_f32(row, Je.in.dtype, k) : 0.0f;
                x[h].y = k + 1 < I ? cu_load_f32(row, Je.in.dtype, k + 1) : 0.0f;
                x[h].z = k + 2 < I ? cu_load_f32(row, Je.in.dtype, k + 2) : 0.0f;
                x[h].w = k + 3 < I ? cu_load_f32(row, Je.in.dtype, k + 3) : 0.0f;
            }
        }
        build_table(J, L, smem, C, c); /* while the rows are on their way */
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int e = warp + h * warps;
            if (e < L.encodes) {
                *(float4 *)&act[(e * 2 + 1) * W + k] = x[h];
                if (lane == 0)
                    tok[e] = t[h];
            }
        }
    }
    __syncthreads();
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); /* every block's mbarriers are set up */

    for (int l = 0; l < L.depth; l++) {
        const int32_t T = L.queries * split_rows(J[0], l, c, C) +
                          (L.encodes > L.queries ? (L.encodes - L.queries) * split_rows(J[1], l, c, C) : 0);
        const int4 *tab = (const int4 *)(smem + L.tab_at) + L.tab_off[l];
        mbar_wait(&bars.weights[l]);
        if (l > 0)
            mbar_wait(&bars.outputs[l - 1]); /* layer l − 1's outputs from the other blocks */
        for (int32_t base = 0; base < T; base += ROW_SLOTS * warps) {
            float v[ROW_SLOTS];
#pragma unroll
            for (int j = 0; j < ROW_SLOTS; j++) { /* slot j of warp w: item base + j·warps + w */
                const int32_t i = base + j * warps + warp;
                v[j] = 0.0f;
                if (i < T) {
                    const int4 t = tab[i];
                    const int32_t I = (t.w >> 1) & 255;
                    if (k < ((I + 3) & ~3)) {
                        const float4 x = clip_inputs(*(const float4 *)&smem[t.y + k], k, I);
                        const float4 wt = *(const float4 *)&smem[t.x + k];
                        v[j] = fmaf(x.w, wt.w, fmaf(x.z, wt.z, fmaf(x.y, wt.y, x.x * wt.x)));
                    }
                }
            }
            const float sum = reduce_slots(v, lane);
            const int32_t i = base + lane_slot(lane) * warps + warp; /* the slot this lane holds */
            if (i < T) {
                const int4 t = tab[i];
                const float y = sum + smem[t.w >> 9], val = t.w & 1 ? y : encode_silu(y);
                if ((lane & 3) == 0)
                    smem[t.z] = val;
                const uint32_t dst = smem_addr(&smem[t.z]), bar = smem_addr(&bars.outputs[l]);
                for (int rank = lane & 3; rank < C; rank += 4) { /* the slot's 4 lanes share the C − 1 stores */
                    if (rank == c)
                        continue;
                    uint32_t rdst, rbar;
                    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(rdst) : "r"(dst), "r"(rank));
                    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(rbar) : "r"(bar), "r"(rank));
                    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];\n" ::"r"(rdst),
                                 "r"(__float_as_uint(val)), "r"(rbar)
                                 : "memory");
                }
            }
        }
        __syncthreads(); /* this block's own outputs of layer l */
    }
    mbar_wait(&bars.outputs[L.depth - 1]); /* every encode's last outputs, from the other blocks */

    /* the codes: bit i of word w is output 32·w + i */
    const int32_t wq = J[0].words, wk = L.encodes > L.queries ? J[1].words : 0;
    const int32_t pairs = L.queries * wq + (L.encodes - L.queries) * wk;
    for (int32_t pr = warp; pr < pairs; pr += warps) {
        int e;
        int32_t w;
        split_item(L, pr, wq, wk, &e, &w);
        const split_encode which = split_which(L, e, b, s);
        const encode_job &Je = J[which.job];
        const int32_t o = 32 * w + lane;
        const unsigned word = __ballot_sync(0xffffffffu, o < Je.dims[Je.depth] && last[e * W + o] > 0.0f);
        if (lane == 0 && e < L.queries && w == 0)
            query_code[e] = word;
        if (lane == 0 && e % C == c && tok[e] >= 0)
            ((uint32_t *)cu_row(Je.out, sizeof(uint32_t), b, which.head, tok[e]))[w] = word;
    }
    __syncthreads(); /* query_code is complete; the dynamic shared memory is free */
}

#endif /* __CUDA_ARCH__ >= 900 */

#endif /* HA_CUDA_ENCODE_SPLIT_CUH */
