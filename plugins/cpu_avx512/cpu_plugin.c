/*
 * cpu_plugin.c — the cpu_avx512 plugin's function table: CPU probe and code-path choice, host
 * memory, and dispatch of the stages to the drivers with the kernels chosen at init.
 */
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu_internal.h"

/* ---- kernel tables ----------------------------------------------------------------------------- */

const cpu_kernels cpu_kernels_portable = {
    .load_row = cpu_load_row_portable,
    .mlp_layer = cpu_mlp_layer_portable,
    .match_scores = cpu_match_scores_portable,
    .match_histogram = cpu_match_histogram_portable,
    .match_tie_start = cpu_match_tie_start_portable,
    .match_candidates = cpu_match_candidates_portable,
    .match_filter = cpu_match_filter_portable,
    .match_compact = cpu_match_compact_portable,
    .attend_tile = cpu_attend_tile_portable,
};

#if HA_CPU_HAVE_AVX512
const cpu_kernels cpu_kernels_avx512 = {
    .load_row = cpu_load_row_avx512,
    .mlp_layer = cpu_mlp_layer_avx512,
    .match_scores = cpu_match_scores_avx512,
    .match_histogram = cpu_match_histogram_avx512,
    .match_tie_start = cpu_match_tie_start_avx512,
    .match_candidates = cpu_match_candidates_avx512,
    .match_filter = cpu_match_filter_avx512,
    .match_compact = cpu_match_compact_avx512,
    .attend_tile = cpu_attend_tile_avx512,
};
#endif

/* Everything the AVX-512 translation units are compiled for (-mavx512f/bw/vl/vpopcntdq -mfma -mf16c
 * -mpopcnt). __builtin_cpu_supports also checks that the OS saves the zmm state. */
static int cpu_has_avx512(void)
{
#if HA_CPU_HAVE_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("popcnt");
#else
    return 0;
#endif
}

static int portable_forced(void)
{
    const char *v = getenv("HASHATTN_CPU_PORTABLE");
    return v && v[0] && strcmp(v, "0") != 0;
}

/* ---- errors -------------------------------------------------------------------------------------- */

/* Thread-local: the core reads it right after the failing call, on the same thread. */
static _Thread_local char last_error_message[256];

ha_status cpu_fail(ha_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error_message, sizeof last_error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *cpu_last_error(void)
{
    return last_error_message;
}

/* ---- lifecycle ------------------------------------------------------------------------------------ */

static int cpu_probe(void)
{
    return cpu_has_avx512() ? 50 : 20;
}

/* ---- host memory of the plugin's own (the core's allocator when it offers one) ------------------ */

static void *posix_aligned_alloc(size_t alignment, size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, alignment, bytes ? bytes : alignment) == 0 ? p : NULL;
}

void *cpu_alloc(const cpu_ctx *ctx, size_t bytes)
{
    return ctx->host_alloc(64, bytes);
}

void *cpu_alloc_zeroed(const cpu_ctx *ctx, size_t bytes)
{
    void *p = cpu_alloc(ctx, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

void cpu_free(const cpu_ctx *ctx, void *ptr)
{
    ctx->host_free(ptr);
}

static ha_status cpu_init(const ha_plugin_host *host, void **out)
{
    cpu_ctx services = {.host_alloc = posix_aligned_alloc, .host_free = free};
    if (host && host->struct_size >= offsetof(ha_plugin_host, host_free) + sizeof host->host_free &&
        host->host_alloc && host->host_free) {
        services.host_alloc = host->host_alloc;
        services.host_free = host->host_free;
    }
    cpu_ctx *ctx = cpu_alloc_zeroed(&services, sizeof *ctx);
    if (!ctx)
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 init: out of memory");
    ctx->host_alloc = services.host_alloc;
    ctx->host_free = services.host_free;
    if (host && host->struct_size >= offsetof(ha_plugin_host, log) + sizeof host->log)
        ctx->log = host->log;
    ctx->threads = omp_get_max_threads();
    ctx->use_avx512 = cpu_has_avx512() && !portable_forced();
#if HA_CPU_HAVE_AVX512
    ctx->k = ctx->use_avx512 ? &cpu_kernels_avx512 : &cpu_kernels_portable;
#else
    ctx->k = &cpu_kernels_portable;
#endif
    snprintf(ctx->description, sizeof ctx->description, "%s, %d OpenMP thread%s",
             ctx->use_avx512 ? "AVX-512 VPOPCNTDQ" : "portable C", ctx->threads, ctx->threads == 1 ? "" : "s");
    if (ctx->log)
        ctx->log(HA_LOG_INFO, ctx->description);
    *out = ctx;
    return HA_OK;
}

static void cpu_shutdown(void *ctx)
{
    cpu_free(ctx, ctx);
}

static const char *cpu_describe(void *ctx)
{
    return ctx ? ((cpu_ctx *)ctx)->description : "cpu_avx512 (not initialized)";
}

static const char *cpu_last_error_entry(void *ctx)
{
    (void)ctx;
    return cpu_last_error();
}

/* ---- host memory ------------------------------------------------------------------------------- */

/* 64-byte aligned; the size is rounded up to a multiple of 64, so 0 bytes gives a unique block. */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)

static void *cpu_mem_alloc(void *ctx, size_t bytes)
{
    if (bytes > SIZE_MAX - HUGE_PAGE_BYTES) {
        cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 mem_alloc: %zu bytes is too large", bytes);
        return NULL;
    }
    size_t rounded = bytes == 0 ? 64 : (bytes + 63) & ~(size_t)63;
    /* Large buffers (K/V, key codes) on transparent huge pages: sparse attention reads rows scattered
     * over the whole cache, and with 4 KiB pages nearly every row would also miss the TLB. */
    size_t align = rounded >= HUGE_PAGE_BYTES ? HUGE_PAGE_BYTES : 64;
    if (align == HUGE_PAGE_BYTES)
        rounded = (rounded + HUGE_PAGE_BYTES - 1) & ~(size_t)(HUGE_PAGE_BYTES - 1);
    void *p = ((const cpu_ctx *)ctx)->host_alloc(align, rounded);
    if (!p) {
        cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 mem_alloc: cannot allocate %zu bytes", bytes);
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    if (align == HUGE_PAGE_BYTES)
        (void)madvise(p, rounded, MADV_HUGEPAGE); /* a hint: without THP the buffer works as it is */
#endif
    return p;
}

static void cpu_mem_free(void *ctx, void *ptr)
{
    cpu_free(ctx, ptr);
}

static ha_status cpu_mem_copy(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    (void)ctx;
    (void)kind; /* host memory on both sides */
    if (bytes > 0)
        memmove(dst, src, bytes);
    return HA_OK;
}

static ha_status cpu_synchronize(void *ctx, void *stream)
{
    (void)ctx;
    (void)stream; /* every call has finished when it returns */
    return HA_OK;
}

/* ---- weights and plans ------------------------------------------------------------------------- */

static ha_status cpu_mlp_upload_entry(void *ctx, const ha_mlp_desc *desc, void **handle)
{
    cpu_mlp *mlp = NULL;
    ha_status st = cpu_mlp_upload(ctx, desc, &mlp);
    *handle = mlp;
    return st;
}

static void cpu_mlp_free_entry(void *ctx, void *handle)
{
    cpu_mlp_free(ctx, handle);
}

static ha_status cpu_plan_create_entry(void *ctx, const ha_plan_desc *desc, void **plan)
{
    cpu_plan *p = NULL;
    ha_status st = cpu_plan_create(ctx, desc, &p);
    *plan = p;
    return st;
}

static void cpu_plan_destroy_entry(void *ctx, void *plan)
{
    cpu_plan_destroy(ctx, plan);
}

/* ---- stages ------------------------------------------------------------------------------------ */

static ha_status need_plan(const void *plan, const char *stage)
{
    return plan ? HA_OK : cpu_fail(HA_ERR_STATE, "cpu_avx512 %s: called without the plan from plan_create", stage);
}

static ha_status cpu_encode_entry(void *ctx, void *plan, const ha_encode_args *args)
{
    ha_status st = need_plan(plan, "encode");
    return st != HA_OK ? st : cpu_encode(ctx, plan, args);
}

static ha_status cpu_match_entry(void *ctx, void *plan, const ha_match_args *args)
{
    ha_status st = need_plan(plan, "match");
    return st != HA_OK ? st : cpu_match(ctx, plan, args);
}

static ha_status cpu_attend_entry(void *ctx, void *plan, const ha_attend_args *args)
{
    ha_status st = need_plan(plan, "attend");
    return st != HA_OK ? st : cpu_attend(ctx, plan, args);
}

/* The stages in turn, each on the plan's scratch: nothing is allocated per step. */
static ha_status cpu_decode_entry(void *ctx, void *plan, const ha_decode_args *args)
{
    ha_status st = need_plan(plan, "decode");
    if (st == HA_OK && args->key_encode.count > 0)
        st = cpu_encode(ctx, plan, &args->key_encode);
    if (st == HA_OK)
        st = cpu_encode(ctx, plan, &args->query_encode);
    if (st == HA_OK)
        st = cpu_match(ctx, plan, &args->match);
    if (st == HA_OK)
        st = cpu_attend(ctx, plan, &args->attend);
    return st;
}

static const ha_plugin_api cpu_api = {
    .abi_version = HA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(ha_plugin_api),
    .name = "cpu_avx512",
    .probe = cpu_probe,
    .init = cpu_init,
    .shutdown = cpu_shutdown,
    .describe = cpu_describe,
    .last_error = cpu_last_error_entry,
    .host_memory = 1,
    .mem_alloc = cpu_mem_alloc,
    .mem_free = cpu_mem_free,
    .mem_copy = cpu_mem_copy,
    .synchronize = cpu_synchronize,
    .mlp_upload = cpu_mlp_upload_entry,
    .mlp_free = cpu_mlp_free_entry,
    .plan_create = cpu_plan_create_entry,
    .plan_destroy = cpu_plan_destroy_entry,
    .encode = cpu_encode_entry,
    .match = cpu_match_entry,
    .attend = cpu_attend_entry,
    .decode = cpu_decode_entry,
};

__attribute__((visibility("default"))) const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version)
{
    return core_abi_version == HA_PLUGIN_ABI_VERSION ? &cpu_api : NULL;
}
