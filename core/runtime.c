/*
 * runtime.c — opening and closing a runtime, backend memory.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

void ha_object_created(ha_runtime *rt)
{
    __atomic_add_fetch(&rt->live_objects, 1, __ATOMIC_RELAXED);
}

void ha_object_destroyed(ha_runtime *rt)
{
    __atomic_sub_fetch(&rt->live_objects, 1, __ATOMIC_RELAXED);
}

HA_API ha_status ha_runtime_open(const ha_runtime_options *options, ha_runtime **out)
{
    ha_clear_error();
    if (!out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_runtime_open: out is NULL");
    *out = NULL;
    ha_runtime_options opt = {sizeof opt, NULL, 0};
    if (options) {
        if (options->struct_size < offsetof(ha_runtime_options, device) + sizeof(int32_t) ||
            options->struct_size > 4096)
            return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_runtime_open: options->struct_size = %u (expected %zu)",
                           options->struct_size, sizeof opt);
        opt = *options;
        if (opt.device < 0)
            return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_runtime_open: options->device = %d is negative", opt.device);
    }
    ha_runtime *rt = calloc(1, sizeof *rt);
    if (!rt)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory");
    ha_status st = ha_backend_open(opt.backend, opt.device, &rt->backend);
    if (st != HA_OK) {
        free(rt);
        return st;
    }
    *out = rt;
    return HA_OK;
}

HA_API void ha_runtime_close(ha_runtime *rt)
{
    if (!rt)
        return;
    int live = __atomic_load_n(&rt->live_objects, __ATOMIC_RELAXED);
    if (live != 0)
        ha_log(HA_LOG_ERROR, "ha_runtime_close: %d weights/plan/cache objects are still alive; they must be destroyed first",
               live);
    ha_backend_close(&rt->backend);
    free(rt);
}

HA_API const char *ha_runtime_backend_name(const ha_runtime *rt)
{
    return rt ? rt->backend.api->name : "";
}

HA_API const char *ha_runtime_backend_description(const ha_runtime *rt)
{
    if (!rt)
        return "";
    const char *d = rt->backend.api->describe ? rt->backend.api->describe(rt->backend.ctx) : NULL;
    return d ? d : rt->backend.api->name;
}

HA_API int ha_runtime_is_host_memory(const ha_runtime *rt)
{
    return rt ? rt->backend.api->host_memory != 0 : 0;
}

HA_API ha_status ha_mem_alloc(ha_runtime *rt, size_t bytes, void **out)
{
    ha_clear_error();
    if (!rt || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_mem_alloc: %s is NULL", rt ? "out" : "rt");
    *out = NULL;
    if (bytes == 0 || bytes > (size_t)INT64_MAX)
        return ha_fail(bytes ? HA_ERR_OVERFLOW : HA_ERR_INVALID_ARGUMENT, "ha_mem_alloc: bytes = %zu", bytes);
    void *p = rt->backend.api->mem_alloc(rt->backend.ctx, bytes);
    if (!p)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_mem_alloc: backend '%s' could not allocate %zu bytes",
                       rt->backend.api->name, bytes);
    *out = p;
    return HA_OK;
}

HA_API void ha_mem_free(ha_runtime *rt, void *ptr)
{
    if (rt && ptr)
        rt->backend.api->mem_free(rt->backend.ctx, ptr);
}

HA_API ha_status ha_mem_copy(ha_runtime *rt, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    ha_clear_error();
    if (!rt)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_mem_copy: rt is NULL");
    if (bytes == 0)
        return HA_OK;
    if (!dst || !src)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_mem_copy: %s is NULL", dst ? "src" : "dst");
    if (kind != HA_COPY_HOST_TO_BACKEND && kind != HA_COPY_BACKEND_TO_HOST && kind != HA_COPY_BACKEND_TO_BACKEND)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_mem_copy: unknown copy kind %d", (int)kind);
    ha_status st = rt->backend.api->mem_copy(rt->backend.ctx, dst, src, bytes, kind);
    return st == HA_OK ? HA_OK : ha_backend_fail(&rt->backend, st, "ha_mem_copy");
}

HA_API ha_status ha_synchronize(ha_runtime *rt, void *stream)
{
    ha_clear_error();
    if (!rt)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_synchronize: rt is NULL");
    ha_status st = rt->backend.api->synchronize(rt->backend.ctx, stream);
    return st == HA_OK ? HA_OK : ha_backend_fail(&rt->backend, st, "ha_synchronize");
}
