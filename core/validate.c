/*
 * validate.c — argument checks shared by the public calls. Every check names the function and the
 * argument in its message. Arrays in backend memory are only inspected when that memory is host
 * memory; GPU plugins clamp what the core cannot see.
 */
#include <string.h>

#include "internal.h"
#include "ha_shared.h"

int ha_mul_i64(int64_t a, int64_t b, int64_t *out)
{
    if (a < 0 || b < 0)
        return 0;
    return !__builtin_mul_overflow(a, b, out);
}

int ha_add_i64(int64_t a, int64_t b, int64_t *out)
{
    return !__builtin_add_overflow(a, b, out);
}

ha_status ha_check_dtype(const char *fn, const char *what, ha_dtype dt)
{
    if (dt != HA_F32 && dt != HA_F16 && dt != HA_BF16)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s = %d is not a dtype (HA_F32, HA_F16, HA_BF16)", fn, what, (int)dt);
    return HA_OK;
}

/** Largest element offset + 1 of rows (extent[i], stride[i]) of `dim` contiguous elements, checked. */
static int span_elements(int n, const int64_t *extent, const int64_t *stride, int64_t dim, int64_t *out)
{
    int64_t last = dim;
    for (int i = 0; i < n; i++) {
        int64_t part;
        if (extent[i] <= 0 || !ha_mul_i64(extent[i] - 1, stride[i], &part) || !ha_add_i64(last, part, &last))
            return 0;
    }
    int64_t bytes;
    *out = last;
    return ha_mul_i64(last, 4, &bytes); /* room for the widest dtype in bytes */
}

ha_status ha_check_tensor3(const char *fn, const char *what, const ha_tensor3 *t, int32_t batch, int32_t heads,
                           int32_t dim, int writable)
{
    if (!t)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, what);
    if (!t->data)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s->data is NULL", fn, what);
    ha_status st = ha_check_dtype(fn, what, t->dtype);
    if (st != HA_OK)
        return st;
    if (t->stride_batch < 0 || t->stride_head < 0)
        return ha_fail(HA_ERR_SHAPE, "%s: %s has a negative stride (batch %lld, head %lld)", fn, what,
                       (long long)t->stride_batch, (long long)t->stride_head);
    int64_t extent[2] = {batch, heads}, stride[2] = {t->stride_batch, t->stride_head}, span;
    if (!span_elements(2, extent, stride, dim, &span))
        return ha_fail(HA_ERR_OVERFLOW, "%s: %s spans more elements than fit in 64 bits", fn, what);
    if (writable) {
        /* rows of the output must not overlap: order the dimensions that vary by stride */
        int small = stride[0] <= stride[1] ? 0 : 1, large = 1 - small;
        if (extent[small] == 1) {
            small = large;
        } else if (extent[large] > 1 && stride[large] < stride[small] * extent[small]) {
            return ha_fail(HA_ERR_SHAPE, "%s: %s rows overlap (stride_batch %lld, stride_head %lld for [%d, %d, %d])", fn,
                           what, (long long)t->stride_batch, (long long)t->stride_head, batch, heads, dim);
        }
        if (extent[small] > 1 && stride[small] < dim)
            return ha_fail(HA_ERR_SHAPE, "%s: %s rows overlap (stride_batch %lld, stride_head %lld for [%d, %d, %d])", fn,
                           what, (long long)t->stride_batch, (long long)t->stride_head, batch, heads, dim);
    }
    return HA_OK;
}

ha_status ha_check_lengths(const ha_runtime *rt, const char *fn, const char *what, const int32_t *lens, int32_t batch,
                           int64_t max_len)
{
    if (!lens)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, what);
    if (!rt->backend.api->host_memory)
        return HA_OK;
    for (int32_t b = 0; b < batch; b++) {
        if (lens[b] < 0 || lens[b] > max_len)
            return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: %s[%d] = %d is outside [0, %lld]", fn, what, b, lens[b],
                           (long long)max_len);
    }
    return HA_OK;
}

ha_status ha_check_kv(const ha_runtime *rt, const char *fn, const ha_kv *kv, int32_t batch, const int32_t *lens,
                      int32_t kv_heads, int32_t head_dim)
{
    if (!kv)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: kv is NULL", fn);
    if (kv->stride_seq < 0 || kv->stride_token < 0 || kv->stride_head < 0)
        return ha_fail(HA_ERR_SHAPE, "%s: kv has a negative stride", fn);
    if (kv->page_size < 0)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: kv->page_size = %d is negative", fn, kv->page_size);
    if (kv->capacity <= 0)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: kv->capacity = %lld must be positive", fn, (long long)kv->capacity);
    int paged = kv->page_size > 0;
    if (paged && (!kv->block_table || kv->block_table_stride <= 0))
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: paged kv needs block_table and a positive block_table_stride", fn);
    int64_t extent[3], stride[3] = {kv->stride_seq, kv->stride_token, kv->stride_head}, span;
    extent[0] = paged ? kv->capacity : batch;
    extent[1] = paged ? kv->page_size : kv->capacity;
    extent[2] = kv_heads;
    if (!span_elements(3, extent, stride, head_dim, &span))
        return ha_fail(HA_ERR_OVERFLOW, "%s: kv spans more elements than fit in 64 bits", fn);
    if (!lens || !rt->backend.api->host_memory)
        return HA_OK;
    for (int32_t b = 0; b < batch; b++) {
        int64_t n = lens[b];
        if (!paged) {
            if (n > kv->capacity)
                return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: sequence %d has %lld tokens but kv->capacity is %lld", fn, b,
                               (long long)n, (long long)kv->capacity);
            continue;
        }
        int64_t pages = (n + kv->page_size - 1) / kv->page_size;
        if (pages > kv->block_table_stride)
            return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: sequence %d needs %lld pages but block_table_stride is %d", fn, b,
                           (long long)pages, kv->block_table_stride);
        for (int64_t p = 0; p < pages; p++) {
            int32_t id = kv->block_table[(int64_t)b * kv->block_table_stride + p];
            if (id < 0 || id >= kv->capacity)
                return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: block_table[%d][%lld] = %d is outside [0, %lld)", fn, b,
                               (long long)p, id, (long long)kv->capacity);
        }
    }
    return HA_OK;
}

ha_status ha_check_plan_batch(const char *fn, const ha_plan *plan, int32_t batch)
{
    if (!plan)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: plan is NULL", fn);
    if (batch < 1 || batch > plan->desc.max_batch)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: batch = %d is outside [1, %d] (the plan's max_batch)", fn, batch,
                       plan->desc.max_batch);
    return HA_OK;
}

ha_status ha_check_layer(const char *fn, const ha_weights *w, int32_t layer)
{
    if (!w)
        return ha_fail(HA_ERR_STATE, "%s: the plan was created without weights", fn);
    if (layer < 0 || layer >= w->host.num_layers)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: layer = %d is outside [0, %d)", fn, layer, w->host.num_layers);
    return HA_OK;
}

ha_status ha_check_cache_vs_kv(const char *fn, const ha_cache *cache, const ha_kv *kv, int32_t batch, const int32_t *lens)
{
    if (cache->cfg.page_size != kv->page_size)
        return ha_fail(HA_ERR_SHAPE, "%s: the cache has page_size %d but kv has page_size %d", fn, cache->cfg.page_size,
                       kv->page_size);
    int paged = kv->page_size > 0;
    if (!paged && batch > cache->cfg.max_batch)
        return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: batch = %d exceeds the cache's max_batch %d", fn, batch,
                       cache->cfg.max_batch);
    if (!lens || !cache->rt->backend.api->host_memory)
        return HA_OK;
    for (int32_t b = 0; b < batch; b++) {
        int64_t n = lens[b];
        if (!paged) {
            if (n > cache->cfg.max_tokens)
                return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: sequence %d has %lld tokens but the cache holds %lld", fn, b,
                               (long long)n, (long long)cache->cfg.max_tokens);
            continue;
        }
        int64_t pages = (n + kv->page_size - 1) / kv->page_size;
        for (int64_t p = 0; p < pages; p++) {
            int32_t id = kv->block_table[(int64_t)b * kv->block_table_stride + p];
            if (id >= cache->cfg.num_pages)
                return ha_fail(HA_ERR_INVALID_ARGUMENT, "%s: block_table[%d][%lld] = %d but the cache has %lld pages", fn,
                               b, (long long)p, id, (long long)cache->cfg.num_pages);
        }
    }
    return HA_OK;
}
