/*
 * ha_eval_report.c — the progress line of ha-eval's long phases.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif

#include <time.h>
#include <unistd.h>

#include "ha_eval.h"

double eval_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void eval_progress(const char *phase, int64_t done, int64_t total, double started_s)
{
    static double last_s = 0.0;
    const int tty = isatty(fileno(stderr));
    const double now = eval_now_s(), elapsed = now - started_s;
    const int finished = done >= total;
    /* a terminal gets a line redrawn twice a second; a log gets one line every 15 s, and the last */
    if (!finished && now - last_s < (tty ? 0.5 : 15.0))
        return;
    last_s = now;
    double eta = done > 0 ? elapsed * (double)(total - done) / (double)done : 0.0;
    fprintf(stderr, "%s%-28s %8lld / %-8lld %5.1f%%  %6.1f s elapsed, ETA %6.1f s%s", tty ? "\r" : "", phase,
            (long long)done, (long long)total, total ? 100.0 * (double)done / (double)total : 100.0, elapsed, eta,
            tty && !finished ? "" : "\n");
    fflush(stderr);
}
