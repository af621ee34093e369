/*
 * cpu_match.c — the match stage, per (sequence, selection head) item. No sort.
 *
 * Usually one streaming pass over the key codes (XOR + popcount, ISA kernel) keeps only the
 * candidates scoring at least a floor t_low, with their byte scores, in the thread's plan scratch:
 * the floor is the threshold of the thread's previous item minus a margin, and rises whenever the
 * candidates reach 4 × heavy (to a score that the candidates seen so far already reach `heavy`
 * times, so the final threshold is never below it). Over those few candidates a histogram gives the
 * threshold score that the heavy budget reaches, a backward pass applies the tie rule (equal
 * scores: more recent first), and a compaction writes the selection. The pass is bound by reading
 * the codes, and the work after it is small. The compaction is deferred to the thread's next item,
 * after that item's first slice of codes, so that it overlaps the code stream (run between items,
 * such work adds all its time: nothing streams meanwhile). If the floor was too high
 * (fewer than heavy candidates) the item is redone with the floor 2, 4, … lower, down to 0 (its
 * codes are in cache).
 *
 * Otherwise (scores wider than a byte, budgets above about an eighth of the tokens, a buffer that
 * cannot be thinned) every candidate is scored into a score buffer and the same histogram, tie search and
 * compaction run over all of them.
 *
 * With fewer (sequence, head) items than threads, each item's candidates are split into chunks:
 * chunk histograms in parallel; per item the threshold, the chunk holding the tie boundary and
 * every chunk's output offset; then every chunk compacts its selection straight into place. A chunk
 * is scored again in each of those phases (they may run on different threads).
 */
#include <omp.h>
#include <string.h>

#include "cpu_internal.h"

/* Shortest candidate chunk worth a thread of its own. */
#define SPLIT_MIN_CANDIDATES 4096

/* An item's compaction of its `count` candidates (those above threshold, ties from first_tie) into
 * out, left to run during the thread's next item. count 0: nothing pending. */
typedef struct deferred_compact {
    const uint8_t *score;
    const int32_t *idx;
    int64_t count;
    uint32_t threshold;
    int64_t first_tie;
    int32_t *out;
} deferred_compact;

typedef struct match_job {
    const cpu_kernels *k;
    const ha_match_args *a;
    int32_t b;
    int32_t s;
    cpu_score_args score;
    void *scores;        /**< this thread's score buffer: max_tokens scores of score.score_bytes */
    uint32_t *hist;      /**< this thread's CPU_HIST_COPIES histograms                          */
    int32_t *cand_idx;   /**< this thread's candidates: token indices ...                       */
    uint8_t *cand_score; /**< ... and their byte scores, cand_cap of each (0: no candidate path) */
    int64_t cand_cap;
    uint32_t floor_hint; /**< where the next item's candidate floor starts                     */
    /** The previous item's compaction, run during this item's gather, and where this item leaves its
     *  own (both NULL: each item compacts at once). */
    deferred_compact *pending;
    deferred_compact *defer;
} match_job;

/* What the budget rule makes of one (b, s): keep all n, or sinks [0, lo) + heavy of the candidates
 * [lo, hi) + locals [hi, n). */
typedef struct item_geometry {
    int64_t n;
    int64_t heavy;
    int64_t lo;
    int64_t hi;
    int keep_all;
} item_geometry;

/* The job of one item; buffer (0 or 1) picks the thread's candidate buffer. */
static match_job make_job(const cpu_ctx *ctx, const cpu_plan *plan, const ha_match_args *a, int64_t item, int buffer)
{
    int32_t group = a->q_heads / a->sel_heads;
    char *scratch = cpu_thread_scratch(plan, omp_get_thread_num());
    match_job job = {
        .k = ctx->k, .a = a, .b = (int32_t)(item / a->sel_heads), .s = (int32_t)(item % a->sel_heads),
        .score = { .group = group, .words = a->words, .bits = a->bits, .stride_token = a->k_codes.stride_token,
                   .score_bytes = cpu_score_bytes((int64_t)group * a->bits) },
        .scores = scratch + plan->score_offset, .hist = (uint32_t *)(scratch + plan->hist_offset),
        .cand_idx = (int32_t *)(scratch + plan->cand_idx_offset) + buffer * plan->cand_cap,
        .cand_score = (uint8_t *)scratch + plan->cand_score_offset + buffer * plan->cand_cap,
        .cand_cap = plan->cand_cap,
    };
    job.score.q = a->q_codes + ((int64_t)job.b * a->q_heads + (int64_t)job.s * group) * a->words;
    return job;
}

static item_geometry geometry(const cpu_plan *plan, const ha_match_args *a, int32_t b)
{
    item_geometry g;
    g.n = a->seq_lens[b];
    g.n = g.n < 0 ? 0 : g.n > plan->desc.max_tokens ? plan->desc.max_tokens : g.n;
    g.keep_all = ha_kept_for_length(g.n, a->sink, a->local, a->heavy_fraction, a->heavy_count) == g.n;
    g.heavy = ha_heavy_for_length(g.n, a->heavy_fraction, a->heavy_count);
    g.lo = a->sink;
    g.hi = ha_local_start(g.n, a->sink, a->local);
    return g; /* unless keep_all: n > sink + local + heavy, so the candidates outnumber heavy */
}

/* Scores the tokens [lo, hi) into job->scores[0, hi - lo), one page run at a time. */
static void score_range(match_job *job, int64_t lo, int64_t hi)
{
    const ha_rows *r = &job->a->k_codes;
    char *out = job->scores;
    for (int64_t t = lo; t < hi;) {
        int64_t end = hi;
        if (r->page_size > 0) {
            int64_t page_end = (t / r->page_size + 1) * r->page_size;
            end = end < page_end ? end : page_end;
        }
        job->score.keys = ha_rows_ptr(r, sizeof(uint32_t), job->b, job->s, t);
        job->k->match_scores(&job->score, (int32_t)(end - t), out + (t - lo) * job->score.score_bytes);
        t = end;
    }
}

/* The threshold over the scored candidates (count of them): the highest score whose count(score ≥
 * it) reaches heavy; *above = count(score >). Histogram passes go down from the top bins and stop
 * once the threshold is found. */
static uint32_t find_threshold(match_job *job, const void *scores, int32_t count, int32_t max_score, int64_t heavy,
                               int64_t *above)
{
    uint32_t *hist = job->hist;
    memset(hist, 0, ((size_t)max_score + 1) * sizeof(uint32_t));
    int64_t sum = 0;
    for (int32_t hi = max_score;;) {
        int32_t lo = job->k->match_histogram(scores, job->score.score_bytes, count, hi, max_score + 1, hist);
        for (int32_t v = hi; v >= lo; v--) {
            if (v == 0 || sum + hist[v] >= heavy) {
                *above = sum;
                return (uint32_t)v;
            }
            sum += hist[v];
        }
        hi = lo - 1;
    }
}

/* The full histogram of the scored candidates into job->hist[0..max_score]. */
static void full_histogram(match_job *job, int32_t count, int32_t max_score)
{
    memset(job->hist, 0, ((size_t)max_score + 1) * sizeof(uint32_t));
    for (int32_t hi = max_score; hi >= 0;)
        hi = job->k->match_histogram(job->scores, job->score.score_bytes, count, hi, max_score + 1, job->hist) - 1;
}

/* The lowest index among the `wanted` most recent tokens of [lo, hi) scoring exactly `threshold`
 * (scored in job->scores). */
static int64_t tie_start(match_job *job, int64_t lo, int64_t hi, uint32_t threshold, int64_t wanted)
{
    int32_t at = job->k->match_tie_start(job->scores, job->score.score_bytes, (int32_t)(hi - lo), threshold, wanted);
    return at < 0 ? lo : lo + at; /* at < 0 unreachable: the histogram counted at least `wanted` */
}

/* Writes the selected tokens of [lo, hi) (scored in job->scores) ascending: score > threshold, or ==
 * threshold from first_tie up; returns how many. */
static int64_t compact(match_job *job, int64_t lo, int64_t hi, uint32_t threshold, int64_t first_tie, int32_t *out)
{
    return job->k->match_compact(job->scores, job->score.score_bytes, (int32_t)(hi - lo), (int32_t)lo, NULL, threshold,
                                 first_tie - lo, out);
}

/* Sinks, then locals after the room for `heavy` candidates (all of [0, n) when keep_all); returns
 * the row's count. */
static int64_t write_fixed(const item_geometry *g, int32_t *out)
{
    if (g->keep_all) {
        for (int64_t j = 0; j < g->n; j++)
            out[j] = (int32_t)j;
        return g->n;
    }
    for (int64_t j = 0; j < g->lo; j++)
        out[j] = (int32_t)j;
    int32_t *locals = out + g->lo + g->heavy;
    for (int64_t j = g->hi; j < g->n; j++)
        locals[j - g->hi] = (int32_t)j;
    return g->lo + g->heavy + (g->n - g->hi);
}

/* ---- candidates above a floor -------------------------------------------------------------------- */

/* Raises *floor to the highest score that `heavy` of the n candidates reach and drops those below it
 * (stable); returns the new count, or -1 when that frees no room (too many ties at the top). */
static int64_t thin_candidates(match_job *job, int64_t n, int32_t max_score, int64_t heavy, uint32_t *floor)
{
    int64_t above;
    uint32_t raised = find_threshold(job, job->cand_score, (int32_t)n, max_score, heavy, &above);
    if (raised <= *floor)
        return -1;
    *floor = raised;
    return job->k->match_filter(job->cand_idx, job->cand_score, (int32_t)n, raised);
}

/* Runs a deferred compaction (d NULL or empty: nothing to do). */
static void run_compact(const cpu_kernels *k, deferred_compact *d)
{
    if (d && d->count > 0)
        k->match_compact(d->score, 1, (int32_t)d->count, 0, d->idx, d->threshold, d->first_tie, d->out);
    if (d)
        d->count = 0;
}

/* The candidates of [g->lo, g->hi) scoring at least floor, into the thread's buffer, page run by page
 * run and slice by slice; returns how many, or -1 when the buffer overflowed and could not be thinned
 * (floor may have risen). */
static int64_t gather_candidates(match_job *job, const item_geometry *g, int32_t max_score, uint32_t *floor)
{
    const ha_rows *r = &job->a->k_codes;
    int64_t n = 0;
    for (int64_t t = g->lo; t < g->hi;) {
        int64_t end = g->hi - t > CPU_CAND_SLICE ? t + CPU_CAND_SLICE : g->hi;
        if (r->page_size > 0) {
            int64_t page_end = (t / r->page_size + 1) * r->page_size;
            end = end < page_end ? end : page_end;
        }
        job->score.keys = ha_rows_ptr(r, sizeof(uint32_t), job->b, job->s, t);
        n += job->k->match_candidates(&job->score, (int32_t)(end - t), (int32_t)t, *floor, job->cand_idx + n,
                                      job->cand_score + n);
        run_compact(job->k, job->pending); /* the previous item's, while the next slice is prefetched */
        /* Thinned once the candidates reach 4 × heavy: a floor too low for the item (0 on a thread's
         * first item) rises after a few slices, and each thinning filters few candidates. */
        if (n > 4 * g->heavy + CPU_CAND_SLICE && (n = thin_candidates(job, n, max_score, g->heavy, floor)) < 0)
            return -1;
        if (n > job->cand_cap - CPU_CAND_SLICE - 16)
            return -1;
        t = end;
    }
    return n;
}

/* Gathers the candidates of one item and leaves its selection in job->defer (or makes it at once);
 * returns 0 when the item needs the full path. */
static int select_from_candidates(match_job *job, const item_geometry *g, int32_t max_score, int32_t *out)
{
    if (job->cand_cap == 0 || job->score.score_bytes != 1 || 4 * g->heavy > job->cand_cap)
        return 0;
    uint32_t floor = job->floor_hint;
    int64_t n = gather_candidates(job, g, max_score, &floor);
    /* The floor was above the threshold: again a little lower (the codes are in cache now), then 0. */
    for (uint32_t lower = 2; n >= 0 && n < g->heavy && floor > 0; lower *= 2) {
        floor = floor > lower ? floor - lower : 0;
        n = gather_candidates(job, g, max_score, &floor);
    }
    if (n < g->heavy)
        return 0;
    int64_t above;
    uint32_t threshold = find_threshold(job, job->cand_score, (int32_t)n, max_score, g->heavy, &above);
    int32_t first_tie = job->k->match_tie_start(job->cand_score, 1, (int32_t)n, threshold, g->heavy - above);
    deferred_compact d = { job->cand_score, job->cand_idx, n, threshold, first_tie, out };
    if (job->defer)
        *job->defer = d;
    else
        run_compact(job->k, &d);
    /* The same item at the next step, or the thread's next item (a neighbouring head or sequence),
     * has a threshold close to this one. A margin of a sixteenth of the score range (2 for 32-bit
     * codes): with a thirty-second (1), a fifth of the bench's items (paper mode, n 32K) were redone;
     * with 2, 3 % are (match about 5 % faster). */
    uint32_t margin = (uint32_t)(max_score / 16 > 2 ? max_score / 16 : 2);
    job->floor_hint = threshold > margin ? threshold - margin : 0;
    return 1;
}

/* The whole selection of one item on one thread. */
static int64_t select_one(match_job *job, const item_geometry *g, int32_t max_score, int32_t *out)
{
    /* The index row is written last but fetched for writing now, while the codes stream in. */
    int64_t row_bytes = (g->keep_all ? g->n : g->lo + g->heavy + (g->n - g->hi)) * (int64_t)sizeof(int32_t);
    for (int64_t off = 0; off < row_bytes; off += 64)
        __builtin_prefetch((const char *)out + off, 1);
    int64_t count = write_fixed(g, out);
    if (!g->keep_all && g->heavy > 0 && !select_from_candidates(job, g, max_score, out + g->lo)) {
        score_range(job, g->lo, g->hi);
        int64_t above;
        uint32_t threshold = find_threshold(job, job->scores, (int32_t)(g->hi - g->lo), max_score, g->heavy, &above);
        int64_t first_tie = tie_start(job, g->lo, g->hi, threshold, g->heavy - above);
        compact(job, g->lo, g->hi, threshold, first_tie, out + g->lo);
    }
    run_compact(job->k, job->pending); /* when this item gathered no candidates */
    return count;
}

/* ---- split items ------------------------------------------------------------------------------ */

typedef struct split_state {
    int32_t splits;
    size_t bins;
    uint32_t *chunk_hist;   /**< [items × splits][bins]  */
    int64_t *chunk_offset;  /**< [items × splits]: where a chunk's selection starts after the sinks */
    uint32_t *threshold;    /**< [items]                 */
    int64_t *first_tie;     /**< [items]                 */
} split_state;

static void chunk_range(const item_geometry *g, int32_t splits, int32_t c, int64_t *lo, int64_t *hi)
{
    *lo = g->lo + (g->hi - g->lo) * c / splits;
    *hi = g->lo + (g->hi - g->lo) * (c + 1) / splits;
}

/* The threshold from a full histogram: the highest score whose count(score ≥ it) reaches heavy;
 * *above = count(score >). */
static uint32_t threshold_of(const uint32_t *hist, int32_t max_score, int64_t heavy, int64_t *above)
{
    uint32_t threshold = (uint32_t)max_score;
    int64_t sum = 0;
    while (threshold > 0 && sum + hist[threshold] < heavy)
        sum += hist[threshold--];
    *above = sum;
    return threshold;
}

/* Threshold, tie boundary and chunk offsets of one item from its chunk histograms. */
static void plan_item(match_job *job, const item_geometry *g, const split_state *st, int64_t item, int32_t max_score)
{
    uint32_t *total = job->hist;
    const uint32_t *first = st->chunk_hist + (size_t)item * st->splits * st->bins;
    memset(total, 0, st->bins * sizeof(uint32_t));
    for (int32_t c = 0; c < st->splits; c++)
        for (size_t v = 0; v < st->bins; v++)
            total[v] += first[(size_t)c * st->bins + v];
    int64_t above;
    uint32_t threshold = threshold_of(total, max_score, g->heavy, &above);
    /* Ties are taken from the most recent chunk down; one chunk holds the boundary. */
    int64_t wanted = g->heavy - above, tie_chunk = 0, first_tie = g->lo, at_tie_chunk = 0;
    for (int32_t c = st->splits - 1; c >= 0; c--) {
        int64_t ties = first[(size_t)c * st->bins + threshold];
        if (wanted <= ties) {
            int64_t lo, hi;
            chunk_range(g, st->splits, c, &lo, &hi);
            tie_chunk = c;
            at_tie_chunk = wanted;
            score_range(job, lo, hi);
            first_tie = tie_start(job, lo, hi, threshold, wanted);
            break;
        }
        wanted -= ties;
    }
    int64_t offset = 0;
    for (int32_t c = 0; c < st->splits; c++) {
        const uint32_t *h = first + (size_t)c * st->bins;
        st->chunk_offset[item * st->splits + c] = offset;
        for (int32_t v = (int32_t)threshold + 1; v <= max_score; v++)
            offset += h[v];
        offset += c > tie_chunk ? (int64_t)h[threshold] : c == tie_chunk ? at_tie_chunk : 0;
    }
    st->threshold[item] = threshold;
    st->first_tie[item] = first_tie;
}

/** Sets up chunk `work` (item work / splits) of the split match; 0 when its item needs no selection. */
static int split_chunk(const cpu_ctx *ctx, const cpu_plan *plan, const ha_match_args *a, int32_t splits, int64_t work,
                       match_job *job, item_geometry *g, int64_t *lo, int64_t *hi)
{
    *job = make_job(ctx, plan, a, work / splits, 0);
    *g = geometry(plan, a, job->b);
    if (g->keep_all || g->heavy == 0)
        return 0;
    chunk_range(g, splits, (int32_t)(work % splits), lo, hi);
    return 1;
}

static void match_split(const cpu_ctx *ctx, const cpu_plan *plan, const ha_match_args *a, int32_t max_score,
                        int32_t splits)
{
    const int64_t items = (int64_t)a->batch * a->sel_heads;
    split_state st = { .splits = splits, .bins = (size_t)max_score + 1 };
    st.chunk_hist = plan->match_split;
    st.chunk_offset = (int64_t *)(st.chunk_hist + (size_t)plan->match_slots * st.bins);
    st.first_tie = st.chunk_offset + plan->match_slots;
    st.threshold = (uint32_t *)(st.first_tie + plan->match_slots);
#pragma omp parallel num_threads(plan->threads)
    {
#pragma omp for schedule(dynamic)
        for (int64_t work = 0; work < items * splits; work++) {
            match_job job;
            item_geometry g;
            int64_t lo, hi;
            if (!split_chunk(ctx, plan, a, splits, work, &job, &g, &lo, &hi))
                continue;
            score_range(&job, lo, hi);
            full_histogram(&job, (int32_t)(hi - lo), max_score);
            memcpy(st.chunk_hist + (size_t)work * st.bins, job.hist, st.bins * sizeof(uint32_t));
        }
#pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < items; item++) {
            match_job job = make_job(ctx, plan, a, item, 0);
            item_geometry g = geometry(plan, a, job.b);
            a->counts[item] = (int32_t)write_fixed(&g, a->indices + item * a->index_stride);
            if (!g.keep_all && g.heavy > 0)
                plan_item(&job, &g, &st, item, max_score);
        }
#pragma omp for schedule(dynamic)
        for (int64_t work = 0; work < items * splits; work++) {
            match_job job;
            item_geometry g;
            int64_t item = work / splits, lo, hi;
            if (!split_chunk(ctx, plan, a, splits, work, &job, &g, &lo, &hi))
                continue;
            int32_t *out = a->indices + item * a->index_stride + g.lo + st.chunk_offset[work];
            score_range(&job, lo, hi);
            compact(&job, lo, hi, st.threshold[item], st.first_tie[item], out);
        }
    }
}

/* Chunks per item: 1 unless there are fewer items than threads and long candidate lists. */
static int32_t choose_splits(const cpu_plan *plan, const ha_match_args *a)
{
    int64_t items = (int64_t)a->batch * a->sel_heads;
    if (plan->match_slots == 0 || items == 0 || items >= plan->threads)
        return 1;
    int64_t longest = 0;
    for (int32_t b = 0; b < a->batch; b++) {
        item_geometry g = geometry(plan, a, b);
        if (!g.keep_all && g.hi - g.lo > longest)
            longest = g.hi - g.lo;
    }
    int64_t splits = (2 * (int64_t)plan->threads + items - 1) / items;
    int64_t by_slots = plan->match_slots / items, by_length = longest / SPLIT_MIN_CANDIDATES;
    splits = splits < by_slots ? splits : by_slots;
    splits = splits < by_length ? splits : by_length;
    return splits > 1 ? (int32_t)splits : 1;
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
    const int32_t max_score = group * a->bits;
    int32_t splits = choose_splits(plan, a);
    if (splits > 1) {
        match_split(ctx, plan, a, max_score, splits);
        return HA_OK;
    }
    /* Each thread takes the items of its own contiguous block in order, so that each item's candidate
     * floor starts from its neighbour's threshold; a thread done with its block takes the next items
     * of the others' (one atomic counter per block), so no thread waits long at the end (at B = 4 one
     * thread's block took 35 µs longer than the other's, measured with rdtsc). */
    const int64_t items = (int64_t)a->batch * a->sel_heads;
    const int blocks = plan->threads;
    for (int t = 0; t < blocks; t++)
        __atomic_store_n(&cpu_thread_match_sched(plan, t)->next, items * t / blocks, __ATOMIC_RELAXED);
#pragma omp parallel num_threads(plan->threads)
    {
        const int tid = omp_get_thread_num();
        /* The thread's last threshold of the previous call (the same layer's heads at the previous
         * step, or another layer's: close either way): without it each call's first item gathered
         * with floor 0 until the candidates were thinned. Only a starting guess, clamped to range. */
        cpu_match_sched *own = cpu_thread_match_sched(plan, tid);
        uint32_t floor_hint = own->floor_hint < (uint32_t)max_score ? own->floor_hint : (uint32_t)max_score;
        deferred_compact pending[2] = { { 0 }, { 0 } };
        int buffer = 0; /* the previous item's candidates stay in the other */
        for (int v = 0; v < blocks; v++) {
            const int owner = (tid + v) % blocks;
            const int64_t end = items * (owner + 1) / blocks;
            int64_t *next = &cpu_thread_match_sched(plan, owner)->next;
            for (int64_t item; (item = __atomic_fetch_add(next, 1, __ATOMIC_RELAXED)) < end; buffer = 1 - buffer) {
                match_job job = make_job(ctx, plan, a, item, buffer);
                job.pending = &pending[1 - buffer];
                job.defer = &pending[buffer];
                job.floor_hint = floor_hint;
                item_geometry g = geometry(plan, a, job.b);
                a->counts[item] = (int32_t)select_one(&job, &g, max_score, a->indices + item * a->index_stride);
                floor_hint = job.floor_hint;
            }
        }
        run_compact(ctx->k, &pending[0]);
        run_compact(ctx->k, &pending[1]);
        own->floor_hint = floor_hint;
    }
    return HA_OK;
}
