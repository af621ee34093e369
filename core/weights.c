/*
 * weights.c — loading mapping-function weights and uploading them to the backend.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "safetensors.h"

static void free_handles(ha_weights *w)
{
    const ha_plugin_api *api = w->rt->backend.api;
    void *ctx = w->rt->backend.ctx;
    for (int32_t l = 0; l < w->host.num_layers; l++) {
        if (w->q_handles && w->q_handles[l])
            api->mlp_free(ctx, w->q_handles[l]);
        if (w->k_handles && w->k_handles[l])
            api->mlp_free(ctx, w->k_handles[l]);
    }
    free(w->q_handles);
    free(w->k_handles);
    w->q_handles = w->k_handles = NULL;
}

static ha_status upload(ha_weights *w)
{
    const ha_backend *b = &w->rt->backend;
    int32_t n = w->host.num_layers;
    w->q_handles = ha_calloc((size_t)n, sizeof(void *));
    w->k_handles = ha_calloc((size_t)n, sizeof(void *));
    if (!w->q_handles || !w->k_handles)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_weights_load: out of memory");
    for (int32_t l = 0; l < n; l++) {
        if (w->host.dense[l])
            continue;
        ha_status st = b->api->mlp_upload(b->ctx, &w->host.q[l], &w->q_handles[l]);
        if (st == HA_OK)
            st = b->api->mlp_upload(b->ctx, &w->host.k[l], &w->k_handles[l]);
        if (st != HA_OK)
            return ha_backend_fail(b, st, "ha_weights_load: uploading the mapping functions");
    }
    return HA_OK;
}

static void weights_destroy(ha_weights *w)
{
    ha_runtime *rt = w->rt;
    free_handles(w);
    ha_weights_host_free(&w->host);
    free(w);
    ha_runtime_drop_user(rt);
}

void ha_weights_drop_user(ha_weights *w)
{
    if (ha_lifecycle_drop_user(&w->users, &w->released))
        weights_destroy(w);
}

/** Parses a safetensors image (borrowed) into a new weights object. */
static ha_status load_parsed(ha_runtime *rt, ha_st_file *file, const char *what, ha_weights **out)
{
    ha_weights *w = ha_calloc(1, sizeof *w);
    if (!w)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
    w->rt = rt;
    char err[512];
    ha_status st = ha_weights_host_from_st(file, &w->host, err, sizeof err);
    if (st != HA_OK) {
        free(w);
        return ha_fail(st, "%s: %s", what, err);
    }
    st = upload(w);
    void *handle = st == HA_OK ? ha_handle_publish(HA_KIND_WEIGHTS, w, &rt->users, NULL) : NULL;
    if (st == HA_OK && !handle)
        st = ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory (handle registry)", what);
    if (st != HA_OK) {
        free_handles(w);
        ha_weights_host_free(&w->host);
        free(w);
        return st;
    }
    *out = handle;
    return HA_OK;
}

HA_API ha_status ha_weights_load(ha_runtime *rt_handle, const char *path, ha_weights **out)
{
    ha_clear_error();
    if (out)
        *out = NULL; /* fully written on failure too */
    ha_runtime *rt;
    ha_status st = ha_handle_lookup("ha_weights_load", HA_KIND_RUNTIME, rt_handle, (void **)&rt);
    if (st != HA_OK)
        return st;
    if (!path || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_load: %s is NULL", !path ? "path" : "out");
    ha_st_file file;
    char err[512];
    st = ha_st_open(path, &file, err, sizeof err);
    if (st != HA_OK)
        return ha_fail(st, "ha_weights_load: %s", err);
    st = load_parsed(rt, &file, "ha_weights_load", out);
    ha_st_close(&file);
    return st;
}

HA_API ha_status ha_weights_load_memory(ha_runtime *rt_handle, const void *data, size_t size, ha_weights **out)
{
    ha_clear_error();
    if (out)
        *out = NULL; /* fully written on failure too */
    ha_runtime *rt;
    ha_status st = ha_handle_lookup("ha_weights_load_memory", HA_KIND_RUNTIME, rt_handle, (void **)&rt);
    if (st != HA_OK)
        return st;
    if (!data || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_load_memory: %s is NULL", !data ? "data" : "out");
    ha_st_file file;
    char err[512];
    st = ha_st_parse(data, size, &file, err, sizeof err);
    if (st != HA_OK)
        return ha_fail(st, "ha_weights_load_memory: %s", err);
    /* the host copy converts every tensor to fp32, so the caller's buffer is not kept */
    st = load_parsed(rt, &file, "ha_weights_load_memory", out);
    ha_st_close(&file);
    return st;
}

HA_API void ha_weights_free(ha_weights *handle)
{
    ha_clear_error();
    ha_weights *w;
    int users;
    if (!handle || ha_handle_take("ha_weights_free", HA_KIND_WEIGHTS, handle, (void **)&w) != HA_OK)
        return;
    /* plans and caches made from these weights keep them until they are destroyed */
    if (ha_lifecycle_release(&w->released, &w->users, &users))
        weights_destroy(w);
}

HA_API ha_status ha_weights_get_info(const ha_weights *handle, ha_weights_info *out)
{
    ha_clear_error();
    ha_weights *w;
    ha_status st = ha_handle_lookup("ha_weights_get_info", HA_KIND_WEIGHTS, handle, (void **)&w);
    if (st != HA_OK)
        return st;
    if (!out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_get_info: out is NULL");
    ha_weights_info info;
    memset(&info, 0, sizeof info);
    info.num_layers = w->host.num_layers;
    info.bits = w->host.bits;
    info.words = w->host.words;
    info.mlp_depth = w->host.depth;
    info.head_dim = w->host.head_dim;
    info.q_heads = w->host.q_heads;
    info.k_heads = w->host.k_heads;
    info.mode = w->host.k_heads < w->host.q_heads ? HA_MODE_GROUP : HA_MODE_PAPER;
    for (int32_t l = 0; l < w->host.num_layers; l++)
        info.num_dense_layers += w->host.dense[l] != 0;
    *out = info;
    return HA_OK;
}

HA_API int ha_weights_layer_is_dense(const ha_weights *handle, int32_t layer)
{
    const char *fn = "ha_weights_layer_is_dense";
    ha_clear_error();
    ha_weights *w;
    if (ha_handle_lookup(fn, HA_KIND_WEIGHTS, handle, (void **)&w) != HA_OK)
        return -1;
    if (layer < 0 || layer >= w->host.num_layers) {
        ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: layer = %d is outside [0, %d)", fn, layer, w->host.num_layers);
        return -1;
    }
    return w->host.dense[layer] != 0;
}
