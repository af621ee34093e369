/*
 * bench_cpu.c — the CPU benchmark of libhashattn at the Llama-3.1-8B decode shape (Hq 32, Hkv 8,
 * d 128, bf16 K/V): the hash step (ha_decode_step: encode the new key, encode the queries, match,
 * sparse attend) next to the same backend's dense attention, in one process, with each stage timed
 * on its own and compared with its DRAM floor (bytes it must read / read bandwidth measured here).
 *
 *   bench_cpu [--quick] [--n LIST] [--batch LIST] [--modes LIST] [--sparsity LIST] [--reps N]
 *             [--layers N] [--json PATH]
 *
 * Caches: every timed round calls the stage once on each of `layers` independent copies of the
 * weights, codes and KV (enough copies that a round's data exceeds 4× the last-level cache, within a
 * memory budget), and a buffer of 4× the LLC is read between rounds, so no call finds its data in
 * cache. The time of one call is the round's time / copies; the report gives median and min over
 * the rounds. The backend is chosen as usual (HASHATTN_BACKEND, HASHATTN_PLUGIN_PATH).
 * Exit status 0 when every configuration ran and checked out, 1 otherwise. Targets (n = 32K, 32×,
 * paper mode) are reported, not enforced: this is a benchmark, not a test.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* strtok_r */
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "bench_fixture.h"
#include "bench_machine.h"
#include "bench_report.h"
#include "bench_shape.h"
#include "bench_stats.h"
#include "ha_shared.h"

#define MAX_LIST 16
#define WARMUP_ROUNDS 2
#define DEFAULT_REPS 7
#define BANDWIDTH_BYTES ((size_t)1 << 30)
#define BANDWIDTH_PASSES 5
#define ROW_BANDWIDTH_PASSES 3 /* before and after each row */
#define LLC_MULTIPLE 4                      /* a round's data ≥ this × LLC; the evictor reads as much */
#define MEMORY_BUDGET (6.0 * (1u << 30))    /* bytes of layer copies at most (the machine has more)   */
#define MAX_LAYER_COPIES 64
#define STEP_TOLERANCE 1e-2                 /* bf16 output: the fused step and the stages may round apart */

/* ---- options ---------------------------------------------------------------------------------- */

typedef struct int_list {
    int64_t v[MAX_LIST];
    int n;
} int_list;

typedef struct options {
    int_list tokens, batches, modes, sparsities;
    int reps;
    int layers; /* 0: automatic */
    const char *json_path;
} options;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: bench_cpu [--quick] [--n LIST] [--batch LIST] [--modes LIST] [--sparsity LIST]\n"
            "                 [--reps N] [--layers N] [--json PATH]\n"
            "  --quick     n = 4K,32K and B = 1 only (a smoke run)\n"
            "  --n         sequence lengths, e.g. 4K,16K,32K,64K (the default; K = 1024)\n"
            "  --batch     batch sizes (default 1,4)\n"
            "  --modes     paper,group (default both)\n"
            "  --sparsity  1/heavy_fraction values (default 32,16); sink 128 + local 128 always kept\n"
            "  --reps      timed rounds per stage, at least 7 (default %d), after %d warm-up rounds\n"
            "  --layers    independent copies rotated over (default: enough to exceed %dx the LLC)\n"
            "  --json      where to write the results (default bench/results_cpu.json)\n",
            DEFAULT_REPS, WARMUP_ROUNDS, LLC_MULTIPLE);
}

static void die_usage(const char *message, const char *arg)
{
    fprintf(stderr, "bench_cpu: %s%s%s\n", message, arg ? ": " : "", arg ? arg : "");
    usage(stderr);
    exit(1);
}

static int64_t parse_count(const char *text, int64_t min, int64_t max)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (end == text)
        die_usage("not a number", text);
    if (*end == 'K' || *end == 'k') {
        v *= 1024;
        end++;
    }
    if (*end != '\0' || v < min || v > max)
        die_usage("value out of range or malformed", text);
    return v;
}

/** A comma-separated list; each word is a number (with optional K) or one of names (its index). */
static void parse_list(const char *text, int_list *out, int64_t min, int64_t max, const char *const *names)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", text);
    out->n = 0;
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        if (out->n == MAX_LIST)
            die_usage("list too long", text);
        int64_t v = -1;
        for (int i = 0; names && names[i]; i++)
            if (strcmp(w, names[i]) == 0)
                v = i;
        if (names && v < 0)
            die_usage("unknown name", w);
        out->v[out->n++] = names ? v : parse_count(w, min, max);
    }
    if (out->n == 0)
        die_usage("empty list", text);
}

static const char *const MODE_NAMES[] = {"paper", "group", NULL}; /* indices = ha_mode values */

static void parse_options(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof(*o));
    parse_list("4K,16K,32K,64K", &o->tokens, 1, INT32_MAX, NULL);
    parse_list("1,4", &o->batches, 1, INT32_MAX, NULL);
    parse_list("paper,group", &o->modes, 0, 0, MODE_NAMES);
    parse_list("32,16", &o->sparsities, 1, INT32_MAX, NULL);
    o->reps = DEFAULT_REPS;
    o->json_path = "bench/results_cpu.json";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--quick") == 0) {
            parse_list("4K,32K", &o->tokens, 1, INT32_MAX, NULL);
            parse_list("1", &o->batches, 1, INT32_MAX, NULL);
            continue;
        }
        if (!val)
            die_usage("missing value or unknown option", a);
        i++;
        if (strcmp(a, "--n") == 0)
            parse_list(val, &o->tokens, 1, INT32_MAX, NULL);
        else if (strcmp(a, "--batch") == 0)
            parse_list(val, &o->batches, 1, 1024, NULL);
        else if (strcmp(a, "--modes") == 0)
            parse_list(val, &o->modes, 0, 0, MODE_NAMES);
        else if (strcmp(a, "--sparsity") == 0)
            parse_list(val, &o->sparsities, 1, 1 << 20, NULL);
        else if (strcmp(a, "--reps") == 0)
            o->reps = (int)parse_count(val, 7, 10000);
        else if (strcmp(a, "--layers") == 0)
            o->layers = (int)parse_count(val, 1, MAX_LAYER_COPIES);
        else if (strcmp(a, "--json") == 0)
            o->json_path = val;
        else
            die_usage("unknown option", a);
    }
}

/* ---- one configuration ----------------------------------------------------------------------- */

/** What the stage calls of one (fixture, plan) need. */
typedef struct stage_ctx {
    bench_fixture *f;
    ha_plan *plan;
    int32_t **indices; /* [layers] */
    int32_t **counts;  /* [layers] */
} stage_ctx;

static ha_status call_stage(const stage_ctx *c, bench_stage s, int32_t l, ha_tensor3 *out)
{
    bench_fixture *f = c->f;
    switch (s) {
    case BENCH_STEP: {
        ha_step step = {f->batch, f->seq_lens, 1, f->q[l], f->kv[l], *out, NULL, NULL};
        return ha_decode_step(c->plan, f->cache, l, &step);
    }
    case BENCH_ENCODE_Q:
        return ha_encode_queries(c->plan, l, &f->q[l], f->batch, f->q_codes[l], NULL);
    case BENCH_ENCODE_K:
        return ha_cache_encode_keys(c->plan, f->cache, l, &f->kv[l], f->batch, f->seq_lens, 1, NULL);
    case BENCH_MATCH:
        return ha_match(c->plan, f->cache, l, f->q_codes[l], &f->kv[l], f->batch, f->seq_lens, c->indices[l],
                        c->counts[l], NULL);
    case BENCH_ATTEND:
        return ha_attend(c->plan, &f->q[l], &f->kv[l], f->batch, f->seq_lens, c->indices[l], c->counts[l], out, NULL,
                         NULL);
    case BENCH_DENSE:
        return ha_dense_attend(c->plan, &f->q[l], &f->kv[l], f->batch, f->seq_lens, out, NULL, NULL);
    default:
        return HA_ERR_INVALID_ARGUMENT;
    }
}

static int failed(ha_status st, bench_stage s)
{
    if (st == HA_OK)
        return 0;
    fprintf(stderr, "bench_cpu: %s failed: %s: %s\n", bench_stage_name(s), ha_status_string(st), ha_last_error());
    return 1;
}

/** One round of stage s over all copies, caches flushed first: seconds per call, or < 0 on failure. */
static double time_round(const stage_ctx *c, bench_stage s, const bench_evictor *ev)
{
    bench_evictor_run(ev);
    double t0 = bench_now();
    for (int32_t l = 0; l < c->f->layers; l++)
        if (failed(call_stage(c, s, l, &c->f->out), s))
            return -1.0;
    return (bench_now() - t0) / c->f->layers;
}

/**
 * Warm-up, then reps rounds of each of the n stages, the stages' rounds alternating (s[0], s[1], …,
 * s[0], …) so that stages compared with each other see the same machine state over the run.
 */
static int time_stages(const stage_ctx *c, const bench_stage *s, int n, int reps, const bench_evictor *ev,
                       bench_timing *t)
{
    double *samples = malloc((size_t)reps * (size_t)n * sizeof(double));
    if (!samples)
        return -1;
    for (int rep = -WARMUP_ROUNDS; rep < reps; rep++)
        for (int i = 0; i < n; i++) {
            double per_call = time_round(c, s[i], ev);
            if (per_call < 0.0) {
                free(samples);
                return -1;
            }
            if (rep >= 0)
                samples[(size_t)i * reps + rep] = per_call;
        }
    for (int i = 0; i < n; i++)
        bench_summarize(samples + (size_t)i * reps, reps, &t[s[i]].median_s, &t[s[i]].min_s);
    free(samples);
    return 0;
}

static long involuntary_switches(void)
{
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) == 0 ? ru.ru_nivcsw : 0;
}

/** Every (copy, sequence, selection head) kept exactly the budget's number of tokens. */
static int selection_counts_ok(const stage_ctx *c, int64_t kept)
{
    const int32_t rows = c->f->batch * ha_plan_selection_heads(c->plan);
    for (int32_t l = 0; l < c->f->layers; l++)
        for (int32_t i = 0; i < rows; i++)
            if (c->counts[l][i] != kept)
                return 0;
    return 1;
}

/** Relative max difference of the fused step's output and the separate stages' (copy 0). */
static double step_vs_stages(const stage_ctx *c)
{
    bench_fixture *f = c->f;
    if (failed(call_stage(c, BENCH_STEP, 0, &f->out), BENCH_STEP) ||
        failed(call_stage(c, BENCH_ENCODE_Q, 0, &f->out_check), BENCH_ENCODE_Q) ||
        failed(call_stage(c, BENCH_MATCH, 0, &f->out_check), BENCH_MATCH) ||
        failed(call_stage(c, BENCH_ATTEND, 0, &f->out_check), BENCH_ATTEND))
        return INFINITY;
    const uint16_t *a = f->out.data, *b = f->out_check.data;
    double diff = 0.0, ref = 0.0;
    for (size_t i = 0; i < (size_t)f->batch * BENCH_Q_HEADS * BENCH_HEAD_DIM; i++) {
        double x = ha_bf16_to_f32(a[i]), y = ha_bf16_to_f32(b[i]);
        diff = fmax(diff, fabs(x - y));
        ref = fmax(ref, fabs(y));
    }
    return ref > 0.0 ? diff / ref : diff;
}

static void expected_bytes(const bench_fixture *f, bench_result *r)
{
    bench_timing *s = r->stage;
    s[BENCH_ENCODE_Q].bytes = bench_mlp_bytes(BENCH_Q_HEADS);
    s[BENCH_ENCODE_K].bytes = bench_mlp_bytes(bench_code_heads(f->mode));
    s[BENCH_MATCH].bytes = bench_match_bytes(f->mode, f->batch, f->tokens);
    s[BENCH_ATTEND].bytes = bench_attend_bytes(f->mode, f->batch, r->kept);
    s[BENCH_DENSE].bytes = bench_dense_bytes(f->batch, f->tokens);
    s[BENCH_STEP].bytes = s[BENCH_ENCODE_Q].bytes + s[BENCH_ENCODE_K].bytes + s[BENCH_MATCH].bytes +
                          s[BENCH_ATTEND].bytes;
}

static void free_selection(ha_runtime *rt, stage_ctx *c, int32_t layers)
{
    for (int32_t l = 0; l < layers; l++) {
        if (c->indices)
            ha_mem_free(rt, c->indices[l]);
        if (c->counts)
            ha_mem_free(rt, c->counts[l]);
    }
    free(c->indices);
    free(c->counts);
    ha_plan_destroy(c->plan);
}

/** Times every stage of one (fixture, sparsity); 0 on success. */
static int run_config(bench_fixture *f, int sparsity, int reps, const bench_evictor *ev, bench_result *r)
{
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, f->batch, f->tokens, BENCH_Q_HEADS, BENCH_KV_HEADS, BENCH_HEAD_DIM);
    cfg.sink = BENCH_SINK;
    cfg.local = BENCH_LOCAL;
    cfg.heavy_fraction = 1.0 / sparsity;
    stage_ctx c = {f, NULL, calloc((size_t)f->layers, sizeof(int32_t *)), calloc((size_t)f->layers, sizeof(int32_t *))};
    int rc = -1;
    if (!c.indices || !c.counts || failed(ha_plan_create(f->rt, f->weights, &cfg, &c.plan), BENCH_STEP))
        goto done;
    const size_t rows = (size_t)f->batch * (size_t)ha_plan_selection_heads(c.plan);
    for (int32_t l = 0; l < f->layers; l++) {
        c.indices[l] = bench_alloc(f->rt, rows * (size_t)ha_plan_max_kept(c.plan) * sizeof(int32_t));
        c.counts[l] = bench_alloc(f->rt, rows * sizeof(int32_t));
        if (!c.indices[l] || !c.counts[l])
            goto done;
        memset(c.counts[l], 0xff, rows * sizeof(int32_t)); /* poison: a match that writes nothing shows */
    }

    memset(r, 0, sizeof(*r));
    r->mode = f->mode;
    r->sparsity = sparsity;
    r->batch = f->batch;
    r->tokens = f->tokens;
    r->kept = ha_plan_kept_for_length(c.plan, f->tokens);
    r->layers = f->layers;
    r->working_set = f->layers * bench_fixture_layer_bytes(f->mode, f->batch, f->tokens);
    expected_bytes(f, r);
    /* Producers first: queries' codes feed match, match's selection feeds attend. The hash step and
     * dense attention, whose ratio is the result, are timed in alternating rounds. */
    static const bench_stage order[] = {BENCH_ENCODE_Q, BENCH_MATCH, BENCH_ATTEND, BENCH_ENCODE_K};
    static const bench_stage compared[] = {BENCH_STEP, BENCH_DENSE};
    long switches = involuntary_switches();
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (time_stages(&c, &order[i], 1, reps, ev, r->stage) != 0)
            goto done;
    if (time_stages(&c, compared, 2, reps, ev, r->stage) != 0)
        goto done;
    r->preemptions = involuntary_switches() - switches;
    r->selection_ok = selection_counts_ok(&c, r->kept);
    r->step_vs_stages = step_vs_stages(&c);
    rc = 0;
done:
    free_selection(f->rt, &c, f->layers);
    return rc;
}

/* ---- main ------------------------------------------------------------------------------------ */

static int32_t choose_layers(const options *o, double layer_bytes, size_t llc_bytes)
{
    if (o->layers > 0)
        return o->layers;
    double want = ceil(LLC_MULTIPLE * (double)llc_bytes / layer_bytes);
    double cap = floor(MEMORY_BUDGET / layer_bytes);
    double layers = fmin(fmin(fmax(want, 2.0), cap), MAX_LAYER_COPIES);
    return layers < 1.0 ? 1 : (int32_t)layers;
}

static char *join_args(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *s = calloc(len, 1);
    for (int i = 0; s && i < argc; i++) {
        if (i)
            strcat(s, " ");
        strcat(s, argv[i]);
    }
    return s;
}

static const char *checked_row(const bench_result *r)
{
    if (!r->selection_ok)
        return "selection counts differ from the budget";
    if (!(r->step_vs_stages <= STEP_TOLERANCE))
        return "ha_decode_step's output differs from the separate stages'";
    return NULL;
}

int main(int argc, char **argv)
{
    options o;
    parse_options(argc, argv, &o);
    bench_context ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.command = join_args(argc, argv);
    ctx.reps = o.reps;
    ctx.warmup = WARMUP_ROUNDS;
    bench_machine_describe(&ctx.machine);
    ctx.load_start = bench_load_average();
    ctx.bandwidth_bytes = BANDWIDTH_BYTES;
    ctx.bandwidth_passes = BANDWIDTH_PASSES;
    ctx.read_gbps = bench_read_bandwidth_gbps(BANDWIDTH_BYTES, BANDWIDTH_PASSES);
    if (ctx.read_gbps <= 0.0) {
        fprintf(stderr, "bench_cpu: cannot allocate the bandwidth probe's buffer\n");
        return 1;
    }
    ha_runtime *rt = NULL;
    ha_status st = ha_runtime_open(NULL, &rt);
    if (st != HA_OK) {
        fprintf(stderr, "bench_cpu: ha_runtime_open failed: %s: %s\n", ha_status_string(st), ha_last_error());
        return 1;
    }
    ctx.backend_name = ha_runtime_backend_name(rt);
    ctx.backend_description = ha_runtime_backend_description(rt);
    printf("machine: %s, %d threads, LLC %zu MiB, DRAM read %.1f GB/s (best of %d passes over %zu MiB)\n",
           ctx.machine.cpu_model, ctx.machine.threads, ctx.machine.llc_bytes >> 20, ctx.read_gbps, BANDWIDTH_PASSES,
           BANDWIDTH_BYTES >> 20);
    printf("backend: %s (%s)\n", ctx.backend_name, ctx.backend_description);
    if (ctx.load_start > 0.5)
        printf("warning: load average %.2f before the run: other processes share the CPUs, timings will be noisy\n",
               ctx.load_start);
    printf("shape: Hq %d, Hkv %d, d %d, bf16 K/V, %d-bit codes, MLP depth %d width %d, sink %d, local %d; "
           "times per call, median of %d rounds\n\n",
           BENCH_Q_HEADS, BENCH_KV_HEADS, BENCH_HEAD_DIM, BENCH_BITS, BENCH_MLP_DEPTH, BENCH_MLP_HIDDEN, BENCH_SINK,
           BENCH_LOCAL, o.reps);

    bench_evictor ev;
    if (bench_evictor_init(&ev, LLC_MULTIPLE * ctx.machine.llc_bytes) != 0) {
        fprintf(stderr, "bench_cpu: cannot allocate the cache evictor\n");
        return 1;
    }
    size_t capacity = (size_t)o.modes.n * o.batches.n * o.tokens.n * o.sparsities.n, count = 0;
    bench_result *results = calloc(capacity, sizeof(bench_result));
    int ok = results != NULL;
    bench_print_header(stdout);
    for (int m = 0; ok && m < o.modes.n; m++)
        for (int bi = 0; ok && bi < o.batches.n; bi++)
            for (int ni = 0; ok && ni < o.tokens.n; ni++) {
                ha_mode mode = (ha_mode)o.modes.v[m];
                int32_t batch = (int32_t)o.batches.v[bi];
                int64_t tokens = o.tokens.v[ni];
                int32_t layers = choose_layers(&o, bench_fixture_layer_bytes(mode, batch, tokens), ctx.machine.llc_bytes);
                bench_fixture f;
                uint64_t seed = 1 + (uint64_t)(m * 131 + bi * 17 + ni);
                if (bench_fixture_create(rt, mode, batch, tokens, layers, seed, &f) != HA_OK) {
                    ok = 0;
                    break;
                }
                for (int si = 0; ok && si < o.sparsities.n; si++) {
                    bench_result *r = &results[count];
                    double before = bench_read_bandwidth_gbps(BANDWIDTH_BYTES, ROW_BANDWIDTH_PASSES);
                    ok = run_config(&f, (int)o.sparsities.v[si], o.reps, &ev, r) == 0;
                    if (!ok)
                        break;
                    double after = bench_read_bandwidth_gbps(BANDWIDTH_BYTES, ROW_BANDWIDTH_PASSES);
                    r->read_gbps = before > after ? before : after;
                    count++;
                    bench_print_row(stdout, r);
                    const char *problem = checked_row(r);
                    if (problem) {
                        fprintf(stderr, "bench_cpu: check failed: %s\n", problem);
                        ok = 0;
                    }
                    fflush(stdout);
                }
                bench_fixture_destroy(&f);
            }
    ctx.load_end = bench_load_average();
    printf("\n(bytes) = dense bytes / hash-step bytes: the speed-up if both ran at the same fraction of the floor\n\n");
    bench_print_targets(stdout, results, count);
    if (count > 0 && bench_write_json(o.json_path, &ctx, results, count) == 0)
        printf("\nresults written to %s\n", o.json_path);
    else
        ok = 0;
    bench_evictor_free(&ev);
    free(results);
    free((void *)ctx.command);
    ha_runtime_close(rt);
    return ok ? 0 : 1;
}
