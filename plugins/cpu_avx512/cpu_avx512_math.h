/*
 * cpu_avx512_math.h — inline AVX-512 helpers shared by the cpu_*_avx512.c kernels: row loads of
 * any storage dtype, exp, SiLU and a 16-way horizontal sum. Include only from translation units
 * compiled with the AVX-512 flags.
 */
#ifndef HA_CPU_AVX512_MATH_H
#define HA_CPU_AVX512_MATH_H

#include <immintrin.h>

#include "cpu_internal.h"

#define CPU_INLINE static inline __attribute__((always_inline))
/* Fully unrolls a loop with a constant trip count, so that arrays of vectors stay in registers
 * (gcc -O2 leaves such loops rolled and keeps the accumulators in memory). */
#define CPU_UNROLL _Pragma("GCC unroll 16")

/** Lanes [0, n) set (n ≤ 0: none, n ≥ 16: all). */
CPU_INLINE __mmask16 cpu_tail_mask(int64_t n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/** How many lanes of m are set. Not __builtin_popcount(m): gcc 12 may spill the mask with a 16-bit
 * kmovw and then popcount the 32-bit stack slot, counting two bytes of stale stack as lanes (seen in
 * the ThreadSanitizer build of the match: candidates went missing now and then). kmovw to a general
 * register zero-extends, so counting that is exact whatever the register allocation. */
CPU_INLINE int cpu_mask_count16(__mmask16 m)
{
    return _mm_popcnt_u32(_cvtmask16_u32(m));
}

/** Elements [i, i + 16) of a row of dtype dt as fp32; lanes outside m are 0 and not read. */
CPU_INLINE __m512 cpu_load16(const void *row, int64_t i, ha_dtype dt, __mmask16 m)
{
    switch (dt) {
    case HA_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i));
    case HA_BF16: {
        __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    }
    default: return _mm512_maskz_loadu_ps(m, (const float *)row + i);
    }
}

/** e^x to about 1 ulp (Cephes expf polynomial, scaled by vscalefps); 0 below -104, inf above 88.7. */
CPU_INLINE __m512 cpu_exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.8f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}

CPU_INLINE __m512 cpu_silu512(__m512 x)
{
    __m512 e = cpu_exp512(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

/** Lane j = the sum of the 16 lanes of a[j]: four halving steps, then one permute to put lanes in order. */
CPU_INLINE __m512 cpu_hsum16(const __m512 *a)
{
    __m512 b[8], c[4], d[2];
    CPU_UNROLL
    for (int i = 0; i < 8; i++) /* 256-bit halves: b[i] = [a[i] partials, a[i+8] partials] */
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(a[i], a[i + 8], _MM_SHUFFLE(3, 2, 3, 2)));
    CPU_UNROLL
    for (int i = 0; i < 4; i++) /* 128-bit quarters: a[i], a[i+8], a[i+4], a[i+12] */
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[i], b[i + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(b[i], b[i + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    CPU_UNROLL
    for (int i = 0; i < 2; i++) /* pairs within quarters */
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[i], c[i + 2], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(c[i], c[i + 2], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* e holds the sums of a[] in the order 0 2 1 3 | 8 10 9 11 | 4 6 5 7 | 12 14 13 15 */
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    return _mm512_permutexvar_ps(order, e);
}

#endif /* HA_CPU_AVX512_MATH_H */
