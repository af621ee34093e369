/*
 * test_model.c — the model runner of lm/ against fixtures/reference_fp32.safetensors (fp32 compute from
 * the bf16 weights by transformers, TF32 off):
 *
 *   - prefill of the fixture's 128 tokens (in one slice and in odd slices): logits and every layer's
 *     post-RoPE q, k, v, relative L2 error ‖a − b‖/‖b‖ ≤ TOLERANCE per tensor (measured: ~1e-6);
 *   - prefill of 64 tokens, then 64 decode steps whose attention goes through the public API, with the
 *     reference backend and every plugin found: each step's logits and q/k/v as the fixture's;
 *   - greedy generation from the metadata's 64-token prompt gives the metadata's 64 tokens;
 *   - HashAttention decode (random mapping weights, layers 0-2 dense): with a budget that keeps every
 *     token the logits are the dense ones; with a tight budget the cache holds the codes of every
 *     prefilled and decoded key (the same selection as a cache encoded afresh) and the logits move;
 *   - bad input: clear status and message.
 *
 * The model folder comes from $LM_MODEL_DIR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lm.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights_host.h"

/* Relative L2 error allowed per tensor; fp32 compute from the same bf16 weights lands near 1e-6. */
#define TOLERANCE 1e-4
#define T_FIX 128 /* tokens of the fixture */
#define T_HALF 64

static lm_model *model;
static const lm_config *cfg;
static ha_st_file fixture;
static int32_t fixture_tokens[T_FIX];
static float *ref_logits; /* [T_FIX, vocab] */

/* ---- fixture and capture helpers ----------------------------------------------------------------- */

static int setup(void **state)
{
    (void)state;
    const char *dir = getenv("LM_MODEL_DIR");
    if (!dir) {
        fprintf(stderr, "LM_MODEL_DIR is not set (the folder of models/tinylm-25m)\n");
        return -1;
    }
    if (lm_model_load(dir, &model) != HA_OK) {
        fprintf(stderr, "lm_model_load: %s\n", lm_last_error());
        return -1;
    }
    cfg = lm_model_config(model);
    char path[4096], err[512];
    snprintf(path, sizeof(path), "%s/fixtures/reference_fp32.safetensors", dir);
    if (ha_st_open(path, &fixture, err, sizeof(err)) != HA_OK) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    const ha_st_tensor *t = ha_st_find(&fixture, "tokens");
    const ha_st_tensor *l = ha_st_find(&fixture, "logits");
    if (!t || t->dtype != HA_ST_I32 || t->numel != T_FIX || !l || l->numel != (int64_t)T_FIX * cfg->vocab_size) {
        fprintf(stderr, "%s: unexpected tokens/logits tensors\n", path);
        return -1;
    }
    memcpy(fixture_tokens, ha_st_tensor_data(&fixture, t), sizeof(fixture_tokens));
    ref_logits = malloc((size_t)l->numel * sizeof(float));
    return ref_logits && ha_st_to_f32(&fixture, l, ref_logits) == HA_OK ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    free(ref_logits);
    ha_st_close(&fixture);
    lm_model_free(model);
    return 0;
}

/* Fixture tensor layers.{layer}.{which} [heads, T_FIX, d] as floats (caller frees). */
static float *fixture_qkv(int32_t layer, char which, int64_t *numel)
{
    char name[64];
    snprintf(name, sizeof(name), "layers.%d.%c", layer, which);
    const ha_st_tensor *t = ha_st_find(&fixture, name);
    assert_non_null(t);
    float *out = malloc((size_t)t->numel * sizeof(float));
    assert_non_null(out);
    assert_int_equal(ha_st_to_f32(&fixture, t, out), HA_OK);
    *numel = t->numel;
    return out;
}

/* What the q/k/v hook saw, rearranged to the fixture's [heads, T_FIX, d] per layer. */
typedef struct capture {
    float *q[64], *k[64], *v[64];
    int64_t calls, rows;
} capture;

static void capture_init(capture *c)
{
    memset(c, 0, sizeof(*c));
    assert_true(cfg->num_layers <= 64);
    const size_t d = (size_t)cfg->head_dim;
    for (int32_t l = 0; l < cfg->num_layers; l++) {
        c->q[l] = malloc((size_t)cfg->num_q_heads * T_FIX * d * sizeof(float));
        c->k[l] = malloc((size_t)cfg->num_kv_heads * T_FIX * d * sizeof(float));
        c->v[l] = malloc((size_t)cfg->num_kv_heads * T_FIX * d * sizeof(float));
        tu_poison(c->q[l], (size_t)cfg->num_q_heads * T_FIX * d * sizeof(float));
        tu_poison(c->k[l], (size_t)cfg->num_kv_heads * T_FIX * d * sizeof(float));
        tu_poison(c->v[l], (size_t)cfg->num_kv_heads * T_FIX * d * sizeof(float));
    }
}

static void capture_free(capture *c)
{
    for (int32_t l = 0; l < cfg->num_layers; l++) {
        free(c->q[l]);
        free(c->k[l]);
        free(c->v[l]);
    }
}

static void scatter(float *dst, const float *src, int64_t pos, int64_t count, int32_t heads)
{
    const int64_t d = cfg->head_dim;
    for (int64_t i = 0; i < count; i++)
        for (int32_t h = 0; h < heads; h++)
            memcpy(dst + ((int64_t)h * T_FIX + pos + i) * d, src + (i * heads + h) * d, (size_t)d * sizeof(float));
}

static void capture_hook(void *user, int32_t layer, int64_t pos, int64_t count, const float *q, const float *k,
                         const float *v)
{
    capture *c = user;
    assert_true(layer >= 0 && layer < cfg->num_layers && pos >= 0 && count >= 1 && pos + count <= T_FIX);
    scatter(c->q[layer], q, pos, count, cfg->num_q_heads);
    scatter(c->k[layer], k, pos, count, cfg->num_kv_heads);
    scatter(c->v[layer], v, pos, count, cfg->num_kv_heads);
    c->calls++;
    c->rows += count;
}

/* Relative error of rows [t0, t1) of a [heads, T_FIX, d] tensor against the fixture's. */
static double rel_rows(const float *got, const float *ref, int32_t heads, int64_t t0, int64_t t1)
{
    const int64_t d = cfg->head_dim, n = (t1 - t0) * d;
    double diff = 0.0, norm = 0.0;
    for (int32_t h = 0; h < heads; h++) {
        const float *a = got + ((int64_t)h * T_FIX + t0) * d, *b = ref + ((int64_t)h * T_FIX + t0) * d;
        for (int64_t i = 0; i < n; i++) {
            if (!isfinite(a[i]))
                return INFINITY;
            diff += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
            norm += (double)b[i] * b[i];
        }
    }
    return sqrt(diff / norm);
}

/* Compares the captured q/k/v of positions [t0, t1) with the fixture; returns the largest error. */
static double check_qkv(const capture *c, int64_t t0, int64_t t1, const char *what)
{
    double worst = 0.0;
    for (int32_t l = 0; l < cfg->num_layers; l++) {
        const char names[3] = {'q', 'k', 'v'};
        float *const got[3] = {c->q[l], c->k[l], c->v[l]};
        const int32_t heads[3] = {cfg->num_q_heads, cfg->num_kv_heads, cfg->num_kv_heads};
        double err[3];
        for (int i = 0; i < 3; i++) {
            int64_t numel;
            float *ref = fixture_qkv(l, names[i], &numel);
            assert_int_equal(numel, (int64_t)heads[i] * T_FIX * cfg->head_dim);
            err[i] = rel_rows(got[i], ref, heads[i], t0, t1);
            free(ref);
            if (err[i] > worst)
                worst = err[i];
        }
        print_message("  %s layer %d: q %.2e  k %.2e  v %.2e\n", what, l, err[0], err[1], err[2]);
        for (int i = 0; i < 3; i++)
            if (!(err[i] <= TOLERANCE))
                fail_msg("%s: layer %d %c relative error %.3e > %.0e", what, l, names[i], err[i], TOLERANCE);
    }
    return worst;
}

static lm_session *new_session(ha_runtime *rt, const ha_weights *w, const ha_plan_config *plan, int64_t max_tokens,
                               int32_t chunk)
{
    lm_session_config sc;
    lm_session_config_init(&sc, max_tokens);
    sc.rt = rt;
    sc.hash_weights = w;
    sc.plan = plan;
    sc.prefill_chunk = chunk;
    lm_session *s = NULL;
    if (lm_session_create(model, &sc, &s) != HA_OK)
        fail_msg("lm_session_create: %s", lm_last_error());
    return s;
}

static float *alloc_logits(int64_t rows)
{
    float *p = malloc((size_t)rows * (size_t)cfg->vocab_size * sizeof(float));
    assert_non_null(p);
    tu_poison(p, (size_t)rows * (size_t)cfg->vocab_size * sizeof(float));
    return p;
}

/* ---- prefill -------------------------------------------------------------------------------------- */

static void run_prefill(int32_t chunk)
{
    lm_session *s = new_session(NULL, NULL, NULL, T_FIX, chunk);
    capture c;
    capture_init(&c);
    lm_session_set_qkv_hook(s, capture_hook, &c);
    float *logits = alloc_logits(T_FIX);
    assert_int_equal(lm_prefill(s, fixture_tokens, T_FIX, LM_LOGITS_ALL, logits), HA_OK);
    assert_int_equal(lm_session_length(s), T_FIX);
    assert_int_equal(c.rows, (int64_t)T_FIX * cfg->num_layers);
    double err = tu_rel_l2(logits, ref_logits, (int64_t)T_FIX * cfg->vocab_size);
    print_message("prefill of %d tokens, slices of %d: logits relative error %.2e\n", T_FIX, chunk ? chunk : 512,
                  err);
    assert_true(err <= TOLERANCE);
    check_qkv(&c, 0, T_FIX, "prefill");
    free(logits);
    capture_free(&c);
    lm_session_free(s);
}

static void test_prefill_matches_reference(void **state)
{
    (void)state;
    run_prefill(0);
}

static void test_prefill_in_odd_slices(void **state)
{
    (void)state;
    run_prefill(37);
}

/* LM_LOGITS_LAST gives the last row of LM_LOGITS_ALL; a prefill continued later gives the same. */
static void test_prefill_last_and_continued(void **state)
{
    (void)state;
    lm_session *s = new_session(NULL, NULL, NULL, T_FIX, 0);
    float *last = alloc_logits(1), *rest = alloc_logits(T_FIX - 50);
    assert_int_equal(lm_prefill(s, fixture_tokens, T_FIX, LM_LOGITS_LAST, last), HA_OK);
    assert_true(tu_rel_l2(last, ref_logits + (size_t)(T_FIX - 1) * cfg->vocab_size, cfg->vocab_size) <= TOLERANCE);
    lm_session_reset(s);
    assert_int_equal(lm_session_length(s), 0);
    assert_int_equal(lm_prefill(s, fixture_tokens, 50, LM_LOGITS_NONE, NULL), HA_OK);
    assert_int_equal(lm_prefill(s, fixture_tokens + 50, T_FIX - 50, LM_LOGITS_ALL, rest), HA_OK);
    double err = tu_rel_l2(rest, ref_logits + (size_t)50 * cfg->vocab_size, (int64_t)(T_FIX - 50) * cfg->vocab_size);
    assert_true(err <= TOLERANCE);
    free(last);
    free(rest);
    lm_session_free(s);
}

/* ---- decode through the public API ------------------------------------------------------------- */

/* Prefill of T_HALF tokens, then decode steps for the rest; every step's logits and q/k/v against the
 * fixture. Returns the worst logits error. */
static double decode_half(ha_runtime *rt, const ha_weights *w, const ha_plan_config *plan, float *step_logits)
{
    lm_session *s = new_session(rt, w, plan, T_FIX, 0);
    capture c;
    capture_init(&c);
    lm_session_set_qkv_hook(s, capture_hook, &c);
    float *logits = alloc_logits(T_HALF);
    assert_int_equal(lm_prefill(s, fixture_tokens, T_HALF, LM_LOGITS_ALL, logits), HA_OK);
    assert_true(tu_rel_l2(logits, ref_logits, (int64_t)T_HALF * cfg->vocab_size) <= TOLERANCE);
    double worst = 0.0;
    for (int64_t t = T_HALF; t < T_FIX; t++) {
        float *out = step_logits + (t - T_HALF) * cfg->vocab_size;
        if (lm_decode_step(s, fixture_tokens[t], out) != HA_OK)
            fail_msg("lm_decode_step at %lld: %s", (long long)t, lm_last_error());
        double err = tu_rel_l2(out, ref_logits + (size_t)t * cfg->vocab_size, cfg->vocab_size);
        worst = err > worst ? err : worst;
    }
    assert_int_equal(lm_session_length(s), T_FIX);
    assert_int_equal(c.calls, (int64_t)cfg->num_layers * (1 + T_HALF));
    if (!w || worst <= TOLERANCE) /* the q/k/v agree as long as attention is exact */
        check_qkv(&c, T_HALF, T_FIX, "decode");
    free(logits);
    capture_free(&c);
    lm_session_free(s);
    return worst;
}

static void test_decode_matches_reference(void **state)
{
    (void)state;
    /* the core's reference, the CPU plugin, and whatever the probe picks (a GPU backend where one is) */
    const char *backends[] = {"reference", "cpu_avx512", NULL};
    char done[3][64] = {{0}};
    float *step_logits = alloc_logits(T_FIX - T_HALF);
    int ran = 0;
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++) {
        ha_runtime_options opt = {.struct_size = sizeof(opt), .backend = backends[i]};
        ha_runtime *rt = NULL;
        if (ha_runtime_open(&opt, &rt) != HA_OK) {
            print_message("backend %s: not available here\n", backends[i] ? backends[i] : "(probe)");
            continue;
        }
        const char *name = ha_runtime_backend_name(rt);
        int seen = 0;
        for (int j = 0; j < ran; j++)
            seen |= strcmp(done[j], name) == 0;
        if (!seen) {
            double worst = decode_half(rt, NULL, NULL, step_logits);
            print_message("backend %s: %d decode steps, worst logits relative error %.2e\n", name, T_FIX - T_HALF,
                          worst);
            assert_true(worst <= TOLERANCE);
            snprintf(done[ran++], sizeof(done[0]), "%s", name);
        }
        ha_runtime_close(rt);
    }
    assert_true(ran >= 1);
    free(step_logits);
}

static int32_t argmax(const float *x, int64_t n)
{
    int32_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = (int32_t)i;
    return best;
}

/* A JSON array of integers kept as a metadata string. */
static int64_t meta_ids(const char *key, int32_t *out, int64_t cap)
{
    const char *text = ha_st_meta(&fixture, key);
    assert_non_null(text);
    json_error_t jerr;
    json_t *arr = json_loads(text, 0, &jerr);
    assert_true(json_is_array(arr));
    int64_t n = (int64_t)json_array_size(arr);
    assert_true(n <= cap);
    for (int64_t i = 0; i < n; i++)
        out[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    json_decref(arr);
    return n;
}

static void test_greedy_generation(void **state)
{
    (void)state;
    int32_t prompt[256], want[256], got[256];
    int64_t np = meta_ids("greedy_prompt_tokens", prompt, 256), nw = meta_ids("greedy_new_tokens", want, 256);
    assert_int_equal(np, 64);
    assert_int_equal(nw, 64);
    lm_session *s = new_session(NULL, NULL, NULL, np + nw, 0);
    float *logits = alloc_logits(1);
    assert_int_equal(lm_prefill(s, prompt, np, LM_LOGITS_LAST, logits), HA_OK);
    for (int64_t i = 0; i < nw; i++) {
        got[i] = argmax(logits, cfg->vocab_size);
        if (i + 1 < nw)
            assert_int_equal(lm_decode_step(s, got[i], logits), HA_OK);
    }
    for (int64_t i = 0; i < nw; i++)
        if (got[i] != want[i])
            fail_msg("greedy token %lld is %d, the reference has %d", (long long)i, got[i], want[i]);
    free(logits);
    lm_session_free(s);
}

/* ---- HashAttention decode ---------------------------------------------------------------------- */

/* Random depth-1 mapping weights of layers layers (group mode: one key code per KV head), layers 0-2
 * dense, loaded through a temporary file. */
static ha_weights *random_hash_weights(ha_runtime *rt, int32_t layers)
{
    uint8_t dense[64] = {1, 1, 1};
    assert_true(layers > 3 && layers <= 64);
    ha_weights_host wh;
    assert_int_equal(ha_weights_host_alloc(&wh, layers, 32, 1, 0, cfg->head_dim, cfg->num_q_heads,
                                           cfg->num_kv_heads, dense),
                     HA_OK);
    tu_rng r;
    tu_rng_seed(&r, 77);
    for (int32_t l = 3; l < layers; l++) {
        const ha_mlp_desc *sides[2] = {&wh.q[l], &wh.k[l]};
        for (int i = 0; i < 2; i++) {
            const ha_mlp_desc *m = sides[i];
            float *w = (float *)m->w[0], *b = (float *)m->b[0];
            for (int64_t j = 0; j < (int64_t)m->heads * m->dims[1] * m->dims[0]; j++)
                w[j] = tu_rng_nonzero(&r, 1.0f);
            for (int64_t j = 0; j < (int64_t)m->heads * m->dims[1]; j++)
                b[j] = tu_rng_nonzero(&r, 0.01f);
        }
    }
    char path[] = "/tmp/lm_test_weights_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[512];
    assert_int_equal(ha_weights_host_write(&wh, path, HA_ST_F32, err, sizeof(err)), HA_OK);
    ha_weights_host_free(&wh);
    ha_weights *w = NULL;
    ha_status st = ha_weights_load(rt, path, &w);
    unlink(path);
    if (st != HA_OK)
        fail_msg("ha_weights_load: %s", ha_last_error());
    return w;
}

/* With sink + local ≥ every length, HashAttention keeps every token: the logits are the dense ones. */
static void test_hashattn_all_kept_is_dense(void **state)
{
    (void)state;
    ha_runtime *rt = NULL;
    assert_int_equal(ha_runtime_open(NULL, &rt), HA_OK);
    ha_weights *w = random_hash_weights(rt, cfg->num_layers);
    float *step_logits = alloc_logits(T_FIX - T_HALF);
    double worst = decode_half(rt, w, NULL, step_logits); /* defaults: sink 128 + local 128 */
    print_message("HashAttention (%s), every token kept: worst logits relative error %.2e\n",
                  ha_runtime_backend_name(rt), worst);
    assert_true(worst <= TOLERANCE);
    free(step_logits);
    ha_weights_free(w);
    ha_runtime_close(rt);
}

/* The session's code cache must hold the codes of all its keys (prefilled and decoded): ha_match on it
 * selects what ha_match selects on a cache encoded afresh from the session's KV cache. */
static void expect_same_selection(lm_session *s, ha_runtime *rt, const ha_weights *w, int32_t layer)
{
    ha_plan *plan = lm_session_plan(s);
    const int64_t n = lm_session_length(s), d = cfg->head_dim, Hq = cfg->num_q_heads;
    ha_kv kv;
    assert_int_equal(lm_session_kv(s, layer, &kv), HA_OK);
    ha_cache_config cc = {.struct_size = sizeof(cc), .max_batch = 1, .max_tokens = lm_session_capacity(s)};
    ha_cache *fresh = NULL;
    assert_int_equal(ha_cache_create(rt, w, &cc, &fresh), HA_OK);
    int32_t len = (int32_t)n;
    int32_t *len_dev = tu_dev_upload(rt, &len, sizeof(len));
    assert_int_equal(ha_cache_encode_keys(plan, fresh, layer, &kv, 1, len_dev, len, NULL), HA_OK);

    ha_weights_info info;
    assert_int_equal(ha_weights_get_info(w, &info), HA_OK);
    const int32_t S = ha_plan_selection_heads(plan);
    const int64_t kept = ha_plan_max_kept(plan);
    tu_rng r;
    tu_rng_seed(&r, 1000 + (uint64_t)layer);
    float *q = malloc((size_t)(Hq * d) * sizeof(float));
    for (int64_t i = 0; i < Hq * d; i++)
        q[i] = tu_rng_nonzero(&r, 1.0f);
    float *q_dev = tu_dev_upload(rt, q, (size_t)(Hq * d) * sizeof(float));
    uint32_t *codes = tu_dev_alloc(rt, (size_t)(Hq * info.words) * sizeof(uint32_t));
    ha_tensor3 qt = {.data = q_dev, .dtype = HA_F32, .stride_batch = Hq * d, .stride_head = d};
    assert_int_equal(ha_encode_queries(plan, layer, &qt, 1, codes, NULL), HA_OK);

    int32_t *idx[2], *cnt[2], *idx_host[2], *cnt_host[2];
    const ha_cache *caches[2] = {lm_session_cache(s), fresh};
    for (int i = 0; i < 2; i++) {
        idx[i] = tu_dev_alloc(rt, (size_t)(S * kept) * sizeof(int32_t));
        cnt[i] = tu_dev_alloc(rt, (size_t)S * sizeof(int32_t));
        assert_int_equal(ha_match(plan, caches[i], layer, codes, &kv, 1, len_dev, idx[i], cnt[i], NULL), HA_OK);
        idx_host[i] = calloc((size_t)(S * kept), sizeof(int32_t));
        cnt_host[i] = calloc((size_t)S, sizeof(int32_t));
        tu_from_dev(rt, idx_host[i], idx[i], (size_t)(S * kept) * sizeof(int32_t));
        tu_from_dev(rt, cnt_host[i], cnt[i], (size_t)S * sizeof(int32_t));
    }
    for (int32_t h = 0; h < S; h++) {
        assert_int_equal(cnt_host[0][h], ha_plan_kept_for_length(plan, n));
        assert_int_equal(cnt_host[0][h], cnt_host[1][h]);
        assert_memory_equal(idx_host[0] + h * kept, idx_host[1] + h * kept, (size_t)cnt_host[0][h] * sizeof(int32_t));
    }
    for (int i = 0; i < 2; i++) {
        tu_dev_free(rt, idx[i]);
        tu_dev_free(rt, cnt[i]);
        free(idx_host[i]);
        free(cnt_host[i]);
    }
    tu_dev_free(rt, codes);
    tu_dev_free(rt, q_dev);
    tu_dev_free(rt, len_dev);
    free(q);
    ha_cache_destroy(fresh);
}

static void test_hashattn_tight_budget(void **state)
{
    (void)state;
    ha_runtime *rt = NULL;
    assert_int_equal(ha_runtime_open(NULL, &rt), HA_OK);
    ha_weights *w = random_hash_weights(rt, cfg->num_layers);
    ha_plan_config plan;
    ha_plan_config_init(&plan, 1, T_FIX, cfg->num_q_heads, cfg->num_kv_heads, cfg->head_dim);
    plan.sink = 4;
    plan.local = 8;
    plan.heavy_fraction = 0.0;
    plan.heavy_count = 12;
    lm_session *s = new_session(rt, w, &plan, T_FIX, 0);
    assert_non_null(lm_session_cache(s));
    float *logits = alloc_logits(1);
    assert_int_equal(lm_prefill(s, fixture_tokens, T_HALF, LM_LOGITS_NONE, NULL), HA_OK);
    for (int32_t l = 3; l < cfg->num_layers; l++) /* the prompt's codes */
        expect_same_selection(s, rt, w, l);
    double worst = 0.0;
    for (int64_t t = T_HALF; t < T_FIX; t++) {
        assert_int_equal(lm_decode_step(s, fixture_tokens[t], logits), HA_OK);
        double err = tu_rel_l2(logits, ref_logits + (size_t)t * cfg->vocab_size, cfg->vocab_size);
        assert_true(isfinite(err));
        worst = err > worst ? err : worst;
    }
    for (int32_t l = 3; l < cfg->num_layers; l++) /* and every decoded key's */
        expect_same_selection(s, rt, w, l);
    print_message("HashAttention, 24 of up to 128 tokens kept in layers 3-7: logits move by up to %.2e\n", worst);
    assert_true(worst > 1e-3); /* the budget really selects */
    free(logits);
    lm_session_free(s);
    ha_weights_free(w);
    ha_runtime_close(rt);
}

/* ---- bad input ------------------------------------------------------------------------------------ */

static void test_bad_input(void **state)
{
    (void)state;
    lm_session *s = new_session(NULL, NULL, NULL, 16, 0);
    float *logits = alloc_logits(16);
    int32_t toks[17] = {0};
    toks[3] = cfg->vocab_size;
    assert_int_equal(lm_prefill(s, toks, 5, LM_LOGITS_ALL, logits), HA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(lm_last_error(), "token 3"));
    assert_true(tu_is_poisoned(logits, (size_t)16 * cfg->vocab_size * sizeof(float)));
    toks[3] = 7;
    assert_int_equal(lm_prefill(s, toks, 17, LM_LOGITS_NONE, NULL), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(lm_prefill(s, toks, 4, LM_LOGITS_LAST, NULL), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(lm_prefill(s, toks, 4, (lm_logits_mode)7, logits), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(lm_session_length(s), 0);
    assert_int_equal(lm_prefill(s, toks, 16, LM_LOGITS_NONE, NULL), HA_OK);
    assert_int_equal(lm_decode_step(s, 5, logits), HA_ERR_INVALID_ARGUMENT); /* full */
    assert_non_null(strstr(lm_last_error(), "do not fit"));
    lm_session_reset(s);
    assert_int_equal(lm_decode_step(s, -1, logits), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(lm_decode_step(s, 5, NULL), HA_OK); /* logits are optional */
    ha_kv kv;
    assert_int_equal(lm_session_kv(s, cfg->num_layers, &kv), HA_ERR_INVALID_ARGUMENT);
    lm_session_free(s);
    free(logits);

    lm_session_config sc;
    lm_session_config_init(&sc, (int64_t)cfg->max_positions + 1);
    lm_session *none = (lm_session *)1;
    assert_int_equal(lm_session_create(model, &sc, &none), HA_ERR_INVALID_ARGUMENT);
    assert_null(none);
    assert_non_null(strstr(lm_last_error(), "max_tokens"));

    ha_runtime *rt = NULL;
    assert_int_equal(ha_runtime_open(NULL, &rt), HA_OK);
    ha_weights *w = random_hash_weights(rt, cfg->num_layers - 1);
    sc.max_tokens = 64;
    sc.rt = rt;
    sc.hash_weights = w;
    assert_int_equal(lm_session_create(model, &sc, &none), HA_ERR_SHAPE);
    assert_null(none);
    assert_non_null(strstr(lm_last_error(), "layers"));
    ha_weights_free(w);
    ha_runtime_close(rt);

    lm_model *m = (lm_model *)1;
    assert_int_equal(lm_model_load("/nonexistent/lm-test-dir", &m), HA_ERR_IO);
    assert_null(m);
}

/* config.json: what the runner cannot run is refused with a message naming the field. */
static void test_config_errors(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        ha_status want;
        const char *says;
    } cases[] = {
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 2,"
         " \"intermediate_size\": 96, \"vocab_size\": 100, \"max_position_embeddings\": 64}",
         HA_OK, ""},
        {"{\"model_type\": \"gpt2\"}", HA_ERR_UNSUPPORTED, "model_type"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64}", HA_ERR_FORMAT, "num_hidden_layers"},
        {"{\"model_type\": \"llama\", \"attention_bias\": true}", HA_ERR_UNSUPPORTED, "attention_bias"},
        {"{\"model_type\": \"llama\", \"rope_scaling\": {\"type\": \"linear\"}}", HA_ERR_UNSUPPORTED, "rope_scaling"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 64, \"num_hidden_layers\": 2, \"num_attention_heads\": 3,"
         " \"num_key_value_heads\": 2, \"intermediate_size\": 96, \"vocab_size\": 100,"
         " \"max_position_embeddings\": 64}",
         HA_ERR_FORMAT, "multiple"},
        {"{\"model_type\": \"llama\", \"hidden_size\": -4}", HA_ERR_FORMAT, "hidden_size"},
        /* found by tests/fuzz/fuzz_config: a positive double that is 0 (or infinite) as a float */
        {"{\"model_type\": \"llama\", \"rms_norm_eps\": 1e-60}", HA_ERR_FORMAT, "rms_norm_eps"},
        {"{\"model_type\": \"llama\", \"rms_norm_eps\": 1e300}", HA_ERR_FORMAT, "rms_norm_eps"},
        {"[1, 2", HA_ERR_FORMAT, "line"},
    };
    char path[] = "/tmp/lm_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fputs(cases[i].json, fp);
        fclose(fp);
        lm_config c;
        ha_status st = lm_config_load(path, &c);
        if (st != cases[i].want || !strstr(lm_last_error(), cases[i].says))
            fail_msg("case %zu: status %d (%s), want %d mentioning \"%s\"", i, st, lm_last_error(), cases[i].want,
                     cases[i].says);
        if (st == HA_OK) { /* the defaults: Hkv = Hq, head_dim = hidden / Hq, no token ids, untied */
            assert_int_equal(c.num_kv_heads, 2);
            assert_int_equal(c.head_dim, 32);
            assert_int_equal(c.bos_id, -1);
            assert_int_equal(c.tie_embeddings, 0);
            assert_true(c.rope_theta == 10000.0);
        }
    }
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prefill_matches_reference),
        cmocka_unit_test(test_prefill_in_odd_slices),
        cmocka_unit_test(test_prefill_last_and_continued),
        cmocka_unit_test(test_decode_matches_reference),
        cmocka_unit_test(test_greedy_generation),
        cmocka_unit_test(test_hashattn_all_kept_is_dense),
        cmocka_unit_test(test_hashattn_tight_budget),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
