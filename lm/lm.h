/*
 * lm.h — a CPU runner for Llama-architecture decoder models stored the Hugging Face way (config.json,
 * safetensors shards, a byte-level BPE tokenizer in vocab.json + merges.txt), built to feed and check
 * the HashAttention runtime on a real model (models/tinylm-25m).
 *
 *   lm_model *m;     lm_model_load("models/tinylm-25m", &m);     // config, weights (bf16 → fp32), tokenizer
 *   lm_session *s;   lm_session_create(m, &session_config, &s);  // KV cache + ha_runtime/ha_plan[/ha_cache]
 *   lm_prefill(s, ids, n, LM_LOGITS_LAST, logits);               // dense causal attention, on the CPU
 *   lm_decode_step(s, next_id, logits);                          // attention through the public API
 *
 * Compute is fp32 (weights converted from bf16 at load), OpenMP over rows, heads and weight panels.
 * The KV cache has the public API's contiguous ha_kv layout — per layer, K and V are [B=1, Hkv, n_max,
 * head_dim] fp32 in backend memory (ha_mem_alloc) — so a decode step hands it, the query and the
 * output to ha_dense_attend (no mapping weights, or a dense layer) or ha_decode_step (a layer the
 * mapping weights mark sparse), and any backend serves decode: a host-memory backend works on the
 * cache in place; for a device-memory backend the runner keeps a host copy and uploads each new row.
 *
 * Errors: every fallible call returns an ha_status; lm_last_error() then says what was wrong
 * (thread-local, like ha_last_error; a failing ha_* call's own message is included).
 *
 * Threads: a model is read-only after loading and may be shared by any number of sessions and
 * threads; a session belongs to one thread at a time.
 */
#ifndef LM_H
#define LM_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"

/** Message of this thread's last failed lm_* call ("" after a success). Never NULL. */
const char *lm_last_error(void);

/* ---- configuration ---------------------------------------------------------------------------- */

/** The fields of a Hugging Face LlamaConfig the runner needs (config.json). */
typedef struct lm_config {
    int32_t hidden_size;
    int32_t num_layers;
    int32_t num_q_heads;
    int32_t num_kv_heads;     /**< divides num_q_heads; query head h uses KV head h / (Hq/Hkv)     */
    int32_t head_dim;
    int32_t intermediate_size;
    int32_t vocab_size;
    int32_t max_positions;    /**< max_position_embeddings                                          */
    float rms_norm_eps;
    double rope_theta;        /**< rotate-half RoPE, no scaling                                     */
    int32_t tie_embeddings;   /**< 1: the output projection is embed_tokens                         */
    int32_t bos_id;           /**< -1 when config.json has none                                     */
    int32_t eos_id;           /**< -1 when config.json has none                                     */
} lm_config;

/** Reads and validates config.json (jansson); rejects what the runner does not implement (biases,
 *  rope scaling, another activation or model type). */
ha_status lm_config_load(const char *path, lm_config *out);

/* ---- tokenizer -------------------------------------------------------------------------------- */

/**
 * Byte-level BPE as GPT-2 and Hugging Face `tokenizers` do it: special tokens (bos/eos/unk/pad of
 * tokenizer_config.json) are matched in the text first; the rest is split by GPT-2's pre-tokenizer
 * regex (PCRE2); each piece's bytes are merged by rank (merges.txt) and looked up in vocab.json.
 * Decoding concatenates the tokens' bytes. Any byte string round-trips, invalid UTF-8 included
 * (bytes that are not valid UTF-8 form pieces of their own). Read-only after loading: thread-safe.
 */
typedef struct lm_tokenizer lm_tokenizer;

/** Loads vocab.json and merges.txt, and tokenizer_config.json when present, from dir. */
ha_status lm_tokenizer_load(const char *dir, lm_tokenizer **out);
void lm_tokenizer_free(lm_tokenizer *tok);
int32_t lm_tokenizer_vocab_size(const lm_tokenizer *tok);
/** The bytes of token id (not NUL-terminated) and their number; NULL for an id out of range. */
const char *lm_token_bytes(const lm_tokenizer *tok, int32_t id, size_t *len);

/** Encodes len bytes of text. *ids is malloc'ed (free() it; NULL when *n is 0). */
ha_status lm_tokenize(const lm_tokenizer *tok, const char *text, size_t len, int32_t **ids, int64_t *n);
/** Decodes n ids. *text is malloc'ed and NUL-terminated (*len excludes the NUL). */
ha_status lm_detokenize(const lm_tokenizer *tok, const int32_t *ids, int64_t n, char **text, size_t *len);

/* ---- model ------------------------------------------------------------------------------------ */

typedef struct lm_model lm_model;

/**
 * Loads dir/config.json, the weights (dir/model.safetensors.index.json and its shards, or
 * dir/model.safetensors; F32/F16/BF16, converted to fp32) and the tokenizer of dir.
 */
ha_status lm_model_load(const char *dir, lm_model **out);
void lm_model_free(lm_model *m);
const lm_config *lm_model_config(const lm_model *m);
const lm_tokenizer *lm_model_tokenizer(const lm_model *m);
/** Bytes of fp32 weights held (for reports). */
size_t lm_model_bytes(const lm_model *m);

/* ---- sessions: one sequence, its KV cache and its decode state --------------------------------- */

typedef struct lm_session lm_session;

typedef struct lm_session_config {
    int64_t max_tokens;              /**< KV capacity n_max (≤ max_positions); 0: max_positions       */
    ha_runtime *rt;                  /**< decode attention backend (borrowed, outlives the session);
                                          NULL: the session opens its own (HASHATTN_BACKEND / probe) */
    const ha_weights *hash_weights;  /**< NULL: dense decode in every layer. Else layers it marks
                                          sparse decode with HashAttention (ha_decode_step) and the
                                          key codes of every prefilled token are encoded            */
    const ha_plan_config *plan;      /**< budget (sink, local, heavy_*); NULL: ha_plan_config_init's
                                          defaults. Shape fields and scale are set by the session    */
    int32_t prefill_chunk;           /**< tokens per prefill slice, bounds scratch memory; 0: 512   */
} lm_session_config;

/** Fills cfg with defaults (own runtime, dense decode, capacity max_tokens). */
void lm_session_config_init(lm_session_config *cfg, int64_t max_tokens);

ha_status lm_session_create(const lm_model *m, const lm_session_config *cfg, lm_session **out);
void lm_session_free(lm_session *s);
/** Forgets every token (length 0); the KV cache is overwritten by what comes next. */
void lm_session_reset(lm_session *s);
/** Tokens in the KV cache. */
int64_t lm_session_length(const lm_session *s);
int64_t lm_session_capacity(const lm_session *s);

typedef enum lm_logits_mode {
    LM_LOGITS_NONE = 0, /**< skip the output projection (e.g. when only q/k/v are wanted)   */
    LM_LOGITS_LAST = 1, /**< logits of the last token: float[vocab]                       */
    LM_LOGITS_ALL = 2,  /**< logits of every token: float[n, vocab]                       */
} lm_logits_mode;

/**
 * Runs n tokens at positions length .. length+n-1 (causal dense attention over everything cached,
 * in slices of prefill_chunk), appends their K/V to the cache and, with mapping weights, encodes
 * their key codes (ha_cache_encode_keys). May be called again to extend the sequence, also after
 * decode steps. logits as mode says (may be NULL with LM_LOGITS_NONE).
 */
ha_status lm_prefill(lm_session *s, const int32_t *tokens, int64_t n, lm_logits_mode mode, float *logits);

/** Runs one token at position length; attention through the public API. logits: float[vocab] or NULL. */
ha_status lm_decode_step(lm_session *s, int32_t token, float *logits);

/**
 * Observer of every layer's post-RoPE q, k and v, called during prefill and decode after RoPE and
 * before attention, on the calling thread: rows for positions pos .. pos+count-1, token-major —
 * q is [count, Hq, head_dim], k and v are [count, Hkv, head_dim], fp32, valid during the call only.
 */
typedef void (*lm_qkv_hook)(void *user, int32_t layer, int64_t pos, int64_t count, const float *q, const float *k,
                            const float *v);
/** Sets (or, with fn NULL, clears) the session's q/k/v observer. */
void lm_session_set_qkv_hook(lm_session *s, lm_qkv_hook fn, void *user);

/** The KV cache of layer as the public API sees it (backend memory; valid until the session is freed). */
ha_status lm_session_kv(const lm_session *s, int32_t layer, ha_kv *out);
/** The session's hashattn objects (for tools that call the API on the session's cache themselves). */
ha_runtime *lm_session_runtime(const lm_session *s);
ha_plan *lm_session_plan(const lm_session *s);
ha_cache *lm_session_cache(const lm_session *s); /**< NULL without mapping weights */

#endif /* LM_H */
