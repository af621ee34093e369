/*
 * cpu_encode_avx512.c — AVX-512 kernels of the encode stage: row conversion (F16 via vcvtph2ps,
 * BF16 via a shift) and a register-blocked layer: R tokens × NV vectors of outputs accumulate in
 * registers while one pass over the transposed weights broadcasts each input.
 */
#include "cpu_avx512_math.h"

/* How many weight rows ahead the layer loop prefetches: a decode step runs each MLP once per token,
 * so its time is the weight stream's, which the hardware prefetcher alone keeps far below DRAM speed. */
#define PREFETCH_ROWS 16

void cpu_load_row_avx512(const void *src, ha_dtype dt, int32_t n, float *dst)
{
    for (int32_t i = 0; i < n; i += 16) {
        __mmask16 m = cpu_tail_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, m, cpu_load16(src, i, dt, m));
    }
}

/* Outputs [o0, o0 + 16·NV) of tokens [t0, t0 + R); vectors past out_pad are masked off. Weights of
 * dtype dt (a constant after inlining, so the conversion is chosen once per layer). */
CPU_INLINE void layer_tile(const cpu_layer_args *a, int32_t t0, int32_t o0, const int R, const int NV,
                           const ha_dtype dt)
{
    __mmask16 m[8];
    __m512 acc[4][8];
    CPU_UNROLL
    for (int x = 0; x < NV; x++) {
        m[x] = o0 + 16 * x < a->out_pad ? (__mmask16)0xffff : (__mmask16)0;
        __m512 bias = _mm512_maskz_loadu_ps(m[x], a->bias + o0 + 16 * x);
        CPU_UNROLL
        for (int r = 0; r < R; r++)
            acc[r][x] = bias;
    }
    const float *x_rows = a->x + (int64_t)t0 * a->x_stride;
    for (int32_t k = 0; k < a->in_dim; k++) {
        const int64_t w = (int64_t)k * a->out_pad + o0;
        const char *ahead = (const char *)a->wt + (w + (int64_t)PREFETCH_ROWS * a->out_pad) * ha_elem_size(dt);
        for (int32_t line = 0; line < 16 * NV * (int32_t)ha_elem_size(dt); line += 64)
            _mm_prefetch(ahead + line, _MM_HINT_T0);
        __m512 wv[8];
        CPU_UNROLL
        for (int x = 0; x < NV; x++)
            wv[x] = cpu_load16(a->wt, w + 16 * x, dt, m[x]);
        CPU_UNROLL
        for (int r = 0; r < R; r++) {
            __m512 xb = _mm512_set1_ps(x_rows[r * a->x_stride + k]);
            CPU_UNROLL
            for (int x = 0; x < NV; x++)
                acc[r][x] = _mm512_fmadd_ps(xb, wv[x], acc[r][x]);
        }
    }
    CPU_UNROLL
    for (int r = 0; r < R; r++) {
        float *y = a->y + (int64_t)(t0 + r) * a->y_stride + o0;
        CPU_UNROLL
        for (int x = 0; x < NV; x++)
            _mm512_mask_storeu_ps(y + 16 * x, m[x], a->silu ? cpu_silu512(acc[r][x]) : acc[r][x]);
    }
}

/* Four tokens share each weight load; one or two tokens (decode) take eight vectors per pass so the
 * weights stream contiguously. */
CPU_INLINE void layer(const cpu_layer_args *a, const ha_dtype dt)
{
    int32_t t = 0;
    for (; t + 4 <= a->tokens; t += 4)
        for (int32_t o = 0; o < a->out_pad; o += 64)
            layer_tile(a, t, o, 4, 4, dt);
    switch (a->tokens - t) {
    case 3:
        for (int32_t o = 0; o < a->out_pad; o += 64)
            layer_tile(a, t, o, 3, 4, dt);
        break;
    case 2:
        for (int32_t o = 0; o < a->out_pad; o += 128)
            layer_tile(a, t, o, 2, 8, dt);
        break;
    case 1:
        for (int32_t o = 0; o < a->out_pad; o += 128)
            layer_tile(a, t, o, 1, 8, dt);
        break;
    default: break;
    }
}

void cpu_mlp_layer_avx512(const cpu_layer_args *a)
{
    switch (a->wt_dtype) {
    case HA_F16: layer(a, HA_F16); break;
    case HA_BF16: layer(a, HA_BF16); break;
    default: layer(a, HA_F32); break;
    }
}
