/*
 * runtime.c — opening and closing a runtime, backend memory.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static void runtime_destroy(ha_runtime *rt)
{
    size_t blocks = ha_ptr_set_count(&rt->blocks);
    if (blocks)
        ha_log(HA_LOG_WARN, "ha_runtime_close: %zu blocks of ha_mem_alloc memory were never freed", blocks);
    ha_ptr_set_destroy(&rt->blocks);
    ha_backend_close(&rt->backend);
    free(rt);
}

void ha_runtime_drop_user(ha_runtime *rt)
{
    if (ha_lifecycle_drop_user(&rt->users, &rt->released))
        runtime_destroy(rt);
}

ha_status ha_backend_alloc(const ha_backend *b, const char *fn, const char *what, size_t bytes, void **out)
{
    *out = NULL;
    if (ha_alloc_should_fail())
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: backend '%s' could not allocate %zu bytes for %s: out of memory", fn,
                       b->api->name, bytes, what);
    *out = b->api->mem_alloc(b->ctx, bytes);
    if (*out)
        return HA_OK;
    const char *why = b->api->last_error ? b->api->last_error(b->ctx) : NULL;
    return ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: backend '%s' could not allocate %zu bytes for %s: %s", fn, b->api->name,
                   bytes, what, why && *why ? why : "out of memory");
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
    ha_runtime *rt = ha_calloc(1, sizeof *rt);
    if (!rt)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory");
    ha_ptr_set_init(&rt->blocks);
    ha_status st = ha_backend_open(opt.backend, opt.device, &rt->backend);
    if (st != HA_OK) {
        ha_ptr_set_destroy(&rt->blocks);
        free(rt);
        return st;
    }
    void *handle = ha_handle_publish(HA_KIND_RUNTIME, rt, NULL, NULL);
    if (!handle) {
        runtime_destroy(rt);
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory (handle registry)");
    }
    *out = handle;
    return HA_OK;
}

HA_API void ha_runtime_close(ha_runtime *handle)
{
    ha_clear_error();
    ha_runtime *rt;
    if (!handle || ha_handle_take("ha_runtime_close", HA_KIND_RUNTIME, handle, (void **)&rt) != HA_OK)
        return;
    int live;
    if (ha_lifecycle_release(&rt->released, &rt->users, &live)) {
        runtime_destroy(rt);
        return;
    }
    ha_log(HA_LOG_WARN,
           "ha_runtime_close: %d weights/plan/cache objects are still alive; the backend stays loaded until they are destroyed",
           live);
}

/** The runtime behind a handle, or NULL (with ha_last_error set). */
static ha_runtime *runtime_of(const char *fn, const ha_runtime *handle)
{
    ha_runtime *rt;
    return ha_handle_lookup(fn, HA_KIND_RUNTIME, handle, (void **)&rt) == HA_OK ? rt : NULL;
}

HA_API const char *ha_runtime_backend_name(const ha_runtime *handle)
{
    ha_clear_error();
    ha_runtime *rt = runtime_of("ha_runtime_backend_name", handle);
    return rt ? rt->backend.api->name : "";
}

HA_API const char *ha_runtime_backend_description(const ha_runtime *handle)
{
    ha_clear_error();
    ha_runtime *rt = runtime_of("ha_runtime_backend_description", handle);
    if (!rt)
        return "";
    const char *d = rt->backend.api->describe ? rt->backend.api->describe(rt->backend.ctx) : NULL;
    return d ? d : rt->backend.api->name;
}

HA_API int ha_runtime_is_host_memory(const ha_runtime *handle)
{
    ha_clear_error();
    ha_runtime *rt = runtime_of("ha_runtime_is_host_memory", handle);
    return rt ? rt->backend.api->host_memory != 0 : 0;
}

HA_API ha_status ha_mem_alloc(ha_runtime *handle, size_t bytes, void **out)
{
    const char *fn = "ha_mem_alloc";
    ha_clear_error();
    if (out)
        *out = NULL; /* fully written on failure too */
    ha_runtime *rt;
    ha_status st = ha_handle_lookup(fn, HA_KIND_RUNTIME, handle, (void **)&rt);
    if (st != HA_OK)
        return st;
    if (!out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: out is NULL", fn);
    if (bytes == 0 || bytes > (size_t)INT64_MAX)
        return ha_fail(bytes ? HA_ERR_OVERFLOW : HA_ERR_INVALID_ARGUMENT, "%s: bytes = %zu", fn, bytes);
    st = ha_backend_alloc(&rt->backend, fn, "the caller", bytes, out);
    if (st == HA_OK && !ha_ptr_set_add(&rt->blocks, *out)) {
        rt->backend.api->mem_free(rt->backend.ctx, *out);
        *out = NULL;
        st = ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory (the set of allocated blocks)", fn);
    }
    return st;
}

HA_API void ha_mem_free(ha_runtime *handle, void *ptr)
{
    ha_clear_error();
    ha_runtime *rt = ptr ? runtime_of("ha_mem_free", handle) : NULL;
    if (!rt)
        return;
    /* only blocks this runtime handed out: a second free, or a pointer of another runtime or inside a
     * block, never reaches the backend's free */
    if (!ha_ptr_set_remove(&rt->blocks, ptr)) {
        ha_fail(HA_ERR_INVALID_ARGUMENT,
                "ha_mem_free: ptr = %p is not a block that ha_mem_alloc of this runtime returned (freed already, "
                "another runtime's, or inside a block)", ptr);
        return;
    }
    rt->backend.api->mem_free(rt->backend.ctx, ptr);
}

HA_API ha_status ha_mem_copy(ha_runtime *handle, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    const char *fn = "ha_mem_copy";
    ha_clear_error();
    ha_runtime *rt;
    ha_status st = ha_handle_lookup(fn, HA_KIND_RUNTIME, handle, (void **)&rt);
    if (st != HA_OK)
        return st;
    if (kind != HA_COPY_HOST_TO_BACKEND && kind != HA_COPY_BACKEND_TO_HOST && kind != HA_COPY_BACKEND_TO_BACKEND)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: unknown copy kind %d", fn, (int)kind);
    if (bytes == 0)
        return HA_OK;
    if (!dst || !src)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, dst ? "src" : "dst");
    if (bytes > (size_t)INT64_MAX)
        return ha_fail(HA_ERR_OVERFLOW, "%s: bytes = %zu", fn, bytes);
    st = rt->backend.api->mem_copy(rt->backend.ctx, dst, src, bytes, kind);
    return st == HA_OK ? HA_OK : ha_backend_fail(&rt->backend, st, fn);
}

HA_API ha_status ha_synchronize(ha_runtime *handle, void *stream)
{
    ha_clear_error();
    ha_runtime *rt;
    ha_status st = ha_handle_lookup("ha_synchronize", HA_KIND_RUNTIME, handle, (void **)&rt);
    if (st != HA_OK)
        return st;
    st = rt->backend.api->synchronize(rt->backend.ctx, stream);
    return st == HA_OK ? HA_OK : ha_backend_fail(&rt->backend, st, "ha_synchronize");
}
