/*
 * cuda_attend_mma.cuh — the attend stage's walk over a list of rows on the tensor cores, for units of
 * 1..8 query heads (group mode: a GQA group; paper mode: one head) and 16-bit K/V (fp16, bf16) in
 * 16-byte-aligned rows whose width is a multiple of 16 (≤ 128). The same contract as attend_rows (cuda_attend.cuh): each slot's
 * (m, l, sums) in the slot areas of shared memory; here a slot is a warp.
 *
 * Why (session 7): the lane-per-slice walk spends ~90 instructions of a warp per row for 4 heads (8
 * elements per lane, 4 shuffle stages per head and row) and issues its next loads only after that
 * arithmetic, so at B = 1 the group attend ran at ~0.7 TB/s, issue- and latency-bound. Here each warp
 * copies tiles of 16 rows (K and V, cp.async, rows of the tile in flight together) into its own part
 * of shared memory, and computes with mma.sync m16n8k16 (fp32 accumulation):
 *   S = Q·Kᵀ: A = the unit's queries, rows 0..7 the heads' queries rounded to 16 bits (hi), rows 8..15
 *             what that rounding lost (lo), so S = hi·K + lo·K carries ~16 bits of the fp32 query;
 *             B = the K tile (ldmatrix); the two halves land in the same lane (c0/c1 and c2/c3).
 *   O += P·V: A = the softmax weights of the tile, split the same way (hi in rows 0..7, lo in 8..15);
 *             B = the V tile (ldmatrix .trans). O's rows h and h + 8 are summed at the end.
 * A lane holds O for head lane/4 and columns 8j + 2(lane%4) + {0, 1}, the online softmax per head is
 * over its 4 lanes (two shuffles per tile, not per row). Each warp streams its tiles' K and V through
 * a ring of 2 or 3 buffers (a group of copies per matrix; attend_rows_mma).
 *
 * Units of one head (paper mode, session 8) use 2 of the 16 rows of A: the products are wasted, but
 * the cp.async ring keeps more K/V bytes in flight than the lane walk's registers; measured on an
 * H200 (A/B/A in one call), the paper-mode steps 2–29 µs faster (B1 n128K 1/32 57.7 → 55.6 / 56.1).
 */
#ifndef HA_CUDA_ATTEND_MMA_CUH
#define HA_CUDA_ATTEND_MMA_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda_attend.cuh"

/* Rows of a tile (the k of one P·V product). */
#define CU_MMA_TILE 16
/* Widest rows (elements) the tensor-core walk takes. */
#define CU_MMA_MAX_DIM 128

/* Bytes from one staged row to the next: the row plus 16, so that the 8 rows an ldmatrix reads fall
 * on 8 different groups of 4 banks. */
static __host__ __device__ __forceinline__ int attend_mma_row_bytes(int dim)
{
    return dim * 2 + 16;
}

/* Shared memory of a block of `warps` warps (bytes): the query tile, then per warp a ring of `ring`
 * tile buffers. The slot areas (attend_slots) overlap the tiles once the walk is over. */
static __host__ __device__ __forceinline__ size_t attend_mma_smem_bytes(int warps, int heads, int dim, int ring)
{
    const size_t tiles = (size_t)CU_MMA_TILE * attend_mma_row_bytes(dim) * (1 + (size_t)ring * warps);
    const size_t slots = attend_smem_floats(warps, heads, dim) * sizeof(float);
    return tiles > slots ? tiles : slots;
}

/* Whether the tensor-core walk takes a unit of `heads` heads, K/V of dtype dt in rows of `dim`. */
static inline bool attend_mma_fits(ha_dtype dt, bool vector, int32_t heads, int32_t dim)
{
    return vector && (dt == HA_F16 || dt == HA_BF16) && heads >= 1 && heads <= 8 && dim % 16 == 0 &&
           dim <= CU_MMA_MAX_DIM;
}

/* Pairs of 16-bit values (x0 in the low half) and the tensor-core product of the K/V dtype DT. */
static __device__ __forceinline__ __nv_bfloat162 pair16(float x0, float x1, __nv_bfloat162 *)
{
    return __floats2bfloat162_rn(x0, x1);
}
static __device__ __forceinline__ __half2 pair16(float x0, float x1, __half2 *)
{
    return __floats2half2_rn(x0, x1);
}
static __device__ __forceinline__ float2 unpair16(__nv_bfloat162 x)
{
    return __bfloat1622float2(x);
}
static __device__ __forceinline__ float2 unpair16(__half2 x)
{
    return __half22float2(x);
}

template <int DT> struct mma16 {
    typedef typename std::conditional<DT == HA_BF16, __nv_bfloat162, __half2>::type pair;
    /* hi = (x0, x1) rounded, lo = what the rounding lost, rounded */
    static __device__ __forceinline__ void split(float x0, float x1, uint32_t *hi, uint32_t *lo)
    {
        const pair h = pair16(x0, x1, (pair *)0);
        const float2 back = unpair16(h);
        const pair l = pair16(x0 - back.x, x1 - back.y, (pair *)0);
        *hi = *(const uint32_t *)&h;
        *lo = *(const uint32_t *)&l;
    }
    /* c += a·b (m16n8k16, fp32 accumulators) */
    static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1)
    {
        if constexpr (DT == HA_BF16)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};\n"
                         : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
        else
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                         "{%0,%1,%2,%3};\n"
                         : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

/* Four 8×8 16-bit matrices from shared memory (lane i gives row i % 8 of matrix i / 8); .trans
 * hands each lane the transposed elements. */
template <bool TRANS>
static __device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *row)
{
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

/* The byte offsets (from k.data or v.data) of row `lane % 16` of tile rows [i0, i0 + 16) of the
 * list, of K (lanes 0..15) or V (16..31); -1 where the row is past p1 or its token outside [0, n).
 * *valid: bit r set where row r is one to attend. */
static __device__ __forceinline__ int64_t attend_mma_offset(const attend_params &p, int32_t b, int32_t kv_head, int64_t n,
                                                            const int32_t *list, int64_t i0, int64_t p1, uint32_t *valid)
{
    const int lane = threadIdx.x & 31;
    const int64_t i = i0 + (lane & 15);
    const int64_t t = i < p1 ? (list ? list[i] : i) : -1;
    const bool ok = t >= 0 && t < n;
    *valid = __ballot_sync(0xffffffffu, ok) & 0xffffu;
    return ok ? cu_rows_offset(lane < 16 ? p.k : p.v, b, kv_head, t) * 2 : -1;
}

/* One warp copies a tile of one matrix (rows at byte offsets `off` of lanes 16·mat + r, see
 * attend_mma_offset; `valid`: its mask) into `tile`, 16-byte pieces in flight together; absent rows
 * become zeros. Rows of D elements with every row present (the usual tile) take a path with the
 * piece → (row, column) map fixed at compile time and no zero fill. */
template <int D>
static __device__ __forceinline__ void attend_mma_copy(char *tile, const char *base, int64_t off, uint32_t valid, int mat,
                                                       int dim)
{
    const int lane = threadIdx.x & 31;
    if (dim == D && valid == 0xffffu) {
        constexpr int PR = D / 8, ROWS = 32 / PR, RS = 2 * D + 16; /* pieces per row; rows per step */
        static_assert(32 % PR == 0, "a warp's pieces cover whole rows");
        const int col = lane % PR, row = lane / PR;
        char *dst = tile + row * RS + col * 16;
        const char *src = base + col * 16;
#pragma unroll
        for (int j = 0; j < CU_MMA_TILE / ROWS; j++)
            copy16_async(dst + j * ROWS * RS, src + __shfl_sync(0xffffffffu, off, mat * 16 + row + j * ROWS));
        return;
    }
    const int per_row = dim >> 3, rs = attend_mma_row_bytes(dim);
    /* piece c = lane + 32 j: row c / per_row, column c % per_row, stepped without a division */
    int row = lane / per_row, col = lane - row * per_row;
    const int row_step = 32 / per_row, col_step = 32 - row_step * per_row;
    for (int c = lane; c < CU_MMA_TILE * per_row; c += 32) {
        const int64_t o = __shfl_sync(0xffffffffu, off, mat * 16 + row);
        copy16_async_or_zero(tile + row * rs + col * 16, o >= 0 ? base + o + col * 16 : base, o >= 0);
        row += row_step;
        col += col_step;
        if (col >= per_row) {
            col -= per_row;
            row++;
        }
    }
}

/* Query elements i, i + 1 of a row as raw bits (both loads in flight before either is used), and
 * their values. */
static __device__ __forceinline__ void attend_mma_q_load(const void *row, ha_dtype dt, int i, uint32_t *raw)
{
    if (dt == HA_F32) {
        raw[0] = __float_as_uint(((const float *)row)[i]);
        raw[1] = __float_as_uint(((const float *)row)[i + 1]);
    } else {
        raw[0] = ((const unsigned short *)row)[i];
        raw[1] = ((const unsigned short *)row)[i + 1];
    }
}

static __device__ __forceinline__ float attend_mma_q_value(uint32_t raw, ha_dtype dt)
{
    switch (dt) {
    case HA_F16: return __half2float(__ushort_as_half((unsigned short)raw));
    case HA_BF16: return __uint_as_float(raw << 16);
    default: return __uint_as_float(raw);
    }
}

/* A block of 256 threads fills the query tile's 8 rows × dim / 2 pairs in two turns. */
static_assert(4 * CU_MMA_MAX_DIM <= 2 * CU_ATTEND_THREADS && CU_ATTEND_THREADS == CU_MATCH_THREADS,
              "the query tile in two turns of the attend and fused blocks");

/*
 * DT: HA_F16 or HA_BF16; D: the instance's widest row (a multiple of 16, ≥ p.head_dim). The rows
 * list[p0..p1) (list NULL: tokens p0..p1) of sequence b, KV head kv_head, for the unit's query heads
 * h0..h0 + p.unit_heads − 1 (1..8), by the whole block: warp w takes tiles w, w + warps, …; its
 * (m, l, sums) per head go to slot w of the slot areas (attend_slots with blockDim.x / 32 slots),
 * complete when it returns (it ends with a barrier). smem: attend_mma_smem_bytes(…, p.mma_ring).
 *
 * A warp streams its tiles' matrices in the order K0, V0, K1, V1, … through a ring of p.mma_ring
 * (2 or 3) tile buffers: matrix j + ring is requested as soon as matrix j has been used, so with 3
 * buffers the next tile's K is in flight from the start.
 */
template <int DT, int D>
static __device__ __forceinline__ void attend_rows_mma(const attend_params &p, float *smem, int32_t b, int32_t h0,
                                                       int32_t kv_head, int64_t n, const int32_t *list, int64_t p0,
                                                       int64_t p1)
{
    typedef mma16<DT> op;
    constexpr int NT = D / 8; /* 8-column pieces of O */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int d = p.head_dim, H = p.unit_heads, rs = attend_mma_row_bytes(d), ring = p.mma_ring;
    const int tile_bytes = CU_MMA_TILE * rs;
    const int g = lane >> 2, tig = lane & 3; /* the lane's head (row of A and C) and column pair */
    char *q_tile = (char *)smem, *bufs = q_tile + tile_bytes + (size_t)warp * ring * tile_bytes;
    const char *k_data = (const char *)p.k.data, *v_data = (const char *)p.v.data;
    const int64_t tiles = p1 > p0 ? (p1 - p0 + CU_MMA_TILE - 1) / CU_MMA_TILE : 0;
    const int64_t mats = tiles > warp ? 2 * ((tiles - warp + warps - 1) / warps) : 0; /* this warp's K, V tiles */

    /* the request side of the ring: matrix `issued` into buffer `put`; its tile's row offsets, and the
     * valid-row masks of the tiles requested but not yet used (16 bits each, oldest lowest) */
    int64_t issued = 0, off = -1;
    int put = 0, queued = 0;
    uint32_t masks = 0, valid = 0;
    auto request = [&]() {
        if (issued < mats) {
            const int mat = (int)(issued & 1);
            if (mat == 0) {
                off = attend_mma_offset(p, b, kv_head, n, list, p0 + (warp + (issued >> 1) * warps) * CU_MMA_TILE, p1,
                                        &valid);
                masks |= valid << (16 * queued++);
            }
            attend_mma_copy<D>(bufs + put * tile_bytes, mat ? v_data : k_data, off, valid, mat, d);
        }
        copy_commit(); /* a group per matrix, empty past the end: the waits count groups */
        issued++;
        put = put + 1 == ring ? 0 : put + 1;
    };

    __syncthreads(); /* the previous unit's merge is done with the shared memory */
    /* the query tile: rows 0..7 the heads' queries in base-2 logit scale, rounded; rows 8..15 the rest.
     * Its loads go out first, the first matrices' copies while they are in flight. */
    const int pairs = 8 * (d / 2);
    uint32_t q_raw[2][2] = {{0, 0}, {0, 0}};
#pragma unroll
    for (int t = 0; t < 2; t++) {
        const int e = tid + t * blockDim.x, h = e / (d / 2);
        if (e < pairs && h < H)
            attend_mma_q_load(cu_row(p.q, ha_elem_size(p.q.dtype), b, h0 + h, 0), p.q.dtype, 2 * (e % (d / 2)), q_raw[t]);
    }
    for (int r = 0; r < ring; r++)
        request();
#pragma unroll
    for (int t = 0; t < 2; t++) {
        const int e = tid + t * blockDim.x, h = e / (d / 2), i = 2 * (e % (d / 2));
        if (e < pairs) {
            const float x0 = h < H ? attend_mma_q_value(q_raw[t][0], p.q.dtype) * p.scale_log2 : 0.0f;
            const float x1 = h < H ? attend_mma_q_value(q_raw[t][1], p.q.dtype) * p.scale_log2 : 0.0f;
            uint32_t hi, lo;
            op::split(x0, x1, &hi, &lo);
            *(uint32_t *)(q_tile + h * rs + i * 2) = hi;
            *(uint32_t *)(q_tile + (h + 8) * rs + i * 2) = lo;
        }
    }
    __syncthreads();

    float o[NT][4], m = -INFINITY, l = 0.0f;
#pragma unroll
    for (int j = 0; j < NT; j++)
        o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    uint32_t pa[4]; /* the weights of the tile whose K was used last, as A of P·V */
    int take = 0;

#pragma unroll 1
    for (int64_t j = 0; j < mats; j++) {
        copy_wait(ring - 1); /* matrix j */
        __syncwarp();
        const char *tile = bufs + take * tile_bytes;
        if ((j & 1) == 0) {
            const uint32_t rows = masks & 0xffffu;
            masks >>= 16;
            queued--;
            float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                if (kk * 16 >= d)
                    break;
                uint32_t a[4], kb[4];
                ldmatrix_x4<false>(a, q_tile + (lane & 15) * rs + (kk * 2 + (lane >> 4)) * 16);
                ldmatrix_x4<false>(kb, tile + ((lane & 7) + ((lane >> 4) << 3)) * rs + (kk * 2 + ((lane >> 3) & 1)) * 16);
                op::mma(s[0], a, kb[0], kb[1]);
                op::mma(s[1], a, kb[2], kb[3]);
            }
            /* online softmax of head g over the tile's rows 8·nt + 2·tig + e */
            float x[2][2], mx = m;
#pragma unroll
            for (int nt = 0; nt < 2; nt++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int r = nt * 8 + tig * 2 + e;
                    x[nt][e] = (rows >> r) & 1 ? s[nt][e] + s[nt][2 + e] : -INFINITY;
                    mx = fmaxf(mx, x[nt][e]);
                }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float base = mx == -INFINITY ? 0.0f : mx;
            const float alpha = exp2f(m - base); /* 0 while m is −∞ */
            m = mx;
            float sum = 0.0f;
#pragma unroll
            for (int nt = 0; nt < 2; nt++) {
                const float w0 = exp2f(x[nt][0] - base), w1 = exp2f(x[nt][1] - base);
                sum += w0 + w1;
                op::split(w0, w1, &pa[2 * nt], &pa[2 * nt + 1]); /* a0/a2: rows g (hi), a1/a3: rows g + 8 (lo) */
            }
            l = l * alpha + sum;
#pragma unroll
            for (int jt = 0; jt < NT; jt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    o[jt][e] *= alpha;
        } else {
#pragma unroll
            for (int j2 = 0; j2 < NT / 2; j2++) {
                if (j2 * 16 >= d)
                    break;
                uint32_t vb[4];
                ldmatrix_x4<true>(vb, tile + ((lane & 7) + (((lane >> 3) & 1) << 3)) * rs + (j2 * 2 + (lane >> 4)) * 16);
                op::mma(o[2 * j2], pa, vb[0], vb[1]);
                op::mma(o[2 * j2 + 1], pa, vb[2], vb[3]);
            }
        }
        __syncwarp(); /* every lane is done with buffer `take`: matrix j + ring goes there */
        request();
        take = take + 1 == ring ? 0 : take + 1;
    }
    copy_wait(0);

    /* the warp's slot: l over the head's 4 lanes; O = rows g + rows g + 8 */
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    float *slot_ml, *slot_acc;
    attend_slots(smem, warps, H, d, &slot_ml, &slot_acc);
    __syncthreads(); /* every warp is done with its tiles: the slot areas overlap them */
    if (g < H) {
        if (tig == 0) {
            slot_ml[(warp * H + g) * 2] = m;
            slot_ml[(warp * H + g) * 2 + 1] = l;
        }
        float *dst = slot_acc + (warp * H + g) * d + tig * 2;
#pragma unroll
        for (int jt = 0; jt < NT; jt++)
            if (jt * 8 < d)
                *(float2 *)(dst + jt * 8) = make_float2(o[jt][0] + o[jt][2], o[jt][1] + o[jt][3]);
    }
    __syncthreads();
}

#endif /* HA_CUDA_ATTEND_MMA_CUH */
