/*
 * ha_train_data.h — the training data of ha-train: windows of a text run through the model once,
 * with the post-RoPE keys of every sparse layer (all positions), the queries of chosen rows, and
 * for each (layer, query head, row) the training target as logit thresholds: candidate j is a
 * positive of level l iff q_i·k_j ≥ thr_l, where thr_l is the K_l-th largest candidate logit.
 *
 * A window is BOS + window−1 consecutive text tokens. Row at position i (0-based in the window) has
 * length n = i+1 and candidates [sink, n − local) (SPEC §1.3). Level l keeps K_l = topk candidates
 * (the paper's target, one level) or K_l = ⌊frac_l · n⌋, the runtime's heavy budget at that length
 * (targets at the evaluation budgets). Keeping thresholds rather than index lists costs a few floats
 * per row whatever K is; the trainer recomputes the logits of the rows it uses.
 */
#ifndef HA_TRAIN_DATA_H
#define HA_TRAIN_DATA_H

#include <stdint.h>

#include "lm.h"

#define TR_MAX_LEVELS 8

typedef struct tr_window {
    int64_t n;          /**< tokens in the window                                           */
    int32_t rows;       /**< query rows captured                                            */
    int32_t *pos;       /**< [rows] ascending positions                                     */
    float **k;          /**< [sparse layer] → [Hkv, n, d]                                   */
    float **q;          /**< [sparse layer] → [Hq, rows, d]                                 */
    float **thr;        /**< [sparse layer] → [Hq, rows, n_levels] threshold logits          */
} tr_window;

typedef struct tr_data_geom {
    int32_t n_sparse;        /**< sparse layers                                       */
    const int32_t *layers;   /**< [n_sparse] their model indices                      */
    int32_t q_heads, kv_heads, head_dim;
    int32_t sink, local, topk;
    int32_t n_levels;                 /**< target levels (1..TR_MAX_LEVELS)                  */
    double frac[TR_MAX_LEVELS];       /**< per level: budget fraction, or 0 for topk keys    */
} tr_data_geom;

/** Positives of a level for a row of length len with cand candidates (at least 1, at most cand). */
int64_t tr_level_count(const tr_data_geom *g, int32_t level, int64_t len, int64_t cand);

/**
 * Runs tokens[0..n) (BOS first) through the session and keeps what the window needs: keys of every
 * position, queries of the rows at pos[0..rows) (ascending, each ≥ sink + local + topk), thresholds.
 * Returns 0, or -1 with a message on stderr.
 */
int tr_window_capture(tr_window *w, lm_session *s, const tr_data_geom *g, const int32_t *tokens, int64_t n,
                      const int32_t *pos, int32_t rows);
void tr_window_free(tr_window *w, const tr_data_geom *g);

/** Logit q·k over d (fixed summation order). */
float tr_dot(const float *a, const float *b, int32_t d);

/**
 * The k-th largest of a[0..n) (1 ≤ k ≤ n); reorders a so that a[0..k) are the k largest
 * (quickselect, deterministic pivots).
 */
float tr_kth_largest(float *a, int64_t n, int64_t k);

#endif /* HA_TRAIN_DATA_H */
