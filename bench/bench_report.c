/*
 * bench_report.c — table and JSON output of the CPU benchmark (see bench_report.h).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* gmtime_r */
#endif

#include "bench_report.h"

#include <jansson.h>
#include <time.h>

#include "bench_shape.h"

#define TARGET_TOKENS 32768
#define TARGET_SPARSITY 32
#define TARGET_SPEEDUP 5.0
#define TARGET_MATCH_FRACTION 0.8

static const char *const STAGE_NAMES[BENCH_STAGE_COUNT] = {
    "decode_step", "encode_queries", "encode_keys", "match", "attend", "dense_attend",
};

const char *bench_stage_name(bench_stage s)
{
    return s < BENCH_STAGE_COUNT ? STAGE_NAMES[s] : "?";
}

static const char *mode_name(ha_mode m)
{
    return m == HA_MODE_PAPER ? "paper" : "group";
}

double bench_fraction_of_floor(const bench_timing *t, double read_gbps)
{
    if (t->median_s <= 0.0 || read_gbps <= 0.0)
        return 0.0;
    return t->bytes / (read_gbps * 1e9) / t->median_s;
}

static double speedup(const bench_result *r)
{
    return r->stage[BENCH_DENSE].median_s / r->stage[BENCH_STEP].median_s;
}

/** Dense bytes over hash-step bytes: the speed-up if both ran at the same fraction of the floor. */
static double byte_ratio(const bench_result *r)
{
    return r->stage[BENCH_DENSE].bytes / r->stage[BENCH_STEP].bytes;
}

/* ---- table ----------------------------------------------------------------------------------- */

void bench_print_header(FILE *to)
{
    fprintf(to, "%-5s %3s %2s %6s %5s %3s | %8s %8s %7s %7s | %8s %8s %8s %8s | %s\n", "mode", "x", "B", "n",
            "kept", "L", "step_ms", "dense_ms", "speedup", "(bytes)", "encq_ms", "enck_ms", "match_ms", "attnd_ms",
            "% of DRAM floor: step encq enck match attnd dense");
    fprintf(to, "(preempted: involuntary context switches of this process while timing the row; many = other work "
                "shared the CPUs)\n");
}

void bench_print_row(FILE *to, const bench_result *r)
{
    const bench_timing *s = r->stage;
    fprintf(to, "%-5s %3d %2d %6lld %5lld %3d | %8.3f %8.3f %6.2fx %6.2fx | %8.3f %8.3f %8.3f %8.3f |", mode_name(r->mode),
            r->sparsity, r->batch, (long long)r->tokens, (long long)r->kept, r->layers, 1e3 * s[BENCH_STEP].median_s,
            1e3 * s[BENCH_DENSE].median_s, speedup(r), byte_ratio(r), 1e3 * s[BENCH_ENCODE_Q].median_s,
            1e3 * s[BENCH_ENCODE_K].median_s, 1e3 * s[BENCH_MATCH].median_s, 1e3 * s[BENCH_ATTEND].median_s);
    fprintf(to, "                  ");
    for (int i = 0; i < BENCH_STAGE_COUNT; i++)
        fprintf(to, " %4.0f", 100.0 * bench_fraction_of_floor(&s[i], r->read_gbps));
    fprintf(to, "  preempted %ld%s\n", r->preemptions, r->selection_ok ? "" : "  [selection counts wrong!]");
}

/** The stage (of encode q, encode k, match, attend) taking the most time. */
static bench_stage slowest_part(const bench_result *r, double *share)
{
    bench_stage worst = BENCH_ENCODE_Q;
    double sum = 0.0;
    for (int i = BENCH_ENCODE_Q; i <= BENCH_ATTEND; i++) {
        sum += r->stage[i].median_s;
        if (r->stage[i].median_s > r->stage[worst].median_s)
            worst = (bench_stage)i;
    }
    *share = sum > 0.0 ? r->stage[worst].median_s / sum : 0.0;
    return worst;
}

static int is_target_config(const bench_result *r)
{
    return r->tokens == TARGET_TOKENS && r->sparsity == TARGET_SPARSITY && r->mode == HA_MODE_PAPER;
}

void bench_print_targets(FILE *to, const bench_result *results, size_t count)
{
    int any = 0;
    for (size_t i = 0; i < count; i++) {
        const bench_result *r = &results[i];
        if (!is_target_config(r))
            continue;
        any = 1;
        double sp = speedup(r), share;
        double mf = bench_fraction_of_floor(&r->stage[BENCH_MATCH], r->read_gbps);
        bench_stage worst = slowest_part(r, &share);
        fprintf(to, "targets at n = %d, %dx, paper mode, B = %d:\n", TARGET_TOKENS, TARGET_SPARSITY, r->batch);
        fprintf(to, "  hash step >= %.0fx faster than dense: %.2fx -> %s (byte-floor ratio %.2fx; slowest stage %s, %.0f%% of "
                    "the stages' time)\n",
                TARGET_SPEEDUP, sp, sp >= TARGET_SPEEDUP ? "met" : "MISSED", byte_ratio(r), bench_stage_name(worst),
                100.0 * share);
        fprintf(to, "  match >= %.0f%% of the DRAM floor: %.0f%% -> %s\n", 100.0 * TARGET_MATCH_FRACTION, 100.0 * mf,
                mf >= TARGET_MATCH_FRACTION ? "met" : "MISSED");
    }
    if (!any)
        fprintf(to, "targets: n = %d, %dx, paper mode was not measured in this run\n", TARGET_TOKENS, TARGET_SPARSITY);
}

/* ---- JSON ------------------------------------------------------------------------------------ */

static json_t *timing_json(const bench_timing *t, double read_gbps)
{
    double floor_s = read_gbps > 0.0 ? t->bytes / (read_gbps * 1e9) : 0.0;
    return json_pack("{s:f, s:f, s:f, s:f, s:f}", "median_s", t->median_s, "min_s", t->min_s, "bytes", t->bytes,
                     "floor_s", floor_s, "fraction_of_floor", bench_fraction_of_floor(t, read_gbps));
}

static json_t *result_json(const bench_result *r)
{
    json_t *stages = json_object();
    for (int i = 0; i < BENCH_STAGE_COUNT; i++)
        json_object_set_new(stages, STAGE_NAMES[i], timing_json(&r->stage[i], r->read_gbps));
    double stage_sum = 0.0;
    for (int i = BENCH_ENCODE_Q; i <= BENCH_ATTEND; i++)
        stage_sum += r->stage[i].median_s;
    return json_pack("{s:s, s:i, s:f, s:i, s:I, s:I, s:i, s:f, s:f, s:o, s:f, s:f, s:f, s:b, s:f, s:I}", "mode",
                     mode_name(r->mode), "sparsity", r->sparsity, "heavy_fraction", 1.0 / r->sparsity, "batch", r->batch,
                     "tokens", (json_int_t)r->tokens, "kept", (json_int_t)r->kept, "layer_copies", r->layers,
                     "read_bandwidth_gbps", r->read_gbps, "working_set_bytes", r->working_set, "stages", stages, "speedup_vs_dense", speedup(r),
                     "byte_ratio_dense_over_step", byte_ratio(r), "stage_sum_s", stage_sum, "selection_counts_ok",
                     r->selection_ok, "step_vs_stages_max_rel_diff", r->step_vs_stages, "involuntary_context_switches",
                     (json_int_t)r->preemptions);
}

static json_t *targets_json(const bench_result *results, size_t count)
{
    json_t *list = json_array();
    for (size_t i = 0; i < count; i++) {
        const bench_result *r = &results[i];
        if (!is_target_config(r))
            continue;
        double sp = speedup(r), mf = bench_fraction_of_floor(&r->stage[BENCH_MATCH], r->read_gbps), share;
        bench_stage worst = slowest_part(r, &share);
        json_array_append_new(list, json_pack("{s:I, s:i, s:s, s:i, s:f, s:f, s:b, s:f, s:f, s:b, s:s, s:f}", "tokens",
                                              (json_int_t)r->tokens, "sparsity", r->sparsity, "mode", "paper", "batch",
                                              r->batch, "speedup", sp, "speedup_target", TARGET_SPEEDUP, "speedup_met",
                                              sp >= TARGET_SPEEDUP, "match_fraction_of_floor", mf, "match_target",
                                              TARGET_MATCH_FRACTION, "match_met", mf >= TARGET_MATCH_FRACTION,
                                              "slowest_stage", bench_stage_name(worst), "slowest_stage_share", share));
    }
    return list;
}

static void utc_now(char *buf, size_t size)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int bench_write_json(const char *path, const bench_context *ctx, const bench_result *results, size_t count)
{
    char date[32];
    utc_now(date, sizeof date);
    json_t *machine = json_pack("{s:s, s:i, s:I, s:f, s:I, s:i, s:f, s:f}", "cpu_model", ctx->machine.cpu_model,
                                "threads", ctx->machine.threads, "llc_bytes", (json_int_t)ctx->machine.llc_bytes,
                                "read_bandwidth_gbps", ctx->read_gbps, "bandwidth_buffer_bytes",
                                (json_int_t)ctx->bandwidth_bytes, "bandwidth_passes", ctx->bandwidth_passes,
                                "load_average_start", ctx->load_start, "load_average_end", ctx->load_end);
    json_t *shape = json_pack("{s:i, s:i, s:i, s:s, s:i, s:i, s:i, s:i, s:i}", "q_heads", BENCH_Q_HEADS, "kv_heads",
                              BENCH_KV_HEADS, "head_dim", BENCH_HEAD_DIM, "kv_dtype", "bf16", "bits", BENCH_BITS,
                              "mlp_depth", BENCH_MLP_DEPTH, "mlp_hidden", BENCH_MLP_HIDDEN, "sink", BENCH_SINK, "local", BENCH_LOCAL);
    json_t *list = json_array();
    for (size_t i = 0; i < count; i++)
        json_array_append_new(list, result_json(&results[i]));
    json_t *root = json_pack("{s:s, s:s, s:s, s:s, s:o, s:{s:s, s:s}, s:o, s:{s:i, s:i, s:s}, s:o, s:o}", "benchmark",
                             "bench_cpu", "hashattn_version", ha_version_string(), "date_utc", date, "command",
                             ctx->command, "machine", machine, "backend", "name", ctx->backend_name, "description",
                             ctx->backend_description, "shape", shape, "timing", "reps", ctx->reps, "warmup",
                             ctx->warmup, "statistic", "median and min over reps of (round time / layer copies)",
                             "results", list, "targets", targets_json(results, count));
    if (!root) {
        fprintf(stderr, "bench_cpu: building the JSON report failed\n");
        return -1;
    }
    int rc = json_dump_file(root, path, JSON_INDENT(2) | JSON_REAL_PRECISION(6));
    json_decref(root);
    if (rc != 0) {
        fprintf(stderr, "bench_cpu: cannot write %s\n", path);
        return -1;
    }
    return 0;
}
