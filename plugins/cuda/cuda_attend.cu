/*
 * cuda_attend.cu — the attend stage: exact attention over an index list (or every token), a
 * split-sequence flash decode. A work unit is the set of query heads that share both a KV head and
 * a token list (a GQA group in group mode and dense, one head in paper mode), so each K, V row is
 * fetched once per unit. A block takes one split of one unit's token list and walks it in tiles:
 * gather the tile's K and V rows into shared memory (fp32), logits by warp-wide dot products, an
 * online softmax per head, and fp32 accumulators in registers (CU_ATTEND_ACC per thread). With one
 * split the block writes the output; otherwise each split leaves (m, l, partial sums) and a merge
 * kernel combines them by their log-sum-exp.
 */
#include <math.h>

#include "cuda_device.cuh"

#define CU_MERGE_THREADS 128
/* Floats a K or V tile holds: its token count is this over head_dim (at most 32). */
#define CU_ATTEND_TILE_FLOATS 4096
#define CU_ATTEND_MAX_TILE 32

typedef struct attend_params {
    ha_rows q;
    ha_rows k;
    ha_rows v;
    const int32_t *seq_lens;
    const int32_t *indices;
    int64_t index_stride;
    const int32_t *counts;
    int32_t batch;
    int32_t q_heads;
    int32_t group;         /**< query heads per KV head             */
    int32_t sel_heads;
    int32_t per_sel;       /**< query heads per index row            */
    int32_t head_dim;
    int32_t unit_heads;    /**< query heads of one block             */
    int32_t units_per_seq;
    int32_t splits;
    int32_t tile;          /**< tokens per tile                      */
    float scale;
    void *out;
    ha_dtype out_dtype;
    int64_t out_stride_seq;
    int64_t out_stride_head;
    float *lse;
    float *partials;       /**< [batch × q_heads][splits][head_dim + 2] when splits > 1 */
    int64_t max_tokens;
} attend_params;

static __device__ __forceinline__ void store_out(const attend_params &p, int32_t b, int32_t h, int32_t i, float x)
{
    void *row = (char *)p.out + (b * p.out_stride_seq + h * p.out_stride_head) * (int64_t)ha_elem_size(p.out_dtype);
    ha_store_f32(row, p.out_dtype, i, x);
}

static __global__ void __launch_bounds__(CU_ATTEND_THREADS) attend_kernel(const attend_params p)
{
    extern __shared__ float smem[];
    const int d = p.head_dim, H = p.unit_heads, TL = p.tile;
    float *q_s = smem;         /* [H][d], scaled         */
    float *k_s = q_s + H * d;  /* [TL][d]                */
    float *v_s = k_s + TL * d; /* [TL][d]                */
    float *p_s = v_s + TL * d; /* [H][TL] logits, weights */
    float *m_s = p_s + H * TL; /* [H] running max         */
    float *l_s = m_s + H;      /* [H] running sum         */
    float *alpha_s = l_s + H;  /* [H] rescale of the tile */
    int32_t *tok_s = (int32_t *)(alpha_s + H); /* [TL] token ids, -1 = none */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const size_t q_elem = ha_elem_size(p.q.dtype), k_elem = ha_elem_size(p.k.dtype), v_elem = ha_elem_size(p.v.dtype);
    const int64_t work = (int64_t)p.batch * p.units_per_seq * p.splits;

    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t unit = w / p.splits;
        const int32_t split = (int32_t)(w % p.splits);
        const int32_t b = (int32_t)(unit / p.units_per_seq), h0 = (int32_t)(unit % p.units_per_seq) * H;
        const int32_t kv_head = h0 / p.group;
        const int64_t n = cu_clamp_len(p.seq_lens[b], p.max_tokens);
        const int32_t *list = NULL;
        int64_t len = n;
        if (p.indices) {
            const int64_t row = (int64_t)b * p.sel_heads + h0 / p.per_sel;
            list = p.indices + row * p.index_stride;
            len = cu_clamp_len(p.counts[row], p.index_stride);
        }
        const int64_t p0 = len * split / p.splits, p1 = len * (split + 1) / p.splits;

        __syncthreads(); /* the previous unit is done with shared memory */
        for (int e = tid; e < H * d; e += blockDim.x)
            q_s[e] = ha_load_f32(cu_row(p.q, q_elem, b, h0 + e / d, 0), p.q.dtype, e % d) * p.scale;
        if (tid < H) {
            m_s[tid] = -INFINITY;
            l_s[tid] = 0.0f;
        }
        float acc[CU_ATTEND_ACC];
#pragma unroll
        for (int i = 0; i < CU_ATTEND_ACC; i++)
            acc[i] = 0.0f;

        for (int64_t base = p0; base < p1; base += TL) {
            const int tn = p1 - base < TL ? (int)(p1 - base) : TL;
            if (tid < tn) { /* an index outside [0, n) (bad device input) is skipped, never read */
                const int64_t t = list ? list[base + tid] : base + tid;
                tok_s[tid] = t >= 0 && t < n ? (int32_t)t : -1;
            }
            __syncthreads();
            for (int e = tid; e < tn * d; e += blockDim.x) {
                const int j = e / d, i = e % d, t = tok_s[j];
                k_s[e] = t >= 0 ? ha_load_f32(cu_row(p.k, k_elem, b, kv_head, t), p.k.dtype, i) : 0.0f;
                v_s[e] = t >= 0 ? ha_load_f32(cu_row(p.v, v_elem, b, kv_head, t), p.v.dtype, i) : 0.0f;
            }
            __syncthreads();
            for (int pair = warp; pair < H * tn; pair += warps) {
                const int h = pair / tn, j = pair % tn;
                float s = 0.0f;
                for (int i = lane; i < d; i += 32)
                    s = fmaf(q_s[h * d + i], k_s[j * d + i], s);
                s = cu_warp_sum(s);
                if (lane == 0)
                    p_s[h * TL + j] = tok_s[j] >= 0 ? s : -INFINITY;
            }
            __syncthreads();
            for (int h = warp; h < H; h += warps) {
                float mx = -INFINITY;
                for (int j = lane; j < tn; j += 32)
                    mx = fmaxf(mx, p_s[h * TL + j]);
                mx = cu_warp_max(mx);
                const float m_old = m_s[h], m_new = fmaxf(m_old, mx);
                float sum = 0.0f;
                for (int j = lane; j < tn; j += 32) {
                    const float x = p_s[h * TL + j];
                    const float e = x == -INFINITY ? 0.0f : expf(x - m_new);
                    p_s[h * TL + j] = e;
                    sum += e;
                }
                sum = cu_warp_sum(sum);
                __syncwarp(); /* every lane has read m_s[h] before lane 0 replaces it */
                if (lane == 0) {
                    const float alpha = m_old == -INFINITY ? 0.0f : expf(m_old - m_new);
                    alpha_s[h] = alpha;
                    l_s[h] = l_s[h] * alpha + sum;
                    m_s[h] = m_new;
                }
            }
            __syncthreads();
#pragma unroll
            for (int i = 0; i < CU_ATTEND_ACC; i++) {
                const int e = tid + i * CU_ATTEND_THREADS;
                if (e < H * d) {
                    const int h = e / d, dim = e % d;
                    float a = acc[i] * alpha_s[h];
                    for (int j = 0; j < tn; j++)
                        a = fmaf(p_s[h * TL + j], v_s[j * d + dim], a);
                    acc[i] = a;
                }
            }
            __syncthreads(); /* the tile buffers are refilled next */
        }
        __syncthreads(); /* m_s, l_s as the last tile left them (or as initialized) */

        if (p.splits == 1) {
#pragma unroll
            for (int i = 0; i < CU_ATTEND_ACC; i++) {
                const int e = tid + i * CU_ATTEND_THREADS;
                if (e < H * d) {
                    const int h = e / d, dim = e % d;
                    const float l = l_s[h];
                    store_out(p, b, h0 + h, dim, l > 0.0f ? acc[i] / l : 0.0f);
                }
            }
            if (tid < H && p.lse)
                p.lse[(int64_t)b * p.q_heads + h0 + tid] = l_s[tid] > 0.0f ? m_s[tid] + logf(l_s[tid]) : -INFINITY;
        } else {
            const int64_t slot_floats = d + 2;
#pragma unroll
            for (int i = 0; i < CU_ATTEND_ACC; i++) {
                const int e = tid + i * CU_ATTEND_THREADS;
                if (e < H * d) {
                    const int h = e / d, dim = e % d;
                    const int64_t row = (int64_t)b * p.q_heads + h0 + h;
                    p.partials[(row * p.splits + split) * slot_floats + 2 + dim] = acc[i];
                }
            }
            if (tid < H) {
                float *slot = p.partials + (((int64_t)b * p.q_heads + h0 + tid) * p.splits + split) * slot_floats;
                slot[0] = m_s[tid];
                slot[1] = l_s[tid];
            }
        }
    }
}

/* Combines the splits of one query head: weights exp(m_c − max m) rescale each split's sums. */
static __global__ void __launch_bounds__(CU_MERGE_THREADS) attend_merge_kernel(const attend_params p)
{
    __shared__ float weight[CU_ATTEND_MAX_SPLITS];
    __shared__ float total_s, max_s;
    const int64_t rows = (int64_t)p.batch * p.q_heads, slot_floats = p.head_dim + 2;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const float *first = p.partials + row * p.splits * slot_floats;
        __syncthreads(); /* the previous row is done with weight[] */
        if (threadIdx.x < 32) {
            float m = -INFINITY;
            for (int c = threadIdx.x; c < p.splits; c += 32)
                if (first[c * slot_floats + 1] > 0.0f)
                    m = fmaxf(m, first[c * slot_floats]);
            m = cu_warp_max(m);
            float l = 0.0f;
            for (int c = threadIdx.x; c < p.splits; c += 32) {
                const float lc = first[c * slot_floats + 1];
                weight[c] = lc > 0.0f ? expf(first[c * slot_floats] - m) : 0.0f;
                l += weight[c] * lc;
            }
            l = cu_warp_sum(l);
            if (threadIdx.x == 0) {
                total_s = l;
                max_s = m;
            }
        }
        __syncthreads();
        const float l = total_s, inv = l > 0.0f ? 1.0f / l : 0.0f;
        const int32_t b = (int32_t)(row / p.q_heads), h = (int32_t)(row % p.q_heads);
        for (int i = threadIdx.x; i < p.head_dim; i += blockDim.x) {
            float a = 0.0f;
#pragma unroll 1 /* unrolled, the remainder's loads may be merged and read past splits */
            for (int c = 0; c < p.splits; c++)
                if (weight[c] > 0.0f)
                    a = fmaf(weight[c], first[c * slot_floats + 2 + i], a);
            store_out(p, b, h, i, a * inv);
        }
        if (threadIdx.x == 0 && p.lse)
            p.lse[row] = l > 0.0f ? max_s + logf(l) : -INFINITY;
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

static int32_t gcd32(int32_t x, int32_t y)
{
    while (y) {
        int32_t t = x % y;
        x = y;
        y = t;
    }
    return x;
}

static size_t attend_smem(int32_t heads, int32_t dim, int32_t tile)
{
    return ((size_t)heads * dim + 2 * (size_t)tile * dim + (size_t)heads * tile + 3 * (size_t)heads + (size_t)tile) *
           sizeof(float);
}

ha_status cu_attend_prepare(const cu_ctx *ctx)
{
    ha_status st = cu_prepare_kernel(attend_kernel, ctx, "cuda init: attend kernel");
    return st != HA_OK ? st : cu_prepare_kernel(attend_merge_kernel, ctx, "cuda init: attend merge kernel");
}

ha_status cu_attend(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a)
{
    if (a->q_heads < 1 || a->kv_heads < 1 || a->q_heads % a->kv_heads != 0 || a->head_dim < 1 ||
        (a->indices && (a->sel_heads < 1 || a->q_heads % a->sel_heads != 0)))
        return cu_fail(HA_ERR_SHAPE, "cuda attend: q_heads %d, kv_heads %d, sel_heads %d, head_dim %d do not fit "
                       "together", a->q_heads, a->kv_heads, a->sel_heads, a->head_dim);
    if (a->head_dim > plan->desc.head_dim || a->batch > plan->desc.max_batch ||
        a->q_heads / a->kv_heads > plan->desc.q_heads / plan->desc.kv_heads)
        return cu_fail(HA_ERR_STATE, "cuda attend: batch %d, head_dim %d, group %d exceed this plan's (%d, %d, %d)",
                       a->batch, a->head_dim, a->q_heads / a->kv_heads, plan->desc.max_batch, plan->desc.head_dim,
                       plan->desc.q_heads / plan->desc.kv_heads);
    if (a->batch <= 0)
        return HA_OK;

    attend_params p;
    memset(&p, 0, sizeof p);
    p.q = a->q;
    p.k = a->k;
    p.v = a->v;
    p.seq_lens = a->seq_lens;
    p.indices = a->indices;
    p.index_stride = a->index_stride;
    p.counts = a->counts;
    p.batch = a->batch;
    p.q_heads = a->q_heads;
    p.group = a->q_heads / a->kv_heads;
    p.sel_heads = a->indices ? a->sel_heads : a->q_heads;
    p.per_sel = a->q_heads / p.sel_heads;
    p.head_dim = a->head_dim;
    p.tile = CU_ATTEND_TILE_FLOATS / a->head_dim;
    p.tile = p.tile < 1 ? 1 : p.tile > CU_ATTEND_MAX_TILE ? CU_ATTEND_MAX_TILE : p.tile;
    /* heads sharing a KV head and (with indices) an index row; as many per block as the
     * accumulators and the logit buffer allow (a divisor, so every block has the same count) */
    const int32_t shared = a->indices ? gcd32(p.per_sel, p.group) : p.group;
    p.unit_heads = shared;
    while (p.unit_heads > 1 && ((int64_t)p.unit_heads * p.head_dim > CU_MAX_HEAD_DIM ||
                                (int64_t)p.unit_heads * p.tile > CU_ATTEND_TILE_FLOATS / 2 || shared % p.unit_heads))
        p.unit_heads--;
    p.units_per_seq = a->q_heads / p.unit_heads;
    p.scale = a->scale;
    p.out = a->out;
    p.out_dtype = a->out_dtype;
    p.out_stride_seq = a->out_stride_seq;
    p.out_stride_head = a->out_stride_head;
    p.lse = a->lse;
    p.max_tokens = plan->desc.max_tokens;

    const int64_t units = (int64_t)a->batch * p.units_per_seq;
    const int64_t longest = a->indices && a->index_stride < p.max_tokens ? a->index_stride : p.max_tokens;
    p.splits = cu_attend_splits(plan, units, longest);
    if (p.splits > 1 && (int64_t)a->batch * a->q_heads * p.splits > plan->partial_slots)
        p.splits = (int32_t)(plan->partial_slots / ((int64_t)a->batch * a->q_heads)); /* never happens: see plan */
    p.splits = p.splits < 1 ? 1 : p.splits;
    p.partials = plan->partials;

    const size_t smem = attend_smem(p.unit_heads, p.head_dim, p.tile);
    if (smem > ctx->smem_optin)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda attend: %d heads × head_dim %d need %zu bytes of shared memory",
                       p.unit_heads, p.head_dim, smem);
    cudaStream_t stream = (cudaStream_t)a->stream;
    attend_kernel<<<cu_grid(units * p.splits), CU_ATTEND_THREADS, smem, stream>>>(p);
    ha_status st = cu_check(cudaGetLastError(), "cuda attend: kernel launch");
    if (st != HA_OK || p.splits == 1)
        return st;
    attend_merge_kernel<<<cu_grid((int64_t)a->batch * a->q_heads), CU_MERGE_THREADS, 0, stream>>>(p);
    return cu_check(cudaGetLastError(), "cuda attend: merge kernel launch");
}
