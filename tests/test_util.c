/*
 * test_util.c — see test_util.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha_shared.h"
#include "reference.h"
#include "test_util.h"

/* ---- random numbers: splitmix64 --------------------------------------------------------------- */

void tu_rng_seed(tu_rng *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t tu_rng_next(tu_rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

double tu_rng_unit(tu_rng *r)
{
    return (double)(tu_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}

int64_t tu_rng_range(tu_rng *r, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(tu_rng_next(r) % (uint64_t)(hi - lo + 1));
}

float tu_rng_nonzero(tu_rng *r, float scale)
{
    float magnitude = (float)(0.05 + 0.95 * tu_rng_unit(r));
    return (tu_rng_next(r) & 1 ? magnitude : -magnitude) * scale;
}

void tu_rng_shuffle(tu_rng *r, int32_t *a, int64_t n)
{
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = tu_rng_range(r, 0, i);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

/* ---- element helpers ------------------------------------------------------------------------ */

const char *tu_dtype_name(ha_dtype dt)
{
    switch (dt) {
    case HA_F32: return "f32";
    case HA_F16: return "f16";
    case HA_BF16: return "bf16";
    default: return "?";
    }
}

void tu_fill_row(tu_rng *r, void *row, ha_dtype dt, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++)
        ha_store_f32(row, dt, i, tu_rng_nonzero(r, scale));
}

void tu_load_row(const void *row, ha_dtype dt, int64_t n, float *out)
{
    for (int64_t i = 0; i < n; i++)
        out[i] = ha_load_f32(row, dt, i);
}

void tu_poison(void *buf, size_t bytes)
{
    memset(buf, TU_POISON, bytes);
}

int tu_is_poisoned(const void *buf, size_t bytes)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < bytes; i++)
        if (p[i] != TU_POISON)
            return 0;
    return 1;
}

double tu_rel_l2(const float *a, const float *ref, int64_t n)
{
    double diff = 0.0, norm = 0.0;
    for (int64_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isinf(a[i]))
            return INFINITY;
        double d = (double)a[i] - (double)ref[i];
        diff += d * d;
        norm += (double)ref[i] * (double)ref[i];
    }
    if (norm == 0.0)
        return diff == 0.0 ? 0.0 : INFINITY;
    return sqrt(diff / norm);
}

int tu_code_unambiguous(const ha_mlp_desc *desc, int32_t m, const float *x, double *y, double margin)
{
    ha_ref_mlp_forward(desc, m, x, y);
    int32_t bits = desc->dims[desc->depth];
    double max_abs = 0.0;
    for (int32_t i = 0; i < bits; i++)
        max_abs = fmax(max_abs, fabs(y[i]));
    for (int32_t i = 0; i < bits; i++)
        if (fabs(y[i]) < margin * max_abs)
            return 0;
    return 1;
}

unsigned char *tu_read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    assert_true(len > 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)len);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *size = (size_t)len;
    return buf;
}

/* ---- backend memory --------------------------------------------------------------------------- */

void *tu_dev_alloc(ha_runtime *rt, size_t bytes)
{
    void *p = NULL;
    ha_status st = ha_mem_alloc(rt, bytes ? bytes : 1, &p);
    if (st != HA_OK)
        fail_msg("ha_mem_alloc(%zu): %s: %s", bytes, ha_status_string(st), ha_last_error());
    return p;
}

void tu_dev_free(ha_runtime *rt, void *p)
{
    ha_mem_free(rt, p);
}

void tu_to_dev(ha_runtime *rt, void *dev, const void *host, size_t bytes)
{
    /* steps are asynchronous on GPU backends: wait until earlier calls stopped reading dev */
    ha_status st = ha_synchronize(rt, NULL);
    if (st == HA_OK)
        st = ha_mem_copy(rt, dev, host, bytes, HA_COPY_HOST_TO_BACKEND);
    if (st != HA_OK)
        fail_msg("ha_mem_copy to backend: %s: %s", ha_status_string(st), ha_last_error());
}

void tu_from_dev(ha_runtime *rt, void *host, const void *dev, size_t bytes)
{
    ha_status st = ha_synchronize(rt, NULL);
    if (st == HA_OK)
        st = ha_mem_copy(rt, host, dev, bytes, HA_COPY_BACKEND_TO_HOST);
    if (st != HA_OK)
        fail_msg("ha_mem_copy to host: %s: %s", ha_status_string(st), ha_last_error());
}

void *tu_dev_upload(ha_runtime *rt, const void *host, size_t bytes)
{
    void *dev = tu_dev_alloc(rt, bytes);
    tu_to_dev(rt, dev, host, bytes);
    return dev;
}

void tu_dev_poison(ha_runtime *rt, void *dev, size_t bytes)
{
    void *host = malloc(bytes ? bytes : 1);
    assert_non_null(host);
    tu_poison(host, bytes);
    tu_to_dev(rt, dev, host, bytes);
    free(host);
}

/* ---- [B, H, D] tensors ------------------------------------------------------------------------ */

void tu_tensor3_create(tu_tensor3 *t, ha_runtime *rt, tu_rng *r, ha_dtype dtype, int32_t batch, int32_t heads,
                       int32_t dim, int padded)
{
    memset(t, 0, sizeof *t);
    t->dtype = dtype;
    t->batch = batch;
    t->heads = heads;
    t->dim = dim;
    int64_t row = dim + (padded ? tu_rng_range(r, 1, 5) : 0);
    int64_t gap = padded ? tu_rng_range(r, 1, 9) : 0;
    if (padded && (tu_rng_next(r) & 1)) { /* heads outermost: [H, B, D] */
        t->stride_batch = row;
        t->stride_head = (int64_t)batch * row + gap;
    } else {
        t->stride_head = row;
        t->stride_batch = (int64_t)heads * row + gap;
    }
    int64_t elems = (int64_t)(batch - 1) * t->stride_batch + (int64_t)(heads - 1) * t->stride_head + dim + gap;
    t->bytes = (size_t)elems * ha_dtype_size(dtype);
    t->host = malloc(t->bytes);
    assert_non_null(t->host);
    tu_poison(t->host, t->bytes);
    t->dev = tu_dev_alloc(rt, t->bytes);
}

void tu_tensor3_destroy(tu_tensor3 *t, ha_runtime *rt)
{
    free(t->host);
    tu_dev_free(rt, t->dev);
    memset(t, 0, sizeof *t);
}

void *tu_tensor3_row(const tu_tensor3 *t, int32_t b, int32_t h)
{
    return (char *)t->host + (b * t->stride_batch + h * t->stride_head) * (int64_t)ha_dtype_size(t->dtype);
}

ha_tensor3 tu_tensor3_backend(const tu_tensor3 *t)
{
    ha_tensor3 d = {t->dev, t->dtype, t->stride_batch, t->stride_head};
    return d;
}

ha_rows tu_tensor3_rows(const tu_tensor3 *t)
{
    ha_rows r;
    memset(&r, 0, sizeof r);
    r.data = t->host;
    r.dtype = t->dtype;
    r.heads = t->heads;
    r.dim = t->dim;
    r.stride_seq = t->stride_batch;
    r.stride_head = t->stride_head;
    return r;
}

void tu_tensor3_upload(tu_tensor3 *t, ha_runtime *rt)
{
    tu_to_dev(rt, t->dev, t->host, t->bytes);
}

void tu_tensor3_download(tu_tensor3 *t, ha_runtime *rt)
{
    tu_from_dev(rt, t->host, t->dev, t->bytes);
}

void tu_tensor3_to_f32(const tu_tensor3 *t, float *out)
{
    for (int32_t b = 0; b < t->batch; b++)
        for (int32_t h = 0; h < t->heads; h++)
            tu_load_row(tu_tensor3_row(t, b, h), t->dtype, t->dim, out + ((int64_t)b * t->heads + h) * t->dim);
}

int tu_tensor3_padding_poisoned(const tu_tensor3 *t)
{
    size_t elem = ha_dtype_size(t->dtype);
    uint8_t *inside = calloc(t->bytes, 1);
    assert_non_null(inside);
    for (int32_t b = 0; b < t->batch; b++)
        for (int32_t h = 0; h < t->heads; h++)
            memset(inside + (b * t->stride_batch + h * t->stride_head) * (int64_t)elem, 1, (size_t)t->dim * elem);
    const unsigned char *bytes = t->host;
    int ok = 1;
    for (size_t i = 0; i < t->bytes && ok; i++)
        ok = inside[i] || bytes[i] == TU_POISON;
    free(inside);
    return ok;
}

/* ---- the host's KV cache ---------------------------------------------------------------------- */

void tu_kv_create(tu_kv *kv, ha_runtime *rt, tu_rng *r, ha_dtype dtype, int32_t batch, int32_t heads, int32_t dim,
                  int64_t tokens, int32_t page_size, int padded)
{
    memset(kv, 0, sizeof *kv);
    kv->dtype = dtype;
    kv->batch = batch;
    kv->heads = heads;
    kv->dim = dim;
    kv->tokens = tokens;
    kv->page_size = page_size;

    /* one "block" holds `block_tokens` tokens of every head: a whole sequence, or one page */
    int64_t block_tokens = page_size > 0 ? page_size : tokens;
    int64_t row = dim + (padded ? tu_rng_range(r, 1, 7) : 0);
    int64_t gap = padded ? tu_rng_range(r, 1, 13) : 0;
    if (tu_rng_next(r) & 1) { /* [block][token][head][dim] as vLLM */
        kv->stride_head = row;
        kv->stride_token = (int64_t)heads * row + gap;
        kv->stride_seq = block_tokens * kv->stride_token + gap;
    } else {                  /* [block][head][token][dim] as the paper's code */
        kv->stride_token = row;
        kv->stride_head = block_tokens * row + gap;
        kv->stride_seq = (int64_t)heads * kv->stride_head + gap;
    }

    int64_t blocks;
    if (page_size > 0) {
        int64_t pages_per_seq = (tokens + page_size - 1) / page_size;
        int64_t spare = padded ? 3 : 1;
        kv->capacity = pages_per_seq * batch + spare;
        kv->block_table_stride = (int32_t)(pages_per_seq + (padded ? 2 : 0));
        int32_t *ids = malloc((size_t)kv->capacity * sizeof(int32_t));
        kv->block_table = malloc((size_t)batch * (size_t)kv->block_table_stride * sizeof(int32_t));
        assert_true(ids && kv->block_table);
        for (int64_t p = 0; p < kv->capacity; p++)
            ids[p] = (int32_t)p;
        tu_rng_shuffle(r, ids, kv->capacity);
        /* every sequence gets its own pages; slack entries of a row point at (valid) spare pages */
        for (int32_t b = 0; b < batch; b++)
            for (int32_t p = 0; p < kv->block_table_stride; p++)
                kv->block_table[(int64_t)b * kv->block_table_stride + p] =
                    p < pages_per_seq ? ids[b * pages_per_seq + p]
                                      : ids[pages_per_seq * batch + (b + p) % spare];
        free(ids);
        blocks = kv->capacity;
    } else {
        kv->capacity = tokens;
        blocks = batch;
    }
    kv->bytes = (size_t)(blocks * kv->stride_seq) * ha_dtype_size(dtype);
    kv->k = malloc(kv->bytes);
    kv->v = malloc(kv->bytes);
    assert_true(kv->k && kv->v);
    tu_poison(kv->k, kv->bytes);
    tu_poison(kv->v, kv->bytes);
    kv->k_dev = tu_dev_alloc(rt, kv->bytes);
    kv->v_dev = tu_dev_alloc(rt, kv->bytes);
    if (kv->block_table)
        kv->block_table_dev = tu_dev_upload(rt, kv->block_table,
                                            (size_t)batch * (size_t)kv->block_table_stride * sizeof(int32_t));
}

void tu_kv_destroy(tu_kv *kv, ha_runtime *rt)
{
    free(kv->k);
    free(kv->v);
    free(kv->block_table);
    tu_dev_free(rt, kv->k_dev);
    tu_dev_free(rt, kv->v_dev);
    tu_dev_free(rt, kv->block_table_dev);
    memset(kv, 0, sizeof *kv);
}

ha_rows tu_kv_rows(const tu_kv *kv, int which)
{
    ha_rows r;
    memset(&r, 0, sizeof r);
    r.data = which ? kv->v : kv->k;
    r.dtype = kv->dtype;
    r.heads = kv->heads;
    r.dim = kv->dim;
    r.stride_seq = kv->stride_seq;
    r.stride_token = kv->stride_token;
    r.stride_head = kv->stride_head;
    r.page_size = kv->page_size;
    r.block_table_stride = kv->block_table_stride;
    r.block_table = kv->block_table;
    return r;
}

void *tu_kv_row(const tu_kv *kv, int which, int32_t b, int32_t h, int64_t t)
{
    ha_rows r = tu_kv_rows(kv, which);
    return (void *)ha_rows_ptr(&r, ha_dtype_size(kv->dtype), b, h, t);
}

void tu_kv_upload(tu_kv *kv, ha_runtime *rt)
{
    tu_to_dev(rt, kv->k_dev, kv->k, kv->bytes);
    tu_to_dev(rt, kv->v_dev, kv->v, kv->bytes);
}

ha_kv tu_kv_backend(const tu_kv *kv)
{
    ha_kv d;
    memset(&d, 0, sizeof d);
    d.k = kv->k_dev;
    d.v = kv->v_dev;
    d.dtype = kv->dtype;
    d.stride_seq = kv->stride_seq;
    d.stride_token = kv->stride_token;
    d.stride_head = kv->stride_head;
    d.page_size = kv->page_size;
    d.block_table_stride = kv->block_table_stride;
    d.block_table = kv->block_table_dev;
    d.capacity = kv->capacity;
    return d;
}
