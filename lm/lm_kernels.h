/*
 * lm_kernels.h — the runner's hot loops (matrix product, softmax row, SwiGLU), built twice from
 * lm_kernels.c: once for the baseline ISA and once with AVX-512 + FMA; lm_kernels_get() picks one at
 * run time, so the runner never executes an instruction the CPU lacks.
 *
 * Matrices are fp32 row-major. The right operand B of a product is read in panels of LM_NR columns:
 * row p of panel j is the LM_NR floats at b + j*panel_stride + p*ldb. A weight matrix W [N, K] (the
 * Hugging Face [out, in] layout) is packed once into contiguous panels (ldb = LM_NR, panel_stride =
 * K*LM_NR, zero columns past N); a row-major [K, N] matrix is used in place (ldb = N, panel_stride =
 * LM_NR).
 */
#ifndef LM_KERNELS_H
#define LM_KERNELS_H

#include <stdint.h>

/** Columns of a panel. */
#define LM_NR 32

typedef struct lm_kernels {
    const char *name;
    /**
     * C[m, n] = A[m, k] · B (C overwritten, single thread). B must be readable for whole panels
     * (ceil(n/LM_NR)*LM_NR columns); only n columns of C are written. Every element is the sum over
     * p = 0..k-1 in order, so a row computes the same bits whatever m is.
     */
    void (*gemm)(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                 int64_t panel_stride, float *c, int64_t ldc);
    /** x[i] = exp(scale * (x[i] - max x)) for i < n; returns the sum (n ≥ 1). */
    float (*softmax_row)(float *x, int64_t n, float scale);
    /** g[i] = silu(g[i]) * u[i] (SwiGLU's gate). */
    void (*silu_mul)(float *g, const float *u, int64_t n);
} lm_kernels;

/** The best kernels this CPU runs; LM_KERNELS=portable forces the baseline ones. */
const lm_kernels *lm_kernels_get(void);

#endif /* LM_KERNELS_H */
