/*
 * cpu_encode.c — the encode stage: vectors → sign bits of the mapping MLP. Work items are (sequence,
 * MLP head, block of up to enc_block tokens), so a prefill runs each head's weights over many tokens
 * while they are in cache; the layers themselves are the ISA kernel's.
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
        const cpu_mlp_layer *L = &mlp->layer[l];
        cpu_layer_args la = {
            .x = cur, .x_stride = ld, .y = next, .y_stride = ld, .tokens = n, .in_dim = L->in_dim,
            .out_pad = L->out_pad, .wt_dtype = L->wt_dtype,
            .wt = (const char *)L->wt + (size_t)m * L->in_dim * L->out_pad * ha_elem_size(L->wt_dtype),
            .bias = L->bias + (size_t)m * L->out_pad, .silu = l < mlp->depth - 1,
        };
        ctx->k->mlp_layer(&la);
        float *t = cur;
        cur = next;
        next = t;
    }
    for (int32_t i = 0; i < n; i++)
        pack_sign_bits(cur + i * ld, mlp->bits, (uint32_t *)ha_rows_ptr(&a->out, sizeof(uint32_t), b, m, t0 + i),
                       a->out.dim);
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
    int64_t blocks = (count + plan->enc_block - 1) / plan->enc_block;
    int64_t items = (int64_t)a->batch * mlp->heads * blocks;
#pragma omp parallel for schedule(dynamic) num_threads(plan->threads)
    for (int64_t item = 0; item < items; item++) {
        int32_t b = (int32_t)(item / (mlp->heads * blocks));
        int32_t m = (int32_t)(item / blocks % mlp->heads);
        int64_t blk = item % blocks;
        int64_t end = a->end ? a->end[b] : count;
        end = end < 0 ? 0 : end > plan->desc.max_tokens ? plan->desc.max_tokens : end;
        int64_t start = end - count > 0 ? end - count : 0;
        int64_t t0 = start + blk * plan->enc_block;
        int64_t n = end - t0 < plan->enc_block ? end - t0 : plan->enc_block;
        if (n > 0) {
            float *buf = (float *)(cpu_thread_scratch(plan, omp_get_thread_num()) + plan->enc_offset);
            encode_block(ctx, plan, a, mlp, b, m, t0, (int32_t)n, buf);
        }
    }
    return HA_OK;
}
