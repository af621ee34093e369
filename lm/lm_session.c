/*
 * lm_session.c — a session's lifecycle: the KV cache in backend memory (ha_mem_alloc; a host copy
 * when the backend's memory is not host memory), the hashattn plan (and key-code cache when mapping
 * weights are given), the decode step's q/out/length buffers and the prefill scratch.
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"

void lm_session_config_init(lm_session_config *cfg, int64_t max_tokens)
{
    if (!cfg)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_tokens = max_tokens;
}

/* Backend memory of bytes, and its host view: the same pointer on a host-memory backend, else a
 * separate host allocation. */
static ha_status alloc_pair(lm_session *s, size_t bytes, void **dev, float **host, const char *what)
{
    ha_status st = ha_mem_alloc(s->rt, bytes, dev);
    if (st != HA_OK)
        return lm_fail_ha(st, what);
    if (s->host_mem) {
        *host = *dev;
    } else if (!(*host = lm_alloc_floats(bytes / sizeof(float) + 1))) {
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_session_create: out of memory (%s)", what);
    }
    return HA_OK;
}

static void free_pair(lm_session *s, void *dev, float *host)
{
    if (!s->host_mem)
        free(host);
    if (dev)
        ha_mem_free(s->rt, dev);
}

/* The plan (and, with mapping weights, the key-code cache and the per-layer sparse flags). */
static ha_status create_hashattn(lm_session *s, const lm_session_config *cfg)
{
    const lm_config *c = &s->m->cfg;
    ha_plan_config pc;
    ha_plan_config_init(&pc, 1, s->n_max, c->num_q_heads, c->num_kv_heads, c->head_dim);
    if (cfg->plan) {
        pc.sink = cfg->plan->sink;
        pc.local = cfg->plan->local;
        pc.heavy_fraction = cfg->plan->heavy_fraction;
        pc.heavy_count = cfg->plan->heavy_count;
    }
    pc.scale = 0.0f; /* the model's: 1/sqrt(head_dim) */
    ha_status st = ha_plan_create(s->rt, cfg->hash_weights, &pc, &s->plan);
    if (st != HA_OK)
        return lm_fail_ha(st, "lm_session_create: ha_plan_create");
    if (!cfg->hash_weights)
        return HA_OK;

    ha_weights_info info;
    if ((st = ha_weights_get_info(cfg->hash_weights, &info)) != HA_OK)
        return lm_fail_ha(st, "lm_session_create: ha_weights_get_info");
    if (info.num_layers != c->num_layers)
        return lm_fail(HA_ERR_SHAPE, "lm_session_create: the mapping weights have %d layers, the model %d",
                       info.num_layers, c->num_layers);
    s->hw = cfg->hash_weights;
    for (int32_t l = 0; l < c->num_layers; l++)
        s->sparse[l] = ha_weights_layer_is_dense(s->hw, l) == 0;
    ha_cache_config cc = {.struct_size = sizeof(cc), .page_size = 0, .max_batch = 1, .max_tokens = s->n_max};
    if ((st = ha_cache_create(s->rt, s->hw, &cc, &s->cache)) != HA_OK)
        return lm_fail_ha(st, "lm_session_create: ha_cache_create");
    return HA_OK;
}

static ha_status create_buffers(lm_session *s)
{
    const lm_config *c = &s->m->cfg;
    const int64_t D = c->hidden_size, d = c->head_dim, Hq = c->num_q_heads, Hkv = c->num_kv_heads;
    const int64_t nqkv = (Hq + 2 * Hkv) * d, I = c->intermediate_size, C = s->chunk;
    const size_t kv_bytes = (size_t)(Hkv * s->n_max * d) * sizeof(float);
    ha_status st;
    for (int32_t l = 0; l < c->num_layers; l++) {
        lm_kv_layer *kv = &s->kv[l];
        if ((st = alloc_pair(s, kv_bytes, &kv->k_dev, &kv->k, "KV cache (K)")) != HA_OK ||
            (st = alloc_pair(s, kv_bytes, &kv->v_dev, &kv->v, "KV cache (V)")) != HA_OK)
            return st;
    }
    if ((st = alloc_pair(s, (size_t)(Hq * d) * sizeof(float), &s->q_dev, &s->q_host, "decode query")) != HA_OK ||
        (st = alloc_pair(s, (size_t)(Hq * d) * sizeof(float), &s->out_dev, &s->out_host, "decode output")) != HA_OK)
        return st;
    if ((st = ha_mem_alloc(s->rt, sizeof(int32_t), &s->len_dev)) != HA_OK)
        return lm_fail_ha(st, "lm_session_create: ha_mem_alloc (length)");

    int64_t widest = nqkv > 2 * I ? nqkv : 2 * I;
    if (D > widest)
        widest = D;
    s->n_pad = (s->n_max + LM_NR - 1) / LM_NR * LM_NR;
    s->x = lm_alloc_floats((size_t)D);
    s->xn = lm_alloc_floats((size_t)D);
    s->qkv = lm_alloc_floats((size_t)nqkv);
    s->tmp = lm_alloc_floats((size_t)D);
    s->gu = lm_alloc_floats((size_t)(2 * I));
    s->px = lm_alloc_floats((size_t)(C * D));
    s->pxn = lm_alloc_floats((size_t)(C * D));
    s->pbig = lm_alloc_floats((size_t)(C * widest));
    s->ptmp = lm_alloc_floats((size_t)(C * D));
    s->pq = lm_alloc_floats((size_t)(C * Hq * d));
    s->pk = lm_alloc_floats((size_t)(C * Hkv * d));
    s->pv = lm_alloc_floats((size_t)(C * Hkv * d));
    s->pattn = lm_alloc_floats((size_t)(C * Hq * d));
    s->kpack = lm_alloc_floats((size_t)(Hkv * s->n_pad * d));
    s->scores = lm_alloc_floats((size_t)s->threads * LM_QUERY_BLOCK * (size_t)s->n_pad);
    if (!s->x || !s->xn || !s->qkv || !s->tmp || !s->gu || !s->px || !s->pxn || !s->pbig || !s->ptmp || !s->pq ||
        !s->pk || !s->pv || !s->pattn || !s->kpack || !s->scores)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_session_create: out of memory (scratch)");
    return HA_OK;
}

ha_status lm_session_create(const lm_model *m, const lm_session_config *cfg, lm_session **out)
{
    lm_clear_error();
    if (!out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_create: out is NULL");
    *out = NULL;
    if (!m || !cfg)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_create: %s is NULL", !m ? "model" : "cfg");
    const lm_config *c = &m->cfg;
    int64_t n_max = cfg->max_tokens ? cfg->max_tokens : c->max_positions;
    if (n_max < 1 || n_max > c->max_positions)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_create: max_tokens = %lld is outside [1, %d]",
                       (long long)n_max, c->max_positions);
    if (cfg->prefill_chunk < 0)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_create: prefill_chunk = %d < 0", cfg->prefill_chunk);
    if (c->head_dim % LM_NR != 0)
        return lm_fail(HA_ERR_UNSUPPORTED, "lm_session_create: head_dim = %d is not a multiple of %d", c->head_dim,
                       LM_NR);
    lm_session *s = calloc(1, sizeof(*s));
    if (!s)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_session_create: out of memory");
    s->m = m;
    s->n_max = n_max;
    s->chunk = cfg->prefill_chunk ? cfg->prefill_chunk : 512;
    if (s->chunk > n_max)
        s->chunk = n_max;
    s->threads = omp_get_max_threads();
    s->kv = calloc((size_t)c->num_layers, sizeof(lm_kv_layer));
    s->sparse = calloc((size_t)c->num_layers, 1);
    ha_status st = s->kv && s->sparse ? HA_OK : lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_session_create: out of memory");
    if (st == HA_OK) {
        s->rt = cfg->rt;
        if (!s->rt) {
            st = ha_runtime_open(NULL, &s->rt);
            s->own_rt = st == HA_OK;
            if (st != HA_OK)
                st = lm_fail_ha(st, "lm_session_create: ha_runtime_open");
        }
    }
    if (st == HA_OK) {
        s->host_mem = ha_runtime_is_host_memory(s->rt);
        st = create_hashattn(s, cfg);
    }
    if (st == HA_OK)
        st = create_buffers(s);
    if (st != HA_OK) {
        lm_session_free(s);
        return st;
    }
    *out = s;
    return HA_OK;
}

void lm_session_free(lm_session *s)
{
    if (!s)
        return;
    if (s->kv)
        for (int32_t l = 0; l < s->m->cfg.num_layers; l++) {
            free_pair(s, s->kv[l].k_dev, s->kv[l].k);
            free_pair(s, s->kv[l].v_dev, s->kv[l].v);
        }
    free(s->kv);
    free_pair(s, s->q_dev, s->q_host);
    free_pair(s, s->out_dev, s->out_host);
    if (s->len_dev)
        ha_mem_free(s->rt, s->len_dev);
    float *scratch[] = {s->x, s->xn, s->qkv, s->tmp, s->gu, s->px, s->pxn, s->pbig,
                        s->ptmp, s->pq, s->pk, s->pv, s->pattn, s->kpack, s->scores};
    for (size_t i = 0; i < sizeof(scratch) / sizeof(scratch[0]); i++)
        free(scratch[i]);
    ha_cache_destroy(s->cache);
    ha_plan_destroy(s->plan);
    if (s->own_rt)
        ha_runtime_close(s->rt);
    free(s->sparse);
    free(s);
}

void lm_session_reset(lm_session *s)
{
    if (s)
        s->len = 0;
}

int64_t lm_session_length(const lm_session *s)
{
    return s ? s->len : 0;
}

int64_t lm_session_capacity(const lm_session *s)
{
    return s ? s->n_max : 0;
}

void lm_session_set_qkv_hook(lm_session *s, lm_qkv_hook fn, void *user)
{
    if (!s)
        return;
    s->hook = fn;
    s->hook_user = fn ? user : NULL;
}

ha_status lm_session_kv(const lm_session *s, int32_t layer, ha_kv *out)
{
    lm_clear_error();
    if (!s || !out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_kv: %s is NULL", !s ? "s" : "out");
    const lm_config *c = &s->m->cfg;
    if (layer < 0 || layer >= c->num_layers)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_session_kv: layer %d is outside [0, %d)", layer, c->num_layers);
    memset(out, 0, sizeof(*out));
    out->k = s->kv[layer].k_dev;
    out->v = s->kv[layer].v_dev;
    out->dtype = HA_F32;
    out->stride_head = s->n_max * c->head_dim;
    out->stride_seq = c->num_kv_heads * out->stride_head;
    out->stride_token = c->head_dim;
    out->page_size = 0;
    out->capacity = s->n_max;
    return HA_OK;
}

ha_runtime *lm_session_runtime(const lm_session *s)
{
    return s ? s->rt : NULL;
}

ha_plan *lm_session_plan(const lm_session *s)
{
    return s ? s->plan : NULL;
}

ha_cache *lm_session_cache(const lm_session *s)
{
    return s ? s->cache : NULL;
}

ha_status lm_session_upload_kv(lm_session *s, int32_t l, int64_t pos, int64_t count)
{
    if (s->host_mem || count == 0)
        return HA_OK;
    const lm_config *c = &s->m->cfg;
    const int64_t d = c->head_dim;
    /* the backend may still be reading the cache for a queued call */
    ha_status st = ha_synchronize(s->rt, NULL);
    if (st != HA_OK)
        return lm_fail_ha(st, "ha_synchronize");
    for (int64_t h = 0; h < c->num_kv_heads; h++) {
        size_t off = (size_t)((h * s->n_max + pos) * d), bytes = (size_t)(count * d) * sizeof(float);
        if ((st = ha_mem_copy(s->rt, (float *)s->kv[l].k_dev + off, s->kv[l].k + off, bytes,
                              HA_COPY_HOST_TO_BACKEND)) != HA_OK ||
            (st = ha_mem_copy(s->rt, (float *)s->kv[l].v_dev + off, s->kv[l].v + off, bytes,
                              HA_COPY_HOST_TO_BACKEND)) != HA_OK)
            return lm_fail_ha(st, "ha_mem_copy (KV rows)");
    }
    return HA_OK;
}

ha_status lm_session_set_length(lm_session *s, int64_t n)
{
    int32_t v = (int32_t)n;
    if (s->host_mem) {
        memcpy(s->len_dev, &v, sizeof(v));
        return HA_OK;
    }
    ha_status st = ha_synchronize(s->rt, NULL);
    if (st == HA_OK)
        st = ha_mem_copy(s->rt, s->len_dev, &v, sizeof(v), HA_COPY_HOST_TO_BACKEND);
    return st == HA_OK ? HA_OK : lm_fail_ha(st, "ha_mem_copy (length)");
}
