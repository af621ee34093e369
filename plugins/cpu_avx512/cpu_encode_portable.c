/*
 * cpu_encode_portable.c — plain-C kernels of the encode stage (and the row conversion the other
 * stages share): loops the compiler may vectorize for the baseline ISA.
 */
#include <math.h>

#include "cpu_internal.h"

void cpu_load_row_portable(const void *src, ha_dtype dt, int32_t n, float *dst)
{
    const uint16_t *h = src;
    switch (dt) {
    case HA_F16:
        for (int32_t i = 0; i < n; i++)
            dst[i] = ha_f16_to_f32(h[i]);
        break;
    case HA_BF16:
        for (int32_t i = 0; i < n; i++)
            dst[i] = ha_bf16_to_f32(h[i]);
        break;
    default:
        for (int32_t i = 0; i < n; i++)
            dst[i] = ((const float *)src)[i];
        break;
    }
}

/* y[t] = bias + Σ_k x[t][k] · wt[k]: the inner loop runs over contiguous outputs (16-bit weights
 * are widened a row at a time). */
void cpu_mlp_layer_portable(const cpu_layer_args *a)
{
    enum { CHUNK = 256 };
    float row[CHUNK];
    const size_t elem = ha_elem_size(a->wt_dtype);
    for (int32_t t = 0; t < a->tokens; t++) {
        const float *x = a->x + t * a->x_stride;
        float *restrict y = a->y + t * a->y_stride;
        for (int32_t o = 0; o < a->out_pad; o++)
            y[o] = a->bias[o];
        for (int32_t k = 0; k < a->in_dim; k++) {
            const float xk = x[k];
            for (int32_t o0 = 0; o0 < a->out_pad; o0 += CHUNK) {
                int32_t n = a->out_pad - o0 < CHUNK ? a->out_pad - o0 : CHUNK;
                cpu_load_row_portable((const char *)a->wt + ((int64_t)k * a->out_pad + o0) * elem, a->wt_dtype, n,
                                      row);
                for (int32_t o = 0; o < n; o++)
                    y[o0 + o] += xk * row[o];
            }
        }
        if (a->silu)
            for (int32_t o = 0; o < a->out_pad; o++)
                y[o] = y[o] / (1.0f + expf(-y[o]));
    }
}
