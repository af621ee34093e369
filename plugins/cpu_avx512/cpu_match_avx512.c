/*
 * cpu_match_avx512.c — AVX-512 kernels of the match stage: XOR + VPOPCNTD over 16 one-word codes
 * (or VPOPCNTQ over 8 two-word codes) at a time into the narrow score buffer, and over byte scores
 * a register histogram (compare + masked add per bin), a backward tie search and a compaction.
 * Wider scores (group × bits > 255) use the portable histogram, tie search and compaction.
 */
#include "cpu_avx512_math.h"

/* How far ahead (bytes of codes) the scoring loop prefetches: the hardware prefetcher alone leaves
 * the code stream at a fraction of DRAM bandwidth. */
#define PREFETCH_AHEAD 8192
/* Bins one histogram pass counts in byte accumulators (one zmm each). */
#define HIST_WINDOW 16

/* Stores 16 scores (uint32 lanes, ≤ 2^bytes - 1) at scores[i..]: narrowed in registers, then one
 * plain store (a narrowing store to memory is slow on some cores). */
static inline void store_scores16_full(void *scores, int32_t bytes, int32_t i, __m512i v)
{
    if (bytes == 1)
        _mm_storeu_si128((__m128i *)((uint8_t *)scores + i), _mm512_cvtepi32_epi8(v));
    else if (bytes == 2)
        _mm256_storeu_si256((__m256i *)((uint16_t *)scores + i), _mm512_cvtepi32_epi16(v));
    else
        _mm512_storeu_si512((uint32_t *)scores + i, v);
}

/* Stores 16 scores (uint32 lanes, ≤ 2^bytes - 1) at scores[i..], masked to m. */
static inline void store_scores16(void *scores, int32_t bytes, int32_t i, __mmask16 m, __m512i v)
{
    if (bytes == 1)
        _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)scores + i, m, v);
    else if (bytes == 2)
        _mm512_mask_cvtepi32_storeu_epi16((uint16_t *)scores + i, m, v);
    else
        _mm512_mask_storeu_epi32((uint32_t *)scores + i, m, v);
}

static inline __m512i one_word_distance(const cpu_score_args *a, __m512i k, __m512i mask)
{
    __m512i distance = _mm512_setzero_si512();
    for (int32_t h = 0; h < a->group; h++) {
        __m512i diff = _mm512_and_si512(_mm512_xor_si512(k, _mm512_set1_epi32((int)a->q[h])), mask);
        distance = _mm512_add_epi32(distance, _mm512_popcnt_epi32(diff));
    }
    return distance;
}

/* One-word contiguous codes: full vectors load unmasked, with a prefetch ahead. */
static void scores_one_word_contiguous(const cpu_score_args *a, int32_t count, void *scores)
{
    const __m512i mask = _mm512_set1_epi32((int)cpu_code_word_mask(0, a->bits));
    const __m512i best = _mm512_set1_epi32(a->group * a->bits);
    int32_t i = 0;
    for (; i + 16 <= count; i += 16) {
        _mm_prefetch((const char *)(a->keys + i) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512i k = _mm512_loadu_si512(a->keys + i);
        store_scores16_full(scores, a->score_bytes, i, _mm512_sub_epi32(best, one_word_distance(a, k, mask)));
    }
    if (i < count) {
        __mmask16 m = cpu_tail_mask(count - i);
        __m512i k = _mm512_maskz_loadu_epi32(m, a->keys + i);
        store_scores16(scores, a->score_bytes, i, m, _mm512_sub_epi32(best, one_word_distance(a, k, mask)));
    }
}

/* One-word strided codes, gathered; i * stride_token must fit the gather's int32 offsets. */
static void scores_one_word_strided(const cpu_score_args *a, int32_t count, void *scores)
{
    const __m512i mask = _mm512_set1_epi32((int)cpu_code_word_mask(0, a->bits));
    const __m512i best = _mm512_set1_epi32(a->group * a->bits);
    const __m512i offsets = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                               _mm512_set1_epi32((int)a->stride_token));
    for (int32_t i = 0; i < count; i += 16) {
        __mmask16 m = cpu_tail_mask(count - i);
        __m512i k = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, offsets, a->keys + i * a->stride_token, 4);
        store_scores16(scores, a->score_bytes, i, m, _mm512_sub_epi32(best, one_word_distance(a, k, mask)));
    }
}

/* Two-word codes, contiguous: a code is one 64-bit lane. */
static void scores_two_words(const cpu_score_args *a, int32_t count, void *scores)
{
    const __m512i mask = _mm512_set1_epi64((long long)((uint64_t)cpu_code_word_mask(1, a->bits) << 32 |
                                                       cpu_code_word_mask(0, a->bits)));
    const __m512i best = _mm512_set1_epi64(a->group * a->bits);
    for (int32_t i = 0; i < count; i += 8) {
        __mmask8 m = (__mmask8)cpu_tail_mask(count - i);
        _mm_prefetch((const char *)(a->keys + 2 * i) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512i k = _mm512_maskz_loadu_epi64(m, a->keys + 2 * i);
        __m512i distance = _mm512_setzero_si512();
        for (int32_t h = 0; h < a->group; h++) {
            uint64_t q = (uint64_t)a->q[2 * h + 1] << 32 | a->q[2 * h];
            __m512i diff = _mm512_and_si512(_mm512_xor_si512(k, _mm512_set1_epi64((long long)q)), mask);
            distance = _mm512_add_epi64(distance, _mm512_popcnt_epi64(diff));
        }
        /* the 8 scores sit in the low half of a 16-lane vector */
        __m512i s = _mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_sub_epi64(best, distance)));
        store_scores16(scores, a->score_bytes, i, (__mmask16)m, s);
    }
}

static void scores_any(const cpu_score_args *a, int32_t count, void *scores)
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
        store_scores16(scores, a->score_bytes, 0, (__mmask16)1,
                       _mm512_castsi128_si512(_mm_cvtsi32_si128((int)(best - distance))));
        scores = (char *)scores + a->score_bytes;
    }
}

void cpu_match_scores_avx512(const cpu_score_args *a, int32_t count, void *scores)
{
    if (a->words == 1 && a->stride_token == 1)
        scores_one_word_contiguous(a, count, scores);
    else if (a->words == 1 && a->stride_token > 0 && a->stride_token * (int64_t)count < INT32_MAX / 4)
        scores_one_word_strided(a, count, scores);
    else if (a->words == 2 && a->stride_token == 2)
        scores_two_words(a, count, scores);
    else
        scores_any(a, count, scores);
}

/* Token positions below this fit in the low 24 bits of a candidate word, with the distance (a byte:
 * this path has byte scores) in the high 8. */
#define PACKED_TOKEN_LIMIT (1 << 24)

/* Appends the lanes of one vector of distances at or above the floor (distance ≤ most) to idx as
 * packed words (distance << 24 | token), with one compress and one full-width store (the buffer has
 * a vector of slack); returns how many. */
CPU_INLINE int32_t append_packed(__m512i distance, __mmask16 valid, __m512i most, __m512i lane, int32_t *idx)
{
    __mmask16 keep = _mm512_mask_cmple_epu32_mask(valid, distance, most);
    _mm512_storeu_si512(idx, _mm512_maskz_compress_epi32(keep, _mm512_or_si512(lane, _mm512_slli_epi32(distance, 24))));
    return cpu_mask_count16(keep);
}

/* Splits n packed candidate words in place into token indices (idx) and byte scores best - distance
 * (score); writes whole vectors (the buffers have a vector of slack). */
static void unpack_candidates(int32_t *idx, uint8_t *score, int32_t n, uint32_t best_score)
{
    const __m512i low = _mm512_set1_epi32(PACKED_TOKEN_LIMIT - 1), best = _mm512_set1_epi32((int)best_score);
    for (int32_t i = 0; i < n; i += 16) {
        __m512i w = _mm512_loadu_si512(idx + i);
        _mm512_storeu_si512(idx + i, _mm512_and_si512(w, low));
        _mm_storeu_si128((__m128i *)(score + i), _mm512_cvtepi32_epi8(_mm512_sub_epi32(best, _mm512_srli_epi32(w, 24))));
    }
}

/* Distances of 16 one-word codes to the G query codes in q (G 0: a->group, from a->q). */
CPU_INLINE __m512i code_distance(const cpu_score_args *a, __m512i k, __m512i mask, const __m512i *q, const int G)
{
    if (G == 0)
        return one_word_distance(a, k, mask);
    __m512i distance = _mm512_popcnt_epi32(_mm512_and_si512(_mm512_xor_si512(k, q[0]), mask));
    CPU_UNROLL
    for (int h = 1; h < G; h++)
        distance = _mm512_add_epi32(distance, _mm512_popcnt_epi32(_mm512_and_si512(_mm512_xor_si512(k, q[h]), mask)));
    return distance;
}

/* One-word contiguous codes, G query codes per key (a constant after inlining; 0 = a->group). The
 * candidates are kept as packed words and split once at the end: writing both arrays directly took
 * two compresses, a narrowing and two stores per vector (2.6 ns per 64-byte line hot in L1 on Zen 5,
 * slower than two cores' DRAM stream; packed: 1.05 ns). Needs first + count ≤ PACKED_TOKEN_LIMIT
 * (cpu_match_candidates_avx512 checks). */
CPU_INLINE int32_t candidates_one_word(const cpu_score_args *a, int32_t count, int32_t first, uint32_t floor,
                                       int32_t *idx, uint8_t *score, const int G)
{
    const uint32_t best_score = (uint32_t)a->group * (uint32_t)a->bits;
    if (floor > best_score)
        return 0;
    const __m512i mask = _mm512_set1_epi32((int)cpu_code_word_mask(0, a->bits));
    const __m512i most = _mm512_set1_epi32((int)(best_score - floor)); /* score ≥ floor ⇔ distance ≤ most */
    const __m512i step = _mm512_set1_epi32(16);
    __m512i q[4];
    CPU_UNROLL
    for (int h = 0; h < G; h++)
        q[h] = _mm512_set1_epi32((int)a->q[h]);
    __m512i lane = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                    _mm512_set1_epi32(first));
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int32_t n = 0, i = 0;
    /* Two vectors per pass, stored with one store when their candidates fit in one vector (nearly
     * always, with the floor near the threshold). Stores, not compute, held the stream back: in a
     * stand-alone model of this loop on the bench machine, a 64-byte store per 16 codes made a 4 MB
     * code stream 10-45 % slower, the compress without the store cost nothing. */
    for (; i + 32 <= count; i += 32) {
        _mm_prefetch((const char *)(a->keys + i) + PREFETCH_AHEAD, _MM_HINT_T0);
        _mm_prefetch((const char *)(a->keys + i + 16) + PREFETCH_AHEAD, _MM_HINT_T0);
        __m512i d0 = code_distance(a, _mm512_loadu_si512(a->keys + i), mask, q, G);
        __m512i d1 = code_distance(a, _mm512_loadu_si512(a->keys + i + 16), mask, q, G);
        __mmask16 k0 = _mm512_cmple_epu32_mask(d0, most), k1 = _mm512_cmple_epu32_mask(d1, most);
        __m512i c0 = _mm512_maskz_compress_epi32(k0, _mm512_or_si512(lane, _mm512_slli_epi32(d0, 24)));
        __m512i c1 = _mm512_maskz_compress_epi32(k1, _mm512_or_si512(_mm512_add_epi32(lane, step),
                                                                      _mm512_slli_epi32(d1, 24)));
        int t0 = cpu_mask_count16(k0), t1 = cpu_mask_count16(k1);
        if (t0 + t1 <= 16) { /* lanes [t0, 16) take c1[0 ..) */
            __m512i at = _mm512_add_epi32(iota, _mm512_set1_epi32(16 - t0));
            _mm512_storeu_si512(idx + n, _mm512_mask_permutex2var_epi32(c0, (__mmask16)(0xffffu << t0), at, c1));
        } else {
            _mm512_storeu_si512(idx + n, c0);
            _mm512_storeu_si512(idx + n + t0, c1);
        }
        n += t0 + t1;
        lane = _mm512_add_epi32(lane, _mm512_add_epi32(step, step));
    }
    for (; i + 16 <= count; i += 16) {
        n += append_packed(code_distance(a, _mm512_loadu_si512(a->keys + i), mask, q, G), (__mmask16)0xffff, most, lane,
                           idx + n);
        lane = _mm512_add_epi32(lane, step);
    }
    if (i < count) {
        __mmask16 m = cpu_tail_mask(count - i);
        __m512i distance = one_word_distance(a, _mm512_maskz_loadu_epi32(m, a->keys + i), mask);
        n += append_packed(distance, m, most, lane, idx + n);
    }
    unpack_candidates(idx, score, n, best_score);
    return n;
}

int32_t cpu_match_candidates_avx512(const cpu_score_args *a, int32_t count, int32_t first, uint32_t floor,
                                    int32_t *idx, uint8_t *score)
{
    if (a->words == 1 && a->stride_token == 1 && a->score_bytes == 1 && (int64_t)first + count <= PACKED_TOKEN_LIMIT) {
        switch (a->group) { /* paper mode; group mode with GQA groups of 2 and 4 */
        case 1: return candidates_one_word(a, count, first, floor, idx, score, 1);
        case 2: return candidates_one_word(a, count, first, floor, idx, score, 2);
        case 4: return candidates_one_word(a, count, first, floor, idx, score, 4);
        default: return candidates_one_word(a, count, first, floor, idx, score, 0);
        }
    }
    return cpu_match_candidates_scored(cpu_match_scores_avx512, a, count, first, floor, idx, score);
}

static inline uint64_t tail_mask64(int32_t n)
{
    return n >= 64 ? ~0ull : n <= 0 ? 0ull : (1ull << n) - 1ull;
}

/* Adds the byte accumulators' counts to hist[lo..end) and clears them. */
static inline void flush_counts(__m512i *acc, int32_t lo, int32_t end, uint32_t *hist)
{
    for (int32_t j = 0; j < HIST_WINDOW; j++) {
        if (lo + j < end)
            hist[lo + j] += (uint32_t)_mm512_reduce_add_epi64(_mm512_sad_epu8(acc[j], _mm512_setzero_si512()));
        acc[j] = _mm512_setzero_si512();
    }
}

int32_t cpu_match_histogram_avx512(const void *scores, int32_t bytes, int32_t count, int32_t hi, int32_t bins,
                                   uint32_t *hist)
{
    if (bytes != 1)
        return cpu_match_histogram_portable(scores, bytes, count, hi, bins, hist);
    const int32_t lo = hi >= HIST_WINDOW - 1 ? hi - (HIST_WINDOW - 1) : 0;
    const uint8_t *s = scores;
    const __m512i one = _mm512_set1_epi8(1);
    __m512i value[HIST_WINDOW], acc[HIST_WINDOW];
    for (int32_t j = 0; j < HIST_WINDOW; j++) {
        value[j] = _mm512_set1_epi8((char)(lo + j)); /* bins past hi: counted, never added */
        acc[j] = _mm512_setzero_si512();
    }
    int32_t pending = 0; /* vectors in the byte accumulators: flushed before any can reach 256 */
    for (int32_t i = 0; i < count; i += 64) {
        __mmask64 m = tail_mask64(count - i);
        __m512i v = _mm512_maskz_loadu_epi8(m, s + i);
#pragma GCC unroll 16
        for (int32_t j = 0; j < HIST_WINDOW; j++)
            acc[j] = _mm512_mask_add_epi8(acc[j], _mm512_mask_cmpeq_epi8_mask(m, v, value[j]), acc[j], one);
        if (++pending == 255) {
            flush_counts(acc, lo, hi + 1, hist);
            pending = 0;
        }
    }
    flush_counts(acc, lo, hi + 1, hist);
    (void)bins;
    return lo;
}

int32_t cpu_match_tie_start_avx512(const void *scores, int32_t bytes, int32_t count, uint32_t threshold,
                                   int64_t wanted)
{
    if (bytes != 1)
        return cpu_match_tie_start_portable(scores, bytes, count, threshold, wanted);
    const uint8_t *s = scores;
    const __m512i thr = _mm512_set1_epi8((char)threshold);
    int32_t top = count;
    while (top > 0) {
        int32_t start = top >= 64 ? top - 64 : 0;
        __mmask64 m = tail_mask64(top - start); /* lanes of [start, top) */
        uint64_t eq = _mm512_mask_cmpeq_epi8_mask(m, _mm512_maskz_loadu_epi8(m, s + start), thr);
        int64_t ties = __builtin_popcountll(eq);
        if (ties >= wanted) {
            for (int64_t k = 1; k < wanted; k++)
                eq &= ~(1ull << (63 - __builtin_clzll(eq)));
            return start + (63 - __builtin_clzll(eq));
        }
        wanted -= ties;
        top = start;
    }
    return -1;
}

int32_t cpu_match_filter_avx512(int32_t *idx, uint8_t *score, int32_t count, uint32_t floor)
{
    /* In place: each block of 16 is read before the (never later) output position is written. */
    const __m512i lowest = _mm512_set1_epi32((int)floor);
    int32_t kept = 0;
    for (int32_t i = 0; i < count; i += 16) {
        __mmask16 m = cpu_tail_mask(count - i);
        __m512i s = _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, score + i));
        __m512i x = _mm512_maskz_loadu_epi32(m, idx + i);
        __mmask16 keep = _mm512_mask_cmpge_epu32_mask(m, s, lowest);
        int taken = cpu_mask_count16(keep);
        __mmask16 out = (__mmask16)((1u << taken) - 1u);
        _mm512_mask_storeu_epi32(idx + kept, out, _mm512_maskz_compress_epi32(keep, x));
        _mm_mask_storeu_epi8(score + kept, out, _mm512_cvtepi32_epi8(_mm512_maskz_compress_epi32(keep, s)));
        kept += taken;
    }
    return kept;
}

int32_t cpu_match_compact_avx512(const void *scores, int32_t bytes, int32_t count, int32_t first, const int32_t *ids,
                                 uint32_t threshold, int64_t tie_start, int32_t *out)
{
    if (bytes != 1)
        return cpu_match_compact_portable(scores, bytes, count, first, ids, threshold, tie_start, out);
    const uint8_t *s = scores;
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i thr = _mm512_set1_epi8((char)threshold);
    int32_t n = 0;
    for (int32_t i = 0; i < count; i += 64) {
        __mmask64 m = tail_mask64(count - i);
        __m512i v = _mm512_maskz_loadu_epi8(m, s + i);
        int64_t rel = tie_start - i; /* lanes ≥ rel may be taken at the threshold */
        uint64_t tie_lanes = rel <= 0 ? ~0ull : rel >= 64 ? 0ull : ~0ull << rel;
        uint64_t keep = _mm512_mask_cmpgt_epu8_mask(m, v, thr) | (_mm512_mask_cmpeq_epi8_mask(m, v, thr) & tie_lanes);
        /* branch-free: which 16-lane quarters hold a selection is unpredictable. The quarters' counts
         * are taken first, so that the store positions do not wait on each other's count. */
        __m512i idx = _mm512_add_epi32(lanes, _mm512_set1_epi32(first + i));
        int taken[4], at[4];
        CPU_UNROLL
        for (int32_t q = 0; q < 4; q++)
            taken[q] = cpu_mask_count16((__mmask16)(keep >> (16 * q)));
        at[0] = n;
        at[1] = n + taken[0];
        at[2] = at[1] + taken[1];
        at[3] = at[2] + taken[2];
        CPU_UNROLL
        for (int32_t q = 0; q < 4; q++) {
            if (ids)
                idx = _mm512_maskz_loadu_epi32(cpu_tail_mask(count - i - 16 * q), ids + i + 16 * q);
            _mm512_mask_storeu_epi32(out + at[q], (__mmask16)((1u << taken[q]) - 1u),
                                     _mm512_maskz_compress_epi32((__mmask16)(keep >> (16 * q)), idx));
            idx = _mm512_add_epi32(idx, _mm512_set1_epi32(16));
        }
        n = at[3] + taken[3];
    }
    return n;
}
