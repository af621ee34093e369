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
 *
 * Units of 1..8 heads with 16-bit K/V (a GQA group in group mode, one head in paper mode) walk their
 * rows on the tensor cores instead (cuda_attend_mma.cuh: tiles of 16 rows per warp copied with
 * cp.async, mma.sync, a slot per warp); the merges are the same.
 */
#include "cuda_attend_mma.cuh"

/* ---- the merges ---------------------------------------------------------------------------------------- */

/* The weighted sums of merge_splits: V consecutive elements of a row per thread (V = 2 where the rows
 * are even and the pairs still give every thread one: 8-byte loads, one pair per thread at 4 heads ×
 * 128, its loads all independent). */
template <int V>
static __device__ __forceinline__ void merge_sums(const attend_params &p, int32_t b, int32_t h0, const float *weight,
                                                  const float *total, const float *top)
{
    const int H = p.unit_heads, d = p.head_dim, S = p.splits;
    const int64_t slot_floats = d + 2;
    for (int e = threadIdx.x * V; e < H * d; e += blockDim.x * V) {
        const int h = e / d, i = e % d;
        const float *first = p.partials + ((int64_t)b * p.q_heads + h0 + h) * S * slot_floats + 2 + i;
        /* every split wrote its sums (0 where it had no rows, weight 0): the loads need no condition,
         * so several are in flight at once */
        float a[V] = {};
#pragma unroll(8 * V)
        for (int c = 0; c < S; c++) {
            const float w = weight[h * CU_ATTEND_MAX_SPLITS + c];
            if constexpr (V == 2) {
                const float2 x = __ldcg((const float2 *)(first + c * slot_floats));
                a[0] = fmaf(w, x.x, a[0]);
                a[1] = fmaf(w, x.y, a[1]);
            } else {
                a[0] = fmaf(w, __ldcg(first + c * slot_floats), a[0]);
            }
        }
        const float l = total[h];
#pragma unroll
        for (int v = 0; v < V; v++)
            store_out(p, b, h0 + h, i + v, l > 0.0f ? a[v] / l : 0.0f);
        if (i == 0 && p.lse)
            p.lse[(int64_t)b * p.q_heads + h0 + h] = l > 0.0f ? (top[h] + log2f(l)) * 0.69314718055994531f : -INFINITY;
    }
}

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
    if (d % 2 == 0 && H * d >= 2 * (int)blockDim.x) /* pairs where they still give every thread work */
        merge_sums<2>(p, b, h0, weight, total, top);
    else
        merge_sums<1>(p, b, h0, weight, total, top);
}

/* ---- the kernel ---------------------------------------------------------------------------------------- */

/*
 * DT, VEC, HMAX, U: see attend_rows; MIN_BLOCKS: blocks per SM the registers must allow; MMA_D: 0, or
 * the widest row of the tensor-core walk (attend_rows_mma, cuda_attend_mma.cuh) that this instance runs
 * instead (then VEC, HMAX and U are unused).
 */
template <int DT, int VEC, int HMAX, int U, int MIN_BLOCKS, int MMA_D>
static __global__ void __launch_bounds__(CU_ATTEND_THREADS, MIN_BLOCKS) attend_kernel(const attend_params p)
{
    extern __shared__ __align__(16) float smem[];
    __shared__ float total_s[CU_ATTEND_MAX_HEADS], top_s[CU_ATTEND_MAX_HEADS];
    const int64_t work = (int64_t)p.batch * p.units_per_seq * p.splits;
    const attend_layout lay = attend_lane_layout(p);
    const int slots = MMA_D ? (int)(blockDim.x >> 5) : attend_slot_count(p);
    cu_let_next_grid_start();
    cu_wait_prior_grids(); /* the index lists of the match stage */

    for (int64_t w = blockIdx.x; w < work; w += gridDim.x) {
        const int64_t unit = w / p.splits;
        const int32_t split = (int32_t)(w % p.splits);
        const int32_t H = p.unit_heads;
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
        if constexpr (MMA_D > 0)
            attend_rows_mma<DT, MMA_D>(p, smem, b, h0, kv_head, n, list, p0, p1);
        else
            attend_rows<DT, VEC, HMAX, U>(p, lay, smem, b, h0, kv_head, n, list, p0, p1);
        const int d = p.head_dim;
        attend_slot_weights(p, smem, slots);
        for (int e = threadIdx.x; e < H * d; e += blockDim.x) {
            const int h = e / d, i = e % d;
            float M, L, A;
            attend_slot_merge(p, smem, slots, h, i, &M, &L, &A);
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
            merge_splits(p, b, h0, attend_merge_area(smem, slots, H, d), total_s, top_s);
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
        return attend_kernel<DT, VEC, CU_ATTEND_MAX_HEADS, 1, 1, 0>;
    } else {
        if (heads <= 1)
            return attend_kernel<DT, VEC, 1, attend_rows_in_flight<DT, 1>(), 2, 0>;
        if (heads <= 2)
            return attend_kernel<DT, VEC, 2, attend_rows_in_flight<DT, 2>(), 2, 0>;
        if (heads <= 4)
            return attend_kernel<DT, VEC, 4, attend_rows_in_flight<DT, 4>(), 2, 0>;
        return attend_kernel<DT, VEC, CU_ATTEND_MAX_HEADS, attend_rows_in_flight<DT, CU_ATTEND_MAX_HEADS>(), 1, 0>;
    }
}

template <int DT>
static attend_kernel_fn pick_width(bool vector, int32_t heads)
{
    return vector ? pick<DT, 16 / (DT == HA_F32 ? 4 : 2)>(heads) : pick<DT, 1>(heads);
}

/* The tensor-core instance for 16-bit K/V (attend_mma_fits) in rows of `dim` elements. */
template <int DT>
static attend_kernel_fn pick_mma(int32_t dim)
{
    if (dim <= 64)
        return attend_kernel<DT, 8, CU_ATTEND_MAX_HEADS, 1, 2, 64>;
    return attend_kernel<DT, 8, CU_ATTEND_MAX_HEADS, 1, 2, CU_MMA_MAX_DIM>;
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
    const int32_t dims[2] = {64, CU_MMA_MAX_DIM};
    for (int i = 0; i < 2 && st == HA_OK; i++) {
        st = cu_prepare_kernel(pick_mma<HA_F16>(dims[i]), ctx, "cuda init: attend kernel");
        if (st == HA_OK)
            st = cu_prepare_kernel(pick_mma<HA_BF16>(dims[i]), ctx, "cuda init: attend kernel");
    }
    return st;
}

ha_status cu_attend_params(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a, attend_params *out,
                           bool *vector_out)
{
    (void)ctx;
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
    attend_params &p = *out;
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

    *vector_out = vector;
    return HA_OK;
}

ha_status cu_attend(const cu_ctx *ctx, const cu_plan *plan, const ha_attend_args *a)
{
    attend_params p;
    bool vector = false;
    ha_status st = cu_attend_params(ctx, plan, a, &p, &vector);
    if (st != HA_OK || a->batch <= 0)
        return st;
    const int64_t units = (int64_t)a->batch * p.units_per_seq;
    const int64_t longest = a->indices && a->index_stride < p.max_tokens ? a->index_stride : p.max_tokens;
    p.splits = cu_attend_splits(plan, units, longest);
    if (p.splits > 1 && (int64_t)a->batch * a->q_heads * p.splits > plan->partial_slots)
        p.splits = (int32_t)(plan->partial_slots / ((int64_t)a->batch * a->q_heads)); /* never happens: see plan */
    p.splits = p.splits < 1 ? 1 : p.splits;
    p.partials = plan->partials;
    p.arrived = plan->attend_arrived;

    /* 16-bit K/V: the tensor-core walk (cuda_attend_mma.cuh), a slot per warp; a ring
     * of 3 tile buffers per warp where two blocks still fit an SM beside it (an SM has the opt-in limit
     * of one block + 1 KB; each block has 1 KB reserved), else 2 */
    const bool mma = attend_mma_fits(a->k.dtype, vector, p.unit_heads, p.head_dim);
    const int32_t slots = (CU_ATTEND_THREADS / 32) * (32 / p.lanes_per_row), warps = CU_ATTEND_THREADS / 32;
    p.mma_ring = 2 * (attend_mma_smem_bytes(warps, p.unit_heads, p.head_dim, 3) + 2048) <= ctx->smem_optin + 1024 ? 3 : 2;
    const size_t smem = mma ? attend_mma_smem_bytes(warps, p.unit_heads, p.head_dim, p.mma_ring)
                            : attend_smem_floats(slots, p.unit_heads, p.head_dim) * sizeof(float);
    if (smem > ctx->smem_optin)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda attend: %d heads × head_dim %d need %zu bytes of shared memory",
                       p.unit_heads, p.head_dim, smem);
    cudaStream_t stream = (cudaStream_t)a->stream;
    attend_kernel_fn kernel = !mma ? pick_kernel(a->k.dtype, vector, p.unit_heads)
                              : a->k.dtype == HA_F16 ? pick_mma<HA_F16>(p.head_dim)
                                                     : pick_mma<HA_BF16>(p.head_dim);
    return cu_launch(ctx, kernel, cu_grid(units * p.splits), CU_ATTEND_THREADS, smem, stream, 1,
                     "cuda attend: kernel launch", p);
}
