/*
 * ha-make-weights — writes a hashattn mapping-weights file (safetensors, SPEC §2) without training,
 * so that the runtime, its tests and benchmarks can run before learned weights exist.
 *
 *   --kind random   every layer's query and key MLPs get Gaussian weights scaled 1/sqrt(fan_in) and
 *                   small Gaussian biases (0.01 · N(0,1)).
 *   --kind simhash  depth 1, biases 0: codes are sign random projections. Each key-code head j gets
 *                   its own random Gaussian hyperplanes G_j [bits, head_dim], used by key MLP j and by
 *                   the query MLP of every query head of its group (h / g == j, g = q_heads / k_heads).
 *                   In paper mode (g = 1) every query head thus has its own hyperplanes, shared with
 *                   its key MLP; in group mode the g query heads of a group hash with the same
 *                   hyperplanes as the group's key code, so each of their Hamming similarities (which
 *                   the group sums) estimates the angle between that query and the key.
 *
 * Deterministic for a given seed (splitmix64 + Box-Muller; the generation order is layer, then query
 * side before key side, then head, then linear layer, weights before biases).
 */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_cli.h"
#include "weights_host.h"

#define PROGRAM "ha-make-weights"

/* Limits of the weights format (core/weights_host.c enforces the same when loading). */
#define MAX_LAYERS 4096
#define MAX_BITS 1024
#define MAX_WIDTH 65536
#define MAX_HEADS 65536

typedef enum { KIND_RANDOM, KIND_SIMHASH } weights_kind;

typedef struct options {
    const char *out;
    weights_kind kind;
    int32_t layers, q_heads, k_heads, head_dim, bits, depth, hidden;
    const char *dense_layers;
    ha_st_dtype dtype;
    uint64_t seed;
} options;

/* ---- deterministic Gaussian numbers ------------------------------------------------------------ */

typedef struct rng {
    uint64_t state;
    int has_spare;
    double spare;
} rng;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/** Uniform in (0, 1): never 0, so the logarithm below is finite. */
static double uniform_open(rng *r)
{
    return ((double)(splitmix64(&r->state) >> 11) + 0.5) * 0x1p-53;
}

static double gaussian(rng *r)
{
    if (r->has_spare) {
        r->has_spare = 0;
        return r->spare;
    }
    double radius = sqrt(-2.0 * log(uniform_open(r)));
    double angle = 6.283185307179586 * uniform_open(r); /* 2π */
    r->spare = radius * sin(angle);
    r->has_spare = 1;
    return radius * cos(angle);
}

static void fill_gaussian(rng *r, float *dst, size_t n, double scale)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)(gaussian(r) * scale);
}

/* ---- weights ----------------------------------------------------------------------------------- */

static void make_random(ha_weights_host *w, rng *r)
{
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < 2 && !w->dense[l]; side++) {
            ha_mlp_desc *d = side ? &w->k[l] : &w->q[l];
            for (int32_t h = 0; h < d->heads; h++) {
                for (int32_t i = 0; i < d->depth; i++) {
                    size_t out = (size_t)d->dims[i + 1], in = (size_t)d->dims[i];
                    fill_gaussian(r, (float *)d->w[i] + (size_t)h * out * in, out * in, 1.0 / sqrt((double)in));
                    fill_gaussian(r, (float *)d->b[i] + (size_t)h * out, out, 0.01);
                }
            }
        }
    }
}

/** Depth 1, zero biases (alloc zeroed them): hyperplanes per key-code head, shared with its query heads. */
static void make_simhash(ha_weights_host *w, rng *r)
{
    size_t plane_floats = (size_t)w->bits * (size_t)w->head_dim;
    int32_t group = w->q_heads / w->k_heads;
    for (int32_t l = 0; l < w->num_layers; l++) {
        if (w->dense[l])
            continue;
        float *k_w = (float *)w->k[l].w[0], *q_w = (float *)w->q[l].w[0];
        for (int32_t j = 0; j < w->k_heads; j++) {
            float *planes = k_w + (size_t)j * plane_floats;
            fill_gaussian(r, planes, plane_floats, 1.0 / sqrt((double)w->head_dim));
            for (int32_t h = j * group; h < (j + 1) * group; h++)
                memcpy(q_w + (size_t)h * plane_floats, planes, plane_floats * sizeof(float));
        }
    }
}

/* ---- command line ------------------------------------------------------------------------------ */

static void usage(FILE *to)
{
    fprintf(to,
            "usage: " PROGRAM " --out PATH --layers L --q-heads H --head-dim D [options]\n"
            "Writes hashattn mapping-function weights (safetensors) that need no training.\n"
            "\n"
            "  --out PATH             file to write (required; written atomically)\n"
            "  --kind random|simhash  random MLPs (default), or sign random projections: depth 1, the\n"
            "                         hyperplanes of key-code head j shared by its key MLP and the query\n"
            "                         MLPs of its group's query heads\n"
            "  --layers L             number of layers, 1..%d (required)\n"
            "  --q-heads H            query heads, 1..%d (required)\n"
            "  --k-heads K            key-code heads: H (paper mode, the default) or a divisor of H\n"
            "                         (group mode: one per KV head)\n"
            "  --head-dim D           head dimension, 1..%d (required)\n"
            "  --bits B               code bits, 1..%d (default 32)\n"
            "  --depth N              linear layers per MLP, 1..%d (default 3; simhash: 1)\n"
            "  --hidden W             width of the hidden layers, 1..%d (default D)\n"
            "  --dense-layers LIST    comma-separated layers without mapping functions, e.g. 0,1\n"
            "  --dtype f32|f16|bf16   tensor dtype (default f32)\n"
            "  --seed S               seed of the deterministic generator (default 1)\n"
            "  --help                 this text\n",
            MAX_LAYERS, MAX_HEADS, MAX_WIDTH, MAX_BITS, HA_PLUGIN_MAX_MLP_DEPTH, MAX_WIDTH);
}

static int parse_seed(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    int ok = *s != '\0';
    for (const char *p = s; ok && *p; p++) {
        ok = *p >= '0' && *p <= '9' && v <= (UINT64_MAX - (uint64_t)(*p - '0')) / 10;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    if (!ok)
        return tool_complain("--seed: \"%s\" is not an unsigned 64-bit integer", s);
    *out = v;
    return 1;
}

/** "0,2,5" → dense[0] = dense[2] = dense[5] = 1; "" is no layer. */
static int parse_dense_layers(const char *list, int32_t layers, uint8_t *dense)
{
    if (*list == '\0')
        return 1;
    char *copy = strdup(list);
    if (!copy)
        return tool_complain("out of memory");
    int ok = 1;
    char *item = copy;
    for (char *next; ok && item; item = next) {
        next = strchr(item, ',');
        if (next)
            *next++ = '\0';
        int32_t layer;
        ok = tool_parse_int("--dense-layers item", item, 0, layers - 1, &layer);
        if (ok && dense[layer])
            ok = tool_complain("--dense-layers: layer %d listed twice", (int)layer);
        if (ok)
            dense[layer] = 1;
    }
    free(copy);
    return ok;
}

enum { OPT_OUT = 1, OPT_KIND, OPT_LAYERS, OPT_Q_HEADS, OPT_K_HEADS, OPT_HEAD_DIM, OPT_BITS, OPT_DEPTH, OPT_HIDDEN,
       OPT_DENSE, OPT_DTYPE, OPT_SEED, OPT_HELP };

/** Returns 0 on success, 2 on a usage error, -1 when --help was asked. */
static int parse_options(int argc, char **argv, options *o)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, OPT_OUT},          {"kind", required_argument, NULL, OPT_KIND},
        {"layers", required_argument, NULL, OPT_LAYERS},    {"q-heads", required_argument, NULL, OPT_Q_HEADS},
        {"k-heads", required_argument, NULL, OPT_K_HEADS},  {"head-dim", required_argument, NULL, OPT_HEAD_DIM},
        {"bits", required_argument, NULL, OPT_BITS},        {"depth", required_argument, NULL, OPT_DEPTH},
        {"hidden", required_argument, NULL, OPT_HIDDEN},    {"dense-layers", required_argument, NULL, OPT_DENSE},
        {"dtype", required_argument, NULL, OPT_DTYPE},      {"seed", required_argument, NULL, OPT_SEED},
        {"help", no_argument, NULL, OPT_HELP},              {NULL, 0, NULL, 0},
    };
    *o = (options){.kind = KIND_RANDOM, .bits = 32, .dtype = HA_ST_F32, .seed = 1};
    int depth_given = 0, ok = 1, c;
    opterr = 0;
    while (ok && (c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) { /* ':' reports a missing value */
        switch (c) {
        case OPT_OUT: o->out = optarg; break;
        case OPT_KIND:
            if (strcmp(optarg, "random") == 0)
                o->kind = KIND_RANDOM;
            else if (strcmp(optarg, "simhash") == 0)
                o->kind = KIND_SIMHASH;
            else
                ok = tool_complain("--kind: \"%s\" is not random or simhash", optarg);
            break;
        case OPT_LAYERS: ok = tool_parse_int("--layers", optarg, 1, MAX_LAYERS, &o->layers); break;
        case OPT_Q_HEADS: ok = tool_parse_int("--q-heads", optarg, 1, MAX_HEADS, &o->q_heads); break;
        case OPT_K_HEADS: ok = tool_parse_int("--k-heads", optarg, 1, MAX_HEADS, &o->k_heads); break;
        case OPT_HEAD_DIM: ok = tool_parse_int("--head-dim", optarg, 1, MAX_WIDTH, &o->head_dim); break;
        case OPT_BITS: ok = tool_parse_int("--bits", optarg, 1, MAX_BITS, &o->bits); break;
        case OPT_DEPTH:
            ok = tool_parse_int("--depth", optarg, 1, HA_PLUGIN_MAX_MLP_DEPTH, &o->depth);
            depth_given = 1;
            break;
        case OPT_HIDDEN: ok = tool_parse_int("--hidden", optarg, 1, MAX_WIDTH, &o->hidden); break;
        case OPT_DENSE: o->dense_layers = optarg; break;
        case OPT_DTYPE: ok = tool_parse_dtype("--dtype", optarg, &o->dtype); break;
        case OPT_SEED: ok = parse_seed(optarg, &o->seed); break;
        case OPT_HELP: return -1;
        case ':': ok = tool_complain("%s needs a value", argv[optind - 1]); break;
        default: ok = tool_complain("unknown option \"%s\" (see --help)", argv[optind - 1]); break;
        }
    }
    if (!ok)
        return 2;
    if (optind < argc) {
        tool_complain("unexpected argument \"%s\"", argv[optind]);
        return 2;
    }
    const char *missing = !o->out ? "--out" : !o->layers ? "--layers" : !o->q_heads ? "--q-heads"
                        : !o->head_dim ? "--head-dim" : NULL;
    if (missing) {
        tool_complain("%s is required (see --help)", missing);
        return 2;
    }
    if (!o->k_heads)
        o->k_heads = o->q_heads;
    if (o->q_heads % o->k_heads != 0) {
        tool_complain("--k-heads %d does not divide --q-heads %d", (int)o->k_heads, (int)o->q_heads);
        return 2;
    }
    if (o->kind == KIND_SIMHASH && depth_given && o->depth != 1) {
        tool_complain("--kind simhash has depth 1 (got --depth %d)", (int)o->depth);
        return 2;
    }
    if (!depth_given)
        o->depth = o->kind == KIND_SIMHASH ? 1 : 3;
    if (!o->hidden)
        o->hidden = o->head_dim;
    return 0;
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse_options(argc, argv, &o);
    if (rc == -1) {
        usage(stdout);
        return 0;
    }
    if (rc != 0)
        return rc;
    uint8_t *dense = calloc((size_t)o.layers, 1);
    if (!dense) {
        tool_complain("out of memory");
        return 1;
    }
    if (o.dense_layers && !parse_dense_layers(o.dense_layers, o.layers, dense)) {
        free(dense);
        return 2;
    }

    ha_weights_host w;
    ha_status st = ha_weights_host_alloc(&w, o.layers, o.bits, o.depth, o.hidden, o.head_dim, o.q_heads, o.k_heads,
                                         dense);
    if (st != HA_OK) {
        tool_complain("cannot allocate the weights (%s)",
                 st == HA_ERR_OUT_OF_MEMORY ? "out of memory" : st == HA_ERR_OVERFLOW ? "too large" : "invalid geometry");
        free(dense);
        return 1;
    }
    rng r = {.state = o.seed};
    if (o.kind == KIND_SIMHASH)
        make_simhash(&w, &r);
    else
        make_random(&w, &r);

    char err[512];
    st = ha_weights_host_write(&w, o.out, o.dtype, err, sizeof(err));
    if (st != HA_OK) {
        tool_complain("%s", err);
    } else {
        char hidden_text[16] = "none";
        if (o.depth > 1)
            snprintf(hidden_text, sizeof(hidden_text), "%d", (int)o.hidden);
        int32_t n_dense = 0;
        for (int32_t l = 0; l < o.layers; l++)
            n_dense += dense[l];
        printf("%s: %s weights, %d layers (%d dense), q_heads %d, k_heads %d (%s mode), head_dim %d, bits %d, "
               "depth %d, hidden %s, %s, seed %llu\n",
               o.out, o.kind == KIND_SIMHASH ? "simhash" : "random", (int)o.layers, (int)n_dense, (int)o.q_heads,
               (int)o.k_heads, o.k_heads == o.q_heads ? "paper" : "group", (int)o.head_dim, (int)o.bits,
               (int)o.depth, hidden_text, ha_st_dtype_name(o.dtype),
               (unsigned long long)o.seed);
    }
    ha_weights_host_free(&w);
    free(dense);
    return st == HA_OK ? 0 : 1;
}
