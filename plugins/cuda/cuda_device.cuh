/*
 * cuda_device.cuh — helpers the kernels share: row addressing (ha_rows), length clamping, grid-stride
 * loops, a block-wide exclusive prefix sum, the "last block to arrive" pattern, and the launch of a
 * kernel with the sm_90 features (programmatic dependent launch, clusters).
 */
#ifndef HA_CUDA_DEVICE_CUH
#define HA_CUDA_DEVICE_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include <utility>

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

/** Inclusive prefix sum of v over the warp's lanes (every lane must call it). */
template <typename T>
static __device__ __forceinline__ T cu_warp_inclusive_scan(T v)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        const T up = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d)
            v += up;
    }
    return v;
}

/**
 * Exclusive prefix sum of v over the block (blockDim.x a multiple of 32, at most 1024); *total gets
 * the block's sum. Every thread must call it. scratch: 33 elements of shared memory.
 */
template <typename T>
static __device__ __forceinline__ T cu_block_exclusive_scan(T v, T *total, T *scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const T inclusive = cu_warp_inclusive_scan(v);
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
 * "The last block to arrive": every thread of a block calls it once the block's results are written;
 * it returns true, in every thread, in the block that is the `expected`-th to arrive at `counter`.
 * That block then sees every other block's writes (read them through L2: __ldcg), and its thread 0
 * has already put the counter back to 0 for the next launch (every arrival of this one is counted).
 */
static __device__ __forceinline__ bool cu_last_to_arrive(uint32_t *counter, uint32_t expected)
{
    __threadfence(); /* this thread's results before the block's arrival */
    __syncthreads();
    bool last = false;
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1u) == expected - 1u;
        if (last)
            *counter = 0;
    }
    last = __syncthreads_or(last);
    if (last)
        __threadfence(); /* the other blocks' results after their arrivals */
    return last;
}

/* ---- asynchronous copies into shared memory (cp.async, sm_80+) -------------------------------------- */

static __device__ __forceinline__ void copy16_async(void *dst, const void *src)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src) : "memory");
}

/** As copy16_async, but where !ok it reads nothing and writes 16 zero bytes (src must still be a valid address). */
static __device__ __forceinline__ void copy16_async_or_zero(void *dst, const void *src, bool ok)
{
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(ok ? 16 : 0) : "memory");
}

static __device__ __forceinline__ void copy_commit()
{
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

/* Waits until at most `pending` of this thread's commit groups are still in flight. */
static __device__ __forceinline__ void copy_wait(int pending)
{
    switch (pending) {
    case 0: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    case 1: asm volatile("cp.async.wait_group 1;\n" ::: "memory"); break;
    case 2: asm volatile("cp.async.wait_group 2;\n" ::: "memory"); break;
    default: asm volatile("cp.async.wait_group 3;\n" ::: "memory"); break;
    }
}

/* ---- programmatic dependent launch (sm_90; no-ops before) --------------------------------------------
 * cu_launch lets a kernel start while the stream's previous kernel drains, so every kernel it
 * launches calls cu_wait_prior_grids before it reads what an earlier kernel wrote or writes what one
 * reads (what it does before touches only constant data: weights, its own shared memory). */

/** Waits until the grids this one depends on have completed and their writes are visible. */
static __device__ __forceinline__ void cu_wait_prior_grids()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/** Lets the stream's next kernel be scheduled now (it waits in cu_wait_prior_grids for this one). */
static __device__ __forceinline__ void cu_let_next_grid_start()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/**
 * Launches kernel<<<grid, block, smem, stream>>>(args...), with programmatic dependent launch where
 * ctx->sm90, and as clusters of `cluster` consecutive blocks when cluster > 1 (sm_90 only). Captured
 * into CUDA graphs like a plain launch.
 */
template <typename... Params, typename... Args>
static ha_status cu_launch(const cu_ctx *ctx, void (*kernel)(Params...), unsigned grid, unsigned block, size_t smem,
                           cudaStream_t stream, unsigned cluster, const char *what, Args &&...args)
{
    cudaLaunchAttribute attr[2];
    unsigned n = 0;
    if (ctx->sm90) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n].val.programmaticStreamSerializationAllowed = 1;
        n++;
    }
    if (cluster > 1) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n].val.clusterDim.z = 1;
        n++;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(block);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = n;
    cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
    if (err != cudaSuccess)
        cudaGetLastError(); /* not sticky: clear it */
    return cu_check(err, what);
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
