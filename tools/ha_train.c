/*
 * ha-train — learns HashAttention mapping functions for a model the runner loads (SPEC §1, the
 * paper's recipe): the model is frozen; windows of a training text are run through it once and the
 * post-RoPE q, k of every sparse layer are kept in memory; each step takes one window and a few query
 * rows of it against all their candidate keys, with targets y_ij = 1 iff j is in the top-k (32) of
 * q_i·k_j among the candidates [sink, n−local), predictions σ(⟨tanh F_q(q_i), tanh F_k(k_j)⟩),
 * weighted BCE (α on positives), Adam.
 *
 * Beyond the paper (docs/quality.md): --target-frac puts the targets at the evaluation budgets
 * (positives = the ⌊f·n⌋ largest logits of a row of length n; with several fractions the label is
 * the share of them that keep j, a soft label in the same BCE), and --mass-gamma weights positives
 * by their attention probability relative to the threshold's. --loss mass adds (or, with --mass-bce 0,
 * puts instead of the BCE) a loss that rewards the attention mass kept at the target budgets rather
 * than membership (ha_train_loss.h); --init starts from a weights file (fine-tuning).
 *
 * Paper mode: one (F_q, F_k) pair per (layer, query head). Group mode: F_k per (layer, KV head),
 * trained on the per-query-head objective of every query head of its group (each with its own F_q).
 * Each such task is independent and runs single-threaded; OpenMP spreads tasks over threads, so the
 * result is bit-identical for a seed whatever the thread count.
 *
 * At the end: validation loss on a window taken from the end of the text (never trained on) and the
 * recall of attention mass at heavy = n/32 (+sink +local) of the learned codes with the normative tie
 * rule, next to the oracle's; optionally the same on a window of another text (--eval-text).
 */
#include <getopt.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tool_cli.h"
#include "ha_shared.h"
#include "ha_train_data.h"
#include "ha_train_loss.h"
#include "ha_train_mlp.h"
#include "lm.h"
#include "weights_host.h"

#define PROGRAM "ha-train"

typedef struct options {
    const char *model, *text, *out, *eval_text, *dense_layers, *init;
    int32_t n_levels;
    double target_frac[TR_MAX_LEVELS]; /* --target-frac; n_levels 0: the paper's top-k target */
    int group_mode, loss_mass;
    int32_t bits, depth, hidden, windows, window, rows_per_window, rows, steps, min_pos, val_rows;
    int32_t sink, local, topk, log_every, val_every;
    float lr, alpha, mass_gamma, mass_temp, mass_bce;
    ha_st_dtype dtype;
    uint64_t seed;
} options;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: " PROGRAM " --model DIR --text FILE --out FILE.safetensors [options]\n"
            "Learns HashAttention mapping functions for a model (SPEC §1 recipe) and writes them.\n"
            "\n"
            "  --mode paper|group     key MLP per query head (default) or per KV head\n"
            "  --bits B               32 (default) or 64\n"
            "  --depth N --hidden W   MLP depth (default 3) and hidden width (default head_dim)\n"
            "  --dense-layers LIST    layers left dense (default 0,1,2)\n"
            "  --windows W            training windows from the start of the text (default 8)\n"
            "  --window N             tokens per window incl. BOS (default 8192)\n"
            "  --rows-per-window P    query rows captured per window, uniform in [min-pos, N) (default 1024)\n"
            "  --min-pos I            first position a training row may have (default 1024)\n"
            "  --rows R               query rows per step (default 256)\n"
            "  --steps S              Adam steps (default 400)\n"
            "  --lr X --alpha A       learning rate (1e-3), weight of positives (20)\n"
            "  --topk K               positives per row (32)\n"
            "  --target-frac LIST     instead of top-K: targets at these budgets (e.g. 1/8,1/16,1/32; the word\n"
            "                         topk adds the top-K keys as one more level),\n"
            "                         positives = the floor(f*n) largest candidate logits of a row of\n"
            "                         length n; with several, the label is the share of budgets keeping j\n"
            "  --mass-gamma G         weight positives by min((p_j/p_thr)^G, 64), p the attention\n"
            "                         probability, thr the lowest threshold (default 0: off)\n"
            "  --loss bce|mass        bce: the weighted BCE above (default); mass: also reward the attention\n"
            "                         mass a soft top-K of the scores keeps at each target level,\n"
            "                         -mean_l sum_j p_j sigmoid((s_j - theta_l)/T), theta_l the soft quantile\n"
            "                         (sum_j sigmoid(...) = K_l), p the true attention over the candidates\n"
            "  --mass-temp T          temperature T of --loss mass in score units (default 1)\n"
            "  --mass-bce W           weight of the BCE added to --loss mass (default 1; 0: mass loss alone)\n"
            "  --init FILE            start from this weights file's MLPs (same bits, depth, widths, mode;\n"
            "                         every trained layer sparse in it) instead of random ones\n"
            "  --sink S --local L     budget the candidates exclude (128, 128)\n"
            "  --val-rows V           validation rows: the last V positions of the last window of the\n"
            "                         text (default 512); also the rows of --eval-text\n"
            "  --eval-text FILE       also report recall on the first window of this text\n"
            "  --dtype f32|f16|bf16   dtype in the file (default f16)\n"
            "  --seed S               (default 1)\n"
            "  --log-every K --val-every K   progress line / validation period in steps (10, 100)\n");
}

static int parse_f32(const char *what, const char *s, float *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v > 0.0) || v > 1e6)
        return tool_complain("%s: expected a positive number, got '%s'", what, s);
    *out = (float)v;
    return 1;
}

static int parse_fracs(const char *list, options *o)
{
    char buf[256];
    if (strlen(list) >= sizeof(buf))
        return tool_complain("--target-frac: list too long");
    strcpy(buf, list);
    o->n_levels = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (o->n_levels == TR_MAX_LEVELS)
            return tool_complain("--target-frac: at most %d fractions", TR_MAX_LEVELS);
        if (strcmp(t, "topk") == 0) /* a level of the top --topk keys among the budgets */
            o->target_frac[o->n_levels++] = 0.0;
        else if (!tool_parse_fraction("--target-frac", t, &o->target_frac[o->n_levels++]))
            return 0;
    }
    return o->n_levels > 0 ? 1 : tool_complain("--target-frac: empty list");
}

static int parse_options(int argc, char **argv, options *o)
{
    *o = (options){.dense_layers = "0,1,2", .bits = 32, .depth = 3, .hidden = -1, .windows = 8, .window = 8192,
                   .rows_per_window = 1024, .rows = 256, .steps = 400, .min_pos = 1024, .val_rows = 512,
                   .sink = 128, .local = 128, .topk = 32, .log_every = 10, .val_every = 100, .lr = 1e-3f,
                   .alpha = 20.0f, .mass_temp = 1.0f, .mass_bce = 1.0f, .dtype = HA_ST_F16, .seed = 1};
    enum { O_MODEL = 256, O_TEXT, O_OUT, O_MODE, O_BITS, O_DEPTH, O_HIDDEN, O_DENSE, O_WINDOWS, O_WINDOW, O_RPW,
           O_MINPOS, O_ROWS, O_STEPS, O_LR, O_ALPHA, O_TOPK, O_SINK, O_LOCAL, O_VALROWS, O_EVAL, O_DTYPE, O_SEED,
           O_LOG, O_VALEVERY, O_TFRAC, O_MASS, O_LOSS, O_MTEMP, O_MBCE, O_INIT, O_HELP };
    static const struct option longopts[] = {
        {"model", 1, 0, O_MODEL}, {"text", 1, 0, O_TEXT}, {"out", 1, 0, O_OUT}, {"mode", 1, 0, O_MODE},
        {"bits", 1, 0, O_BITS}, {"depth", 1, 0, O_DEPTH}, {"hidden", 1, 0, O_HIDDEN},
        {"dense-layers", 1, 0, O_DENSE}, {"windows", 1, 0, O_WINDOWS}, {"window", 1, 0, O_WINDOW},
        {"rows-per-window", 1, 0, O_RPW}, {"min-pos", 1, 0, O_MINPOS}, {"rows", 1, 0, O_ROWS},
        {"steps", 1, 0, O_STEPS}, {"lr", 1, 0, O_LR}, {"alpha", 1, 0, O_ALPHA}, {"topk", 1, 0, O_TOPK},
        {"sink", 1, 0, O_SINK}, {"local", 1, 0, O_LOCAL}, {"val-rows", 1, 0, O_VALROWS},
        {"eval-text", 1, 0, O_EVAL}, {"dtype", 1, 0, O_DTYPE}, {"seed", 1, 0, O_SEED},
        {"target-frac", 1, 0, O_TFRAC}, {"mass-gamma", 1, 0, O_MASS}, {"loss", 1, 0, O_LOSS},
        {"mass-temp", 1, 0, O_MTEMP}, {"mass-bce", 1, 0, O_MBCE}, {"init", 1, 0, O_INIT}, {"log-every", 1, 0, O_LOG}, {"val-every", 1, 0, O_VALEVERY}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        int ok = 1;
        switch (c) {
        case O_MODEL: o->model = optarg; break;
        case O_TEXT: o->text = optarg; break;
        case O_OUT: o->out = optarg; break;
        case O_EVAL: o->eval_text = optarg; break;
        case O_DENSE: o->dense_layers = optarg; break;
        case O_MODE:
            if (!strcmp(optarg, "paper")) o->group_mode = 0;
            else if (!strcmp(optarg, "group")) o->group_mode = 1;
            else ok = tool_complain("--mode: paper or group, got '%s'", optarg);
            break;
        case O_BITS: ok = tool_parse_int("--bits", optarg, 1, 1024, &o->bits); break;
        case O_DEPTH: ok = tool_parse_int("--depth", optarg, 1, TR_MAX_DEPTH, &o->depth); break;
        case O_HIDDEN: ok = tool_parse_int("--hidden", optarg, 1, 4096, &o->hidden); break;
        case O_WINDOWS: ok = tool_parse_int("--windows", optarg, 1, 100000, &o->windows); break;
        case O_WINDOW: ok = tool_parse_int("--window", optarg, 16, 1 << 20, &o->window); break;
        case O_RPW: ok = tool_parse_int("--rows-per-window", optarg, 1, 1 << 20, &o->rows_per_window); break;
        case O_MINPOS: ok = tool_parse_int("--min-pos", optarg, 0, 1 << 20, &o->min_pos); break;
        case O_ROWS: ok = tool_parse_int("--rows", optarg, 1, 1 << 20, &o->rows); break;
        case O_STEPS: ok = tool_parse_int("--steps", optarg, 0, 1 << 30, &o->steps); break;
        case O_LR: ok = parse_f32("--lr", optarg, &o->lr); break;
        case O_ALPHA: ok = parse_f32("--alpha", optarg, &o->alpha); break;
        case O_TOPK: ok = tool_parse_int("--topk", optarg, 1, 1024, &o->topk); break;
        case O_TFRAC: ok = parse_fracs(optarg, o); break;
        case O_MASS: ok = parse_f32("--mass-gamma", optarg, &o->mass_gamma); break;
        case O_LOSS:
            if (!strcmp(optarg, "bce")) o->loss_mass = 0;
            else if (!strcmp(optarg, "mass")) o->loss_mass = 1;
            else ok = tool_complain("--loss: bce or mass, got '%s'", optarg);
            break;
        case O_MTEMP: ok = parse_f32("--mass-temp", optarg, &o->mass_temp); break;
        case O_MBCE:
            if (strcmp(optarg, "0") == 0) o->mass_bce = 0.0f;
            else ok = parse_f32("--mass-bce", optarg, &o->mass_bce);
            break;
        case O_INIT: o->init = optarg; break;
        case O_SINK: ok = tool_parse_int("--sink", optarg, 0, 1 << 20, &o->sink); break;
        case O_LOCAL: ok = tool_parse_int("--local", optarg, 0, 1 << 20, &o->local); break;
        case O_VALROWS: ok = tool_parse_int("--val-rows", optarg, 1, 1 << 20, &o->val_rows); break;
        case O_LOG: ok = tool_parse_int("--log-every", optarg, 1, 1 << 30, &o->log_every); break;
        case O_VALEVERY: ok = tool_parse_int("--val-every", optarg, 1, 1 << 30, &o->val_every); break;
        case O_DTYPE: ok = tool_parse_dtype("--dtype", optarg, &o->dtype); break;
        case O_SEED: {
            char *end;
            o->seed = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0')
                ok = tool_complain("--seed: expected a non-negative integer, got '%s'", optarg);
            break;
        }
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); return 0;
        }
        if (!ok)
            return 0;
    }
    if (optind != argc)
        return tool_complain("unexpected argument '%s'", argv[optind]);
    if (!o->loss_mass && (o->mass_temp != 1.0f || o->mass_bce != 1.0f))
        return tool_complain("--mass-temp and --mass-bce need --loss mass");
    if (!o->model || !o->text || !o->out)
        return tool_complain("--model, --text and --out are required (see --help)");
    const int64_t need = (int64_t)o->sink + o->local + o->topk;
    if (o->min_pos < need)
        o->min_pos = (int32_t)need;
    if (o->min_pos >= o->window || o->window - o->val_rows < need)
        return tool_complain("--window %d is too short for --min-pos/--val-rows with sink %d, local %d, topk %d", o->window,
                        o->sink, o->local, o->topk);
    if (o->rows_per_window > o->window - o->min_pos)
        return tool_complain("--rows-per-window %d exceeds the %d positions in [min-pos, window)", o->rows_per_window,
                        o->window - o->min_pos);
    if (o->rows > o->rows_per_window)
        return tool_complain("--rows %d exceeds --rows-per-window %d", o->rows, o->rows_per_window);
    return 1;
}

/* ---- small helpers ----------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_i32(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* k distinct values of [lo, hi), ascending (partial Fisher-Yates). */
static int sample_positions(uint64_t *rng, int32_t lo, int32_t hi, int32_t k, int32_t *out)
{
    int32_t n = hi - lo;
    int32_t *all = malloc((size_t)n * sizeof(int32_t));
    if (!all)
        return -1;
    for (int32_t i = 0; i < n; i++)
        all[i] = lo + i;
    for (int32_t i = 0; i < k; i++) {
        int32_t j = i + (int32_t)(splitmix64(rng) % (uint64_t)(n - i));
        int32_t t = all[i];
        all[i] = all[j];
        all[j] = t;
        out[i] = all[i];
    }
    free(all);
    qsort(out, (size_t)k, sizeof(int32_t), cmp_i32);
    return 0;
}

static int parse_dense(const char *list, int32_t layers, uint8_t *dense)
{
    memset(dense, 0, (size_t)layers);
    const char *p = list;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 0 || v >= layers)
            return tool_complain("--dense-layers: bad list '%s' (indices in [0, %d))", list, layers);
        dense[v] = 1;
        p = end;
        if (*p == ',')
            p++;
        else if (*p)
            return tool_complain("--dense-layers: bad list '%s'", list);
    }
    return 1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        tool_complain("cannot open %s", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        tool_complain("cannot read %s", path);
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);
    buf[size] = '\0';
    *len = (size_t)size;
    return buf;
}

static int32_t *tokenize_file(const lm_model *m, const char *path, int64_t *n)
{
    size_t len;
    char *text = read_file(path, &len);
    if (!text)
        return NULL;
    int32_t *ids = NULL;
    ha_status st = lm_tokenize(lm_model_tokenizer(m), text, len, &ids, n);
    free(text);
    if (st != HA_OK) {
        tool_complain("tokenizing %s: %s", path, lm_last_error());
        return NULL;
    }
    return ids;
}

/* ---- the learning problem ---------------------------------------------------------------------- */

/** One independent unit: a key MLP and the query MLPs trained against it. */
typedef struct task {
    int32_t sl;        /* sparse layer index                        */
    int32_t kv_head;   /* the KV head whose keys F_k encodes        */
    int32_t q_first;   /* first query head                          */
    int32_t n_q;       /* query heads: 1 (paper) or the group size  */
    tr_mlp fk;
    tr_mlp fq[8];
} task;

/** Per-thread scratch. */
typedef struct scratch {
    tr_mlp_work wk, wq;
    float *tkt, *dtkt, *dtk, *qx, *dtq, *g, *lg, *y;
    float *pm, *mg, *tmp; /* --loss mass: probabilities, its gradient, scratch [keys] */
} scratch;

typedef struct problem {
    const options *o;
    tr_data_geom geom;
    int32_t n_tasks;
    task *tasks;
    scratch *scr;
    int n_threads;
} problem;

static int scratch_init(scratch *s, const problem *p, int64_t max_keys, int64_t max_rows)
{
    const size_t b = (size_t)p->o->bits, d = (size_t)p->geom.head_dim;
    if (tr_mlp_work_init(&s->wk, &p->tasks[0].fk, max_keys) || tr_mlp_work_init(&s->wq, &p->tasks[0].fq[0], max_rows))
        return -1;
    s->tkt = malloc(b * (size_t)max_keys * sizeof(float));
    s->dtkt = malloc(b * (size_t)max_keys * sizeof(float));
    s->dtk = malloc(b * (size_t)max_keys * sizeof(float));
    s->qx = malloc(d * (size_t)max_rows * sizeof(float));
    s->dtq = malloc(b * (size_t)max_rows * sizeof(float));
    s->g = malloc((size_t)max_keys * sizeof(float));
    s->lg = malloc((size_t)max_keys * sizeof(float));
    s->y = malloc((size_t)max_keys * sizeof(float));
    s->pm = malloc((size_t)max_keys * sizeof(float));
    s->mg = malloc((size_t)max_keys * sizeof(float));
    s->tmp = malloc((size_t)max_keys * sizeof(float));
    return s->tkt && s->dtkt && s->dtk && s->qx && s->dtq && s->g && s->lg && s->y && s->pm && s->mg && s->tmp ? 0
                                                                                                               : -1;
}

static void scratch_free(scratch *s)
{
    tr_mlp_work_free(&s->wk);
    tr_mlp_work_free(&s->wq);
    free(s->tkt);
    free(s->dtkt);
    free(s->dtk);
    free(s->qx);
    free(s->dtq);
    free(s->g);
    free(s->lg);
    free(s->y);
    free(s->pm);
    free(s->mg);
    free(s->tmp);
}

static float softplus(float x)
{
    return (x > 0.0f ? x : 0.0f) + log1pf(expf(-fabsf(x)));
}

/**
 * --loss mass of one row: p = the true attention over the nc candidates (softmax of the logits lg),
 * the budgets of the target levels at the row's length len; returns the row's mass loss and, when
 * grad is not NULL, writes gscale · its gradient over the scores sc there.
 */
static double mass_row(const problem *p, scratch *s, const float *sc, const float *lg, int64_t nc, int64_t len,
                       float *grad, float gscale)
{
    const tr_data_geom *g = &p->geom;
    const float scale = 1.0f / sqrtf((float)g->head_dim);
    float mx = -INFINITY;
    for (int64_t j = 0; j < nc; j++)
        mx = lg[j] > mx ? lg[j] : mx;
    double z = 0.0;
    for (int64_t j = 0; j < nc; j++) {
        s->pm[j] = tr_exp(scale * (lg[j] - mx));
        z += (double)s->pm[j];
    }
    const float inv_z = (float)(1.0 / z);
    for (int64_t j = 0; j < nc; j++)
        s->pm[j] *= inv_z;
    int64_t counts[TR_MAX_LEVELS];
    for (int32_t l = 0; l < g->n_levels; l++)
        counts[l] = tr_level_count(g, l, len, nc);
    if (grad)
        memset(grad, 0, (size_t)nc * sizeof(float));
    return tr_mass_loss_row(sc, s->pm, nc, counts, g->n_levels, p->o->mass_temp, grad, gscale, s->tmp);
}

/**
 * Loss of a task on rows[0..nr) of window w (indices into w's rows), mean over each query head's
 * (row, candidate) pairs, summed over the task's query heads; with --loss mass, plus the mean over
 * rows of the mass loss (the BCE weighted by --mass-bce). With train set, also accumulates the
 * gradients (the caller zeroes them before and steps Adam after). want_loss: compute the loss value
 * (costs a log per pair), else returns 0.
 */
static double task_pass(task *t, scratch *s, const problem *p, const tr_window *w, const int32_t *rows, int32_t nr,
                        int train, int want_loss)
{
    const options *o = p->o;
    const tr_data_geom *g = &p->geom;
    const int32_t b = o->bits, d = g->head_dim;
    const float scale = 1.0f / sqrtf((float)d);
    int32_t maxpos = 0;
    for (int32_t r = 0; r < nr; r++)
        maxpos = w->pos[rows[r]] > maxpos ? w->pos[rows[r]] : maxpos;
    /* candidate keys of every row lie in [sink, maxpos + 1 − local) */
    const int64_t nk = (int64_t)maxpos + 1 - g->local - g->sink;
    const float *keys = w->k[t->sl] + ((size_t)t->kv_head * (size_t)w->n + (size_t)g->sink) * (size_t)d;
    const float *tk = tr_mlp_forward(&t->fk, &s->wk, keys, nk);
    for (int64_t j = 0; j < nk; j++)
        for (int32_t c = 0; c < b; c++)
            s->tkt[(size_t)c * (size_t)nk + (size_t)j] = tk[(size_t)j * (size_t)b + (size_t)c];
    if (train)
        memset(s->dtkt, 0, (size_t)b * (size_t)nk * sizeof(float));

    double loss = 0.0;
    for (int32_t qh = 0; qh < t->n_q; qh++) {
        const int32_t h = t->q_first + qh;
        for (int32_t r = 0; r < nr; r++)
            memcpy(s->qx + (size_t)r * (size_t)d, w->q[t->sl] + ((size_t)h * (size_t)w->rows + (size_t)rows[r]) * (size_t)d,
                   (size_t)d * sizeof(float));
        tr_mlp *fq = &t->fq[qh];
        const float *tq = tr_mlp_forward(fq, &s->wq, s->qx, nr);
        double pairs = 0.0;
        for (int32_t r = 0; r < nr; r++)
            pairs += (double)(w->pos[rows[r]] + 1 - g->local - g->sink);
        const float bce_w = o->loss_mass ? o->mass_bce : 1.0f;
        const float inv = (float)(bce_w / pairs);
        double head_loss = 0.0, head_mass = 0.0;
        for (int32_t r = 0; r < nr; r++) {
            const int64_t nc = (int64_t)w->pos[rows[r]] + 1 - g->local - g->sink;
            const float *tqr = tq + (size_t)r * (size_t)b;
            float *restrict sc = s->g;
            memset(sc, 0, (size_t)nc * sizeof(float));
            for (int32_t c = 0; c < b; c++) {
                const float a = tqr[c];
                const float *restrict col = s->tkt + (size_t)c * (size_t)nk;
                for (int64_t j = 0; j < nc; j++)
                    sc[j] += a * col[j];
            }
            /* labels y_j ∈ [0, 1]: the share of target levels whose threshold q·k_j reaches */
            const int32_t L = g->n_levels;
            const float *thr = w->thr[t->sl] + ((size_t)h * (size_t)w->rows + (size_t)rows[r]) * (size_t)L;
            const float *qi = s->qx + (size_t)r * (size_t)d;
            float *restrict lg = s->lg, *restrict y = s->y;
            float lowest = thr[0];
            for (int32_t l = 1; l < L; l++)
                lowest = thr[l] < lowest ? thr[l] : lowest;
            for (int64_t j = 0; j < nc; j++)
                lg[j] = tr_dot(qi, keys + (size_t)j * (size_t)d, d);
            if (o->loss_mass)
                head_mass += mass_row(p, s, sc, lg, nc, (int64_t)w->pos[rows[r]] + 1, train ? s->mg : NULL,
                                      1.0f / (float)nr);
            const float inv_levels = 1.0f / (float)L;
            for (int64_t j = 0; j < nc; j++) {
                int32_t in = 0;
                for (int32_t l = 0; l < L; l++)
                    in += lg[j] >= thr[l];
                y[j] = (float)in * inv_levels;
            }
            /* positive weight α, times the attention-mass factor when asked */
            if (o->mass_gamma > 0.0f)
                for (int64_t j = 0; j < nc; j++) {
                    const float e = o->mass_gamma * scale * (lg[j] - lowest);
                    lg[j] = y[j] > 0.0f ? o->alpha * (e > 4.158883f ? 64.0f : tr_exp(e)) : 0.0f; /* 64 = e^4.1589 */
                }
            else
                for (int64_t j = 0; j < nc; j++)
                    lg[j] = o->alpha;
            if (want_loss)
                for (int64_t j = 0; j < nc; j++)
                    head_loss += (double)(lg[j] * y[j] * softplus(-sc[j]) + (1.0f - y[j]) * softplus(sc[j]));
            if (!train)
                continue;
            /* dL/ds: (1−y)·σ(s) + a·y·(σ(s) − 1), over pairs (a the positive weight); exact for y ∈ {0, 1} */
            for (int64_t j = 0; j < nc; j++)
                sc[j] = tr_sigmoid(sc[j]) * inv;
            for (int64_t j = 0; j < nc; j++)
                sc[j] = sc[j] * (1.0f - y[j]) + lg[j] * y[j] * (sc[j] - inv);
            if (o->loss_mass)
                for (int64_t j = 0; j < nc; j++)
                    sc[j] += s->mg[j];
            float *dtqr = s->dtq + (size_t)r * (size_t)b;
            for (int32_t c = 0; c < b; c++) {
                const float *restrict col = s->tkt + (size_t)c * (size_t)nk;
                float *restrict dcol = s->dtkt + (size_t)c * (size_t)nk;
                const float a = tqr[c];
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < nc; j++) {
                    acc += sc[j] * col[j];
                    dcol[j] += a * sc[j];
                }
                dtqr[c] = acc;
            }
        }
        loss += (double)bce_w * head_loss / pairs + head_mass / nr;
        if (train)
            tr_mlp_backward(fq, &s->wq, s->qx, nr, s->dtq);
    }
    if (train) {
        for (int64_t j = 0; j < nk; j++)
            for (int32_t c = 0; c < b; c++)
                s->dtk[(size_t)j * (size_t)b + (size_t)c] = s->dtkt[(size_t)c * (size_t)nk + (size_t)j];
        tr_mlp_backward(&t->fk, &s->wk, keys, nk, s->dtk);
    }
    return loss;
}

/** Loss of every task on all rows of w; per-task losses into out. */
static void eval_loss(problem *p, const tr_window *w, double *out)
{
    int32_t *rows = malloc((size_t)w->rows * sizeof(int32_t));
    for (int32_t r = 0; r < w->rows; r++)
        rows[r] = r;
#pragma omp parallel for schedule(dynamic, 1)
    for (int32_t i = 0; i < p->n_tasks; i++)
        out[i] = task_pass(&p->tasks[i], &p->scr[omp_get_thread_num()], p, w, rows, w->rows, 0, 1);
    free(rows);
}

/* ---- recall of attention mass with the learned codes ------------------------------------------- */

#define TR_EVAL_BUDGETS 3
static const double eval_fracs[TR_EVAL_BUDGETS] = {1.0 / 8, 1.0 / 16, 1.0 / 32};
static const char *const eval_names[TR_EVAL_BUDGETS] = {"1/8", "1/16", "1/32"};

/**
 * One row at every evaluation budget (heavy = ⌊f·n⌋): the attention mass kept by Hamming-similarity
 * selection with the runtime's tie rule (learned[e]) and by the oracle's top logits (oracle[e]).
 * sorted: scratch of n floats.
 */
static void recall_row(const float *logit, const int32_t *score, int32_t max_score, int64_t n, int32_t sink,
                       int32_t local, int32_t *hist, float *sorted, double *learned, double *oracle)
{
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++)
        mx = logit[j] > mx ? logit[j] : mx;
    double total = 0.0, fixed = 0.0;
    const int64_t ls = ha_local_start(n, sink, local);
    for (int64_t j = 0; j < n; j++) {
        const double e = exp((double)(logit[j] - mx));
        total += e;
        if (j < sink || j >= ls)
            fixed += e;
    }
    const int64_t cand = ls > sink ? ls - sink : 0;
    memset(hist, 0, (size_t)(max_score + 1) * sizeof(int32_t));
    for (int64_t j = sink; j < ls; j++)
        hist[score[j]]++;
    int64_t m = 0;
    for (int64_t j = sink; j < ls; j++)
        sorted[m++] = logit[j];
    int64_t prefix = m; /* budgets shrink: each oracle selection searches the previous one's prefix */
    for (int32_t e = 0; e < TR_EVAL_BUDGETS; e++) {
        const int64_t heavy = ha_heavy_for_length(n, eval_fracs[e], 0);
        double kept = fixed, om = fixed;
        if (heavy >= cand) {
            for (int64_t j = sink; j < ls; j++)
                kept += exp((double)(logit[j] - mx));
            om = kept;
        } else if (heavy > 0) {
            int64_t need = heavy;
            int32_t thr = max_score;
            while (thr > 0 && hist[thr] < need) {
                need -= hist[thr];
                thr--;
            }
            for (int64_t j = ls - 1; j >= sink; j--)
                if (score[j] > thr || (score[j] == thr && need-- > 0))
                    kept += exp((double)(logit[j] - mx));
            tr_kth_largest(sorted, prefix, heavy);
            prefix = heavy;
            for (int64_t j = 0; j < heavy; j++)
                om += exp((double)(sorted[j] - mx));
        }
        learned[e] = kept / total;
        oracle[e] = om / total;
    }
}

/** Code bits of rows x through F (sign of the output), packed as 0/1 bytes [rows, bits]. */
static void codes_of(tr_mlp *f, tr_mlp_work *w, const float *x, int64_t rows, uint8_t *out)
{
    const int32_t b = f->dims[f->depth];
    const int64_t chunk = w->max_rows;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
        const int64_t nr = rows - r0 < chunk ? rows - r0 : chunk;
        const float *t = tr_mlp_forward(f, w, x + (size_t)r0 * (size_t)f->dims[0], nr);
        for (int64_t e = 0; e < nr * b; e++)
            out[(size_t)r0 * (size_t)b + (size_t)e] = t[e] > 0.0f;
    }
}

/**
 * Mean recall over the window's rows at each evaluation budget, per sparse layer:
 * learned[e][sl], oracle[e][sl] (means over query heads). Group mode: the group's query heads sum
 * their similarities and share one index set, as the runtime does.
 */
static void eval_recall(problem *p, const tr_window *w, double learned[][64], double oracle[][64])
{
    const tr_data_geom *g = &p->geom;
    const int32_t b = p->o->bits, d = g->head_dim, n_code = p->o->group_mode ? g->kv_heads : g->q_heads;
    const int32_t per = g->q_heads / n_code, group = g->q_heads / g->kv_heads;
    const float scale = 1.0f / sqrtf((float)d);
    for (int32_t sl = 0; sl < g->n_sparse; sl++) {
        double lsum[TR_EVAL_BUDGETS] = {0}, osum[TR_EVAL_BUDGETS] = {0};
        for (int32_t ch = 0; ch < n_code; ch++) {
            task *t = &p->tasks[sl * n_code + ch];
            uint8_t *kc = malloc((size_t)w->n * (size_t)b);
            uint8_t *qc = malloc((size_t)per * (size_t)w->rows * (size_t)b);
            const int32_t kvh = t->kv_head;
            codes_of(&t->fk, &p->scr[0].wk, w->k[sl] + (size_t)kvh * (size_t)w->n * (size_t)d, w->n, kc);
            for (int32_t qh = 0; qh < per; qh++)
                codes_of(&t->fq[qh], &p->scr[0].wk, w->q[sl] + (size_t)(t->q_first + qh) * (size_t)w->rows * (size_t)d,
                         w->rows, qc + (size_t)qh * (size_t)w->rows * (size_t)b);
            double l0 = 0.0, l1 = 0.0, l2 = 0.0, o0 = 0.0, o1 = 0.0, o2 = 0.0;
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : l0, l1, l2, o0, o1, o2)
            for (int32_t r = 0; r < w->rows; r++) {
                const int64_t n = (int64_t)w->pos[r] + 1;
                int32_t *score = calloc((size_t)n, sizeof(int32_t));
                float *logit = malloc((size_t)n * sizeof(float));
                float *sorted = malloc((size_t)n * sizeof(float));
                int32_t *hist = malloc((size_t)(per * b + 1) * sizeof(int32_t));
                for (int32_t qh = 0; qh < per; qh++) {
                    const uint8_t *cq = qc + ((size_t)qh * (size_t)w->rows + (size_t)r) * (size_t)b;
                    for (int64_t j = 0; j < n; j++) {
                        int32_t same = 0;
                        for (int32_t c = 0; c < b; c++)
                            same += cq[c] == kc[(size_t)j * (size_t)b + (size_t)c];
                        score[j] += same;
                    }
                }
                for (int32_t qh = 0; qh < per; qh++) {
                    const int32_t h = t->q_first + qh;
                    const float *qi = w->q[sl] + ((size_t)h * (size_t)w->rows + (size_t)r) * (size_t)d;
                    const float *kh = w->k[sl] + (size_t)(h / group) * (size_t)w->n * (size_t)d;
                    for (int64_t j = 0; j < n; j++)
                        logit[j] = scale * tr_dot(qi, kh + (size_t)j * (size_t)d, d);
                    double lr[TR_EVAL_BUDGETS], orc[TR_EVAL_BUDGETS];
                    recall_row(logit, score, per * b, n, g->sink, g->local, hist, sorted, lr, orc);
                    l0 += lr[0], l1 += lr[1], l2 += lr[2];
                    o0 += orc[0], o1 += orc[1], o2 += orc[2];
                }
                free(score);
                free(logit);
                free(sorted);
                free(hist);
            }
            lsum[0] += l0, lsum[1] += l1, lsum[2] += l2;
            osum[0] += o0, osum[1] += o1, osum[2] += o2;
            free(kc);
            free(qc);
        }
        for (int32_t e = 0; e < TR_EVAL_BUDGETS; e++) {
            learned[e][sl] = lsum[e] / ((double)g->q_heads * w->rows);
            oracle[e][sl] = osum[e] / ((double)g->q_heads * w->rows);
        }
    }
}

static void report_recall(problem *p, const tr_window *w, const char *what)
{
    double learned[TR_EVAL_BUDGETS][64], oracle[TR_EVAL_BUDGETS][64];
    eval_recall(p, w, learned, oracle);
    for (int32_t e = 0; e < TR_EVAL_BUDGETS; e++) {
        double lm = 0.0, om = 0.0;
        fprintf(stderr, "[ha-train] %s recall@%s (learned / oracle):", what, eval_names[e]);
        for (int32_t sl = 0; sl < p->geom.n_sparse; sl++) {
            fprintf(stderr, "  L%d %.4f/%.4f", p->geom.layers[sl], learned[e][sl], oracle[e][sl]);
            lm += learned[e][sl];
            om += oracle[e][sl];
        }
        fprintf(stderr, "  mean %.4f/%.4f\n", lm / p->geom.n_sparse, om / p->geom.n_sparse);
    }
}

/* ---- reading (--init) and writing ------------------------------------------------------------- */

/**
 * Copies every task's MLPs into the weights wh (to_file) or from them. From a file, checks first that
 * each trained layer is sparse there and its MLP widths are the tasks'.
 */
static int copy_task_mlps(problem *p, ha_weights_host *wh, int to_file, const char *path)
{
    const tr_data_geom *g = &p->geom;
    for (int32_t i = 0; i < p->n_tasks; i++) {
        task *t = &p->tasks[i];
        const int32_t l = g->layers[t->sl];
        if (!to_file && wh->dense[l])
            return tool_complain("--init %s: layer %d is dense there", path, (int)l);
        for (int32_t side = 0; side < 2; side++) {
            const int32_t nf = side ? 1 : t->n_q;
            for (int32_t f = 0; f < nf; f++) {
                tr_mlp *m = side ? &t->fk : &t->fq[f];
                const int32_t head = side ? (p->o->group_mode ? t->kv_head : t->q_first) : t->q_first + f;
                const ha_mlp_desc *desc = side ? &wh->k[l] : &wh->q[l];
                for (int32_t k = 0; !to_file && k <= m->depth; k++)
                    if (desc->dims[k] != m->dims[k])
                        return tool_complain("--init %s: layer %d's %s MLP has width %d at level %d, want %d (--hidden)",
                                             path, (int)l, side ? "key" : "query", (int)desc->dims[k], (int)k,
                                             (int)m->dims[k]);
                for (int32_t k = 0; k < m->depth; k++) {
                    const size_t out = (size_t)m->dims[k + 1], in = (size_t)m->dims[k];
                    float *fw = (float *)desc->w[k] + (size_t)head * out * in, *fb = (float *)desc->b[k] + (size_t)head * out;
                    memcpy(to_file ? fw : m->p + m->w_off[k], to_file ? m->p + m->w_off[k] : fw, out * in * sizeof(float));
                    memcpy(to_file ? fb : m->p + m->b_off[k], to_file ? m->p + m->b_off[k] : fb, out * sizeof(float));
                }
            }
        }
    }
    return 1;
}

/** --init: the tasks' MLPs from a weights file of the same geometry (read through the core's validator). */
static int init_weights(problem *p, const lm_config *cfg, const char *path)
{
    const options *o = p->o;
    const tr_data_geom *g = &p->geom;
    char err[512];
    ha_st_file f;
    if (ha_st_open(path, &f, err, sizeof(err)) != HA_OK)
        return tool_complain("--init: %s", err);
    ha_weights_host wh;
    ha_status st = ha_weights_host_from_st(&f, &wh, err, sizeof(err));
    ha_st_close(&f);
    if (st != HA_OK)
        return tool_complain("--init %s: %s", path, err);
    const int32_t k_heads = o->group_mode ? g->kv_heads : g->q_heads;
    int ok = 1;
    if (wh.num_layers != cfg->num_layers || wh.bits != o->bits || wh.depth != o->depth || wh.head_dim != g->head_dim ||
        wh.q_heads != g->q_heads || wh.k_heads != k_heads)
        ok = tool_complain("--init %s: geometry (layers %d, bits %d, depth %d, head_dim %d, q_heads %d, k_heads %d) is "
                           "not this run's (%d, %d, %d, %d, %d, %d; --bits, --depth, --mode)",
                           path, (int)wh.num_layers, (int)wh.bits, (int)wh.depth, (int)wh.head_dim, (int)wh.q_heads,
                           (int)wh.k_heads, (int)cfg->num_layers, (int)o->bits, (int)o->depth, (int)g->head_dim,
                           (int)g->q_heads, (int)k_heads);
    ok = ok && copy_task_mlps(p, &wh, 0, path);
    ha_weights_host_free(&wh);
    return ok;
}

static int write_weights(problem *p, const lm_config *cfg, const uint8_t *dense)
{
    const options *o = p->o;
    const tr_data_geom *g = &p->geom;
    const int32_t k_heads = o->group_mode ? g->kv_heads : g->q_heads;
    ha_weights_host wh;
    ha_status st = ha_weights_host_alloc(&wh, cfg->num_layers, o->bits, o->depth, o->hidden, g->head_dim, g->q_heads,
                                         k_heads, dense);
    if (st != HA_OK)
        return tool_complain("cannot allocate the weights: %s", ha_status_string(st));
    copy_task_mlps(p, &wh, 1, o->out);
    char err[512];
    st = ha_weights_host_write(&wh, o->out, o->dtype, err, sizeof(err));
    ha_weights_host_free(&wh);
    if (st != HA_OK)
        return tool_complain("writing %s: %s", o->out, err);
    return 1;
}

/* ---- main -------------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o;
    if (!parse_options(argc, argv, &o))
        return 2;
    const double t_start = now_s();
    lm_model *model = NULL;
    if (lm_model_load(o.model, &model) != HA_OK) {
        tool_complain("loading %s: %s", o.model, lm_last_error());
        return 1;
    }
    const lm_config *cfg = lm_model_config(model);
    if (o.hidden < 0)
        o.hidden = cfg->head_dim;
    if (o.window > cfg->max_positions) {
        tool_complain("--window %d exceeds the model's %d positions", o.window, cfg->max_positions);
        return 2;
    }
    uint8_t dense[1024];
    if (cfg->num_layers > 1024 || !parse_dense(o.dense_layers, cfg->num_layers, dense))
        return 2;
    int32_t layers[1024], n_sparse = 0;
    for (int32_t l = 0; l < cfg->num_layers; l++)
        if (!dense[l])
            layers[n_sparse++] = l;
    if (n_sparse == 0 || n_sparse > 64) {
        tool_complain("need 1..64 sparse layers, have %d", n_sparse);
        return 2;
    }
    const int32_t group = cfg->num_q_heads / cfg->num_kv_heads;
    if (o.group_mode && group > 8) {
        tool_complain("group mode supports GQA groups up to 8, the model has %d", group);
        return 2;
    }

    int64_t n_text = 0;
    int32_t *text = tokenize_file(model, o.text, &n_text);
    if (!text)
        return 1;
    const int64_t per_window = o.window - 1, avail = n_text / per_window;
    if (avail < o.windows + 1) {
        tool_complain("%s has %lld tokens: %lld windows of %d, need --windows %d + 1 for validation", o.text,
                 (long long)n_text, (long long)avail, o.window, o.windows);
        return 2;
    }
    fprintf(stderr, "[ha-train] %s: %lld tokens; %d training windows of %d tokens, validation window %lld (last)\n",
            o.text, (long long)n_text, o.windows, o.window, (long long)(avail - 1));

    problem p = {.o = &o};
    p.geom = (tr_data_geom){.n_sparse = n_sparse, .layers = layers, .q_heads = cfg->num_q_heads,
                            .kv_heads = cfg->num_kv_heads, .head_dim = cfg->head_dim, .sink = o.sink,
                            .local = o.local, .topk = o.topk};
    p.geom.n_levels = o.n_levels > 0 ? o.n_levels : 1; /* frac 0: the top-k level */
    for (int32_t l = 0; l < o.n_levels; l++)
        p.geom.frac[l] = o.target_frac[l];

    /* capture */
    lm_session_config scfg;
    lm_session_config_init(&scfg, o.window);
    lm_session *sess = NULL;
    if (lm_session_create(model, &scfg, &sess) != HA_OK) {
        tool_complain("session: %s", lm_last_error());
        return 1;
    }
    uint64_t rng = o.seed ^ 0x6a09e667f3bcc908ull;
    int32_t *toks = malloc((size_t)o.window * sizeof(int32_t));
    int32_t *pos = malloc((size_t)(o.rows_per_window > o.val_rows ? o.rows_per_window : o.val_rows) * sizeof(int32_t));
    tr_window *win = calloc((size_t)o.windows, sizeof(tr_window));
    tr_window val, evw;
    memset(&evw, 0, sizeof(evw));
    toks[0] = cfg->bos_id >= 0 ? cfg->bos_id : 0;
    for (int32_t wi = 0; wi <= o.windows; wi++) {
        const int64_t src = wi < o.windows ? wi : avail - 1;
        memcpy(toks + 1, text + src * per_window, (size_t)per_window * sizeof(int32_t));
        tr_window *dst = wi < o.windows ? &win[wi] : &val;
        int32_t nrows;
        if (wi < o.windows) {
            nrows = o.rows_per_window;
            if (sample_positions(&rng, o.min_pos, o.window, nrows, pos))
                return 1;
        } else {
            nrows = o.val_rows;
            for (int32_t r = 0; r < nrows; r++)
                pos[r] = o.window - o.val_rows + r;
        }
        if (tr_window_capture(dst, sess, &p.geom, toks, o.window, pos, nrows))
            return 1;
        fprintf(stderr, "\r[ha-train] captured window %d/%d (%.0f s)", wi + 1, o.windows + 1, now_s() - t_start);
    }
    fputc('\n', stderr);
    if (o.eval_text) {
        int64_t n_ev = 0;
        int32_t *ev = tokenize_file(model, o.eval_text, &n_ev);
        if (!ev)
            return 1;
        if (n_ev < per_window) {
            tool_complain("%s is shorter than one window", o.eval_text);
            return 2;
        }
        memcpy(toks + 1, ev, (size_t)per_window * sizeof(int32_t));
        for (int32_t r = 0; r < o.val_rows; r++)
            pos[r] = o.window - o.val_rows + r;
        if (tr_window_capture(&evw, sess, &p.geom, toks, o.window, pos, o.val_rows))
            return 1;
        free(ev);
    }
    lm_session_free(sess);
    free(text);
    const double t_captured = now_s();

    /* tasks */
    const int32_t n_code = o.group_mode ? cfg->num_kv_heads : cfg->num_q_heads;
    p.n_tasks = n_sparse * n_code;
    p.tasks = calloc((size_t)p.n_tasks, sizeof(task));
    for (int32_t sl = 0; sl < n_sparse; sl++)
        for (int32_t ch = 0; ch < n_code; ch++) {
            task *t = &p.tasks[sl * n_code + ch];
            t->sl = sl;
            t->n_q = o.group_mode ? group : 1;
            t->q_first = o.group_mode ? ch * group : ch;
            t->kv_head = t->q_first / group;
            const uint64_t base = o.seed * 0x9e3779b97f4a7c15ull + (uint64_t)(sl * 1000 + ch) * 64;
            int bad = tr_mlp_init(&t->fk, o.depth, cfg->head_dim, o.hidden, o.bits, base);
            for (int32_t f = 0; f < t->n_q; f++)
                bad |= tr_mlp_init(&t->fq[f], o.depth, cfg->head_dim, o.hidden, o.bits, base + 1 + (uint64_t)f);
            if (bad) {
                tool_complain("out of memory");
                return 1;
            }
        }
    if (o.init && !init_weights(&p, cfg, o.init))
        return 2;
    p.n_threads = omp_get_max_threads();
    p.scr = calloc((size_t)p.n_threads, sizeof(scratch));
    for (int i = 0; i < p.n_threads; i++)
        if (scratch_init(&p.scr[i], &p, o.window, o.rows_per_window > o.val_rows ? o.rows_per_window : o.val_rows)) {
            tool_complain("out of memory");
            return 1;
        }

    double *tl = calloc((size_t)p.n_tasks, sizeof(double)), *vl = calloc((size_t)p.n_tasks, sizeof(double));
    eval_loss(&p, &val, vl);
    double v0 = 0.0;
    for (int32_t i = 0; i < p.n_tasks; i++)
        v0 += vl[i];
    v0 /= (double)(n_sparse * cfg->num_q_heads);
    fprintf(stderr, "[ha-train] %s mode, %d bits, %d tasks on %d threads; initial validation loss %.4f\n",
            o.group_mode ? "group" : "paper", o.bits, p.n_tasks, p.n_threads, v0);

    /* training */
    int32_t *rows = malloc((size_t)o.rows_per_window * sizeof(int32_t));
    int32_t *perm = malloc((size_t)o.rows_per_window * sizeof(int32_t));
    double first_loss = NAN, last_loss = 0.0, vloss = v0;
    const double t_train = now_s();
    for (int32_t step = 1; step <= o.steps; step++) {
        const tr_window *w = &win[(step - 1) % o.windows];
        for (int32_t r = 0; r < w->rows; r++)
            perm[r] = r;
        for (int32_t r = 0; r < o.rows; r++) {
            int32_t j = r + (int32_t)(splitmix64(&rng) % (uint64_t)(w->rows - r));
            int32_t tmp = perm[r];
            perm[r] = perm[j];
            perm[j] = tmp;
            rows[r] = perm[r];
        }
        const int want = step % o.log_every == 0 || step == 1 || step == o.steps;
#pragma omp parallel for schedule(dynamic, 1)
        for (int32_t i = 0; i < p.n_tasks; i++) {
            task *t = &p.tasks[i];
            tr_mlp_zero_grad(&t->fk);
            for (int32_t f = 0; f < t->n_q; f++)
                tr_mlp_zero_grad(&t->fq[f]);
            tl[i] = task_pass(t, &p.scr[omp_get_thread_num()], &p, w, rows, o.rows, 1, want);
            tr_mlp_adam(&t->fk, o.lr, step);
            for (int32_t f = 0; f < t->n_q; f++)
                tr_mlp_adam(&t->fq[f], o.lr, step);
        }
        double loss = 0.0;
        if (want) {
            for (int32_t i = 0; i < p.n_tasks; i++)
                loss += tl[i];
            loss /= (double)(n_sparse * cfg->num_q_heads);
            if (isnan(first_loss)) /* --loss mass: losses may be negative */
                first_loss = loss;
            last_loss = loss;
        }
        if (step % o.val_every == 0 || step == o.steps) {
            eval_loss(&p, &val, vl);
            vloss = 0.0;
            for (int32_t i = 0; i < p.n_tasks; i++)
                vloss += vl[i];
            vloss /= (double)(n_sparse * cfg->num_q_heads);
        }
        if (want) {
            const double el = now_s() - t_train, eta = el / step * (o.steps - step);
            fprintf(stderr, "\r[ha-train] step %d/%d  loss %.4f  val %.4f  %.2f s/step  ETA %dm%02ds   ", step, o.steps,
                    loss, vloss, el / step, (int)eta / 60, (int)eta % 60);
            if (step % o.val_every == 0 || step == o.steps)
                fputc('\n', stderr);
        }
    }
    const double t_done = now_s();
    fprintf(stderr, "[ha-train] training loss %.4f -> %.4f; validation loss %.4f -> %.4f\n", first_loss, last_loss, v0,
            vloss);
    fprintf(stderr, "[ha-train] time: capture %.1f s, training %.1f s (%.2f s/step)\n", t_captured - t_start,
            t_done - t_train, o.steps ? (t_done - t_train) / o.steps : 0.0);
    report_recall(&p, &val, "validation window");
    if (o.eval_text)
        report_recall(&p, &evw, o.eval_text);
    if (!write_weights(&p, cfg, dense))
        return 1;
    fprintf(stderr, "[ha-train] wrote %s (%.1f s in all)\n", o.out, now_s() - t_start);

    for (int i = 0; i < p.n_threads; i++)
        scratch_free(&p.scr[i]);
    for (int32_t i = 0; i < p.n_tasks; i++) {
        tr_mlp_free(&p.tasks[i].fk);
        for (int32_t f = 0; f < p.tasks[i].n_q; f++)
            tr_mlp_free(&p.tasks[i].fq[f]);
    }
    for (int32_t wi = 0; wi < o.windows; wi++)
        tr_window_free(&win[wi], &p.geom);
    tr_window_free(&val, &p.geom);
    if (o.eval_text)
        tr_window_free(&evw, &p.geom);
    free(win);
    free(p.scr);
    free(p.tasks);
    free(tl);
    free(vl);
    free(rows);
    free(perm);
    free(toks);
    free(pos);
    lm_model_free(model);
    return 0;
}
