/*
 * ha_eval_learned.c — the kept sets of the runtime itself, through the public API only, so that
 * ha-eval measures what a host gets: the window's keys enter a key-code cache (ha_cache_encode_keys),
 * the query rows are encoded in one batch (ha_encode_queries), and each row selects with ha_match at
 * its own length (row i sees keys 0..i), one plan per budget.
 */
#include <stdlib.h>
#include <string.h>

#include "ha_eval.h"

struct eval_learned {
    ha_runtime *rt;
    const ha_weights *w;
    ha_weights_info info;
    const eval_capture *c;
    int32_t num_budgets;
    ha_plan *plans[EVAL_MAX_BUDGETS];
    ha_cache *cache;
    int32_t *seq_end;  /* backend: [1] = n                         */
    int32_t *row_lens; /* backend: [rows], row r has length begin+r+1 */
    float *k;          /* backend: one layer's K [Hkv, n, d]        */
    float *q;          /* backend: one layer's query rows [rows, Hq, d] */
    uint32_t *codes;   /* backend: [rows, Hq, words]                */
    int32_t *indices;  /* backend: [rows, S, max_kept] (largest budget) */
    int32_t *counts;   /* backend: [rows, S]                        */
};

static ha_status fail(ha_status st, const char *what)
{
    fprintf(stderr, "ha-eval: %s failed: %s: %s\n", what, ha_status_string(st), ha_last_error());
    return st;
}

static ha_status alloc_copy(ha_runtime *rt, void **dst, const void *src, size_t bytes)
{
    ha_status st = ha_mem_alloc(rt, bytes, dst);
    if (st != HA_OK)
        return fail(st, "ha_mem_alloc");
    if (src && (st = ha_mem_copy(rt, *dst, src, bytes, HA_COPY_HOST_TO_BACKEND)) != HA_OK)
        return fail(st, "ha_mem_copy");
    return HA_OK;
}

static ha_kv layer_kv(const eval_learned *e)
{
    const eval_capture *c = e->c;
    ha_kv kv;
    memset(&kv, 0, sizeof(kv));
    kv.k = e->k;
    kv.v = e->k; /* ha_match and ha_cache_encode_keys read keys only */
    kv.dtype = HA_F32;
    kv.stride_head = c->n * c->head_dim;
    kv.stride_seq = c->kv_heads * kv.stride_head;
    kv.stride_token = c->head_dim;
    kv.capacity = c->n;
    return kv;
}

int eval_learned_layer_is_sparse(const eval_learned *e, int32_t layer)
{
    return ha_weights_layer_is_dense(e->w, layer) == 0;
}

const char *eval_learned_mode(const eval_learned *e)
{
    return e->info.mode == HA_MODE_GROUP ? "group" : "paper";
}

int32_t eval_learned_bits(const eval_learned *e)
{
    return e->info.bits;
}

void eval_learned_close(eval_learned *e)
{
    if (!e)
        return;
    void *buffers[] = {e->seq_end, e->row_lens, e->k, e->q, e->codes, e->indices, e->counts};
    for (size_t i = 0; i < sizeof(buffers) / sizeof(buffers[0]); i++)
        if (buffers[i])
            ha_mem_free(e->rt, buffers[i]);
    ha_cache_destroy(e->cache);
    for (int32_t b = 0; b < e->num_budgets; b++)
        ha_plan_destroy(e->plans[b]);
    free(e);
}

ha_status eval_learned_open(ha_runtime *rt, const ha_weights *w, const eval_capture *c, const eval_budget *budgets,
                            int32_t num_budgets, eval_window_rule rule, eval_learned **out)
{
    *out = NULL;
    eval_learned *e = calloc(1, sizeof(*e));
    if (!e)
        return HA_ERR_OUT_OF_MEMORY;
    e->rt = rt;
    e->c = c;
    e->w = w;
    ha_status st;
    if ((st = ha_weights_get_info(e->w, &e->info)) != HA_OK) {
        eval_learned_close(e);
        return fail(st, "ha_weights_get_info");
    }
    if (e->info.num_layers != c->layers || e->info.q_heads != c->q_heads || e->info.head_dim != c->head_dim) {
        fprintf(stderr, "ha-eval: the weights have %d layers, %d query heads, head_dim %d; the model %d, %d, %d\n",
                e->info.num_layers, e->info.q_heads, e->info.head_dim, c->layers, c->q_heads,
                c->head_dim);
        eval_learned_close(e);
        return HA_ERR_SHAPE;
    }
    const int64_t rows = c->row_end - c->row_begin;
    for (int32_t b = 0; b < num_budgets; b++) {
        ha_plan_config pc;
        ha_plan_config_init(&pc, (int32_t)rows, c->n, c->q_heads, c->kv_heads, c->head_dim);
        pc.sink = rule.sink;
        pc.local = rule.local;
        pc.heavy_fraction = budgets[b].fraction;
        if ((st = ha_plan_create(rt, e->w, &pc, &e->plans[b])) != HA_OK) {
            eval_learned_close(e);
            return fail(st, "ha_plan_create");
        }
        e->num_budgets = b + 1;
    }
    ha_cache_config cc = {.struct_size = sizeof(cc), .page_size = 0, .max_batch = 1, .max_tokens = c->n};
    if ((st = ha_cache_create(rt, e->w, &cc, &e->cache)) != HA_OK) {
        eval_learned_close(e);
        return fail(st, "ha_cache_create");
    }

    int32_t n32 = (int32_t)c->n;
    int32_t *lens = malloc((size_t)rows * sizeof(int32_t));
    if (!lens) {
        eval_learned_close(e);
        return HA_ERR_OUT_OF_MEMORY;
    }
    for (int64_t r = 0; r < rows; r++)
        lens[r] = (int32_t)(c->row_begin + r + 1);
    int64_t max_kept = 0;
    for (int32_t b = 0; b < num_budgets; b++)
        if (ha_plan_max_kept(e->plans[b]) > max_kept)
            max_kept = ha_plan_max_kept(e->plans[b]);
    const int32_t S = ha_plan_selection_heads(e->plans[0]);
    st = alloc_copy(rt, (void **)&e->seq_end, &n32, sizeof(n32));
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->row_lens, lens, (size_t)rows * sizeof(int32_t));
    free(lens);
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->k, NULL, (size_t)(c->kv_heads * c->n * c->head_dim) * sizeof(float));
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->q, NULL, (size_t)(rows * c->q_heads * c->head_dim) * sizeof(float));
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->codes, NULL, (size_t)(rows * c->q_heads * e->info.words) * sizeof(uint32_t));
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->indices, NULL, (size_t)(rows * S * max_kept) * sizeof(int32_t));
    if (st == HA_OK)
        st = alloc_copy(rt, (void **)&e->counts, NULL, (size_t)(rows * S) * sizeof(int32_t));
    if (st != HA_OK) {
        eval_learned_close(e);
        return st;
    }
    *out = e;
    return HA_OK;
}

void eval_learned_sets_free(eval_learned_sets *sets)
{
    for (int32_t b = 0; b < EVAL_MAX_BUDGETS; b++) {
        free(sets->indices[b]);
        free(sets->counts[b]);
    }
    memset(sets, 0, sizeof(*sets));
}

ha_status eval_learned_select(eval_learned *e, int32_t layer, eval_learned_sets *sets)
{
    const eval_capture *c = e->c;
    const int64_t rows = c->row_end - c->row_begin;
    const int32_t S = ha_plan_selection_heads(e->plans[0]), words = e->info.words;
    eval_learned_sets_free(sets);
    sets->selection_heads = S;

    /* Keys: the whole window's codes, as prefill would have encoded them. */
    ha_status st = ha_mem_copy(e->rt, e->k, c->k[layer], (size_t)(c->kv_heads * c->n * c->head_dim) * sizeof(float),
                               HA_COPY_HOST_TO_BACKEND);
    if (st != HA_OK)
        return fail(st, "ha_mem_copy (keys)");
    ha_kv kv = layer_kv(e);
    if ((st = ha_cache_encode_keys(e->plans[0], e->cache, layer, &kv, 1, e->seq_end, (int32_t)c->n, NULL)) != HA_OK)
        return fail(st, "ha_cache_encode_keys");
    /* Queries: every row in one batch. */
    if ((st = ha_mem_copy(e->rt, e->q, c->q[layer], (size_t)(rows * c->q_heads * c->head_dim) * sizeof(float),
                          HA_COPY_HOST_TO_BACKEND)) != HA_OK)
        return fail(st, "ha_mem_copy (queries)");
    ha_tensor3 q = {.data = e->q, .dtype = HA_F32, .stride_batch = (int64_t)c->q_heads * c->head_dim,
                    .stride_head = c->head_dim};
    if ((st = ha_encode_queries(e->plans[0], layer, &q, (int32_t)rows, e->codes, NULL)) != HA_OK)
        return fail(st, "ha_encode_queries");

    for (int32_t b = 0; b < e->num_budgets; b++) {
        const int64_t mk = ha_plan_max_kept(e->plans[b]);
        sets->max_kept[b] = mk;
        sets->indices[b] = malloc((size_t)(rows * S * mk) * sizeof(int32_t));
        sets->counts[b] = malloc((size_t)(rows * S) * sizeof(int32_t));
        if (!sets->indices[b] || !sets->counts[b])
            return HA_ERR_OUT_OF_MEMORY;
        /* One row at a time: each has its own length, and the cache holds one sequence. */
        for (int64_t r = 0; r < rows; r++)
            if ((st = ha_match(e->plans[b], e->cache, layer, e->codes + r * c->q_heads * words, &kv, 1,
                               e->row_lens + r, e->indices + r * S * mk, e->counts + r * S, NULL)) != HA_OK)
                return fail(st, "ha_match");
        if ((st = ha_synchronize(e->rt, NULL)) != HA_OK ||
            (st = ha_mem_copy(e->rt, sets->indices[b], e->indices, (size_t)(rows * S * mk) * sizeof(int32_t),
                              HA_COPY_BACKEND_TO_HOST)) != HA_OK ||
            (st = ha_mem_copy(e->rt, sets->counts[b], e->counts, (size_t)(rows * S) * sizeof(int32_t),
                              HA_COPY_BACKEND_TO_HOST)) != HA_OK)
            return fail(st, "copying the kept sets back");
        /* The runtime's count must follow the budget rule (SPEC §1.3). */
        for (int64_t r = 0; r < rows; r++) {
            int64_t expect = ha_plan_kept_for_length(e->plans[b], c->row_begin + r + 1);
            for (int32_t s = 0; s < S; s++)
                if (sets->counts[b][r * S + s] != expect) {
                    fprintf(stderr, "ha-eval: ha_match kept %d tokens at length %lld, the budget says %lld\n",
                            sets->counts[b][r * S + s], (long long)(c->row_begin + r + 1), (long long)expect);
                    return HA_ERR_BACKEND;
                }
        }
    }
    return HA_OK;
}
