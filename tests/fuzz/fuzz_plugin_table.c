/*
 * fuzz_plugin_table — libFuzzer target of the check the core runs on the function table a plugin's
 * entry point returns (ha_plugin_table_check, called by the loader after dlsym).
 *
 * Input layout: abi_version (4 bytes, little-endian), struct_size (4 bytes), a 32-bit mask (4 bytes:
 * bit i set = table member i points at a harmless stub, clear = NULL; bit 31 clear = the table
 * pointer itself is NULL), then the plugin's name (the rest, NUL-terminated by the harness; an empty
 * rest with mask bit 30 set = a NULL name). The check's verdict is compared with the rules of
 * include/hashattn_plugin.h; the stubs are never called.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int stub_probe(void) { return 1; }
static ha_status stub_init(const ha_plugin_host *host, void **ctx) { (void)host, (void)ctx; return HA_ERR_BACKEND; }
static void stub_ctx(void *ctx) { (void)ctx; }
static const char *stub_text(void *ctx) { (void)ctx; return "stub"; }
static void *stub_alloc(void *ctx, size_t bytes) { (void)ctx, (void)bytes; return NULL; }
static void stub_free(void *ctx, void *p) { (void)ctx, (void)p; }
static ha_status stub_copy(void *ctx, void *d, const void *s, size_t n, ha_copy_kind k)
{ (void)ctx, (void)d, (void)s, (void)n, (void)k; return HA_ERR_BACKEND; }
static ha_status stub_sync(void *ctx, void *stream) { (void)ctx, (void)stream; return HA_ERR_BACKEND; }
static ha_status stub_upload(void *ctx, const ha_mlp_desc *d, void **h) { (void)ctx, (void)d, (void)h; return HA_ERR_BACKEND; }
static ha_status stub_plan(void *ctx, const ha_plan_desc *d, void **p) { (void)ctx, (void)d, (void)p; return HA_ERR_BACKEND; }
static ha_status stub_encode(void *ctx, void *p, const ha_encode_args *a) { (void)ctx, (void)p, (void)a; return HA_ERR_BACKEND; }
static ha_status stub_match(void *ctx, void *p, const ha_match_args *a) { (void)ctx, (void)p, (void)a; return HA_ERR_BACKEND; }
static ha_status stub_attend(void *ctx, void *p, const ha_attend_args *a) { (void)ctx, (void)p, (void)a; return HA_ERR_BACKEND; }
static ha_status stub_decode(void *ctx, void *p, const ha_decode_args *a) { (void)ctx, (void)p, (void)a; return HA_ERR_BACKEND; }

static uint32_t read_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* What the contract says of a name: 1 to HA_PLUGIN_NAME_MAX of [A-Za-z0-9_-]. */
static int valid_name(const char *name)
{
    size_t n = strlen(name);
    return n >= 1 && n <= HA_PLUGIN_NAME_MAX && strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                                             "0123456789_-") == n;
}

static void quiet(void *user, ha_log_level level, const char *message)
{
    (void)user, (void)level, (void)message; /* every refusal would log a warning: too slow */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int once;
    if (!once++)
        ha_set_log_callback(quiet, NULL, HA_LOG_ERROR);
    if (size < 12)
        return 0;
    uint32_t mask = read_u32(data + 8);
    char *name = malloc(size - 12 + 1); /* exact size: a read past the NUL is caught by ASan */
    if (!name)
        return 0;
    memcpy(name, data + 12, size - 12);
    name[size - 12] = '\0';

    ha_plugin_api api;
    memset(&api, 0, sizeof api);
    api.abi_version = read_u32(data);
    api.struct_size = read_u32(data + 4);
    api.name = (size == 12 && (mask & (1u << 30))) ? NULL : name;
    api.host_memory = (int)(mask >> 29 & 1);
#define SET(i, member, fn) if (mask & (1u << (i))) api.member = fn
    SET(0, probe, stub_probe);
    SET(1, init, stub_init);
    SET(2, shutdown, stub_ctx);
    SET(3, describe, stub_text);
    SET(4, last_error, stub_text);
    SET(5, mem_alloc, stub_alloc);
    SET(6, mem_free, stub_free);
    SET(7, mem_copy, stub_copy);
    SET(8, synchronize, stub_sync);
    SET(9, mlp_upload, stub_upload);
    SET(10, mlp_free, stub_free);
    SET(11, plan_create, stub_plan);
    SET(12, plan_destroy, stub_free);
    SET(13, encode, stub_encode);
    SET(14, match, stub_match);
    SET(15, attend, stub_attend);
    SET(16, decode, stub_decode);
#undef SET
    const ha_plugin_api *table = (mask & (1u << 31)) ? &api : NULL;

    ha_status st = ha_plugin_table_check(table, "fuzz.so");
    int expected_ok = table && api.abi_version == HA_PLUGIN_ABI_VERSION && api.struct_size >= HA_PLUGIN_API_V1_SIZE &&
                      api.name && api.probe && api.init && api.shutdown && api.mem_alloc && api.mem_free &&
                      api.mem_copy && api.synchronize && api.mlp_upload && api.mlp_free && api.encode &&
                      api.match && api.attend && !api.plan_create == !api.plan_destroy && valid_name(api.name);
    if ((st == HA_OK) != expected_ok)
        abort(); /* the check disagrees with the documented rules */
    if (st != HA_OK && (st != HA_ERR_ABI_MISMATCH || !strstr(ha_last_error(), "fuzz.so")))
        abort(); /* a refusal is an ABI mismatch whose message names the plugin */
    free(name);
    return 0;
}
