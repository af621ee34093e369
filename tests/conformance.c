/*
 * conformance.c — runs every stage through the public API on the backend that HASHATTN_BACKEND
 * selects and compares with the core's scalar reference (SPEC §3), case by case, on fresh random
 * data from a seeded PRNG:
 *
 *   match   identical index sets (counts and indices) for every sequence and selection head;
 *   encode  identical bits except where |y_i| < 1e-3·max|y| (flips are counted);
 *   attend  ‖o − o_ref‖/‖o_ref‖ ≤ 1e-5 (fp32 storage) or 1e-2 (fp16/bf16), lse within 1e-4 / 1e-2;
 *   dense   ha_dense_attend and every sequence the budget keeps whole equal plain softmax attention;
 *   decode  ha_decode_step equals encode-into-cache, match, attend done by the reference, and the
 *           cache codes it wrote are checked by a later ha_match under a "probe" plan without sink
 *           and local windows (so every token's code decides the selection).
 *
 * Keys (and the queries of the fused step, whose codes cannot be read back) are drawn so that no
 * MLP output lies within 2e-3·max|y| of zero: their codes are unambiguous, so any difference in the
 * selected set is a real bug. Free queries (ha_encode_queries) are unconstrained and exercise the
 * near-zero tolerance. Inputs are never zero; padding in every buffer is NaN, outputs are poisoned
 * before each call and their padding must stay poisoned.
 *
 * Exit 77 (meson: skipped) when the selected backend cannot run here. HASHATTN_TEST_SEED overrides
 * the base seed; HASHATTN_TEST_CASES=substring runs only the matching cases.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "conformance_cases.h"
#include "ha_shared.h"
#include "reference.h"
#include "reference_steps.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights_host.h"

#define MAX_BATCH CONF_MAX_BATCH
#define DEFAULT_SEED 0x5eed2024ull
/* SPEC §3: a bit may differ from the reference only where |y_i| < 1e-3·max|y|. */
#define FLIP_TOLERANCE 1e-3
/* Inputs whose codes must be unambiguous keep every |y_i| ≥ this·max|y| (stricter than the tolerance). */
#define UNAMBIGUOUS_MARGIN 2e-3
#define MAX_DRAWS 1000
#define PROBE_FRACTION 0.3
/* Free (unconstrained) queries encoded per layer: enough rows to meet near-zero outputs. */
#define FREE_BATCH 64

/* ---- failure context ---------------------------------------------------------------------------- */

static ha_runtime *g_rt;
static char g_context[640];

#define CHECK(cond, ...)                                                                                      \
    do {                                                                                                      \
        if (!(cond)) {                                                                                        \
            print_error("[%s] ", g_context);                                                                  \
            print_error(__VA_ARGS__);                                                                         \
            print_error("\n");                                                                                \
            fail();                                                                                           \
        }                                                                                                     \
    } while (0)

#define CHECK_OK(call)                                                                                        \
    do {                                                                                                      \
        ha_status st_ = (call);                                                                               \
        CHECK(st_ == HA_OK, "%s -> %s: %s", #call, ha_status_string(st_), ha_last_error());                   \
    } while (0)

/* ---- one case's state ----------------------------------------------------------------------------- */

typedef tu_selection selection;

typedef struct conf_run {
    const conf_case *c;
    tu_rng rng;
    int32_t batch, free_batch, max_len, words, code_heads, sel_heads;
    ha_weights_host ref_w; /* the same file bytes, parsed by the core's host loader */
    ha_weights *w;
    ha_plan *plan, *probe, *encode_plan; /* encode_plan: max_batch = free_batch */
    selection plan_sel, probe_sel;
    float scale;
    ha_cache *cache;
    tu_kv kv;
    tu_tensor3 q, q_free, out;
    float *lse_dev;
    uint32_t *codes_dev; /* [free_batch, Hq, words] */
    int32_t *lens_dev;   /* scratch for per-call lengths */
    uint32_t *ref_kcodes; /* [batch, code_heads, kv.tokens, words] for the current layer */
    double max_rel_err;
    double top_lse; /* largest finite reference lse seen */
    int64_t flips, near_zero, bits_compared;
} conf_run;

static int is_half(ha_dtype dt)
{
    return dt != HA_F32;
}

/* ---- weights ---------------------------------------------------------------------------------- */

static void fill_mlp(tu_rng *r, const ha_mlp_desc *d)
{
    for (int32_t i = 0; i < d->depth; i++) {
        int64_t outs = (int64_t)d->heads * d->dims[i + 1];
        float w_scale = (float)sqrt(3.0 / d->dims[i]); /* keeps the pre-activations O(1) */
        float *w = (float *)d->w[i], *b = (float *)d->b[i];
        for (int64_t j = 0; j < outs * d->dims[i]; j++)
            w[j] = tu_rng_nonzero(r, w_scale);
        for (int64_t j = 0; j < outs; j++)
            b[j] = tu_rng_nonzero(r, 0.2f);
    }
}

/** Random weights → safetensors file → (a) the runtime's ha_weights, (b) the reference's host copy. */
static void make_weights(conf_run *run)
{
    const conf_case *c = run->c;
    uint8_t dense[8] = {0};
    for (int32_t l = 0; l < c->num_layers; l++)
        dense[l] = (c->dense_mask >> l) & 1;
    int32_t k_heads = c->group_mode ? c->kv_heads : c->q_heads;
    ha_weights_host gen;
    CHECK_OK(ha_weights_host_alloc(&gen, c->num_layers, c->bits, c->depth, c->hidden, c->head_dim, c->q_heads, k_heads,
                                   dense));
    for (int32_t l = 0; l < c->num_layers; l++) {
        if (!dense[l]) {
            fill_mlp(&run->rng, &gen.q[l]);
            fill_mlp(&run->rng, &gen.k[l]);
        }
    }
    const char *tmp = getenv("TMPDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/hashattn-conformance-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp(%s) failed", path);
    close(fd);
    char err[512] = "";
    ha_status st = ha_weights_host_write(&gen, path, c->weights_dtype, err, sizeof err);
    CHECK(st == HA_OK, "ha_weights_host_write: %s", err);
    ha_weights_host_free(&gen);

    size_t size;
    unsigned char *bytes = tu_read_file(path, &size);
    ha_st_file parsed;
    st = ha_st_parse(bytes, size, &parsed, err, sizeof err);
    CHECK(st == HA_OK, "ha_st_parse: %s", err);
    st = ha_weights_host_from_st(&parsed, &run->ref_w, err, sizeof err);
    CHECK(st == HA_OK, "ha_weights_host_from_st: %s", err);
    ha_st_close(&parsed);

    if (c->load_from_memory) {
        CHECK_OK(ha_weights_load_memory(g_rt, bytes, size, &run->w));
        tu_poison(bytes, size); /* the runtime must have copied what it needs */
    } else {
        CHECK_OK(ha_weights_load(g_rt, path, &run->w));
    }
    free(bytes);
    unlink(path);

    ha_weights_info info;
    CHECK_OK(ha_weights_get_info(run->w, &info));
    int32_t n_dense = 0;
    for (int32_t l = 0; l < c->num_layers; l++)
        n_dense += dense[l];
    CHECK(info.num_layers == c->num_layers && info.bits == c->bits && info.words == (c->bits + 31) / 32 &&
              info.mlp_depth == c->depth && info.head_dim == c->head_dim && info.q_heads == c->q_heads &&
              info.k_heads == k_heads && info.num_dense_layers == n_dense &&
              info.mode == (k_heads < c->q_heads ? HA_MODE_GROUP : HA_MODE_PAPER),
          "ha_weights_get_info disagrees with the file written (layers %d bits %d words %d depth %d d %d q %d k %d "
          "mode %d dense %d)",
          info.num_layers, info.bits, info.words, info.mlp_depth, info.head_dim, info.q_heads, info.k_heads,
          (int)info.mode, info.num_dense_layers);
    for (int32_t l = 0; l < c->num_layers; l++)
        CHECK(ha_weights_layer_is_dense(run->w, l) == dense[l], "ha_weights_layer_is_dense(%d) = %d, expected %d", l,
              ha_weights_layer_is_dense(run->w, l), dense[l]);
    CHECK(ha_weights_layer_is_dense(run->w, c->num_layers) == -1, "ha_weights_layer_is_dense(out of range) != -1");
    run->words = info.words;
    run->code_heads = k_heads;
}

/* ---- plans ---------------------------------------------------------------------------------------- */

static int64_t plan_max_tokens(const conf_run *run)
{
    return run->max_len + run->c->extra_tokens;
}

static ha_plan *make_plan(conf_run *run, const ha_weights *w, int32_t max_batch, const selection *sel, float scale)
{
    const conf_case *c = run->c;
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, max_batch, plan_max_tokens(run), c->q_heads, c->kv_heads, c->head_dim);
    cfg.sink = sel->sink;
    cfg.local = sel->local;
    cfg.heavy_fraction = sel->heavy_fraction;
    cfg.heavy_count = sel->heavy_count;
    cfg.scale = scale;
    ha_plan *plan = NULL;
    CHECK_OK(ha_plan_create(g_rt, w, &cfg, &plan));
    return plan;
}

static void check_plan_queries(const conf_run *run, const ha_plan *plan, const selection *sel)
{
    int32_t sink = sel->sink < 0 ? 128 : sel->sink, local = sel->local < 0 ? 128 : sel->local;
    int64_t max_tokens = plan_max_tokens(run);
    CHECK(ha_plan_selection_heads(plan) == run->sel_heads, "ha_plan_selection_heads = %d, expected %d",
          ha_plan_selection_heads(plan), run->sel_heads);
    int64_t max_kept = ha_plan_max_kept(plan);
    for (int64_t n = 0; n <= max_tokens; n += 1 + n / 7) {
        int64_t expected = ha_kept_for_length(n, sink, local, sel->heavy_fraction, sel->heavy_count);
        CHECK(ha_plan_kept_for_length(plan, n) == expected, "ha_plan_kept_for_length(%lld) = %lld, expected %lld",
              (long long)n, (long long)ha_plan_kept_for_length(plan, n), (long long)expected);
        CHECK(expected <= max_kept, "ha_plan_max_kept = %lld < kept(%lld) = %lld", (long long)max_kept, (long long)n,
              (long long)expected);
    }
}

/* ---- inputs ----------------------------------------------------------------------------------- */

/**
 * Fills a row with random values until every listed MLP head (heads [first, first + count) of each
 * sparse layer's query or key side) codes it unambiguously.
 */
static void fill_unambiguous_row(conf_run *run, void *row, ha_dtype dt, float scale, int key_side, int32_t first,
                                 int32_t count, float *x, double *y)
{
    const conf_case *c = run->c;
    for (int attempt = 0; attempt < MAX_DRAWS; attempt++) {
        tu_fill_row(&run->rng, row, dt, c->head_dim, scale);
        tu_load_row(row, dt, c->head_dim, x);
        int ok = 1;
        for (int32_t l = 0; l < c->num_layers && ok; l++) {
            if (run->ref_w.dense[l])
                continue;
            const ha_mlp_desc *desc = key_side ? &run->ref_w.k[l] : &run->ref_w.q[l];
            for (int32_t m = first; m < first + count && ok; m++)
                ok = tu_code_unambiguous(desc, m, x, y, UNAMBIGUOUS_MARGIN);
        }
        if (ok)
            return;
    }
    CHECK(0, "could not draw an unambiguous %s row in %d attempts", key_side ? "key" : "query", MAX_DRAWS);
}

static void make_inputs(conf_run *run)
{
    const conf_case *c = run->c;
    float *x = malloc((size_t)c->head_dim * sizeof(float));
    double *y = malloc((size_t)c->bits * sizeof(double));
    assert_true(x && y);

    tu_kv_create(&run->kv, g_rt, &run->rng, c->kv_dtype, run->batch, c->kv_heads, c->head_dim, run->max_len + 2,
                 c->page_size, c->padded);
    int32_t per_kv_head = run->code_heads / c->kv_heads; /* key MLP heads reading one KV head */
    for (int32_t b = 0; b < run->batch; b++) {
        for (int32_t h = 0; h < c->kv_heads; h++) {
            for (int64_t t = 0; t < c->lens[b]; t++) {
                fill_unambiguous_row(run, tu_kv_row(&run->kv, 0, b, h, t), c->kv_dtype, 1.0f, 1, h * per_kv_head,
                                     per_kv_head, x, y);
                tu_fill_row(&run->rng, tu_kv_row(&run->kv, 1, b, h, t), c->kv_dtype, c->head_dim, 1.0f);
            }
        }
    }
    tu_kv_upload(&run->kv, g_rt);

    tu_tensor3_create(&run->q, g_rt, &run->rng, c->q_dtype, run->batch, c->q_heads, c->head_dim, c->padded);
    tu_tensor3_create(&run->q_free, g_rt, &run->rng, c->q_dtype, run->free_batch, c->q_heads, c->head_dim, c->padded);
    tu_tensor3_create(&run->out, g_rt, &run->rng, c->out_dtype, run->batch, c->q_heads, c->head_dim, c->padded);
    for (int32_t b = 0; b < run->free_batch; b++) {
        for (int32_t h = 0; h < c->q_heads; h++) {
            if (b < run->batch)
                fill_unambiguous_row(run, tu_tensor3_row(&run->q, b, h), c->q_dtype, c->q_scale, 0, h, 1, x, y);
            tu_fill_row(&run->rng, tu_tensor3_row(&run->q_free, b, h), c->q_dtype, c->head_dim, c->q_scale);
        }
    }
    tu_tensor3_upload(&run->q, g_rt);
    tu_tensor3_upload(&run->q_free, g_rt);
    free(x);
    free(y);

    run->lse_dev = tu_dev_alloc(g_rt, (size_t)run->batch * c->q_heads * sizeof(float));
    run->codes_dev = tu_dev_alloc(g_rt, (size_t)run->free_batch * c->q_heads * run->words * sizeof(uint32_t));
    run->lens_dev = tu_dev_alloc(g_rt, (size_t)run->batch * sizeof(int32_t));
    run->ref_kcodes = malloc((size_t)run->batch * run->code_heads * (size_t)run->kv.tokens * run->words * sizeof(uint32_t));
    assert_non_null(run->ref_kcodes);
}

/** Sets the backend's per-call length array and returns it. */
static const int32_t *upload_lens(conf_run *run, const int32_t *lens)
{
    tu_to_dev(g_rt, run->lens_dev, lens, (size_t)run->batch * sizeof(int32_t));
    return run->lens_dev;
}

/* ---- reference stages ------------------------------------------------------------------------- */

/** The reference's view of this run: its shapes and its key-code buffer. */
static tu_ref reference_of(const conf_run *run)
{
    const conf_case *c = run->c;
    tu_ref r = {run->batch, c->q_heads, c->kv_heads, c->head_dim, run->code_heads, run->sel_heads, run->words, c->bits,
                run->kv.tokens, run->ref_kcodes};
    return r;
}

static void ref_key_codes(conf_run *run, int32_t layer)
{
    tu_ref r = reference_of(run);
    tu_ref_key_codes(&r, &run->ref_w.k[layer], tu_kv_rows(&run->kv, 0), run->c->lens, run->max_len);
}

static void ref_query_codes(const conf_run *run, int32_t layer, const tu_tensor3 *q, uint32_t *codes)
{
    tu_ref r = reference_of(run);
    tu_ref_query_codes(&r, &run->ref_w.q[layer], tu_tensor3_rows(q), codes);
}

static void ref_match(const conf_run *run, const selection *sel, int64_t max_kept, const uint32_t *q_codes,
                      const int32_t *lens, int32_t *indices, int32_t *counts)
{
    tu_ref r = reference_of(run);
    tu_ref_match(&r, sel, q_codes, lens, max_kept, indices, counts);
}

/** Reference attention into out [batch, Hq, d] (fp32) and lse; indices NULL = dense. */
static void ref_attend(const conf_run *run, const int32_t *lens, const int32_t *indices, const int32_t *counts,
                       int64_t index_stride, float *out, float *lse)
{
    tu_ref r = reference_of(run);
    tu_ref_attend(&r, tu_tensor3_rows(&run->q), tu_kv_rows(&run->kv, 0), tu_kv_rows(&run->kv, 1), run->scale, lens,
                  indices, counts, index_stride, out, lse);
}

/* ---- comparisons -------------------------------------------------------------------------------- */

/** Encode tolerance (SPEC §3): every differing bit of q's codes must be a near-zero output. */
static void check_query_codes(conf_run *run, int32_t layer, const tu_tensor3 *q, const uint32_t *codes,
                              int require_exact)
{
    const conf_case *c = run->c;
    const ha_mlp_desc *desc = &run->ref_w.q[layer];
    float *x = malloc((size_t)c->head_dim * sizeof(float));
    double *y = malloc((size_t)c->bits * sizeof(double));
    assert_true(x && y);
    for (int32_t b = 0; b < q->batch; b++) {
        for (int32_t h = 0; h < c->q_heads; h++) {
            tu_load_row(tu_tensor3_row(q, b, h), c->q_dtype, c->head_dim, x);
            ha_ref_mlp_forward(desc, h, x, y);
            double max_abs = 0.0;
            for (int32_t i = 0; i < c->bits; i++)
                max_abs = fmax(max_abs, fabs(y[i]));
            const uint32_t *code = codes + ((int64_t)b * c->q_heads + h) * run->words;
            for (int32_t i = 0; i < run->words * 32; i++) {
                int got = (code[i / 32] >> (i % 32)) & 1;
                if (i >= c->bits) {
                    CHECK(!got, "layer %d: query code (b %d, h %d) has padding bit %d set (bits = %d)", layer, b, h, i,
                          c->bits);
                    continue;
                }
                int near_zero = fabs(y[i]) < FLIP_TOLERANCE * max_abs;
                run->near_zero += near_zero;
                run->bits_compared++;
                if (got == (y[i] > 0.0))
                    continue;
                CHECK(near_zero && !require_exact,
                      "layer %d: query code (b %d, h %d) bit %d = %d but y = %.9g (max|y| = %.6g): not a near-zero flip",
                      layer, b, h, i, got, y[i], max_abs);
                run->flips++;
            }
        }
    }
    free(x);
    free(y);
}

/**
 * ha_match under `plan` with backend query codes q_codes_dev (host copy q_codes) at lengths lens must
 * select exactly the reference's set. ref_indices/ref_counts (optional) receive the reference's.
 */
static void check_match(conf_run *run, ha_plan *plan, const selection *sel, int32_t layer, const uint32_t *q_codes,
                        const uint32_t *q_codes_dev, const int32_t *lens, int32_t *ref_indices, int32_t *ref_counts,
                        const char *what)
{
    int64_t max_kept = ha_plan_max_kept(plan);
    int64_t rows = (int64_t)run->batch * run->sel_heads;
    size_t idx_bytes = (size_t)(rows * max_kept) * sizeof(int32_t), cnt_bytes = (size_t)rows * sizeof(int32_t);
    int32_t *idx_dev = tu_dev_alloc(g_rt, idx_bytes), *cnt_dev = tu_dev_alloc(g_rt, cnt_bytes);
    int32_t *idx = malloc(idx_bytes ? idx_bytes : 1), *cnt = malloc(cnt_bytes);
    int32_t *want_idx = malloc(idx_bytes ? idx_bytes : 1), *want_cnt = malloc(cnt_bytes);
    assert_true(idx && cnt && want_idx && want_cnt);
    tu_dev_poison(g_rt, idx_dev, idx_bytes);
    tu_dev_poison(g_rt, cnt_dev, cnt_bytes);

    ha_kv kv = tu_kv_backend(&run->kv);
    CHECK_OK(ha_match(plan, run->cache, layer, q_codes_dev, &kv, run->batch, upload_lens(run, lens), idx_dev, cnt_dev,
                      NULL));
    tu_from_dev(g_rt, idx, idx_dev, idx_bytes);
    tu_from_dev(g_rt, cnt, cnt_dev, cnt_bytes);
    tu_poison(want_idx, idx_bytes);
    ref_match(run, sel, max_kept, q_codes, lens, want_idx, want_cnt);

    for (int32_t b = 0; b < run->batch; b++) {
        for (int32_t s = 0; s < run->sel_heads; s++) {
            int64_t row = (int64_t)b * run->sel_heads + s;
            int64_t kept = ha_plan_kept_for_length(plan, lens[b]);
            CHECK(want_cnt[row] == kept, "%s, layer %d: the reference kept %d of %d tokens, the plan says %lld", what,
                  layer, want_cnt[row], lens[b], (long long)kept);
            CHECK(cnt[row] == want_cnt[row], "%s, layer %d, seq %d (n %d), selection head %d: count %d, reference %d",
                  what, layer, b, lens[b], s, cnt[row], want_cnt[row]);
            const int32_t *got = idx + row * max_kept, *want = want_idx + row * max_kept;
            for (int64_t i = 0; i < cnt[row]; i++)
                CHECK(got[i] == want[i],
                      "%s, layer %d, seq %d (n %d), selection head %d: index[%lld] = %d, reference %d (count %d)", what,
                      layer, b, lens[b], s, (long long)i, got[i], want[i], cnt[row]);
        }
    }
    if (ref_indices)
        memcpy(ref_indices, want_idx, idx_bytes);
    if (ref_counts)
        memcpy(ref_counts, want_cnt, cnt_bytes);
    free(idx);
    free(cnt);
    free(want_idx);
    free(want_cnt);
    tu_dev_free(g_rt, idx_dev);
    tu_dev_free(g_rt, cnt_dev);
}

/** Poisons out and lse in backend memory before a call. */
static void poison_outputs(conf_run *run)
{
    tu_poison(run->out.host, run->out.bytes);
    tu_tensor3_upload(&run->out, g_rt);
    tu_dev_poison(g_rt, run->lse_dev, (size_t)run->batch * run->c->q_heads * sizeof(float));
}

/**
 * Compares the backend's out/lse with ref_out/ref_lse (SPEC §3 tolerances) for the sequences with
 * only[b] != 0 (only NULL: all), and checks that out's padding is still poisoned.
 */
static void check_outputs(conf_run *run, const float *ref_out, const float *ref_lse, const int32_t *lens,
                          const uint8_t *only, const char *what)
{
    const conf_case *c = run->c;
    int64_t rows = (int64_t)run->batch * c->q_heads;
    float *got = malloc((size_t)rows * c->head_dim * sizeof(float)), *lse = malloc((size_t)rows * sizeof(float));
    assert_true(got && lse);
    tu_tensor3_download(&run->out, g_rt);
    tu_tensor3_to_f32(&run->out, got);
    tu_from_dev(g_rt, lse, run->lse_dev, (size_t)rows * sizeof(float));
    CHECK(tu_tensor3_padding_poisoned(&run->out), "%s wrote into the padding of out", what);

    int storage_half = is_half(c->q_dtype) || is_half(c->kv_dtype);
    double out_tol = storage_half || is_half(c->out_dtype) ? 1e-2 : 1e-5;
    double lse_tol = storage_half ? 1e-2 : 1e-4;
    for (int32_t b = 0; b < run->batch; b++) {
        if (only && !only[b])
            continue;
        for (int32_t h = 0; h < c->q_heads; h++) {
            int64_t row = (int64_t)b * c->q_heads + h;
            const float *o = got + row * c->head_dim, *r = ref_out + row * c->head_dim;
            double rel = tu_rel_l2(o, r, c->head_dim);
            if (isfinite(rel) && rel > run->max_rel_err)
                run->max_rel_err = rel;
            CHECK(rel <= out_tol, "%s: seq %d (n %d), head %d: relative error %.3g > %.0e (out[0] = %g, ref %g)", what,
                  b, lens[b], h, rel, out_tol, (double)o[0], (double)r[0]);
            if (isfinite(ref_lse[row]) && ref_lse[row] > run->top_lse)
                run->top_lse = ref_lse[row];
            if (isinf(ref_lse[row]))
                CHECK(isinf(lse[row]) && lse[row] < 0, "%s: seq %d (n %d), head %d: lse = %g, expected -inf", what, b,
                      lens[b], h, (double)lse[row]);
            else
                CHECK(fabs((double)lse[row] - (double)ref_lse[row]) <= lse_tol,
                      "%s: seq %d (n %d), head %d: lse = %.7g, reference %.7g", what, b, lens[b], h, (double)lse[row],
                      (double)ref_lse[row]);
        }
    }
    free(got);
    free(lse);
}

/* ---- the checks of one layer ---------------------------------------------------------------------- */

typedef struct ref_buffers {
    float *out, *dense_out, *lse, *dense_lse;
    int32_t *indices, *counts;
    uint32_t *q_codes, *free_codes;
} ref_buffers;

static void dense_reference(conf_run *run, const int32_t *lens, ref_buffers *r)
{
    ref_attend(run, lens, NULL, NULL, 0, r->dense_out, r->dense_lse);
}

static void run_dense_attend(conf_run *run, ha_plan *plan, const int32_t *lens)
{
    ha_tensor3 q = tu_tensor3_backend(&run->q), out = tu_tensor3_backend(&run->out);
    ha_kv kv = tu_kv_backend(&run->kv);
    poison_outputs(run);
    CHECK_OK(ha_dense_attend(plan, &q, &kv, run->batch, upload_lens(run, lens), &out, run->lse_dev, NULL));
}

static void run_decode_step(conf_run *run, int32_t layer, const int32_t *lens, int32_t new_tokens)
{
    ha_step step;
    memset(&step, 0, sizeof step);
    step.batch = run->batch;
    step.seq_lens = upload_lens(run, lens);
    step.new_tokens = new_tokens;
    step.q = tu_tensor3_backend(&run->q);
    step.kv = tu_kv_backend(&run->kv);
    step.out = tu_tensor3_backend(&run->out);
    step.lse = run->lse_dev;
    poison_outputs(run);
    CHECK_OK(ha_decode_step(run->plan, run->cache, layer, &step));
}

/** Lengths of the sequences when `steps_left` decode steps of `per_step` tokens each are still to come. */
static void lengths_at(const conf_run *run, int32_t steps_left, int32_t per_step, int32_t *lens)
{
    for (int32_t b = 0; b < run->batch; b++) {
        int32_t n = run->c->lens[b] - steps_left * per_step;
        lens[b] = n > 0 ? n : 0;
    }
}

static void check_dense_layer(conf_run *run, int32_t layer, ref_buffers *r)
{
    const int32_t *lens = run->c->lens;
    ha_kv kv = tu_kv_backend(&run->kv);
    char what[64];
    /* encoding keys of a dense layer is a no-op that succeeds */
    CHECK_OK(ha_cache_encode_keys(run->plan, run->cache, layer, &kv, run->batch, upload_lens(run, lens), run->max_len,
                                  NULL));
    dense_reference(run, lens, r);
    snprintf(what, sizeof what, "ha_decode_step on dense layer %d", layer);
    run_decode_step(run, layer, lens, run->c->new_tokens);
    check_outputs(run, r->dense_out, r->dense_lse, lens, NULL, what);
}

static void check_sparse_layer(conf_run *run, int32_t layer, ref_buffers *r)
{
    const conf_case *c = run->c;
    int64_t max_kept = ha_plan_max_kept(run->plan);
    size_t code_bytes = (size_t)run->batch * c->q_heads * run->words * sizeof(uint32_t);
    ha_kv kv = tu_kv_backend(&run->kv);
    ha_tensor3 q = tu_tensor3_backend(&run->q), q_free = tu_tensor3_backend(&run->q_free);
    ha_tensor3 out = tu_tensor3_backend(&run->out);
    char what[96];

    ref_key_codes(run, layer);
    ref_query_codes(run, layer, &run->q, r->q_codes);

    /* 1. prefill: encode the prompt's keys in two chunks */
    int32_t steps = c->decode_steps, per_step = c->new_tokens;
    int32_t prompt[MAX_BATCH], half[MAX_BATCH], longest = 0, longest_rest = 0;
    lengths_at(run, per_step ? steps : 0, per_step, prompt);
    for (int32_t b = 0; b < run->batch; b++) {
        half[b] = prompt[b] / 2;
        if (half[b] > longest)
            longest = half[b];
        if (prompt[b] - half[b] > longest_rest)
            longest_rest = prompt[b] - half[b];
    }
    if (longest > 0)
        CHECK_OK(ha_cache_encode_keys(run->plan, run->cache, layer, &kv, run->batch, upload_lens(run, half), longest,
                                      NULL));
    if (longest_rest > 0)
        CHECK_OK(ha_cache_encode_keys(run->plan, run->cache, layer, &kv, run->batch, upload_lens(run, prompt),
                                      longest_rest, NULL));

    /* 2. the codes it wrote, seen through a selection that depends on every token's code */
    tu_to_dev(g_rt, run->codes_dev, r->q_codes, code_bytes);
    snprintf(what, sizeof what, "probe ha_match after ha_cache_encode_keys");
    check_match(run, run->probe, &run->probe_sel, layer, r->q_codes, run->codes_dev, prompt, NULL, NULL, what);

    /* 3. encode queries: unambiguous ones exactly, free ones within the near-zero tolerance */
    tu_dev_poison(g_rt, run->codes_dev, code_bytes);
    CHECK_OK(ha_encode_queries(run->plan, layer, &q, run->batch, run->codes_dev, NULL));
    tu_from_dev(g_rt, r->free_codes, run->codes_dev, code_bytes);
    check_query_codes(run, layer, &run->q, r->free_codes, 1);
    size_t free_code_bytes = (size_t)run->free_batch * c->q_heads * run->words * sizeof(uint32_t);
    tu_dev_poison(g_rt, run->codes_dev, free_code_bytes);
    CHECK_OK(ha_encode_queries(run->encode_plan, layer, &q_free, run->free_batch, run->codes_dev, NULL));
    tu_from_dev(g_rt, r->free_codes, run->codes_dev, free_code_bytes);
    check_query_codes(run, layer, &run->q_free, r->free_codes, 0);

    /* 4. match with the backend's own codes of the first `batch` free queries (the reference reads
     *    the same codes) */
    check_match(run, run->plan, &run->plan_sel, layer, r->free_codes, run->codes_dev, prompt, r->indices, r->counts,
                "ha_match");

    /* 5. attend over the reference's selection */
    int64_t rows = (int64_t)run->batch * run->sel_heads;
    int32_t *idx_dev = tu_dev_upload(g_rt, r->indices, (size_t)(rows * max_kept) * sizeof(int32_t));
    int32_t *cnt_dev = tu_dev_upload(g_rt, r->counts, (size_t)rows * sizeof(int32_t));
    poison_outputs(run);
    CHECK_OK(ha_attend(run->plan, &q, &kv, run->batch, upload_lens(run, prompt), idx_dev, cnt_dev, &out, run->lse_dev,
                       NULL));
    ref_attend(run, prompt, r->indices, r->counts, max_kept, r->out, r->lse);
    check_outputs(run, r->out, r->lse, prompt, NULL, "ha_attend");
    tu_dev_free(g_rt, idx_dev);
    tu_dev_free(g_rt, cnt_dev);

    /* 6. dense attention over the full lengths */
    run_dense_attend(run, run->plan, c->lens);
    dense_reference(run, c->lens, r);
    check_outputs(run, r->dense_out, r->dense_lse, c->lens, NULL, "ha_dense_attend");

    /* 7. fused decode steps vs the reference pipeline; sequences kept whole also vs dense */
    if (per_step == 0) { /* keys already encoded: encode everything first, the step encodes nothing */
        CHECK_OK(ha_cache_encode_keys(run->plan, run->cache, layer, &kv, run->batch, upload_lens(run, c->lens),
                                      run->max_len, NULL));
        steps = 1;
    }
    int32_t cur[MAX_BATCH];
    for (int32_t s = steps - 1; s >= 0; s--) {
        lengths_at(run, s, per_step, cur);
        run_decode_step(run, layer, cur, per_step);
        ref_match(run, &run->plan_sel, max_kept, r->q_codes, cur, r->indices, r->counts);
        ref_attend(run, cur, r->indices, r->counts, max_kept, r->out, r->lse);
        snprintf(what, sizeof what, "ha_decode_step (layer %d, %d step(s) before the last)", layer, s);
        check_outputs(run, r->out, r->lse, cur, NULL, what);

        uint8_t whole[MAX_BATCH];
        int any = 0;
        for (int32_t b = 0; b < run->batch; b++)
            any |= whole[b] = ha_plan_kept_for_length(run->plan, cur[b]) == cur[b];
        if (any) {
            dense_reference(run, cur, r);
            snprintf(what, sizeof what, "ha_decode_step (layer %d) vs dense where every token is kept", layer);
            check_outputs(run, r->dense_out, r->dense_lse, cur, whole, what);
        }
    }

    /* 8. the key codes the decode steps wrote */
    tu_to_dev(g_rt, run->codes_dev, r->q_codes, code_bytes);
    check_match(run, run->probe, &run->probe_sel, layer, r->q_codes, run->codes_dev, c->lens, NULL, NULL,
                "probe ha_match after ha_decode_step");
}

/* ---- one case ---------------------------------------------------------------------------------- */

static uint64_t base_seed(void)
{
    const char *env = getenv("HASHATTN_TEST_SEED");
    return env && *env ? strtoull(env, NULL, 0) : DEFAULT_SEED;
}

/** The seed of a case: a function of the base seed and the case's name (filtering keeps seeds). */
static uint64_t case_seed(const char *name)
{
    uint64_t base = base_seed();
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *p = name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    tu_rng r;
    tu_rng_seed(&r, base ^ h);
    return tu_rng_next(&r);
}

static void run_case(void **state)
{
    const conf_case *c = *state;
    conf_run run;
    memset(&run, 0, sizeof run);
    run.c = c;
    uint64_t seed = case_seed(c->name);
    tu_rng_seed(&run.rng, seed);
    char shape[400];
    conf_describe_case(c, shape, sizeof shape);
    snprintf(g_context, sizeof g_context, "case %s, seed 0x%016llx, HASHATTN_TEST_SEED=0x%llx; %s", c->name,
             (unsigned long long)seed, (unsigned long long)base_seed(), shape);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    run.batch = c->batch;
    for (int32_t b = 0; b < c->batch; b++)
        if (c->lens[b] > run.max_len)
            run.max_len = c->lens[b];
    if (run.max_len == 0)
        run.max_len = 1;

    make_weights(&run);
    run.sel_heads = run.code_heads;
    run.scale = c->scale > 0.0f ? c->scale : (float)(1.0 / sqrt((double)c->head_dim));
    run.plan_sel = (selection){c->sink, c->local, c->heavy_fraction, c->heavy_count};
    run.probe_sel = (selection){0, 0, PROBE_FRACTION, 0};
    run.free_batch = run.batch > FREE_BATCH ? run.batch : FREE_BATCH;
    run.plan = make_plan(&run, run.w, run.batch + c->extra_batch, &run.plan_sel, c->scale);
    run.probe = make_plan(&run, run.w, run.batch, &run.probe_sel, c->scale);
    run.encode_plan = make_plan(&run, run.w, run.free_batch, &run.plan_sel, c->scale);
    check_plan_queries(&run, run.plan, &run.plan_sel);
    check_plan_queries(&run, run.probe, &run.probe_sel);
    make_inputs(&run);

    ha_cache_config cc;
    memset(&cc, 0, sizeof cc);
    cc.struct_size = sizeof cc;
    cc.page_size = c->page_size;
    cc.max_batch = run.batch + c->extra_batch;
    cc.max_tokens = run.kv.tokens;
    cc.num_pages = c->page_size ? run.kv.capacity : 0;
    CHECK_OK(ha_cache_create(g_rt, run.w, &cc, &run.cache));
    CHECK(ha_cache_bytes(run.cache) > 0 || c->dense_mask == (1u << c->num_layers) - 1, "ha_cache_bytes = 0");

    int64_t rows = (int64_t)run.batch * c->q_heads, max_kept = ha_plan_max_kept(run.plan);
    ref_buffers r;
    r.out = malloc((size_t)rows * c->head_dim * sizeof(float));
    r.dense_out = malloc((size_t)rows * c->head_dim * sizeof(float));
    r.lse = malloc((size_t)rows * sizeof(float));
    r.dense_lse = malloc((size_t)rows * sizeof(float));
    r.indices = malloc((size_t)(run.batch * run.sel_heads * max_kept + 1) * sizeof(int32_t));
    r.counts = malloc((size_t)run.batch * run.sel_heads * sizeof(int32_t));
    r.q_codes = malloc((size_t)rows * run.words * sizeof(uint32_t));
    r.free_codes = malloc((size_t)run.free_batch * c->q_heads * run.words * sizeof(uint32_t));
    assert_true(r.out && r.dense_out && r.lse && r.dense_lse && r.indices && r.counts && r.q_codes && r.free_codes);

    /* a plan without weights does dense attention only */
    ha_plan *dense_plan = make_plan(&run, NULL, run.batch, &run.plan_sel, c->scale);
    run_dense_attend(&run, dense_plan, c->lens);
    dense_reference(&run, c->lens, &r);
    check_outputs(&run, r.dense_out, r.dense_lse, c->lens, NULL, "ha_dense_attend (plan without weights)");
    ha_plan_destroy(dense_plan);

    for (int32_t l = 0; l < c->num_layers; l++) {
        if (run.ref_w.dense[l])
            check_dense_layer(&run, l, &r);
        else
            check_sparse_layer(&run, l, &r);
    }

    CHECK(c->min_top_lse <= 0.0f || run.top_lse > c->min_top_lse,
          "the case needs an lse above %g but the largest was %g: change its data", (double)c->min_top_lse, run.top_lse);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("    %-28s seed %016llx  n_max %5d  B %d  encode flips %lld of %lld near-zero bits (%lld compared)  "
           "max rel err %.2e  top lse %.1f  %.2f s\n",
           c->name, (unsigned long long)seed, run.max_len, run.batch, (long long)run.flips, (long long)run.near_zero,
           (long long)run.bits_compared, run.max_rel_err, run.top_lse,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec));
    fflush(stdout);

    free(r.out);
    free(r.dense_out);
    free(r.lse);
    free(r.dense_lse);
    free(r.indices);
    free(r.counts);
    free(r.q_codes);
    free(r.free_codes);
    ha_cache_destroy(run.cache);
    tu_kv_destroy(&run.kv, g_rt);
    tu_tensor3_destroy(&run.q, g_rt);
    tu_tensor3_destroy(&run.q_free, g_rt);
    tu_tensor3_destroy(&run.out, g_rt);
    tu_dev_free(g_rt, run.lse_dev);
    tu_dev_free(g_rt, run.codes_dev);
    tu_dev_free(g_rt, run.lens_dev);
    free(run.ref_kcodes);
    ha_plan_destroy(run.plan);
    ha_plan_destroy(run.probe);
    ha_plan_destroy(run.encode_plan);
    ha_weights_free(run.w);
    ha_weights_host_free(&run.ref_w);
}

int main(void)
{
    const char *backend = getenv("HASHATTN_BACKEND");
    ha_status st = ha_runtime_open(NULL, &g_rt);
    if (st == HA_ERR_BACKEND_NOT_FOUND) {
        printf("SKIP: backend %s cannot run here: %s\n", backend ? backend : "(probe)", ha_last_error());
        return 77;
    }
    if (st != HA_OK) {
        fprintf(stderr, "ha_runtime_open: %s: %s\n", ha_status_string(st), ha_last_error());
        return 1;
    }
    const char *name = ha_runtime_backend_name(g_rt);
    printf("backend %s: %s\n", name, ha_runtime_backend_description(g_rt));
    if (backend && *backend && !strchr(backend, '/') && strcmp(backend, name) != 0) {
        fprintf(stderr, "HASHATTN_BACKEND=%s but the runtime opened backend '%s'\n", backend, name);
        ha_runtime_close(g_rt);
        return 1;
    }

    static conf_case cases[CONF_MAX_CASES];
    static struct CMUnitTest tests[CONF_MAX_CASES];
    int n_cases = conf_build_cases(cases), n_tests = 0;
    n_cases += conf_build_random_cases(cases + n_cases, CONF_MAX_CASES - n_cases, base_seed());
    const char *filter = getenv("HASHATTN_TEST_CASES");
    for (int i = 0; i < n_cases; i++) {
        if (filter && *filter && !strstr(cases[i].name, filter))
            continue;
        struct CMUnitTest t = {cases[i].name, run_case, NULL, NULL, &cases[i]};
        tests[n_tests++] = t;
    }
    int failed = _cmocka_run_group_tests("conformance", tests, (size_t)n_tests, NULL, NULL);
    ha_runtime_close(g_rt);
    return failed;
}
