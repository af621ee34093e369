/*
 * cpu_match_avx512.c — AVX-512 kernels of the match stage: XOR + VPOPCNTD over 16 one-word codes
 * (or VPOPCNTQ over 8 two-word codes) at a time, and a compress-based threshold compaction.
 */
#include "cpu_avx512_math.h"

/* One-word codes; contiguous tokens load directly, strided ones are gathered. */
static void scores_one_word(const cpu_score_args *a, int32_t count, uint32_t *scores)
{
    const __m512i mask = _mm512_set1_epi32((int)cpu_code_word_mask(0, a->bits));
    const __m512i best = _mm512_set1_epi32(a->group * a->bits);
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)a->stride_token));
    for (int32_t i = 0; i < count; i += 16) {
        __mmask16 m = cpu_tail_mask(count - i);
        const uint32_t *keys = a->keys + i * a->stride_token;
        __m512i k = a->stride_token == 1
                        ? _mm512_maskz_loadu_epi32(m, keys)
                        : _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offsets, keys, 4);
        __m512i distance = _mm512_setzero_si512();
        for (int32_t h = 0; h < a->group; h++) {
            __m512i diff = _mm512_and_si512(_mm512_xor_si512(k, _mm512_set1_epi32((int)a->q[h])), mask);
            distance = _mm512_add_epi32(distance, _mm512_popcnt_epi32(diff));
        }
        _mm512_mask_storeu_epi32(scores + i, m, _mm512_sub_epi32(best, distance));
    }
}

/* Two-word codes, contiguous: a code is one 64-bit lane. */
static void scores_two_words(const cpu_score_args *a, int32_t count, uint32_t *scores)
{
    const __m512i mask = _mm512_set1_epi64((long long)((uint64_t)cpu_code_word_mask(1, a->bits) << 32 |
                                                       cpu_code_word_mask(0, a->bits)));
    const __m512i best = _mm512_set1_epi64(a->group * a->bits);
    for (int32_t i = 0; i < count; i += 8) {
        __mmask8 m = (__mmask8)cpu_tail_mask(count - i);
        __m512i k = _mm512_maskz_loadu_epi64(m, a->keys + 2 * i);
        __m512i distance = _mm512_setzero_si512();
        for (int32_t h = 0; h < a->group; h++) {
            uint64_t q = (uint64_t)a->q[2 * h + 1] << 32 | a->q[2 * h];
            __m512i diff = _mm512_and_si512(_mm512_xor_si512(k, _mm512_set1_epi64((long long)q)), mask);
            distance = _mm512_add_epi64(distance, _mm512_popcnt_epi64(diff));
        }
        _mm256_mask_storeu_epi32(scores + i, m, _mm512_cvtepi64_epi32(_mm512_sub_epi64(best, distance)));
    }
}

static void scores_any(const cpu_score_args *a, int32_t count, uint32_t *scores)
{
    const uint32_t best = (uint32_t)a->group * (uint32_t)a->bits;
    for (int32_t i = 0; i < count; i++) {
        const uint32_t *key = a->keys + i * a->stride_token;
        uint32_t distance = 0;
        for (int32_t h = 0; h < a->group; h++)
            for (int32_t w = 0; w < a->words; w++) {
                uint32_t diff = (a->q[h * a->words + w] ^ key[w]) & cpu_code_word_mask(w, a->bits);
                distance += (uint32_t)_mm_popcnt_u32(diff);
            }
        scores[i] = best - distance;
    }
}

void cpu_match_scores_avx512(const cpu_score_args *a, int32_t count, uint32_t *scores)
{
    if (a->words == 1 && a->stride_token > 0 && a->stride_token * CPU_MATCH_BLOCK < INT32_MAX / 4)
        scores_one_word(a, count, scores);
    else if (a->words == 2 && a->stride_token == 2)
        scores_two_words(a, count, scores);
    else
        scores_any(a, count, scores);
}

int32_t cpu_match_compact_avx512(const uint32_t *scores, int32_t count, int32_t first, uint32_t threshold,
                                 int64_t tie_start, int32_t *out)
{
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i thr = _mm512_set1_epi32((int)threshold);
    int64_t rel = tie_start - first; /* positions ≥ rel may be taken at the threshold */
    const __m512i tie = _mm512_set1_epi32(rel < 0 ? 0 : rel > count ? count : (int32_t)rel);
    int32_t n = 0;
    for (int32_t i = 0; i < count; i += 16) {
        __mmask16 m = cpu_tail_mask(count - i);
        __m512i s = _mm512_maskz_loadu_epi32(m, scores + i);
        __m512i pos = _mm512_add_epi32(lanes, _mm512_set1_epi32(i));
        __mmask16 keep = _mm512_mask_cmpgt_epu32_mask(m, s, thr) |
                         (_mm512_mask_cmpeq_epi32_mask(m, s, thr) & _mm512_cmpge_epi32_mask(pos, tie));
        __m512i kept = _mm512_maskz_compress_epi32(keep, _mm512_add_epi32(pos, _mm512_set1_epi32(first)));
        int taken = __builtin_popcount(keep);
        _mm512_mask_storeu_epi32(out + n, (__mmask16)((1u << taken) - 1u), kept);
        n += taken;
    }
    return n;
}
