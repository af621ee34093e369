/*
 * cpu_attend_portable.c — plain-C kernel of the attend stage: one tile of tokens folded into the
 * unit's online softmax (running max, rescale on a new max, fp32 sums).
 */
#include <math.h>

#include "cpu_internal.h"

/* Eight independent partial sums: shorter dependency chains, and vectorizable. */
static float dot(const float *restrict x, const float *restrict y, int32_t n)
{
    float s[8] = { 0 };
    int32_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int32_t j = 0; j < 8; j++)
            s[j] += x[i + j] * y[i + j];
    for (; i < n; i++)
        s[0] += x[i] * y[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

void cpu_attend_tile_portable(const cpu_attend_unit *u, const void *const *k_rows, const void *const *v_rows,
                              int32_t count, const void *const *next_k, const void *const *next_v)
{
    const int32_t d = u->dim, dp = u->dim_pad;
    cpu_prefetch_rows(next_k, CPU_ATTEND_TILE, (size_t)d * ha_elem_size(u->k_dtype));
    cpu_prefetch_rows(next_v, CPU_ATTEND_TILE, (size_t)d * ha_elem_size(u->v_dtype));
    for (int32_t j = 0; j < count; j++)
        cpu_load_row_portable(k_rows[j], u->k_dtype, d, u->k_tile + j * dp);
    for (int32_t h = 0; h < u->heads; h++) {
        float *p = u->p + h * CPU_ATTEND_TILE, tile_max = -INFINITY;
        for (int32_t j = 0; j < count; j++) {
            p[j] = dot(u->q + h * dp, u->k_tile + j * dp, d);
            tile_max = p[j] > tile_max ? p[j] : tile_max;
        }
        if (tile_max > u->m[h]) {
            float alpha = expf(u->m[h] - tile_max);
            float *acc = u->acc + h * dp;
            for (int32_t i = 0; i < d; i++)
                acc[i] *= alpha;
            u->l[h] *= alpha;
            u->m[h] = tile_max;
        }
        float sum = 0.0f;
        for (int32_t j = 0; j < count; j++) {
            p[j] = expf(p[j] - u->m[h]);
            sum += p[j];
        }
        u->l[h] += sum;
    }
    /* The K tile is no longer needed: it holds the V rows now. */
    for (int32_t j = 0; j < count; j++)
        cpu_load_row_portable(v_rows[j], u->v_dtype, d, u->k_tile + j * dp);
    for (int32_t h = 0; h < u->heads; h++) {
        float *restrict acc = u->acc + h * dp;
        const float *p = u->p + h * CPU_ATTEND_TILE;
        for (int32_t j = 0; j < count; j++) {
            const float pj = p[j], *restrict v = u->k_tile + j * dp;
            for (int32_t i = 0; i < d; i++)
                acc[i] += pj * v[i];
        }
    }
}
