/*
 * reference_match.c — scalar reference of the match stage (SPEC §1.2–1.3): Hamming similarity of
 * query and key codes, sink and local windows, and the best `heavy` candidates by a histogram
 * threshold select under the normative tie rule (higher score first, then the higher token index).
 *
 * For each (sequence, selection head) the similarity of a candidate is recomputed on every pass
 * instead of being stored, so the only scratch is one histogram of the b·g + 1 possible scores.
 */
#include <stdlib.h>

#include "ha_shared.h"
#include "host_alloc.h"
#include "reference.h"

/* Bits of word w that belong to a `bits`-bit code (padding bits never count). */
static uint32_t code_word_mask(int32_t w, int32_t bits)
{
    int64_t first_bit = (int64_t)w * 32;
    if (first_bit + 32 <= bits)
        return 0xffffffffu;
    if (first_bit >= bits)
        return 0u;
    return (1u << (bits - first_bit)) - 1u;
}

static int32_t popcount32(uint32_t x)
{
    int32_t n = 0;
    for (; x; x &= x - 1)
        n++;
    return n;
}

/* Similarity of token j of sequence b for selection head s: the sum over the group's query heads of
 * bits - popcount(q XOR k). In paper mode the group is the one query head s. */
static int64_t similarity(const ha_match_args *a, int32_t b, int32_t s, int64_t j)
{
    int32_t group = a->q_heads / a->sel_heads;
    const uint32_t *key = ha_rows_ptr(&a->k_codes, sizeof(uint32_t), b, s, j);
    int64_t sum = 0;
    for (int32_t h = s * group; h < (s + 1) * group; h++) {
        const uint32_t *query = a->q_codes + ((int64_t)b * a->q_heads + h) * a->words;
        int32_t distance = 0;
        for (int32_t w = 0; w < a->words; w++)
            distance += popcount32((query[w] ^ key[w]) & code_word_mask(w, a->bits));
        sum += a->bits - distance;
    }
    return sum;
}

/* Writes the kept indices of one (b, s) in ascending order; returns how many. `histogram` holds
 * max_score + 1 counters. */
static int64_t select_one(const ha_match_args *a, int32_t b, int32_t s, int64_t *histogram, int64_t max_score,
                          int32_t *out)
{
    int64_t n = a->seq_lens[b] > 0 ? a->seq_lens[b] : 0;
    int64_t kept = ha_kept_for_length(n, a->sink, a->local, a->heavy_fraction, a->heavy_count);
    if (kept == n) {
        for (int64_t j = 0; j < n; j++)
            out[j] = (int32_t)j;
        return n;
    }
    /* Here n > sink + local + heavy, so the candidates [sink, local_start) outnumber heavy. */
    int64_t heavy = ha_heavy_for_length(n, a->heavy_fraction, a->heavy_count);
    int64_t local_start = ha_local_start(n, a->sink, a->local);

    for (int64_t v = 0; v <= max_score; v++)
        histogram[v] = 0;
    for (int64_t j = a->sink; j < local_start; j++)
        histogram[similarity(a, b, s, j)]++;

    /* threshold: the lowest score that is still (partly) taken; `above` candidates score higher. */
    int64_t threshold = max_score, above = 0;
    while (threshold > 0 && above + histogram[threshold] < heavy) {
        above += histogram[threshold];
        threshold--;
    }
    int64_t at_threshold = heavy - above; /* taken among the score == threshold, most recent first */

    /* tie_start: the lowest index of a taken threshold-score candidate (scan from the most recent). */
    int64_t tie_start = local_start;
    for (int64_t j = local_start - 1, taken = 0; j >= a->sink && taken < at_threshold; j--) {
        if (similarity(a, b, s, j) == threshold) {
            taken++;
            tie_start = j;
        }
    }

    int64_t count = 0;
    for (int64_t j = 0; j < n; j++) {
        int keep;
        if (j < a->sink || j >= local_start) {
            keep = 1;
        } else {
            int64_t score = similarity(a, b, s, j);
            keep = score > threshold || (score == threshold && j >= tie_start);
        }
        if (keep)
            out[count++] = (int32_t)j;
    }
    return count;
}

ha_status ha_ref_match(const ha_match_args *args)
{
    if (args->sel_heads < 1 || args->q_heads < args->sel_heads || args->q_heads % args->sel_heads != 0 ||
        args->bits < 0 || (int64_t)args->words * 32 < args->bits)
        return HA_ERR_SHAPE;
    int64_t group = args->q_heads / args->sel_heads;
    int64_t max_score = group * args->bits;
    int64_t *histogram = ha_malloc((size_t)(max_score + 1) * sizeof(int64_t));
    if (!histogram)
        return HA_ERR_OUT_OF_MEMORY;

    for (int32_t b = 0; b < args->batch; b++) {
        for (int32_t s = 0; s < args->sel_heads; s++) {
            int64_t row = (int64_t)b * args->sel_heads + s;
            int64_t count = select_one(args, b, s, histogram, max_score, args->indices + row * args->index_stride);
            args->counts[row] = (int32_t)count;
        }
    }
    free(histogram);
    return HA_OK;
}
