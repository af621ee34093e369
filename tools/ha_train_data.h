/*
 * ha_train_data.h — the training data of ha-train: windows of a text run through the model once,
 * with the post-RoPE keys of every sparse layer (all positions), the queries of chosen rows, and
 * for each (layer, query head, row) the training target: the top-k candidate keys by true logit.
 *
 * A window is BOS + window−1 consecutive text tokens. Row at position i (0-based in the window) has
 * length n = i+1 and candidates [sink, n − local) (SPEC §1.3); its target is the topk candidates of
 * largest q_i·k_j (equal logits: higher index first).
 */
#ifndef HA_TRAIN_DATA_H
#define HA_TRAIN_DATA_H

#include <stdint.h>

#include "lm.h"

typedef struct tr_window {
    int64_t n;          /**< tokens in the window                                           */
    int32_t rows;       /**< query rows captured                                            */
    int32_t *pos;       /**< [rows] ascending positions                                     */
    float **k;          /**< [sparse layer] → [Hkv, n, d]                                   */
    float **q;          /**< [sparse layer] → [Hq, rows, d]                                 */
    int32_t **top;      /**< [sparse layer] → [Hq, rows, topk] target indices (ascending)   */
} tr_window;

typedef struct tr_data_geom {
    int32_t n_sparse;        /**< sparse layers                                       */
    const int32_t *layers;   /**< [n_sparse] their model indices                      */
    int32_t q_heads, kv_heads, head_dim;
    int32_t sink, local, topk;
} tr_data_geom;

/**
 * Runs tokens[0..n) (BOS first) through the session and keeps what the window needs: keys of every
 * position, queries of the rows at pos[0..rows) (ascending, each ≥ sink + local + topk), targets.
 * Returns 0, or -1 with a message on stderr.
 */
int tr_window_capture(tr_window *w, lm_session *s, const tr_data_geom *g, const int32_t *tokens, int64_t n,
                      const int32_t *pos, int32_t rows);
void tr_window_free(tr_window *w, const tr_data_geom *g);

/** Logit q·k over d (fixed summation order). */
float tr_dot(const float *a, const float *b, int32_t d);

#endif /* HA_TRAIN_DATA_H */
