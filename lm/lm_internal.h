/*
 * lm_internal.h — what the runner's files share: the error helpers, the loaded model (packed fp32
 * weights) and the tokenizer/config entry points used by lm_model_load.
 */
#ifndef LM_INTERNAL_H
#define LM_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "lm.h"
#include "lm_kernels.h"

/* ---- errors (lm_error.c) ---------------------------------------------------------------------- */

void lm_clear_error(void);
/** Sets this thread's message (printf format) and returns status. */
ha_status lm_fail(ha_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** For a failed ha_* call: "<what>: <ha_last_error()>", returns status. */
ha_status lm_fail_ha(ha_status status, const char *what);

/** 64-byte aligned room for count floats (free() it). */
static inline float *lm_alloc_floats(size_t count)
{
    size_t bytes = (count * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

/* ---- configuration and tokenizer from memory (what the file loaders and the fuzz targets call) -- */

/** A file's bytes; name is used in messages. data NULL: the file is absent. */
typedef struct lm_file_bytes {
    const char *name;
    const char *data;
    size_t len;
} lm_file_bytes;

/** lm_config_load on the bytes of a config.json. */
ha_status lm_config_parse(const char *name, const char *json, size_t len, lm_config *out);
/** lm_tokenizer_load on the bytes of vocab.json and merges.txt and (optional: NULL or data NULL)
 *  tokenizer_config.json; the buffers are only read during the call. */
ha_status lm_tokenizer_parse(const lm_file_bytes *vocab, const lm_file_bytes *merges, const lm_file_bytes *config,
                            lm_tokenizer **out);

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

/* ---- sessions (lm_session.c: lifecycle; lm_forward.c: compute) ------------------------------- */

/** One layer's KV cache: [Hkv, n_max, head_dim] fp32 (the ha_kv layout with B = 1). */
typedef struct lm_kv_layer {
    void *k_dev, *v_dev; /**< backend memory (ha_mem_alloc)                                  */
    float *k, *v;        /**< host view: the same memory on a host-memory backend, else a copy */
} lm_kv_layer;

/* Rows of queries per attention task in prefill. */
#define LM_QUERY_BLOCK 64

struct lm_session {
    const lm_model *m;
    ha_runtime *rt;
    int own_rt;
    int host_mem;             /**< backend memory is host memory: no copies              */
    const ha_weights *hw;     /**< mapping weights or NULL                               */
    ha_plan *plan;
    ha_cache *cache;          /**< NULL without mapping weights                          */
    uint8_t *sparse;          /**< [layers]: 1 = decode with ha_decode_step                */
    int64_t n_max;
    int64_t len;
    int64_t chunk;
    int threads;              /**< OpenMP threads the prefill scratch was sized for       */
    lm_kv_layer *kv;          /**< [layers] */
    /* decode: the step's query, output and length in backend memory, and host views of them */
    void *q_dev, *out_dev, *len_dev;
    float *q_host, *out_host;
    /* decode scratch, one token */
    float *x, *xn, *qkv, *tmp, *gu;
    /* prefill scratch, chunk tokens */
    float *px, *pxn, *pbig, *ptmp, *pq, *pk, *pv, *pattn;
    float *kpack;             /**< [Hkv][ceil(n_max/LM_NR) panels of head_dim × LM_NR]    */
    float *scores;            /**< [threads][LM_QUERY_BLOCK × n_pad]                      */
    int64_t n_pad;            /**< n_max rounded up to LM_NR                              */
    lm_qkv_hook hook;
    void *hook_user;
};

/** Copies host rows [pos, pos+count) of every KV head of layer l into backend memory (no-op on a
 *  host-memory backend). */
ha_status lm_session_upload_kv(lm_session *s, int32_t l, int64_t pos, int64_t count);
/** Sets the backend's int32 length (len_dev) to n. */
ha_status lm_session_set_length(lm_session *s, int64_t n);

/** y[m, n] = x[m, k] · Wᵀ, OpenMP over row blocks × panels. */
void lm_linear(const lm_kernels *kern, const lm_matrix *w, int64_t m, const float *x, int64_t ldx, float *y,
               int64_t ldy);

#endif /* LM_INTERNAL_H */
