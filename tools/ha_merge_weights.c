/*
 * ha-merge-weights — rewrites a hashattn mapping-weights file (SPEC §2), optionally taking some
 * layers' mapping functions from other files of the same geometry, and in the dtype asked for.
 *
 * Why: ha-train trains each (layer, head) independently, so layers can be retrained alone (with
 * --dense-layers) under other settings and combined with the rest of a shipped file; and a file can
 * be converted between F32, F16 and BF16 without retraining. Everything goes through the core's
 * validating reader (ha_weights_host_from_st) and its writer (ha_weights_host_write): F16 and BF16
 * values survive the round trip through fp32 exactly, so layers that are not replaced keep their bits.
 *
 *   ha-merge-weights --out OUT BASE [--take LAYERS:FILE]... [--dtype f32|f16|bf16]
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_cli.h"
#include "weights_host.h"

#define PROGRAM "ha-merge-weights"
#define MAX_TAKES 64

typedef struct take {
    const char *path;
    const char *layers; /* comma-separated layer indices */
} take;

typedef struct options {
    const char *out, *base;
    take takes[MAX_TAKES];
    int n_takes;
    ha_st_dtype dtype;
} options;

/** A weights file read, validated and converted to fp32 (ok: w holds it and must be freed). */
typedef struct loaded {
    ha_weights_host w;
    int ok;
} loaded;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: " PROGRAM " --out OUT BASE.safetensors [--take LAYERS:FILE]... [--dtype f32|f16|bf16]\n"
            "Writes BASE's mapping weights to OUT, with the layers listed in each --take replaced by\n"
            "FILE's (same bits, depth, head_dim, heads and layer count; the layer must be sparse in FILE).\n"
            "\n"
            "  --out PATH             file to write (written atomically; may not be an input)\n"
            "  --take LAYERS:FILE     e.g. 3,4:/tmp/w.safetensors (repeatable; a layer at most once)\n"
            "  --dtype f32|f16|bf16   dtype of OUT (default f16)\n"
            "  --help                 this text\n");
}

static int parse_options(int argc, char **argv, options *o)
{
    enum { OPT_OUT = 1, OPT_TAKE, OPT_DTYPE, OPT_HELP };
    static const struct option longopts[] = {{"out", required_argument, NULL, OPT_OUT},
                                             {"take", required_argument, NULL, OPT_TAKE},
                                             {"dtype", required_argument, NULL, OPT_DTYPE},
                                             {"help", no_argument, NULL, OPT_HELP},
                                             {NULL, 0, NULL, 0}};
    *o = (options){.dtype = HA_ST_F16};
    int ok = 1, c;
    opterr = 0;
    while (ok && (c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_OUT: o->out = optarg; break;
        case OPT_TAKE: {
            char *colon = strchr(optarg, ':'); /* layer lists have no ':', so a path may */
            if (!colon || colon == optarg || colon[1] == '\0')
                ok = tool_complain("--take: expected LAYERS:FILE, got \"%s\"", optarg);
            else if (o->n_takes == MAX_TAKES)
                ok = tool_complain("--take: at most %d", MAX_TAKES);
            else {
                *colon = '\0';
                o->takes[o->n_takes++] = (take){.path = colon + 1, .layers = optarg};
            }
            break;
        }
        case OPT_DTYPE: ok = tool_parse_dtype("--dtype", optarg, &o->dtype); break;
        case OPT_HELP: usage(stdout); exit(0);
        case ':': ok = tool_complain("%s needs a value", argv[optind - 1]); break;
        default: ok = tool_complain("unknown option \"%s\" (see --help)", argv[optind - 1]); break;
        }
    }
    if (!ok)
        return 0;
    if (optind + 1 != argc)
        return tool_complain(optind == argc ? "BASE is required (see --help)" : "one BASE file, got \"%s\" too",
                             optind < argc ? argv[optind + 1] : "");
    o->base = argv[optind];
    if (!o->out)
        return tool_complain("--out is required (see --help)");
    return 1;
}

/** Opens, validates and converts a weights file to fp32 host memory. */
static int load(const char *path, loaded *out)
{
    char err[512];
    ha_st_file f;
    memset(out, 0, sizeof(*out));
    if (ha_st_open(path, &f, err, sizeof(err)) != HA_OK)
        return tool_complain("%s", err); /* names the file */
    ha_status st = ha_weights_host_from_st(&f, &out->w, err, sizeof(err));
    ha_st_close(&f);
    if (st != HA_OK)
        return tool_complain("%s: %s", path, err);
    out->ok = 1;
    return 1;
}

static int same_geometry(const ha_weights_host *a, const ha_weights_host *b, const char *path)
{
    if (a->num_layers == b->num_layers && a->bits == b->bits && a->depth == b->depth && a->head_dim == b->head_dim &&
        a->q_heads == b->q_heads && a->k_heads == b->k_heads)
        return 1;
    return tool_complain("%s: geometry (layers %d, bits %d, depth %d, head_dim %d, q_heads %d, k_heads %d) differs "
                         "from BASE's (%d, %d, %d, %d, %d, %d)",
                         path, (int)b->num_layers, (int)b->bits, (int)b->depth, (int)b->head_dim, (int)b->q_heads,
                         (int)b->k_heads, (int)a->num_layers, (int)a->bits, (int)a->depth, (int)a->head_dim,
                         (int)a->q_heads, (int)a->k_heads);
}

/**
 * Points base's layers of t at donor's MLPs (the writer reads through these descriptors only; donor
 * must stay loaded until the write). taken[l] marks the layers already replaced.
 */
static int apply_take(ha_weights_host *base, const ha_weights_host *donor, const take *t, uint8_t *taken)
{
    char *copy = strdup(t->layers);
    if (!copy)
        return tool_complain("out of memory");
    int ok = 1;
    for (char *save = NULL, *item = strtok_r(copy, ",", &save); ok && item; item = strtok_r(NULL, ",", &save)) {
        int32_t l;
        ok = tool_parse_int("--take layer", item, 0, base->num_layers - 1, &l);
        if (ok && taken[l])
            ok = tool_complain("--take: layer %d named twice", (int)l);
        if (ok && donor->dense[l])
            ok = tool_complain("--take: layer %d is dense in %s", (int)l, t->path);
        if (ok) {
            taken[l] = 1;
            base->dense[l] = 0;
            base->q[l] = donor->q[l];
            base->k[l] = donor->k[l];
        }
    }
    free(copy);
    return ok;
}

int main(int argc, char **argv)
{
    options o;
    if (!parse_options(argc, argv, &o))
        return 2;
    int clash = !strcmp(o.out, o.base);
    for (int i = 0; i < o.n_takes; i++)
        clash |= !strcmp(o.out, o.takes[i].path);
    if (clash) {
        tool_complain("--out %s is also an input", o.out);
        return 2;
    }
    loaded base, donors[MAX_TAKES];
    memset(donors, 0, sizeof(donors));
    if (!load(o.base, &base))
        return 1;
    int rc = 1, ok = 1;
    uint8_t *taken = calloc((size_t)base.w.num_layers, 1);
    if (!taken)
        ok = tool_complain("out of memory");
    for (int i = 0; ok && i < o.n_takes; i++)
        ok = load(o.takes[i].path, &donors[i]) && same_geometry(&base.w, &donors[i].w, o.takes[i].path) &&
             apply_take(&base.w, &donors[i].w, &o.takes[i], taken);
    if (ok) {
        char err[512];
        if (ha_weights_host_write(&base.w, o.out, o.dtype, err, sizeof(err)) != HA_OK)
            tool_complain("writing %s: %s", o.out, err);
        else {
            int32_t n_taken = 0;
            for (int32_t l = 0; l < base.w.num_layers; l++)
                n_taken += taken[l];
            printf("%s: %s with %d layer(s) from %d other file(s), %s\n", o.out, o.base, (int)n_taken, o.n_takes,
                   ha_st_dtype_name(o.dtype));
            rc = 0;
        }
    }
    /* base's descriptors of taken layers point into donors' storage: freeing base frees only its own
       arrays and storage, never what a descriptor points at */
    for (int i = 0; i < o.n_takes; i++)
        if (donors[i].ok)
            ha_weights_host_free(&donors[i].w);
    ha_weights_host_free(&base.w);
    free(taken);
    return rc;
}
