/*
 * test_weights_host.c — the mapping-weights format (core/weights_host.c): random weights written and
 * read back in every dtype, paper and group mode, depth 1..4; every malformed-metadata, missing-,
 * misshapen- and unexpected-tensor case; dense layers with and without tensors.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ha_shared.h"
#include "weights_host.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/** Uniform in [-1, 1). */
static float rng_float(uint64_t *s)
{
    return (float)((double)(rng_next(s) >> 11) * 0x1p-52 - 1.0);
}

static char tmp_dir[256];

static int make_tmp_dir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/ha_test_wh_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state)
{
    (void)state;
    return rmdir(tmp_dir);
}

static void tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmp_dir, name);
}

static size_t floats_of(const ha_mlp_desc *d, int32_t i, int is_bias)
{
    size_t n = (size_t)d->heads * (size_t)d->dims[i + 1];
    return is_bias ? n : n * (size_t)d->dims[i];
}

static void fill_random(ha_weights_host *w, uint64_t *rng)
{
    for (int32_t l = 0; l < w->num_layers; l++) {
        if (w->dense[l])
            continue;
        for (int side = 0; side < 2; side++) {
            ha_mlp_desc *d = side ? &w->k[l] : &w->q[l];
            for (int32_t i = 0; i < d->depth; i++) {
                for (int bias = 0; bias < 2; bias++) {
                    float *p = (float *)(bias ? d->b[i] : d->w[i]);
                    for (size_t j = 0; j < floats_of(d, i, bias); j++)
                        p[j] = rng_float(rng) * 3.0f;
                }
            }
        }
    }
}

/** What a value becomes after a write in dtype and a read. */
static float through(float x, ha_st_dtype dt)
{
    if (dt == HA_ST_F16)
        return ha_f16_to_f32(ha_f32_to_f16(x));
    if (dt == HA_ST_BF16)
        return ha_bf16_to_f32(ha_f32_to_bf16(x));
    return x;
}

static void assert_same_weights(const ha_weights_host *a, const ha_weights_host *b, ha_st_dtype dt)
{
    assert_int_equal(a->num_layers, b->num_layers);
    assert_int_equal(a->bits, b->bits);
    assert_int_equal(a->words, b->words);
    assert_int_equal(a->words, (a->bits + 31) / 32);
    assert_int_equal(a->depth, b->depth);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->q_heads, b->q_heads);
    assert_int_equal(a->k_heads, b->k_heads);
    for (int32_t l = 0; l < a->num_layers; l++) {
        assert_int_equal(a->dense[l], b->dense[l]);
        for (int side = 0; side < 2; side++) {
            const ha_mlp_desc *da = side ? &a->k[l] : &a->q[l], *db = side ? &b->k[l] : &b->q[l];
            if (a->dense[l]) {
                assert_int_equal(db->heads, 0);
                continue;
            }
            assert_int_equal(da->heads, db->heads);
            assert_int_equal(db->heads, side ? b->k_heads : b->q_heads);
            assert_int_equal(da->depth, db->depth);
            assert_int_equal(db->dims[0], b->head_dim);
            assert_int_equal(db->dims[db->depth], b->bits);
            for (int32_t i = 0; i <= da->depth; i++)
                assert_int_equal(da->dims[i], db->dims[i]);
            for (int32_t i = 0; i < da->depth; i++) {
                for (int bias = 0; bias < 2; bias++) {
                    const float *pa = bias ? da->b[i] : da->w[i], *pb = bias ? db->b[i] : db->w[i];
                    for (size_t j = 0; j < floats_of(da, i, bias); j++)
                        if (through(pa[j], dt) != pb[j])
                            fail_msg("layer %d side %d linear %d %s[%zu]: %g != %g", (int)l, side, (int)i,
                                     bias ? "b" : "w", j, (double)through(pa[j], dt), (double)pb[j]);
                }
            }
        }
    }
}

/** Every w/b array of w lies inside its one storage allocation, without overlaps (checked by sum). */
static void assert_in_storage(const ha_weights_host *w)
{
    size_t total = 0;
    for (int32_t l = 0; l < w->num_layers; l++)
        for (int side = 0; side < 2 && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side ? &w->k[l] : &w->q[l];
            for (int32_t i = 0; i < d->depth; i++)
                total += floats_of(d, i, 0) + floats_of(d, i, 1);
        }
    for (int32_t l = 0; l < w->num_layers; l++)
        for (int side = 0; side < 2 && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side ? &w->k[l] : &w->q[l];
            for (int32_t i = 0; i < d->depth; i++) {
                assert_true(d->w[i] >= w->storage && d->w[i] + floats_of(d, i, 0) <= w->storage + total);
                assert_true(d->b[i] >= w->storage && d->b[i] + floats_of(d, i, 1) <= w->storage + total);
            }
        }
}

static ha_status load(const char *path, ha_weights_host *out, char *err, size_t err_size)
{
    ha_st_file f;
    ha_status st = ha_st_open(path, &f, err, err_size);
    if (st != HA_OK)
        return st;
    st = ha_weights_host_from_st(&f, out, err, err_size);
    ha_st_close(&f); /* the weights are a converted copy: the file may go */
    return st;
}

/* ---- round trips ------------------------------------------------------------------------- */

static void round_trip(int32_t layers, int32_t bits, int32_t depth, int32_t hidden, int32_t head_dim, int32_t q_heads,
                       int32_t k_heads, const uint8_t *dense, ha_st_dtype dt, uint64_t seed)
{
    ha_weights_host w, r;
    assert_int_equal(ha_weights_host_alloc(&w, layers, bits, depth, hidden, head_dim, q_heads, k_heads, dense), HA_OK);
    assert_in_storage(&w);
    uint64_t rng = seed;
    fill_random(&w, &rng);
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "w.safetensors");
    if (ha_weights_host_write(&w, path, dt, err, sizeof(err)) != HA_OK)
        fail_msg("write: %s", err);
    if (load(path, &r, err, sizeof(err)) != HA_OK)
        fail_msg("load: %s", err);
    assert_same_weights(&w, &r, dt);
    assert_in_storage(&r);

    /* the metadata says what the header comment promises */
    ha_st_file f;
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_OK);
    char expect[32];
    snprintf(expect, sizeof(expect), "%d", (int)bits);
    assert_string_equal(ha_st_meta(&f, "bits"), expect);
    const char *h = ha_st_meta(&f, "hidden");
    if (depth > 1 && h) {
        snprintf(expect, sizeof(expect), "%d", (int)hidden);
        assert_string_equal(h, expect);
    }
    int any_sparse = 0, any_dense = 0;
    for (int32_t l = 0; l < layers; l++) {
        any_dense |= w.dense[l];
        any_sparse |= !w.dense[l];
    }
    assert_int_equal(h != NULL, depth > 1 && any_sparse);
    assert_int_equal(ha_st_meta(&f, "dense_layers") != NULL, any_dense);
    for (size_t t = 0; t < f.n_tensors; t++)
        assert_int_equal(f.tensors[t].dtype, dt);
    ha_st_close(&f);

    ha_weights_host_free(&r);
    ha_weights_host_free(&w);
    assert_null(w.storage);
    assert_int_equal(unlink(path), 0);
}

static void test_round_trip_modes_depths(void **state)
{
    (void)state;
    static const int32_t heads[][2] = {{4, 4}, {8, 2}, {6, 3}, {4, 1}, {1, 1}, {6, 6}};
    static const int32_t bit_options[] = {32, 64};
    uint64_t seed = 1;
    for (size_t hi = 0; hi < sizeof(heads) / sizeof(heads[0]); hi++)
        for (int32_t depth = 1; depth <= HA_PLUGIN_MAX_MLP_DEPTH; depth++)
            for (size_t bi = 0; bi < 2; bi++) {
                uint8_t dense[3] = {(uint8_t)(seed % 3 == 0), 0, (uint8_t)(seed % 2)};
                int32_t hidden = 5 + (int32_t)(seed % 19);
                round_trip(3, bit_options[bi], depth, hidden, 12 + (int32_t)(seed % 5), heads[hi][0], heads[hi][1],
                           dense, HA_ST_F32, seed);
                seed++;
            }
}

static void test_round_trip_dtypes_and_odd_sizes(void **state)
{
    (void)state;
    static const ha_st_dtype dts[] = {HA_ST_F32, HA_ST_F16, HA_ST_BF16};
    uint8_t dense[5] = {1, 1, 0, 0, 1};
    for (size_t d = 0; d < 3; d++) {
        round_trip(5, 40, 3, 7, 9, 6, 2, dense, dts[d], 100 + d);
        round_trip(2, 1, 1, 0, 3, 2, 2, NULL, dts[d], 200 + d);
        round_trip(1, 1024, 2, 3, 5, 1, 1, NULL, dts[d], 300 + d);
        round_trip(2, 33, 4, 130, 64, 4, 2, NULL, dts[d], 400 + d);
    }
    uint8_t all_dense[3] = {1, 1, 1};
    round_trip(3, 32, 3, 16, 16, 4, 4, all_dense, HA_ST_F32, 500);
}

static void test_alloc_rejects(void **state)
{
    (void)state;
    ha_weights_host w;
    /* layers, bits, depth, hidden, head_dim, q_heads, k_heads */
    static const int32_t bad[][7] = {
        {0, 32, 3, 8, 8, 4, 4},   {4097, 32, 3, 8, 8, 4, 4}, {1, 0, 3, 8, 8, 4, 4},  {1, 1025, 3, 8, 8, 4, 4},
        {1, 32, 0, 8, 8, 4, 4},   {1, 32, 5, 8, 8, 4, 4},    {1, 32, 3, 0, 8, 4, 4},  {1, 32, 3, 8, 0, 4, 4},
        {1, 32, 3, 8, 8, 0, 4},   {1, 32, 3, 8, 8, 4, 0},    {1, 32, 3, 8, 8, 4, 3},  {1, 32, 3, 8, 8, 2, 4},
        {1, 32, 2, -1, 8, 4, 4},  {1, -32, 1, 8, 8, 4, 4},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&w, 0x5a, sizeof(w));
        assert_int_equal(ha_weights_host_alloc(&w, bad[i][0], bad[i][1], bad[i][2], bad[i][3], bad[i][4], bad[i][5],
                                               bad[i][6], NULL),
                         HA_ERR_INVALID_ARGUMENT);
        assert_null(w.storage);
        assert_null(w.q);
    }
    /* depth 1 ignores hidden */
    assert_int_equal(ha_weights_host_alloc(&w, 1, 32, 1, 0, 8, 4, 4, NULL), HA_OK);
    assert_int_equal(w.q[0].depth, 1);
    assert_int_equal(w.q[0].dims[1], 32);
    for (size_t j = 0; j < (size_t)4 * 32 * 8; j++)
        assert_true(w.q[0].w[0][j] == 0.0f); /* zeroed */
    char err[256];
    assert_int_equal(ha_weights_host_write(&w, "/nonexistent_dir/x", HA_ST_I32, err, sizeof(err)),
                     HA_ERR_INVALID_ARGUMENT);
    w.q[0].heads = 3; /* disagrees with q_heads */
    assert_int_equal(ha_weights_host_write(&w, "/nonexistent_dir/x", HA_ST_F32, err, sizeof(err)),
                     HA_ERR_INVALID_ARGUMENT);
    w.q[0].heads = 4;
    assert_int_equal(ha_weights_host_write(&w, "/nonexistent_dir/x", HA_ST_F32, err, sizeof(err)), HA_ERR_IO);
    ha_weights_host_free(&w);
    ha_weights_host_free(NULL);
}

/* ---- malformed files: a writable list of tensors and metadata, edited per case -------------- */

enum { MAX_T = 64, MAX_M = 16 };

typedef struct spec {
    ha_weights_host w;
    ha_st_out_tensor t[MAX_T];
    char names[MAX_T][48];
    int64_t shapes[MAX_T][HA_ST_MAX_DIMS];
    size_t n_t;
    const char *keys[MAX_M];
    const char *values[MAX_M];
    char numbers[MAX_M][24];
    size_t n_m;
    float *scratch; /* zeros for tensors whose shape a case enlarges */
} spec;

/* 4 layers, depth 2, hidden 6, head_dim 5, bits 32, q_heads 4, k_heads 2, layer 2 dense (no tensors). */
static void spec_init(spec *s)
{
    memset(s, 0, sizeof(*s));
    uint8_t dense[4] = {0, 0, 1, 0};
    assert_int_equal(ha_weights_host_alloc(&s->w, 4, 32, 2, 6, 5, 4, 2, dense), HA_OK);
    uint64_t rng = 9;
    fill_random(&s->w, &rng);
    for (int32_t l = 0; l < 4; l++) {
        for (int side = 0; side < 2 && !dense[l]; side++) {
            const ha_mlp_desc *d = side ? &s->w.k[l] : &s->w.q[l];
            for (int32_t i = 0; i < 2; i++)
                for (int bias = 0; bias < 2; bias++) {
                    size_t n = s->n_t++;
                    snprintf(s->names[n], sizeof(s->names[n]), "layers.%d.%c.%c%d", (int)l, side ? 'k' : 'q',
                             bias ? 'b' : 'w', (int)i + 1);
                    s->shapes[n][0] = d->heads;
                    s->shapes[n][1] = d->dims[i + 1];
                    s->shapes[n][2] = d->dims[i];
                    s->t[n] = (ha_st_out_tensor){s->names[n], HA_ST_F32, bias ? 2 : 3, s->shapes[n],
                                                 bias ? d->b[i] : d->w[i]};
                }
        }
    }
    static const char *meta[][2] = {{"format", "hashattn"}, {"version", "1"},  {"activation", "silu"},
                                    {"bits", "32"},         {"mlp_depth", "2"}, {"head_dim", "5"},
                                    {"q_heads", "4"},       {"k_heads", "2"},   {"num_layers", "4"},
                                    {"hidden", "6"}};
    for (size_t i = 0; i < sizeof(meta) / sizeof(meta[0]); i++) {
        s->keys[i] = meta[i][0];
        s->values[i] = meta[i][1];
    }
    s->n_m = sizeof(meta) / sizeof(meta[0]);
    s->scratch = calloc(4096, sizeof(float));
}

static void spec_free(spec *s)
{
    ha_weights_host_free(&s->w);
    free(s->scratch);
}

static void spec_set_meta(spec *s, const char *key, const char *value)
{
    for (size_t i = 0; i < s->n_m; i++)
        if (strcmp(s->keys[i], key) == 0) {
            if (value) {
                s->values[i] = value;
            } else { /* remove */
                s->keys[i] = s->keys[--s->n_m];
                s->values[i] = s->values[s->n_m];
            }
            return;
        }
    if (value) {
        s->keys[s->n_m] = key;
        s->values[s->n_m++] = value;
    }
}

static ha_st_out_tensor *spec_tensor(spec *s, const char *name)
{
    for (size_t i = 0; i < s->n_t; i++)
        if (strcmp(s->t[i].name, name) == 0)
            return &s->t[i];
    fail_msg("no tensor %s in the spec", name);
    return NULL;
}

static void spec_remove(spec *s, const char *name)
{
    ha_st_out_tensor *t = spec_tensor(s, name);
    *t = s->t[--s->n_t];
}

static void spec_set_shape(spec *s, const char *name, int32_t ndim, int64_t d0, int64_t d1, int64_t d2)
{
    ha_st_out_tensor *t = spec_tensor(s, name);
    int64_t *shape = (int64_t *)t->shape;
    shape[0] = d0;
    shape[1] = d1;
    shape[2] = d2;
    t->ndim = ndim;
    t->data = s->scratch;
}

/** Adds a tensor of shape [1] with any name (data from the scratch buffer). */
static void spec_add(spec *s, const char *name)
{
    size_t n = s->n_t++;
    snprintf(s->names[n], sizeof(s->names[n]), "%s", name);
    s->shapes[n][0] = 1;
    s->t[n] = (ha_st_out_tensor){s->names[n], HA_ST_F32, 1, s->shapes[n], s->scratch};
}

/** Writes the spec, loads it, expects the status (and needle in the message when it fails). */
static void spec_expect(spec *s, ha_status expected, const char *needle, ha_weights_host *out)
{
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "spec.safetensors");
    if (ha_st_write(path, s->t, s->n_t, s->keys, s->values, s->n_m, err, sizeof(err)) != HA_OK)
        fail_msg("write: %s", err);
    ha_weights_host w;
    memset(&w, 0x5a, sizeof(w));
    ha_status st = load(path, &w, err, sizeof(err));
    assert_int_equal(unlink(path), 0);
    if (st != expected)
        fail_msg("expected status %d, got %d (%s)", (int)expected, (int)st, err);
    if (st != HA_OK) {
        assert_null(w.storage);
        assert_null(w.dense);
        if (needle && !strstr(err, needle))
            fail_msg("message \"%s\" does not mention \"%s\"", err, needle);
        print_message("  %s\n", err);
    }
    if (out)
        *out = w;
    else
        ha_weights_host_free(&w);
    spec_free(s);
}

static void test_spec_valid(void **state)
{
    (void)state;
    spec s;
    spec_init(&s);
    ha_weights_host w;
    ha_weights_host expect = s.w;
    s.w = (ha_weights_host){0}; /* keep the original for the comparison */
    spec_expect(&s, HA_OK, NULL, &w);
    assert_same_weights(&expect, &w, HA_ST_F32);
    assert_int_equal(w.dense[2], 1); /* no tensors, not listed: dense */
    ha_weights_host_free(&w);
    ha_weights_host_free(&expect);
}

static void test_bad_metadata(void **state)
{
    (void)state;
    static const struct {
        const char *key, *value, *needle;
    } cases[] = {
        {"format", "other", "format"},      {"format", NULL, "format"},        {"version", "2", "version"},
        {"version", "1.0", "version"},      {"activation", "relu", "activation"}, {"activation", NULL, "activation"},
        {"bits", "0", "bits"},              {"bits", "1025", "bits"},           {"bits", " 32", "bits"},
        {"bits", "32 ", "bits"},            {"bits", "+32", "bits"},            {"bits", "-32", "bits"},
        {"bits", "", "bits"},               {"bits", "32x", "bits"},            {"bits", "0x20", "bits"},
        {"bits", "99999999999999999999", "bits"}, {"bits", NULL, "bits"},       {"bits", "64", "layers.0.q.w2"},
        {"mlp_depth", "0", "mlp_depth"},    {"mlp_depth", "5", "mlp_depth"},    {"mlp_depth", "3", "missing"},
        {"mlp_depth", "1", "unexpected"},   {"head_dim", "0", "head_dim"},      {"head_dim", "4", "layers.0.q.w1"},
        {"head_dim", "65537", "head_dim"},  {"q_heads", "0", "q_heads"},        {"q_heads", "3", "divide"},
        {"q_heads", "8", "layers.0.q.w1"},  {"k_heads", "0", "k_heads"},        {"k_heads", "3", "divide"},
        {"k_heads", "4", "layers.0.k.w1"},  {"k_heads", NULL, "k_heads"},       {"num_layers", "0", "num_layers"},
        {"num_layers", "4097", "num_layers"}, {"num_layers", "3", "unexpected"}, {"num_layers", "", "num_layers"},
        {"hidden", "abc", "hidden"},        {"hidden", "0", "hidden"},
        {"dense_layers", "1,,2", "dense_layers"}, {"dense_layers", "9", "dense_layers"},
        {"dense_layers", "4", "dense_layers"},    {"dense_layers", ",1", "dense_layers"},
        {"dense_layers", "1,", "dense_layers"},   {"dense_layers", "-1", "dense_layers"},
        {"dense_layers", "1,1", "twice"},         {"dense_layers", " 1", "dense_layers"},
        {"dense_layers", "a", "dense_layers"},    {"dense_layers", "0;1", "dense_layers"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %s=%s\n", cases[i].key, cases[i].value ? cases[i].value : "(removed)");
        spec s;
        spec_init(&s);
        spec_set_meta(&s, cases[i].key, cases[i].value);
        spec_expect(&s, HA_ERR_FORMAT, cases[i].needle, NULL);
    }
    /* valid neighbours: empty dense list, a larger num_layers (extra layers dense), a larger hidden */
    static const struct {
        const char *key, *value;
    } ok[] = {{"dense_layers", ""}, {"dense_layers", "2"}, {"num_layers", "6"}, {"hidden", "1234"},
              {"hidden", NULL},     {"bits", "032"},      {"extra_key", "anything"}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        spec s;
        spec_init(&s);
        spec_set_meta(&s, ok[i].key, ok[i].value);
        ha_weights_host w;
        spec_expect(&s, HA_OK, NULL, &w);
        assert_true(w.dense[2] && !w.dense[0] && !w.dense[1] && !w.dense[3]);
        for (int32_t l = 4; l < w.num_layers; l++)
            assert_true(w.dense[l] && w.q[l].heads == 0 && w.k[l].heads == 0);
        ha_weights_host_free(&w);
    }
}

static void test_bad_tensors(void **state)
{
    (void)state;
    spec s;
#define CASE(setup, needle)                                                                                       \
    do {                                                                                                         \
        spec_init(&s);                                                                                           \
        setup;                                                                                                   \
        spec_expect(&s, HA_ERR_FORMAT, needle, NULL);                                                            \
    } while (0)
    /* missing tensors name the missing one */
    CASE(spec_remove(&s, "layers.1.k.b2"), "layers.1.k.b2 is missing");
    CASE(spec_remove(&s, "layers.0.q.w1"), "layers.0.q.w1 is missing");
    CASE((spec_remove(&s, "layers.3.q.w1"), spec_remove(&s, "layers.3.q.b1")), "layers.3.q.w1 is missing");
    /* a single tensor left of a layer is still a partial layer, not a dense one */
    static const char *all_but_one[] = {"layers.3.q.w1", "layers.3.q.b1", "layers.3.q.w2", "layers.3.q.b2",
                                        "layers.3.k.w1", "layers.3.k.b1", "layers.3.k.w2"};
    spec_init(&s);
    for (size_t i = 0; i < sizeof(all_but_one) / sizeof(all_but_one[0]); i++)
        spec_remove(&s, all_but_one[i]);
    spec_expect(&s, HA_ERR_FORMAT, "layers.3.q.w1 is missing", NULL);
    /* shapes: [heads, out, in] with in chaining from head_dim and the last out = bits */
    CASE(spec_set_shape(&s, "layers.0.q.w1", 3, 4, 6, 6), "layers.0.q.w1");          /* in != head_dim */
    CASE(spec_set_shape(&s, "layers.0.q.w1", 3, 3, 6, 5), "layers.0.q.w1");          /* heads */
    CASE(spec_set_shape(&s, "layers.0.k.w1", 3, 4, 6, 5), "layers.0.k.w1");          /* q_heads on the k side */
    CASE(spec_set_shape(&s, "layers.0.q.w1", 2, 4, 30, 0), "layers.0.q.w1");         /* ndim 2 */
    CASE(spec_set_shape(&s, "layers.0.q.w1", 3, 4, 0, 5), "hidden width 0");         /* empty hidden layer */
    CASE(spec_set_shape(&s, "layers.1.q.w2", 3, 4, 32, 7), "layers.1.q.w2");         /* in != w1's out */
    CASE(spec_set_shape(&s, "layers.1.k.w2", 3, 2, 33, 6), "layers.1.k.w2");         /* out != bits */
    CASE(spec_set_shape(&s, "layers.1.k.b2", 2, 2, 31, 0), "layers.1.k.b2");         /* bias out */
    CASE(spec_set_shape(&s, "layers.1.q.b1", 2, 4, 7, 0), "layers.1.q.b1");          /* bias != w1 out */
    CASE(spec_set_shape(&s, "layers.1.q.b1", 3, 4, 6, 1), "layers.1.q.b1");          /* bias ndim 3 */
    CASE(spec_set_shape(&s, "layers.3.k.b1", 2, 4, 6, 0), "layers.3.k.b1");          /* bias heads */
    /* w1 says hidden 7 but w2 still reads 6 */
    CASE((spec_set_shape(&s, "layers.0.q.w1", 3, 4, 7, 5), spec_set_shape(&s, "layers.0.q.b1", 2, 4, 7, 0)),
         "layers.0.q.w2");
    /* dtypes */
    CASE(spec_tensor(&s, "layers.1.q.w2")->dtype = HA_ST_I32, "dtype I32");
    CASE((spec_tensor(&s, "layers.1.q.b2")->dtype = HA_ST_F64, spec_tensor(&s, "layers.1.q.b2")->data = s.scratch),
         "dtype F64");
    /* names outside the scheme */
    static const char *unexpected[] = {
        "layers.4.q.w1", "layers.0.q.w3", "layers.0.q.w0", "layers.01.q.w1", "layers.0.v.w1", "layers.0.q.x1",
        "layers.0.q.w1.extra", "foo", "layers.0.q.w", "layers..q.w1", "layers.0.q.w01", "layers.-1.q.w1",
        "Layers.0.q.w1", "layers.99999999999.q.w1",
    };
    for (size_t i = 0; i < sizeof(unexpected) / sizeof(unexpected[0]); i++)
        CASE(spec_add(&s, unexpected[i]), unexpected[i]);
#undef CASE
}

static void test_dense_layers(void **state)
{
    (void)state;
    /* A layer listed in dense_layers is dense even with all its tensors (they are ignored, even bad ones). */
    spec s;
    spec_init(&s);
    spec_set_meta(&s, "dense_layers", "1,2");
    spec_tensor(&s, "layers.1.q.w2")->dtype = HA_ST_I32;
    ha_weights_host w;
    spec_expect(&s, HA_OK, NULL, &w);
    assert_true(!w.dense[0] && w.dense[1] && w.dense[2] && !w.dense[3]);
    assert_int_equal(w.q[1].heads, 0);
    assert_int_equal(w.k[1].heads, 0);
    assert_null(w.q[1].w[0]);
    assert_int_equal(w.q[0].heads, 4);
    assert_int_equal(w.k[3].heads, 2);
    assert_in_storage(&w);
    ha_weights_host_free(&w);

    /* listed with only part of its tensors: still fine */
    spec_init(&s);
    spec_set_meta(&s, "dense_layers", "3");
    spec_remove(&s, "layers.3.k.b1");
    spec_expect(&s, HA_OK, NULL, &w);
    assert_true(w.dense[2] && w.dense[3] && !w.dense[0]);
    ha_weights_host_free(&w);

    /* every layer dense: no tensors at all is a valid file */
    spec_init(&s);
    s.n_t = 0;
    spec_expect(&s, HA_OK, NULL, &w);
    for (int32_t l = 0; l < 4; l++)
        assert_true(w.dense[l] && w.q[l].heads == 0 && w.k[l].heads == 0);
    assert_null(w.storage);
    ha_weights_host_free(&w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_modes_depths),
        cmocka_unit_test(test_round_trip_dtypes_and_odd_sizes),
        cmocka_unit_test(test_alloc_rejects),
        cmocka_unit_test(test_spec_valid),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_bad_tensors),
        cmocka_unit_test(test_dense_layers),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
