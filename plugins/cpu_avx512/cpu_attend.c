/*
 * cpu_attend.c — the attend stage: exact attention over an index list (or all tokens), one pass
 * with an online softmax. A work unit is the set of query heads that share both a KV head and a
 * token list (the whole GQA group in group mode and dense, one head in paper mode), so every K, V
 * row is read once per unit. When there are fewer units than threads, each unit's token list is
 * split into chunks whose partial results are merged by their log-sum-exp.
 */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "cpu_internal.h"

/* Shortest chunk worth a thread of its own. */
#define SPLIT_MIN_TOKENS 512

typedef struct attend_job {
    const cpu_ctx *ctx;
    const cpu_plan *plan;
    const ha_attend_args *a;
    int32_t unit_heads;     /**< query heads per unit      */
    int32_t units_per_seq;  /**< q_heads / unit_heads      */
    int32_t group;          /**< q_heads / kv_heads        */
    int32_t dim_pad;
    int32_t splits;         /**< chunks per unit (1: none) */
    int kv_same_layout;     /**< K and V rows share strides and pages: one offset serves both */
} attend_job;

static int32_t gcd32(int32_t x, int32_t y)
{
    while (y) {
        int32_t t = x % y;
        x = y;
        y = t;
    }
    return x;
}

/* The token list of the unit starting at query head h0 of sequence b: *idx (NULL = 0..n-1), length. */
static int64_t unit_tokens(const attend_job *job, int32_t b, int32_t h0, const int32_t **idx)
{
    const ha_attend_args *a = job->a;
    int64_t n;
    if (!a->indices) {
        *idx = NULL;
        n = a->seq_lens[b];
        n = n > job->plan->desc.max_tokens ? job->plan->desc.max_tokens : n;
    } else {
        int64_t row = (int64_t)b * a->sel_heads + h0 / (a->q_heads / a->sel_heads);
        *idx = a->indices + row * a->index_stride;
        n = a->counts[row];
        n = n > a->index_stride ? a->index_stride : n;
    }
    return n > 0 ? n : 0;
}

/* Carves the unit's state from the thread's scratch and loads its queries, scaled and padded. */
static void unit_init(const attend_job *job, int32_t b, int32_t h0, cpu_attend_unit *u)
{
    const ha_attend_args *a = job->a;
    const size_t dp = (size_t)job->dim_pad, g = (size_t)job->plan->group;
    float *s = (float *)(cpu_thread_scratch(job->plan, omp_get_thread_num()) + job->plan->att_offset);
    float *q = s;
    u->heads = job->unit_heads;
    u->dim = a->head_dim;
    u->dim_pad = job->dim_pad;
    u->k_dtype = a->k.dtype;
    u->v_dtype = a->v.dtype;
    u->q = q;
    u->acc = s + g * dp;
    u->m = s + 2 * g * dp;
    u->l = u->m + cpu_round_up((int64_t)g, 16);
    u->p = u->l + cpu_round_up((int64_t)g, 16);
    u->k_tile = u->p + g * CPU_ATTEND_TILE;
    size_t q_elem = ha_elem_size(a->q.dtype);
    for (int32_t i = 0; i < u->heads; i++) {
        float *row = q + (size_t)i * dp;
        job->ctx->k->load_row(ha_rows_ptr(&a->q, q_elem, b, h0 + i, 0), a->q.dtype, a->head_dim, row);
        for (int32_t j = 0; j < a->head_dim; j++)
            row[j] *= a->scale;
        memset(row + a->head_dim, 0, (dp - (size_t)a->head_dim) * sizeof(float));
    }
}

/* Row pointers of tile positions [p, p + CPU_ATTEND_TILE) ∩ [p, end); the rest point at the zero
 * row. Returns how many are real. */
static int32_t tile_rows(const attend_job *job, int32_t b, int32_t kv_head, const int32_t *idx, int64_t p,
                         int64_t end, const void **k_rows, const void **v_rows)
{
    const ha_attend_args *a = job->a;
    int32_t count = end - p < CPU_ATTEND_TILE ? (int32_t)(end - p) : CPU_ATTEND_TILE;
    size_t k_elem = ha_elem_size(a->k.dtype), v_elem = ha_elem_size(a->v.dtype);
    for (int32_t j = 0; j < count; j++) {
        int64_t t = idx ? idx[p + j] : p + j;
        int64_t k_off = ha_rows_offset(&a->k, b, kv_head, t);
        int64_t v_off = job->kv_same_layout ? k_off : ha_rows_offset(&a->v, b, kv_head, t);
        k_rows[j] = (const char *)a->k.data + k_off * (int64_t)k_elem;
        v_rows[j] = (const char *)a->v.data + v_off * (int64_t)v_elem;
    }
    for (int32_t j = count; j < CPU_ATTEND_TILE; j++)
        k_rows[j] = v_rows[j] = job->plan->zero_row;
    return count;
}

/* Online softmax of the unit over positions [p0, p1) of its token list. The kernel prefetches the
 * next tile's rows while it works on one (one tile ahead measured as good as deeper on Zen, and
 * spread over the kernel's loops better than issued at once: see cpu_attend_avx512.c). */
static void run_range(const attend_job *job, const cpu_attend_unit *u, int32_t b, int32_t kv_head,
                      const int32_t *idx, int64_t p0, int64_t p1)
{
    for (int32_t i = 0; i < u->heads; i++) {
        u->m[i] = -INFINITY;
        u->l[i] = 0.0f;
    }
    memset(u->acc, 0, (size_t)u->heads * (size_t)u->dim_pad * sizeof(float));
    const void *k_rows[2][CPU_ATTEND_TILE], *v_rows[2][CPU_ATTEND_TILE];
    int32_t counts[2];
    int64_t tiles = (p1 - p0 + CPU_ATTEND_TILE - 1) / CPU_ATTEND_TILE;
    if (tiles > 0) {
        counts[0] = tile_rows(job, b, kv_head, idx, p0, p1, k_rows[0], v_rows[0]);
        cpu_prefetch_rows(k_rows[0], counts[0], (size_t)u->dim * ha_elem_size(u->k_dtype));
        cpu_prefetch_rows(v_rows[0], counts[0], (size_t)u->dim * ha_elem_size(u->v_dtype));
    }
    for (int64_t i = 0; i < tiles; i++) {
        const int r = (int)(i % 2), next = 1 - r;
        const int more = i + 1 < tiles;
        if (more)
            counts[next] = tile_rows(job, b, kv_head, idx, p0 + (i + 1) * CPU_ATTEND_TILE, p1, k_rows[next],
                                     v_rows[next]);
        job->ctx->k->attend_tile(u, k_rows[r], v_rows[r], counts[r], more ? k_rows[next] : NULL,
                                 more ? v_rows[next] : NULL);
    }
}

/* Writes head h of sequence b: acc / l (zeros when l == 0) and its lse. */
static void store_head(const ha_attend_args *a, int32_t b, int32_t h, const float *acc, float m, float l)
{
    size_t elem = ha_elem_size(a->out_dtype);
    void *out = (char *)a->out + ((int64_t)b * a->out_stride_seq + (int64_t)h * a->out_stride_head) * (int64_t)elem;
    float inv = l > 0.0f ? 1.0f / l : 0.0f;
    for (int32_t j = 0; j < a->head_dim; j++)
        ha_store_f32(out, a->out_dtype, j, acc[j] * inv);
    if (a->lse)
        a->lse[(int64_t)b * a->q_heads + h] = l > 0.0f ? m + logf(l) : -INFINITY;
}

/* Chunk c of unit `unit`: the whole list (stored directly) or one chunk (saved as a partial). */
static void run_item(const attend_job *job, int64_t unit, int32_t c)
{
    int32_t b = (int32_t)(unit / job->units_per_seq);
    int32_t h0 = (int32_t)(unit % job->units_per_seq) * job->unit_heads;
    const int32_t *idx;
    int64_t n = unit_tokens(job, b, h0, &idx);
    cpu_attend_unit u;
    unit_init(job, b, h0, &u);
    int64_t p0 = n * c / job->splits, p1 = n * (c + 1) / job->splits;
    run_range(job, &u, b, h0 / job->group, idx, p0, p1);
    if (job->splits == 1) {
        for (int32_t i = 0; i < u.heads; i++)
            store_head(job->a, b, h0 + i, u.acc + (size_t)i * u.dim_pad, u.m[i], u.l[i]);
        return;
    }
    float *slot = job->plan->partials + (size_t)(unit * job->splits + c) * job->plan->partial_floats;
    memcpy(slot, u.m, (size_t)u.heads * sizeof(float));
    memcpy(slot + u.heads, u.l, (size_t)u.heads * sizeof(float));
    memcpy(slot + 2 * u.heads, u.acc, (size_t)u.heads * (size_t)u.dim_pad * sizeof(float));
}

/* Combines the chunks of one unit: weights exp(m_c - max m) rescale each chunk's sums. */
static void merge_unit(const attend_job *job, int64_t unit)
{
    int32_t b = (int32_t)(unit / job->units_per_seq);
    int32_t h0 = (int32_t)(unit % job->units_per_seq) * job->unit_heads;
    const int32_t heads = job->unit_heads, dp = job->dim_pad;
    float *acc = (float *)(cpu_thread_scratch(job->plan, omp_get_thread_num()) + job->plan->att_offset);
    const float *first = job->plan->partials + (size_t)unit * job->splits * job->plan->partial_floats;
    for (int32_t i = 0; i < heads; i++) {
        float m = -INFINITY, l = 0.0f;
        for (int32_t c = 0; c < job->splits; c++) {
            const float *slot = first + (size_t)c * job->plan->partial_floats;
            m = slot[i] > m ? slot[i] : m;
        }
        memset(acc, 0, (size_t)dp * sizeof(float));
        for (int32_t c = 0; c < job->splits; c++) {
            const float *slot = first + (size_t)c * job->plan->partial_floats;
            if (slot[heads + i] == 0.0f)
                continue; /* empty chunk */
            float w = expf(slot[i] - m);
            l += w * slot[heads + i];
            const float *part = slot + 2 * heads + (size_t)i * dp;
            for (int32_t j = 0; j < dp; j++)
                acc[j] += w * part[j];
        }
        store_head(job->a, b, h0 + i, acc, m, l);
    }
}

/* Chunks per unit: enough (unit, chunk) items to keep every thread busy when units are few. */
static int32_t choose_splits(const attend_job *job, int64_t units)
{
    const cpu_plan *plan = job->plan;
    if (plan->partial_slots == 0 || units >= 2 * (int64_t)plan->threads)
        return 1;
    int64_t longest = 0;
    for (int64_t unit = 0; unit < units; unit++) {
        const int32_t *idx;
        int64_t n = unit_tokens(job, (int32_t)(unit / job->units_per_seq),
                                (int32_t)(unit % job->units_per_seq) * job->unit_heads, &idx);
        longest = n > longest ? n : longest;
    }
    int64_t splits = (4 * (int64_t)plan->threads + units - 1) / units;
    int64_t by_slots = plan->partial_slots / units, by_length = longest / SPLIT_MIN_TOKENS;
    splits = splits < by_slots ? splits : by_slots;
    splits = splits < by_length ? splits : by_length;
    return splits > 1 ? (int32_t)splits : 1;
}

ha_status cpu_attend(const cpu_ctx *ctx, const cpu_plan *plan, const ha_attend_args *a)
{
    if (a->q_heads < 1 || a->kv_heads < 1 || a->q_heads % a->kv_heads != 0 || a->head_dim < 1 ||
        (a->indices && (a->sel_heads < 1 || a->q_heads % a->sel_heads != 0)))
        return cpu_fail(HA_ERR_SHAPE, "cpu_avx512 attend: q_heads %d, kv_heads %d, sel_heads %d, head_dim %d do "
                        "not fit together", a->q_heads, a->kv_heads, a->sel_heads, a->head_dim);
    attend_job job = { .ctx = ctx, .plan = plan, .a = a };
    job.group = a->q_heads / a->kv_heads;
    job.dim_pad = (int32_t)cpu_round_up(a->head_dim, 16);
    if (job.group > plan->group || job.dim_pad > plan->dim_pad)
        return cpu_fail(HA_ERR_STATE, "cpu_avx512 attend: group %d and head_dim %d exceed this plan's (%d, %d)",
                        job.group, a->head_dim, plan->group, plan->desc.head_dim);
    /* Heads sharing a KV head and (with indices) an index row. */
    job.unit_heads = a->indices ? gcd32(a->q_heads / a->sel_heads, job.group) : job.group;
    job.units_per_seq = a->q_heads / job.unit_heads;
    int64_t units = (int64_t)a->batch * job.units_per_seq;
    job.splits = choose_splits(&job, units);
    job.kv_same_layout = a->k.stride_seq == a->v.stride_seq && a->k.stride_token == a->v.stride_token &&
                         a->k.stride_head == a->v.stride_head && a->k.page_size == a->v.page_size &&
                         a->k.block_table == a->v.block_table && a->k.block_table_stride == a->v.block_table_stride;

    int64_t items = units * job.splits;
    /* (split units: their chunks are spread over the threads instead) */
    const int per_kv_head = job.splits == 1 ? job.group / job.unit_heads : 1;
#pragma omp parallel num_threads(plan->threads)
    {
        /* The items of one KV head go to one thread together: its query heads (paper mode) then
         * share the sink, local and common heavy rows through that core's L2. */
#pragma omp for schedule(dynamic, per_kv_head)
        for (int64_t item = 0; item < items; item++)
            run_item(&job, item / job.splits, (int32_t)(item % job.splits));
        if (job.splits > 1) {
#pragma omp for schedule(dynamic)
            for (int64_t unit = 0; unit < units; unit++)
                merge_unit(&job, unit);
        }
    }
    return HA_OK;
}
