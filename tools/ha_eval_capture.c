/*
 * ha_eval_capture.c — one window of the evaluation text through the model runner's dense prefill,
 * keeping what the quality measurements need: post-RoPE q of the query rows, k and v of every
 * position, for the layers asked for.
 */
#include <stdlib.h>
#include <string.h>

#include "ha_eval.h"

static void copy_rows(float *dst, const float *src, int64_t pos, int64_t count, int32_t heads, int32_t d, int64_t n)
{
    /* src: [count, heads, d] token-major; dst: [heads, n, d] head-major */
    for (int64_t t = 0; t < count; t++)
        for (int32_t h = 0; h < heads; h++)
            memcpy(dst + ((int64_t)h * n + pos + t) * d, src + (t * heads + h) * d, (size_t)d * sizeof(float));
}

static void capture_hook(void *user, int32_t layer, int64_t pos, int64_t count, const float *q, const float *k,
                         const float *v)
{
    eval_capture *c = user;
    if (!c->wanted[layer])
        return;
    const int32_t d = c->head_dim;
    copy_rows(c->k[layer], k, pos, count, c->kv_heads, d, c->n);
    copy_rows(c->v[layer], v, pos, count, c->kv_heads, d, c->n);
    int64_t lo = pos > c->row_begin ? pos : c->row_begin;
    int64_t hi = pos + count < c->row_end ? pos + count : c->row_end;
    const int64_t row_floats = (int64_t)c->q_heads * d;
    for (int64_t t = lo; t < hi; t++)
        memcpy(c->q[layer] + (t - c->row_begin) * row_floats, q + (t - pos) * row_floats,
               (size_t)row_floats * sizeof(float));
}

void eval_capture_free(eval_capture *c)
{
    if (!c)
        return;
    for (int32_t l = 0; c->q && l < c->layers; l++) {
        free(c->q[l]);
        free(c->k[l]);
        free(c->v[l]);
    }
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->tokens);
    memset(c, 0, sizeof(*c));
}

ha_status eval_capture_window(const lm_model *m, const char *text, size_t text_len, int64_t window,
                              int64_t row_begin, int64_t row_end, const uint8_t *wanted, eval_capture *out)
{
    memset(out, 0, sizeof(*out));
    const lm_config *cfg = lm_model_config(m);
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    ha_status st = lm_tokenize(lm_model_tokenizer(m), text, text_len, &ids, &n_ids);
    if (st != HA_OK) {
        fprintf(stderr, "ha-eval: lm_tokenize failed: %s\n", lm_last_error());
        return st;
    }
    if (n_ids < window - 1 || window > cfg->max_positions || row_begin < 0 || row_end > window ||
        row_begin >= row_end) {
        fprintf(stderr, "ha-eval: the text has %lld tokens; a window of %lld (model: %d positions) with rows "
                        "[%lld, %lld) does not fit\n",
                (long long)n_ids, (long long)window, cfg->max_positions, (long long)row_begin, (long long)row_end);
        free(ids);
        return HA_ERR_INVALID_ARGUMENT;
    }

    eval_capture *c = out;
    c->layers = cfg->num_layers;
    c->q_heads = cfg->num_q_heads;
    c->kv_heads = cfg->num_kv_heads;
    c->head_dim = cfg->head_dim;
    c->n = window;
    c->row_begin = row_begin;
    c->row_end = row_end;
    c->wanted = wanted;
    c->tokens = malloc((size_t)window * sizeof(int32_t));
    c->q = calloc((size_t)c->layers, sizeof(float *));
    c->k = calloc((size_t)c->layers, sizeof(float *));
    c->v = calloc((size_t)c->layers, sizeof(float *));
    int ok = c->tokens && c->q && c->k && c->v;
    for (int32_t l = 0; ok && l < c->layers; l++) {
        if (!wanted[l])
            continue;
        c->q[l] = malloc((size_t)((row_end - row_begin) * c->q_heads * c->head_dim) * sizeof(float));
        c->k[l] = malloc((size_t)(window * c->kv_heads * c->head_dim) * sizeof(float));
        c->v[l] = malloc((size_t)(window * c->kv_heads * c->head_dim) * sizeof(float));
        ok = c->q[l] && c->k[l] && c->v[l];
    }
    if (!ok) {
        free(ids);
        eval_capture_free(c);
        fprintf(stderr, "ha-eval: out of memory capturing the window\n");
        return HA_ERR_OUT_OF_MEMORY;
    }
    /* BOS starts every sequence the model saw in training (SPEC's fixtures do the same). */
    int64_t off = 0;
    if (cfg->bos_id >= 0)
        c->tokens[off++] = cfg->bos_id;
    memcpy(c->tokens + off, ids, (size_t)(window - off) * sizeof(int32_t));
    free(ids);

    lm_session_config sc;
    lm_session_config_init(&sc, window);
    lm_session *s;
    if ((st = lm_session_create(m, &sc, &s)) != HA_OK) {
        fprintf(stderr, "ha-eval: lm_session_create failed: %s\n", lm_last_error());
        eval_capture_free(c);
        return st;
    }
    lm_session_set_qkv_hook(s, capture_hook, c);
    st = lm_prefill(s, c->tokens, window, LM_LOGITS_NONE, NULL);
    if (st != HA_OK) {
        fprintf(stderr, "ha-eval: lm_prefill failed: %s\n", lm_last_error());
        eval_capture_free(c);
    }
    lm_session_free(s);
    return st;
}
