/*
 * plan.c — plans (limits, budget, scratch) and key-code caches.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "ha_shared.h"

#define HA_DEFAULT_WINDOW 128

HA_API void ha_plan_config_init(ha_plan_config *cfg, int32_t max_batch, int64_t max_tokens, int32_t num_q_heads,
                                int32_t num_kv_heads, int32_t head_dim)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->max_batch = max_batch;
    cfg->max_tokens = max_tokens;
    cfg->num_q_heads = num_q_heads;
    cfg->num_kv_heads = num_kv_heads;
    cfg->head_dim = head_dim;
    cfg->sink = HA_DEFAULT_WINDOW;
    cfg->local = HA_DEFAULT_WINDOW;
    cfg->heavy_fraction = 1.0 / 32.0;
    cfg->heavy_count = 0;
    cfg->scale = 0.0f;
}

static ha_status check_config(const ha_weights *w, const ha_plan_config *cfg)
{
    const char *fn = "ha_plan_create";
    if (cfg->struct_size < sizeof(ha_plan_config) || cfg->struct_size > 4096)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->struct_size = %u (expected %zu; use ha_plan_config_init)", fn,
                       cfg->struct_size, sizeof(ha_plan_config));
    if (cfg->max_batch < 1)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->max_batch = %d must be ≥ 1", fn, cfg->max_batch);
    if (cfg->max_tokens < 1 || cfg->max_tokens > INT32_MAX)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->max_tokens = %lld is outside [1, %d]", fn,
                       (long long)cfg->max_tokens, INT32_MAX);
    if (cfg->num_q_heads < 1 || cfg->num_kv_heads < 1 || cfg->num_q_heads % cfg->num_kv_heads)
        return ha_fail(HA_ERR_SHAPE, "%s: cfg->num_kv_heads = %d must be ≥ 1 and divide cfg->num_q_heads = %d", fn,
                       cfg->num_kv_heads, cfg->num_q_heads);
    if (cfg->head_dim < 1 || cfg->head_dim > 65536)
        return ha_fail(HA_ERR_SHAPE, "%s: cfg->head_dim = %d is outside [1, 65536]", fn, cfg->head_dim);
    if (cfg->sink < -1 || cfg->local < -1)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->sink = %d / cfg->local = %d must be ≥ 0 (or -1: default)", fn,
                       cfg->sink, cfg->local);
    if (!(cfg->heavy_fraction >= 0.0 && cfg->heavy_fraction <= 1.0))
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->heavy_fraction = %g is outside [0, 1]", fn, cfg->heavy_fraction);
    if (cfg->heavy_count < 0)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->heavy_count = %lld is negative", fn, (long long)cfg->heavy_count);
    if (!(cfg->scale >= 0.0f) || isinf(cfg->scale))
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->scale = %g must be finite and ≥ 0 (0: 1/sqrt(head_dim))", fn,
                       (double)cfg->scale);
    if (!w)
        return HA_OK;
    if (cfg->num_q_heads != w->host.q_heads)
        return ha_fail(HA_ERR_SHAPE, "%s: cfg->num_q_heads = %d but the weights have q_heads = %d", fn, cfg->num_q_heads,
                       w->host.q_heads);
    if (cfg->head_dim != w->host.head_dim)
        return ha_fail(HA_ERR_SHAPE, "%s: cfg->head_dim = %d but the weights' head_dim is %d", fn, cfg->head_dim,
                       w->host.head_dim);
    if (w->host.k_heads != cfg->num_q_heads && w->host.k_heads != cfg->num_kv_heads)
        return ha_fail(HA_ERR_SHAPE,
                       "%s: the weights have k_heads = %d, which is neither num_q_heads = %d (paper mode) nor num_kv_heads = %d (group mode)",
                       fn, w->host.k_heads, cfg->num_q_heads, cfg->num_kv_heads);
    return HA_OK;
}

/** Allocates n elements of size elem in backend memory, with overflow checks. */
static ha_status scratch(ha_runtime *rt, int64_t n, size_t elem, void **out)
{
    int64_t bytes;
    if (!ha_mul_i64(n, (int64_t)elem, &bytes))
        return ha_fail(HA_ERR_OVERFLOW, "ha_plan_create: scratch of %lld elements overflows", (long long)n);
    return ha_backend_alloc(&rt->backend, "ha_plan_create", "scratch", (size_t)bytes, out);
}

static void free_plan(ha_plan *p)
{
    const ha_backend *b = &p->rt->backend;
    if (p->plugin_plan && b->api->plan_destroy)
        b->api->plan_destroy(b->ctx, p->plugin_plan);
    b->api->mem_free(b->ctx, p->q_codes);
    b->api->mem_free(b->ctx, p->indices);
    b->api->mem_free(b->ctx, p->counts);
    free(p);
}

HA_API ha_status ha_plan_create(ha_runtime *rt_handle, const ha_weights *w_handle, const ha_plan_config *cfg,
                                ha_plan **out)
{
    const char *fn = "ha_plan_create";
    ha_clear_error();
    if (out)
        *out = NULL; /* fully written on failure too */
    ha_runtime *rt;
    ha_weights *w = NULL;
    ha_status st = ha_handle_lookup(fn, HA_KIND_RUNTIME, rt_handle, (void **)&rt);
    if (st == HA_OK && w_handle)
        st = ha_handle_lookup(fn, HA_KIND_WEIGHTS, w_handle, (void **)&w);
    if (st != HA_OK)
        return st;
    if (!cfg || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !cfg ? "cfg" : "out");
    if (w && w->rt != rt)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: the weights w were loaded by another runtime than rt", fn);
    st = check_config(w, cfg);
    if (st != HA_OK)
        return st;
    ha_plan *p = ha_calloc(1, sizeof *p);
    if (!p)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_plan_create: out of memory");
    p->rt = rt;
    p->w = w;
    ha_plan_desc *d = &p->desc;
    d->max_batch = cfg->max_batch;
    d->max_tokens = cfg->max_tokens;
    d->q_heads = cfg->num_q_heads;
    d->kv_heads = cfg->num_kv_heads;
    d->head_dim = cfg->head_dim;
    d->code_heads = w ? w->host.k_heads : 0;
    d->words = w ? w->host.words : 0;
    d->bits = w ? w->host.bits : 0;
    d->sink = cfg->sink < 0 ? HA_DEFAULT_WINDOW : cfg->sink;
    d->local = cfg->local < 0 ? HA_DEFAULT_WINDOW : cfg->local;
    d->heavy_fraction = cfg->heavy_fraction;
    d->heavy_count = cfg->heavy_count;
    /* kept(n) never decreases with n, so the longest sequence bounds every row */
    d->max_kept = ha_kept_for_length(d->max_tokens, d->sink, d->local, d->heavy_fraction, d->heavy_count);
    d->scale = cfg->scale > 0.0f ? cfg->scale : (float)(1.0 / sqrt((double)d->head_dim));
    if (w) {
        /* every size is computed (and overflow-checked) before anything is allocated */
        int64_t sel = ha_plan_sel_heads(p), rows = 0, code_words = 0, index_count = 0, index_bytes = 0;
        if (!ha_mul_i64(d->max_batch, sel, &rows) ||
            !ha_mul_i64(rows, (int64_t)(d->q_heads / sel) * d->words, &code_words) ||
            !ha_mul_i64(rows, d->max_kept, &index_count) || !ha_mul_i64(index_count, 4, &index_bytes))
            st = ha_fail(HA_ERR_OVERFLOW, "ha_plan_create: scratch for max_batch %d × %lld heads × %lld kept tokens overflows",
                         d->max_batch, (long long)sel, (long long)d->max_kept);
        if (st == HA_OK)
            st = scratch(rt, code_words, sizeof(uint32_t), (void **)&p->q_codes);
        if (st == HA_OK)
            st = scratch(rt, index_count, sizeof(int32_t), (void **)&p->indices);
        if (st == HA_OK)
            st = scratch(rt, rows, sizeof(int32_t), (void **)&p->counts);
    }
    if (st == HA_OK && rt->backend.api->plan_create) {
        st = rt->backend.api->plan_create(rt->backend.ctx, d, &p->plugin_plan);
        if (st != HA_OK)
            st = ha_backend_fail(&rt->backend, st, "ha_plan_create");
    }
    void *handle = st == HA_OK ? ha_handle_publish(HA_KIND_PLAN, p, &rt->users, w ? &w->users : NULL) : NULL;
    if (st == HA_OK && !handle)
        st = ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory (handle registry)", fn);
    if (st != HA_OK) {
        free_plan(p);
        return st;
    }
    *out = handle;
    return HA_OK;
}

/** A plan or cache is gone: it no longer uses its weights and runtime (which may go with it). */
static void drop_parents(ha_runtime *rt, ha_weights *w)
{
    if (w)
        ha_weights_drop_user(w);
    ha_runtime_drop_user(rt);
}

HA_API void ha_plan_destroy(ha_plan *handle)
{
    ha_clear_error();
    ha_plan *plan;
    if (!handle || ha_handle_take("ha_plan_destroy", HA_KIND_PLAN, handle, (void **)&plan) != HA_OK)
        return;
    ha_runtime *rt = plan->rt;
    ha_weights *w = plan->w;
    free_plan(plan);
    drop_parents(rt, w);
}

static ha_plan *plan_of(const char *fn, const ha_plan *handle)
{
    ha_plan *plan;
    return ha_handle_lookup(fn, HA_KIND_PLAN, handle, (void **)&plan) == HA_OK ? plan : NULL;
}

HA_API int64_t ha_plan_max_kept(const ha_plan *handle)
{
    ha_clear_error();
    const ha_plan *plan = plan_of("ha_plan_max_kept", handle);
    return plan ? plan->desc.max_kept : 0;
}

HA_API int64_t ha_plan_kept_for_length(const ha_plan *handle, int64_t n)
{
    ha_clear_error();
    const ha_plan *plan = plan_of("ha_plan_kept_for_length", handle);
    if (!plan)
        return 0;
    const ha_plan_desc *d = &plan->desc;
    return ha_kept_for_length(n, d->sink, d->local, d->heavy_fraction, d->heavy_count);
}

HA_API int32_t ha_plan_selection_heads(const ha_plan *handle)
{
    ha_clear_error();
    const ha_plan *plan = plan_of("ha_plan_selection_heads", handle);
    return plan ? ha_plan_sel_heads(plan) : 0;
}

/* ---- key-code cache ------------------------------------------------------------------------ */

static void free_cache(ha_cache *c)
{
    const ha_backend *b = &c->rt->backend;
    if (c->codes) {
        for (int32_t l = 0; l < c->w->host.num_layers; l++)
            b->api->mem_free(b->ctx, c->codes[l]);
    }
    free(c->codes);
    ha_cache_state_free(c);
    free(c);
}

HA_API ha_status ha_cache_create(ha_runtime *rt_handle, const ha_weights *w_handle, const ha_cache_config *cfg,
                                 ha_cache **out)
{
    const char *fn = "ha_cache_create";
    ha_clear_error();
    if (out)
        *out = NULL; /* fully written on failure too */
    ha_runtime *rt;
    ha_weights *w;
    ha_status st = ha_handle_lookup(fn, HA_KIND_RUNTIME, rt_handle, (void **)&rt);
    if (st == HA_OK)
        st = ha_handle_lookup(fn, HA_KIND_WEIGHTS, w_handle, (void **)&w);
    if (st != HA_OK)
        return st;
    if (!cfg || !out)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !cfg ? "cfg" : "out");
    if (w->rt != rt)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: the weights w were loaded by another runtime than rt", fn);
    if (cfg->struct_size < sizeof(ha_cache_config) || cfg->struct_size > 4096)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->struct_size = %u (expected %zu)", fn, cfg->struct_size,
                       sizeof(ha_cache_config));
    if (cfg->page_size < 0)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cfg->page_size = %d is negative", fn, cfg->page_size);
    int paged = cfg->page_size > 0;
    if (paged ? cfg->num_pages < 1 : (cfg->max_batch < 1 || cfg->max_tokens < 1))
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s", fn,
                       paged ? "cfg->num_pages must be ≥ 1 for a paged cache"
                             : "cfg->max_batch and cfg->max_tokens must be ≥ 1 for a contiguous cache");
    ha_cache *c = ha_calloc(1, sizeof *c);
    if (!c)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    c->rt = rt;
    c->w = w;
    c->cfg = *cfg;
    c->heads = w->host.k_heads;
    c->words = w->host.words;
    int64_t tokens = paged ? cfg->page_size : cfg->max_tokens;
    int64_t seqs = paged ? cfg->num_pages : cfg->max_batch;
    int64_t per_layer = 0;
    if (!ha_mul_i64(tokens, c->words, &c->stride_head) || !ha_mul_i64(c->stride_head, c->heads, &c->stride_seq) ||
        !ha_mul_i64(c->stride_seq, seqs, &per_layer) || !ha_mul_i64(per_layer, 4, &per_layer))
        st = ha_fail(HA_ERR_OVERFLOW, "%s: the cache size overflows (%lld × %d heads × %lld tokens × %d words)", fn,
                     (long long)seqs, c->heads, (long long)tokens, c->words);
    c->codes = st == HA_OK ? ha_calloc((size_t)w->host.num_layers, sizeof(uint32_t *)) : NULL;
    if (st == HA_OK && !c->codes)
        st = ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", fn);
    for (int32_t l = 0; st == HA_OK && l < w->host.num_layers; l++) {
        if (w->host.dense[l])
            continue;
        st = ha_backend_alloc(&rt->backend, fn, "key codes", (size_t)per_layer, (void **)&c->codes[l]);
        if (st == HA_OK)
            c->bytes += (size_t)per_layer;
    }
    if (st == HA_OK)
        st = ha_cache_state_init(c, fn);
    void *handle = st == HA_OK ? ha_handle_publish(HA_KIND_CACHE, c, &rt->users, &w->users) : NULL;
    if (st == HA_OK && !handle)
        st = ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory (handle registry)", fn);
    if (st != HA_OK) {
        free_cache(c);
        return st;
    }
    *out = handle;
    return HA_OK;
}

HA_API void ha_cache_destroy(ha_cache *handle)
{
    ha_clear_error();
    ha_cache *cache;
    if (!handle || ha_handle_take("ha_cache_destroy", HA_KIND_CACHE, handle, (void **)&cache) != HA_OK)
        return;
    ha_runtime *rt = cache->rt;
    ha_weights *w = cache->w;
    free_cache(cache);
    drop_parents(rt, w);
}

HA_API size_t ha_cache_bytes(const ha_cache *handle)
{
    ha_clear_error();
    ha_cache *cache;
    if (ha_handle_lookup("ha_cache_bytes", HA_KIND_CACHE, handle, (void **)&cache) != HA_OK)
        return 0;
    return cache->bytes;
}
