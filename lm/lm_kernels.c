/*
 * lm_kernels.c — the kernels of lm_kernels.h in GCC/Clang vector extensions, compiled once per ISA:
 * LM_KERNELS_ISA names the table (lm_kernels_<isa>), LM_VEC_BYTES the vector width and LM_MR the rows
 * of the register tile. The AVX-512 build (64-byte vectors, -mfma) keeps an 8×32 tile of C in 16
 * registers; the baseline build uses 16-byte vectors (SSE2 / NEON).
 */
#include <string.h>

#include "lm_kernels.h"

#if !defined(LM_KERNELS_ISA) || !defined(LM_VEC_BYTES) || !defined(LM_MR)
#error "build with -DLM_KERNELS_ISA=<name> -DLM_VEC_BYTES=<16|32|64> -DLM_MR=<rows>"
#endif

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define TABLE_NAME CAT(lm_kernels_, LM_KERNELS_ISA)

#define VL (LM_VEC_BYTES / 4)  /* floats per vector */
#define NV (LM_NR / VL)        /* vectors per panel row */

typedef float vf __attribute__((vector_size(LM_VEC_BYTES)));
typedef int32_t vi __attribute__((vector_size(LM_VEC_BYTES)));

static inline vf load(const float *p)
{
    vf v;
    memcpy(&v, p, sizeof(v));
    return v;
}

static inline void store(float *p, vf v)
{
    memcpy(p, &v, sizeof(v));
}

static inline vf splat(float x)
{
    return (vf){0} + x;
}

/* mask ? a : b per lane (mask lanes are all ones or all zeros, as comparisons give) */
static inline vf select(vi mask, vf a, vf b)
{
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* ---- matrix product ------------------------------------------------------------------------- */

/* C tile [ROWS, nc ≤ LM_NR] = A[ROWS, k] · one panel of B; accumulators stay in registers. */
#define DEFINE_TILE(NAME, ROWS)                                                                          \
    static void NAME(int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb, float *c,      \
                     int64_t ldc, int64_t nc)                                                           \
    {                                                                                                   \
        vf acc[ROWS][NV];                                                                               \
        _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; r++)                                         \
            _Pragma("GCC unroll 16") for (int j = 0; j < NV; j++) acc[r][j] = splat(0.0f);              \
        for (int64_t p = 0; p < k; p++) {                                                               \
            vf bv[NV];                                                                                  \
            _Pragma("GCC unroll 16") for (int j = 0; j < NV; j++) bv[j] = load(b + p * ldb + j * VL);   \
            _Pragma("GCC unroll 16") for (int r = 0; r < ROWS; r++)                                     \
            {                                                                                           \
                float av = a[r * lda + p];                                                              \
                _Pragma("GCC unroll 16") for (int j = 0; j < NV; j++) acc[r][j] += bv[j] * av;          \
            }                                                                                           \
        }                                                                                               \
        for (int r = 0; r < ROWS; r++) {                                                                \
            if (nc == LM_NR) {                                                                          \
                _Pragma("GCC unroll 16") for (int j = 0; j < NV; j++) store(c + r * ldc + j * VL,       \
                                                                            acc[r][j]);                 \
            } else {                                                                                    \
                float tmp[LM_NR];                                                                       \
                for (int j = 0; j < NV; j++)                                                            \
                    store(tmp + j * VL, acc[r][j]);                                                     \
                memcpy(c + r * ldc, tmp, (size_t)nc * sizeof(float));                                  \
            }                                                                                           \
        }                                                                                               \
    }

DEFINE_TILE(tile_mr, LM_MR)
DEFINE_TILE(tile_1, 1)

static void gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                 int64_t panel_stride, float *c, int64_t ldc)
{
    for (int64_t j0 = 0; j0 < n; j0 += LM_NR) {
        const float *panel = b + (j0 / LM_NR) * panel_stride;
        int64_t nc = n - j0 < LM_NR ? n - j0 : LM_NR;
        int64_t i = 0;
        for (; i + LM_MR <= m; i += LM_MR)
            tile_mr(k, a + i * lda, lda, panel, ldb, c + i * ldc + j0, ldc, nc);
        for (; i < m; i++)
            tile_1(k, a + i * lda, lda, panel, ldb, c + i * ldc + j0, ldc, nc);
    }
}

/* ---- exp, softmax, SwiGLU ---------------------------------------------------------------------- */

/* exp(x) for a vector: Cephes' expf (x = n·ln2 + r, degree-6 polynomial, ≤ 2 ulp on the clamped
 * range). Below -87.3 it returns ~1e-38 instead of underflowing further, which no caller minds. */
static inline vf vexp(vf x)
{
    const vf hi = splat(88.3762626647949f), lo = splat(-87.3365478515625f);
    x = select(x > hi, hi, x);
    x = select(x < lo, lo, x);
    vf fx = x * 1.44269504088896341f + 0.5f;
    vf fl = __builtin_convertvector(__builtin_convertvector(fx, vi), vf); /* trunc */
    fl = fl - (vf)((vi)(fl > fx) & (vi)splat(1.0f));                     /* floor */
    x = x - fl * 0.693359375f;
    x = x - fl * -2.12194440e-4f;
    vf z = x * x;
    vf y = splat(1.9875691500E-4f);
    y = y * x + 1.3981999507E-3f;
    y = y * x + 8.3334519073E-3f;
    y = y * x + 4.1665795894E-2f;
    y = y * x + 1.6666665459E-1f;
    y = y * x + 5.0000001201E-1f;
    y = y * z + x + 1.0f;
    vi e = (__builtin_convertvector(fl, vi) + 127) << 23;
    return y * (vf)e;
}

/* Whole vectors first; the tail goes through a padded vector, so every element is computed alike. */
static float softmax_row(float *x, int64_t n, float scale)
{
    float mx = x[0];
    for (int64_t i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    vf vsum = splat(0.0f);
    int64_t i = 0;
    for (; i + VL <= n; i += VL) {
        vf e = vexp((load(x + i) - mx) * scale);
        store(x + i, e);
        vsum += e;
    }
    float sum = 0.0f;
    for (int j = 0; j < VL; j++)
        sum += vsum[j];
    if (i < n) {
        float tmp[VL];
        for (int j = 0; j < VL; j++)
            tmp[j] = i + j < n ? x[i + j] : mx;
        vf e = vexp((load(tmp) - mx) * scale);
        store(tmp, e);
        for (int j = 0; i + j < n; j++) {
            x[i + j] = tmp[j];
            sum += tmp[j];
        }
    }
    return sum;
}

static inline vf silu_mul_vec(vf g, vf u)
{
    return g / (vexp(-g) + 1.0f) * u;
}

static void silu_mul(float *g, const float *u, int64_t n)
{
    int64_t i = 0;
    for (; i + VL <= n; i += VL)
        store(g + i, silu_mul_vec(load(g + i), load(u + i)));
    if (i < n) {
        float tg[VL] = {0}, tu[VL] = {0};
        memcpy(tg, g + i, (size_t)(n - i) * sizeof(float));
        memcpy(tu, u + i, (size_t)(n - i) * sizeof(float));
        store(tg, silu_mul_vec(load(tg), load(tu)));
        memcpy(g + i, tg, (size_t)(n - i) * sizeof(float));
    }
}

#define STR2(x) #x
#define STR(x) STR2(x)

const lm_kernels TABLE_NAME = {
    .name = STR(LM_KERNELS_ISA),
    .gemm = gemm,
    .softmax_row = softmax_row,
    .silu_mul = silu_mul,
};
