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
    w->q_handles = calloc((size_t)n, sizeof(void *));
    w->k_handles = calloc((size_t)n, sizeof(void *));
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

/** Parses a safetensors image (borrowed) into a new weights object. */
static ha_status load_parsed(ha_runtime *rt, ha_st_file *file, const char *what, ha_weights **out)
{
    ha_weights *w = calloc(1, sizeof *w);
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
    if (st != HA_OK) {
        free_handles(w);
        ha_weights_host_free(&w->host);
        free(w);
        return st;
    }
    ha_object_created(rt);
    *out = w;
    return HA_OK;
}

HA_API ha_status ha_weights_load(ha_runtime *rt, const char *path, ha_weights **out)
{
    ha_clear_error();
    if (!rt || !path || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_load: %s is NULL", !rt ? "rt" : !path ? "path" : "out");
    *out = NULL;
    ha_st_file file;
    char err[512];
    ha_status st = ha_st_open(path, &file, err, sizeof err);
    if (st != HA_OK)
        return ha_fail(st, "ha_weights_load: %s", err);
    st = load_parsed(rt, &file, "ha_weights_load", out);
    ha_st_close(&file);
    return st;
}

HA_API ha_status ha_weights_load_memory(ha_runtime *rt, const void *data, size_t size, ha_weights **out)
{
    ha_clear_error();
    if (!rt || !data || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_load_memory: %s is NULL", !rt ? "rt" : !data ? "data" : "out");
    *out = NULL;
    ha_st_file file;
    char err[512];
    ha_status st = ha_st_parse(data, size, &file, err, sizeof err);
    if (st != HA_OK)
        return ha_fail(st, "ha_weights_load_memory: %s", err);
    /* the host copy converts every tensor to fp32, so the caller's buffer is not kept */
    st = load_parsed(rt, &file, "ha_weights_load_memory", out);
    ha_st_close(&file);
    return st;
}

HA_API void ha_weights_free(ha_weights *w)
{
    if (!w)
        return;
    free_handles(w);
    ha_weights_host_free(&w->host);
    ha_object_destroyed(w->rt);
    free(w);
}

HA_API ha_status ha_weights_get_info(const ha_weights *w, ha_weights_info *out)
{
    ha_clear_error();
    if (!w || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "ha_weights_get_info: %s is NULL", w ? "out" : "w");
    memset(out, 0, sizeof *out);
    out->num_layers = w->host.num_layers;
    out->bits = w->host.bits;
    out->words = w->host.words;
    out->mlp_depth = w->host.depth;
    out->head_dim = w->host.head_dim;
    out->q_heads = w->host.q_heads;
    out->k_heads = w->host.k_heads;
    out->mode = w->host.k_heads < w->host.q_heads ? HA_MODE_GROUP : HA_MODE_PAPER;
    for (int32_t l = 0; l < w->host.num_layers; l++)
        out->num_dense_layers += w->host.dense[l] != 0;
    return HA_OK;
}

HA_API int ha_weights_layer_is_dense(const ha_weights *w, int32_t layer)
{
    if (!w || layer < 0 || layer >= w->host.num_layers)
        return -1;
    return w->host.dense[layer] != 0;
}
