/*
 * ha-trace — runs the model runner's dense prefill over N tokens of a text (BOS + text tokens from
 * token offset K) and dumps every layer's post-RoPE q [Hq, N, d], k and v [Hkv, N, d] into a
 * safetensors file (layers.{l}.q / .k / .v, plus the int32 tokens), fp32 or f16/bf16.
 * Metadata: model, text, offset, tokens, q_heads, kv_heads, head_dim, num_layers.
 */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_cli.h"
#include "ha_shared.h"
#include "lm.h"
#include "safetensors.h"

#define PROGRAM "ha-trace"

static void usage(FILE *to)
{
    fprintf(to, "usage: " PROGRAM " --model DIR --text FILE --tokens N --out FILE.safetensors [--offset K]\n"
                "                [--dtype f32|f16|bf16]\n"
                "Dumps post-RoPE q, k, v of every layer for BOS + N-1 tokens of the text, starting at\n"
                "text token K (default 0). Default dtype f32.\n");
}

typedef struct trace {
    int64_t n;
    int32_t hq, hkv, d;
    float **q, **k, **v; /* [layer] → [heads, n, d] */
} trace;

/* Token-major rows of the hook into head-major arrays. */
static void scatter(float *dst, const float *src, int64_t pos, int64_t count, int32_t heads, int32_t d, int64_t n)
{
    for (int64_t t = 0; t < count && pos + t < n; t++)
        for (int32_t h = 0; h < heads; h++)
            memcpy(dst + ((size_t)h * (size_t)n + (size_t)(pos + t)) * (size_t)d,
                   src + ((size_t)t * (size_t)heads + (size_t)h) * (size_t)d, (size_t)d * sizeof(float));
}

static void hook(void *user, int32_t layer, int64_t pos, int64_t count, const float *q, const float *k, const float *v)
{
    trace *tr = user;
    scatter(tr->q[layer], q, pos, count, tr->hq, tr->d, tr->n);
    scatter(tr->k[layer], k, pos, count, tr->hkv, tr->d, tr->n);
    scatter(tr->v[layer], v, pos, count, tr->hkv, tr->d, tr->n);
}

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[size] = '\0';
        *len = (size_t)size;
    }
    return buf;
}

/* Converts n floats in place to dtype (2-byte types packed at the start of the buffer). */
static void convert(float *x, size_t n, ha_st_dtype dt)
{
    uint16_t *h = (uint16_t *)x;
    if (dt == HA_ST_F16)
        for (size_t i = 0; i < n; i++)
            h[i] = ha_f32_to_f16(x[i]);
    else if (dt == HA_ST_BF16)
        for (size_t i = 0; i < n; i++)
            h[i] = ha_f32_to_bf16(x[i]);
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL, *text_path = NULL, *out = NULL;
    long long n_tok = 0, offset = 0;
    ha_st_dtype dtype = HA_ST_F32;
    static const struct option longopts[] = {{"model", 1, 0, 'm'}, {"text", 1, 0, 't'}, {"tokens", 1, 0, 'n'},
                                             {"offset", 1, 0, 'k'}, {"out", 1, 0, 'o'}, {"dtype", 1, 0, 'd'},
                                             {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    char *end;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': model_dir = optarg; break;
        case 't': text_path = optarg; break;
        case 'o': out = optarg; break;
        case 'n':
            n_tok = strtoll(optarg, &end, 10);
            if (*optarg == '\0' || *end || n_tok < 1)
                return tool_complain("--tokens: expected a positive integer, got '%s'", optarg), 2;
            break;
        case 'k':
            offset = strtoll(optarg, &end, 10);
            if (*optarg == '\0' || *end || offset < 0)
                return tool_complain("--offset: expected a non-negative integer, got '%s'", optarg), 2;
            break;
        case 'd':
            if (!strcmp(optarg, "f32")) dtype = HA_ST_F32;
            else if (!strcmp(optarg, "f16")) dtype = HA_ST_F16;
            else if (!strcmp(optarg, "bf16")) dtype = HA_ST_BF16;
            else return tool_complain("--dtype: f32, f16 or bf16, got '%s'", optarg), 2;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || !model_dir || !text_path || !out || n_tok == 0) {
        usage(stderr);
        return 2;
    }

    lm_model *m = NULL;
    if (lm_model_load(model_dir, &m) != HA_OK)
        return tool_complain("loading %s: %s", model_dir, lm_last_error()), 1;
    const lm_config *cfg = lm_model_config(m);
    if (n_tok > cfg->max_positions)
        return tool_complain("--tokens %lld exceeds the model's %d positions", n_tok, cfg->max_positions), 2;
    size_t len;
    char *text = read_text(text_path, &len);
    if (!text)
        return tool_complain("cannot read %s", text_path), 1;
    int32_t *ids = NULL;
    int64_t n_ids = 0;
    if (lm_tokenize(lm_model_tokenizer(m), text, len, &ids, &n_ids) != HA_OK)
        return tool_complain("tokenizing %s: %s", text_path, lm_last_error()), 1;
    free(text);
    if (offset + n_tok - 1 > n_ids)
        return tool_complain("%s has %lld tokens: not enough for offset %lld + %lld", text_path, (long long)n_ids, offset,
                        n_tok - 1),
               2;
    int32_t *tokens = malloc((size_t)n_tok * sizeof(int32_t));
    tokens[0] = cfg->bos_id >= 0 ? cfg->bos_id : 0;
    memcpy(tokens + 1, ids + offset, (size_t)(n_tok - 1) * sizeof(int32_t));
    free(ids);

    const int32_t L = cfg->num_layers;
    trace tr = {.n = n_tok, .hq = cfg->num_q_heads, .hkv = cfg->num_kv_heads, .d = cfg->head_dim};
    tr.q = calloc((size_t)L, sizeof(float *));
    tr.k = calloc((size_t)L, sizeof(float *));
    tr.v = calloc((size_t)L, sizeof(float *));
    const size_t nq = (size_t)tr.hq * (size_t)n_tok * (size_t)tr.d, nk = (size_t)tr.hkv * (size_t)n_tok * (size_t)tr.d;
    for (int32_t l = 0; l < L; l++) {
        tr.q[l] = malloc(nq * sizeof(float));
        tr.k[l] = malloc(nk * sizeof(float));
        tr.v[l] = malloc(nk * sizeof(float));
        if (!tr.q[l] || !tr.k[l] || !tr.v[l])
            return tool_complain("out of memory"), 1;
    }
    lm_session_config scfg;
    lm_session_config_init(&scfg, n_tok);
    lm_session *s = NULL;
    if (lm_session_create(m, &scfg, &s) != HA_OK)
        return tool_complain("session: %s", lm_last_error()), 1;
    lm_session_set_qkv_hook(s, hook, &tr);
    if (lm_prefill(s, tokens, n_tok, LM_LOGITS_NONE, NULL) != HA_OK)
        return tool_complain("prefill: %s", lm_last_error()), 1;
    lm_session_free(s);

    /* tensors: tokens, then per layer q, k, v */
    const size_t n_t = 1 + 3 * (size_t)L;
    ha_st_out_tensor *t = calloc(n_t, sizeof(*t));
    char (*names)[48] = calloc(n_t, sizeof(*names));
    int64_t (*shapes)[3] = calloc(n_t, sizeof(*shapes));
    shapes[0][0] = n_tok;
    t[0] = (ha_st_out_tensor){"tokens", HA_ST_I32, 1, shapes[0], tokens};
    for (int32_t l = 0; l < L; l++) {
        for (int32_t kind = 0; kind < 3; kind++) {
            const size_t i = 1 + 3 * (size_t)l + (size_t)kind;
            float *data = kind == 0 ? tr.q[l] : (kind == 1 ? tr.k[l] : tr.v[l]);
            convert(data, kind == 0 ? nq : nk, dtype);
            snprintf(names[i], sizeof(names[i]), "layers.%d.%c", l, "qkv"[kind]);
            shapes[i][0] = kind == 0 ? tr.hq : tr.hkv;
            shapes[i][1] = n_tok;
            shapes[i][2] = tr.d;
            t[i] = (ha_st_out_tensor){names[i], dtype, 3, shapes[i], data};
        }
    }
    char v_offset[32], v_n[32], v_hq[16], v_hkv[16], v_d[16], v_l[16];
    snprintf(v_offset, sizeof(v_offset), "%lld", offset);
    snprintf(v_n, sizeof(v_n), "%lld", n_tok);
    snprintf(v_hq, sizeof(v_hq), "%d", tr.hq);
    snprintf(v_hkv, sizeof(v_hkv), "%d", tr.hkv);
    snprintf(v_d, sizeof(v_d), "%d", tr.d);
    snprintf(v_l, sizeof(v_l), "%d", L);
    const char *keys[] = {"model", "text", "offset", "tokens", "q_heads", "kv_heads", "head_dim", "num_layers",
                          "content"};
    const char *vals[] = {model_dir, text_path, v_offset, v_n, v_hq, v_hkv, v_d, v_l,
                          "post-RoPE q [Hq,N,d], k and v [Hkv,N,d]; tokens = BOS + text tokens from offset"};
    char err[512];
    if (ha_st_write(out, t, n_t, keys, vals, sizeof(keys) / sizeof(keys[0]), err, sizeof(err)) != HA_OK)
        return tool_complain("writing %s: %s", out, err), 1;
    fprintf(stderr, PROGRAM ": wrote %s (%lld tokens, %d layers)\n", out, n_tok, L);

    for (int32_t l = 0; l < L; l++) {
        free(tr.q[l]);
        free(tr.k[l]);
        free(tr.v[l]);
    }
    free(tr.q);
    free(tr.k);
    free(tr.v);
    free(t);
    free(names);
    free(shapes);
    free(tokens);
    lm_model_free(m);
    return 0;
}
