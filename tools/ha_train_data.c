/*
 * ha_train_data.c — capture of keys/queries through the runner's q/k/v hook, and the target
 * thresholds (the K-th largest candidate logit of each row and level).
 */
#include "ha_train_data.h"

#include "ha_shared.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct capture_ctx {
    tr_window *w;
    const tr_data_geom *g;
    const int32_t *row_of; /* [n]: row index of a position, or -1 */
    int32_t *sparse_of;    /* model layer → sparse index or -1 (size 1024) */
} capture_ctx;

float tr_dot(const float *a, const float *b, int32_t d)
{
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int32_t e = 0; e < d; e++)
        acc += a[e] * b[e];
    return acc;
}

static void capture_hook(void *user, int32_t layer, int64_t pos, int64_t count, const float *q, const float *k,
                         const float *v)
{
    (void)v;
    capture_ctx *c = user;
    if (layer < 0 || layer >= 1024 || c->sparse_of[layer] < 0)
        return;
    const tr_data_geom *g = c->g;
    const int32_t sl = c->sparse_of[layer], d = g->head_dim;
    tr_window *w = c->w;
    for (int64_t t = 0; t < count; t++) {
        const int64_t p = pos + t;
        if (p >= w->n)
            return;
        for (int32_t h = 0; h < g->kv_heads; h++)
            memcpy(w->k[sl] + ((size_t)h * (size_t)w->n + (size_t)p) * (size_t)d,
                   k + ((size_t)t * (size_t)g->kv_heads + (size_t)h) * (size_t)d, (size_t)d * sizeof(float));
        const int32_t r = c->row_of[p];
        if (r < 0)
            continue;
        for (int32_t h = 0; h < g->q_heads; h++)
            memcpy(w->q[sl] + ((size_t)h * (size_t)w->rows + (size_t)r) * (size_t)d,
                   q + ((size_t)t * (size_t)g->q_heads + (size_t)h) * (size_t)d, (size_t)d * sizeof(float));
    }
}

float tr_kth_largest(float *a, int64_t n, int64_t k)
{
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        /* median of three as pivot, Hoare-style partition into ≥ pivot | ≤ pivot */
        const int64_t mid = lo + (hi - lo) / 2;
        float x = a[lo], y = a[mid], z = a[hi];
        const float pivot = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot)
                i++;
            while (a[j] < pivot)
                j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break; /* a[j+1 .. i-1] all equal the pivot */
    }
    return a[want];
}

int64_t tr_level_count(const tr_data_geom *g, int32_t level, int64_t len, int64_t cand)
{
    int64_t k = g->frac[level] > 0.0 ? ha_heavy_for_length(len, g->frac[level], 0) : g->topk;
    return k < 1 ? 1 : (k > cand ? cand : k);
}

/* Thresholds of one row: per level the K-th largest candidate logit (buf: scratch of end − begin). */
static void row_thresholds(const tr_data_geom *g, const float *qi, const float *kh, int64_t begin, int64_t end,
                           int64_t len, float *out, float *buf)
{
    const int32_t d = g->head_dim;
    const int64_t cand = end - begin;
    for (int64_t j = begin; j < end; j++)
        buf[j - begin] = tr_dot(qi, kh + (size_t)j * (size_t)d, d);
    /* levels by decreasing K: each selection narrows the prefix the next one searches */
    int32_t order[TR_MAX_LEVELS];
    int64_t count[TR_MAX_LEVELS];
    for (int32_t l = 0; l < g->n_levels; l++) {
        count[l] = tr_level_count(g, l, len, cand);
        int32_t at = l;
        while (at > 0 && count[order[at - 1]] < count[l]) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = l;
    }
    int64_t prefix = cand;
    for (int32_t a = 0; a < g->n_levels; a++) {
        const int32_t l = order[a];
        out[l] = tr_kth_largest(buf, prefix, count[l]);
        prefix = count[l];
    }
}

int tr_window_capture(tr_window *w, lm_session *s, const tr_data_geom *g, const int32_t *tokens, int64_t n,
                      const int32_t *pos, int32_t rows)
{
    memset(w, 0, sizeof(*w));
    w->n = n;
    w->rows = rows;
    const size_t d = (size_t)g->head_dim;
    w->pos = malloc((size_t)rows * sizeof(int32_t));
    w->k = calloc((size_t)g->n_sparse, sizeof(float *));
    w->q = calloc((size_t)g->n_sparse, sizeof(float *));
    w->thr = calloc((size_t)g->n_sparse, sizeof(float *));
    int32_t *row_of = malloc((size_t)n * sizeof(int32_t));
    int32_t sparse_of[1024];
    if (!w->pos || !w->k || !w->q || !w->thr || !row_of)
        goto oom;
    for (int32_t l = 0; l < g->n_sparse; l++) {
        w->k[l] = malloc((size_t)g->kv_heads * (size_t)n * d * sizeof(float));
        w->q[l] = malloc((size_t)g->q_heads * (size_t)rows * d * sizeof(float));
        w->thr[l] = malloc((size_t)g->q_heads * (size_t)rows * (size_t)g->n_levels * sizeof(float));
        if (!w->k[l] || !w->q[l] || !w->thr[l])
            goto oom;
    }
    memcpy(w->pos, pos, (size_t)rows * sizeof(int32_t));
    for (int64_t p = 0; p < n; p++)
        row_of[p] = -1;
    for (int32_t r = 0; r < rows; r++)
        row_of[pos[r]] = r;
    for (int32_t l = 0; l < 1024; l++)
        sparse_of[l] = -1;
    for (int32_t l = 0; l < g->n_sparse; l++)
        sparse_of[g->layers[l]] = l;

    capture_ctx ctx = {w, g, row_of, sparse_of};
    lm_session_reset(s);
    lm_session_set_qkv_hook(s, capture_hook, &ctx);
    ha_status st = lm_prefill(s, tokens, n, LM_LOGITS_NONE, NULL);
    lm_session_set_qkv_hook(s, NULL, NULL);
    free(row_of);
    row_of = NULL;
    if (st != HA_OK) {
        fprintf(stderr, "ha-train: prefill failed: %s\n", lm_last_error());
        tr_window_free(w, g);
        return -1;
    }

    const int32_t group = g->q_heads / g->kv_heads;
    const int64_t jobs = (int64_t)g->n_sparse * g->q_heads * rows;
    int failed = 0;
#pragma omp parallel
    {
        float *buf = malloc((size_t)n * sizeof(float));
        if (!buf) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 64)
        for (int64_t job = 0; job < jobs; job++) {
            if (!buf)
                continue;
            const int32_t r = (int32_t)(job % rows), h = (int32_t)(job / rows % g->q_heads);
            const int32_t l = (int32_t)(job / rows / g->q_heads);
            const float *qi = w->q[l] + ((size_t)h * (size_t)rows + (size_t)r) * d;
            const float *kh = w->k[l] + (size_t)(h / group) * (size_t)n * d;
            const int64_t len = (int64_t)w->pos[r] + 1;
            row_thresholds(g, qi, kh, g->sink, len - g->local, len,
                           w->thr[l] + ((size_t)h * (size_t)rows + (size_t)r) * (size_t)g->n_levels, buf);
        }
        free(buf);
    }
    if (failed)
        goto oom;
    return 0;

oom:
    free(row_of);
    fprintf(stderr, "ha-train: out of memory capturing a window\n");
    tr_window_free(w, g);
    return -1;
}

void tr_window_free(tr_window *w, const tr_data_geom *g)
{
    for (int32_t l = 0; l < g->n_sparse; l++) {
        if (w->k)
            free(w->k[l]);
        if (w->q)
            free(w->q[l]);
        if (w->thr)
            free(w->thr[l]);
    }
    free(w->k);
    free(w->q);
    free(w->thr);
    free(w->pos);
    memset(w, 0, sizeof(*w));
}
