/*
 * cpu_match.c — the match stage: per (sequence, selection head) one histogram pass over the
 * candidates' similarities, the threshold score that the heavy budget reaches, a partial backward
 * pass for the tie rule (equal scores: more recent first), and one compaction pass. No sort and no
 * per-token storage: similarities are recomputed per block by the ISA kernel (XOR + popcount).
 */
#include <omp.h>
#include <string.h>

#include "cpu_internal.h"

typedef struct match_job {
    const cpu_kernels *k;
    const ha_match_args *a;
    int32_t b;
    int32_t s;
    cpu_score_args score;
} match_job;

/* Scores tokens [t, t + n), which lie in one page; returns their first key code. */
static void score_run(match_job *job, int64_t t, int32_t n, uint32_t *scores)
{
    job->score.keys = ha_rows_ptr(&job->a->k_codes, sizeof(uint32_t), job->b, job->s, t);
    job->k->match_scores(&job->score, n, scores);
}

/* Length of the run starting at t going up (within [t, hi), one page, at most a block). */
static int32_t run_up(const ha_rows *r, int64_t t, int64_t hi)
{
    int64_t end = hi - t < CPU_MATCH_BLOCK ? hi : t + CPU_MATCH_BLOCK;
    if (r->page_size > 0) {
        int64_t page_end = (t / r->page_size + 1) * r->page_size;
        end = end < page_end ? end : page_end;
    }
    return (int32_t)(end - t);
}

/* Start of the run ending at hi going down (within [lo, hi), one page, at most a block). */
static int64_t run_down(const ha_rows *r, int64_t lo, int64_t hi)
{
    int64_t start = hi - lo < CPU_MATCH_BLOCK ? lo : hi - CPU_MATCH_BLOCK;
    if (r->page_size > 0) {
        int64_t page_start = (hi - 1) / r->page_size * r->page_size;
        start = start > page_start ? start : page_start;
    }
    return start;
}

/* Histogram of the candidates' scores: CPU_HIST_COPIES interleaved copies summed into hist[0..]. */
static void histogram(match_job *job, int64_t lo, int64_t hi, int32_t max_score, uint32_t *hist)
{
    size_t bins = (size_t)max_score + 1;
    memset(hist, 0, CPU_HIST_COPIES * bins * sizeof(uint32_t));
    uint32_t scores[CPU_MATCH_BLOCK];
    for (int64_t t = lo; t < hi;) {
        int32_t n = run_up(&job->a->k_codes, t, hi);
        score_run(job, t, n, scores);
        for (int32_t i = 0; i < n; i++)
            hist[(size_t)(i % CPU_HIST_COPIES) * bins + scores[i]]++;
        t += n;
    }
    for (int32_t c = 1; c < CPU_HIST_COPIES; c++)
        for (size_t v = 0; v < bins; v++)
            hist[v] += hist[(size_t)c * bins + v];
}

/* The lowest index among the `wanted` most recent candidates scoring exactly `threshold`. */
static int64_t tie_start(match_job *job, int64_t lo, int64_t hi, uint32_t threshold, int64_t wanted)
{
    uint32_t scores[CPU_MATCH_BLOCK];
    int64_t taken = 0;
    for (int64_t top = hi; top > lo;) {
        int64_t start = run_down(&job->a->k_codes, lo, top);
        score_run(job, start, (int32_t)(top - start), scores);
        for (int64_t i = top - start - 1; i >= 0; i--)
            if (scores[i] == threshold && ++taken == wanted)
                return start + i;
        top = start;
    }
    return lo; /* unreachable: the histogram counted at least `wanted` */
}

/* Writes the kept indices of (b, s) in ascending order; returns how many. */
static int64_t select_one(match_job *job, int64_t n, int32_t max_score, uint32_t *hist, int32_t *out)
{
    const ha_match_args *a = job->a;
    int64_t kept = ha_kept_for_length(n, a->sink, a->local, a->heavy_fraction, a->heavy_count);
    if (kept == n) {
        for (int64_t j = 0; j < n; j++)
            out[j] = (int32_t)j;
        return n;
    }
    /* n > sink + local + heavy: the candidates [sink, local_start) outnumber heavy. */
    int64_t heavy = ha_heavy_for_length(n, a->heavy_fraction, a->heavy_count);
    int64_t lo = a->sink, hi = ha_local_start(n, a->sink, a->local);
    int64_t count = 0;
    for (int64_t j = 0; j < lo; j++)
        out[count++] = (int32_t)j;
    if (heavy > 0) {
        histogram(job, lo, hi, max_score, hist);
        uint32_t threshold = (uint32_t)max_score;
        int64_t above = 0; /* candidates scoring higher than threshold */
        while (threshold > 0 && above + hist[threshold] < heavy)
            above += hist[threshold--];
        int64_t first_tie = tie_start(job, lo, hi, threshold, heavy - above);
        uint32_t scores[CPU_MATCH_BLOCK];
        for (int64_t t = lo; t < hi;) {
            int32_t run = run_up(&a->k_codes, t, hi);
            score_run(job, t, run, scores);
            count += job->k->match_compact(scores, run, (int32_t)t, threshold, first_tie, out + count);
            t += run;
        }
    }
    for (int64_t j = hi; j < n; j++)
        out[count++] = (int32_t)j;
    return count;
}

ha_status cpu_match(const cpu_ctx *ctx, const cpu_plan *plan, const ha_match_args *a)
{
    if (a->sel_heads < 1 || a->q_heads % a->sel_heads != 0 || a->bits < 1 || (int64_t)a->words * 32 < a->bits)
        return cpu_fail(HA_ERR_SHAPE, "cpu_avx512 match: q_heads %d, sel_heads %d, bits %d, words %d do not fit "
                        "together", a->q_heads, a->sel_heads, a->bits, a->words);
    int32_t group = a->q_heads / a->sel_heads;
    if ((int64_t)group * a->bits > plan->max_score)
        return cpu_fail(HA_ERR_STATE, "cpu_avx512 match: scores up to %lld exceed this plan's histogram (%d)",
                        (long long)group * a->bits, plan->max_score);
    int64_t items = (int64_t)a->batch * a->sel_heads;
#pragma omp parallel for schedule(dynamic) num_threads(plan->threads)
    for (int64_t item = 0; item < items; item++) {
        match_job job = {
            .k = ctx->k, .a = a, .b = (int32_t)(item / a->sel_heads), .s = (int32_t)(item % a->sel_heads),
            .score = { .group = group, .words = a->words, .bits = a->bits, .stride_token = a->k_codes.stride_token },
        };
        job.score.q = a->q_codes + ((int64_t)job.b * a->q_heads + (int64_t)job.s * group) * a->words;
        int64_t n = a->seq_lens[job.b];
        n = n < 0 ? 0 : n > plan->desc.max_tokens ? plan->desc.max_tokens : n;
        uint32_t *hist = (uint32_t *)(cpu_thread_scratch(plan, omp_get_thread_num()) + plan->hist_offset);
        a->counts[item] = (int32_t)select_one(&job, n, group * a->bits, hist, a->indices + item * a->index_stride);
    }
    return HA_OK;
}
