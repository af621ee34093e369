/*
 * reference_plugin.c — the core's built-in "reference" backend: the ha_ref_* stages behind the
 * ordinary plugin table, in host memory. Always available, lowest probe score, so it only runs
 * when asked for by name or when no other plugin can.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference.h"
#include "host_alloc.h"

/* Thread-local: several threads may share one runtime (one context), and the core reads the
 * message right after the failing call, on the same thread. */
static _Thread_local char last_error_message[160];

static void set_error(void *ctx, const char *stage, ha_status status)
{
    (void)ctx;
    const char *why = status == HA_ERR_OUT_OF_MEMORY ? "could not allocate host scratch"
                      : status == HA_ERR_SHAPE       ? "inconsistent head counts or dimensions"
                                                     : "failed";
    snprintf(last_error_message, sizeof last_error_message, "reference %s: %s", stage, why);
}

static int reference_probe(void)
{
    return 1;
}

/* The reference keeps no state: every context is this one object. */
static char reference_context;

static ha_status reference_init(const ha_plugin_host *host, void **ctx)
{
    (void)host;
    *ctx = &reference_context;
    return HA_OK;
}

static void reference_shutdown(void *ctx)
{
    (void)ctx;
}

static const char *reference_describe(void *ctx)
{
    (void)ctx;
    return "portable scalar reference (double accumulation)";
}

static const char *reference_last_error(void *ctx)
{
    (void)ctx;
    return last_error_message;
}

/* 64-byte aligned; the size is rounded up to a multiple of 64 (aligned_alloc requires it), so a
 * request of 0 bytes returns a unique non-NULL block of 64 bytes. NULL only when out of memory. */
static void *reference_mem_alloc(void *ctx, size_t bytes)
{
    void *p = ha_aligned_alloc(64, bytes);
    if (!p)
        set_error(ctx, "mem_alloc", HA_ERR_OUT_OF_MEMORY);
    return p;
}

static void reference_mem_free(void *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
}

static ha_status reference_mem_copy(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    (void)ctx;
    (void)kind; /* host memory on both sides, whatever the direction */
    if (bytes > 0)
        memmove(dst, src, bytes);
    return HA_OK;
}

static ha_status reference_synchronize(void *ctx, void *stream)
{
    (void)ctx;
    (void)stream; /* every call completes before returning */
    return HA_OK;
}

/* The handle is a copy of the description; the weight arrays it points to belong to the core and
 * outlive the handle. */
static ha_status reference_mlp_upload(void *ctx, const ha_mlp_desc *desc, void **handle)
{
    ha_mlp_desc *copy = ha_malloc(sizeof *copy);
    if (!copy) {
        set_error(ctx, "mlp_upload", HA_ERR_OUT_OF_MEMORY);
        return HA_ERR_OUT_OF_MEMORY;
    }
    *copy = *desc;
    *handle = copy;
    return HA_OK;
}

static void reference_mlp_free(void *ctx, void *handle)
{
    (void)ctx;
    free(handle);
}

static ha_status reference_encode(void *ctx, void *plan, const ha_encode_args *args)
{
    (void)plan;
    ha_status status = ha_ref_encode(args);
    if (status != HA_OK)
        set_error(ctx, "encode", status);
    return status;
}

static ha_status reference_match(void *ctx, void *plan, const ha_match_args *args)
{
    (void)plan;
    ha_status status = ha_ref_match(args);
    if (status != HA_OK)
        set_error(ctx, "match", status);
    return status;
}

static ha_status reference_attend(void *ctx, void *plan, const ha_attend_args *args)
{
    (void)plan;
    ha_status status = ha_ref_attend(args);
    if (status != HA_OK)
        set_error(ctx, "attend", status);
    return status;
}

static const ha_plugin_api reference_api = {
    .abi_version = HA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(ha_plugin_api),
    .name = "reference",
    .probe = reference_probe,
    .init = reference_init,
    .shutdown = reference_shutdown,
    .describe = reference_describe,
    .last_error = reference_last_error,
    .host_memory = 1,
    .mem_alloc = reference_mem_alloc,
    .mem_free = reference_mem_free,
    .mem_copy = reference_mem_copy,
    .synchronize = reference_synchronize,
    .mlp_upload = reference_mlp_upload,
    .mlp_free = reference_mlp_free,
    .plan_create = NULL, /* plans carry no reference state */
    .plan_destroy = NULL,
    .encode = reference_encode,
    .match = reference_match,
    .attend = reference_attend,
    .decode = NULL, /* the core composes encode, encode, match, attend */
};

const ha_plugin_api *ha_reference_plugin_api(void)
{
    return &reference_api;
}
