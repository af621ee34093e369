/*
 * ha_train_mlp.h — the mapping function of one hash head as ha-train learns it: an MLP
 * d → hidden → … → bits with SiLU between layers (SPEC §1.1), its forward pass over a block of rows
 * followed by tanh (the relaxed code), the backward pass written by hand, and Adam.
 *
 * Single-threaded on purpose: ha-train runs independent heads in parallel, so every result is the
 * same whatever the number of threads (no shared reductions). Row-major arrays, weights [out, in] as
 * in the weights file.
 */
#ifndef HA_TRAIN_MLP_H
#define HA_TRAIN_MLP_H

#include <stddef.h>
#include <stdint.h>

#define TR_MAX_DEPTH 4

typedef struct tr_mlp {
    int32_t depth;
    int32_t dims[TR_MAX_DEPTH + 1]; /**< dims[0] = input (head_dim), dims[depth] = bits          */
    size_t n_params;
    float *p;                       /**< all weights and biases: W1, b1, W2, b2, …               */
    float *g;                       /**< gradient, same layout                                    */
    float *m, *v;                   /**< Adam moments                                             */
    size_t w_off[TR_MAX_DEPTH], b_off[TR_MAX_DEPTH];
} tr_mlp;

/** Scratch of one forward/backward pass over up to max_rows rows (reused across calls). */
typedef struct tr_mlp_work {
    int64_t max_rows;
    float *pre[TR_MAX_DEPTH]; /**< pre-activations of each layer [rows, dims[i+1]]                 */
    float *act[TR_MAX_DEPTH]; /**< SiLU of pre for hidden layers; tanh of the output for the last  */
    float *d_a, *d_b;         /**< gradient ping-pong buffers [rows, max width]                    */
    float *wt;                /**< one layer's transposed weights [in, out]                        */
} tr_mlp_work;

/** Allocates and initializes like torch.nn.Linear (U(−1/√in, 1/√in) weights and biases), from seed. */
int tr_mlp_init(tr_mlp *f, int32_t depth, int32_t in, int32_t hidden, int32_t bits, uint64_t seed);
void tr_mlp_free(tr_mlp *f);
int tr_mlp_work_init(tr_mlp_work *w, const tr_mlp *f, int64_t max_rows);
void tr_mlp_work_free(tr_mlp_work *w);

/** Codes T = tanh(F(X)) for rows of x [rows, dims[0]]; returns T (inside w, [rows, bits]). */
const float *tr_mlp_forward(const tr_mlp *f, tr_mlp_work *w, const float *x, int64_t rows);
/** Adds to f->g the gradient for dL/dT = dt [rows, bits] of the last forward over the same x. */
void tr_mlp_backward(tr_mlp *f, tr_mlp_work *w, const float *x, int64_t rows, const float *dt);
/** Zeroes the gradient. */
void tr_mlp_zero_grad(tr_mlp *f);
/** One Adam step (β1 0.9, β2 0.999, ε 1e-8) with step number t ≥ 1. */
void tr_mlp_adam(tr_mlp *f, float lr, int64_t t);

/** exp(x) to ~1e-7 relative error for |x| ≤ 87, written so that loops over it vectorize. */
static inline float tr_exp(float x)
{
    x = x < -87.0f ? -87.0f : (x > 87.0f ? 87.0f : x);
    float n = __builtin_floorf(x * 1.44269504f + 0.5f);
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union { float f; int32_t i; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

static inline float tr_sigmoid(float x) { return 1.0f / (1.0f + tr_exp(-x)); }

#endif /* HA_TRAIN_MLP_H */
