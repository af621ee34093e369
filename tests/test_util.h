/*
 * test_util.h — helpers shared by the public-API tests: a seeded PRNG, random tensors that are never
 * zero, poisoning, relative-error comparison, and host mirrors of Q/out tensors and of the KV cache
 * (contiguous with padding or paged with a shuffled block table) that are copied into backend memory
 * with ha_mem_alloc / ha_mem_copy, so the same tests run on GPU backends.
 *
 * Functions that talk to the runtime fail the running cmocka test on error.
 */
#ifndef HA_TEST_UTIL_H
#define HA_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"
#include "hashattn_plugin.h"

/* ---- random numbers ------------------------------------------------------------------------- */

typedef struct tu_rng {
    uint64_t state;
} tu_rng;

void tu_rng_seed(tu_rng *r, uint64_t seed);
uint64_t tu_rng_next(tu_rng *r);
/** Uniform in [0, 1). */
double tu_rng_unit(tu_rng *r);
/** Uniform integer in [lo, hi] (inclusive). */
int64_t tu_rng_range(tu_rng *r, int64_t lo, int64_t hi);
/** ±U(0.05, 1)·scale: random sign, magnitude bounded away from zero. */
float tu_rng_nonzero(tu_rng *r, float scale);
void tu_rng_shuffle(tu_rng *r, int32_t *a, int64_t n);

/* ---- element helpers ------------------------------------------------------------------------ */

const char *tu_dtype_name(ha_dtype dt);
/** Writes n random non-zero values (magnitude scale) into row of dtype dt. */
void tu_fill_row(tu_rng *r, void *row, ha_dtype dt, int64_t n, float scale);
/** Reads n elements of row (dtype dt) as floats. */
void tu_load_row(const void *row, ha_dtype dt, int64_t n, float *out);

/** Poison byte pattern: 0xFF is a NaN in fp32, fp16 and bf16 and -1 as an integer. */
#define TU_POISON 0xFF
void tu_poison(void *buf, size_t bytes);
/** 1 if every byte of buf is TU_POISON. */
int tu_is_poisoned(const void *buf, size_t bytes);

/** ‖a − ref‖₂ / ‖ref‖₂ over n floats (inf if ref is all zeros and a is not; NaN-aware: NaN → inf). */
double tu_rel_l2(const float *a, const float *ref, int64_t n);

/**
 * 1 when every output of head m of an MLP on x lies at least margin·max|y| away from zero, so any
 * backend must give x the reference's code bit for bit; y is scratch of desc->dims[depth] doubles.
 */
int tu_code_unambiguous(const ha_mlp_desc *desc, int32_t m, const float *x, double *y, double margin);

/** The whole file (malloc'd; at least one byte) and its size. */
unsigned char *tu_read_file(const char *path, size_t *size);

/* ---- backend memory --------------------------------------------------------------------------- */

void *tu_dev_alloc(ha_runtime *rt, size_t bytes);
void tu_dev_free(ha_runtime *rt, void *p);
/** Copies after ha_synchronize, so no queued call still reads (tu_to_dev) or writes (tu_from_dev) dev. */
void tu_to_dev(ha_runtime *rt, void *dev, const void *host, size_t bytes);
void tu_from_dev(ha_runtime *rt, void *host, const void *dev, size_t bytes);
/** ha_mem_alloc + copy of host. */
void *tu_dev_upload(ha_runtime *rt, const void *host, size_t bytes);
/** Fills backend memory with TU_POISON. */
void tu_dev_poison(ha_runtime *rt, void *dev, size_t bytes);

/* ---- [B, H, D] tensors (queries, outputs) ----------------------------------------------------- */

typedef struct tu_tensor3 {
    ha_dtype dtype;
    int32_t batch, heads, dim;
    int64_t stride_batch, stride_head; /* elements */
    size_t bytes;
    void *host; /* host mirror of the whole buffer, padding included */
    void *dev;  /* the backend's copy */
} tu_tensor3;

/**
 * Lays out a tensor (padded: gaps between heads and sequences; also sometimes heads outermost) and
 * allocates its host mirror filled with TU_POISON (so padding is NaN) and its backend buffer.
 */
void tu_tensor3_create(tu_tensor3 *t, ha_runtime *rt, tu_rng *r, ha_dtype dtype, int32_t batch, int32_t heads,
                       int32_t dim, int padded);
void tu_tensor3_destroy(tu_tensor3 *t, ha_runtime *rt);
void *tu_tensor3_row(const tu_tensor3 *t, int32_t b, int32_t h);
/** The public descriptor of the backend buffer. */
ha_tensor3 tu_tensor3_backend(const tu_tensor3 *t);
/** Host-memory rows (for the reference): heads, dim, t = 0. */
ha_rows tu_tensor3_rows(const tu_tensor3 *t);
void tu_tensor3_upload(tu_tensor3 *t, ha_runtime *rt);
void tu_tensor3_download(tu_tensor3 *t, ha_runtime *rt);
/** Row (b, h) as floats [batch, heads, dim] contiguous. */
void tu_tensor3_to_f32(const tu_tensor3 *t, float *out);
/** 1 if every byte outside the [batch, heads, dim] rows is still TU_POISON. */
int tu_tensor3_padding_poisoned(const tu_tensor3 *t);

/* ---- the host's KV cache ---------------------------------------------------------------------- */

typedef struct tu_kv {
    ha_dtype dtype;
    int32_t batch, heads, dim;
    int64_t tokens;       /* tokens each sequence can hold */
    int32_t page_size;    /* 0: contiguous */
    int64_t stride_seq, stride_token, stride_head;
    int64_t capacity;     /* contiguous: tokens; paged: pages in the pool */
    int32_t block_table_stride;
    int32_t *block_table; /* host [batch * block_table_stride]; NULL when contiguous */
    size_t bytes;         /* of K, and of V */
    void *k, *v;          /* host mirrors, poisoned outside rows */
    void *k_dev, *v_dev;
    int32_t *block_table_dev;
} tu_kv;

/**
 * Lays out K and V for batch sequences of up to `tokens` tokens: contiguous (page_size 0; padded
 * adds gaps between heads, tokens and sequences, and the head/token order is chosen at random) or
 * paged (a pool with spare pages, pages handed out in shuffled order). Host mirrors are poisoned.
 */
void tu_kv_create(tu_kv *kv, ha_runtime *rt, tu_rng *r, ha_dtype dtype, int32_t batch, int32_t heads, int32_t dim,
                  int64_t tokens, int32_t page_size, int padded);
void tu_kv_destroy(tu_kv *kv, ha_runtime *rt);
/** Host row of K (which = 0) or V (which = 1). */
void *tu_kv_row(const tu_kv *kv, int which, int32_t b, int32_t h, int64_t t);
/** Copies K, V and the block table into backend memory. */
void tu_kv_upload(tu_kv *kv, ha_runtime *rt);
ha_kv tu_kv_backend(const tu_kv *kv);
/** Host-memory rows of K or V for the reference. */
ha_rows tu_kv_rows(const tu_kv *kv, int which);

#endif /* HA_TEST_UTIL_H */
