/*
 * ha_eval.h — the pieces of ha-eval (SPEC §5: selection quality on a real model's attention) and
 * the data they share. ha_eval_main.c drives them:
 *
 *   capture   (ha_eval_capture.c)  tokenize the text, prefill one window densely with the model
 *                                  runner, keep post-RoPE q of the query rows and k, v of every key
 *   learned   (ha_eval_learned.c)  kept sets of the runtime itself: ha_cache_encode_keys,
 *                                  ha_encode_queries, ha_match through the public API
 *   baselines (ha_eval_select.c)   oracle top-k, SimHash-32 with the MIPS transform, Quest pages,
 *                                  sink + local only; and the recall/error of any kept set
 *   lm        (ha_eval_lm.c)       perplexity and next-token agreement with sparse decode attention
 *   report    (ha_eval_report.c)   the progress line (tables and JSON: ha_eval_main.c)
 */
#ifndef HA_EVAL_H
#define HA_EVAL_H

#include <stdint.h>
#include <stdio.h>

#include "hashattn.h"
#include "lm.h"

#define EVAL_MAX_BUDGETS 8
#define EVAL_MAX_WEIGHTS 8

/* ---- what the window's prefill captured -------------------------------------------------------- */

typedef struct eval_capture {
    int32_t layers, q_heads, kv_heads, head_dim;
    int64_t n;                  /**< window length (keys)                                        */
    int64_t row_begin, row_end; /**< query rows [row_begin, row_end)                              */
    int32_t *tokens;            /**< [n]: BOS + the text's first n-1 tokens                        */
    const uint8_t *wanted;      /**< [layers]: 1 when the layer's q/k/v are kept                  */
    float **q;                  /**< per layer: [rows, Hq, d] (NULL if not wanted)                */
    float **k, **v;             /**< per layer: [Hkv, n, d], head-major like the API's ha_kv      */
} eval_capture;

/** Tokenizes text, keeps BOS + the first window-1 tokens, prefills them densely and captures. */
ha_status eval_capture_window(const lm_model *m, const char *text, size_t text_len, int64_t window,
                              int64_t row_begin, int64_t row_end, const uint8_t *wanted, eval_capture *out);
void eval_capture_free(eval_capture *c);

/* ---- budgets ---------------------------------------------------------------------------------- */

typedef struct eval_budget {
    char name[24];   /**< as given: "1/32"                                            */
    double fraction; /**< heavy = floor(fraction · n)                                 */
} eval_budget;

typedef struct eval_window_rule {
    int32_t sink, local;
} eval_window_rule;

/* ---- kept sets of the runtime (learned codes) ---------------------------------------------------- */

/** Per budget: indices [rows, S, max_kept] and counts [rows, S] that ha_match returned for a layer. */
typedef struct eval_learned_sets {
    int32_t selection_heads; /**< S: Hq in paper mode, Hkv in group mode */
    int64_t max_kept[EVAL_MAX_BUDGETS];
    int32_t *indices[EVAL_MAX_BUDGETS];
    int32_t *counts[EVAL_MAX_BUDGETS];
} eval_learned_sets;

/** A runtime, the mapping weights and the captured window's K/V, keys encoded, ready to match. */
typedef struct eval_learned eval_learned;

/** w (borrowed) must outlive the handle. */
ha_status eval_learned_open(ha_runtime *rt, const ha_weights *w, const eval_capture *c, const eval_budget *budgets,
                            int32_t num_budgets, eval_window_rule rule, eval_learned **out);
/** 1 when the weights run layer sparse. */
int eval_learned_layer_is_sparse(const eval_learned *e, int32_t layer);
/** The kept sets of every query row of layer, at every budget (sets is overwritten). */
ha_status eval_learned_select(eval_learned *e, int32_t layer, eval_learned_sets *sets);
void eval_learned_sets_free(eval_learned_sets *sets);
void eval_learned_close(eval_learned *e);
/** "paper" or "group", and the code length. */
const char *eval_learned_mode(const eval_learned *e);
int32_t eval_learned_bits(const eval_learned *e);

/* ---- the baselines and the metrics ------------------------------------------------------------- */

typedef enum eval_baseline {
    EVAL_ORACLE = 0,   /**< top heavy by the true logits                                  */
    EVAL_SIMHASH_MIPS, /**< 32 random hyperplanes over keys augmented to equal norm       */
    EVAL_QUEST_16,     /**< pages of 16, per-channel fp16 min/max upper bound             */
    EVAL_QUEST_128,    /**< pages of 128: 32 auxiliary bits per token, as our codes       */
    EVAL_SINK_LOCAL,   /**< no heavy tokens                                               */
    EVAL_NUM_BASELINES
} eval_baseline;

const char *eval_baseline_name(eval_baseline b);
/** Auxiliary bits per token and key head the method keeps (for the report). */
int32_t eval_baseline_bits(eval_baseline b, int32_t head_dim);

/** Per-layer state of the baselines that need precomputation (SimHash key codes, Quest pages). */
typedef struct eval_layer_index eval_layer_index;

eval_layer_index *eval_layer_index_build(const eval_capture *c, int32_t layer, uint64_t seed);
void eval_layer_index_free(eval_layer_index *x);

/** Recall of attention mass and relative output error, one (layer, query head, row) at a time. */
typedef struct eval_metric {
    double recall, error;
} eval_metric;

/**
 * Evaluates one (layer, query head h, row r): true causal softmax, then every baseline at every
 * budget (out_baselines[b * num_budgets + k]) and, for each learned set given, its kept set
 * (out_learned[w * num_budgets + k]). scratch: eval_scratch_floats(c) floats of this thread.
 */
void eval_one_query(const eval_capture *c, const eval_layer_index *x, int32_t layer, int32_t h, int64_t r,
                    const eval_budget *budgets, int32_t num_budgets, eval_window_rule rule,
                    const eval_learned_sets *const *learned, int32_t num_learned, void *scratch,
                    eval_metric *out_baselines, eval_metric *out_learned);
size_t eval_scratch_bytes(const eval_capture *c);

/* ---- perplexity and agreement -------------------------------------------------------------------- */

typedef struct eval_lm_run {
    double nll;        /**< mean next-token negative log-likelihood, nats              */
    double agreement;  /**< share of targets whose argmax equals the dense run's        */
    double seconds;    /**< decode time                                                 */
    int64_t targets;
} eval_lm_run;

/** Dense decode over the targets: keeps the argmax and NLL per target for later comparison. */
typedef struct eval_lm_dense {
    int64_t begin, end; /**< decode steps feed tokens [begin, end-1); targets begin+1 .. end-1 */
    int32_t *argmax;
    eval_lm_run run;
} eval_lm_dense;

/** Prefills tokens [0, begin) densely, then decodes begin .. end-2, scoring targets begin+1 .. end-1. */
ha_status eval_lm_dense_run(const lm_model *m, ha_runtime *rt, const int32_t *tokens, int64_t begin, int64_t end,
                            eval_lm_dense *out);
/** Same with HashAttention in the weights' sparse layers at one budget; agreement against dense. */
ha_status eval_lm_sparse_run(const lm_model *m, ha_runtime *rt, const ha_weights *w, const int32_t *tokens,
                             const eval_lm_dense *dense, eval_window_rule rule, double fraction, eval_lm_run *out);
void eval_lm_dense_free(eval_lm_dense *d);

/* ---- report ----------------------------------------------------------------------------------- */

/** A progress line on stderr ("\r" on a terminal, else a line every 15 s): phase, done/total, ETA. */
void eval_progress(const char *phase, int64_t done, int64_t total, double started_s);
double eval_now_s(void);

#endif /* HA_EVAL_H */
