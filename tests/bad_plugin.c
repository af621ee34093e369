/*
 * bad_plugin.c — deliberately broken backend plugins for test_plugin_abi, one shared module per
 * defect, chosen at compile time:
 *
 *   BAD_PLUGIN_BAD_ABI_VERSION  table claims ABI version 999
 *   BAD_PLUGIN_BAD_TABLE_SIZE   table claims struct_size = HA_PLUGIN_API_V1_SIZE - 8
 *   BAD_PLUGIN_NO_ENTRY_SYMBOL  exports no hashattn_plugin_get_api
 *   BAD_PLUGIN_RETURNS_NULL     entry point returns NULL (cannot speak the core's version)
 *   BAD_PLUGIN_MISSING_MEMBER   valid header, but the required member `encode` is NULL
 *   BAD_PLUGIN_BAD_NAME         a complete table whose name is not a plugin name (a path, a space)
 *   BAD_PLUGIN_PROBE_ZERO       a valid table whose probe says it cannot run here
 *   BAD_PLUGIN_INIT_FAILS       a valid table, top probe score, but init fails
 *
 * Every plugin that gets past negotiation reports a probe score far above any real backend, so a
 * loader that failed to refuse it would pick it. Stages are never reached: they return
 * HA_ERR_UNSUPPORTED.
 */
#include <stdlib.h>
#include <string.h>

#include "hashattn_plugin.h"

#define HIGH_SCORE 1000000

static int probe(void)
{
#ifdef BAD_PLUGIN_PROBE_ZERO
    return 0;
#else
    return HIGH_SCORE;
#endif
}

static ha_status init(const ha_plugin_host *host, void **ctx)
{
    (void)host;
#ifdef BAD_PLUGIN_INIT_FAILS
    *ctx = NULL;
    return HA_ERR_BACKEND;
#else
    static int context;
    *ctx = &context;
    return HA_OK;
#endif
}

static void shutdown(void *ctx)
{
    (void)ctx;
}

static const char *describe(void *ctx)
{
    (void)ctx;
    return "a deliberately broken test plugin";
}

static void *mem_alloc(void *ctx, size_t bytes)
{
    (void)ctx;
    return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void mem_free(void *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
}

static ha_status mem_copy(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    (void)ctx;
    (void)kind;
    memmove(dst, src, bytes);
    return HA_OK;
}

static ha_status synchronize(void *ctx, void *stream)
{
    (void)ctx;
    (void)stream;
    return HA_OK;
}

static ha_status mlp_upload(void *ctx, const ha_mlp_desc *desc, void **handle)
{
    (void)ctx;
    (void)desc;
    *handle = NULL;
    return HA_ERR_UNSUPPORTED;
}

static void mlp_free(void *ctx, void *handle)
{
    (void)ctx;
    (void)handle;
}

/* unused by BAD_PLUGIN_MISSING_MEMBER, which leaves the member NULL */
__attribute__((unused)) static ha_status encode(void *ctx, void *plan, const ha_encode_args *args)
{
    (void)ctx;
    (void)plan;
    (void)args;
    return HA_ERR_UNSUPPORTED;
}

static ha_status match(void *ctx, void *plan, const ha_match_args *args)
{
    (void)ctx;
    (void)plan;
    (void)args;
    return HA_ERR_UNSUPPORTED;
}

static ha_status attend(void *ctx, void *plan, const ha_attend_args *args)
{
    (void)ctx;
    (void)plan;
    (void)args;
    return HA_ERR_UNSUPPORTED;
}

#if defined(BAD_PLUGIN_BAD_ABI_VERSION)
#define TABLE_VERSION 999u
#else
#define TABLE_VERSION HA_PLUGIN_ABI_VERSION
#endif
#if defined(BAD_PLUGIN_BAD_TABLE_SIZE)
#define TABLE_SIZE ((uint32_t)HA_PLUGIN_API_V1_SIZE - 8u)
#else
#define TABLE_SIZE ((uint32_t)sizeof(ha_plugin_api))
#endif
#if defined(BAD_PLUGIN_MISSING_MEMBER)
#define ENCODE NULL
#else
#define ENCODE encode
#endif

#if defined(BAD_PLUGIN_BAD_NAME)
#define NAME "../bad plugin"
#else
#define NAME "bad_plugin"
#endif

static const ha_plugin_api table = {
    .abi_version = TABLE_VERSION,
    .struct_size = TABLE_SIZE,
    .name = NAME,
    .probe = probe,
    .init = init,
    .shutdown = shutdown,
    .describe = describe,
    .host_memory = 1,
    .mem_alloc = mem_alloc,
    .mem_free = mem_free,
    .mem_copy = mem_copy,
    .synchronize = synchronize,
    .mlp_upload = mlp_upload,
    .mlp_free = mlp_free,
    .encode = ENCODE,
    .match = match,
    .attend = attend,
};

#if defined(BAD_PLUGIN_NO_ENTRY_SYMBOL)
/* A differently named export: the loader must not guess. */
__attribute__((visibility("default"))) const ha_plugin_api *hashattn_plugin_get_api_v2(uint32_t core_abi_version)
{
    (void)core_abi_version;
    return &table;
}
#else
__attribute__((visibility("default"))) const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version)
{
#if defined(BAD_PLUGIN_RETURNS_NULL)
    /* speaks only a version the core never asks for */
    return core_abi_version == 0 ? &table : NULL;
#else
    (void)core_abi_version;
    return &table;
#endif
}
#endif
