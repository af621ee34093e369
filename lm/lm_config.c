/*
 * lm_config.c — config.json of a Hugging Face Llama model, read with jansson. Only what the runner
 * implements is accepted: model_type llama, silu, no biases, plain RoPE (no rope scaling).
 */
#include <float.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "lm_internal.h"

/* Limits that keep every product of sizes far from overflow. */
#define MAX_DIM 65536
#define MAX_LAYERS 1024
#define MAX_VOCAB (1 << 22)
#define MAX_POSITIONS (1 << 22)

/* An integer field in [lo, hi]; absent → def (def < lo means required). */
static ha_status get_int(const char *path, json_t *root, const char *key, int64_t lo, int64_t hi, int64_t def,
                         int32_t *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def < lo)
            return lm_fail(HA_ERR_FORMAT, "%s: \"%s\" is missing", path, key);
        *out = (int32_t)def;
        return HA_OK;
    }
    if (!json_is_integer(v))
        return lm_fail(HA_ERR_FORMAT, "%s: \"%s\" is not an integer", path, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return lm_fail(HA_ERR_FORMAT, "%s: \"%s\" = %lld is outside [%lld, %lld]", path, key, (long long)x,
                       (long long)lo, (long long)hi);
    *out = (int32_t)x;
    return HA_OK;
}

/* A positive finite number (integers accepted); absent → def (def <= 0 means required). */
static ha_status get_real(const char *path, json_t *root, const char *key, double def, double *out)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (def <= 0.0)
            return lm_fail(HA_ERR_FORMAT, "%s: \"%s\" is missing", path, key);
        *out = def;
        return HA_OK;
    }
    if (!json_is_number(v) || !(json_number_value(v) > 0.0) || !isfinite(json_number_value(v)))
        return lm_fail(HA_ERR_FORMAT, "%s: \"%s\" is not a positive number", path, key);
    *out = json_number_value(v);
    return HA_OK;
}

/* A boolean field that must be false (or absent): a feature the runner lacks. */
static ha_status require_false(const char *path, json_t *root, const char *key)
{
    json_t *v = json_object_get(root, key);
    if (v && json_is_true(v))
        return lm_fail(HA_ERR_UNSUPPORTED, "%s: \"%s\" is true; the runner has no biases", path, key);
    return HA_OK;
}

static ha_status check_rope(const char *path, json_t *root, double *theta)
{
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling))
        return lm_fail(HA_ERR_UNSUPPORTED, "%s: rope_scaling is set; only plain RoPE is implemented", path);
    /* transformers ≥ 5 also writes rope_parameters {rope_theta, rope_type} */
    json_t *params = json_object_get(root, "rope_parameters");
    if (params && json_is_object(params)) {
        json_t *type = json_object_get(params, "rope_type");
        if (type && !(json_is_string(type) && strcmp(json_string_value(type), "default") == 0))
            return lm_fail(HA_ERR_UNSUPPORTED, "%s: rope_parameters.rope_type is not \"default\"", path);
    }
    json_t *top = json_object_get(root, "rope_theta");
    json_t *src = (top && !json_is_null(top)) ? root : (params && json_is_object(params)) ? params : root;
    return get_real(path, src, "rope_theta", 10000.0, theta);
}

static ha_status parse(const char *path, json_t *root, lm_config *c)
{
    if (!json_is_object(root))
        return lm_fail(HA_ERR_FORMAT, "%s: not a JSON object", path);
    json_t *type = json_object_get(root, "model_type");
    if (!json_is_string(type) || strcmp(json_string_value(type), "llama") != 0)
        return lm_fail(HA_ERR_UNSUPPORTED, "%s: model_type is not \"llama\"", path);
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !(json_is_string(act) && strcmp(json_string_value(act), "silu") == 0))
        return lm_fail(HA_ERR_UNSUPPORTED, "%s: hidden_act is not \"silu\"", path);
    ha_status st;
    double eps;
    if ((st = require_false(path, root, "attention_bias")) != HA_OK ||
        (st = require_false(path, root, "mlp_bias")) != HA_OK ||
        (st = check_rope(path, root, &c->rope_theta)) != HA_OK ||
        (st = get_real(path, root, "rms_norm_eps", 1e-6, &eps)) != HA_OK)
        return st;
    /* kept as a float: one that rounds to 0 or infinity would break RMSNorm */
    if (eps < FLT_MIN || eps > FLT_MAX)
        return lm_fail(HA_ERR_FORMAT, "%s: \"rms_norm_eps\" = %g is outside the float range [%g, %g]", path, eps,
                       (double)FLT_MIN, (double)FLT_MAX);
    c->rms_norm_eps = (float)eps;

    if ((st = get_int(path, root, "hidden_size", 1, MAX_DIM, -1, &c->hidden_size)) != HA_OK ||
        (st = get_int(path, root, "num_hidden_layers", 1, MAX_LAYERS, -1, &c->num_layers)) != HA_OK ||
        (st = get_int(path, root, "num_attention_heads", 1, MAX_DIM, -1, &c->num_q_heads)) != HA_OK ||
        (st = get_int(path, root, "num_key_value_heads", 1, MAX_DIM, c->num_q_heads, &c->num_kv_heads)) != HA_OK ||
        (st = get_int(path, root, "head_dim", 2, MAX_DIM, c->hidden_size / c->num_q_heads, &c->head_dim)) != HA_OK ||
        (st = get_int(path, root, "intermediate_size", 1, 16 * MAX_DIM, -1, &c->intermediate_size)) != HA_OK ||
        (st = get_int(path, root, "vocab_size", 1, MAX_VOCAB, -1, &c->vocab_size)) != HA_OK ||
        (st = get_int(path, root, "max_position_embeddings", 1, MAX_POSITIONS, -1, &c->max_positions)) != HA_OK)
        return st;
    /* token ids may be absent (or null) */
    if ((st = get_int(path, root, "bos_token_id", -1, c->vocab_size - 1, -1, &c->bos_id)) != HA_OK ||
        (st = get_int(path, root, "eos_token_id", -1, c->vocab_size - 1, -1, &c->eos_id)) != HA_OK)
        return st;
    if (c->num_q_heads % c->num_kv_heads != 0)
        return lm_fail(HA_ERR_FORMAT, "%s: num_attention_heads = %d is not a multiple of num_key_value_heads = %d",
                       path, c->num_q_heads, c->num_kv_heads);
    if (c->head_dim % 2 != 0)
        return lm_fail(HA_ERR_FORMAT, "%s: head_dim = %d is odd (RoPE rotates halves)", path, c->head_dim);

    json_t *tie = json_object_get(root, "tie_word_embeddings");
    c->tie_embeddings = tie && json_is_true(tie);
    return HA_OK;
}

/* Validates a parsed document (root may be NULL: jerr says why). */
static ha_status from_json(const char *name, json_t *root, const json_error_t *jerr, lm_config *out)
{
    if (!root)
        return lm_fail(jerr->line < 0 ? HA_ERR_IO : HA_ERR_FORMAT, "%s: %s (line %d)", name, jerr->text, jerr->line);
    lm_config c;
    memset(&c, 0, sizeof(c));
    ha_status st = parse(name, root, &c);
    json_decref(root);
    if (st == HA_OK)
        *out = c;
    return st;
}

ha_status lm_config_load(const char *path, lm_config *out)
{
    lm_clear_error();
    if (!path || !out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_config_load: %s is NULL", !path ? "path" : "out");
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    return from_json(path, json_load_file(path, 0, &jerr), &jerr, out);
}

ha_status lm_config_parse(const char *name, const char *json, size_t len, lm_config *out)
{
    lm_clear_error();
    if (!name || !json || !out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_config_parse: %s is NULL", !name ? "name" : !json ? "json" : "out");
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    return from_json(name, json_loadb(json, len, 0, &jerr), &jerr, out);
}
