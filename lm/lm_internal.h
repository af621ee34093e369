/*
 * lm_internal.h — what the runner's files share: the error helpers, the loaded model (packed fp32
 * weights) and the tokenizer/config entry points used by lm_model_load.
 */
#ifndef LM_INTERNAL_H
#define LM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "lm.h"
#include "lm_kernels.h"

/* ---- errors (lm_error.c) ---------------------------------------------------------------------- */

void lm_clear_error(void);
/** Sets this thread's message (printf format) and returns status. */
ha_status lm_fail(ha_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** For a failed ha_* call: "<what>: <ha_last_error()>", returns status. */
ha_status lm_fail_ha(ha_status status, const char *what);

/* ---- weights ---------------------------------------------------------------------------------- */

/** A weight matrix W [n, k] (HF [out, in]) packed in panels of LM_NR columns (see lm_kernels.h). */
typedef struct lm_matrix {
    float *panels; /**< ceil(n/LM_NR) panels of k×LM_NR floats; columns past n are zero */
    int64_t n;
    int64_t k;
} lm_matrix;

typedef struct lm_layer {
    float *attn_norm; /**< [hidden] */
    float *ffn_norm;  /**< [hidden] */
    lm_matrix qkv;    /**< q, k, v projections stacked: n = (Hq + 2 Hkv)·head_dim, k = hidden */
    lm_matrix o;      /**< n = hidden, k = Hq·head_dim */
    lm_matrix gate_up; /**< gate then up: n = 2·intermediate, k = hidden */
    lm_matrix down;   /**< n = hidden, k = intermediate */
} lm_layer;

struct lm_model {
    lm_config cfg;
    lm_tokenizer *tok;
    const lm_kernels *kern;
    float *embed;      /**< [vocab, hidden] */
    float *final_norm; /**< [hidden] */
    lm_matrix lm_head; /**< n = vocab, k = hidden (embed packed again when tied) */
    lm_layer *layers;
    float *rope_cos;   /**< [max_positions, head_dim/2] */
    float *rope_sin;
    size_t bytes;
};

/** y[m, n] = x[m, k] · Wᵀ, OpenMP over row blocks × panels. */
void lm_linear(const lm_kernels *kern, const lm_matrix *w, int64_t m, const float *x, int64_t ldx, float *y,
               int64_t ldy);

#endif /* LM_INTERNAL_H */
