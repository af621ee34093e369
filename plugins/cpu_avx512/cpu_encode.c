/*
 * cpu_encode.c — the encode stage: vectors → sign bits of the mapping MLP. Work items are (sequence,
 * MLP head, block of up to enc_block tokens), so a prefill runs each head's weights over many tokens
 * while they are in cache; the layers themselves are the ISA kernel's.
 *
 * A decode step (all sequences' new tokens fit one block) instead gives each thread a contiguous
 * range of heads and runs it layer by layer over all sequences' tokens: each layer's weights of those
 * heads are adjacent in memory, so the thread reads one sequential stream per layer (instead of three
 * short ones per head and sequence), and reads each head's weights once for the whole batch.
 */
#include <omp.h>
#include <string.h>

#include "cpu_internal.h"

/* Clears the row's words, then sets bit i iff y_i > 0. */
static void pack_sign_bits(const float *y, int32_t bits, uint32_t *row, int32_t words)
{
    memset(row, 0, (size_t)words * sizeof(uint32_t));
    for (int32_t i = 0; i < bits; i++)
        row[i / 32] |= (uint32_t)(y[i] > 0.0f) << (i % 32);
}

/* Layer l of head m over `tokens` rows of x (row stride ld) into y. */
static void run_layer(const cpu_ctx *ctx, const cpu_mlp *mlp, int32_t l, int32_t m, const float *x, float *y,
                      int32_t tokens, int64_t ld)
{
    const cpu_mlp_layer *L = &mlp->layer[l];
    cpu_layer_args la = {
        .x = x, .x_stride = ld, .y = y, .y_stride = ld, .tokens = tokens, .in_dim = L->in_dim,
        .out_pad = L->out_pad, .wt_dtype = L->wt_dtype,
        .wt = (const char *)L->wt + (size_t)m * L->in_dim * L->out_pad * ha_elem_size(L->wt_dtype),
        .bias = L->bias + (size_t)m * L->out_pad, .silu = l < mlp->depth - 1,
    };
    ctx->k->mlp_layer(&la);
}

/* Runs tokens [t0, t0 + n) of (b, m) through the MLP. buf: two [enc_block, enc_width] buffers. */
static void encode_block(const cpu_ctx *ctx, const cpu_plan *plan, const ha_encode_args *a, const cpu_mlp *mlp,
                         int32_t b, int32_t m, int64_t t0, int32_t n, float *buf)
{
    const int64_t ld = plan->enc_width;
    float *cur = buf, *next = buf + (size_t)plan->enc_block * (size_t)ld;
    int32_t in_head = m / (mlp->heads / a->in.heads);
    size_t in_elem = ha_elem_size(a->in.dtype);
    for (int32_t i = 0; i < n; i++)
        ctx->k->load_row(ha_rows_ptr(&a->in, in_elem, b, in_head, t0 + i), a->in.dtype, mlp->layer[0].in_dim,
                         cur + i * ld);
    for (int32_t l = 0; l < mlp->depth; l++) {
        run_layer(ctx, mlp, l, m, cur, next, n, ld);
        float *t = cur;
        cur = next;
        next = t;
    }
    for (int32_t i = 0; i < n; i++)
        pack_sign_bits(cur + i * ld, mlp->bits, (uint32_t *)ha_rows_ptr(&a->out, sizeof(uint32_t), b, m, t0 + i),
                       a->out.dim);
}

/* The tokens [*start, end) of sequence b that a call with `count` tokens encodes. */
static int64_t token_range(const cpu_plan *plan, const ha_encode_args *a, int64_t count, int32_t b, int64_t *start)
{
    int64_t end = a->end ? a->end[b] : count;
    end = end < 0 ? 0 : end > plan->desc.max_tokens ? plan->desc.max_tokens : end;
    *start = end - count > 0 ? end - count : 0;
    return end;
}

/* Heads [m0, m1) of every sequence's tokens, layer by layer (rows: head-major, then sequence, then
 * token; at most enc_block of them). */
static void encode_heads(const cpu_ctx *ctx, const cpu_plan *plan, const ha_encode_args *a, const cpu_mlp *mlp,
                         int64_t count, int32_t m0, int32_t m1, float *buf)
{
    const int64_t ld = plan->enc_width;
    float *cur = buf, *next = buf + (size_t)plan->enc_block * (size_t)ld;
    const int32_t heads_per_input = mlp->heads / a->in.heads;
    const size_t in_elem = ha_elem_size(a->in.dtype);
    int32_t rows = 0; /* per head */
    for (int32_t m = m0; m < m1; m++)
        for (int32_t b = 0; b < a->batch; b++) {
            int64_t t, end = token_range(plan, a, count, b, &t);
            for (; t < end; t++, rows++)
                ctx->k->load_row(ha_rows_ptr(&a->in, in_elem, b, m / heads_per_input, t), a->in.dtype,
                                 mlp->layer[0].in_dim, cur + rows * ld);
        }
    rows /= m1 - m0;
    if (rows == 0)
        return;
    for (int32_t l = 0; l < mlp->depth; l++) {
        for (int32_t m = m0; m < m1; m++) {
            const int64_t first = (int64_t)(m - m0) * rows * ld;
            run_layer(ctx, mlp, l, m, cur + first, next + first, rows, ld);
        }
        float *t = cur;
        cur = next;
        next = t;
    }
    const float *y = cur;
    for (int32_t m = m0; m < m1; m++)
        for (int32_t b = 0; b < a->batch; b++) {
            int64_t t, end = token_range(plan, a, count, b, &t);
            for (; t < end; t++, y += ld)
                pack_sign_bits(y, mlp->bits, (uint32_t *)ha_rows_ptr(&a->out, sizeof(uint32_t), b, m, t), a->out.dim);
        }
}

ha_status cpu_encode(const cpu_ctx *ctx, const cpu_plan *plan, const ha_encode_args *a)
{
    const cpu_mlp *mlp = a->mlp;
    if (!mlp || a->in.heads < 1 || mlp->heads % a->in.heads != 0 || a->in.dim < mlp->layer[0].in_dim ||
        (int64_t)a->out.dim * 32 < mlp->bits)
        return cpu_fail(HA_ERR_SHAPE, "cpu_avx512 encode: MLP heads %d, input heads %d, input dim %d, out words %d "
                        "do not fit together", mlp ? mlp->heads : 0, a->in.heads, a->in.dim, a->out.dim);
    if (mlp->widest_pad > plan->enc_width)
        return cpu_fail(HA_ERR_STATE, "cpu_avx512 encode: the MLP (width %d) is wider than this plan's scratch (%d): "
                        "create the plan after loading its weights", mlp->widest_pad, plan->enc_width);
    if (a->batch <= 0 || a->count <= 0)
        return HA_OK;

    int64_t count = a->count < plan->desc.max_tokens ? a->count : plan->desc.max_tokens;
    if ((int64_t)a->batch * count <= plan->enc_block) { /* a decode step: heads layer by layer */
        int32_t per_item = (int32_t)(plan->enc_block / ((int64_t)a->batch * count));
        int32_t per_thread = (mlp->heads + plan->threads - 1) / plan->threads;
        per_item = per_item < per_thread ? per_item : per_thread;
        const int32_t items = (mlp->heads + per_item - 1) / per_item;
#pragma omp parallel for schedule(static) num_threads(plan->threads)
        for (int32_t item = 0; item < items; item++) {
            int32_t m0 = item * per_item, m1 = m0 + per_item < mlp->heads ? m0 + per_item : mlp->heads;
            float *buf = (float *)(cpu_thread_scratch(plan, omp_get_thread_num()) + plan->enc_offset);
            encode_heads(ctx, plan, a, mlp, count, m0, m1, buf);
        }
        return HA_OK;
    }
    int64_t blocks = (count + plan->enc_block - 1) / plan->enc_block;
    int64_t items = (int64_t)a->batch * mlp->heads * blocks;
#pragma omp parallel for schedule(dynamic) num_threads(plan->threads)
    for (int64_t item = 0; item < items; item++) {
        int32_t b = (int32_t)(item / (mlp->heads * blocks));
        int32_t m = (int32_t)(item / blocks % mlp->heads);
        int64_t blk = item % blocks;
        int64_t start, end = token_range(plan, a, count, b, &start);
        int64_t t0 = start + blk * plan->enc_block;
        int64_t n = end - t0 < plan->enc_block ? end - t0 : plan->enc_block;
        if (n > 0) {
            float *buf = (float *)(cpu_thread_scratch(plan, omp_get_thread_num()) + plan->enc_offset);
            encode_block(ctx, plan, a, mlp, b, m, t0, (int32_t)n, buf);
        }
    }
    return HA_OK;
}
