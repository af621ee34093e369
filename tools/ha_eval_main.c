/*
 * ha-eval — selection quality of HashAttention on a real model's attention (SPEC §5).
 *
 *   ha-eval [--model DIR] [--text FILE] [--window 8192] [--rows 7680:8192] [--weights F[,F…]]
 *           [--budgets 1/8,1/16,1/32] [--sink 128] [--local 128] [--layers 3,4,…]
 *           [--ppl 4096:8192 | --no-ppl] [--backend NAME] [--seed N] [--json OUT]
 *
 * One window of the text (BOS + its first window-1 tokens) is prefilled densely; for each evaluated
 * layer, query head and query row i, the true causal softmax over keys 0..i is compared with the
 * kept set of each method at each budget (recall of attention mass, relative output error): learned
 * codes (each weights file, through the runtime's public API), oracle top-k, SimHash-32 with the MIPS
 * transform, Quest with pages of 16 and of 128, sink+local only. Then the perplexity of the text's
 * targets in --ppl with HashAttention decode in the weights' sparse layers, against dense decode,
 * and how often the sparse argmax equals the dense one. Results go to stdout (tables) and --json.
 * Exit status 0 on success, 1 on an error, 2 on bad usage.
 */
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "ha_eval.h"
#include "tool_cli.h"

#ifndef HA_EVAL_DEFAULT_MODEL
#define HA_EVAL_DEFAULT_MODEL "models/tinylm-25m"
#endif
#ifndef HA_EVAL_DEFAULT_TEXT
#define HA_EVAL_DEFAULT_TEXT "../shared/data/eval_public.txt"
#endif

#define EXIT_USAGE 2
#define MAX_LIST 64

typedef struct options {
    const char *model, *text, *json, *backend;
    int64_t window, row_begin, row_end, ppl_begin, ppl_end;
    int do_ppl;
    const char *weights[EVAL_MAX_WEIGHTS];
    int32_t num_weights;
    eval_budget budgets[EVAL_MAX_BUDGETS];
    int32_t num_budgets;
    eval_window_rule rule;
    int32_t layers[MAX_LIST];
    int32_t num_layers; /* 0: the layers any weights file runs sparse */
    uint64_t seed;
} options;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: ha-eval [--model DIR] [--text FILE] [--window N] [--rows A:B] [--weights F[,F...]]\n"
            "               [--budgets 1/8,1/16,1/32] [--sink N] [--local N] [--layers L,L,...]\n"
            "               [--ppl A:B | --no-ppl] [--backend NAME] [--seed N] [--json OUT]\n"
            "  --model    model folder (default %s)\n"
            "  --text     evaluation text (default %s)\n"
            "  --window   tokens of the window, BOS included (default 8192)\n"
            "  --rows     query rows [A, B) measured (default: the last 512 of the window)\n"
            "  --weights  mapping-weights files, each a 'learned' method (comma-separated)\n"
            "  --budgets  heavy budgets as fractions of the length (default 1/8,1/16,1/32)\n"
            "  --layers   layers measured (default: those any weights file runs sparse, else 3..7)\n"
            "  --ppl      targets [A, B) of the perplexity run (default: the second half of the window)\n"
            "  --seed     seed of the SimHash hyperplanes (default 1)\n",
            HA_EVAL_DEFAULT_MODEL, HA_EVAL_DEFAULT_TEXT);
}

static void usage_error(const char *what, const char *value)
{
    fprintf(stderr, "ha-eval: %s: '%s'\n", what, value);
    usage(stderr);
    exit(EXIT_USAGE);
}

static long long parse_ll(const char *text, const char *flag)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (!*text || *end || v < 0)
        usage_error(flag, text);
    return v;
}

static void parse_range(const char *text, const char *flag, int64_t *a, int64_t *b)
{
    char buf[64];
    const char *colon = strchr(text, ':');
    if (!colon || (size_t)(colon - text) >= sizeof buf)
        usage_error(flag, text);
    memcpy(buf, text, (size_t)(colon - text));
    buf[colon - text] = '\0';
    *a = parse_ll(buf, flag);
    *b = parse_ll(colon + 1, flag);
    if (*b <= *a)
        usage_error(flag, text);
}

/* Splits a comma-separated list in place (text is a copy owned by the caller). */
static int32_t split(char *text, char **items, int32_t max)
{
    int32_t n = 0;
    for (char *save = NULL, *t = strtok_r(text, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == max)
            return -1;
        items[n++] = t;
    }
    return n;
}

static void parse_budgets(char *text, options *o)
{
    char *items[EVAL_MAX_BUDGETS];
    int32_t n = split(text, items, EVAL_MAX_BUDGETS);
    if (n <= 0)
        usage_error("--budgets wants 1 to 8 fractions", text);
    for (int32_t i = 0; i < n; i++) {
        double f;
        if (!tool_parse_fraction("--budgets", items[i], &f)) {
            usage(stderr);
            exit(EXIT_USAGE);
        }
        snprintf(o->budgets[i].name, sizeof o->budgets[i].name, "%s", items[i]);
        o->budgets[i].fraction = f;
    }
    o->num_budgets = n;
}

static options parse_options(int argc, char **argv)
{
    options o;
    memset(&o, 0, sizeof o);
    o.model = HA_EVAL_DEFAULT_MODEL;
    o.text = HA_EVAL_DEFAULT_TEXT;
    o.window = 8192;
    o.row_begin = -1;
    o.ppl_begin = -1;
    o.do_ppl = 1;
    o.rule = (eval_window_rule){128, 128};
    o.seed = 1;
    static char budgets_default[] = "1/8,1/16,1/32";
    parse_budgets(budgets_default, &o);
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(flag, "--no-ppl")) {
            o.do_ppl = 0;
            continue;
        }
        if (i + 1 >= argc)
            usage_error("a value is missing after", flag);
        char *value = argv[++i];
        if (!strcmp(flag, "--model")) {
            o.model = value;
        } else if (!strcmp(flag, "--text")) {
            o.text = value;
        } else if (!strcmp(flag, "--json")) {
            o.json = value;
        } else if (!strcmp(flag, "--backend")) {
            o.backend = value;
        } else if (!strcmp(flag, "--window")) {
            o.window = parse_ll(value, flag);
        } else if (!strcmp(flag, "--rows")) {
            parse_range(value, flag, &o.row_begin, &o.row_end);
        } else if (!strcmp(flag, "--ppl")) {
            parse_range(value, flag, &o.ppl_begin, &o.ppl_end);
        } else if (!strcmp(flag, "--sink")) {
            o.rule.sink = (int32_t)parse_ll(value, flag);
        } else if (!strcmp(flag, "--local")) {
            o.rule.local = (int32_t)parse_ll(value, flag);
        } else if (!strcmp(flag, "--seed")) {
            o.seed = (uint64_t)parse_ll(value, flag);
        } else if (!strcmp(flag, "--budgets")) {
            parse_budgets(value, &o);
        } else if (!strcmp(flag, "--weights")) {
            o.num_weights = split(value, (char **)o.weights, EVAL_MAX_WEIGHTS);
            if (o.num_weights < 0)
                usage_error("--weights takes at most 8 files", value);
        } else if (!strcmp(flag, "--layers")) {
            char *items[MAX_LIST];
            o.num_layers = split(value, items, MAX_LIST);
            if (o.num_layers <= 0)
                usage_error("--layers wants a list of layers", value);
            for (int32_t l = 0; l < o.num_layers; l++)
                o.layers[l] = (int32_t)parse_ll(items[l], flag);
        } else {
            usage_error("unknown option", flag);
        }
    }
    if (o.row_begin < 0) {
        o.row_end = o.window;
        o.row_begin = o.window > 512 ? o.window - 512 : 0;
    }
    if (o.ppl_begin < 0) {
        o.ppl_end = o.window;
        o.ppl_begin = o.window / 2 > 1 ? o.window / 2 : 1;
    }
    if (o.row_end > o.window || o.ppl_end > o.window || o.ppl_begin < 1)
        usage_error("--rows and --ppl must lie inside the window (and --ppl start at 1 or later)", "");
    return o;
}

/* ---- small helpers ----------------------------------------------------------------------------- */

static char *read_text(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)size + 1)) &&
        fread(buf, 1, (size_t)size, f) == (size_t)size) {
        buf[size] = '\0';
        *len = (size_t)size;
    } else {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    return buf;
}

static void cpu_name(char *out, size_t size)
{
    snprintf(out, size, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            const char *v = strchr(line, ':') + 2;
            snprintf(out, size, "%.*s", (int)strcspn(v, "\n"), v);
            break;
        }
    fclose(f);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* ---- accumulation of the per-query measures ---------------------------------------------------- */

typedef struct tally {
    double recall, error;
    int64_t count;
} tally;

typedef struct results {
    int32_t methods, budgets, layers, heads;
    tally *t; /* [method][budget][layer index][head] */
} results;

static tally *tally_at(const results *r, int32_t m, int32_t b, int32_t li, int32_t h)
{
    return &r->t[(((int64_t)m * r->budgets + b) * r->layers + li) * r->heads + h];
}

static tally sum_tallies(const results *r, int32_t m, int32_t b, int32_t li_only)
{
    tally s = {0, 0, 0};
    for (int32_t li = 0; li < r->layers; li++)
        for (int32_t h = 0; h < r->heads; h++)
            if (li_only < 0 || li == li_only) {
                const tally *t = tally_at(r, m, b, li, h);
                s.recall += t->recall;
                s.error += t->error;
                s.count += t->count;
            }
    return s;
}

static json_t *mean_or_null(double sum, int64_t count)
{
    return count ? json_real(sum / (double)count) : json_null();
}

/* ---- the program ------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    options o = parse_options(argc, argv);
    const double t_start = eval_now_s();

    lm_model *model;
    if (lm_model_load(o.model, &model) != HA_OK) {
        fprintf(stderr, "ha-eval: lm_model_load failed: %s\n", lm_last_error());
        return 1;
    }
    const lm_config *cfg = lm_model_config(model);
    size_t text_len;
    char *text = read_text(o.text, &text_len);
    if (!text) {
        fprintf(stderr, "ha-eval: cannot read the evaluation text %s (pass --text)\n", o.text);
        return 1;
    }

    ha_runtime_options ro = {sizeof ro, o.backend, 0};
    ha_runtime *rt;
    if (ha_runtime_open(&ro, &rt) != HA_OK) {
        fprintf(stderr, "ha-eval: ha_runtime_open failed: %s\n", ha_last_error());
        return 1;
    }
    ha_weights *weights[EVAL_MAX_WEIGHTS] = {0};
    for (int32_t w = 0; w < o.num_weights; w++)
        if (ha_weights_load(rt, o.weights[w], &weights[w]) != HA_OK) {
            fprintf(stderr, "ha-eval: ha_weights_load(%s) failed: %s\n", o.weights[w], ha_last_error());
            return 1;
        }

    /* the layers measured */
    if (o.num_layers == 0) {
        for (int32_t l = 0; l < cfg->num_layers && l < MAX_LIST; l++) {
            int sparse = o.num_weights == 0 && l >= 3;
            for (int32_t w = 0; w < o.num_weights; w++)
                sparse |= ha_weights_layer_is_dense(weights[w], l) == 0;
            if (sparse)
                o.layers[o.num_layers++] = l;
        }
    }
    uint8_t *wanted = calloc((size_t)cfg->num_layers, 1);
    if (!wanted)
        return 1;
    for (int32_t i = 0; i < o.num_layers; i++) {
        if (o.layers[i] < 0 || o.layers[i] >= cfg->num_layers) {
            fprintf(stderr, "ha-eval: layer %d is outside [0, %d)\n", o.layers[i], cfg->num_layers);
            return EXIT_USAGE;
        }
        wanted[o.layers[i]] = 1;
    }

    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    printf("ha-eval  model %s, text %s\n         window %lld tokens, query rows [%lld, %lld), sink %d, local %d\n"
           "         backend %s (%s); %s, %d OpenMP threads\n",
           o.model, o.text, (long long)o.window, (long long)o.row_begin, (long long)o.row_end, o.rule.sink,
           o.rule.local, ha_runtime_backend_name(rt), ha_runtime_backend_description(rt), cpu, omp_get_max_threads());

    /* 1. capture */
    double t0 = eval_now_s();
    eval_capture cap;
    fprintf(stderr, "prefill of the window (%lld tokens)...\n", (long long)o.window);
    if (eval_capture_window(model, text, text_len, o.window, o.row_begin, o.row_end, wanted, &cap) != HA_OK)
        return 1;
    const double capture_s = eval_now_s() - t0;

    /* 2. selection quality */
    eval_learned *learned[EVAL_MAX_WEIGHTS] = {0};
    for (int32_t w = 0; w < o.num_weights; w++)
        if (eval_learned_open(rt, weights[w], &cap, o.budgets, o.num_budgets, o.rule, &learned[w]) != HA_OK)
            return 1;
    const int32_t M = EVAL_NUM_BASELINES + o.num_weights, B = o.num_budgets, Hq = cap.q_heads;
    const int64_t rows = o.row_end - o.row_begin, items = (int64_t)Hq * rows;
    results res = {M, B, o.num_layers, Hq, calloc((size_t)M * B * o.num_layers * Hq, sizeof(tally))};
    eval_metric *base_out = malloc((size_t)(items * EVAL_NUM_BASELINES * B) * sizeof(eval_metric));
    eval_metric *learned_out = malloc((size_t)(items * (o.num_weights ? o.num_weights : 1) * B) * sizeof(eval_metric));
    const int threads = omp_get_max_threads();
    const size_t scratch_bytes = eval_scratch_bytes(&cap);
    char *scratch = malloc(scratch_bytes * (size_t)threads);
    if (!res.t || !base_out || !learned_out || !scratch) {
        fprintf(stderr, "ha-eval: out of memory\n");
        return 1;
    }
    t0 = eval_now_s();
    for (int32_t li = 0; li < o.num_layers; li++) {
        const int32_t layer = o.layers[li];
        eval_layer_index *x = eval_layer_index_build(&cap, layer, o.seed);
        eval_learned_sets sets[EVAL_MAX_WEIGHTS];
        const eval_learned_sets *set_ptrs[EVAL_MAX_WEIGHTS];
        int32_t sparse_in[EVAL_MAX_WEIGHTS];
        memset(sets, 0, sizeof sets);
        if (!x) {
            fprintf(stderr, "ha-eval: out of memory (layer index)\n");
            return 1;
        }
        for (int32_t w = 0; w < o.num_weights; w++) {
            sparse_in[w] = eval_learned_layer_is_sparse(learned[w], layer);
            if (sparse_in[w] && eval_learned_select(learned[w], layer, &sets[w]) != HA_OK)
                return 1;
            set_ptrs[w] = &sets[w];
        }
        /* layers a weights file leaves dense get no learned measure: point those at the first
         * sparse set only to keep the call uniform, and drop the numbers below */
        int32_t fallback = -1;
        for (int32_t w = 0; w < o.num_weights && fallback < 0; w++)
            if (sparse_in[w])
                fallback = w;
        int32_t measured_learned = fallback >= 0 ? o.num_weights : 0;
        for (int32_t w = 0; w < o.num_weights; w++)
            if (!sparse_in[w])
                set_ptrs[w] = fallback >= 0 ? &sets[fallback] : NULL;

        /* one progress line over all layers: (query, head) pairs done of layers × items */
        int64_t done = li * items;
        const int64_t total = o.num_layers * items;
        char phase[64];
        snprintf(phase, sizeof phase, "selection quality, layer %d", layer);
#pragma omp parallel for schedule(dynamic, 4)
        for (int64_t it = 0; it < items; it++) {
            const int32_t h = (int32_t)(it % Hq);
            const int64_t r = it / Hq;
            eval_one_query(&cap, x, layer, h, r, o.budgets, B, o.rule, set_ptrs, measured_learned,
                           scratch + scratch_bytes * (size_t)omp_get_thread_num(),
                           base_out + it * EVAL_NUM_BASELINES * B, learned_out + it * o.num_weights * B);
            int64_t now_done;
#pragma omp atomic capture
            now_done = ++done;
            if (omp_get_thread_num() == 0 && now_done < total)
                eval_progress(phase, now_done, total, t0);
        }
        if (li + 1 == o.num_layers)
            eval_progress(phase, total, total, t0);
        for (int64_t it = 0; it < items; it++) {
            const int32_t h = (int32_t)(it % Hq);
            for (int32_t m = 0; m < M; m++) {
                int32_t w = m - EVAL_NUM_BASELINES;
                if (w >= 0 && !sparse_in[w])
                    continue;
                for (int32_t b = 0; b < B; b++) {
                    const eval_metric *e = w < 0 ? &base_out[(it * EVAL_NUM_BASELINES + m) * B + b]
                                                 : &learned_out[(it * o.num_weights + w) * B + b];
                    tally *t = tally_at(&res, m, b, li, h);
                    t->recall += e->recall;
                    t->error += e->error;
                    t->count++;
                }
            }
        }
        for (int32_t w = 0; w < o.num_weights; w++)
            eval_learned_sets_free(&sets[w]);
        eval_layer_index_free(x);
    }
    const double select_s = eval_now_s() - t0;

    /* method names */
    char method_names[EVAL_NUM_BASELINES + EVAL_MAX_WEIGHTS][160];
    for (int32_t m = 0; m < M; m++) {
        if (m < EVAL_NUM_BASELINES)
            snprintf(method_names[m], sizeof method_names[m], "%s", eval_baseline_name((eval_baseline)m));
        else
            snprintf(method_names[m], sizeof method_names[m], "learned:%s", base_name(o.weights[m - EVAL_NUM_BASELINES]));
    }

    /* tables */
    printf("\nrecall of attention mass (mean over layers %s, heads, rows) | relative output error\n",
           o.num_layers ? "measured" : "-");
    printf("%-40s", "method");
    for (int32_t b = 0; b < B; b++)
        printf(" %9s", o.budgets[b].name);
    printf("  |");
    for (int32_t b = 0; b < B; b++)
        printf(" %9s", o.budgets[b].name);
    printf("\n");
    for (int32_t m = 0; m < M; m++) {
        printf("%-40s", method_names[m]);
        for (int32_t b = 0; b < B; b++) {
            tally s = sum_tallies(&res, m, b, -1);
            printf(" %9.4f", s.count ? s.recall / (double)s.count : NAN);
        }
        printf("  |");
        for (int32_t b = 0; b < B; b++) {
            tally s = sum_tallies(&res, m, b, -1);
            printf(" %9.4f", s.count ? s.error / (double)s.count : NAN);
        }
        printf("\n");
    }
    const int32_t last_b = B - 1;
    printf("\nrecall per layer at %s\n%-40s", o.budgets[last_b].name, "method");
    for (int32_t li = 0; li < o.num_layers; li++)
        printf("  layer %-2d", o.layers[li]);
    printf("\n");
    for (int32_t m = 0; m < M; m++) {
        printf("%-40s", method_names[m]);
        for (int32_t li = 0; li < o.num_layers; li++) {
            tally s = sum_tallies(&res, m, last_b, li);
            printf("  %8.4f", s.count ? s.recall / (double)s.count : NAN);
        }
        printf("\n");
    }

    /* 3. perplexity and agreement */
    json_t *ppl = json_null();
    double ppl_s = 0.0;
    if (o.do_ppl) {
        t0 = eval_now_s();
        eval_lm_dense dense;
        if (eval_lm_dense_run(model, rt, cap.tokens, o.ppl_begin, o.ppl_end, &dense) != HA_OK)
            return 1;
        printf("\nperplexity of targets [%lld, %lld) (%lld decode steps after a dense prefill of %lld tokens)\n",
               (long long)o.ppl_begin, (long long)o.ppl_end, (long long)dense.run.targets,
               (long long)(o.ppl_begin - 1));
        printf("%-40s %7s %9s %9s %9s %10s\n", "decode attention", "budget", "nll", "ppl", "agree", "tokens/s");
        printf("%-40s %7s %9.4f %9.3f %9s %10.1f\n", "dense", "-", dense.run.nll, exp(dense.run.nll), "-",
               (double)dense.run.targets / dense.run.seconds);
        ppl = json_object();
        json_object_set_new(ppl, "targets", json_pack("[I,I]", (json_int_t)o.ppl_begin, (json_int_t)o.ppl_end));
        json_object_set_new(ppl, "dense", json_pack("{s:f,s:f,s:f}", "nll", dense.run.nll, "ppl", exp(dense.run.nll),
                                                    "tokens_per_s", (double)dense.run.targets / dense.run.seconds));
        json_t *sparse_runs = json_array();
        for (int32_t w = 0; w < o.num_weights; w++)
            for (int32_t b = 0; b < B; b++) {
                eval_lm_run run;
                if (eval_lm_sparse_run(model, rt, weights[w], cap.tokens, &dense, o.rule, o.budgets[b].fraction,
                                       &run) != HA_OK)
                    return 1;
                printf("%-40s %7s %9.4f %9.3f %8.1f%% %10.1f\n", method_names[EVAL_NUM_BASELINES + w],
                       o.budgets[b].name, run.nll, exp(run.nll), 100.0 * run.agreement,
                       (double)run.targets / run.seconds);
                fflush(stdout);
                json_array_append_new(sparse_runs,
                                      json_pack("{s:s,s:s,s:s,s:f,s:f,s:f,s:f}", "method",
                                                method_names[EVAL_NUM_BASELINES + w], "weights", o.weights[w],
                                                "budget", o.budgets[b].name, "nll", run.nll, "ppl", exp(run.nll),
                                                "agreement", run.agreement, "tokens_per_s",
                                                (double)run.targets / run.seconds));
            }
        json_object_set_new(ppl, "sparse", sparse_runs);
        eval_lm_dense_free(&dense);
        ppl_s = eval_now_s() - t0;
    }

    /* 4. JSON */
    if (o.json) {
        json_t *root = json_object();
        json_object_set_new(root, "tool", json_string("ha-eval"));
        json_object_set_new(root, "hashattn_version", json_string(ha_version_string()));
        json_object_set_new(root, "model", json_string(o.model));
        json_object_set_new(root, "text", json_string(o.text));
        json_object_set_new(root, "window", json_integer(o.window));
        json_object_set_new(root, "rows", json_pack("[I,I]", (json_int_t)o.row_begin, (json_int_t)o.row_end));
        json_object_set_new(root, "sink", json_integer(o.rule.sink));
        json_object_set_new(root, "local", json_integer(o.rule.local));
        json_t *budgets = json_array(), *layers = json_array(), *methods = json_array();
        for (int32_t b = 0; b < B; b++)
            json_array_append_new(budgets, json_pack("{s:s,s:f}", "name", o.budgets[b].name, "fraction",
                                                     o.budgets[b].fraction));
        for (int32_t li = 0; li < o.num_layers; li++)
            json_array_append_new(layers, json_integer(o.layers[li]));
        json_object_set_new(root, "budgets", budgets);
        json_object_set_new(root, "layers", layers);
        json_object_set_new(root, "machine", json_pack("{s:s,s:i,s:s}", "cpu", cpu, "threads", threads, "backend",
                                                       ha_runtime_backend_name(rt)));
        json_t *per_method = json_object();
        for (int32_t m = 0; m < M; m++) {
            json_t *desc;
            if (m < EVAL_NUM_BASELINES) {
                desc = json_pack("{s:s,s:s,s:i}", "name", method_names[m], "kind", "baseline", "bits_per_token",
                                 eval_baseline_bits((eval_baseline)m, cap.head_dim));
            } else {
                const eval_learned *e = learned[m - EVAL_NUM_BASELINES];
                desc = json_pack("{s:s,s:s,s:s,s:s,s:i}", "name", method_names[m], "kind", "learned", "weights",
                                 o.weights[m - EVAL_NUM_BASELINES], "mode", eval_learned_mode(e), "bits_per_token",
                                 eval_learned_bits(e));
            }
            json_array_append_new(methods, desc);
            json_t *by_budget = json_object();
            for (int32_t b = 0; b < B; b++) {
                tally all = sum_tallies(&res, m, b, -1);
                json_t *entry = json_object(), *per_layer = json_object();
                json_object_set_new(entry, "recall", mean_or_null(all.recall, all.count));
                json_object_set_new(entry, "error", mean_or_null(all.error, all.count));
                for (int32_t li = 0; li < o.num_layers; li++) {
                    tally s = sum_tallies(&res, m, b, li);
                    json_t *heads = json_array();
                    for (int32_t h = 0; h < Hq; h++) {
                        const tally *t = tally_at(&res, m, b, li, h);
                        json_array_append_new(heads, json_pack("{s:o,s:o}", "recall", mean_or_null(t->recall, t->count),
                                                               "error", mean_or_null(t->error, t->count)));
                    }
                    char key[16];
                    snprintf(key, sizeof key, "%d", o.layers[li]);
                    json_object_set_new(per_layer, key,
                                        json_pack("{s:o,s:o,s:o}", "recall", mean_or_null(s.recall, s.count), "error",
                                                  mean_or_null(s.error, s.count), "heads", heads));
                }
                json_object_set_new(entry, "layers", per_layer);
                json_object_set_new(by_budget, o.budgets[b].name, entry);
            }
            json_object_set_new(per_method, method_names[m], by_budget);
        }
        json_object_set_new(root, "methods", methods);
        json_object_set_new(root, "results", per_method);
        json_object_set_new(root, "perplexity", ppl);
        json_object_set_new(root, "seconds", json_pack("{s:f,s:f,s:f,s:f}", "prefill", capture_s, "selection",
                                                       select_s, "perplexity", ppl_s, "total",
                                                       eval_now_s() - t_start));
        if (json_dump_file(root, o.json, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6)) != 0) {
            fprintf(stderr, "ha-eval: cannot write %s\n", o.json);
            return 1;
        }
        json_decref(root);
        printf("\nwrote %s\n", o.json);
    } else {
        json_decref(ppl);
    }
    printf("time     prefill %.1f s, selection quality %.1f s, perplexity %.1f s, total %.1f s\n", capture_s, select_s,
           ppl_s, eval_now_s() - t_start);

    for (int32_t w = 0; w < o.num_weights; w++) {
        eval_learned_close(learned[w]);
        ha_weights_free(weights[w]);
    }
    free(res.t);
    free(base_out);
    free(learned_out);
    free(scratch);
    free(wanted);
    free(text);
    eval_capture_free(&cap);
    ha_runtime_close(rt);
    lm_model_free(model);
    return 0;
}
