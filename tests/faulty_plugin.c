/*
 * faulty_plugin.c — a working backend (the core's scalar reference behind its own table, plus a
 * fused decode) whose calls can be made to fail, for test_faults: HASHATTN_FAULTY_FAIL=entry:n makes
 * the n-th call of that entry point since init fail (n = 1 if omitted) with HA_ERR_BACKEND and the
 * message "faulty: injected failure in <entry> (call n)" (mem_alloc returns NULL). The test reads
 * faulty_plugin_fired() to know whether the failure happened.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashattn_plugin.h"
#include "reference.h"

enum { E_INIT, E_MEM_ALLOC, E_MEM_COPY, E_SYNCHRONIZE, E_MLP_UPLOAD, E_PLAN_CREATE, E_ENCODE, E_MATCH, E_ATTEND,
       E_DECODE, E_COUNT };
static const char *const entry_names[E_COUNT] = {"init",        "mem_alloc", "mem_copy", "synchronize",
                                                 "mlp_upload",  "plan_create", "encode", "match",
                                                 "attend",      "decode"};

typedef struct faulty_ctx {
    void *ref;               /* the reference backend's context */
    long calls[E_COUNT];
    char last_error[160];
} faulty_ctx;

static int fired;
static char init_error[160];
static char plan_token; /* plans carry no state; a non-NULL address stands for one */

__attribute__((visibility("default"))) int faulty_plugin_fired(void)
{
    return fired;
}

static const ha_plugin_api *ref(void)
{
    return ha_reference_plugin_api();
}

/** 1 when this call (the calls[e]-th of entry e) is the one HASHATTN_FAULTY_FAIL names. */
static int should_fail(long *calls, int e, char *msg, size_t msg_size)
{
    long n = ++calls[e];
    const char *spec = getenv("HASHATTN_FAULTY_FAIL");
    size_t len = strlen(entry_names[e]);
    if (!spec || strncmp(spec, entry_names[e], len) != 0 || (spec[len] != '\0' && spec[len] != ':'))
        return 0;
    long target = spec[len] == ':' ? strtol(spec + len + 1, NULL, 10) : 1;
    if (n != target)
        return 0;
    fired = 1;
    snprintf(msg, msg_size, "faulty: injected failure in %s (call %ld)", entry_names[e], n);
    return 1;
}

#define FAIL_IF_INJECTED(c, e)                                                                                \
    do {                                                                                                      \
        if (should_fail((c)->calls, (e), (c)->last_error, sizeof (c)->last_error))                          \
            return HA_ERR_BACKEND;                                                                            \
    } while (0)

static int faulty_probe(void)
{
    return 1;
}

static ha_status faulty_init(const ha_plugin_host *host, void **out)
{
    long init_calls[E_COUNT] = {0};
    fired = 0;
    if (should_fail(init_calls, E_INIT, init_error, sizeof init_error))
        return HA_ERR_BACKEND;
    faulty_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return HA_ERR_OUT_OF_MEMORY;
    ha_status st = ref()->init(host, &c->ref);
    if (st != HA_OK) {
        free(c);
        return st;
    }
    *out = c;
    return HA_OK;
}

static void faulty_shutdown(void *ctx)
{
    faulty_ctx *c = ctx;
    ref()->shutdown(c->ref);
    free(c);
}

static const char *faulty_last_error(void *ctx)
{
    return ctx ? ((faulty_ctx *)ctx)->last_error : init_error;
}

static void *faulty_mem_alloc(void *ctx, size_t bytes)
{
    faulty_ctx *c = ctx;
    if (should_fail(c->calls, E_MEM_ALLOC, c->last_error, sizeof c->last_error))
        return NULL;
    return ref()->mem_alloc(c->ref, bytes);
}

static void faulty_mem_free(void *ctx, void *ptr)
{
    ref()->mem_free(((faulty_ctx *)ctx)->ref, ptr);
}

static ha_status faulty_mem_copy(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    faulty_ctx *c = ctx;
    FAIL_IF_INJECTED(c, E_MEM_COPY);
    return ref()->mem_copy(c->ref, dst, src, bytes, kind);
}

static ha_status faulty_synchronize(void *ctx, void *stream)
{
    faulty_ctx *c = ctx;
    FAIL_IF_INJECTED(c, E_SYNCHRONIZE);
    return ref()->synchronize(c->ref, stream);
}

static ha_status faulty_mlp_upload(void *ctx, const ha_mlp_desc *desc, void **handle)
{
    faulty_ctx *c = ctx;
    FAIL_IF_INJECTED(c, E_MLP_UPLOAD);
    return ref()->mlp_upload(c->ref, desc, handle);
}

static void faulty_mlp_free(void *ctx, void *handle)
{
    ref()->mlp_free(((faulty_ctx *)ctx)->ref, handle);
}

static ha_status faulty_plan_create(void *ctx, const ha_plan_desc *desc, void **plan)
{
    (void)desc;
    faulty_ctx *c = ctx;
    FAIL_IF_INJECTED(c, E_PLAN_CREATE);
    *plan = &plan_token;
    return HA_OK;
}

static void faulty_plan_destroy(void *ctx, void *plan)
{
    (void)ctx;
    (void)plan;
}

static ha_status faulty_encode(void *ctx, void *plan, const ha_encode_args *args)
{
    (void)plan;
    FAIL_IF_INJECTED((faulty_ctx *)ctx, E_ENCODE);
    return ha_ref_encode(args);
}

static ha_status faulty_match(void *ctx, void *plan, const ha_match_args *args)
{
    (void)plan;
    FAIL_IF_INJECTED((faulty_ctx *)ctx, E_MATCH);
    return ha_ref_match(args);
}

static ha_status faulty_attend(void *ctx, void *plan, const ha_attend_args *args)
{
    (void)plan;
    FAIL_IF_INJECTED((faulty_ctx *)ctx, E_ATTEND);
    return ha_ref_attend(args);
}

static ha_status faulty_decode(void *ctx, void *plan, const ha_decode_args *args)
{
    (void)plan;
    FAIL_IF_INJECTED((faulty_ctx *)ctx, E_DECODE);
    ha_status st = args->key_encode.count > 0 ? ha_ref_encode(&args->key_encode) : HA_OK;
    if (st == HA_OK)
        st = ha_ref_encode(&args->query_encode);
    if (st == HA_OK)
        st = ha_ref_match(&args->match);
    if (st == HA_OK)
        st = ha_ref_attend(&args->attend);
    return st;
}

static const ha_plugin_api faulty_api = {
    .abi_version = HA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(ha_plugin_api),
    .name = "faulty",
    .probe = faulty_probe,
    .init = faulty_init,
    .shutdown = faulty_shutdown,
    .describe = NULL,
    .last_error = faulty_last_error,
    .host_memory = 1,
    .mem_alloc = faulty_mem_alloc,
    .mem_free = faulty_mem_free,
    .mem_copy = faulty_mem_copy,
    .synchronize = faulty_synchronize,
    .mlp_upload = faulty_mlp_upload,
    .mlp_free = faulty_mlp_free,
    .plan_create = faulty_plan_create,
    .plan_destroy = faulty_plan_destroy,
    .encode = faulty_encode,
    .match = faulty_match,
    .attend = faulty_attend,
    .decode = faulty_decode,
};

__attribute__((visibility("default"))) const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version)
{
    return core_abi_version == HA_PLUGIN_ABI_VERSION ? &faulty_api : NULL;
}
