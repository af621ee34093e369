/*
 * bench_machine.c — machine description, DRAM read-bandwidth probe and cache eviction for the CPU
 * benchmark (see bench_machine.h).
 */
#include "bench_machine.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_stats.h"

#define DEFAULT_LLC_BYTES ((size_t)32 << 20)
#define BLOCK_WORDS 16 /* 128 bytes read per loop iteration: eight 16-byte vectors */

/* GNU vector extension (gcc and clang): 16-byte integer vectors, SSE2 on every x86-64, so the probe
 * needs no special compiler flags and still issues wide loads. */
typedef uint64_t u64x2 __attribute__((vector_size(16)));

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
}

static void read_cpu_model(char *out, size_t size)
{
    snprintf(out, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) != 0)
            continue;
        const char *colon = strchr(line, ':');
        if (!colon)
            continue;
        colon++;
        while (*colon == ' ' || *colon == '\t')
            colon++;
        snprintf(out, size, "%s", colon);
        trim(out);
        break;
    }
    fclose(f);
}

/** sysfs writes cache sizes like "32768K". */
static size_t read_llc_bytes(void)
{
    FILE *f = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (!f)
        return DEFAULT_LLC_BYTES;
    unsigned long long value = 0;
    char unit = '\0';
    int got = fscanf(f, "%llu%c", &value, &unit);
    fclose(f);
    if (got < 1 || value == 0)
        return DEFAULT_LLC_BYTES;
    switch (unit) {
    case 'K': case 'k': value <<= 10; break;
    case 'M': case 'm': value <<= 20; break;
    case 'G': case 'g': value <<= 30; break;
    default: break;
    }
    return (size_t)value;
}

void bench_machine_describe(bench_machine *m)
{
    memset(m, 0, sizeof(*m));
    read_cpu_model(m->cpu_model, sizeof m->cpu_model);
    m->threads = omp_get_max_threads();
    m->llc_bytes = read_llc_bytes();
}

double bench_load_average(void)
{
    double load = -1.0;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &load) != 1)
            load = -1.0;
        fclose(f);
    }
    return load;
}

/* ---- the read kernel shared by the probe and the evictor ------------------------------------ */

static uint64_t *alloc_touched(size_t words)
{
    size_t bytes = words * sizeof(uint64_t);
    bytes = (bytes + 63) / 64 * 64;
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf)
        return NULL;
    /* First touch by the threads that will read each part (same static schedule as read_reduce). */
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < words; i++)
        buf[i] = i * 0x9E3779B97F4A7C15ull;
    return buf;
}

/** Sum of all words, read by every thread; the result only keeps the reads from being optimized away. */
static uint64_t read_reduce(const uint64_t *buf, size_t words)
{
    const size_t blocks = words / BLOCK_WORDS;
    const u64x2 *v = (const u64x2 *)(const void *)buf;
    uint64_t total = 0;
#pragma omp parallel reduction(+ : total)
    {
        u64x2 a0 = {0, 0}, a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
#pragma omp for schedule(static)
        for (size_t i = 0; i < blocks; i++) {
            const u64x2 *p = v + i * 8;
            a0 += p[0];
            a1 += p[1];
            a2 += p[2];
            a3 += p[3];
            a4 += p[4];
            a5 += p[5];
            a6 += p[6];
            a7 += p[7];
        }
        u64x2 s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
        total += s[0] + s[1];
    }
    for (size_t i = blocks * BLOCK_WORDS; i < words; i++)
        total += buf[i];
    return total;
}

static volatile uint64_t g_sink; /* where read results go so that the reads happen */

double bench_read_bandwidth_gbps(size_t bytes, int passes)
{
    size_t words = bytes / sizeof(uint64_t);
    uint64_t *buf = alloc_touched(words);
    if (!buf)
        return 0.0;
    g_sink = read_reduce(buf, words); /* one untimed pass: page tables, frequency ramp */
    double best = 0.0;
    for (int p = 0; p < passes; p++) {
        double t0 = bench_now();
        g_sink = read_reduce(buf, words);
        double dt = bench_now() - t0;
        double gbps = (double)(words * sizeof(uint64_t)) / dt / 1e9;
        if (gbps > best)
            best = gbps;
    }
    free(buf);
    return best;
}

/* ---- eviction -------------------------------------------------------------------------------- */

int bench_evictor_init(bench_evictor *e, size_t bytes)
{
    e->words = bytes / sizeof(uint64_t);
    e->buf = alloc_touched(e->words);
    return e->buf ? 0 : -1;
}

void bench_evictor_run(const bench_evictor *e)
{
    g_sink = read_reduce(e->buf, e->words);
}

void bench_evictor_free(bench_evictor *e)
{
    free(e->buf);
    e->buf = NULL;
    e->words = 0;
}
