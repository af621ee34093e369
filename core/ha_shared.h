/*
 * ha_shared.h — small pieces of logic that the core, its reference and every in-tree plugin share,
 * so that the budget rule and the half-precision conversions exist exactly once. Header-only,
 * internal (not installed); out-of-tree plugins may copy what they need.
 */
#ifndef HA_SHARED_H
#define HA_SHARED_H

#include <stdint.h>
#include <string.h>

#include "hashattn_plugin.h"

#ifdef __CUDACC__
#define HA_HD __host__ __device__
#else
#define HA_HD
#endif

/* ---- selection budget (SPEC §1.3) ----------------------------------------------------------- */

/** Heavy tokens for a sequence of length n: floor(fraction*n) when fraction > 0, else count. */
static inline HA_HD int64_t ha_heavy_for_length(int64_t n, double heavy_fraction, int64_t heavy_count)
{
    if (n <= 0)
        return 0;
    if (heavy_fraction > 0.0) {
        double heavy = heavy_fraction * (double)n; /* ≥ n only by rounding near INT64_MAX */
        return heavy >= (double)n ? n : (int64_t)heavy;
    }
    return heavy_count > 0 ? heavy_count : 0;
}

/** Tokens kept for length n: n when n ≤ sink+local+heavy, else sink + local + heavy. */
static inline HA_HD int64_t ha_kept_for_length(int64_t n, int32_t sink, int32_t local, double heavy_fraction,
                                               int64_t heavy_count)
{
    if (n <= 0)
        return 0;
    int64_t heavy = ha_heavy_for_length(n, heavy_fraction, heavy_count);
    int64_t windows = (int64_t)sink + (int64_t)local; /* compared without adding heavy: it may be INT64_MAX */
    return n <= windows || heavy >= n - windows ? n : windows + heavy;
}

/** Start of the local window: tokens [local_start, n) are always kept; candidates are [sink, local_start). */
static inline HA_HD int64_t ha_local_start(int64_t n, int32_t sink, int32_t local)
{
    int64_t s = n - (int64_t)local;
    return s < (int64_t)sink ? (int64_t)sink : s;
}

/* ---- half precision ----------------------------------------------------------------------- */

static inline HA_HD float ha_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/** Round to nearest even; NaN stays NaN. */
static inline HA_HD uint16_t ha_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline HA_HD float ha_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/** Round to nearest even, overflow to inf, NaN stays NaN. */
static inline HA_HD uint16_t ha_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u);
    if (abs >= 0x477ff000u) /* rounds to ≥ 65520: inf */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) { /* below the smallest normal: subnormal or zero */
        if (abs < 0x33000000u)
            return (uint16_t)sign;
        uint32_t e = abs >> 23;
        uint32_t man = (abs & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u); /* round mantissa to 10 bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

/** Element i of a row of dtype dt, as float. */
static inline HA_HD float ha_load_f32(const void *row, ha_dtype dt, int64_t i)
{
    switch (dt) {
    case HA_F16: return ha_f16_to_f32(((const uint16_t *)row)[i]);
    case HA_BF16: return ha_bf16_to_f32(((const uint16_t *)row)[i]);
    default: return ((const float *)row)[i];
    }
}

static inline HA_HD void ha_store_f32(void *row, ha_dtype dt, int64_t i, float x)
{
    switch (dt) {
    case HA_F16: ((uint16_t *)row)[i] = ha_f32_to_f16(x); break;
    case HA_BF16: ((uint16_t *)row)[i] = ha_f32_to_bf16(x); break;
    default: ((float *)row)[i] = x; break;
    }
}

static inline HA_HD size_t ha_elem_size(ha_dtype dt)
{
    return dt == HA_F32 ? 4u : (dt == HA_F16 || dt == HA_BF16) ? 2u : 0u;
}

/** Pointer to row (b, h, t) of r. */
static inline HA_HD const void *ha_rows_ptr(const ha_rows *r, size_t elem, int64_t b, int64_t h, int64_t t)
{
    return (const char *)r->data + ha_rows_offset(r, b, h, t) * (int64_t)elem;
}

#endif /* HA_SHARED_H */
