/*
 * cuda_attend.cuh — the attend stage's parameters, K/V loads and the walk of a block over a list of
 * rows (attend_rows), shared by the attend kernel (cuda_attend.cu) and the fused decode step
 * (cuda_decode_fused.cu). See cuda_attend.cu for how the stage works.
 */
#ifndef HA_CUDA_ATTEND_CUH
#define HA_CUDA_ATTEND_CUH

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
    int32_t mma_ring;      /**< tile buffers per warp of attend_rows_mma (cuda_attend_mma.cuh) */
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

/* Where a lane sits in the rows of a warp's step: computed once per block, outside its work loop (as
 * values computed inside it, they cost the 128-register instances spills). */
struct attend_layout {
    int lanes_per_row, rows_per_warp, sub, row_in_step;
};

static __device__ __forceinline__ attend_layout attend_lane_layout(const attend_params &p)
{
    attend_layout l;
    const int lane = threadIdx.x & 31;
    l.lanes_per_row = p.lanes_per_row;
    l.rows_per_warp = 32 / p.lanes_per_row;
    l.sub = lane & (p.lanes_per_row - 1);
    l.row_in_step = lane / p.lanes_per_row;
    return l;
}

/* Rows a lane group keeps in flight (U) with 16-byte loads of dtype DT for HMAX heads: what the
 * registers allow (fp32 rows take twice those of 16-bit ones). */
template <int DT, int HMAX>
static __host__ __device__ constexpr int attend_rows_in_flight()
{
    return HMAX <= 1 ? (DT == HA_F32 ? 4 : 8) : HMAX <= 2 ? 4 : 2;
}

/* The slot areas of a block's shared memory: per slot its (m, l) of every head, then its sums. */
static __device__ __forceinline__ void attend_slots(float *smem, int slots, int heads, int dim, float **ml, float **acc)
{
    *ml = smem + 4 * CU_ATTEND_STAGE; /* [slots][heads][2]   */
    *acc = *ml + slots * heads * 2;   /* [slots][heads][dim] */
}

/*
 * DT: dtype of K and V; VEC: elements per load (16 bytes, or 1); HMAX: most heads per unit; U: rows
 * a lane group has in flight.
 *
 * The rows list[p0..p1) (list NULL: tokens p0..p1) of sequence b, KV head kv_head, for the unit's query
 * heads h0..h0 + p.unit_heads − 1, by the whole block: each slot's (m, l) and sums go to the slot
 * areas of smem (attend_slots), complete when it returns (it ends with a barrier). Tokens outside
 * [0, n) are skipped. The body of attend_kernel and the fused decode step's attend phase.
 */
template <int DT, int VEC, int HMAX, int U>
static __device__ __forceinline__ void attend_rows(const attend_params &p, const attend_layout &lay, float *smem,
                                                   int32_t b, int32_t h0, int32_t kv_head, int64_t n, const int32_t *list,
                                                   int64_t p0, int64_t p1)
{
    typedef kv_load<DT, VEC> io;
    constexpr int NV = CU_ATTEND_LANE_ELEMS / VEC; /* loads per row per lane */
    constexpr int E = NV * VEC;                    /* elements per lane      */
    const int tid = threadIdx.x, warp = tid >> 5, warps = blockDim.x >> 5;
    const int d = p.head_dim, H = p.unit_heads, LPR = lay.lanes_per_row, RPW = lay.rows_per_warp;
    const int sub = lay.sub, row_in_step = lay.row_in_step, slots = warps * RPW, slot = warp * RPW + row_in_step;
    const int vpr = d / VEC; /* loads per row */
    int64_t *k_off = (int64_t *)smem, *v_off = k_off + CU_ATTEND_STAGE; /* bytes from k.data, v.data; -1: none */
    float *slot_ml, *slot_acc;
    attend_slots(smem, slots, H, d, &slot_ml, &slot_acc);
    const size_t q_elem = ha_elem_size(p.q.dtype), kv_elem = ha_elem_size((ha_dtype)DT);
    const char *k_data = (const char *)p.k.data, *v_data = (const char *)p.v.data;

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
            float *dst = slot_acc + (slot * H + h) * d + vi * VEC;
            const float *a = acc[h] + c * VEC;
            if (vi >= vpr)
                continue;
            if constexpr (VEC == 8) {
                /* two 16-byte stores (d is a multiple of 8 here: 16-byte K/V rows): lanes 4..7 of each
                 * quarter warp store their second half first, so that a quarter's 8 stores fill the 32
                 * banks once (in element order, each store was 8-way conflicted) */
                const bool swap = (sub >> 2) & 1;
                const float4 lo = make_float4(a[0], a[1], a[2], a[3]), hi = make_float4(a[4], a[5], a[6], a[7]);
                *(float4 *)(dst + (swap ? 4 : 0)) = swap ? hi : lo;
                *(float4 *)(dst + (swap ? 0 : 4)) = swap ? lo : hi;
            } else if constexpr (VEC == 4) {
                *(float4 *)dst = make_float4(a[0], a[1], a[2], a[3]);
            } else {
#pragma unroll
                for (int j = 0; j < VEC; j++)
                    dst[j] = a[j];
            }
        }
    }
    __syncthreads();
}

/* Slots of a block of attend_rows: a lane group each. */
static __device__ __forceinline__ int attend_slot_count(const attend_params &p)
{
    return (blockDim.x >> 5) * (32 / p.lanes_per_row);
}

/* The tail of a block's shared memory (attend_smem_floats): attend_slot_weights's results ([heads][slots]
 * weights, then M and L of each head), later the split merge's weights. */
static __device__ __forceinline__ float *attend_merge_area(float *smem, int slots, int heads, int dim)
{
    return smem + attend_smem_floats(slots, heads, dim) - (size_t)CU_ATTEND_MAX_HEADS * (CU_ATTEND_MAX_SPLITS + 2);
}

/* The block's merge of its `slots` slots (after attend_rows, slots = attend_slot_count, or attend_rows_mma,
 * a warp each), first part: per head the largest m (base 2) M of the slots that saw rows, each slot's
 * weight 2^(m_k − M) (0 for one that saw none) and L = Σ weight·l. Ends with a barrier. */
static __device__ __forceinline__ void attend_slot_weights(const attend_params &p, float *smem, int slots)
{
    const int H = p.unit_heads, d = p.head_dim;
    float *slot_ml, *slot_acc, *w = attend_merge_area(smem, slots, H, d);
    attend_slots(smem, slots, H, d, &slot_ml, &slot_acc);
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        float M = -INFINITY;
        for (int k = 0; k < slots; k++)
            if (slot_ml[(k * H + h) * 2 + 1] > 0.0f)
                M = fmaxf(M, slot_ml[(k * H + h) * 2]);
        float L = 0.0f;
        for (int k = 0; k < slots; k++) {
            const float lk = slot_ml[(k * H + h) * 2 + 1];
            const float wk = lk > 0.0f ? exp2f(slot_ml[(k * H + h) * 2] - M) : 0.0f;
            w[h * slots + k] = wk;
            L = fmaf(wk, lk, L);
        }
        w[H * slots + h] = M;
        w[H * slots + H + h] = L;
    }
    __syncthreads();
}

/* Second part, for head h (of the unit), element i: *M (base 2), *L, *A (the weighted sums). */
static __device__ __forceinline__ void attend_slot_merge(const attend_params &p, float *smem, int slots, int h, int i,
                                                         float *M_out, float *L_out, float *A_out)
{
    const int H = p.unit_heads, d = p.head_dim;
    float *slot_ml, *slot_acc;
    const float *w = attend_merge_area(smem, slots, H, d);
    attend_slots(smem, slots, H, d, &slot_ml, &slot_acc);
    float A = 0.0f;
    for (int k = 0; k < slots; k++) /* a slot without rows has weight 0 and sums 0 */
        A = fmaf(w[h * slots + k], slot_acc[(k * H + h) * d + i], A);
    *M_out = w[H * slots + h];
    *L_out = w[H * slots + H + h];
    *A_out = A;
}

/* ---- host side ---------------------------------------------------------------------------------------- */

/** Fills p (all but splits, partials, arrived) from a; *vector: 16-byte K/V loads apply. Checks the shapes. */
CU_HIDDEN ha_status cu_attend_params(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a, attend_params *p,
                                     bool *vector);

#endif /* HA_CUDA_ATTEND_CUH */
