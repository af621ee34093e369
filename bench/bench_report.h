/*
 * bench_report.h — the CPU benchmark's results: one record per configuration, printed as a table
 * and written as JSON, with the two targets evaluated at n = 32K, 32×, paper mode.
 */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "bench_machine.h"
#include "hashattn.h"

typedef enum bench_stage {
    BENCH_STEP = 0,     /* ha_decode_step: the whole hash step (1 new key, queries, match, attend) */
    BENCH_ENCODE_Q,     /* ha_encode_queries                                                        */
    BENCH_ENCODE_K,     /* ha_cache_encode_keys, 1 new token                                        */
    BENCH_MATCH,        /* ha_match                                                                 */
    BENCH_ATTEND,       /* ha_attend over the match's selection                                     */
    BENCH_DENSE,        /* ha_dense_attend: the baseline                                            */
    BENCH_STAGE_COUNT
} bench_stage;

typedef struct bench_timing {
    double median_s; /**< per call */
    double min_s;
    double bytes;    /**< bytes the call must read (bench_shape.h) */
} bench_timing;

typedef struct bench_result {
    ha_mode mode;
    int sparsity;          /**< 32 or 16: heavy_fraction = 1/sparsity             */
    int32_t batch;
    int64_t tokens;
    int64_t kept;          /**< kept tokens per (sequence, selection head)        */
    int32_t layers;        /**< independent copies rotated over                   */
    double working_set;    /**< bytes of one round over all copies                */
    bench_timing stage[BENCH_STAGE_COUNT];
    int selection_ok;      /**< every count equals kept                           */
    double step_vs_stages; /**< max |out_step - out_stages| / max |out_stages|    */
    long preemptions;      /**< involuntary context switches while timing: > 0 means other work ran */
    double read_gbps;      /**< DRAM read bandwidth probed right before and after this row (the higher):
                                the floors of this row; it drifts over a run on a shared machine      */
} bench_result;

/** The benchmark's measured context, for the report. */
typedef struct bench_context {
    bench_machine machine;
    double read_gbps; /**< probed once at the start (each row has its own, see bench_result) */
    size_t bandwidth_bytes;
    int bandwidth_passes;
    const char *backend_name;
    const char *backend_description;
    int reps;
    int warmup;
    const char *command; /**< the command line, for the record */
    double load_start;   /**< 1-minute load average before and after the run */
    double load_end;
} bench_context;

const char *bench_stage_name(bench_stage s);
/** Floor time / measured median, with the measured bandwidth. */
double bench_fraction_of_floor(const bench_timing *t, double read_gbps);

void bench_print_header(FILE *to);
void bench_print_row(FILE *to, const bench_result *r);
/** Prints the two targets for every batch measured at n = 32K, 32×, paper mode. */
void bench_print_targets(FILE *to, const bench_result *results, size_t count);
/** Writes everything as JSON; 0 on success, -1 (with a message on stderr) on failure. */
int bench_write_json(const char *path, const bench_context *ctx, const bench_result *results, size_t count);

#endif /* BENCH_REPORT_H */
