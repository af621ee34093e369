/*
 * stages.c — the public stage calls: validate everything, then build the plugin's argument
 * structures and dispatch. Nothing is written before validation has passed.
 */
#include <string.h>

#include "internal.h"

enum { NEED_K = 1, NEED_V = 2 };

ha_rows ha_rows_from_kv(const ha_kv *kv, const void *data, int32_t heads, int32_t dim)
{
    ha_rows r;
    memset(&r, 0, sizeof r);
    r.data = data;
    r.dtype = kv->dtype;
    r.heads = heads;
    r.dim = dim;
    r.stride_seq = kv->stride_seq;
    r.stride_token = kv->stride_token;
    r.stride_head = kv->stride_head;
    r.page_size = kv->page_size;
    r.block_table_stride = kv->block_table_stride;
    r.block_table = kv->block_table;
    return r;
}

ha_rows ha_rows_from_tensor3(const ha_tensor3 *t, int32_t heads, int32_t dim)
{
    ha_rows r;
    memset(&r, 0, sizeof r);
    r.data = t->data;
    r.dtype = t->dtype;
    r.heads = heads;
    r.dim = dim;
    r.stride_seq = t->stride_batch;
    r.stride_head = t->stride_head;
    return r;
}

/** Code rows of one layer of the cache (paged caches share kv's block table). */
static ha_rows cache_rows(const ha_cache *c, int32_t layer, const ha_kv *kv)
{
    ha_rows r;
    memset(&r, 0, sizeof r);
    r.data = c->codes[layer];
    r.dtype = HA_F32; /* unused: codes are uint32 words */
    r.heads = c->heads;
    r.dim = c->words;
    r.stride_seq = c->stride_seq;
    r.stride_token = c->words;
    r.stride_head = c->stride_head;
    r.page_size = c->cfg.page_size;
    r.block_table_stride = kv->block_table_stride;
    r.block_table = kv->block_table;
    return r;
}

static ha_status check_kv_needs(const ha_plan *plan, const char *fn, const ha_kv *kv, int32_t batch,
                                const int32_t *lens, int need)
{
    if (kv && (need & NEED_K) && !kv->k)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: kv->k is NULL", fn);
    if (kv && (need & NEED_V) && !kv->v)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: kv->v is NULL", fn);
    if (kv && need) {
        ha_status st = ha_check_dtype(fn, "kv->dtype", kv->dtype);
        if (st != HA_OK)
            return st;
    }
    return ha_check_kv(plan->rt, fn, kv, batch, lens, plan->desc.kv_heads, plan->desc.head_dim);
}

static ha_status check_cache(const char *fn, const ha_plan *plan, const ha_cache *cache, int32_t layer)
{
    if (!cache)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: cache is NULL", fn);
    if (cache->w != plan->w)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: the cache and the plan were created for different weights", fn);
    if (!cache->codes[layer])
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: layer %d is dense: it has no key codes (use ha_dense_attend)", fn,
                       layer);
    return HA_OK;
}

/* ---- argument builders --------------------------------------------------------------------- */

static void key_encode_args(const ha_plan *plan, const ha_cache *cache, int32_t layer, const ha_kv *kv, int32_t batch,
                            const int32_t *end, int32_t count, void *stream, ha_encode_args *a)
{
    memset(a, 0, sizeof *a);
    a->mlp = plan->w->k_handles[layer];
    a->desc = &plan->w->host.k[layer];
    a->batch = batch;
    a->count = count;
    a->end = end;
    a->in = ha_rows_from_kv(kv, kv->k, plan->desc.kv_heads, plan->desc.head_dim);
    a->out = cache_rows(cache, layer, kv);
    a->stream = stream;
}

static void query_encode_args(const ha_plan *plan, int32_t layer, const ha_tensor3 *q, int32_t batch, uint32_t *codes,
                              void *stream, ha_encode_args *a)
{
    const ha_plan_desc *d = &plan->desc;
    memset(a, 0, sizeof *a);
    a->mlp = plan->w->q_handles[layer];
    a->desc = &plan->w->host.q[layer];
    a->batch = batch;
    a->count = 1;
    a->end = NULL;
    a->in = ha_rows_from_tensor3(q, d->q_heads, d->head_dim);
    a->out.data = codes;
    a->out.heads = d->q_heads;
    a->out.dim = d->words;
    a->out.stride_seq = (int64_t)d->q_heads * d->words;
    a->out.stride_head = d->words;
    a->out.stride_token = d->words;
    a->stream = stream;
}

static void match_args(const ha_plan *plan, const ha_cache *cache, int32_t layer, const uint32_t *q_codes,
                       const ha_kv *kv, int32_t batch, const int32_t *lens, int32_t *indices, int32_t *counts,
                       void *stream, ha_match_args *a)
{
    const ha_plan_desc *d = &plan->desc;
    memset(a, 0, sizeof *a);
    a->batch = batch;
    a->q_heads = d->q_heads;
    a->sel_heads = ha_plan_sel_heads(plan);
    a->words = d->words;
    a->bits = d->bits;
    a->q_codes = q_codes;
    a->k_codes = cache_rows(cache, layer, kv);
    a->seq_lens = lens;
    a->sink = d->sink;
    a->local = d->local;
    a->heavy_fraction = d->heavy_fraction;
    a->heavy_count = d->heavy_count;
    a->indices = indices;
    a->index_stride = d->max_kept;
    a->counts = counts;
    a->stream = stream;
}

static void attend_args(const ha_plan *plan, const ha_tensor3 *q, const ha_kv *kv, int32_t batch, const int32_t *lens,
                        const int32_t *indices, const int32_t *counts, ha_tensor3 *out, float *lse, void *stream,
                        ha_attend_args *a)
{
    const ha_plan_desc *d = &plan->desc;
    memset(a, 0, sizeof *a);
    a->batch = batch;
    a->q_heads = d->q_heads;
    a->kv_heads = d->kv_heads;
    a->head_dim = d->head_dim;
    a->q = ha_rows_from_tensor3(q, d->q_heads, d->head_dim);
    a->k = ha_rows_from_kv(kv, kv->k, d->kv_heads, d->head_dim);
    a->v = ha_rows_from_kv(kv, kv->v, d->kv_heads, d->head_dim);
    a->seq_lens = lens;
    a->indices = indices;
    a->index_stride = d->max_kept;
    a->counts = counts;
    a->sel_heads = indices ? ha_plan_sel_heads(plan) : d->q_heads;
    a->scale = d->scale;
    a->out = out->data;
    a->out_dtype = out->dtype;
    a->out_stride_seq = out->stride_batch;
    a->out_stride_head = out->stride_head;
    a->lse = lse;
    a->stream = stream;
}

/* ---- handles ------------------------------------------------------------------------------- */

/** The plan behind plan_h and, when cache_h is not NULL, the cache behind it (else *cache = NULL). */
static ha_status objects_of(const char *fn, const ha_plan *plan_h, const ha_cache *cache_h, ha_plan **plan,
                            ha_cache **cache)
{
    if (cache)
        *cache = NULL;
    ha_status st = ha_handle_lookup(fn, HA_KIND_PLAN, plan_h, (void **)plan);
    if (st == HA_OK && cache_h)
        st = ha_handle_lookup(fn, HA_KIND_CACHE, cache_h, (void **)cache);
    /* Before any argument is read: the plan's checks (reading host memory when its backend's memory is
     * host memory) must not run on the buffers of another runtime's backend. */
    if (st == HA_OK && cache_h && (*cache)->rt != (*plan)->rt)
        st = ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: the cache and the plan belong to different runtimes", fn);
    return st;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static ha_status call(const ha_plan *plan, const char *fn, ha_status st)
{
    return st == HA_OK ? HA_OK : ha_backend_fail(&plan->rt->backend, st, fn);
}

#define BACKEND(plan) ((plan)->rt->backend)

HA_API ha_status ha_cache_encode_keys(ha_plan *plan_h, ha_cache *cache_h, int32_t layer, const ha_kv *kv,
                                      int32_t batch, const int32_t *seq_end, int32_t count, void *stream)
{
    const char *fn = "ha_cache_encode_keys";
    ha_clear_error();
    ha_plan *plan;
    ha_cache *cache;
    ha_status st = objects_of(fn, plan_h, cache_h, &plan, &cache);
    if (st == HA_OK)
        st = ha_check_plan_batch(fn, plan, batch);
    if (st == HA_OK)
        st = ha_check_layer(fn, plan->w, layer);
    if (st != HA_OK)
        return st;
    if (plan->w->host.dense[layer])
        return HA_OK;
    if (count < 0 || count > plan->desc.max_tokens)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: count = %d is outside [0, %lld]", fn, count,
                       (long long)plan->desc.max_tokens);
    st = check_cache(fn, plan, cache, layer);
    if (st == HA_OK)
        st = ha_check_lengths(plan->rt, fn, "seq_end", seq_end, batch, plan->desc.max_tokens);
    if (st == HA_OK)
        st = check_kv_needs(plan, fn, kv, batch, seq_end, NEED_K);
    if (st == HA_OK)
        st = ha_check_cache_vs_kv(fn, cache, kv, batch, seq_end);
    if (st != HA_OK || count == 0)
        return st;
    ha_encode_args a;
    key_encode_args(plan, cache, layer, kv, batch, seq_end, count, stream, &a);
    st = call(plan, fn, BACKEND(plan).api->encode(BACKEND(plan).ctx, plan->plugin_plan, &a));
    if (st == HA_OK)
        ha_cache_note_encoded(cache, layer, kv, batch, seq_end, count);
    return st;
}

HA_API ha_status ha_encode_queries(ha_plan *plan_h, int32_t layer, const ha_tensor3 *q, int32_t batch,
                                   uint32_t *codes, void *stream)
{
    const char *fn = "ha_encode_queries";
    ha_clear_error();
    ha_plan *plan;
    ha_status st = objects_of(fn, plan_h, NULL, &plan, NULL);
    if (st == HA_OK)
        st = ha_check_plan_batch(fn, plan, batch);
    if (st == HA_OK)
        st = ha_check_layer(fn, plan->w, layer);
    if (st == HA_OK && plan->w->host.dense[layer])
        st = ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: layer %d is dense: it has no query mapping", fn, layer);
    if (st == HA_OK)
        st = ha_check_tensor3(fn, "q", q, batch, plan->desc.q_heads, plan->desc.head_dim, 0);
    if (st == HA_OK && !codes)
        st = ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: codes is NULL", fn);
    if (st != HA_OK)
        return st;
    ha_encode_args a;
    query_encode_args(plan, layer, q, batch, codes, stream, &a);
    return call(plan, fn, BACKEND(plan).api->encode(BACKEND(plan).ctx, plan->plugin_plan, &a));
}

HA_API ha_status ha_match(ha_plan *plan_h, const ha_cache *cache_h, int32_t layer, const uint32_t *q_codes,
                          const ha_kv *kv, int32_t batch, const int32_t *seq_lens, int32_t *indices, int32_t *counts,
                          void *stream)
{
    const char *fn = "ha_match";
    ha_clear_error();
    ha_plan *plan;
    ha_cache *cache;
    ha_status st = objects_of(fn, plan_h, cache_h, &plan, &cache);
    if (st == HA_OK)
        st = ha_check_plan_batch(fn, plan, batch);
    if (st == HA_OK)
        st = ha_check_layer(fn, plan->w, layer);
    if (st == HA_OK)
        st = check_cache(fn, plan, cache, layer);
    if (st == HA_OK && (!q_codes || !indices || !counts))
        st = ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, !q_codes ? "q_codes" : !indices ? "indices" : "counts");
    if (st == HA_OK)
        st = ha_check_lengths(plan->rt, fn, "seq_lens", seq_lens, batch, plan->desc.max_tokens);
    if (st == HA_OK)
        st = check_kv_needs(plan, fn, kv, batch, seq_lens, 0);
    if (st == HA_OK)
        st = ha_check_cache_vs_kv(fn, cache, kv, batch, seq_lens);
    if (st == HA_OK)
        st = ha_cache_check_encoded(fn, cache, layer, kv, batch, seq_lens, 0);
    if (st != HA_OK)
        return st;
    ha_match_args a;
    match_args(plan, cache, layer, q_codes, kv, batch, seq_lens, indices, counts, stream, &a);
    return call(plan, fn, BACKEND(plan).api->match(BACKEND(plan).ctx, plan->plugin_plan, &a));
}

/** Index rows handed to ha_attend (host-memory backends): counts ≤ min(n, max_kept), indices in [0, n). */
static ha_status check_selection(const ha_plan *plan, const char *fn, int32_t batch, const int32_t *lens,
                                 const int32_t *indices, const int32_t *counts)
{
    if (!indices || !counts)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, indices ? "counts" : "indices");
    if (!plan->rt->backend.api->host_memory)
        return HA_OK;
    int32_t sel = ha_plan_sel_heads(plan);
    for (int32_t b = 0; b < batch; b++) {
        for (int32_t s = 0; s < sel; s++) {
            int64_t row = (int64_t)b * sel + s, c = counts[row];
            if (c < 0 || c > lens[b] || c > plan->desc.max_kept)
                return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: counts[%lld] = %lld is outside [0, %d]", fn, (long long)row,
                               (long long)c, lens[b]);
            const int32_t *idx = indices + row * plan->desc.max_kept;
            for (int64_t i = 0; i < c; i++) {
                if (idx[i] < 0 || idx[i] >= lens[b])
                    return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: index %d of row %lld is outside [0, %d)", fn, idx[i],
                                   (long long)row, lens[b]);
            }
        }
    }
    return HA_OK;
}

/** Checks shared by ha_attend, ha_dense_attend and ha_decode_step. */
static ha_status check_attend(const ha_plan *plan, const char *fn, const ha_tensor3 *q, const ha_kv *kv, int32_t batch,
                              const int32_t *lens, const ha_tensor3 *out)
{
    ha_status st = ha_check_plan_batch(fn, plan, batch);
    if (st == HA_OK)
        st = ha_check_tensor3(fn, "q", q, batch, plan->desc.q_heads, plan->desc.head_dim, 0);
    if (st == HA_OK)
        st = ha_check_tensor3(fn, "out", out, batch, plan->desc.q_heads, plan->desc.head_dim, 1);
    if (st == HA_OK)
        st = ha_check_lengths(plan->rt, fn, "seq_lens", lens, batch, plan->desc.max_tokens);
    if (st == HA_OK)
        st = check_kv_needs(plan, fn, kv, batch, lens, NEED_K | NEED_V);
    return st;
}

HA_API ha_status ha_attend(ha_plan *plan_h, const ha_tensor3 *q, const ha_kv *kv, int32_t batch,
                           const int32_t *seq_lens, const int32_t *indices, const int32_t *counts, ha_tensor3 *out,
                           float *lse, void *stream)
{
    const char *fn = "ha_attend";
    ha_clear_error();
    ha_plan *plan;
    ha_status st = objects_of(fn, plan_h, NULL, &plan, NULL);
    if (st == HA_OK)
        st = check_attend(plan, fn, q, kv, batch, seq_lens, out);
    if (st == HA_OK)
        st = check_selection(plan, fn, batch, seq_lens, indices, counts);
    if (st != HA_OK)
        return st;
    ha_attend_args a;
    attend_args(plan, q, kv, batch, seq_lens, indices, counts, out, lse, stream, &a);
    return call(plan, fn, BACKEND(plan).api->attend(BACKEND(plan).ctx, plan->plugin_plan, &a));
}

HA_API ha_status ha_dense_attend(ha_plan *plan_h, const ha_tensor3 *q, const ha_kv *kv, int32_t batch,
                                 const int32_t *seq_lens, ha_tensor3 *out, float *lse, void *stream)
{
    const char *fn = "ha_dense_attend";
    ha_clear_error();
    ha_plan *plan;
    ha_status st = objects_of(fn, plan_h, NULL, &plan, NULL);
    if (st == HA_OK)
        st = check_attend(plan, fn, q, kv, batch, seq_lens, out);
    if (st != HA_OK)
        return st;
    ha_attend_args a;
    attend_args(plan, q, kv, batch, seq_lens, NULL, NULL, out, lse, stream, &a);
    return call(plan, fn, BACKEND(plan).api->attend(BACKEND(plan).ctx, plan->plugin_plan, &a));
}

/** The fused step, or its four stages in turn where the backend has none. */
static ha_status run_step(const ha_backend *be, void *plugin_plan, const ha_decode_args *d)
{
    if (be->api->decode)
        return be->api->decode(be->ctx, plugin_plan, d);
    ha_status st = HA_OK;
    if (d->key_encode.count > 0)
        st = be->api->encode(be->ctx, plugin_plan, &d->key_encode);
    if (st == HA_OK)
        st = be->api->encode(be->ctx, plugin_plan, &d->query_encode);
    if (st == HA_OK)
        st = be->api->match(be->ctx, plugin_plan, &d->match);
    if (st == HA_OK)
        st = be->api->attend(be->ctx, plugin_plan, &d->attend);
    return st;
}

HA_API ha_status ha_decode_step(ha_plan *plan_h, ha_cache *cache_h, int32_t layer, const ha_step *step)
{
    const char *fn = "ha_decode_step";
    ha_clear_error();
    ha_plan *plan;
    ha_cache *cache;
    ha_status st = objects_of(fn, plan_h, cache_h, &plan, &cache);
    if (st != HA_OK)
        return st;
    if (!step)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: step is NULL", fn);
    st = check_attend(plan, fn, &step->q, &step->kv, step->batch, step->seq_lens, &step->out);
    if (st == HA_OK)
        st = ha_check_layer(fn, plan->w, layer);
    if (st != HA_OK)
        return st;
    const ha_backend *be = &plan->rt->backend;
    ha_decode_args d;
    ha_tensor3 out = step->out;
    attend_args(plan, &step->q, &step->kv, step->batch, step->seq_lens, NULL, NULL, &out, step->lse, step->stream,
                &d.attend);
    if (plan->w->host.dense[layer])
        return call(plan, fn, be->api->attend(be->ctx, plan->plugin_plan, &d.attend));

    if (step->new_tokens < 0 || step->new_tokens > plan->desc.max_tokens)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: step->new_tokens = %d is outside [0, %lld]", fn, step->new_tokens,
                       (long long)plan->desc.max_tokens);
    st = check_cache(fn, plan, cache, layer);
    if (st == HA_OK)
        st = ha_check_cache_vs_kv(fn, cache, &step->kv, step->batch, step->seq_lens);
    if (st == HA_OK)
        st = ha_cache_check_encoded(fn, cache, layer, &step->kv, step->batch, step->seq_lens, step->new_tokens);
    if (st != HA_OK)
        return st;
    key_encode_args(plan, cache, layer, &step->kv, step->batch, step->seq_lens, step->new_tokens, step->stream,
                    &d.key_encode);
    query_encode_args(plan, layer, &step->q, step->batch, plan->q_codes, step->stream, &d.query_encode);
    match_args(plan, cache, layer, plan->q_codes, &step->kv, step->batch, step->seq_lens, plan->indices, plan->counts,
               step->stream, &d.match);
    d.attend.indices = plan->indices;
    d.attend.counts = plan->counts;
    d.attend.sel_heads = d.match.sel_heads;
    st = run_step(be, plan->plugin_plan, &d);
    if (st == HA_OK) /* after a failure the new keys' codes count as missing */
        ha_cache_note_encoded(cache, layer, &step->kv, step->batch, step->seq_lens, step->new_tokens);
    return call(plan, fn, st);
}
