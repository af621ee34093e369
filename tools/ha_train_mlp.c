/*
 * ha_train_mlp.c — forward, backward and Adam of one mapping-function MLP (see ha_train_mlp.h).
 * The inner loops are unit-stride multiply-adds over the output (forward: transposed weights) or
 * input (backward) dimension so that -O3 vectorizes them; the order of every sum is fixed.
 */
#include "ha_train_mlp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static float uniform_pm1(uint64_t *s)
{
    return (float)((double)(splitmix64(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

int tr_mlp_init(tr_mlp *f, int32_t depth, int32_t in, int32_t hidden, int32_t bits, uint64_t seed)
{
    memset(f, 0, sizeof(*f));
    if (depth < 1 || depth > TR_MAX_DEPTH)
        return -1;
    f->depth = depth;
    for (int32_t i = 0; i <= depth; i++)
        f->dims[i] = i == 0 ? in : (i == depth ? bits : hidden);
    size_t n = 0;
    for (int32_t i = 0; i < depth; i++) {
        f->w_off[i] = n;
        n += (size_t)f->dims[i + 1] * (size_t)f->dims[i];
        f->b_off[i] = n;
        n += (size_t)f->dims[i + 1];
    }
    f->n_params = n;
    f->p = malloc(n * sizeof(float));
    f->g = calloc(n, sizeof(float));
    f->m = calloc(n, sizeof(float));
    f->v = calloc(n, sizeof(float));
    if (!f->p || !f->g || !f->m || !f->v) {
        tr_mlp_free(f);
        return -1;
    }
    uint64_t s = seed;
    for (int32_t i = 0; i < depth; i++) {
        float bound = 1.0f / sqrtf((float)f->dims[i]);
        size_t end = i + 1 < depth ? f->w_off[i + 1] : n;
        for (size_t k = f->w_off[i]; k < end; k++)
            f->p[k] = bound * uniform_pm1(&s);
    }
    return 0;
}

void tr_mlp_free(tr_mlp *f)
{
    free(f->p);
    free(f->g);
    free(f->m);
    free(f->v);
    memset(f, 0, sizeof(*f));
}

static int32_t max_width(const tr_mlp *f)
{
    int32_t m = 0;
    for (int32_t i = 0; i <= f->depth; i++)
        m = f->dims[i] > m ? f->dims[i] : m;
    return m;
}

int tr_mlp_work_init(tr_mlp_work *w, const tr_mlp *f, int64_t max_rows)
{
    memset(w, 0, sizeof(*w));
    w->max_rows = max_rows;
    size_t width = (size_t)max_width(f);
    int ok = 1;
    for (int32_t i = 0; i < f->depth; i++) {
        w->pre[i] = malloc((size_t)max_rows * (size_t)f->dims[i + 1] * sizeof(float));
        w->act[i] = malloc((size_t)max_rows * (size_t)f->dims[i + 1] * sizeof(float));
        ok = ok && w->pre[i] && w->act[i];
    }
    w->d_a = malloc((size_t)max_rows * width * sizeof(float));
    w->d_b = malloc((size_t)max_rows * width * sizeof(float));
    w->wt = malloc(width * width * sizeof(float));
    if (!ok || !w->d_a || !w->d_b || !w->wt) {
        tr_mlp_work_free(w);
        return -1;
    }
    return 0;
}

void tr_mlp_work_free(tr_mlp_work *w)
{
    for (int32_t i = 0; i < TR_MAX_DEPTH; i++) {
        free(w->pre[i]);
        free(w->act[i]);
    }
    free(w->d_a);
    free(w->d_b);
    free(w->wt);
    memset(w, 0, sizeof(*w));
}

const float *tr_mlp_forward(const tr_mlp *f, tr_mlp_work *w, const float *x, int64_t rows)
{
    const float *a = x;
    for (int32_t i = 0; i < f->depth; i++) {
        const int32_t in = f->dims[i], out = f->dims[i + 1];
        const float *W = f->p + f->w_off[i], *b = f->p + f->b_off[i];
        float *restrict wt = w->wt;
        for (int32_t o = 0; o < out; o++)
            for (int32_t k = 0; k < in; k++)
                wt[(size_t)k * out + o] = W[(size_t)o * in + k];
        float *pre = w->pre[i], *act = w->act[i];
        const int last = i == f->depth - 1;
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict ar = a + (size_t)r * in;
            float *restrict y = pre + (size_t)r * out;
            memcpy(y, b, (size_t)out * sizeof(float));
            for (int32_t k = 0; k < in; k++) {
                const float s = ar[k];
                const float *restrict wk = wt + (size_t)k * out;
                for (int32_t o = 0; o < out; o++)
                    y[o] += s * wk[o];
            }
            float *restrict z = act + (size_t)r * out;
            if (last)
                for (int32_t o = 0; o < out; o++)
                    z[o] = tanhf(y[o]);
            else
                for (int32_t o = 0; o < out; o++)
                    z[o] = y[o] * tr_sigmoid(y[o]);
        }
        a = act;
    }
    return w->act[f->depth - 1];
}

void tr_mlp_backward(tr_mlp *f, tr_mlp_work *w, const float *x, int64_t rows, const float *dt)
{
    const int32_t L = f->depth;
    const int32_t bits = f->dims[L];
    float *d = w->d_a, *d_next = w->d_b;
    const float *t = w->act[L - 1];
    for (size_t e = 0; e < (size_t)rows * (size_t)bits; e++)
        d[e] = dt[e] * (1.0f - t[e] * t[e]);
    for (int32_t i = L - 1; i >= 0; i--) {
        const int32_t in = f->dims[i], out = f->dims[i + 1];
        const float *a = i == 0 ? x : w->act[i - 1];
        const float *W = f->p + f->w_off[i];
        float *gW = f->g + f->w_off[i], *gb = f->g + f->b_off[i];
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict ar = a + (size_t)r * in;
            const float *restrict dr = d + (size_t)r * out;
            for (int32_t o = 0; o < out; o++) {
                const float s = dr[o];
                float *restrict go = gW + (size_t)o * in;
                for (int32_t k = 0; k < in; k++)
                    go[k] += s * ar[k];
                gb[o] += s;
            }
        }
        if (i == 0)
            break;
        /* dL/d(pre of layer i-1) = (d · W) ⊙ silu'(pre) */
        const float *pre = w->pre[i - 1];
        for (int64_t r = 0; r < rows; r++) {
            const float *restrict dr = d + (size_t)r * out;
            float *restrict da = d_next + (size_t)r * in;
            memset(da, 0, (size_t)in * sizeof(float));
            for (int32_t o = 0; o < out; o++) {
                const float s = dr[o];
                const float *restrict wo = W + (size_t)o * in;
                for (int32_t k = 0; k < in; k++)
                    da[k] += s * wo[k];
            }
            const float *restrict z = pre + (size_t)r * in;
            for (int32_t k = 0; k < in; k++) {
                const float sg = tr_sigmoid(z[k]);
                da[k] *= sg * (1.0f + z[k] * (1.0f - sg));
            }
        }
        float *tmp = d;
        d = d_next;
        d_next = tmp;
    }
}

void tr_mlp_zero_grad(tr_mlp *f)
{
    memset(f->g, 0, f->n_params * sizeof(float));
}

void tr_mlp_adam(tr_mlp *f, float lr, int64_t t)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    const float c1 = 1.0f / (1.0f - powf(b1, (float)t));
    const float c2 = 1.0f / (1.0f - powf(b2, (float)t));
    float *restrict p = f->p, *restrict g = f->g, *restrict m = f->m, *restrict v = f->v;
    for (size_t k = 0; k < f->n_params; k++) {
        m[k] = b1 * m[k] + (1.0f - b1) * g[k];
        v[k] = b2 * v[k] + (1.0f - b2) * g[k] * g[k];
        p[k] -= lr * (m[k] * c1) / (sqrtf(v[k] * c2) + eps);
    }
}
