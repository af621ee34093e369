/*
 * cache_state.c — which key codes a cache holds, so that selecting over tokens whose keys were never
 * encoded (ha_match or ha_decode_step before ha_cache_encode_keys) is answered with HA_ERR_STATE
 * instead of a selection computed from uninitialized memory.
 *
 * Only on host-memory backends, where the core can read the lengths and block tables (on a GPU the
 * check would need a device round trip per call): per layer and sequence slot (contiguous caches) or
 * page (paged caches), the length of the prefix whose codes are there. Encoding [s, e) extends a prefix that
 * reaches s, and one starting at 0 replaces it (a sequence slot or page taken over by a new sequence).
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static int host_memory(const ha_cache *c)
{
    return c->rt->backend.api->host_memory != 0;
}

ha_status ha_cache_state_init(ha_cache *c, const char *fn)
{
    int32_t layers = c->w->host.num_layers;
    if (!host_memory(c))
        return HA_OK;
    int64_t units = c->cfg.page_size > 0 ? c->cfg.num_pages : c->cfg.max_batch, n;
    if (!ha_mul_i64(units, layers, &n) || (uint64_t)n > SIZE_MAX / sizeof(int32_t))
        return ha_fail(HA_ERR_OVERFLOW, "%s: %lld sequences/pages × %d layers overflow", fn, (long long)units, layers);
    c->prefix = ha_calloc((size_t)n, sizeof(int32_t));
    if (!c->prefix)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory (%lld encoded-prefix counters)", fn, (long long)n);
    return HA_OK;
}

void ha_cache_state_free(ha_cache *c)
{
    free(c->prefix);
}

/** Prefix counter of sequence slot or page `unit` of layer. */
static int32_t *prefix_of(const ha_cache *c, int32_t layer, int64_t unit)
{
    int64_t units = c->cfg.page_size > 0 ? c->cfg.num_pages : c->cfg.max_batch;
    return &c->prefix[(int64_t)layer * units + unit];
}

/** Tokens [s, e) of a range whose prefix is *p now have codes. */
static void extend(int32_t *p, int64_t s, int64_t e)
{
    if (s == 0)
        *p = (int32_t)e;
    else if (s <= *p && e > *p)
        *p = (int32_t)e;
}

void ha_cache_note_encoded(ha_cache *c, int32_t layer, const ha_kv *kv, int32_t batch, const int32_t *end,
                           int32_t count)
{
    if (count <= 0 || !c->prefix)
        return;
    int64_t ps = c->cfg.page_size;
    for (int32_t b = 0; b < batch; b++) {
        int64_t e = end[b], s = e - count > 0 ? e - count : 0;
        if (e <= s)
            continue;
        if (ps == 0) {
            extend(prefix_of(c, layer, b), s, e);
            continue;
        }
        for (int64_t page = s / ps; page <= (e - 1) / ps; page++) {
            int64_t first = page * ps;
            int64_t lo = (s > first ? s : first) - first, hi = (e < first + ps ? e : first + ps) - first;
            extend(prefix_of(c, layer, kv->block_table[(int64_t)b * kv->block_table_stride + page]), lo, hi);
        }
    }
}

ha_status ha_cache_check_encoded(const char *fn, const ha_cache *c, int32_t layer, const ha_kv *kv, int32_t batch,
                                 const int32_t *lens, int32_t new_tokens)
{
    if (!c->prefix)
        return HA_OK;
    int64_t ps = c->cfg.page_size;
    for (int32_t b = 0; b < batch; b++) {
        int64_t need = (int64_t)lens[b] - new_tokens; /* tokens [0, need) must have codes already */
        if (ps == 0) {
            int32_t have = *prefix_of(c, layer, b);
            if (have < need)
                return ha_fail(HA_ERR_STATE,
                               "%s: layer %d, sequence %d: the codes of tokens [0, %lld) are needed but only %d were encoded into the cache (call ha_cache_encode_keys first)",
                               fn, layer, b, (long long)need, have);
            continue;
        }
        for (int64_t page = 0; page * ps < need; page++) {
            int32_t id = kv->block_table[(int64_t)b * kv->block_table_stride + page];
            int64_t want = need - page * ps < ps ? need - page * ps : ps;
            int32_t have = *prefix_of(c, layer, id);
            if (have < want)
                return ha_fail(HA_ERR_STATE,
                               "%s: layer %d, sequence %d: page %d (block_table entry %lld) holds the codes of %d of the %lld tokens needed (call ha_cache_encode_keys first)",
                               fn, layer, b, id, (long long)page, have, (long long)want);
        }
    }
    return HA_OK;
}
