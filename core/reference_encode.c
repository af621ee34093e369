/*
 * reference_encode.c — scalar reference of the encode stage: the mapping MLP in double precision and
 * the sign bits it yields, packed little-endian into uint32 words (SPEC §1.1–1.2).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ha_shared.h"
#include "host_alloc.h"
#include "reference.h"

/* Widths up to this run on stack scratch; wider MLPs allocate. */
#define STACK_WIDTH 512

static double silu(double z)
{
    return z / (1.0 + exp(-z));
}

static int32_t widest_layer(const ha_mlp_desc *desc)
{
    int32_t widest = 1;
    for (int32_t i = 0; i <= desc->depth; i++)
        if (desc->dims[i] > widest)
            widest = desc->dims[i];
    return widest;
}

/* The forward pass with caller scratch: cur and next hold `widest_layer` doubles each. */
static void mlp_forward_scratch(const ha_mlp_desc *desc, int32_t head, const float *x, double *y,
                                double *cur, double *next)
{
    for (int32_t i = 0; i < desc->dims[0]; i++)
        cur[i] = (double)x[i];
    for (int32_t layer = 0; layer < desc->depth; layer++) {
        int64_t in_dim = desc->dims[layer];
        int64_t out_dim = desc->dims[layer + 1];
        const float *w = desc->w[layer] + (int64_t)head * out_dim * in_dim;
        const float *bias = desc->b[layer] + (int64_t)head * out_dim;
        int is_last = layer == desc->depth - 1;
        double *dst = is_last ? y : next;
        for (int64_t o = 0; o < out_dim; o++) {
            double acc = 0.0;
            for (int64_t i = 0; i < in_dim; i++)
                acc += (double)w[o * in_dim + i] * cur[i];
            acc += (double)bias[o];
            dst[o] = is_last ? acc : silu(acc);
        }
        if (!is_last) {
            double *t = cur;
            cur = next;
            next = t;
        }
    }
}

/* If scratch cannot be allocated (only for layers wider than STACK_WIDTH) y is all NaN, which
 * encodes to zero bits; ha_ref_encode allocates its scratch itself and reports the failure. */
void ha_ref_mlp_forward(const ha_mlp_desc *desc, int32_t head, const float *x, double *y)
{
    int32_t widest = widest_layer(desc);
    double stack[2 * STACK_WIDTH];
    double *scratch = stack;
    if (widest > STACK_WIDTH) {
        scratch = ha_malloc(2 * (size_t)widest * sizeof(double));
        if (!scratch) {
            for (int32_t i = 0; i < desc->dims[desc->depth]; i++)
                y[i] = NAN;
            return;
        }
    }
    mlp_forward_scratch(desc, head, x, y, scratch, scratch + widest);
    if (scratch != stack)
        free(scratch);
}

/* Clears every word of the row, then sets bit i iff y_i > 0. */
static void pack_sign_bits(const double *y, int32_t bits, uint32_t *row, int32_t words)
{
    memset(row, 0, (size_t)words * sizeof(uint32_t));
    for (int32_t i = 0; i < bits; i++)
        if (y[i] > 0.0)
            row[i / 32] |= 1u << (i % 32);
}

ha_status ha_ref_encode(const ha_encode_args *args)
{
    const ha_mlp_desc *desc = args->desc;
    if (!desc || desc->depth < 1 || desc->depth > HA_PLUGIN_MAX_MLP_DEPTH || desc->heads < 1 ||
        args->in.heads < 1 || desc->heads % args->in.heads != 0 || args->in.dim < desc->dims[0])
        return HA_ERR_SHAPE;
    int32_t bits = desc->dims[desc->depth];
    if (args->out.dim < (bits + 31) / 32)
        return HA_ERR_SHAPE;
    if (args->batch <= 0 || args->count <= 0)
        return HA_OK;

    int32_t widest = widest_layer(desc);
    size_t in_elem = ha_elem_size(args->in.dtype);
    float *x = ha_malloc((size_t)desc->dims[0] * sizeof(float));
    double *y = ha_malloc((size_t)bits * sizeof(double));
    double *scratch = ha_malloc(2 * (size_t)widest * sizeof(double));
    if (!x || !y || !scratch) {
        free(x);
        free(y);
        free(scratch);
        return HA_ERR_OUT_OF_MEMORY;
    }

    int32_t heads_per_input = desc->heads / args->in.heads;
    for (int32_t b = 0; b < args->batch; b++) {
        int64_t end = args->end ? args->end[b] : args->count;
        int64_t start = end - args->count > 0 ? end - args->count : 0;
        for (int64_t t = start; t < end; t++) {
            for (int32_t m = 0; m < desc->heads; m++) {
                const void *in_row = ha_rows_ptr(&args->in, in_elem, b, m / heads_per_input, t);
                for (int32_t i = 0; i < desc->dims[0]; i++)
                    x[i] = ha_load_f32(in_row, args->in.dtype, i);
                mlp_forward_scratch(desc, m, x, y, scratch, scratch + widest);
                /* ha_rows holds a const pointer; out.data is writable per ha_encode_args */
                uint32_t *out_row = (uint32_t *)ha_rows_ptr(&args->out, sizeof(uint32_t), b, m, t);
                pack_sign_bits(y, bits, out_row, args->out.dim);
            }
        }
    }
    free(x);
    free(y);
    free(scratch);
    return HA_OK;
}
