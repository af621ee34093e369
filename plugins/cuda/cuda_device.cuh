/*
 * cuda_device.cuh — device-side helpers the kernels share: row addressing (ha_rows), length
 * clamping, grid-stride loops, and a block-wide exclusive prefix sum.
 */
#ifndef HA_CUDA_DEVICE_CUH
#define HA_CUDA_DEVICE_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_internal.h"

/* ha_load_f32 / ha_store_f32 (ha_shared.h) with the hardware's conversions: the same values (fp16 and
 * bf16 widen exactly; fp16 stores round to nearest even, overflow to inf), far fewer instructions. */
static __device__ __forceinline__ float cu_load_f32(const void *row, ha_dtype dt, int64_t i)
{
    switch (dt) {
    case HA_F16: return __half2float(__ushort_as_half(((const unsigned short *)row)[i]));
    case HA_BF16: return __uint_as_float((uint32_t)((const unsigned short *)row)[i] << 16);
    default: return ((const float *)row)[i];
    }
}

static __device__ __forceinline__ void cu_store_f32(void *row, ha_dtype dt, int64_t i, float x)
{
    switch (dt) {
    case HA_F16: ((unsigned short *)row)[i] = __half_as_ushort(__float2half_rn(x)); break;
    case HA_BF16: ((unsigned short *)row)[i] = ha_f32_to_bf16(x); break;
    default: ((float *)row)[i] = x; break;
    }
}

/* ha_rows_offset (hashattn_plugin.h) is a host function; this is the same rule for device code. */
static __device__ __forceinline__ int64_t cu_rows_offset(const ha_rows &r, int64_t b, int64_t h, int64_t t)
{
    if (r.page_size == 0)
        return b * r.stride_seq + t * r.stride_token + h * r.stride_head;
    int64_t page = r.block_table[b * r.block_table_stride + t / r.page_size];
    return page * r.stride_seq + (t % r.page_size) * r.stride_token + h * r.stride_head;
}

static __device__ __forceinline__ const void *cu_row(const ha_rows &r, size_t elem, int64_t b, int64_t h, int64_t t)
{
    return (const char *)r.data + cu_rows_offset(r, b, h, t) * (int64_t)elem;
}

/** A length read from device memory, clamped to [0, max_len]. */
static __device__ __forceinline__ int64_t cu_clamp_len(int64_t n, int64_t max_len)
{
    return n < 0 ? 0 : n > max_len ? max_len : n;
}

/** Bits of word w that belong to a `bits`-bit code (padding bits never count). */
static __device__ __forceinline__ uint32_t cu_code_word_mask(int32_t w, int32_t bits)
{
    int64_t first_bit = (int64_t)w * 32;
    if (first_bit + 32 <= bits)
        return 0xffffffffu;
    if (first_bit >= bits)
        return 0u;
    return (1u << (bits - first_bit)) - 1u;
}

/**
 * Exclusive prefix sum of v over the block (blockDim.x a multiple of 32, at most 1024); *total gets
 * the block's sum. Every thread must call it. scratch: 33 elements of shared memory.
 */
template <typename T>
static __device__ __forceinline__ T cu_block_exclusive_scan(T v, T *total, T *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    T inclusive = v;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        T up = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d)
            inclusive += up;
    }
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 31)
        scratch[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        T w = lane < warps ? scratch[lane] : T(0), wi = w;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            T up = __shfl_up_sync(0xffffffffu, wi, d);
            if (lane >= d)
                wi += up;
        }
        if (lane < warps)
            scratch[lane] = wi - w; /* exclusive prefix of the warp totals */
        if (lane == warps - 1)
            scratch[32] = wi;
    }
    __syncthreads();
    T result = scratch[warp] + inclusive - v;
    *total = scratch[32];
    return result;
}

static __device__ __forceinline__ float cu_warp_sum(float x)
{
#pragma unroll
    for (int d = 16; d > 0; d >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, d);
    return x;
}

static __device__ __forceinline__ float cu_warp_max(float x)
{
#pragma unroll
    for (int d = 16; d > 0; d >>= 1)
        x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, d));
    return x;
}

/**
 * Loads `kernel` now (not lazily, e.g. inside a later graph capture) and lets it ask for all the
 * dynamic shared memory the device allows beside its static shared memory.
 */
template <typename Kernel>
static ha_status cu_prepare_kernel(Kernel kernel, const cu_ctx *ctx, const char *what)
{
    cudaFuncAttributes attr;
    cudaError_t err = cudaFuncGetAttributes(&attr, kernel);
    if (err == cudaSuccess)
        err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   (int)(ctx->smem_optin - attr.sharedSizeBytes));
    return cu_check(err, what);
}

/** Blocks for a grid-stride loop over `items` work items (≥ 1; the kernels loop past the grid). */
static inline unsigned cu_grid(int64_t items)
{
    const int64_t cap = 1 << 20;
    return (unsigned)(items < 1 ? 1 : items > cap ? cap : items);
}

#endif /* HA_CUDA_DEVICE_CUH */
