/*
 * test_reference.c — checks the core's scalar reference (the oracle of every other test) against
 * independent brute force written differently: a full sort for match, hand-computed MLPs and a
 * separate forward pass for encode, a non-max-subtracted softmax for attend; plus the "reference"
 * plugin table. Fixed seeds, random data, poisoned outputs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ha_shared.h"
#include "reference.h"

/* ---- random data ------------------------------------------------------------------------------ */

typedef struct rng {
    uint64_t state;
} rng;

static uint64_t rng_next(rng *r)
{
    r->state ^= r->state << 13;
    r->state ^= r->state >> 7;
    r->state ^= r->state << 17;
    return r->state;
}

static int64_t rng_below(rng *r, int64_t n)
{
    return (int64_t)(rng_next(r) % (uint64_t)n);
}

/* Multiples of 1/64 in (-2, 2): exact in fp32, fp16 and bf16, so every dtype holds the same value. */
static float rng_grid(rng *r)
{
    return (float)(rng_below(r, 255) - 127) / 64.0f;
}

static void shuffle(rng *r, int32_t *a, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rng_below(r, i + 1);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static int32_t max_len(const int32_t *lens, int32_t batch)
{
    int32_t m = 1;
    for (int32_t b = 0; b < batch; b++)
        if (lens[b] > m)
            m = lens[b];
    return m;
}

/* ---- rows in a test-chosen layout ------------------------------------------------------------- */

/*
 * Storage for rows (b, h, t) of `dim` elements: contiguous token-major [B][n_max][heads][dim+1]
 * (padded rows, odd sequence stride) or paged [pages][P][heads][dim+1] with a shuffled block table
 * and spare pages. Addresses are computed here independently of ha_rows_offset.
 */
typedef struct row_store {
    char *data;
    size_t elem;
    int32_t *block_table;
    ha_rows rows;
} row_store;

static void row_store_init(row_store *s, rng *r, int32_t batch, int32_t heads, int32_t dim, int64_t n_max,
                           ha_dtype dtype, size_t elem, int32_t page_size)
{
    memset(s, 0, sizeof *s);
    int64_t pitch = dim + 1;
    int64_t slots;
    s->elem = elem;
    s->rows.dtype = dtype;
    s->rows.heads = heads;
    s->rows.dim = dim;
    s->rows.stride_head = pitch;
    s->rows.stride_token = heads * pitch;
    s->rows.page_size = page_size;
    if (page_size == 0) {
        s->rows.stride_seq = n_max * heads * pitch + 7;
        slots = batch * s->rows.stride_seq;
    } else {
        int64_t pages_per_seq = (n_max + page_size - 1) / page_size;
        int64_t pages = batch * pages_per_seq + 3;
        int32_t *perm = malloc((size_t)pages * sizeof(int32_t));
        for (int64_t p = 0; p < pages; p++)
            perm[p] = (int32_t)p;
        shuffle(r, perm, pages);
        s->rows.block_table_stride = (int32_t)pages_per_seq + 2;
        s->block_table = malloc((size_t)(batch * s->rows.block_table_stride) * sizeof(int32_t));
        for (int64_t i = 0; i < batch * s->rows.block_table_stride; i++)
            s->block_table[i] = -1; /* unused entries: never read */
        for (int32_t b = 0; b < batch; b++)
            for (int64_t p = 0; p < pages_per_seq; p++)
                s->block_table[b * s->rows.block_table_stride + p] = perm[b * pages_per_seq + p];
        free(perm);
        s->rows.block_table = s->block_table;
        s->rows.stride_seq = page_size * heads * pitch;
        slots = pages * s->rows.stride_seq;
    }
    s->data = malloc((size_t)slots * elem);
    memset(s->data, 0xA5, (size_t)slots * elem); /* poison: NaN-ish floats, odd codes */
    s->rows.data = s->data;
}

static void *row_store_row(const row_store *s, int32_t b, int32_t h, int64_t t)
{
    int64_t base;
    if (s->rows.page_size == 0) {
        base = b * s->rows.stride_seq + t * s->rows.stride_token;
    } else {
        int64_t page = s->block_table[b * s->rows.block_table_stride + t / s->rows.page_size];
        base = page * s->rows.stride_seq + (t % s->rows.page_size) * s->rows.stride_token;
    }
    return s->data + (base + h * s->rows.stride_head) * (int64_t)s->elem;
}

static void row_store_free(row_store *s)
{
    free(s->data);
    free(s->block_table);
}

static void store_value(void *row, ha_dtype dtype, int64_t i, float x)
{
    if (dtype == HA_F16)
        ((uint16_t *)row)[i] = ha_f32_to_f16(x);
    else if (dtype == HA_BF16)
        ((uint16_t *)row)[i] = ha_f32_to_bf16(x);
    else
        ((float *)row)[i] = x;
}

static size_t dtype_bytes(ha_dtype dtype)
{
    return dtype == HA_F32 ? 4 : 2;
}

/* ================================================================================================
 * match
 * ================================================================================================ */

typedef struct match_case {
    int32_t batch;
    int32_t sel_heads;
    int32_t group; /* query heads per selection head: 1 = paper mode */
    int32_t bits;
    int32_t sink;
    int32_t local;
    double fraction;
    int64_t count;
    int32_t page_size;
    int32_t random_bits; /* random low bits per code word; few → many tied scores */
    int dirty_padding;   /* set the bits past `bits` in the last word: they must not count */
    const int32_t *lens;
} match_case;

static int bit_of(const uint32_t *code, int32_t i)
{
    return (int)((code[i / 32] >> (i % 32)) & 1u);
}

typedef struct candidate {
    int64_t score;
    int32_t index;
} candidate;

static int by_score_then_recency(const void *pa, const void *pb)
{
    const candidate *a = pa, *b = pb;
    if (a->score != b->score)
        return a->score > b->score ? -1 : 1;
    return a->index > b->index ? -1 : a->index < b->index ? 1 : 0;
}

/* SPEC §1.3 spelled out: sort every candidate, take the best `heavy`, list the kept set ascending. */
static int32_t brute_select(const match_case *c, const uint32_t *q_codes, const uint32_t *k_codes, int32_t b,
                            int32_t s, int32_t n_max, int32_t *out)
{
    int32_t words = (c->bits + 31) / 32, q_heads = c->sel_heads * c->group;
    int32_t n = c->lens[b];
    if (n <= 0)
        return 0;
    int64_t heavy = c->fraction > 0 ? (int64_t)floor(c->fraction * n) : c->count;
    char *keep = calloc((size_t)n, 1);
    if (n <= c->sink + c->local + heavy) {
        memset(keep, 1, (size_t)n);
    } else {
        for (int32_t j = 0; j < n; j++)
            keep[j] = j < c->sink || j >= n - c->local;
        int32_t num = n - c->local - c->sink;
        candidate *cand = malloc((size_t)num * sizeof(candidate));
        for (int32_t i = 0; i < num; i++) {
            int32_t j = c->sink + i;
            const uint32_t *k = k_codes + (((int64_t)b * c->sel_heads + s) * n_max + j) * words;
            cand[i].index = j;
            cand[i].score = 0;
            for (int32_t g = 0; g < c->group; g++) {
                const uint32_t *q = q_codes + ((int64_t)b * q_heads + s * c->group + g) * words;
                for (int32_t bit = 0; bit < c->bits; bit++)
                    cand[i].score += bit_of(q, bit) == bit_of(k, bit);
            }
        }
        qsort(cand, (size_t)num, sizeof(candidate), by_score_then_recency);
        for (int64_t i = 0; i < heavy; i++)
            keep[cand[i].index] = 1;
        free(cand);
    }
    int32_t count = 0;
    for (int32_t j = 0; j < n; j++)
        if (keep[j])
            out[count++] = j;
    free(keep);
    return count;
}

static uint32_t random_code_word(rng *r, uint32_t common, int32_t word, const match_case *c)
{
    uint32_t low = c->random_bits >= 32 ? 0xffffffffu : (1u << c->random_bits) - 1u;
    uint32_t v = (common & ~low) | ((uint32_t)rng_next(r) & low);
    int32_t valid = c->bits - word * 32;
    if (valid >= 32)
        return v;
    uint32_t padding = ~((1u << valid) - 1u);
    return c->dirty_padding ? v | (padding & (uint32_t)rng_next(r)) : v & ~padding;
}

static void run_match_case(const match_case *c, uint64_t seed)
{
    rng r = {seed};
    int32_t words = (c->bits + 31) / 32, q_heads = c->sel_heads * c->group;
    int32_t n_max = max_len(c->lens, c->batch);
    uint32_t common[4];
    for (int32_t w = 0; w < words; w++)
        common[w] = (uint32_t)rng_next(&r);

    /* master copies [b][s][t][w] and [b][h][w]; the kernel reads the row store */
    uint32_t *k_master = malloc((size_t)c->batch * c->sel_heads * n_max * words * sizeof(uint32_t));
    uint32_t *q_codes = malloc((size_t)c->batch * q_heads * words * sizeof(uint32_t));
    row_store keys;
    row_store_init(&keys, &r, c->batch, c->sel_heads, words, n_max, HA_F32, sizeof(uint32_t), c->page_size);
    for (int32_t b = 0; b < c->batch; b++)
        for (int32_t s = 0; s < c->sel_heads; s++)
            for (int32_t t = 0; t < n_max; t++) {
                uint32_t *row = row_store_row(&keys, b, s, t);
                for (int32_t w = 0; w < words; w++) {
                    uint32_t v = random_code_word(&r, common[w], w, c);
                    k_master[(((int64_t)b * c->sel_heads + s) * n_max + t) * words + w] = v;
                    row[w] = v;
                }
            }
    for (int64_t i = 0; i < (int64_t)c->batch * q_heads; i++)
        for (int32_t w = 0; w < words; w++)
            q_codes[i * words + w] = random_code_word(&r, common[w], w, c);

    int64_t index_stride = n_max + 3;
    int64_t rows = (int64_t)c->batch * c->sel_heads;
    int32_t *indices = malloc((size_t)(rows * index_stride) * sizeof(int32_t));
    int32_t *counts = malloc((size_t)rows * sizeof(int32_t));
    int32_t *expected = malloc((size_t)n_max * sizeof(int32_t));
    for (int64_t i = 0; i < rows * index_stride; i++)
        indices[i] = -7;
    for (int64_t i = 0; i < rows; i++)
        counts[i] = -1;

    ha_match_args a = {
        .batch = c->batch,
        .q_heads = q_heads,
        .sel_heads = c->sel_heads,
        .words = words,
        .bits = c->bits,
        .q_codes = q_codes,
        .k_codes = keys.rows,
        .seq_lens = c->lens,
        .sink = c->sink,
        .local = c->local,
        .heavy_fraction = c->fraction,
        .heavy_count = c->count,
        .indices = indices,
        .index_stride = index_stride,
        .counts = counts,
    };
    assert_int_equal(ha_ref_match(&a), HA_OK);

    for (int32_t b = 0; b < c->batch; b++) {
        for (int32_t s = 0; s < c->sel_heads; s++) {
            int64_t row = (int64_t)b * c->sel_heads + s;
            int32_t want = brute_select(c, q_codes, k_master, b, s, n_max, expected);
            assert_int_equal(counts[row], want);
            assert_int_equal(counts[row], ha_kept_for_length(c->lens[b], c->sink, c->local, c->fraction, c->count));
            for (int32_t i = 0; i < want; i++) {
                if (indices[row * index_stride + i] != expected[i])
                    fail_msg("seed %llu b %d s %d: index %d is %d, expected %d", (unsigned long long)seed, b, s,
                             i, indices[row * index_stride + i], expected[i]);
            }
        }
    }
    free(k_master);
    free(q_codes);
    free(indices);
    free(counts);
    free(expected);
    row_store_free(&keys);
}

static void test_match_paper_fraction(void **state)
{
    (void)state;
    static const int32_t lens[] = {1000, 257, 640};
    for (int32_t random_bits = 2; random_bits <= 32; random_bits += 30) {
        match_case c = {.batch = 3, .sel_heads = 4, .group = 1, .bits = 32, .sink = 16, .local = 32,
                        .fraction = 1.0 / 8, .random_bits = random_bits, .lens = lens};
        run_match_case(&c, 11 + (uint64_t)random_bits);
        c.fraction = 1.0 / 32;
        run_match_case(&c, 12 + (uint64_t)random_bits);
    }
}

static void test_match_group_modes(void **state)
{
    (void)state;
    static const int32_t lens[] = {777, 300, 91, 1};
    for (int32_t group = 1; group <= 4; group *= 2) {
        match_case c = {.batch = 4, .sel_heads = 2, .group = group, .bits = 32, .sink = 8, .local = 24,
                        .count = 50, .random_bits = 3, .lens = lens};
        run_match_case(&c, 100 + (uint64_t)group);
        c.fraction = 0.1;
        run_match_case(&c, 200 + (uint64_t)group);
        c.random_bits = 32;
        run_match_case(&c, 300 + (uint64_t)group);
    }
}

static void test_match_multiword_codes(void **state)
{
    (void)state;
    static const int32_t lens[] = {413, 129};
    static const int32_t bit_counts[] = {33, 40, 64, 100};
    for (int i = 0; i < 4; i++) {
        for (int32_t group = 1; group <= 4; group *= 2) {
            match_case c = {.batch = 2, .sel_heads = 3, .group = group, .bits = bit_counts[i], .sink = 4,
                            .local = 8, .count = 37, .random_bits = 2, .lens = lens};
            run_match_case(&c, 400 + (uint64_t)(i * 8 + group));
            c.dirty_padding = 1;
            run_match_case(&c, 450 + (uint64_t)(i * 8 + group));
        }
    }
}

static void test_match_short_sequences(void **state)
{
    (void)state;
    /* sink 16 + local 32 + heavy 20: lengths around every boundary, and empty sequences */
    static const int32_t lens[] = {0, 1, 5, 16, 47, 48, 49, 67, 68, 69, 0, 70};
    for (int32_t group = 1; group <= 2; group++) {
        match_case c = {.batch = 12, .sel_heads = 2, .group = group, .bits = 32, .sink = 16, .local = 32,
                        .count = 20, .random_bits = 3, .lens = lens};
        run_match_case(&c, 500 + (uint64_t)group);
    }
}

static void test_match_degenerate_budgets(void **state)
{
    (void)state;
    static const int32_t lens[] = {300, 64, 199};
    /* no heavy tokens at all, no windows at all, and a fraction that floors to zero on short rows */
    match_case none = {.batch = 3, .sel_heads = 2, .group = 2, .bits = 32, .sink = 8, .local = 8,
                       .count = 0, .random_bits = 3, .lens = lens};
    run_match_case(&none, 601);
    match_case no_windows = {.batch = 3, .sel_heads = 2, .group = 1, .bits = 32, .sink = 0, .local = 0,
                             .count = 33, .random_bits = 2, .lens = lens};
    run_match_case(&no_windows, 602);
    match_case tiny_fraction = {.batch = 3, .sel_heads = 1, .group = 4, .bits = 16, .sink = 3, .local = 5,
                                .fraction = 1.0 / 100, .random_bits = 4, .lens = lens};
    run_match_case(&tiny_fraction, 603);
    match_case one_bit = {.batch = 3, .sel_heads = 2, .group = 2, .bits = 1, .sink = 2, .local = 3,
                          .count = 17, .random_bits = 1, .dirty_padding = 1, .lens = lens};
    run_match_case(&one_bit, 604);
}

static void test_match_paged(void **state)
{
    (void)state;
    static const int32_t lens[] = {500, 33, 0, 260};
    static const int32_t page_sizes[] = {1, 16, 7};
    for (int i = 0; i < 3; i++) {
        for (int32_t group = 1; group <= 4; group *= 2) {
            match_case c = {.batch = 4, .sel_heads = 2, .group = group, .bits = 32, .sink = 8, .local = 16,
                            .fraction = 1.0 / 16, .page_size = page_sizes[i], .random_bits = 3, .lens = lens};
            run_match_case(&c, 700 + (uint64_t)(i * 8 + group));
        }
    }
}

/* ================================================================================================
 * encode
 * ================================================================================================ */

/* An MLP with its own weight storage. */
typedef struct mlp_fixture {
    ha_mlp_desc desc;
    float *w[HA_PLUGIN_MAX_MLP_DEPTH];
    float *b[HA_PLUGIN_MAX_MLP_DEPTH];
} mlp_fixture;

static void mlp_fixture_random(mlp_fixture *f, rng *r, int32_t heads, int32_t depth, const int32_t *dims)
{
    memset(f, 0, sizeof *f);
    f->desc.heads = heads;
    f->desc.depth = depth;
    for (int32_t i = 0; i <= depth; i++)
        f->desc.dims[i] = dims[i];
    for (int32_t l = 0; l < depth; l++) {
        int64_t nw = (int64_t)heads * dims[l + 1] * dims[l], nb = (int64_t)heads * dims[l + 1];
        f->w[l] = malloc((size_t)nw * sizeof(float));
        f->b[l] = malloc((size_t)nb * sizeof(float));
        float gain = 1.0f / sqrtf((float)dims[l]);
        for (int64_t i = 0; i < nw; i++)
            f->w[l][i] = gain * (float)((double)rng_below(r, 2001) / 1000.0 - 1.0) * 1.7f;
        for (int64_t i = 0; i < nb; i++)
            f->b[l][i] = (float)((double)rng_below(r, 2001) / 1000.0 - 1.0) * 0.3f;
        f->desc.w[l] = f->w[l];
        f->desc.b[l] = f->b[l];
    }
}

static void mlp_fixture_free(mlp_fixture *f)
{
    for (int32_t l = 0; l < f->desc.depth; l++) {
        free(f->w[l]);
        free(f->b[l]);
    }
}

/* Independent forward pass: layer by layer into freshly allocated vectors, sigmoid form of SiLU. */
static void oracle_mlp(const ha_mlp_desc *d, int32_t head, const float *x, double *y)
{
    double *act = malloc((size_t)d->dims[0] * sizeof(double));
    for (int32_t i = 0; i < d->dims[0]; i++)
        act[i] = x[i];
    for (int32_t l = 0; l < d->depth; l++) {
        int32_t in = d->dims[l], out = d->dims[l + 1];
        double *next = malloc((size_t)out * sizeof(double));
        for (int32_t o = 0; o < out; o++) {
            double z = d->b[l][(int64_t)head * out + o];
            for (int32_t i = 0; i < in; i++)
                z += (double)d->w[l][((int64_t)head * out + o) * in + i] * act[i];
            next[o] = l + 1 < d->depth ? z * (1.0 / (1.0 + exp(-z))) : z;
        }
        free(act);
        act = next;
    }
    memcpy(y, act, (size_t)d->dims[d->depth] * sizeof(double));
    free(act);
}

static void test_encode_hand_depth1(void **state)
{
    (void)state;
    /* head 0: y = W x + b = [1.5, -2, -4, 5] for x = [1, 2, 3]; head 1 negates W and b */
    float w[2][4][3] = {{{1, 0, 0}, {0, -1, 0}, {1, 1, 1}, {0, 0, 2}}};
    float bias[2][4] = {{0.5f, 0, -10, -1}};
    for (int o = 0; o < 4; o++) {
        for (int i = 0; i < 3; i++)
            w[1][o][i] = -w[0][o][i];
        bias[1][o] = -bias[0][o];
    }
    ha_mlp_desc d = {.heads = 2, .depth = 1, .dims = {3, 4}, .w = {&w[0][0][0]}, .b = {&bias[0][0]}};
    const float x[3] = {1, 2, 3};
    double y[4];
    ha_ref_mlp_forward(&d, 0, x, y);
    assert_true(y[0] == 1.5 && y[1] == -2.0 && y[2] == -4.0 && y[3] == 5.0);
    ha_ref_mlp_forward(&d, 1, x, y);
    assert_true(y[0] == -1.5 && y[1] == 2.0 && y[2] == 4.0 && y[3] == -5.0);

    /* the same through ha_ref_encode: one sequence, one token, one input head shared by both */
    uint32_t out[2] = {0xdeadbeefu, 0xdeadbeefu};
    ha_encode_args a = {
        .desc = &d,
        .batch = 1,
        .count = 1,
        .in = {.data = x, .dtype = HA_F32, .heads = 1, .dim = 3, .stride_seq = 3, .stride_token = 3},
        .out = {.data = out, .heads = 2, .dim = 1, .stride_seq = 2, .stride_token = 2, .stride_head = 1},
    };
    assert_int_equal(ha_ref_encode(&a), HA_OK);
    assert_int_equal(out[0], 0x9u); /* bits 0 and 3 */
    assert_int_equal(out[1], 0x6u); /* bits 1 and 2 */
}

static void test_encode_hand_depth2(void **state)
{
    (void)state;
    /* h = silu(x) for x = [2, -3]; y = [h0 - 1.8, h1 + 0.5, h0 + 10 h1]. With SiLU the signs are
     * (-, +, +); without it they would be (+, -, -). */
    const float w1[4] = {1, 0, 0, 1}, b1[2] = {0, 0};
    const float w2[6] = {1, 0, 0, 1, 1, 10}, b2[3] = {-1.8f, 0.5f, 0};
    ha_mlp_desc d = {.heads = 1, .depth = 2, .dims = {2, 2, 3}, .w = {w1, w2}, .b = {b1, b2}};
    const float x[2] = {2, -3};
    double y[3];
    ha_ref_mlp_forward(&d, 0, x, y);
    double h0 = 2.0 / (1.0 + exp(-2.0)), h1 = -3.0 / (1.0 + exp(3.0));
    assert_true(fabs(y[0] - (h0 - (double)1.8f)) < 1e-12);
    assert_true(fabs(y[1] - (h1 + 0.5)) < 1e-12);
    assert_true(fabs(y[2] - (h0 + 10 * h1)) < 1e-12);
    assert_true(fabs(y[0] - -0.0384058440) < 1e-7 && fabs(y[2] - 0.3388179606) < 1e-9);

    uint32_t out = 0xffffffffu;
    ha_encode_args a = {
        .desc = &d,
        .batch = 1,
        .count = 1,
        .in = {.data = x, .dtype = HA_F32, .heads = 1, .dim = 2, .stride_seq = 2, .stride_token = 2},
        .out = {.data = &out, .heads = 1, .dim = 1, .stride_seq = 1, .stride_token = 1},
    };
    assert_int_equal(ha_ref_encode(&a), HA_OK);
    assert_int_equal(out, 0x6u);
}

typedef struct encode_case {
    int32_t batch;
    int32_t mlp_heads;
    int32_t in_heads;
    int32_t depth;
    int32_t dims[HA_PLUGIN_MAX_MLP_DEPTH + 1];
    ha_dtype dtype;
    int32_t page_size;
    int32_t count;
    const int32_t *end; /* NULL: end_b = count */
    int32_t n_max;
} encode_case;

static void run_encode_case(const encode_case *c, uint64_t seed)
{
    rng r = {seed};
    mlp_fixture f;
    mlp_fixture_random(&f, &r, c->mlp_heads, c->depth, c->dims);
    int32_t d = c->dims[0], bits = c->dims[c->depth], words = (bits + 31) / 32;

    float *x_master = malloc((size_t)c->batch * c->in_heads * c->n_max * d * sizeof(float));
    row_store in, out;
    row_store_init(&in, &r, c->batch, c->in_heads, d, c->n_max, c->dtype, dtype_bytes(c->dtype), c->page_size);
    row_store_init(&out, &r, c->batch, c->mlp_heads, words, c->n_max, HA_F32, sizeof(uint32_t), c->page_size);
    for (int32_t b = 0; b < c->batch; b++)
        for (int32_t h = 0; h < c->in_heads; h++)
            for (int32_t t = 0; t < c->n_max; t++) {
                float *xm = x_master + (((int64_t)b * c->in_heads + h) * c->n_max + t) * d;
                void *row = row_store_row(&in, b, h, t);
                for (int32_t i = 0; i < d; i++) {
                    xm[i] = rng_grid(&r);
                    store_value(row, c->dtype, i, xm[i]);
                }
            }
    for (int32_t b = 0; b < c->batch; b++)
        for (int32_t h = 0; h < c->mlp_heads; h++)
            for (int32_t t = 0; t < c->n_max; t++)
                for (int32_t w = 0; w < words; w++)
                    ((uint32_t *)row_store_row(&out, b, h, t))[w] = 0xdeadbeefu;

    ha_encode_args a = {
        .desc = &f.desc, .batch = c->batch, .count = c->count, .end = c->end, .in = in.rows, .out = out.rows};
    assert_int_equal(ha_ref_encode(&a), HA_OK);

    double *y = malloc((size_t)bits * sizeof(double));
    int64_t checked = 0;
    for (int32_t b = 0; b < c->batch; b++) {
        int32_t end = c->end ? c->end[b] : c->count;
        for (int32_t h = 0; h < c->mlp_heads; h++) {
            int32_t in_head = h / (c->mlp_heads / c->in_heads);
            for (int32_t t = 0; t < c->n_max; t++) {
                const uint32_t *code = row_store_row(&out, b, h, t);
                if (t < end - c->count || t >= end) { /* outside the range: untouched */
                    for (int32_t w = 0; w < words; w++)
                        assert_int_equal(code[w], 0xdeadbeefu);
                    continue;
                }
                oracle_mlp(&f.desc, h, x_master + (((int64_t)b * c->in_heads + in_head) * c->n_max + t) * d, y);
                for (int32_t i = 0; i < bits; i++) {
                    if (fabs(y[i]) < 1e-9)
                        continue; /* too close to zero to have an exact sign */
                    if (bit_of(code, i) != (y[i] > 0))
                        fail_msg("seed %llu b %d h %d t %d bit %d: y = %g", (unsigned long long)seed, b, h, t, i,
                                 y[i]);
                }
                for (int32_t i = bits; i < words * 32; i++)
                    assert_int_equal(bit_of(code, i), 0);
                checked++;
            }
        }
    }
    assert_true(checked > 0);
    free(y);
    free(x_master);
    row_store_free(&in);
    row_store_free(&out);
    mlp_fixture_free(&f);
}

static void test_encode_two_word_codes(void **state)
{
    (void)state;
    static const int32_t bit_counts[] = {33, 37, 63, 64};
    for (int i = 0; i < 4; i++) {
        encode_case c = {.batch = 2, .mlp_heads = 2, .in_heads = 2, .depth = 1, .dims = {8, bit_counts[i]},
                         .dtype = HA_F32, .count = 9, .n_max = 9};
        run_encode_case(&c, 800 + (uint64_t)i);
        c.depth = 2;
        c.dims[1] = 12;
        c.dims[2] = bit_counts[i];
        run_encode_case(&c, 810 + (uint64_t)i);
    }
}

static void test_encode_depths_heads_dtypes(void **state)
{
    (void)state;
    static const int32_t end[] = {20, 3, 0, 17};
    static const int32_t dims_by_depth[4][5] = {{16, 32}, {16, 24, 32}, {16, 16, 16, 32}, {16, 7, 9, 5, 32}};
    static const ha_dtype dtypes[] = {HA_F32, HA_F16, HA_BF16};
    uint64_t seed = 900;
    for (int32_t depth = 1; depth <= 4; depth++)
        for (int32_t in_heads = 1; in_heads <= 4; in_heads *= 2)
            for (int i = 0; i < 3; i++) {
                encode_case c = {.batch = 4, .mlp_heads = 4, .in_heads = in_heads, .depth = depth,
                                 .dtype = dtypes[i], .count = 6, .end = end, .n_max = 20};
                memcpy(c.dims, dims_by_depth[depth - 1], sizeof c.dims);
                run_encode_case(&c, seed++);
                c.page_size = 8; /* paged input and output with shuffled block tables */
                run_encode_case(&c, seed++);
                c.end = NULL; /* every sequence: tokens [0, count) */
                c.page_size = 0;
                run_encode_case(&c, seed++);
            }
}

static void test_encode_wide_hidden_layer(void **state)
{
    (void)state;
    /* wider than the reference's stack scratch: exercises its heap path */
    encode_case c = {.batch = 1, .mlp_heads = 2, .in_heads = 1, .depth = 3, .dims = {40, 700, 600, 32},
                     .dtype = HA_BF16, .count = 3, .n_max = 3};
    run_encode_case(&c, 990);
    mlp_fixture f;
    rng r = {991};
    mlp_fixture_random(&f, &r, 1, 3, c.dims);
    float x[40];
    double y[32], y_oracle[32];
    for (int i = 0; i < 40; i++)
        x[i] = rng_grid(&r);
    ha_ref_mlp_forward(&f.desc, 0, x, y);
    oracle_mlp(&f.desc, 0, x, y_oracle);
    for (int i = 0; i < 32; i++)
        assert_true(fabs(y[i] - y_oracle[i]) <= 1e-12 * (1.0 + fabs(y_oracle[i])));
    mlp_fixture_free(&f);
}

/* ================================================================================================
 * attend
 * ================================================================================================ */

typedef struct attend_fixture {
    int32_t batch, q_heads, kv_heads, d;
    int32_t n_max;
    const int32_t *lens;
    float *q, *k, *v; /* masters: q [b][h][d], k/v [b][kvh][t][d] */
    row_store qs, ks, vs;
    float scale;
} attend_fixture;

static void attend_fixture_init(attend_fixture *f, rng *r, int32_t batch, int32_t q_heads, int32_t kv_heads, int32_t d,
                                const int32_t *lens, ha_dtype dtype, int32_t page_size)
{
    f->batch = batch;
    f->q_heads = q_heads;
    f->kv_heads = kv_heads;
    f->d = d;
    f->lens = lens;
    f->n_max = max_len(lens, batch);
    f->scale = 1.0f / sqrtf((float)d);
    size_t kv_elems = (size_t)batch * kv_heads * f->n_max * d;
    f->q = malloc((size_t)batch * q_heads * d * sizeof(float));
    f->k = malloc(kv_elems * sizeof(float));
    f->v = malloc(kv_elems * sizeof(float));
    row_store_init(&f->qs, r, batch, q_heads, d, 1, dtype, dtype_bytes(dtype), 0);
    row_store_init(&f->ks, r, batch, kv_heads, d, f->n_max, dtype, dtype_bytes(dtype), page_size);
    row_store_init(&f->vs, r, batch, kv_heads, d, f->n_max, dtype, dtype_bytes(dtype), page_size);
    if (page_size) { /* K and V share one block table, as in a real paged KV cache */
        memcpy(f->vs.block_table, f->ks.block_table,
               (size_t)(batch * f->ks.rows.block_table_stride) * sizeof(int32_t));
        f->vs.rows.block_table = f->ks.block_table;
    }
    for (int32_t b = 0; b < batch; b++) {
        for (int32_t h = 0; h < q_heads; h++)
            for (int32_t i = 0; i < d; i++) {
                float x = rng_grid(r);
                f->q[((int64_t)b * q_heads + h) * d + i] = x;
                store_value(row_store_row(&f->qs, b, h, 0), dtype, i, x);
            }
        for (int32_t h = 0; h < kv_heads; h++)
            for (int32_t t = 0; t < f->n_max; t++) {
                int64_t base = (((int64_t)b * kv_heads + h) * f->n_max + t) * d;
                for (int32_t i = 0; i < d; i++) {
                    f->k[base + i] = rng_grid(r);
                    f->v[base + i] = rng_grid(r);
                    store_value(row_store_row(&f->ks, b, h, t), dtype, i, f->k[base + i]);
                }
                for (int32_t i = 0; i < d; i++)
                    store_value(row_store_row(&f->vs, b, h, t), dtype, i, f->v[base + i]);
            }
    }
}

static void attend_fixture_free(attend_fixture *f)
{
    free(f->q);
    free(f->k);
    free(f->v);
    row_store_free(&f->qs);
    row_store_free(&f->ks);
    row_store_free(&f->vs);
}

/* softmax without max subtraction (logits here are small), normalized weights first, then the sum. */
static void oracle_attend(const attend_fixture *f, int32_t b, int32_t h, const int32_t *tokens, int64_t count,
                          double scale, double *out, double *lse)
{
    int32_t kvh = h / (f->q_heads / f->kv_heads), d = f->d;
    const float *q = f->q + ((int64_t)b * f->q_heads + h) * d;
    double *e = malloc((size_t)(count + 1) * sizeof(double));
    double total = 0;
    for (int64_t i = 0; i < count; i++) {
        const float *k = f->k + (((int64_t)b * f->kv_heads + kvh) * f->n_max + tokens[i]) * d;
        double dot = 0;
        for (int32_t j = 0; j < d; j++)
            dot += (double)q[j] * k[j];
        e[i] = exp(scale * dot);
        total += e[i];
    }
    for (int32_t j = 0; j < d; j++)
        out[j] = 0;
    for (int64_t i = 0; i < count; i++) {
        const float *v = f->v + (((int64_t)b * f->kv_heads + kvh) * f->n_max + tokens[i]) * d;
        double p = e[i] / total;
        for (int32_t j = 0; j < d; j++)
            out[j] += p * v[j];
    }
    *lse = count ? log(total) : -INFINITY;
    free(e);
}

typedef struct attend_output {
    char *data;
    float *lse;
    int64_t stride_seq, stride_head;
    size_t bytes;
} attend_output;

static void attend_output_init(attend_output *o, const attend_fixture *f, ha_dtype dtype)
{
    o->stride_head = f->d + 3;
    o->stride_seq = f->q_heads * o->stride_head + 5;
    o->bytes = (size_t)(f->batch * o->stride_seq) * dtype_bytes(dtype);
    o->data = malloc(o->bytes);
    memset(o->data, 0x7f, o->bytes); /* poison: huge values, checked in the gaps afterwards */
    o->lse = malloc((size_t)f->batch * f->q_heads * sizeof(float));
    for (int64_t i = 0; i < (int64_t)f->batch * f->q_heads; i++)
        o->lse[i] = 12345.0f;
}

static void attend_output_free(attend_output *o)
{
    free(o->data);
    free(o->lse);
}

static ha_attend_args attend_args(const attend_fixture *f, const attend_output *o, ha_dtype out_dtype,
                                  const int32_t *indices, int64_t index_stride, const int32_t *counts,
                                  int32_t sel_heads)
{
    ha_attend_args a = {
        .batch = f->batch,
        .q_heads = f->q_heads,
        .kv_heads = f->kv_heads,
        .head_dim = f->d,
        .q = f->qs.rows,
        .k = f->ks.rows,
        .v = f->vs.rows,
        .seq_lens = f->lens,
        .indices = indices,
        .index_stride = index_stride,
        .counts = counts,
        .sel_heads = sel_heads,
        .scale = f->scale,
        .out = o->data,
        .out_dtype = out_dtype,
        .out_stride_seq = o->stride_seq,
        .out_stride_head = o->stride_head,
        .lse = o->lse,
    };
    return a;
}

/* Compares every (b, h) with the oracle and checks the poison between rows survived. */
static void check_attend_output(const attend_fixture *f, const attend_output *o, ha_dtype out_dtype,
                                const int32_t *indices, int64_t index_stride, const int32_t *counts,
                                int32_t sel_heads, uint64_t seed)
{
    double tolerance = out_dtype == HA_F32 ? 1e-6 : out_dtype == HA_F16 ? 1e-3 : 8e-3;
    size_t elem = dtype_bytes(out_dtype);
    int32_t *all = malloc((size_t)f->n_max * sizeof(int32_t));
    for (int32_t t = 0; t < f->n_max; t++)
        all[t] = t;
    double *want = malloc((size_t)f->d * sizeof(double));
    for (int32_t b = 0; b < f->batch; b++) {
        for (int32_t h = 0; h < f->q_heads; h++) {
            const int32_t *tokens = all;
            int64_t count = f->lens[b];
            if (indices) {
                int64_t row = (int64_t)b * sel_heads + h / (f->q_heads / sel_heads);
                tokens = indices + row * index_stride;
                count = counts[row];
            }
            double want_lse;
            oracle_attend(f, b, h, tokens, count, f->scale, want, &want_lse);
            const char *out = o->data + (b * o->stride_seq + h * o->stride_head) * (int64_t)elem;
            double err = 0, norm = 0;
            for (int32_t i = 0; i < f->d; i++) {
                double got = ha_load_f32(out, out_dtype, i);
                err += (got - want[i]) * (got - want[i]);
                norm += want[i] * want[i];
            }
            if (count == 0) {
                assert_true(err == 0.0); /* exactly zero output */
                assert_true(isinf(o->lse[b * f->q_heads + h]) && o->lse[b * f->q_heads + h] < 0);
                continue;
            }
            if (!(sqrt(err) <= tolerance * sqrt(norm) + 1e-7))
                fail_msg("seed %llu b %d h %d: |err| %g |ref| %g", (unsigned long long)seed, b, h, sqrt(err),
                         sqrt(norm));
            double lse = o->lse[b * f->q_heads + h];
            assert_true(fabs(lse - want_lse) <= 1e-6 * (1.0 + fabs(want_lse)));
        }
        /* the gap after the last head's row and between rows holds the poison still */
        for (int32_t h = 0; h < f->q_heads; h++) {
            const unsigned char *gap = (const unsigned char *)o->data +
                                       (b * o->stride_seq + h * o->stride_head + f->d) * (int64_t)elem;
            for (size_t i = 0; i < 3 * elem; i++)
                assert_int_equal(gap[i], 0x7f);
        }
    }
    free(all);
    free(want);
}

/* Random ascending subsets of [0, n) per (b, selection row), sizes from 0 to n. */
static void random_selection(rng *r, const attend_fixture *f, int32_t sel_heads, int32_t *indices,
                             int64_t index_stride, int32_t *counts)
{
    for (int32_t b = 0; b < f->batch; b++)
        for (int32_t s = 0; s < sel_heads; s++) {
            int64_t row = (int64_t)b * sel_heads + s;
            int32_t n = f->lens[b], count = 0;
            int64_t keep_per_mille = rng_below(r, 1001);
            for (int32_t t = 0; t < n; t++)
                if (rng_below(r, 1000) < keep_per_mille)
                    indices[row * index_stride + count++] = t;
            for (int64_t i = count; i < index_stride; i++)
                indices[row * index_stride + i] = -99; /* never read */
            counts[row] = count;
        }
}

static void run_attend_case(int32_t kv_heads, ha_dtype dtype, ha_dtype out_dtype, int32_t page_size, uint64_t seed)
{
    static const int32_t lens[] = {37, 0, 100, 1, 64};
    const int32_t batch = 5, q_heads = 8, d = 20;
    rng r = {seed};
    attend_fixture f;
    attend_fixture_init(&f, &r, batch, q_heads, kv_heads, d, lens, dtype, page_size);
    attend_output o;

    /* dense */
    attend_output_init(&o, &f, out_dtype);
    ha_attend_args a = attend_args(&f, &o, out_dtype, NULL, 0, NULL, 0);
    assert_int_equal(ha_ref_attend(&a), HA_OK);
    check_attend_output(&f, &o, out_dtype, NULL, 0, NULL, 0, seed);
    attend_output_free(&o);

    /* selected: paper-style rows per query head and group-style rows per KV head */
    int32_t sel_options[2] = {q_heads, kv_heads};
    for (int i = 0; i < 2; i++) {
        int32_t sel_heads = sel_options[i];
        int64_t index_stride = f.n_max + 2;
        int32_t *indices = malloc((size_t)(batch * sel_heads * index_stride) * sizeof(int32_t));
        int32_t *counts = malloc((size_t)(batch * sel_heads) * sizeof(int32_t));
        random_selection(&r, &f, sel_heads, indices, index_stride, counts);
        attend_output_init(&o, &f, out_dtype);
        a = attend_args(&f, &o, out_dtype, indices, index_stride, counts, sel_heads);
        assert_int_equal(ha_ref_attend(&a), HA_OK);
        check_attend_output(&f, &o, out_dtype, indices, index_stride, counts, sel_heads, seed);
        attend_output_free(&o);
        free(indices);
        free(counts);
    }
    attend_fixture_free(&f);
}

static void test_attend_gqa_groups(void **state)
{
    (void)state;
    uint64_t seed = 1000;
    for (int32_t kv_heads = 1; kv_heads <= 8; kv_heads *= 2) {
        run_attend_case(kv_heads, HA_F32, HA_F32, 0, seed++);
        run_attend_case(kv_heads, HA_F32, HA_F32, 16, seed++);
        run_attend_case(kv_heads, HA_F32, HA_F32, 3, seed++);
    }
}

static void test_attend_half_precision(void **state)
{
    (void)state;
    static const ha_dtype dtypes[] = {HA_F32, HA_F16, HA_BF16};
    uint64_t seed = 1100;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++) {
            run_attend_case(2, dtypes[i], dtypes[j], 0, seed++);
            run_attend_case(4, dtypes[i], dtypes[j], 8, seed++);
        }
}

static void test_attend_dense_equals_all_indices(void **state)
{
    (void)state;
    static const int32_t lens[] = {50, 0, 7, 129};
    rng r = {1200};
    attend_fixture f;
    attend_fixture_init(&f, &r, 4, 6, 3, 24, lens, HA_BF16, 5);
    int64_t index_stride = f.n_max;
    int32_t *indices = malloc((size_t)(4 * 3 * index_stride) * sizeof(int32_t));
    int32_t counts[12];
    for (int32_t b = 0; b < 4; b++)
        for (int32_t s = 0; s < 3; s++) {
            counts[b * 3 + s] = lens[b];
            for (int32_t t = 0; t < lens[b]; t++)
                indices[(b * 3 + s) * index_stride + t] = t;
        }
    attend_output dense, sparse;
    attend_output_init(&dense, &f, HA_F32);
    attend_output_init(&sparse, &f, HA_F32);
    ha_attend_args a = attend_args(&f, &dense, HA_F32, NULL, 0, NULL, 0);
    assert_int_equal(ha_ref_attend(&a), HA_OK);
    a = attend_args(&f, &sparse, HA_F32, indices, index_stride, counts, 3);
    assert_int_equal(ha_ref_attend(&a), HA_OK);
    assert_memory_equal(dense.data, sparse.data, dense.bytes);
    assert_memory_equal(dense.lse, sparse.lse, 4 * 6 * sizeof(float));
    check_attend_output(&f, &dense, HA_F32, NULL, 0, NULL, 0, 1200);
    attend_output_free(&dense);
    attend_output_free(&sparse);
    free(indices);
    attend_fixture_free(&f);
}

/* A huge scale makes every logit overflow exp() unless the maximum is subtracted; the softmax then
 * becomes the mean of the V rows of the tokens whose dot product is largest. */
static void test_attend_large_logits(void **state)
{
    (void)state;
    static const int32_t lens[] = {90, 33};
    rng r = {1300};
    attend_fixture f;
    attend_fixture_init(&f, &r, 2, 4, 2, 16, lens, HA_F32, 0);
    f.scale = 1e6f;
    attend_output o;
    attend_output_init(&o, &f, HA_F32);
    ha_attend_args a = attend_args(&f, &o, HA_F32, NULL, 0, NULL, 0);
    assert_int_equal(ha_ref_attend(&a), HA_OK);
    for (int32_t b = 0; b < 2; b++)
        for (int32_t h = 0; h < 4; h++) {
            int32_t kvh = h / 2;
            const float *q = f.q + ((int64_t)b * 4 + h) * 16;
            double best = -INFINITY, mean[16] = {0};
            int ties = 0;
            for (int32_t pass = 0; pass < 2; pass++)
                for (int32_t t = 0; t < lens[b]; t++) {
                    const float *k = f.k + (((int64_t)b * 2 + kvh) * f.n_max + t) * 16;
                    const float *v = f.v + (((int64_t)b * 2 + kvh) * f.n_max + t) * 16;
                    double dot = 0; /* exact: grid values */
                    for (int i = 0; i < 16; i++)
                        dot += (double)q[i] * k[i];
                    if (pass == 0 && dot > best)
                        best = dot;
                    if (pass == 1 && dot == best) {
                        ties++;
                        for (int i = 0; i < 16; i++)
                            mean[i] += v[i];
                    }
                }
            const float *out = (const float *)o.data + b * o.stride_seq + h * o.stride_head;
            for (int i = 0; i < 16; i++)
                assert_true(fabs(out[i] - mean[i] / ties) <= 1e-6);
            double want_lse = (double)f.scale * best + log((double)ties);
            assert_true(fabs(o.lse[b * 4 + h] - want_lse) <= 1e-6 * fabs(want_lse));
        }
    attend_output_free(&o);
    attend_fixture_free(&f);
}

/* ================================================================================================
 * the "reference" plugin table
 * ================================================================================================ */

static void test_plugin_table(void **state)
{
    (void)state;
    const ha_plugin_api *api = ha_reference_plugin_api();
    assert_non_null(api);
    assert_int_equal(api->abi_version, HA_PLUGIN_ABI_VERSION);
    assert_true(api->struct_size >= HA_PLUGIN_API_V1_SIZE);
    assert_string_equal(api->name, "reference");
    assert_int_equal(api->probe(), 1);
    assert_int_equal(api->host_memory, 1);
    assert_null(api->plan_create);
    assert_null(api->plan_destroy);
    assert_null(api->decode);
    assert_non_null(api->last_error);

    void *ctx = NULL;
    assert_int_equal(api->init(NULL, &ctx), HA_OK);
    assert_non_null(ctx);
    assert_string_equal(api->describe(ctx), "portable scalar reference (double accumulation)");
    assert_string_equal(api->last_error(ctx), "");

    /* memory: 64-byte aligned, zero bytes still a unique block, copy and sync */
    char *p = api->mem_alloc(ctx, 100), *z1 = api->mem_alloc(ctx, 0), *z2 = api->mem_alloc(ctx, 0);
    assert_non_null(p);
    assert_non_null(z1);
    assert_non_null(z2);
    assert_ptr_not_equal(z1, z2);
    assert_int_equal((uintptr_t)p % 64, 0);
    assert_int_equal((uintptr_t)z1 % 64, 0);
    char src[100];
    for (int i = 0; i < 100; i++)
        src[i] = (char)(i * 7 + 1);
    assert_int_equal(api->mem_copy(ctx, p, src, 100, HA_COPY_HOST_TO_BACKEND), HA_OK);
    assert_memory_equal(p, src, 100);
    assert_int_equal(api->synchronize(ctx, NULL), HA_OK);
    api->mem_free(ctx, p);
    api->mem_free(ctx, z1);
    api->mem_free(ctx, z2);
    api->mem_free(ctx, NULL);

    /* the stages through the table equal the direct calls */
    rng r = {1400};
    mlp_fixture f;
    const int32_t dims[] = {8, 16, 32};
    mlp_fixture_random(&f, &r, 2, 2, dims);
    void *handle = NULL;
    assert_int_equal(api->mlp_upload(ctx, &f.desc, &handle), HA_OK);
    assert_non_null(handle);
    assert_ptr_not_equal(handle, &f.desc);
    assert_memory_equal(handle, &f.desc, sizeof f.desc);
    float x[3][8];
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 8; i++)
            x[t][i] = rng_grid(&r);
    uint32_t via_table[3][2], direct[3][2];
    ha_encode_args e = {
        .mlp = handle,
        .desc = &f.desc,
        .batch = 1,
        .count = 3,
        .in = {.data = x, .dtype = HA_F32, .heads = 1, .dim = 8, .stride_seq = 24, .stride_token = 8},
        .out = {.data = via_table, .heads = 2, .dim = 1, .stride_seq = 6, .stride_token = 2, .stride_head = 1},
    };
    assert_int_equal(api->encode(ctx, NULL, &e), HA_OK);
    e.out.data = direct;
    assert_int_equal(ha_ref_encode(&e), HA_OK);
    assert_memory_equal(via_table, direct, sizeof direct);

    const int32_t len = 3;
    int32_t indices[2][4] = {{-1, -1, -1, -1}, {-1, -1, -1, -1}}, counts[2] = {-1, -1};
    ha_match_args m = {
        .batch = 1,
        .q_heads = 2,
        .sel_heads = 2,
        .words = 1,
        .bits = 32,
        .q_codes = direct[0],
        .k_codes = {.data = direct, .heads = 2, .dim = 1, .stride_seq = 6, .stride_token = 2, .stride_head = 1},
        .seq_lens = &len,
        .sink = 1,
        .local = 1,
        .heavy_count = 0,
        .indices = &indices[0][0],
        .index_stride = 4,
        .counts = counts,
    };
    assert_int_equal(api->match(ctx, NULL, &m), HA_OK);
    assert_int_equal(counts[0], 2);
    assert_int_equal(indices[0][0], 0);
    assert_int_equal(indices[0][1], 2);
    assert_int_equal(counts[1], 2);

    float q[2] = {0.5f, -1.0f}, kv[3][2] = {{1, 2}, {3, 4}, {-1, 0.5f}}, out[2] = {NAN, NAN}, lse = NAN;
    ha_attend_args at = {
        .batch = 1,
        .q_heads = 1,
        .kv_heads = 1,
        .head_dim = 2,
        .q = {.data = q, .dtype = HA_F32, .heads = 1, .dim = 2, .stride_seq = 2, .stride_token = 2},
        .k = {.data = kv, .dtype = HA_F32, .heads = 1, .dim = 2, .stride_seq = 6, .stride_token = 2},
        .v = {.data = kv, .dtype = HA_F32, .heads = 1, .dim = 2, .stride_seq = 6, .stride_token = 2},
        .seq_lens = &len,
        .scale = 1.0f,
        .out = out,
        .out_dtype = HA_F32,
        .out_stride_seq = 2,
        .out_stride_head = 2,
        .lse = &lse,
    };
    assert_int_equal(api->attend(ctx, NULL, &at), HA_OK);
    /* logits -1.5, -2.5, -1: written out by hand */
    double e0 = exp(-1.5), e1 = exp(-2.5), e2 = exp(-1.0), sum = e0 + e1 + e2;
    assert_true(fabs(out[0] - (e0 * 1 + e1 * 3 + e2 * -1) / sum) < 1e-6);
    assert_true(fabs(out[1] - (e0 * 2 + e1 * 4 + e2 * 0.5) / sum) < 1e-6);
    assert_true(fabs(lse - log(sum)) < 1e-6);

    /* a malformed call fails with a status and a message, and writes nothing */
    m.sel_heads = 0;
    counts[0] = -5;
    assert_int_equal(api->match(ctx, NULL, &m), HA_ERR_SHAPE);
    assert_int_equal(counts[0], -5);
    assert_true(strlen(api->last_error(ctx)) > 0);

    api->mlp_free(ctx, handle);
    mlp_fixture_free(&f);
    api->shutdown(ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_paper_fraction),
        cmocka_unit_test(test_match_group_modes),
        cmocka_unit_test(test_match_multiword_codes),
        cmocka_unit_test(test_match_short_sequences),
        cmocka_unit_test(test_match_degenerate_budgets),
        cmocka_unit_test(test_match_paged),
        cmocka_unit_test(test_encode_hand_depth1),
        cmocka_unit_test(test_encode_hand_depth2),
        cmocka_unit_test(test_encode_two_word_codes),
        cmocka_unit_test(test_encode_depths_heads_dtypes),
        cmocka_unit_test(test_encode_wide_hidden_layer),
        cmocka_unit_test(test_attend_gqa_groups),
        cmocka_unit_test(test_attend_half_precision),
        cmocka_unit_test(test_attend_dense_equals_all_indices),
        cmocka_unit_test(test_attend_large_logits),
        cmocka_unit_test(test_plugin_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
