/*
 * lm_forward.c — the Llama forward pass in fp32: RMSNorm, rotate-half RoPE, grouped-query attention,
 * SwiGLU, tied or separate output projection.
 *
 *   prefill:  slices of up to `chunk` tokens; every matrix product over the whole slice; causal dense
 *             attention here on the CPU (per query head and block of LM_QUERY_BLOCK queries: scores
 *             against the packed keys, softmax, times V), then the new K/V rows go to the backend and,
 *             for sparse layers, their key codes into the hashattn cache.
 *   decode:   one token; attention through the public API — ha_decode_step for layers the mapping
 *             weights mark sparse, ha_dense_attend otherwise — on the session's KV cache.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "lm_internal.h"

/* ---- elementwise pieces -------------------------------------------------------------------------- */

/* out = x / rms(x) * w, as transformers' LlamaRMSNorm (the mean square in double here). */
static void rms_norm(const float *x, const float *w, int64_t n, float eps, float *out)
{
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * (double)x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = w[i] * (x[i] * r);
}

/* Rotate-half RoPE of heads vectors of dim d at position pos, from src into dst (may alias). */
static void rope(const lm_model *m, int64_t pos, const float *src, float *dst, int64_t heads)
{
    const int64_t d = m->cfg.head_dim, half = d / 2;
    const float *cs = m->rope_cos + pos * half, *sn = m->rope_sin + pos * half;
    for (int64_t h = 0; h < heads; h++) {
        const float *a = src + h * d;
        float *o = dst + h * d;
        for (int64_t i = 0; i < half; i++) {
            float x1 = a[i], x2 = a[i + half];
            o[i] = x1 * cs[i] - x2 * sn[i];
            o[i + half] = x2 * cs[i] + x1 * sn[i];
        }
    }
}

static void add_into(float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] += y[i];
}

/* ---- prefill -------------------------------------------------------------------------------------- */

/* Packs keys [0, n) of every KV head of layer l into panels (Kᵀ for the score product), zero past n. */
static void pack_keys(lm_session *s, int32_t l, int64_t n)
{
    const int64_t d = s->m->cfg.head_dim, Hkv = s->m->cfg.num_kv_heads;
    const int64_t panels = (n + LM_NR - 1) / LM_NR;
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t h = 0; h < Hkv; h++)
        for (int64_t j = 0; j < panels; j++) {
            const float *k = s->kv[l].k + h * s->n_max * d;
            float *dst = s->kpack + h * s->n_pad * d + j * d * LM_NR;
            for (int64_t c = 0; c < LM_NR; c++) {
                int64_t t = j * LM_NR + c;
                for (int64_t p = 0; p < d; p++)
                    dst[p * LM_NR + c] = t < n ? k[t * d + p] : 0.0f;
            }
        }
}

/* Causal attention of the slice's queries (pq, positions pos0 ..) over keys [0, pos0 + count). */
static void prefill_attention(lm_session *s, int32_t l, int64_t pos0, int64_t count)
{
    const lm_config *c = &s->m->cfg;
    const lm_kernels *kern = s->m->kern;
    const int64_t d = c->head_dim, Hq = c->num_q_heads, group = c->num_q_heads / c->num_kv_heads;
    const int64_t blocks = (count + LM_QUERY_BLOCK - 1) / LM_QUERY_BLOCK, tasks = Hq * blocks;
    const float scale = 1.0f / sqrtf((float)d);
    pack_keys(s, l, pos0 + count);
    /* the last blocks see the most keys: hand them out first */
#pragma omp parallel for schedule(dynamic, 1) num_threads(s->threads)
    for (int64_t t = tasks - 1; t >= 0; t--) {
        const int64_t h = t % Hq, b = t / Hq, kvh = h / group;
        const int64_t i0 = b * LM_QUERY_BLOCK, rows = count - i0 < LM_QUERY_BLOCK ? count - i0 : LM_QUERY_BLOCK;
        const int64_t keys = pos0 + i0 + rows, ld = s->n_pad;
        float *sc = s->scores + (size_t)omp_get_thread_num() * LM_QUERY_BLOCK * (size_t)s->n_pad;
        const float *q = s->pq + i0 * Hq * d + h * d;
        kern->gemm(rows, keys, d, q, Hq * d, s->kpack + kvh * s->n_pad * d, LM_NR, d * LM_NR, sc, ld);
        float inv_sum[LM_QUERY_BLOCK];
        for (int64_t r = 0; r < rows; r++) {
            int64_t visible = pos0 + i0 + r + 1;
            float *row = sc + r * ld;
            inv_sum[r] = 1.0f / kern->softmax_row(row, visible, scale);
            memset(row + visible, 0, (size_t)(keys - visible) * sizeof(float));
        }
        float *o = s->pattn + i0 * Hq * d + h * d;
        kern->gemm(rows, d, keys, sc, ld, s->kv[l].v + kvh * s->n_max * d, d, LM_NR, o, Hq * d);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < d; i++)
                o[r * Hq * d + i] *= inv_sum[r];
    }
}

/* q/k/v of the slice: RoPE into pq/pk, v into pv, K/V rows into the cache. */
static void prefill_qkv(lm_session *s, int32_t l, int64_t pos0, int64_t count)
{
    const lm_config *c = &s->m->cfg;
    const int64_t d = c->head_dim, Hq = c->num_q_heads, Hkv = c->num_kv_heads, nqkv = (Hq + 2 * Hkv) * d;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++) {
        const float *row = s->pbig + i * nqkv;
        int64_t pos = pos0 + i;
        rope(s->m, pos, row, s->pq + i * Hq * d, Hq);
        rope(s->m, pos, row + Hq * d, s->pk + i * Hkv * d, Hkv);
        memcpy(s->pv + i * Hkv * d, row + (Hq + Hkv) * d, (size_t)(Hkv * d) * sizeof(float));
        for (int64_t h = 0; h < Hkv; h++) {
            memcpy(s->kv[l].k + (h * s->n_max + pos) * d, s->pk + (i * Hkv + h) * d, (size_t)d * sizeof(float));
            memcpy(s->kv[l].v + (h * s->n_max + pos) * d, s->pv + (i * Hkv + h) * d, (size_t)d * sizeof(float));
        }
    }
}

static void prefill_norm(lm_session *s, const float *w, int64_t count)
{
    const int64_t D = s->m->cfg.hidden_size;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++)
        rms_norm(s->px + i * D, w, D, s->m->cfg.rms_norm_eps, s->pxn + i * D);
}

static void prefill_residual(lm_session *s, int64_t count)
{
    const int64_t D = s->m->cfg.hidden_size;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < count; i++)
        add_into(s->px + i * D, s->ptmp + i * D, D);
}

/* One slice of at most s->chunk tokens at positions s->len ... */
static ha_status prefill_slice(lm_session *s, const int32_t *tokens, int64_t count, lm_logits_mode mode,
                               float *logits)
{
    const lm_model *m = s->m;
    const lm_config *c = &m->cfg;
    const lm_kernels *kern = m->kern;
    const int64_t D = c->hidden_size, d = c->head_dim, Hq = c->num_q_heads, I = c->intermediate_size;
    const int64_t pos0 = s->len;
    ha_status st;
    for (int64_t i = 0; i < count; i++)
        memcpy(s->px + i * D, m->embed + (int64_t)tokens[i] * D, (size_t)D * sizeof(float));
    if ((st = lm_session_set_length(s, pos0 + count)) != HA_OK)
        return st;

    for (int32_t l = 0; l < c->num_layers; l++) {
        const lm_layer *L = &m->layers[l];
        prefill_norm(s, L->attn_norm, count);
        lm_linear(kern, &L->qkv, count, s->pxn, D, s->pbig, L->qkv.n);
        prefill_qkv(s, l, pos0, count);
        if (s->hook)
            s->hook(s->hook_user, l, pos0, count, s->pq, s->pk, s->pv);
        if ((st = lm_session_upload_kv(s, l, pos0, count)) != HA_OK)
            return st;
        if (s->cache && s->sparse[l]) {
            ha_kv kv;
            lm_session_kv(s, l, &kv);
            if ((st = ha_cache_encode_keys(s->plan, s->cache, l, &kv, 1, s->len_dev, (int32_t)count, NULL)) != HA_OK)
                return lm_fail_ha(st, "lm_prefill: ha_cache_encode_keys");
        }
        prefill_attention(s, l, pos0, count);
        lm_linear(kern, &L->o, count, s->pattn, Hq * d, s->ptmp, D);
        prefill_residual(s, count);

        prefill_norm(s, L->ffn_norm, count);
        lm_linear(kern, &L->gate_up, count, s->pxn, D, s->pbig, 2 * I);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < count; i++)
            kern->silu_mul(s->pbig + i * 2 * I, s->pbig + i * 2 * I + I, I);
        lm_linear(kern, &L->down, count, s->pbig, 2 * I, s->ptmp, D);
        prefill_residual(s, count);
    }
    s->len = pos0 + count;

    if (mode == LM_LOGITS_ALL) {
        prefill_norm(s, m->final_norm, count);
        lm_linear(kern, &m->lm_head, count, s->pxn, D, logits, c->vocab_size);
    } else if (mode == LM_LOGITS_LAST) {
        rms_norm(s->px + (count - 1) * D, m->final_norm, D, c->rms_norm_eps, s->pxn);
        lm_linear(kern, &m->lm_head, 1, s->pxn, D, logits, c->vocab_size);
    }
    return HA_OK;
}

static ha_status check_tokens(const lm_session *s, const char *fn, const int32_t *tokens, int64_t n)
{
    const lm_config *c = &s->m->cfg;
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return lm_fail(HA_ERR_INVALID_ARGUMENT, "%s: token %lld = %d is outside [0, %d)", fn, (long long)i,
                           tokens[i], c->vocab_size);
    if (n > s->n_max - s->len)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "%s: %lld more tokens do not fit: %lld of %lld held", fn,
                       (long long)n, (long long)s->len, (long long)s->n_max);
    return HA_OK;
}

ha_status lm_prefill(lm_session *s, const int32_t *tokens, int64_t n, lm_logits_mode mode, float *logits)
{
    lm_clear_error();
    if (!s || (!tokens && n > 0) || n < 0)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_prefill: %s", n < 0 ? "n < 0" : "s or tokens is NULL");
    if (mode != LM_LOGITS_NONE && mode != LM_LOGITS_LAST && mode != LM_LOGITS_ALL)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_prefill: mode = %d is not an lm_logits_mode", (int)mode);
    if (mode != LM_LOGITS_NONE && (!logits || n == 0))
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_prefill: logits wanted but %s",
                       !logits ? "logits is NULL" : "n is 0");
    ha_status st = check_tokens(s, "lm_prefill", tokens, n);
    const int64_t V = s->m->cfg.vocab_size;
    for (int64_t i = 0; i < n && st == HA_OK; i += s->chunk) {
        int64_t count = n - i < s->chunk ? n - i : s->chunk;
        int last = i + count == n;
        lm_logits_mode slice_mode = (mode == LM_LOGITS_ALL || last) ? mode : LM_LOGITS_NONE;
        st = prefill_slice(s, tokens + i, count, slice_mode, mode == LM_LOGITS_ALL ? logits + i * V : logits);
    }
    return st;
}

/* ---- decode ------------------------------------------------------------------------------------- */

/* Attention of the step's query over the layer's cache through the public API (s->len_dev holds the
 * length including the new token). */
static ha_status decode_attention(lm_session *s, int32_t l)
{
    const lm_config *c = &s->m->cfg;
    const int64_t d = c->head_dim, Hq = c->num_q_heads;
    ha_status st;
    if (!s->host_mem && (st = ha_mem_copy(s->rt, s->q_dev, s->q_host, (size_t)(Hq * d) * sizeof(float),
                                          HA_COPY_HOST_TO_BACKEND)) != HA_OK)
        return lm_fail_ha(st, "lm_decode_step: ha_mem_copy (query)");
    ha_tensor3 q = {.data = s->q_dev, .dtype = HA_F32, .stride_batch = Hq * d, .stride_head = d};
    ha_tensor3 out = {.data = s->out_dev, .dtype = HA_F32, .stride_batch = Hq * d, .stride_head = d};
    ha_kv kv;
    lm_session_kv(s, l, &kv);
    if (s->cache && s->sparse[l]) {
        ha_step step = {.batch = 1, .seq_lens = s->len_dev, .new_tokens = 1, .q = q, .kv = kv, .out = out};
        if ((st = ha_decode_step(s->plan, s->cache, l, &step)) != HA_OK)
            return lm_fail_ha(st, "lm_decode_step: ha_decode_step");
    } else if ((st = ha_dense_attend(s->plan, &q, &kv, 1, s->len_dev, &out, NULL, NULL)) != HA_OK) {
        return lm_fail_ha(st, "lm_decode_step: ha_dense_attend");
    }
    if (!s->host_mem) {
        if ((st = ha_synchronize(s->rt, NULL)) != HA_OK ||
            (st = ha_mem_copy(s->rt, s->out_host, s->out_dev, (size_t)(Hq * d) * sizeof(float),
                              HA_COPY_BACKEND_TO_HOST)) != HA_OK)
            return lm_fail_ha(st, "lm_decode_step: copying the attention output back");
    }
    return HA_OK;
}

ha_status lm_decode_step(lm_session *s, int32_t token, float *logits)
{
    lm_clear_error();
    if (!s)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_decode_step: s is NULL");
    ha_status st = check_tokens(s, "lm_decode_step", &token, 1);
    if (st != HA_OK)
        return st;
    const lm_model *m = s->m;
    const lm_config *c = &m->cfg;
    const lm_kernels *kern = m->kern;
    const int64_t D = c->hidden_size, d = c->head_dim, Hq = c->num_q_heads, Hkv = c->num_kv_heads;
    const int64_t I = c->intermediate_size, pos = s->len;
    if ((st = lm_session_set_length(s, pos + 1)) != HA_OK)
        return st;
    memcpy(s->x, m->embed + (int64_t)token * D, (size_t)D * sizeof(float));
    for (int32_t l = 0; l < c->num_layers; l++) {
        const lm_layer *L = &m->layers[l];
        rms_norm(s->x, L->attn_norm, D, c->rms_norm_eps, s->xn);
        lm_linear(kern, &L->qkv, 1, s->xn, D, s->qkv, L->qkv.n);
        float *k = s->qkv + Hq * d, *v = k + Hkv * d;
        rope(m, pos, s->qkv, s->q_host, Hq);
        rope(m, pos, k, k, Hkv);
        for (int64_t h = 0; h < Hkv; h++) {
            memcpy(s->kv[l].k + (h * s->n_max + pos) * d, k + h * d, (size_t)d * sizeof(float));
            memcpy(s->kv[l].v + (h * s->n_max + pos) * d, v + h * d, (size_t)d * sizeof(float));
        }
        if (s->hook)
            s->hook(s->hook_user, l, pos, 1, s->q_host, k, v);
        if ((st = lm_session_upload_kv(s, l, pos, 1)) != HA_OK || (st = decode_attention(s, l)) != HA_OK)
            return st;
        lm_linear(kern, &L->o, 1, s->out_host, Hq * d, s->tmp, D);
        add_into(s->x, s->tmp, D);

        rms_norm(s->x, L->ffn_norm, D, c->rms_norm_eps, s->xn);
        lm_linear(kern, &L->gate_up, 1, s->xn, D, s->gu, 2 * I);
        kern->silu_mul(s->gu, s->gu + I, I);
        lm_linear(kern, &L->down, 1, s->gu, 2 * I, s->tmp, D);
        add_into(s->x, s->tmp, D);
    }
    s->len = pos + 1;
    if (logits) {
        rms_norm(s->x, m->final_norm, D, c->rms_norm_eps, s->xn);
        lm_linear(kern, &m->lm_head, 1, s->xn, D, logits, c->vocab_size);
    }
    return HA_OK;
}
