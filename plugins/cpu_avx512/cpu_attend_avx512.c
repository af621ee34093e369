/*
 * cpu_attend_avx512.c — AVX-512 kernel of the attend stage: one tile of 16 tokens folded into the
 * unit's online softmax. Logits: 16 (head, token) accumulators over head_dim, reduced together by
 * one transpose-add; P·V: up to 4 heads × 4 (one head: 8) vectors of the output held in registers
 * per V row. K and V are read in their storage dtype and converted in registers.
 *
 * BF16 rows with head_dim % 32 == 0 are read in pairs: a 32-bit lane holding bf16 elements 2i (low
 * half) and 2i+1 (high half) gives both as fp32 with one operation each (element 2i = lane << 16,
 * element 2i+1 = lane & 0xffff0000). Queries and output accumulators are split into the same even
 * and odd halves (two permutes per 32 elements, once per tile), which halves the loads and
 * conversions per K and V row.
 *
 * The next tile's rows are prefetched while this one is worked on: in the BF16-pairs loops one line
 * at a time, next to the load of the same line of this tile (128 prefetches issued together, as
 * before, stalled the kernel until most had been taken by the memory system: measured at the bench's
 * decode shape, sparse attend 0.58–0.60 → 0.49–0.52 ms and dense 3.0–4.1 → 2.3–3.2 ms); in the other
 * loops all at once at the start.
 */
#include <math.h>

#include "cpu_avx512_math.h"

CPU_INLINE __m512 bf16_even(__m512i w)
{
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

CPU_INLINE __m512 bf16_odd(__m512i w)
{
    return _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xffff0000u)));
}

/* x[0 .. 32) as its even and odd elements. */
CPU_INLINE void split_pair(const float *x, __m512 *even, __m512 *odd)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
    *even = _mm512_permutex2var_ps(lo, ie, hi);
    *odd = _mm512_permutex2var_ps(lo, io, hi);
}

/* The inverse of split_pair: stores 32 elements at x. */
CPU_INLINE void join_pair(float *x, __m512 even, __m512 odd)
{
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    _mm512_storeu_ps(x, _mm512_permutex2var_ps(even, il, odd));
    _mm512_storeu_ps(x + 16, _mm512_permutex2var_ps(even, ih, odd));
}

/* Logits of heads [h0, h0 + HB) against the tile, TG = 16/HB tokens at a time: each K chunk is
 * converted once and feeds HB accumulators; one transpose-add reduces all 16 (head, token) pairs.
 * Writes u->p[h][j] (queries are pre-scaled and zero padded, so only K loads need a tail mask).
 * PAIRS: BF16 K read in pairs (dt is then BF16), and the same line of next[] (unless NULL) prefetched
 * with each load. */
CPU_INLINE void tile_logits(const cpu_attend_unit *u, const void *const *rows, int32_t h0, const int HB, ha_dtype dt,
                            const int PAIRS, const void *const *next)
{
    const int TG = CPU_ATTEND_TILE / HB;
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int g0 = 0; g0 < CPU_ATTEND_TILE; g0 += TG) {
        __m512 acc[16];
        CPU_UNROLL
        for (int i = 0; i < 16; i++)
            acc[i] = _mm512_setzero_ps();
        for (int32_t c = 0; c < u->dim; c += PAIRS ? 32 : 16) {
            if (PAIRS) {
                __m512 qe[4], qo[4];
                CPU_UNROLL
                for (int r = 0; r < HB; r++)
                    split_pair(u->q + (int64_t)(h0 + r) * u->dim_pad + c, &qe[r], &qo[r]);
                CPU_UNROLL
                for (int t = 0; t < TG; t++) {
                    if (next)
                        _mm_prefetch((const char *)((const uint16_t *)next[g0 + t] + c), _MM_HINT_T0);
                    __m512i w = _mm512_loadu_si512((const uint16_t *)rows[g0 + t] + c);
                    __m512 ke = bf16_even(w), ko = bf16_odd(w);
                    CPU_UNROLL
                    for (int r = 0; r < HB; r++)
                        acc[r * TG + t] = _mm512_fmadd_ps(qo[r], ko, _mm512_fmadd_ps(qe[r], ke, acc[r * TG + t]));
                }
            } else {
                __mmask16 m = cpu_tail_mask(u->dim - c);
                CPU_UNROLL
                for (int t = 0; t < TG; t++) {
                    __m512 k = cpu_load16(rows[g0 + t], c, dt, m);
                    CPU_UNROLL
                    for (int r = 0; r < HB; r++)
                        acc[r * TG + t] = _mm512_fmadd_ps(_mm512_loadu_ps(u->q + (int64_t)(h0 + r) * u->dim_pad + c),
                                                          k, acc[r * TG + t]);
                }
            }
        }
        __m512 s = cpu_hsum16(acc); /* lane r*TG + t: head h0 + r, token g0 + t */
        CPU_UNROLL
        for (int r = 0; r < HB; r++)
            _mm512_mask_storeu_ps(u->p + (h0 + r) * CPU_ATTEND_TILE + g0, cpu_tail_mask(TG),
                                  _mm512_permutexvar_ps(_mm512_add_epi32(lanes, _mm512_set1_epi32(r * TG)), s));
    }
}

/* acc[h0 .. h0+HB) += P · V over the tile's `count` rows, 16·NV output columns at a time: HB · NV
 * independent accumulators, so that the FMA chains overlap (one head takes 8 vectors, more take 4). */
CPU_INLINE void tile_pv_plain(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, int32_t h0,
                              const int HB, ha_dtype dt)
{
    const int NV = HB == 1 ? 8 : 4;
    for (int32_t c = 0; c < u->dim; c += 16 * NV) {
        __mmask16 m[8];
        __m512 acc[4][8];
        CPU_UNROLL
        for (int x = 0; x < NV; x++) {
            m[x] = cpu_tail_mask(u->dim - c - 16 * x);
            CPU_UNROLL
            for (int r = 0; r < HB; r++)
                acc[r][x] = _mm512_maskz_loadu_ps(m[x], u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x);
        }
        for (int32_t j = 0; j < count; j++) {
            __m512 v[8];
            CPU_UNROLL
            for (int x = 0; x < NV; x++)
                v[x] = cpu_load16(v_rows[j], c + 16 * x, dt, m[x]);
            CPU_UNROLL
            for (int r = 0; r < HB; r++) {
                __m512 p = _mm512_set1_ps(u->p[(h0 + r) * CPU_ATTEND_TILE + j]);
                CPU_UNROLL
                for (int x = 0; x < NV; x++)
                    acc[r][x] = _mm512_fmadd_ps(p, v[x], acc[r][x]);
            }
        }
        CPU_UNROLL
        for (int x = 0; x < NV; x++) {
            CPU_UNROLL
            for (int r = 0; r < HB; r++)
                _mm512_mask_storeu_ps(u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x, m[x], acc[r][x]);
        }
    }
}

/* tile_pv_plain for BF16 V in pairs: NP pairs of output vectors (32 columns each) per pass; the
 * same lines of next[] (unless NULL) are prefetched row by row. */
CPU_INLINE void tile_pv_pairs(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, int32_t h0,
                              const int HB, const void *const *next)
{
    const int NP = HB == 1 ? 4 : 2;
    for (int32_t c = 0; c < u->dim; c += 32 * NP) {
        const int np = u->dim - c >= 32 * NP ? NP : (u->dim - c) / 32; /* the last pass may be short */
        __m512 ae[4][4], ao[4][4];
        CPU_UNROLL
        for (int x = 0; x < NP; x++)
            CPU_UNROLL
            for (int r = 0; r < HB; r++) {
                ae[r][x] = ao[r][x] = _mm512_setzero_ps(); /* stays 0 past np */
                if (x < np)
                    split_pair(u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 32 * x, &ae[r][x], &ao[r][x]);
            }
        for (int32_t j = 0; j < CPU_ATTEND_TILE; j++) {
            if (next) {
                CPU_UNROLL
                for (int x = 0; x < NP; x++)
                    if (x < np)
                        _mm_prefetch((const char *)((const uint16_t *)next[j] + c + 32 * x), _MM_HINT_T0);
            }
            if (j >= count)
                continue;
            __m512 ve[4], vo[4];
            CPU_UNROLL
            for (int x = 0; x < NP; x++) {
                __m512i w = x < np ? _mm512_loadu_si512((const uint16_t *)v_rows[j] + c + 32 * x)
                                   : _mm512_setzero_si512();
                ve[x] = bf16_even(w);
                vo[x] = bf16_odd(w);
            }
            CPU_UNROLL
            for (int r = 0; r < HB; r++) {
                __m512 p = _mm512_set1_ps(u->p[(h0 + r) * CPU_ATTEND_TILE + j]);
                CPU_UNROLL
                for (int x = 0; x < NP; x++) {
                    ae[r][x] = _mm512_fmadd_ps(p, ve[x], ae[r][x]);
                    ao[r][x] = _mm512_fmadd_ps(p, vo[x], ao[r][x]);
                }
            }
        }
        CPU_UNROLL
        for (int x = 0; x < NP; x++)
            CPU_UNROLL
            for (int r = 0; r < HB; r++)
                if (x < np)
                    join_pair(u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 32 * x, ae[r][x], ao[r][x]);
    }
}

CPU_INLINE void tile_pv(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, int32_t h0, const int HB,
                        ha_dtype dt, const int PAIRS, const void *const *next)
{
    if (PAIRS)
        tile_pv_pairs(u, v_rows, count, h0, HB, next);
    else
        tile_pv_plain(u, v_rows, count, h0, HB, dt);
}

/* The unit's heads in blocks of 4, 2 and 1: logits (PV 0) or P·V (PV 1). The first block prefetches
 * next[] (PAIRS; otherwise it was prefetched before). */
CPU_INLINE void by_head_blocks(const cpu_attend_unit *u, const void *const *rows, int32_t count, ha_dtype dt,
                               const int PAIRS, const int PV, const void *const *next)
{
    int32_t h = 0;
    for (; h + 4 <= u->heads; h += 4, next = NULL)
        PV ? tile_pv(u, rows, count, h, 4, dt, PAIRS, next) : tile_logits(u, rows, h, 4, dt, PAIRS, next);
    if (h + 2 <= u->heads) {
        PV ? tile_pv(u, rows, count, h, 2, dt, PAIRS, next) : tile_logits(u, rows, h, 2, dt, PAIRS, next);
        h += 2;
        next = NULL;
    }
    if (h < u->heads)
        PV ? tile_pv(u, rows, count, h, 1, dt, PAIRS, next) : tile_logits(u, rows, h, 1, dt, PAIRS, next);
}

/* Logits (PV 0) or P·V (PV 1) of the whole unit, with the loops specialised for the rows' dtype;
 * next[]: the same rows of the next tile, to prefetch. */
static void heads_pass(const cpu_attend_unit *u, const void *const *rows, int32_t count, ha_dtype dt, const int PV,
                       const void *const *next)
{
    if (dt == HA_BF16 && u->dim % 32 == 0) {
        by_head_blocks(u, rows, count, HA_BF16, 1, PV, next);
        return;
    }
    cpu_prefetch_rows(next, CPU_ATTEND_TILE, (size_t)u->dim * ha_elem_size(dt));
    switch (dt) {
    case HA_F16: by_head_blocks(u, rows, count, HA_F16, 0, PV, NULL); break;
    case HA_BF16: by_head_blocks(u, rows, count, HA_BF16, 0, PV, NULL); break;
    default: by_head_blocks(u, rows, count, HA_F32, 0, PV, NULL); break;
    }
}

void cpu_attend_tile_avx512(const cpu_attend_unit *u, const void *const *k_rows, const void *const *v_rows,
                            int32_t count, const void *const *next_k, const void *const *next_v)
{
    heads_pass(u, k_rows, CPU_ATTEND_TILE, u->k_dtype, 0, next_k);
    const __mmask16 valid = cpu_tail_mask(count);
    for (int32_t h = 0; h < u->heads; h++) {
        float *ph = u->p + h * CPU_ATTEND_TILE;
        __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid, _mm512_loadu_ps(ph));
        float tile_max = _mm512_reduce_max_ps(s);
        if (tile_max > u->m[h]) { /* new running max: rescale what was summed so far */
            __m512 alpha = _mm512_set1_ps(expf(u->m[h] - tile_max));
            float *acc = u->acc + (int64_t)h * u->dim_pad;
            for (int32_t i = 0; i < u->dim_pad; i += 16)
                _mm512_storeu_ps(acc + i, _mm512_mul_ps(alpha, _mm512_loadu_ps(acc + i)));
            u->l[h] *= _mm512_cvtss_f32(alpha);
            u->m[h] = tile_max;
        }
        __m512 p = _mm512_maskz_mov_ps(valid, cpu_exp512(_mm512_sub_ps(s, _mm512_set1_ps(u->m[h]))));
        u->l[h] += _mm512_reduce_add_ps(p);
        _mm512_storeu_ps(ph, p);
    }
    heads_pass(u, v_rows, count, u->v_dtype, 1, next_v);
}
