/*
 * cpu_match_portable.c — plain-C kernels of the match stage: Hamming similarity with a portable
 * popcount, and the threshold compaction.
 */
#include "cpu_internal.h"

static inline uint32_t popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (x * 0x01010101u) >> 24;
}

void cpu_match_scores_portable(const cpu_score_args *a, int32_t count, uint32_t *scores)
{
    const uint32_t best = (uint32_t)a->group * (uint32_t)a->bits;
    if (a->words == 1) {
        const uint32_t mask = cpu_code_word_mask(0, a->bits);
        for (int32_t i = 0; i < count; i++) {
            uint32_t key = a->keys[i * a->stride_token], distance = 0;
            for (int32_t h = 0; h < a->group; h++)
                distance += popcount32((a->q[h] ^ key) & mask);
            scores[i] = best - distance;
        }
        return;
    }
    for (int32_t i = 0; i < count; i++) {
        const uint32_t *key = a->keys + i * a->stride_token;
        uint32_t distance = 0;
        for (int32_t h = 0; h < a->group; h++)
            for (int32_t w = 0; w < a->words; w++)
                distance += popcount32((a->q[h * a->words + w] ^ key[w]) & cpu_code_word_mask(w, a->bits));
        scores[i] = best - distance;
    }
}

int32_t cpu_match_compact_portable(const uint32_t *scores, int32_t count, int32_t first, uint32_t threshold,
                                   int64_t tie_start, int32_t *out)
{
    int32_t n = 0;
    for (int32_t i = 0; i < count; i++)
        if (scores[i] > threshold || (scores[i] == threshold && first + i >= tie_start))
            out[n++] = first + i;
    return n;
}
