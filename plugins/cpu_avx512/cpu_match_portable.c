/*
 * cpu_match_portable.c — plain-C kernels of the match stage: Hamming similarity with a portable
 * popcount into the score buffer, and the histogram, tie search and threshold compaction over it.
 * The AVX-512 kernels fall back to the last three for scores wider than a byte.
 */
#include "cpu_internal.h"

static inline uint32_t popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (x * 0x01010101u) >> 24;
}

static inline void store_score(void *scores, int32_t bytes, int32_t i, uint32_t score)
{
    if (bytes == 1)
        ((uint8_t *)scores)[i] = (uint8_t)score;
    else if (bytes == 2)
        ((uint16_t *)scores)[i] = (uint16_t)score;
    else
        ((uint32_t *)scores)[i] = score;
}

void cpu_match_scores_portable(const cpu_score_args *a, int32_t count, void *scores)
{
    const uint32_t best = (uint32_t)a->group * (uint32_t)a->bits;
    for (int32_t i = 0; i < count; i++) {
        const uint32_t *key = a->keys + i * a->stride_token;
        uint32_t distance = 0;
        for (int32_t h = 0; h < a->group; h++)
            for (int32_t w = 0; w < a->words; w++)
                distance += popcount32((a->q[h * a->words + w] ^ key[w]) & cpu_code_word_mask(w, a->bits));
        store_score(scores, a->score_bytes, i, best - distance);
    }
}

/* All bins [0, hi] in one pass; scores above hi (counted by an earlier pass) are skipped. */
int32_t cpu_match_histogram_portable(const void *scores, int32_t bytes, int32_t count, int32_t hi, int32_t bins,
                                     uint32_t *hist)
{
    uint32_t *copies = hist + bins; /* CPU_HIST_COPIES - 1 scratch histograms */
    for (int32_t c = 0; c < CPU_HIST_COPIES - 1; c++)
        for (int32_t v = 0; v <= hi; v++)
            copies[(size_t)c * bins + v] = 0;
    int32_t i = 0;
    for (; i + CPU_HIST_COPIES <= count; i += CPU_HIST_COPIES) {
        uint32_t s0 = cpu_score_at(scores, bytes, i);
        if (s0 <= (uint32_t)hi)
            hist[s0]++;
        for (int32_t c = 1; c < CPU_HIST_COPIES; c++) {
            uint32_t s = cpu_score_at(scores, bytes, i + c);
            if (s <= (uint32_t)hi)
                copies[(size_t)(c - 1) * bins + s]++;
        }
    }
    for (; i < count; i++) {
        uint32_t s = cpu_score_at(scores, bytes, i);
        if (s <= (uint32_t)hi)
            hist[s]++;
    }
    for (int32_t c = 0; c < CPU_HIST_COPIES - 1; c++)
        for (int32_t v = 0; v <= hi; v++)
            hist[v] += copies[(size_t)c * bins + v];
    return 0;
}

int32_t cpu_match_tie_start_portable(const void *scores, int32_t bytes, int32_t count, uint32_t threshold,
                                     int64_t wanted)
{
    int64_t taken = 0;
    for (int32_t i = count - 1; i >= 0; i--)
        if (cpu_score_at(scores, bytes, i) == threshold && ++taken == wanted)
            return i;
    return -1;
}

int32_t cpu_match_candidates_scored(void (*scores)(const cpu_score_args *, int32_t, void *), const cpu_score_args *a,
                                    int32_t count, int32_t first, uint32_t floor, int32_t *idx, uint8_t *score)
{
    enum { BLOCK = 256 };
    uint8_t block[BLOCK];
    cpu_score_args part = *a;
    int32_t n = 0;
    for (int32_t i = 0; i < count; i += BLOCK) {
        int32_t len = count - i < BLOCK ? count - i : BLOCK;
        part.keys = a->keys + (int64_t)i * a->stride_token;
        scores(&part, len, block);
        for (int32_t j = 0; j < len; j++)
            if (block[j] >= floor) {
                idx[n] = first + i + j;
                score[n++] = block[j];
            }
    }
    return n;
}

int32_t cpu_match_candidates_portable(const cpu_score_args *a, int32_t count, int32_t first, uint32_t floor,
                                      int32_t *idx, uint8_t *score)
{
    return cpu_match_candidates_scored(cpu_match_scores_portable, a, count, first, floor, idx, score);
}

int32_t cpu_match_filter_portable(int32_t *idx, uint8_t *score, int32_t count, uint32_t floor)
{
    int32_t kept = 0;
    for (int32_t i = 0; i < count; i++)
        if (score[i] >= floor) {
            idx[kept] = idx[i];
            score[kept++] = score[i];
        }
    return kept;
}

int32_t cpu_match_compact_portable(const void *scores, int32_t bytes, int32_t count, int32_t first,
                                   const int32_t *ids, uint32_t threshold, int64_t tie_start, int32_t *out)
{
    int32_t n = 0;
    for (int32_t i = 0; i < count; i++) {
        uint32_t s = cpu_score_at(scores, bytes, i);
        if (s > threshold || (s == threshold && i >= tie_start))
            out[n++] = ids ? ids[i] : first + i;
    }
    return n;
}
