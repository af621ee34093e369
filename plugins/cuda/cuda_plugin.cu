/*
 * cuda_plugin.cu — the cuda plugin's function table: probe, device choice, device memory, and the
 * dispatch of the stages to their launchers. The CUDA runtime is linked statically, so the plugin
 * loads on machines without a GPU driver; probe() then reports 0.
 *
 * Every entry that touches the device makes the plan's device current for the call and restores the
 * caller's current device afterwards.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* Compute capabilities the fat binary runs on: sm_89 and sm_90 code, compute_90 PTX for newer. */
#define CU_MIN_MAJOR 8
#define CU_MIN_MINOR 9

/* ---- errors ------------------------------------------------------------------------------------ */

/* Thread-local: the core reads it right after the failing call, on the same thread. */
static thread_local char last_error_message[320];

ha_status cu_fail(ha_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error_message, sizeof last_error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *cu_last_error(void)
{
    return last_error_message;
}

ha_status cu_check(cudaError_t err, const char *what)
{
    if (err == cudaSuccess)
        return HA_OK;
    ha_status st = err == cudaErrorMemoryAllocation ? HA_ERR_OUT_OF_MEMORY : HA_ERR_BACKEND;
    return cu_fail(st, "%s: %s: %s", what, cudaGetErrorName(err), cudaGetErrorString(err));
}

/* ---- device scope --------------------------------------------------------------------------------- */

/** Makes `device` current for the lifetime of the object and restores the caller's device after. */
class cu_device_scope {
  public:
    explicit cu_device_scope(int device) : previous_(-1)
    {
        int current = -1;
        err_ = cudaGetDevice(&current);
        if (err_ == cudaSuccess && current != device) {
            err_ = cudaSetDevice(device);
            if (err_ == cudaSuccess)
                previous_ = current;
        }
    }
    ~cu_device_scope()
    {
        if (previous_ >= 0)
            cudaSetDevice(previous_);
    }
    ha_status status(const char *what) const { return cu_check(err_, what); }

  private:
    cu_device_scope(const cu_device_scope &);
    cu_device_scope &operator=(const cu_device_scope &);
    int previous_;
    cudaError_t err_;
};

/* ---- lifecycle ------------------------------------------------------------------------------------ */

static int supported_capability(int major, int minor)
{
    return major > CU_MIN_MAJOR || (major == CU_MIN_MAJOR && minor >= CU_MIN_MINOR);
}

/* 0 without a driver, without a device, or when no device runs this binary's code. Never crashes. */
static int cu_probe(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        cudaGetLastError(); /* clear the runtime's record of the failure */
        return 0;
    }
    for (int d = 0; d < n; d++) {
        int major = 0, minor = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d) == cudaSuccess &&
            cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d) == cudaSuccess &&
            supported_capability(major, minor))
            return 100;
    }
    return 0;
}

static ha_status init_device(cu_ctx *ctx)
{
    int n = 0;
    ha_status st = cu_check(cudaGetDeviceCount(&n), "cuda init: cudaGetDeviceCount");
    if (st != HA_OK)
        return st;
    if (ctx->device < 0 || ctx->device >= n)
        return cu_fail(HA_ERR_INVALID_ARGUMENT, "cuda init: device %d requested but %d CUDA device%s found",
                       ctx->device, n, n == 1 ? " is" : "s are");
    cudaDeviceProp prop;
    st = cu_check(cudaGetDeviceProperties(&prop, ctx->device), "cuda init: cudaGetDeviceProperties");
    if (st != HA_OK)
        return st;
    if (!supported_capability(prop.major, prop.minor))
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda init: device %d (%s) has compute capability %d.%d; this build needs "
                       "%d.%d or newer", ctx->device, prop.name, prop.major, prop.minor, CU_MIN_MAJOR, CU_MIN_MINOR);
    ctx->sm_count = prop.multiProcessorCount;
    ctx->smem_optin = prop.sharedMemPerBlockOptin;
    const char *portable = getenv("HASHATTN_CUDA_PORTABLE");
    ctx->sm90 = prop.major >= 9 && !(portable && portable[0] == '1');
    const char *lanes = getenv("HASHATTN_CUDA_MATCH_LANES");
    ctx->match_lanes = lanes && (lanes[0] == '0' || lanes[0] == '1') ? lanes[0] - '0' : -1;
    const char *rows = getenv("HASHATTN_CUDA_ENCODE_ROWS");
    ctx->encode_rows = -1;
    if (rows && (!strcmp(rows, "0") || !strcmp(rows, "1") || !strcmp(rows, "2") || !strcmp(rows, "4") ||
                 !strcmp(rows, "8") || !strcmp(rows, "16")))
        ctx->encode_rows = atoi(rows);
    const char *fused = getenv("HASHATTN_CUDA_FUSED");
    ctx->fused = fused && (fused[0] == '0' || fused[0] == '1') ? fused[0] - '0' : -1;
    snprintf(ctx->description, sizeof ctx->description, "%.100s (device %d, sm_%d%d, %d SMs, %.0f GiB), CUDA runtime %d.%d%s",
             prop.name, ctx->device, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), CUDART_VERSION / 1000,
             CUDART_VERSION % 1000 / 10, ctx->sm90 ? "" : ", portable kernels");
    cu_device_scope scope(ctx->device);
    st = scope.status("cuda init: cudaSetDevice");
    /* Loads every kernel now (not lazily inside a later graph capture) and raises their limits. */
    if (st == HA_OK)
        st = cu_encode_prepare(ctx);
    if (st == HA_OK)
        st = cu_match_prepare(ctx);
    if (st == HA_OK)
        st = cu_attend_prepare(ctx);
    if (st == HA_OK)
        st = cu_decode_fused_prepare(ctx);
    return st;
}

static ha_status cu_init(const ha_plugin_host *host, void **out)
{
    *out = NULL;
    cu_ctx *ctx = (cu_ctx *)calloc(1, sizeof *ctx);
    if (!ctx)
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda init: out of memory");
    if (host && host->struct_size >= offsetof(ha_plugin_host, log) + sizeof host->log)
        ctx->log = host->log;
    if (host && host->struct_size >= offsetof(ha_plugin_host, device) + sizeof host->device)
        ctx->device = host->device;
    ha_status st = init_device(ctx);
    if (st != HA_OK) {
        free(ctx);
        return st;
    }
    if (ctx->log)
        ctx->log(HA_LOG_INFO, ctx->description);
    *out = ctx;
    return HA_OK;
}

static void cu_shutdown(void *ctx)
{
    free(ctx);
}

static const char *cu_describe(void *ctx)
{
    return ctx ? ((cu_ctx *)ctx)->description : "cuda (not initialized)";
}

static const char *cu_last_error_entry(void *ctx)
{
    (void)ctx;
    return cu_last_error();
}

/* ---- device memory --------------------------------------------------------------------------------- */

/* cudaMalloc aligns to at least 256 bytes; 0 bytes gives a unique 1-byte block (NULL means failure). */
static void *cu_mem_alloc(void *vctx, size_t bytes)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    if (scope.status("cuda mem_alloc: cudaSetDevice") != HA_OK)
        return NULL;
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes ? bytes : 1);
    if (err != cudaSuccess) {
        cudaGetLastError();
        cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda mem_alloc: cannot allocate %zu bytes: %s", bytes, cudaGetErrorString(err));
        return NULL;
    }
    return p;
}

static void cu_mem_free(void *vctx, void *ptr)
{
    if (!ptr)
        return;
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    cudaFree(ptr);
}

/* Synchronous with respect to the host: cudaMemcpy alone returns early for some directions. */
static ha_status cu_mem_copy(void *vctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    (void)kind; /* unified addressing: the runtime knows where each pointer lives */
    if (bytes == 0)
        return HA_OK;
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    ha_status st = scope.status("cuda mem_copy: cudaSetDevice");
    if (st == HA_OK)
        st = cu_check(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault), "cuda mem_copy: cudaMemcpy");
    if (st == HA_OK)
        st = cu_check(cudaStreamSynchronize(0), "cuda mem_copy: cudaStreamSynchronize");
    return st;
}

static ha_status cu_synchronize(void *vctx, void *stream)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    ha_status st = scope.status("cuda synchronize: cudaSetDevice");
    return st != HA_OK ? st : cu_check(cudaStreamSynchronize((cudaStream_t)stream), "cuda synchronize");
}

/* ---- weights and plans ------------------------------------------------------------------------------ */

static ha_status cu_mlp_upload_entry(void *vctx, const ha_mlp_desc *desc, void **handle)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    *handle = NULL;
    cu_device_scope scope(ctx->device);
    ha_status st = scope.status("cuda mlp_upload: cudaSetDevice");
    cu_mlp *mlp = NULL;
    if (st == HA_OK)
        st = cu_mlp_upload(ctx, desc, &mlp);
    *handle = mlp;
    return st;
}

static void cu_mlp_free_entry(void *vctx, void *handle)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    cu_mlp_free((cu_mlp *)handle);
}

static ha_status cu_plan_create_entry(void *vctx, const ha_plan_desc *desc, void **plan)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    *plan = NULL;
    cu_device_scope scope(ctx->device);
    ha_status st = scope.status("cuda plan_create: cudaSetDevice");
    cu_plan *p = NULL;
    if (st == HA_OK)
        st = cu_plan_create(ctx, desc, &p);
    *plan = p;
    return st;
}

static void cu_plan_destroy_entry(void *vctx, void *plan)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    cu_plan_destroy((cu_plan *)plan);
}

/* ---- stages ------------------------------------------------------------------------------------ */

static ha_status stage_start(const void *plan, const char *stage, const cu_device_scope &scope)
{
    if (!plan)
        return cu_fail(HA_ERR_STATE, "cuda %s: called without the plan from plan_create", stage);
    char what[64];
    snprintf(what, sizeof what, "cuda %s: cudaSetDevice", stage);
    return scope.status(what);
}

static ha_status cu_encode_entry(void *vctx, void *plan, const ha_encode_args *args)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    ha_status st = stage_start(plan, "encode", scope);
    return st != HA_OK ? st : cu_encode(ctx, (const cu_plan *)plan, args);
}

static ha_status cu_match_entry(void *vctx, void *plan, const ha_match_args *args)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    ha_status st = stage_start(plan, "match", scope);
    return st != HA_OK ? st : cu_match(ctx, (const cu_plan *)plan, args);
}

static ha_status cu_attend_entry(void *vctx, void *plan, const ha_attend_args *args)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    cu_device_scope scope(ctx->device);
    ha_status st = stage_start(plan, "attend", scope);
    return st != HA_OK ? st : cu_attend(ctx, (const cu_plan *)plan, args);
}

/* One fused launch where it applies (cuda_decode_fused.cu), else the stages back to back on the step's
 * stream, on the plan's scratch: no allocation, no sync; both encodes in one launch. */
static ha_status cu_decode_entry(void *vctx, void *vplan, const ha_decode_args *args)
{
    const cu_ctx *ctx = (const cu_ctx *)vctx;
    const cu_plan *plan = (const cu_plan *)vplan;
    cu_device_scope scope(ctx->device);
    ha_status st = stage_start(plan, "decode", scope);
    bool fused = false;
    if (st == HA_OK)
        st = cu_decode_fused(ctx, plan, args, &fused);
    if (st != HA_OK || fused)
        return st;
    if (st == HA_OK)
        st = cu_encode_pair(ctx, plan, args->key_encode.count > 0 ? &args->key_encode : NULL, &args->query_encode);
    if (st == HA_OK)
        st = cu_match(ctx, plan, &args->match);
    if (st == HA_OK)
        st = cu_attend(ctx, plan, &args->attend);
    return st;
}

/* Filled member by member: C++ (nvcc) has no designated initializers before C++20. */
static ha_plugin_api make_api(void)
{
    ha_plugin_api api;
    memset(&api, 0, sizeof api);
    api.abi_version = HA_PLUGIN_ABI_VERSION;
    api.struct_size = sizeof(ha_plugin_api);
    api.name = "cuda";
    api.probe = cu_probe;
    api.init = cu_init;
    api.shutdown = cu_shutdown;
    api.describe = cu_describe;
    api.last_error = cu_last_error_entry;
    api.host_memory = 0;
    api.mem_alloc = cu_mem_alloc;
    api.mem_free = cu_mem_free;
    api.mem_copy = cu_mem_copy;
    api.synchronize = cu_synchronize;
    api.mlp_upload = cu_mlp_upload_entry;
    api.mlp_free = cu_mlp_free_entry;
    api.plan_create = cu_plan_create_entry;
    api.plan_destroy = cu_plan_destroy_entry;
    api.encode = cu_encode_entry;
    api.match = cu_match_entry;
    api.attend = cu_attend_entry;
    api.decode = cu_decode_entry;
    return api;
}

extern "C" __attribute__((visibility("default"))) const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version)
{
    static const ha_plugin_api api = make_api(); /* initialized once, thread-safely */
    return core_abi_version == HA_PLUGIN_ABI_VERSION ? &api : NULL;
}
