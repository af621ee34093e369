/*
 * cpu_mlp.c — mapping MLPs in the plugin's form: each layer's weights transposed to
 * [heads, in, out_pad] so that a matrix-vector product streams contiguous rows of outputs (one FMA
 * per 16 outputs per input), with zero-padded output columns and biases; stored as F16 or BF16
 * where that is exact (a decode step's encode is bound by reading these weights).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

static void note_width(cpu_ctx *ctx, int32_t width)
{
    int32_t seen = __atomic_load_n(&ctx->widest_mlp, __ATOMIC_RELAXED);
    while (width > seen &&
           !__atomic_compare_exchange_n(&ctx->widest_mlp, &seen, width, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* The narrowest storage dtype that holds every weight of layer i exactly (bitwise: -0 stays -0):
 * trained weights ship as F16 or BF16, and a 16-bit copy halves the bytes each encode reads. */
static ha_dtype exact_dtype(const ha_mlp_desc *desc, int32_t i)
{
    int bf16 = 1, f16 = 1;
    size_t count = (size_t)desc->heads * (size_t)desc->dims[i] * (size_t)desc->dims[i + 1];
    for (size_t j = 0; j < count && (bf16 || f16); j++) {
        float v = desc->w[i][j], back;
        uint32_t a, b;
        memcpy(&a, &v, sizeof a);
        back = ha_bf16_to_f32(ha_f32_to_bf16(v));
        memcpy(&b, &back, sizeof b);
        bf16 = bf16 && a == b;
        back = ha_f16_to_f32(ha_f32_to_f16(v));
        memcpy(&b, &back, sizeof b);
        f16 = f16 && a == b;
    }
    return bf16 ? HA_BF16 : f16 ? HA_F16 : HA_F32;
}

/* Element k * out_pad + o of a layer's transposed weights, stored as dt. */
static void store_weight(void *wt, ha_dtype dt, size_t at, float v)
{
    if (dt == HA_BF16)
        ((uint16_t *)wt)[at] = ha_f32_to_bf16(v);
    else if (dt == HA_F16)
        ((uint16_t *)wt)[at] = ha_f32_to_f16(v);
    else
        ((float *)wt)[at] = v;
}

ha_status cpu_mlp_upload(cpu_ctx *ctx, const ha_mlp_desc *desc, cpu_mlp **out)
{
    *out = NULL;
    if (!desc || desc->heads < 1 || desc->depth < 1 || desc->depth > HA_PLUGIN_MAX_MLP_DEPTH)
        return cpu_fail(HA_ERR_INVALID_ARGUMENT, "cpu_avx512 mlp_upload: bad MLP description (heads %d, depth %d)",
                        desc ? desc->heads : 0, desc ? desc->depth : 0);
    cpu_mlp *mlp = cpu_alloc_zeroed(ctx, sizeof *mlp);
    if (!mlp)
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 mlp_upload: out of memory");
    mlp->heads = desc->heads;
    mlp->depth = desc->depth;
    mlp->bits = desc->dims[desc->depth];

    size_t total = 0; /* bytes; each layer's weights and biases start 64-byte aligned */
    int32_t widest = 0;
    for (int32_t i = 0; i <= desc->depth; i++) {
        if (desc->dims[i] < 1 || desc->dims[i] > (1 << 24) || (i < desc->depth && (!desc->w[i] || !desc->b[i]))) {
            cpu_free(ctx, mlp);
            return cpu_fail(HA_ERR_INVALID_ARGUMENT, "cpu_avx512 mlp_upload: layer %d: bad width %d or NULL weights",
                            i, desc->dims[i]);
        }
        int32_t pad = (int32_t)cpu_round_up(desc->dims[i], 16);
        widest = pad > widest ? pad : widest;
        if (i == desc->depth)
            break;
        size_t out_pad = (size_t)cpu_round_up(desc->dims[i + 1], 16), weights = 0, biases = 0;
        mlp->layer[i].wt_dtype = exact_dtype(desc, i);
        if (__builtin_mul_overflow((size_t)desc->heads * (size_t)desc->dims[i], out_pad, &weights) ||
            __builtin_mul_overflow(weights, ha_elem_size(mlp->layer[i].wt_dtype), &weights) ||
            __builtin_mul_overflow((size_t)desc->heads * sizeof(float), out_pad, &biases) ||
            __builtin_add_overflow(total, (size_t)cpu_round_up((int64_t)weights, 64), &total) ||
            __builtin_add_overflow(total, biases, &total) || total > (size_t)INT64_MAX / 2) {
            cpu_free(ctx, mlp);
            return cpu_fail(HA_ERR_OVERFLOW, "cpu_avx512 mlp_upload: the repacked weights overflow the address space");
        }
        total = (size_t)cpu_round_up((int64_t)total, 64);
    }
    mlp->widest_pad = widest;
    mlp->storage = cpu_alloc(ctx, total);
    if (!mlp->storage) {
        cpu_free(ctx, mlp);
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 mlp_upload: cannot allocate %zu bytes", total);
    }

    char *next = mlp->storage;
    for (int32_t i = 0; i < desc->depth; i++) {
        cpu_mlp_layer *L = &mlp->layer[i];
        size_t elem = ha_elem_size(L->wt_dtype);
        L->in_dim = desc->dims[i];
        L->out_dim = desc->dims[i + 1];
        L->out_pad = (int32_t)cpu_round_up(L->out_dim, 16);
        L->wt = next;
        next += cpu_round_up((int64_t)((size_t)desc->heads * (size_t)L->in_dim * (size_t)L->out_pad * elem), 64);
        L->bias = (float *)next;
        next += cpu_round_up((int64_t)((size_t)desc->heads * (size_t)L->out_pad * sizeof(float)), 64);
        for (int32_t h = 0; h < desc->heads; h++) {
            const float *w = desc->w[i] + (size_t)h * L->out_dim * L->in_dim;
            size_t head = (size_t)h * L->in_dim * L->out_pad;
            for (int32_t k = 0; k < L->in_dim; k++)
                for (int32_t o = 0; o < L->out_pad; o++)
                    store_weight(L->wt, L->wt_dtype, head + (size_t)k * L->out_pad + o,
                                 o < L->out_dim ? w[(size_t)o * L->in_dim + k] : 0.0f);
            float *bias = L->bias + (size_t)h * L->out_pad;
            memcpy(bias, desc->b[i] + (size_t)h * L->out_dim, (size_t)L->out_dim * sizeof(float));
            memset(bias + L->out_dim, 0, (size_t)(L->out_pad - L->out_dim) * sizeof(float));
        }
    }
    note_width(ctx, widest);
    *out = mlp;
    return HA_OK;
}

void cpu_mlp_free(const cpu_ctx *ctx, cpu_mlp *mlp)
{
    if (!mlp)
        return;
    cpu_free(ctx, mlp->storage);
    cpu_free(ctx, mlp);
}
