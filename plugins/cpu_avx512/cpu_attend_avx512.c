/*
 * cpu_attend_avx512.c — AVX-512 kernel of the attend stage: one tile of 16 tokens folded into the
 * unit's online softmax. Logits: 16 (head, token) accumulators over head_dim, reduced together by
 * one transpose-add; P·V: up to 4 heads × 4 vectors of the output held in registers per V row. K
 * and V are read in their storage dtype and converted in registers.
 */
#include <math.h>

#include "cpu_avx512_math.h"

/* Logits of heads [h0, h0 + HB) against the tile, TG = 16/HB tokens at a time: each K chunk is
 * converted once and feeds HB accumulators; one transpose-add reduces all 16 (head, token) pairs.
 * Writes u->p[h][j] (queries are pre-scaled and zero padded, so only K loads need a tail mask). */
CPU_INLINE void tile_logits(const cpu_attend_unit *u, const void *const *rows, int32_t h0, const int HB, ha_dtype dt)
{
    const int TG = CPU_ATTEND_TILE / HB;
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int g0 = 0; g0 < CPU_ATTEND_TILE; g0 += TG) {
        __m512 acc[16];
        CPU_UNROLL
        for (int i = 0; i < 16; i++)
            acc[i] = _mm512_setzero_ps();
        for (int32_t c = 0; c < u->dim; c += 16) {
            __mmask16 m = cpu_tail_mask(u->dim - c);
            CPU_UNROLL
            for (int t = 0; t < TG; t++) {
                __m512 k = cpu_load16(rows[g0 + t], c, dt, m);
                CPU_UNROLL
                for (int r = 0; r < HB; r++)
                    acc[r * TG + t] = _mm512_fmadd_ps(_mm512_loadu_ps(u->q + (int64_t)(h0 + r) * u->dim_pad + c), k,
                                                      acc[r * TG + t]);
            }
        }
        __m512 s = cpu_hsum16(acc); /* lane r*TG + t: head h0 + r, token g0 + t */
        CPU_UNROLL
        for (int r = 0; r < HB; r++)
            _mm512_mask_storeu_ps(u->p + (h0 + r) * CPU_ATTEND_TILE + g0, cpu_tail_mask(TG),
                                  _mm512_permutexvar_ps(_mm512_add_epi32(lanes, _mm512_set1_epi32(r * TG)), s));
    }
}

CPU_INLINE void logits_dtype(const cpu_attend_unit *u, const void *const *k_rows, ha_dtype dt)
{
    int32_t h = 0;
    for (; h + 4 <= u->heads; h += 4)
        tile_logits(u, k_rows, h, 4, dt);
    if (h + 2 <= u->heads) {
        tile_logits(u, k_rows, h, 2, dt);
        h += 2;
    }
    if (h < u->heads)
        tile_logits(u, k_rows, h, 1, dt);
}

static void logits(const cpu_attend_unit *u, const void *const *k_rows)
{
    switch (u->k_dtype) {
    case HA_F16: logits_dtype(u, k_rows, HA_F16); break;
    case HA_BF16: logits_dtype(u, k_rows, HA_BF16); break;
    default: logits_dtype(u, k_rows, HA_F32); break;
    }
}

/* acc[h0 .. h0+HB) += P · V over the tile's `count` rows, 64 output columns at a time. */
CPU_INLINE void tile_pv(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, int32_t h0, const int HB,
                        ha_dtype dt)
{
    for (int32_t c = 0; c < u->dim; c += 64) {
        __mmask16 m[4];
        __m512 acc[4][4];
        CPU_UNROLL
        for (int x = 0; x < 4; x++) {
            m[x] = cpu_tail_mask(u->dim - c - 16 * x);
            CPU_UNROLL
            for (int r = 0; r < HB; r++)
                acc[r][x] = _mm512_maskz_loadu_ps(m[x], u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x);
        }
        for (int32_t j = 0; j < count; j++) {
            __m512 v[4];
            CPU_UNROLL
            for (int x = 0; x < 4; x++)
                v[x] = cpu_load16(v_rows[j], c + 16 * x, dt, m[x]);
            CPU_UNROLL
            for (int r = 0; r < HB; r++) {
                __m512 p = _mm512_set1_ps(u->p[(h0 + r) * CPU_ATTEND_TILE + j]);
                CPU_UNROLL
                for (int x = 0; x < 4; x++)
                    acc[r][x] = _mm512_fmadd_ps(p, v[x], acc[r][x]);
            }
        }
        CPU_UNROLL
        for (int x = 0; x < 4; x++) {
            CPU_UNROLL
            for (int r = 0; r < HB; r++)
                _mm512_mask_storeu_ps(u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x, m[x], acc[r][x]);
        }
    }
}

CPU_INLINE void pv_dtype(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, ha_dtype dt)
{
    int32_t h = 0;
    for (; h + 4 <= u->heads; h += 4)
        tile_pv(u, v_rows, count, h, 4, dt);
    if (h + 2 <= u->heads) {
        tile_pv(u, v_rows, count, h, 2, dt);
        h += 2;
    }
    if (h < u->heads)
        tile_pv(u, v_rows, count, h, 1, dt);
}

static void pv(const cpu_attend_unit *u, const void *const *v_rows, int32_t count)
{
    switch (u->v_dtype) {
    case HA_F16: pv_dtype(u, v_rows, count, HA_F16); break;
    case HA_BF16: pv_dtype(u, v_rows, count, HA_BF16); break;
    default: pv_dtype(u, v_rows, count, HA_F32); break;
    }
}

void cpu_attend_tile_avx512(const cpu_attend_unit *u, const void *const *k_rows, const void *const *v_rows,
                            int32_t count)
{
    logits(u, k_rows);
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
    pv(u, v_rows, count);
}
