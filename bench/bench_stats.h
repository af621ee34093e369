/*
 * bench_stats.h — the benchmark's clock and the summary of repeated timings.
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

/** Seconds on CLOCK_MONOTONIC. */
double bench_now(void);

/** Median and minimum of n > 0 samples (reorders samples). */
void bench_summarize(double *samples, int n, double *median, double *min);

#endif /* BENCH_STATS_H */
