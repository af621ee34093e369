/*
 * reference_steps.h — the core's scalar reference of each stage (core/reference.h) run on a test's
 * host buffers: the key codes of a whole KV cache, query codes, selection, attention. For the tests
 * that compare a backend with the reference (conformance, threads). A failing stage fails the
 * running cmocka test.
 */
#ifndef HA_REFERENCE_STEPS_H
#define HA_REFERENCE_STEPS_H

#include <stdint.h>

#include "hashattn_plugin.h"

/** Shapes of one comparison and the reference's own key-code buffer. */
typedef struct tu_ref {
    int32_t batch;
    int32_t q_heads, kv_heads, head_dim;
    int32_t code_heads; /* key-code heads: q_heads (paper mode) or kv_heads (group mode) */
    int32_t sel_heads;  /* selection heads (rows of the match output per sequence) */
    int32_t words, bits;
    int64_t tokens;     /* tokens per sequence in k_codes */
    uint32_t *k_codes;  /* [batch, code_heads, tokens, words] */
} tu_ref;

/** A selection budget as in ha_plan_config: sink/local -1 mean the default 128. */
typedef struct tu_selection {
    int32_t sink, local;
    double heavy_fraction;
    int64_t heavy_count;
} tu_selection;

ha_rows tu_ref_code_rows(const tu_ref *r);
/** Poisons k_codes, then encodes tokens [end[b] - count, end[b]) of keys with k_mlp into it. */
void tu_ref_key_codes(const tu_ref *r, const ha_mlp_desc *k_mlp, ha_rows keys, const int32_t *end, int32_t count);
/** Codes [batch, q_heads, words] of the queries (one token per sequence). */
void tu_ref_query_codes(const tu_ref *r, const ha_mlp_desc *q_mlp, ha_rows queries, uint32_t *codes);
/** Selection of every (sequence, selection head) against k_codes; rows of max_kept indices. */
void tu_ref_match(const tu_ref *r, const tu_selection *sel, const uint32_t *q_codes, const int32_t *lens,
                  int64_t max_kept, int32_t *indices, int32_t *counts);
/** Attention into out [batch, q_heads, head_dim] (fp32) and lse; indices NULL = dense. */
void tu_ref_attend(const tu_ref *r, ha_rows q, ha_rows k, ha_rows v, float scale, const int32_t *lens,
                   const int32_t *indices, const int32_t *counts, int64_t index_stride, float *out, float *lse);

#endif /* HA_REFERENCE_STEPS_H */
