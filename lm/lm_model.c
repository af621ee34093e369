/*
 * lm_model.c — loads a Hugging Face Llama model: config.json, the safetensors shards named by
 * model.safetensors.index.json (or one model.safetensors), and the tokenizer. Weights are converted
 * to fp32 and packed into panels for the matrix kernels (q/k/v stacked into one matrix, gate/up into
 * another); RoPE's cos/sin tables are precomputed the way transformers computes them in fp32.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"
#include "safetensors.h"

#define MAX_SHARDS 256

typedef struct shards {
    ha_st_file files[MAX_SHARDS];
    char *names[MAX_SHARDS];
    int count;
} shards;

/* ---- shards ------------------------------------------------------------------------------------ */

static ha_status open_shard(shards *sh, const char *dir, const char *name)
{
    for (int i = 0; i < sh->count; i++)
        if (strcmp(sh->names[i], name) == 0)
            return HA_OK;
    if (sh->count == MAX_SHARDS)
        return lm_fail(HA_ERR_UNSUPPORTED, "%s: more than %d weight shards", dir, MAX_SHARDS);
    if (strchr(name, '/') || name[0] == '.' || name[0] == '\0')
        return lm_fail(HA_ERR_FORMAT, "%s: shard name \"%s\" is not a plain file name", dir, name);
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path || !(sh->names[sh->count] = strdup(name))) {
        free(path);
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    }
    snprintf(path, n, "%s/%s", dir, name);
    char err[512];
    ha_status st = ha_st_open(path, &sh->files[sh->count], err, sizeof(err));
    free(path);
    if (st != HA_OK) {
        free(sh->names[sh->count]);
        return lm_fail(st, "%s", err);
    }
    sh->count++;
    return HA_OK;
}

/* The shards of model.safetensors.index.json's weight_map, or model.safetensors alone. */
static ha_status open_shards(shards *sh, const char *dir)
{
    size_t n = strlen(dir) + 40;
    char *path = malloc(n);
    if (!path)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    snprintf(path, n, "%s/model.safetensors.index.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ha_status st = HA_OK;
    if (!root && jerr.line < 0) {
        st = open_shard(sh, dir, "model.safetensors");
    } else if (!root) {
        st = lm_fail(HA_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    } else {
        json_t *map = json_object_get(root, "weight_map");
        const char *key;
        json_t *value;
        if (!json_is_object(map) || json_object_size(map) == 0)
            st = lm_fail(HA_ERR_FORMAT, "%s: no weight_map object", path);
        else
            json_object_foreach(map, key, value) {
                if (!json_is_string(value)) {
                    st = lm_fail(HA_ERR_FORMAT, "%s: weight_map[\"%s\"] is not a file name", path, key);
                    break;
                }
                if ((st = open_shard(sh, dir, json_string_value(value))) != HA_OK)
                    break;
            }
        json_decref(root);
    }
    free(path);
    return st;
}

static void close_shards(shards *sh)
{
    for (int i = 0; i < sh->count; i++) {
        ha_st_close(&sh->files[i]);
        free(sh->names[i]);
    }
    sh->count = 0;
}

/* Tensor name of shape [rows] (cols == 0) or [rows, cols], converted into dst. */
static ha_status load_tensor(const shards *sh, const char *name, int64_t rows, int64_t cols, float *dst)
{
    for (int i = 0; i < sh->count; i++) {
        const ha_st_tensor *t = ha_st_find(&sh->files[i], name);
        if (!t)
            continue;
        int ndim = cols ? 2 : 1;
        if (t->ndim != ndim || t->shape[0] != rows || (cols && t->shape[1] != cols))
            return lm_fail(HA_ERR_SHAPE, "%s: tensor %s has %d dims [%lld, %lld], expected [%lld%s%lld]", sh->names[i],
                           name, t->ndim, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                           (long long)rows, cols ? ", " : "", (long long)(cols ? cols : 0));
        ha_status st = ha_st_to_f32(&sh->files[i], t, dst);
        if (st != HA_OK)
            return lm_fail(st, "%s: tensor %s is not F32, F16 or BF16", sh->names[i], name);
        return HA_OK;
    }
    return lm_fail(HA_ERR_FORMAT, "tensor %s is in none of the weight files", name);
}

/* ---- packing ----------------------------------------------------------------------------------- */

/* Packs w [n, k] (row-major) into panels of LM_NR columns of Wᵀ, zero past n. */
static ha_status pack(lm_matrix *m, const float *w, int64_t n, int64_t k, size_t *bytes)
{
    int64_t panels = (n + LM_NR - 1) / LM_NR;
    m->n = n;
    m->k = k;
    m->panels = lm_alloc_floats((size_t)(panels * k * LM_NR));
    if (!m->panels)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    *bytes += (size_t)(panels * k * LM_NR) * sizeof(float);
    for (int64_t j = 0; j < panels; j++)
        for (int64_t c = 0; c < LM_NR; c++) {
            int64_t row = j * LM_NR + c;
            float *dst = m->panels + j * k * LM_NR + c;
            for (int64_t p = 0; p < k; p++)
                dst[p * LM_NR] = row < n ? w[row * k + p] : 0.0f;
        }
    return HA_OK;
}

/* Loads the listed [rows_i, k] tensors stacked on top of each other and packs them as one matrix. */
static ha_status load_stacked(const shards *sh, int count, const char *const *names, const int64_t *rows, int64_t k,
                              float *scratch, lm_matrix *m, size_t *bytes)
{
    int64_t at = 0;
    for (int i = 0; i < count; i++) {
        ha_status st = load_tensor(sh, names[i], rows[i], k, scratch + at * k);
        if (st != HA_OK)
            return st;
        at += rows[i];
    }
    return pack(m, scratch, at, k, bytes);
}

static ha_status load_layer(const shards *sh, const lm_config *c, int32_t l, float *scratch, lm_layer *L,
                            size_t *bytes)
{
    const int64_t D = c->hidden_size, d = c->head_dim, I = c->intermediate_size;
    char names[4][96];
    const char *np[4] = {names[0], names[1], names[2], names[3]};
    ha_status st;
#define NAME(i, fmt) snprintf(names[i], sizeof(names[i]), "model.layers.%d." fmt, l)
    NAME(0, "input_layernorm.weight");
    NAME(1, "post_attention_layernorm.weight");
    L->attn_norm = lm_alloc_floats((size_t)D);
    L->ffn_norm = lm_alloc_floats((size_t)D);
    if (!L->attn_norm || !L->ffn_norm)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    *bytes += 2 * (size_t)D * sizeof(float);
    if ((st = load_tensor(sh, names[0], D, 0, L->attn_norm)) != HA_OK ||
        (st = load_tensor(sh, names[1], D, 0, L->ffn_norm)) != HA_OK)
        return st;

    NAME(0, "self_attn.q_proj.weight");
    NAME(1, "self_attn.k_proj.weight");
    NAME(2, "self_attn.v_proj.weight");
    const int64_t qkv_rows[3] = {c->num_q_heads * d, c->num_kv_heads * d, c->num_kv_heads * d};
    if ((st = load_stacked(sh, 3, np, qkv_rows, D, scratch, &L->qkv, bytes)) != HA_OK)
        return st;
    NAME(0, "self_attn.o_proj.weight");
    const int64_t o_rows[1] = {D};
    if ((st = load_stacked(sh, 1, np, o_rows, c->num_q_heads * d, scratch, &L->o, bytes)) != HA_OK)
        return st;
    NAME(0, "mlp.gate_proj.weight");
    NAME(1, "mlp.up_proj.weight");
    const int64_t gu_rows[2] = {I, I};
    if ((st = load_stacked(sh, 2, np, gu_rows, D, scratch, &L->gate_up, bytes)) != HA_OK)
        return st;
    NAME(0, "mlp.down_proj.weight");
    const int64_t down_rows[1] = {D};
    return load_stacked(sh, 1, np, down_rows, I, scratch, &L->down, bytes);
#undef NAME
}

/* cos/sin of pos·θ^(-2i/d) as transformers' LlamaRotaryEmbedding computes them: inv_freq in fp32,
 * the angle rounded to fp32, then its cos and sin. Matching its roundings matters at long positions,
 * where the fp32 angle is off from the exact one by up to ~5e-4 rad — the model was trained with it. */
static ha_status rope_tables(lm_model *m)
{
    const int64_t half = m->cfg.head_dim / 2, P = m->cfg.max_positions;
    m->rope_cos = lm_alloc_floats((size_t)(P * half));
    m->rope_sin = lm_alloc_floats((size_t)(P * half));
    if (!m->rope_cos || !m->rope_sin)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    m->bytes += 2 * (size_t)(P * half) * sizeof(float);
    for (int64_t i = 0; i < half; i++) {
        float exponent = (float)(2 * i) / (float)m->cfg.head_dim;
        float inv_freq = 1.0f / powf((float)m->cfg.rope_theta, exponent);
        for (int64_t p = 0; p < P; p++) {
            float angle = (float)p * inv_freq;
            m->rope_cos[p * half + i] = (float)cos((double)angle);
            m->rope_sin[p * half + i] = (float)sin((double)angle);
        }
    }
    return HA_OK;
}

static ha_status load_weights(lm_model *m, const char *dir)
{
    const lm_config *c = &m->cfg;
    const int64_t D = c->hidden_size, V = c->vocab_size, d = c->head_dim;
    shards sh;
    memset(&sh, 0, sizeof(sh));
    ha_status st = open_shards(&sh, dir);
    /* the largest matrix loaded at once: embeddings, stacked q/k/v, gate/up, down or o */
    int64_t qkv = (c->num_q_heads + 2 * c->num_kv_heads) * d;
    int64_t biggest = V * D;
    if (qkv * D > biggest)
        biggest = qkv * D;
    if (2 * (int64_t)c->intermediate_size * D > biggest)
        biggest = 2 * (int64_t)c->intermediate_size * D;
    if (c->num_q_heads * d * D > biggest)
        biggest = c->num_q_heads * d * D;
    float *scratch = st == HA_OK ? lm_alloc_floats((size_t)biggest) : NULL;
    m->embed = st == HA_OK ? lm_alloc_floats((size_t)(V * D)) : NULL;
    m->final_norm = st == HA_OK ? lm_alloc_floats((size_t)D) : NULL;
    m->layers = st == HA_OK ? calloc((size_t)c->num_layers, sizeof(lm_layer)) : NULL;
    if (st == HA_OK && (!scratch || !m->embed || !m->final_norm || !m->layers))
        st = lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    if (st == HA_OK) {
        m->bytes += (size_t)(V * D + D) * sizeof(float);
        st = load_tensor(&sh, "model.embed_tokens.weight", V, D, m->embed);
    }
    if (st == HA_OK)
        st = load_tensor(&sh, "model.norm.weight", D, 0, m->final_norm);
    for (int32_t l = 0; l < c->num_layers && st == HA_OK; l++)
        st = load_layer(&sh, c, l, scratch, &m->layers[l], &m->bytes);
    if (st == HA_OK) {
        if (c->tie_embeddings) {
            st = pack(&m->lm_head, m->embed, V, D, &m->bytes);
        } else {
            st = load_tensor(&sh, "lm_head.weight", V, D, scratch);
            if (st == HA_OK)
                st = pack(&m->lm_head, scratch, V, D, &m->bytes);
        }
    }
    free(scratch);
    close_shards(&sh);
    return st;
}

/* ---- lm_linear --------------------------------------------------------------------------------- */

#define ROW_BLOCK 64

void lm_linear(const lm_kernels *kern, const lm_matrix *w, int64_t m, const float *x, int64_t ldx, float *y,
               int64_t ldy)
{
    const int64_t panels = (w->n + LM_NR - 1) / LM_NR, row_blocks = (m + ROW_BLOCK - 1) / ROW_BLOCK;
    const int64_t tasks = panels * row_blocks;
#pragma omp parallel for schedule(static) if (tasks > 1)
    for (int64_t t = 0; t < tasks; t++) {
        int64_t i0 = (t / panels) * ROW_BLOCK, j = t % panels;
        int64_t rows = m - i0 < ROW_BLOCK ? m - i0 : ROW_BLOCK;
        int64_t cols = w->n - j * LM_NR < LM_NR ? w->n - j * LM_NR : LM_NR;
        kern->gemm(rows, cols, w->k, x + i0 * ldx, ldx, w->panels + j * w->k * LM_NR, LM_NR, w->k * LM_NR,
                   y + i0 * ldy + j * LM_NR, ldy);
    }
}

/* ---- public ------------------------------------------------------------------------------------ */

ha_status lm_model_load(const char *dir, lm_model **out)
{
    lm_clear_error();
    if (!out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_model_load: out is NULL");
    *out = NULL;
    if (!dir)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_model_load: dir is NULL");
    lm_model *m = calloc(1, sizeof(*m));
    if (!m)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    size_t n = strlen(dir) + 16;
    char *path = malloc(n);
    ha_status st = path ? HA_OK : lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_model_load: out of memory");
    if (st == HA_OK) {
        snprintf(path, n, "%s/config.json", dir);
        st = lm_config_load(path, &m->cfg);
    }
    free(path);
    if (st == HA_OK)
        st = lm_tokenizer_load(dir, &m->tok);
    if (st == HA_OK && lm_tokenizer_vocab_size(m->tok) > m->cfg.vocab_size)
        st = lm_fail(HA_ERR_FORMAT, "%s: the tokenizer has %d tokens, the model %d", dir,
                     lm_tokenizer_vocab_size(m->tok), m->cfg.vocab_size);
    if (st == HA_OK)
        st = load_weights(m, dir);
    if (st == HA_OK)
        st = rope_tables(m);
    if (st != HA_OK) {
        lm_model_free(m);
        return st;
    }
    m->kern = lm_kernels_get();
    *out = m;
    return HA_OK;
}

void lm_model_free(lm_model *m)
{
    if (!m)
        return;
    lm_tokenizer_free(m->tok);
    free(m->embed);
    free(m->final_norm);
    free(m->lm_head.panels);
    if (m->layers)
        for (int32_t l = 0; l < m->cfg.num_layers; l++) {
            lm_layer *L = &m->layers[l];
            free(L->attn_norm);
            free(L->ffn_norm);
            free(L->qkv.panels);
            free(L->o.panels);
            free(L->gate_up.panels);
            free(L->down.panels);
        }
    free(m->layers);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

const lm_config *lm_model_config(const lm_model *m)
{
    return m ? &m->cfg : NULL;
}

const lm_tokenizer *lm_model_tokenizer(const lm_model *m)
{
    return m ? m->tok : NULL;
}

size_t lm_model_bytes(const lm_model *m)
{
    return m ? m->bytes : 0;
}
