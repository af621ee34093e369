/*
 * conformance_cases.c — the case table of the conformance suite (see conformance_cases.h). Each case
 * starts from base_case and changes what it is about.
 */
#include <stdio.h>
#include <string.h>

#include "conformance_cases.h"
#include "test_util.h"

static conf_case base_case(const char *name)
{
    conf_case c;
    memset(&c, 0, sizeof c);
    snprintf(c.name, sizeof c.name, "%s", name);
    c.q_heads = 8;
    c.kv_heads = 2;
    c.head_dim = 32;
    c.bits = 32;
    c.depth = 3;
    c.hidden = 32;
    c.weights_dtype = HA_ST_F32;
    c.num_layers = 1;
    c.batch = 3;
    c.lens[0] = 700;
    c.lens[1] = 7;
    c.lens[2] = 257;
    c.sink = 4;
    c.local = 16;
    c.heavy_fraction = 1.0 / 16.0;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_F32;
    c.new_tokens = 1;
    c.decode_steps = 1;
    c.q_scale = 1.0f;
    return c;
}

static void set_lens(conf_case *c, int32_t batch, const int32_t *lens)
{
    c->batch = batch;
    memcpy(c->lens, lens, (size_t)batch * sizeof(int32_t));
}

#define SET_LENS(c, ...)                                                                                      \
    do {                                                                                                      \
        const int32_t lens_[] = {__VA_ARGS__};                                                                \
        set_lens(&(c), (int32_t)(sizeof lens_ / sizeof lens_[0]), lens_);                                     \
    } while (0)

int conf_build_cases(conf_case *out)
{
    int n = 0;
    conf_case c;

    out[n++] = base_case("paper-g4");
    c = base_case("group-g4");
    c.group_mode = 1;
    out[n++] = c;

    /* every GQA group size of Hq = 8, both modes; plus a group of 3 */
    const int32_t groups[] = {1, 2, 4, 8};
    const int32_t dims[] = {24, 40, 64, 32};
    for (int gi = 0; gi < 4; gi++) {
        for (int mode = 0; mode < 2; mode++) {
            char name[48];
            snprintf(name, sizeof name, "gqa-g%d-%s", groups[gi], mode ? "group" : "paper");
            c = base_case(name);
            c.kv_heads = 8 / groups[gi];
            c.group_mode = mode;
            c.head_dim = dims[gi];
            c.hidden = dims[gi];
            c.heavy_fraction = 1.0 / 8.0;
            SET_LENS(c, 300, 1, 129, 64);
            out[n++] = c;
        }
    }
    for (int mode = 0; mode < 2; mode++) {
        c = base_case(mode ? "gqa-g3-hq6-group" : "gqa-g3-hq6-paper");
        c.q_heads = 6;
        c.kv_heads = 2;
        c.group_mode = mode;
        SET_LENS(c, 401, 90);
        out[n++] = c;
    }

    /* code lengths: 2 words, an odd count, tiny codes (mostly ties), 2 partial words */
    c = base_case("bits64-paper");
    c.bits = 64;
    c.kv_heads = 4;
    out[n++] = c;
    c = base_case("bits64-group-g8");
    c.bits = 64;
    c.kv_heads = 1;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("bits20-group");
    c.bits = 20;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("bits20-paper-paged7");
    c.bits = 20;
    c.page_size = 7;
    out[n++] = c;
    c = base_case("bits3-ties");
    c.bits = 3;
    SET_LENS(c, 500, 77);
    out[n++] = c;
    c = base_case("bits1-heavy-ties"); /* the budget reaches score 0 */
    c.bits = 1;
    c.heavy_fraction = 0.7;
    SET_LENS(c, 500, 301, 90);
    out[n++] = c;
    c = base_case("bits2-group-heavy-ties");
    c.bits = 2;
    c.group_mode = 1;
    c.heavy_fraction = 0.6;
    SET_LENS(c, 400, 123);
    out[n++] = c;
    c = base_case("bits40-group");
    c.bits = 40;
    c.group_mode = 1;
    out[n++] = c;

    /* MLP shapes */
    c = base_case("depth1");
    c.depth = 1;
    out[n++] = c;
    c = base_case("depth2-hidden24");
    c.depth = 2;
    c.hidden = 24;
    out[n++] = c;
    c = base_case("depth4-hidden40-group");
    c.depth = 4;
    c.hidden = 40;
    c.group_mode = 1;
    out[n++] = c;

    /* budgets */
    c = base_case("count-budget");
    c.heavy_fraction = 0.0;
    c.heavy_count = 37;
    out[n++] = c;
    c = base_case("windows-only");
    c.heavy_fraction = 0.0;
    c.heavy_count = 0;
    out[n++] = c;
    c = base_case("defaults-128");
    c.sink = c.local = -1;
    c.heavy_fraction = 1.0 / 32.0;
    SET_LENS(c, 3001, 255, 1000);
    out[n++] = c;
    c = base_case("heavy-covers-all");
    c.heavy_fraction = 0.0;
    c.heavy_count = 100000;
    out[n++] = c;
    c = base_case("no-sink-group");
    c.sink = 0;
    c.local = 5;
    c.group_mode = 1;
    out[n++] = c;

    /* lengths */
    c = base_case("short-seqs");
    SET_LENS(c, 5, 20, 1, 0, 19);
    out[n++] = c;
    c = base_case("zero-length-seq");
    SET_LENS(c, 0, 500);
    out[n++] = c;
    c = base_case("single-token");
    SET_LENS(c, 1);
    out[n++] = c;
    c = base_case("odd-lengths");
    SET_LENS(c, 1, 7, 255, 257, 1000, 3001);
    c.heavy_fraction = 1.0 / 32.0;
    out[n++] = c;

    /* one long sequence and one selection head: backends that split a sequence across threads
     * (histograms per chunk, the tie boundary in one chunk) must still select the same set */
    c = base_case("long-one-item-group-ties");
    c.q_heads = 4;
    c.kv_heads = 1;
    c.group_mode = 1;
    c.bits = 8;
    c.heavy_fraction = 0.25;
    SET_LENS(c, 9001);
    out[n++] = c;
    c = base_case("long-one-item-paper-hq1");
    c.q_heads = 1;
    c.kv_heads = 1;
    c.bits = 20;
    c.heavy_fraction = 1.0 / 8.0;
    SET_LENS(c, 8500);
    out[n++] = c;
    c = base_case("long-one-item-count-paged");
    c.q_heads = 2;
    c.kv_heads = 1;
    c.group_mode = 1;
    c.bits = 4;
    c.heavy_fraction = 0.0;
    c.heavy_count = 3000;
    c.page_size = 16;
    SET_LENS(c, 10007);
    out[n++] = c;

    /* dtypes of Q/K/V and out */
    c = base_case("f16");
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_F16;
    out[n++] = c;
    c = base_case("bf16-group");
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_BF16;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("q-f32-kv-bf16-out-f16");
    c.kv_dtype = HA_BF16;
    c.out_dtype = HA_F16;
    out[n++] = c;
    c = base_case("q-bf16-kv-f16-out-f32");
    c.q_dtype = HA_BF16;
    c.kv_dtype = HA_F16;
    out[n++] = c;
    c = base_case("f32-out-bf16");
    c.out_dtype = HA_BF16;
    out[n++] = c;

    /* layouts */
    c = base_case("padded-strides");
    c.padded = 1;
    out[n++] = c;
    c = base_case("padded-strides-group-f16");
    c.padded = 1;
    c.group_mode = 1;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_F16;
    out[n++] = c;
    c = base_case("paged16");
    c.page_size = 16;
    c.padded = 1;
    SET_LENS(c, 300, 33, 16);
    out[n++] = c;
    c = base_case("paged7-group-bits64-f16");
    c.page_size = 7;
    c.group_mode = 1;
    c.bits = 64;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_F16;
    out[n++] = c;
    c = base_case("paged16-page-multiples");
    c.page_size = 16;
    SET_LENS(c, 256, 16, 32);
    out[n++] = c;
    c = base_case("paged7-bf16-padded");
    c.page_size = 7;
    c.padded = 1;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_BF16;
    SET_LENS(c, 1000, 0, 6, 8);
    out[n++] = c;

    /* weights files */
    c = base_case("dense-layers");
    c.num_layers = 3;
    c.dense_mask = 0x5; /* layers 0 and 2 dense, layer 1 sparse */
    out[n++] = c;
    c = base_case("two-sparse-layers-group");
    c.num_layers = 2;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("weights-f16");
    c.weights_dtype = HA_ST_F16;
    out[n++] = c;
    c = base_case("weights-bf16-group");
    c.weights_dtype = HA_ST_BF16;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("load-memory");
    c.load_from_memory = 1;
    out[n++] = c;

    /* numerics: huge logits (overflow without max subtraction), an explicit scale */
    c = base_case("large-logits");
    c.q_scale = 40.0f;
    c.scale = 0.5f;
    c.min_top_lse = 88.0f; /* exp(88.7) overflows fp32 */
    out[n++] = c;
    c = base_case("small-scale");
    c.scale = 0.01f;
    out[n++] = c;

    /* Llama-like heads */
    c = base_case("llama-group-bf16");
    c.q_heads = 32;
    c.kv_heads = 8;
    c.head_dim = 128;
    c.hidden = 128;
    c.group_mode = 1;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_BF16;
    c.sink = 16;
    c.local = 64;
    SET_LENS(c, 600, 77);
    out[n++] = c;
    c = base_case("llama-paper-depth1");
    c.q_heads = 32;
    c.kv_heads = 8;
    c.head_dim = 128;
    c.depth = 1;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_BF16;
    SET_LENS(c, 400);
    out[n++] = c;
    c = base_case("d80-paper");
    c.head_dim = 80;
    c.hidden = 80;
    SET_LENS(c, 350, 199);
    out[n++] = c;

    /* decode steps */
    c = base_case("multi-step");
    c.decode_steps = 4;
    out[n++] = c;
    c = base_case("multi-token-steps-group");
    c.new_tokens = 5;
    c.decode_steps = 2;
    c.group_mode = 1;
    out[n++] = c;
    c = base_case("prefilled-step");
    c.new_tokens = 0;
    out[n++] = c;
    c = base_case("batch-below-max");
    c.extra_batch = 3;
    c.extra_tokens = 5;
    out[n++] = c;

    /* shapes the CUDA fused decode step takes (cuda_decode_fused.cu: code-cache rows of a multiple of 4
     * tokens, i.e. the longest sequence + 2; 16-byte K/V rows; MLPs ≤ 128 wide; local ≥ new tokens):
     * paper and group mode, a sequence kept whole, several new tokens per step */
    c = base_case("fused-paper-bf16");
    c.q_heads = 32;
    c.kv_heads = 8;
    c.head_dim = 128;
    c.hidden = 128;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_BF16;
    c.sink = 16;
    c.local = 64;
    c.decode_steps = 2;
    SET_LENS(c, 1022, 130);
    out[n++] = c;
    c.group_mode = 1;
    snprintf(c.name, sizeof c.name, "fused-group-bf16");
    SET_LENS(c, 1022, 61);
    out[n++] = c;
    c = base_case("fused-multi-token-group-f16");
    c.head_dim = 64;
    c.group_mode = 1;
    c.q_dtype = c.kv_dtype = c.out_dtype = HA_F16;
    c.new_tokens = 3;
    c.decode_steps = 3;
    SET_LENS(c, 510, 33);
    out[n++] = c;
    return n;
}

/* ---- random shapes -------------------------------------------------------------------------------- */

/** Multiply-adds of the reference's key encoding: what makes a case slow (under ASan above all). */
static double encode_cost(const conf_case *c)
{
    double tokens = 0.0;
    for (int32_t b = 0; b < c->batch; b++)
        tokens += c->lens[b];
    double heads = c->group_mode ? c->kv_heads : c->q_heads;
    double width = c->depth > 1 ? c->hidden : c->bits;
    double macs = (double)c->head_dim * width + (c->depth > 1 ? width * c->bits : 0.0) +
                  (c->depth > 2 ? (c->depth - 2) * width * width : 0.0);
    return tokens * heads * macs * c->num_layers;
}

/**
 * Output bits that one key row feeds (key-code heads reading one KV head × bits × sparse layers).
 * The suite redraws a key row until all of them are clear of zero; each is near zero with odds of
 * about 0.4%, so rows feeding many more than a few hundred bits could never be drawn.
 */
static int32_t key_bits_per_row(const conf_case *c)
{
    int32_t heads = c->group_mode ? 1 : c->q_heads / c->kv_heads, sparse = 0;
    for (int32_t l = 0; l < c->num_layers; l++)
        sparse += !((c->dense_mask >> l) & 1);
    return heads * c->bits * sparse;
}

static int32_t random_length(tu_rng *r)
{
    switch (tu_rng_range(r, 0, 9)) {
    case 0: return 0;
    case 1: return 1;
    case 2: case 3: return (int32_t)tu_rng_range(r, 2, 40);
    case 4: case 5: case 6: case 7: return (int32_t)tu_rng_range(r, 41, 600);
    default: return (int32_t)tu_rng_range(r, 601, 1800);
    }
}

static const ha_dtype dtypes[] = {HA_F32, HA_F16, HA_BF16};
static const ha_st_dtype weight_dtypes[] = {HA_ST_F32, HA_ST_F16, HA_ST_BF16};

static void random_case(tu_rng *r, int index, conf_case *c)
{
    static const int32_t q_heads[] = {1, 2, 4, 6, 8, 12, 16};
    static const double fractions[] = {1.0 / 64, 1.0 / 32, 1.0 / 16, 1.0 / 8, 0.3, 0.9};
    do {
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "random-%02d", index);
        c->q_heads = q_heads[tu_rng_range(r, 0, 6)];
        do
            c->kv_heads = (int32_t)tu_rng_range(r, 1, c->q_heads);
        while (c->q_heads % c->kv_heads);
        c->group_mode = (int)tu_rng_range(r, 0, 1);
        c->head_dim = (int32_t)tu_rng_range(r, 4, 136);
        c->bits = (int32_t)tu_rng_range(r, 1, 96);
        c->depth = (int32_t)tu_rng_range(r, 1, 4);
        c->hidden = (int32_t)tu_rng_range(r, 4, 64);
        c->weights_dtype = weight_dtypes[tu_rng_range(r, 0, 2)];
        c->num_layers = (int32_t)tu_rng_range(r, 1, 3);
        c->dense_mask = (uint32_t)tu_rng_range(r, 0, (1 << c->num_layers) - 1) & (uint32_t)tu_rng_range(r, 0, 7);
        c->load_from_memory = (int)tu_rng_range(r, 0, 1);
        c->batch = (int32_t)tu_rng_range(r, 1, 5);
        for (int32_t b = 0; b < c->batch; b++)
            c->lens[b] = random_length(r);
        c->extra_batch = (int32_t)tu_rng_range(r, 0, 2);
        c->extra_tokens = tu_rng_range(r, 0, 1) ? 0 : (int32_t)tu_rng_range(r, 1, 10);
        c->sink = tu_rng_range(r, 0, 5) ? (int32_t)tu_rng_range(r, 0, 20) : -1;
        c->local = tu_rng_range(r, 0, 5) ? (int32_t)tu_rng_range(r, 0, 40) : -1;
        if (tu_rng_range(r, 0, 2))
            c->heavy_fraction = fractions[tu_rng_range(r, 0, 5)];
        else
            c->heavy_count = tu_rng_range(r, 0, 200);
        c->scale = tu_rng_range(r, 0, 1) ? 0.0f : (float)(0.05 + 0.45 * tu_rng_unit(r));
        c->q_dtype = dtypes[tu_rng_range(r, 0, 2)];
        c->kv_dtype = dtypes[tu_rng_range(r, 0, 2)];
        c->out_dtype = dtypes[tu_rng_range(r, 0, 2)];
        c->page_size = tu_rng_range(r, 0, 1) ? 0 : (int32_t)tu_rng_range(r, 1, 33);
        c->padded = (int)tu_rng_range(r, 0, 1);
        c->new_tokens = (int32_t)tu_rng_range(r, 0, 4);
        c->decode_steps = (int32_t)tu_rng_range(r, 1, 3);
        c->q_scale = (float)(0.5 + 2.5 * tu_rng_unit(r));
        int32_t longest = 1;
        for (int32_t b = 0; b < c->batch; b++)
            longest = c->lens[b] > longest ? c->lens[b] : longest;
        if (c->new_tokens > longest + c->extra_tokens) /* a step never adds more than the plan holds */
            c->new_tokens = longest + c->extra_tokens;
    } while (encode_cost(c) > 1.5e8 || key_bits_per_row(c) > 384);
}

int conf_build_random_cases(conf_case *out, int max, uint64_t seed)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    int n = max < CONF_RANDOM_CASES ? max : CONF_RANDOM_CASES;
    for (int i = 0; i < n; i++)
        random_case(&r, i, &out[i]);
    return n;
}

void conf_describe_case(const conf_case *c, char *buf, size_t size)
{
    int used = snprintf(buf, size,
                        "Hq %d Hkv %d d %d %s bits %d depth %d hidden %d layers %d (dense mask %u) sink %d local %d "
                        "%s %g q/kv/out %s/%s/%s page %d padded %d steps %dx%d lens",
                        c->q_heads, c->kv_heads, c->head_dim, c->group_mode ? "group" : "paper", c->bits, c->depth,
                        c->hidden, c->num_layers, c->dense_mask, c->sink, c->local,
                        c->heavy_fraction > 0 ? "fraction" : "count",
                        c->heavy_fraction > 0 ? c->heavy_fraction : (double)c->heavy_count, tu_dtype_name(c->q_dtype),
                        tu_dtype_name(c->kv_dtype), tu_dtype_name(c->out_dtype), c->page_size, c->padded,
                        c->decode_steps, c->new_tokens);
    for (int32_t b = 0; b < c->batch && used > 0 && (size_t)used < size; b++)
        used += snprintf(buf + used, size - (size_t)used, " %d", c->lens[b]);
}
