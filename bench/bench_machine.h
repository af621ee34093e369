/*
 * bench_machine.h — what the CPU benchmark needs to know about the machine it runs on: the CPU
 * model, the thread count, the last-level cache size, the DRAM read bandwidth (measured in the same
 * process, so that the byte floors of the benchmark refer to this run), and a way to push the
 * benchmark's data out of the caches between timed rounds.
 */
#ifndef BENCH_MACHINE_H
#define BENCH_MACHINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct bench_machine {
    char cpu_model[160]; /**< "model name" of /proc/cpuinfo, or "unknown" */
    int threads;         /**< omp_get_max_threads()                        */
    size_t llc_bytes;    /**< L3 of cpu0 from sysfs; 32 MiB when unknown    */
} bench_machine;

/** Fills m from /proc/cpuinfo, sysfs and OpenMP. Never fails (unknowns get defaults). */
void bench_machine_describe(bench_machine *m);

/** 1-minute load average from /proc/loadavg (-1 when unknown): other work on the machine skews timings. */
double bench_load_average(void);

/**
 * DRAM read bandwidth in GB/s (1e9 bytes/s): all OpenMP threads read-reduce a buffer of `bytes`
 * (first touched in parallel, so pages are spread as the threads will read them), `passes` times;
 * the best pass counts. Returns 0 when the buffer cannot be allocated.
 */
double bench_read_bandwidth_gbps(size_t bytes, int passes);

/** A buffer read through between timed rounds so that no round finds the previous one's data in cache. */
typedef struct bench_evictor {
    uint64_t *buf;
    size_t words;
} bench_evictor;

/** Allocates and touches `bytes` (a few times the LLC). Returns 0 on success, -1 when out of memory. */
int bench_evictor_init(bench_evictor *e, size_t bytes);
/** Reads the whole buffer with all threads. */
void bench_evictor_run(const bench_evictor *e);
void bench_evictor_free(bench_evictor *e);

#endif /* BENCH_MACHINE_H */
