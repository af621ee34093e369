/*
 * cpu_attend_avx512.c — AVX-512 kernel of the attend stage: one tile of 16 tokens folded into the
 * unit's online softmax. Logits: 16 accumulators (one per token) over head_dim, reduced together by
 * one transpose-add; P·V: up to 4 heads × 4 vectors of the output held in registers per V row.
 */
#include <math.h>

#include "cpu_avx512_math.h"

/* Scaled logits of one query against the 16 rows (fp32 query padded with zeros to 16). */
CPU_INLINE __m512 tile_logits(const float *q, const void *const *rows, int32_t d, ha_dtype dt)
{
    __m512 acc[CPU_ATTEND_TILE];
    for (int j = 0; j < CPU_ATTEND_TILE; j++)
        acc[j] = _mm512_setzero_ps();
    for (int32_t i = 0; i < d; i += 16) {
        __mmask16 m = cpu_tail_mask(d - i);
        __m512 qv = _mm512_loadu_ps(q + i);
        for (int j = 0; j < CPU_ATTEND_TILE; j++)
            acc[j] = _mm512_fmadd_ps(qv, cpu_load16(rows[j], i, dt, m), acc[j]);
    }
    return cpu_hsum16(acc);
}

static __m512 logits(const float *q, const void *const *rows, int32_t d, ha_dtype dt)
{
    switch (dt) {
    case HA_F16: return tile_logits(q, rows, d, HA_F16);
    case HA_BF16: return tile_logits(q, rows, d, HA_BF16);
    default: return tile_logits(q, rows, d, HA_F32);
    }
}

/* acc[h0 .. h0+HB) += P · V over the tile's `count` rows, 64 output columns at a time. */
CPU_INLINE void tile_pv(const cpu_attend_unit *u, const void *const *v_rows, int32_t count, int32_t h0, const int HB,
                        ha_dtype dt)
{
    for (int32_t c = 0; c < u->dim; c += 64) {
        __mmask16 m[4];
        __m512 acc[4][4];
        for (int x = 0; x < 4; x++) {
            m[x] = cpu_tail_mask(u->dim - c - 16 * x);
            for (int r = 0; r < HB; r++)
                acc[r][x] = _mm512_maskz_loadu_ps(m[x], u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x);
        }
        for (int32_t j = 0; j < count; j++) {
            __m512 v[4];
            for (int x = 0; x < 4; x++)
                v[x] = cpu_load16(v_rows[j], c + 16 * x, dt, m[x]);
            for (int r = 0; r < HB; r++) {
                __m512 p = _mm512_set1_ps(u->p[(h0 + r) * CPU_ATTEND_TILE + j]);
                for (int x = 0; x < 4; x++)
                    acc[r][x] = _mm512_fmadd_ps(p, v[x], acc[r][x]);
            }
        }
        for (int x = 0; x < 4; x++)
            for (int r = 0; r < HB; r++)
                _mm512_mask_storeu_ps(u->acc + (int64_t)(h0 + r) * u->dim_pad + c + 16 * x, m[x], acc[r][x]);
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
    const void *converted[CPU_ATTEND_TILE];
    ha_dtype k_dtype = u->k_dtype;
    if (u->heads > 1 && k_dtype != HA_F32) { /* convert once, read by every head of the unit */
        for (int32_t j = 0; j < CPU_ATTEND_TILE; j++) {
            if (j < count) {
                cpu_load_row_avx512(k_rows[j], k_dtype, u->dim, u->k_tile + j * u->dim_pad);
                converted[j] = u->k_tile + j * u->dim_pad;
            } else {
                converted[j] = k_rows[j]; /* the zero row reads as zeros in any dtype */
            }
        }
        k_rows = converted;
        k_dtype = HA_F32;
    }
    const __mmask16 valid = cpu_tail_mask(count);
    for (int32_t h = 0; h < u->heads; h++) {
        __m512 s = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid,
                                      logits(u->q + (int64_t)h * u->dim_pad, k_rows, u->dim, k_dtype));
        float tile_max = _mm512_reduce_max_ps(s);
        if (tile_max > u->m[h]) { /* new running max: rescale what was summed so far */
            float alpha = expf(u->m[h] - tile_max);
            __m512 av = _mm512_set1_ps(alpha);
            float *acc = u->acc + (int64_t)h * u->dim_pad;
            for (int32_t i = 0; i < u->dim_pad; i += 16)
                _mm512_storeu_ps(acc + i, _mm512_mul_ps(av, _mm512_loadu_ps(acc + i)));
            u->l[h] *= alpha;
            u->m[h] = tile_max;
        }
        __m512 p = _mm512_maskz_mov_ps(valid, cpu_exp512(_mm512_sub_ps(s, _mm512_set1_ps(u->m[h]))));
        u->l[h] += _mm512_reduce_add_ps(p);
        _mm512_storeu_ps(u->p + h * CPU_ATTEND_TILE, p);
    }
    pv(u, v_rows, count);
}
