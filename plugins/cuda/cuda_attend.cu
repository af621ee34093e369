/*
 * cuda_attend.cu — the attend stage: exact attention over an index list (or every token), a
 * split-sequence flash decode.
 *
 * A work unit is the set of query heads (at most CU_ATTEND_MAX_HEADS) that share both a KV head and
 * a token list (a GQA group in group mode and dense, one head in paper mode), so each K, V row is
 * fetched once per unit. A block takes one split of one unit's token list: it stages the split's
 * token ids in shared memory, and each warp walks its own share of them. A K or V row spreads over
 * `lanes_per_row` lanes (16-byte loads where the layout allows, one element at a time otherwise), so
 * a warp takes 32 / lanes_per_row rows per load, U rows per lane group in flight at once. Each lane
 * group ("slot") keeps its own online softmax (running max m and sum l per head, base 2) and its
 * slice of the fp32 accumulators in registers: no barrier inside the token loop. At the end the
 * block merges its slots through shared memory; with one split it writes the output, otherwise the
 * split's (m, l, sums) go to the plan's scratch and the last split of the unit to finish (a counter
 * per unit) merges them all by their log-sum-exp and writes the output.
 */
#include <cuda_fp16.h>
#include <math.h>

#include "cuda_device.cuh"

/* Tokens whose K and V row offsets a block stages in shared memory at a time. */
#define CU_ATTEND_STAGE 512

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
    int32_t lanes_per_row; /**< a power of two ≤ 32                  */
    float scale_log2;      /**< scale × log2(e): logits in base 2    */
    void *out;
    ha_dtype out_dtype;
    int64_t out_stride_seq;
    int64_t out_stride_head;
    float *lse;
    float *partials;       /**< [batch × q_heads][splits][head_dim + 2] when splits > 1 */
    uint32_t *arrived;     /**< [units]: splits done                 */
    int64_t max_tokens;
} attend_params;

/* ---- loading K, V: VEC elements of dtype DT at once, as floats ------------------------------------------ */

template <int DT, int VEC> struct kv_load;

template <> struct kv_load<HA_F32, 4> {
    typedef float4 raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const float4 *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f)
    {
        f[0] = r.x;
        f[1] = r.y;
        f[2] = r.z;
        f[3] = r.w;
    }
};

/* 8 half-precision values in 4 words; bf16 is the top half of an fp32 */
template <> struct kv_load<HA_BF16, 8> {
    typedef uint4 raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const uint4 *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f)
    {
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            f[2 * i] = __uint_as_float(w[i] << 16);
            f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
};

template <> struct kv_load<HA_F16, 8> {
    typedef uint4 raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const uint4 *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f)
    {
        const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const float2 x = __half22float2(*(const __half2 *)&w[i]);
            f[2 * i] = x.x;
            f[2 * i + 1] = x.y;
        }
    }
};

template <> struct kv_load<HA_F32, 1> {
    typedef float raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const float *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f) { f[0] = r; }
};

template <> struct kv_load<HA_BF16, 1> {
    typedef unsigned short raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const unsigned short *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f) { f[0] = __uint_as_float((uint32_t)r << 16); }
};

template <> struct kv_load<HA_F16, 1> {
    typedef unsigned short raw;
    static __device__ __forceinline__ raw load(const void *p) { return __ldg((const unsigned short *)p); }
    static __device__ __forceinline__ void unpack(const raw &r, float *f) { f[0] = __half2float(__ushort_as_half(r)); }
};

static __device__ __forceinline__ void store_out(const attend_params &p, int32_t b, int32_t h, int32_t i, float x)
{
    void *row = (char *)p.out + (b * p.out_stride_seq + h * p.out_stride_head) * (int64_t)ha_elem_size(p.out_dtype);
    cu_store_f32(row, p.out_dtype, i, x);
}

/* Shared memory of a block (floats): the staged K and V offsets, then per slot its (m, l) and sums of every head, then the
 * split weights of the final merge. */
static __host__ __device__ __forceinline__ size_t attend_smem_floats(int32_t slots, int32_t heads, int32_t dim)
{
    return 4 * CU_ATTEND_STAGE + (size_t)slots * heads * (dim + 2) + (size_t)CU_ATTEND_MAX_HEADS * (CU_ATTEND_MAX_SPLITS + 2);
}

/* ---- the merges ---------------------------------------------------------------------------------------- */

/* The last split of a unit to finish: combines every split's (m, l, sums), weights 2^(m_c − max m). */
static __device__ void merge_splits(const attend_params &p, int32_t b, int32_t h0, float *weight, float *total,
                                    float *top)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int H = p.unit_heads, d = p.head_dim, S = p.splits;
    const int64_t slot_floats = d + 2;
    for (int h = warp; h < H; h += warps) {
        const float *first = p.partials + ((int64_t)b * p.q_heads + h0 + h) * S * slot_floats;
        float m = -INFINITY;
        for (int c = lane; c < S; c += 32)
            if (__ldcg(first + c * slot_floats + 1) > 0.0f)
                m = fmaxf(m, __ldcg(first + c * slot_floats));
        m = cu_warp_max(m);
        float l = 0.0f;
        for (int c = lane; c < S; c += 32) {
            const float lc = __ldcg(first + c * slot_floats + 1);
            const float wc = lc > 0.0f ? exp2f(__ldcg(first + c * slot_floats) - m) : 0.0f;
            weight[h * CU_ATTEND_MAX_SPLITS + c] = wc;
            l += wc * lc;
        }
        l = cu_warp_sum(l);
        if (lane == 0) {
            total[h] = l;
            top[h] = m;
        }
    }
    __syncthreads();
    for (int e = tid; e < H * d; e += blockDim.x) {
        const int h = e / d, i = e % d;
        const float *first = p.partials + ((int64_t)b * p.q_heads + h0 + h) * S * slot_floats;
        /* every split wrote its sums (0 where it had no rows, weight 0): the loads need no condition,
         * so several are in flight at once */
        float a = 0.0f;
#pragma unroll 8
        for (int c = 0; c < S; c++)
            a = fmaf(weight[h * CU_ATTEND_MAX_SPLITS + c], __ldcg(first + c * slot_floats + 2 + i), a);
        const float l = total[h];
        store_out(p, b, h0 + h, i, l > 0.0f ? a / l : 0.0f);
        if (i == 0 && p.lse)
            p.lse[(int64_t)b * p.q_heads + h0 + h] = l > 0.0f ? (top[h] + log2f(l)) * 0.69314718055994531f : -INFINITY;
    }
}

/* ---- the kernel ---------------------------------------------------------------------------------------- */

/*
 * DT: dtype of K and V; VEC: elements per load (16 bytes, or 1); HMAX: most heads per unit; U: rows
 * a lane group has in flight; MIN_BLOCKS: blocks per SM the registers must allow.
 */
template <int DT, int VEC, int HMAX, int U, int MIN_BLOCKS>
static __global__ void __launch_bounds__(CU_ATTEND_THREADS, MIN_BLOCKS) attend_kernel(const attend_params p)
{
    typedef kv_load<DT, VEC> io;
    constexpr int NV = CU_ATTEND_LANE_ELEMS / VEC; /* loads per row per lane */
    constexpr int E = NV * VEC;                    /* elements per lane      */
    extern __shared__ __align__(16) float smem[];
    __shared__ float total_s[CU_ATTEND_MAX_HEADS], top_s[CU_ATTEND_MAX_HEADS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int d = p.head_dim, H = p.unit_heads, LPR = p.lanes_per_row, RPW = 32 / LPR;
    const int sub = lane & (LPR - 1), row_in_step = lane / LPR, slots = warps * RPW, slot = warp * RPW + row_in_step;
    const int vpr = d / VEC; /* loads per row */
    int64_t *k_off = (int64_t *)smem, *v_off = k_off + CU_ATTEND_STAGE; /* bytes from k.data, v.data; -1: none */
    float *slot_ml = smem + 4 * CU_ATTEND_STAGE; /* [slots][H][2]  */
    float *slot_acc = slot_ml + slots * H * 2;  /* [slots][H][d]  */
    float *weight = slot_acc + slots * H * d;   /* [HMAX][MAX_SPLITS] */
    const size_t q_elem = ha_elem_size(p.q.dtype), kv_elem = ha_elem_size((ha_dtype)DT);
    const char *k_data = (const char *)p.k.data, *v_data = (const char *)p.v.data;
    const int64_t work = (int64_t)p.batch * p.units_per_seq * p.splits;
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the index lists of the match stage */

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

        /* this lane's elements of each query, scaled to base-2 logits */
        float q[HMAX][E], acc[HMAX][E], m[HMAX], l[HMAX];
#pragma unroll
        for (int h = 0; h < HMAX; h++) {
            const void *qrow = cu_row(p.q, q_elem, b, h0 + (h < H ? h : 0), 0);
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int vi = c * LPR + sub;
#pragma unroll
                for (int j = 0; j < VEC; j++)
                    q[h][c * VEC + j] = h < H && vi < vpr ? cu_load_f32(qrow, p.q.dtype, vi * VEC + j) * p.scale_log2 : 0.0f;
            }
#pragma unroll
            for (int e = 0; e < E; e++)
                acc[h][e] = 0.0f;
            m[h] = -INFINITY;
            l[h] = 0.0f;
        }

        for (int64_t stage = p0; stage < p1; stage += CU_ATTEND_STAGE) {
            const int sn = p1 - stage < CU_ATTEND_STAGE ? (int)(p1 - stage) : CU_ATTEND_STAGE;
            __syncthreads(); /* the staged offsets are free again */
            for (int i = tid; i < sn; i += blockDim.x) { /* an index outside [0, n) is skipped, never read */
                const int64_t t = list ? list[stage + i] : stage + i;
                const bool ok = t >= 0 && t < n;
                k_off[i] = ok ? cu_rows_offset(p.k, b, kv_head, t) * (int64_t)kv_elem : -1;
                v_off[i] = ok ? cu_rows_offset(p.v, b, kv_head, t) * (int64_t)kv_elem : -1;
            }
            __syncthreads();
#pragma unroll 1
            for (int i0 = warp * RPW * U; i0 < sn; i0 += warps * RPW * U) {
                bool has[U];
                typename io::raw kr[U][NV], vr[U][NV];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int i = i0 + u * RPW + row_in_step;
                    const int64_t ko = i < sn ? k_off[i] : -1, vo = i < sn ? v_off[i] : -1;
                    has[u] = ko >= 0;
#pragma unroll
                    for (int c = 0; c < NV; c++) {
                        const int vi = c * LPR + sub;
                        kr[u][c] = typename io::raw{};
                        vr[u][c] = typename io::raw{};
                        if (has[u] && vi < vpr) {
                            kr[u][c] = io::load(k_data + ko + (size_t)vi * VEC * kv_elem);
                            vr[u][c] = io::load(v_data + vo + (size_t)vi * VEC * kv_elem);
                        }
                    }
                }
                /* logits: the lane's partial dot products, summed over the row's lanes */
                float s[U][HMAX];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    float kf[E];
#pragma unroll
                    for (int c = 0; c < NV; c++)
                        io::unpack(kr[u][c], kf + c * VEC);
#pragma unroll
                    for (int h = 0; h < HMAX; h++) {
                        float x = 0.0f;
#pragma unroll
                        for (int e = 0; e < E; e++)
                            x = fmaf(q[h][e], kf[e], x);
                        s[u][h] = x;
                    }
                }
                for (int o = LPR >> 1; o > 0; o >>= 1) {
#pragma unroll
                    for (int u = 0; u < U; u++)
#pragma unroll
                        for (int h = 0; h < HMAX; h++)
                            s[u][h] += __shfl_xor_sync(0xffffffffu, s[u][h], o);
                }
                /* online softmax of this slot: rescale by 2^(m_old − m_new), weights 2^(s − m_new) */
                float pw[U][HMAX];
#pragma unroll
                for (int h = 0; h < HMAX; h++) {
                    float mx = m[h];
#pragma unroll
                    for (int u = 0; u < U; u++)
                        if (has[u])
                            mx = fmaxf(mx, s[u][h]);
                    const float alpha = m[h] == -INFINITY ? 0.0f : exp2f(m[h] - mx);
                    float sum = 0.0f;
#pragma unroll
                    for (int u = 0; u < U; u++) {
                        pw[u][h] = has[u] ? exp2f(s[u][h] - mx) : 0.0f;
                        sum += pw[u][h];
                    }
                    l[h] = l[h] * alpha + sum;
                    m[h] = mx;
#pragma unroll
                    for (int e = 0; e < E; e++)
                        acc[h][e] *= alpha;
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    float vf[E];
#pragma unroll
                    for (int c = 0; c < NV; c++)
                        io::unpack(vr[u][c], vf + c * VEC);
#pragma unroll
                    for (int h = 0; h < HMAX; h++)
#pragma unroll
                        for (int e = 0; e < E; e++)
                            acc[h][e] = fmaf(pw[u][h], vf[e], acc[h][e]);
                }
            }
        }

        /* merge the block's slots */
        __syncthreads(); /* the previous unit's merge is done with the slot area */
#pragma unroll
        for (int h = 0; h < HMAX; h++) {
            if (h >= H)
                break;
            if (sub == 0) {
                slot_ml[(slot * H + h) * 2] = m[h];
                slot_ml[(slot * H + h) * 2 + 1] = l[h];
            }
#pragma unroll
            for (int c = 0; c < NV; c++) {
                const int vi = c * LPR + sub;
                if (vi < vpr) {
#pragma unroll
                    for (int j = 0; j < VEC; j++)
                        slot_acc[(slot * H + h) * d + vi * VEC + j] = acc[h][c * VEC + j];
                }
            }
        }
        __syncthreads();
        for (int e = tid; e < H * d; e += blockDim.x) {
            const int h = e / d, i = e % d;
            float M = -INFINITY;
            for (int k = 0; k < slots; k++)
                if (slot_ml[(k * H + h) * 2 + 1] > 0.0f)
                    M = fmaxf(M, slot_ml[(k * H + h) * 2]);
            float L = 0.0f, A = 0.0f;
            for (int k = 0; k < slots; k++) {
                const float lk = slot_ml[(k * H + h) * 2 + 1];
                if (lk > 0.0f) {
                    const float wk = exp2f(slot_ml[(k * H + h) * 2] - M);
                    L = fmaf(wk, lk, L);
                    A = fmaf(wk, slot_acc[(k * H + h) * d + i], A);
                }
            }
            if (p.splits == 1) {
                store_out(p, b, h0 + h, i, L > 0.0f ? A / L : 0.0f);
                if (i == 0 && p.lse)
                    p.lse[(int64_t)b * p.q_heads + h0 + h] = L > 0.0f ? (M + log2f(L)) * 0.69314718055994531f : -INFINITY;
            } else {
                float *part = p.partials + (((int64_t)b * p.q_heads + h0 + h) * p.splits + split) * (d + 2);
                part[2 + i] = A;
                if (i == 0) {
                    part[0] = M;
                    part[1] = L;
                }
            }
        }
        if (p.splits == 1)
            continue;
        /* the last split of the unit to get here merges them */
        if (cu_last_to_arrive(&p.arrived[unit], (uint32_t)p.splits))
            merge_splits(p, b, h0, weight, total_s, top_s);
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */

typedef void (*attend_kernel_fn)(const attend_params);

/* The instance for the KV dtype, the load width and the heads per unit. */
template <int DT, int VEC>
static attend_kernel_fn pick(int32_t heads)
{
    if constexpr (VEC == 1) { /* unaligned layouts: one instance */
        (void)heads;
        return attend_kernel<DT, VEC, CU_ATTEND_MAX_HEADS, 1, 1>;
    } else {
        if (heads <= 1) /* fp32 rows take twice the registers */
            return attend_kernel<DT, VEC, 1, DT == HA_F32 ? 4 : 8, 2>;
        if (heads <= 2)
            return attend_kernel<DT, VEC, 2, 4, 2>;
        if (heads <= 4)
            return attend_kernel<DT, VEC, 4, 2, 2>;
        return attend_kernel<DT, VEC, CU_ATTEND_MAX_HEADS, 2, 1>;
    }
}

template <int DT>
static attend_kernel_fn pick_width(bool vector, int32_t heads)
{
    return vector ? pick<DT, 16 / (DT == HA_F32 ? 4 : 2)>(heads) : pick<DT, 1>(heads);
}

static attend_kernel_fn pick_kernel(ha_dtype dt, bool vector, int32_t heads)
{
    switch (dt) {
    case HA_F16: return pick_width<HA_F16>(vector, heads);
    case HA_BF16: return pick_width<HA_BF16>(vector, heads);
    default: return pick_width<HA_F32>(vector, heads);
    }
}

static int32_t gcd32(int32_t x, int32_t y)
{
    while (y) {
        int32_t t = x % y;
        x = y;
        y = t;
    }
    return x;
}

/* 16-byte loads need every row to start 16-byte aligned and to be whole 16-byte pieces. */
static bool rows_aligned(const ha_rows &r, int32_t dim, size_t elem)
{
    const int64_t bytes[4] = {(int64_t)dim, r.stride_seq, r.stride_token, r.stride_head};
    if ((uintptr_t)r.data % 16 != 0)
        return false;
    for (int i = 0; i < 4; i++)
        if (bytes[i] * (int64_t)elem % 16 != 0)
            return false;
    return true;
}

ha_status cu_attend_prepare(const cu_ctx *ctx)
{
    const ha_dtype types[3] = {HA_F32, HA_F16, HA_BF16};
    const int32_t heads[4] = {1, 2, 4, CU_ATTEND_MAX_HEADS};
    ha_status st = HA_OK;
    for (int t = 0; t < 3 && st == HA_OK; t++) {
        st = cu_prepare_kernel(pick_kernel(types[t], false, 1), ctx, "cuda init: attend kernel");
        for (int h = 0; h < 4 && st == HA_OK; h++)
            st = cu_prepare_kernel(pick_kernel(types[t], true, heads[h]), ctx, "cuda init: attend kernel");
    }
    return st;
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
    if (a->k.dtype != a->v.dtype)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda attend: K and V of different dtypes (%d, %d)", (int)a->k.dtype,
                       (int)a->v.dtype);
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
    /* heads sharing a KV head and (with indices) an index row, at most CU_ATTEND_MAX_HEADS per block
     * (a divisor, so every block has the same count) */
    const int32_t shared = a->indices ? gcd32(p.per_sel, p.group) : p.group;
    p.unit_heads = shared < CU_ATTEND_MAX_HEADS ? shared : CU_ATTEND_MAX_HEADS;
    while (shared % p.unit_heads)
        p.unit_heads--;
    p.units_per_seq = a->q_heads / p.unit_heads;
    p.scale_log2 = a->scale * 1.44269504088896341f;
    p.out = a->out;
    p.out_dtype = a->out_dtype;
    p.out_stride_seq = a->out_stride_seq;
    p.out_stride_head = a->out_stride_head;
    p.lse = a->lse;
    p.max_tokens = plan->desc.max_tokens;

    const size_t kv_elem = ha_elem_size(a->k.dtype);
    const bool vector = rows_aligned(a->k, a->head_dim, kv_elem) && rows_aligned(a->v, a->head_dim, kv_elem);
    const int32_t vec = vector ? (int32_t)(16 / kv_elem) : 1;
    const int32_t loads_per_lane = CU_ATTEND_LANE_ELEMS / vec, loads_per_row = a->head_dim / vec;
    p.lanes_per_row = 1;
    while (p.lanes_per_row * loads_per_lane < loads_per_row)
        p.lanes_per_row <<= 1; /* ≤ 32: head_dim ≤ CU_MAX_HEAD_DIM (plan_create) */

    const int64_t units = (int64_t)a->batch * p.units_per_seq;
    const int64_t longest = a->indices && a->index_stride < p.max_tokens ? a->index_stride : p.max_tokens;
    p.splits = cu_attend_splits(plan, units, longest);
    if (p.splits > 1 && (int64_t)a->batch * a->q_heads * p.splits > plan->partial_slots)
        p.splits = (int32_t)(plan->partial_slots / ((int64_t)a->batch * a->q_heads)); /* never happens: see plan */
    p.splits = p.splits < 1 ? 1 : p.splits;
    p.partials = plan->partials;
    p.arrived = plan->attend_arrived;

    const int32_t slots = (CU_ATTEND_THREADS / 32) * (32 / p.lanes_per_row);
    const size_t smem = attend_smem_floats(slots, p.unit_heads, p.head_dim) * sizeof(float);
    if (smem > ctx->smem_optin)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda attend: %d heads × head_dim %d need %zu bytes of shared memory",
                       p.unit_heads, p.head_dim, smem);
    cudaStream_t stream = (cudaStream_t)a->stream;
    attend_kernel_fn kernel = pick_kernel(a->k.dtype, vector, p.unit_heads);
    return cu_launch(ctx, kernel, cu_grid(units * p.splits), CU_ATTEND_THREADS, smem, stream, 1,
                     "cuda attend: kernel launch", p);
}
