/*
 * reference_attend.c — scalar reference of the attend stage (SPEC §1.4): exact softmax attention over
 * the kept tokens (or all tokens when dense), in double precision. Two passes per (sequence, head):
 * the largest logit first, then exp(logit - max) weights, so nothing overflows.
 */
#include <math.h>
#include <stdlib.h>

#include "ha_shared.h"
#include "host_alloc.h"
#include "reference.h"

/* Which tokens one (b, h) attends to: token(i) = indices ? indices[i] : i, for i < count. */
typedef struct kept_tokens {
    const int32_t *indices;
    int64_t count;
} kept_tokens;

static int64_t kept_token(const kept_tokens *kept, int64_t i)
{
    return kept->indices ? kept->indices[i] : i;
}

static kept_tokens kept_for(const ha_attend_args *a, int32_t b, int32_t h)
{
    kept_tokens kept;
    if (!a->indices) {
        kept.indices = NULL;
        kept.count = a->seq_lens[b] > 0 ? a->seq_lens[b] : 0;
        return kept;
    }
    int64_t row = (int64_t)b * a->sel_heads + h / (a->q_heads / a->sel_heads);
    kept.indices = a->indices + row * a->index_stride;
    kept.count = a->counts[row] > 0 ? a->counts[row] : 0;
    return kept;
}

static double scaled_logit(const ha_attend_args *a, const double *q, int32_t b, int32_t kv_head, int64_t t)
{
    const void *k = ha_rows_ptr(&a->k, ha_elem_size(a->k.dtype), b, kv_head, t);
    double dot = 0.0;
    for (int32_t i = 0; i < a->head_dim; i++)
        dot += q[i] * (double)ha_load_f32(k, a->k.dtype, i);
    return (double)a->scale * dot;
}

/* Attention of one query head; acc receives the output (head_dim doubles). Returns the lse. */
static double attend_one(const ha_attend_args *a, int32_t b, int32_t h, double *q, double *acc)
{
    int32_t kv_head = h / (a->q_heads / a->kv_heads);
    kept_tokens kept = kept_for(a, b, h);
    for (int32_t i = 0; i < a->head_dim; i++)
        acc[i] = 0.0;
    if (kept.count == 0)
        return -INFINITY;

    const void *q_row = ha_rows_ptr(&a->q, ha_elem_size(a->q.dtype), b, h, 0);
    for (int32_t i = 0; i < a->head_dim; i++)
        q[i] = (double)ha_load_f32(q_row, a->q.dtype, i);

    double max_logit = -INFINITY;
    for (int64_t i = 0; i < kept.count; i++) {
        double logit = scaled_logit(a, q, b, kv_head, kept_token(&kept, i));
        if (logit > max_logit)
            max_logit = logit;
    }
    double weight_sum = 0.0;
    for (int64_t i = 0; i < kept.count; i++) {
        int64_t t = kept_token(&kept, i);
        double weight = exp(scaled_logit(a, q, b, kv_head, t) - max_logit);
        const void *v = ha_rows_ptr(&a->v, ha_elem_size(a->v.dtype), b, kv_head, t);
        for (int32_t d = 0; d < a->head_dim; d++)
            acc[d] += weight * (double)ha_load_f32(v, a->v.dtype, d);
        weight_sum += weight;
    }
    for (int32_t d = 0; d < a->head_dim; d++)
        acc[d] /= weight_sum;
    return max_logit + log(weight_sum);
}

ha_status ha_ref_attend(const ha_attend_args *args)
{
    if (args->q_heads < 1 || args->kv_heads < 1 || args->q_heads % args->kv_heads != 0 || args->head_dim < 1 ||
        (args->indices && (args->sel_heads < 1 || args->q_heads % args->sel_heads != 0)))
        return HA_ERR_SHAPE;
    double *q = ha_malloc((size_t)args->head_dim * sizeof(double));
    double *acc = ha_malloc((size_t)args->head_dim * sizeof(double));
    if (!q || !acc) {
        free(q);
        free(acc);
        return HA_ERR_OUT_OF_MEMORY;
    }
    size_t out_elem = ha_elem_size(args->out_dtype);
    for (int32_t b = 0; b < args->batch; b++) {
        for (int32_t h = 0; h < args->q_heads; h++) {
            double lse = attend_one(args, b, h, q, acc);
            void *out = (char *)args->out + ((int64_t)b * args->out_stride_seq + (int64_t)h * args->out_stride_head) *
                                                (int64_t)out_elem;
            for (int32_t d = 0; d < args->head_dim; d++)
                ha_store_f32(out, args->out_dtype, d, (float)acc[d]);
            if (args->lse)
                args->lse[(int64_t)b * args->q_heads + h] = (float)lse;
        }
    }
    free(q);
    free(acc);
    return HA_OK;
}
