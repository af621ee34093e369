/*
 * reference_steps.c — see reference_steps.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "reference.h"
#include "reference_steps.h"
#include "test_util.h"

#define DEFAULT_WINDOW 128

static void expect_ok(ha_status st, const char *stage)
{
    if (st != HA_OK)
        fail_msg("reference %s: %s", stage, ha_status_string(st));
}

ha_rows tu_ref_code_rows(const tu_ref *r)
{
    ha_rows rows;
    memset(&rows, 0, sizeof rows);
    rows.data = r->k_codes;
    rows.heads = r->code_heads;
    rows.dim = r->words;
    rows.stride_token = r->words;
    rows.stride_head = r->tokens * r->words;
    rows.stride_seq = r->code_heads * rows.stride_head;
    return rows;
}

void tu_ref_key_codes(const tu_ref *r, const ha_mlp_desc *k_mlp, ha_rows keys, const int32_t *end, int32_t count)
{
    tu_poison(r->k_codes, (size_t)r->batch * r->code_heads * (size_t)r->tokens * r->words * sizeof(uint32_t));
    ha_encode_args a;
    memset(&a, 0, sizeof a);
    a.desc = k_mlp;
    a.batch = r->batch;
    a.count = count;
    a.end = end;
    a.in = keys;
    a.out = tu_ref_code_rows(r);
    expect_ok(ha_ref_encode(&a), "key encode");
}

void tu_ref_query_codes(const tu_ref *r, const ha_mlp_desc *q_mlp, ha_rows queries, uint32_t *codes)
{
    ha_encode_args a;
    memset(&a, 0, sizeof a);
    a.desc = q_mlp;
    a.batch = r->batch;
    a.count = 1;
    a.in = queries;
    a.out.data = codes;
    a.out.heads = r->q_heads;
    a.out.dim = r->words;
    a.out.stride_seq = (int64_t)r->q_heads * r->words;
    a.out.stride_head = a.out.stride_token = r->words;
    expect_ok(ha_ref_encode(&a), "query encode");
}

void tu_ref_match(const tu_ref *r, const tu_selection *sel, const uint32_t *q_codes, const int32_t *lens,
                  int64_t max_kept, int32_t *indices, int32_t *counts)
{
    ha_match_args a;
    memset(&a, 0, sizeof a);
    a.batch = r->batch;
    a.q_heads = r->q_heads;
    a.sel_heads = r->sel_heads;
    a.words = r->words;
    a.bits = r->bits;
    a.q_codes = q_codes;
    a.k_codes = tu_ref_code_rows(r);
    a.seq_lens = lens;
    a.sink = sel->sink < 0 ? DEFAULT_WINDOW : sel->sink;
    a.local = sel->local < 0 ? DEFAULT_WINDOW : sel->local;
    a.heavy_fraction = sel->heavy_fraction;
    a.heavy_count = sel->heavy_count;
    a.indices = indices;
    a.index_stride = max_kept;
    a.counts = counts;
    expect_ok(ha_ref_match(&a), "match");
}

void tu_ref_attend(const tu_ref *r, ha_rows q, ha_rows k, ha_rows v, float scale, const int32_t *lens,
                   const int32_t *indices, const int32_t *counts, int64_t index_stride, float *out, float *lse)
{
    ha_attend_args a;
    memset(&a, 0, sizeof a);
    a.batch = r->batch;
    a.q_heads = r->q_heads;
    a.kv_heads = r->kv_heads;
    a.head_dim = r->head_dim;
    a.q = q;
    a.k = k;
    a.v = v;
    a.seq_lens = lens;
    a.indices = indices;
    a.index_stride = index_stride;
    a.counts = counts;
    a.sel_heads = indices ? r->sel_heads : r->q_heads;
    a.scale = scale;
    a.out = out;
    a.out_dtype = HA_F32;
    a.out_stride_seq = (int64_t)r->q_heads * r->head_dim;
    a.out_stride_head = r->head_dim;
    a.lse = lse;
    expect_ok(ha_ref_attend(&a), "attend");
}
