/*
 * cpu_mlp.c — mapping MLPs in the plugin's form: each layer's weights transposed to
 * [heads, in, out_pad] so that a matrix-vector product streams contiguous rows of outputs (one FMA
 * per 16 outputs per input), with zero-padded output columns and biases.
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

    size_t total = 0; /* floats */
    int32_t widest = 0;
    for (int32_t i = 0; i <= desc->depth; i++) {
        if (desc->dims[i] < 1 || desc->dims[i] > (1 << 24) || (i < desc->depth && (!desc->w[i] || !desc->b[i]))) {
            cpu_free(ctx, mlp);
            return cpu_fail(HA_ERR_INVALID_ARGUMENT, "cpu_avx512 mlp_upload: layer %d: bad width %d or NULL weights",
                            i, desc->dims[i]);
        }
        int32_t pad = (int32_t)cpu_round_up(desc->dims[i], 16);
        widest = pad > widest ? pad : widest;
        size_t layer = 0;
        if (i < desc->depth &&
            (__builtin_mul_overflow((size_t)desc->heads * ((size_t)desc->dims[i] + 1),
                                    (size_t)cpu_round_up(desc->dims[i + 1], 16), &layer) ||
             __builtin_add_overflow(total, layer, &total) || total > SIZE_MAX / sizeof(float))) {
            cpu_free(ctx, mlp);
            return cpu_fail(HA_ERR_OVERFLOW, "cpu_avx512 mlp_upload: the repacked weights overflow the address space");
        }
    }
    mlp->widest_pad = widest;
    void *storage = cpu_alloc(ctx, total * sizeof(float));
    if (!storage) {
        cpu_free(ctx, mlp);
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 mlp_upload: cannot allocate %zu bytes",
                        total * sizeof(float));
    }
    mlp->storage = storage;

    float *next = mlp->storage;
    for (int32_t i = 0; i < desc->depth; i++) {
        cpu_mlp_layer *L = &mlp->layer[i];
        L->in_dim = desc->dims[i];
        L->out_dim = desc->dims[i + 1];
        L->out_pad = (int32_t)cpu_round_up(L->out_dim, 16);
        L->wt = next;
        next += (size_t)desc->heads * (size_t)L->in_dim * (size_t)L->out_pad;
        L->bias = next;
        next += (size_t)desc->heads * (size_t)L->out_pad;
        for (int32_t h = 0; h < desc->heads; h++) {
            const float *w = desc->w[i] + (size_t)h * L->out_dim * L->in_dim;
            float *wt = L->wt + (size_t)h * L->in_dim * L->out_pad;
            for (int32_t k = 0; k < L->in_dim; k++) {
                float *row = wt + (size_t)k * L->out_pad;
                for (int32_t o = 0; o < L->out_dim; o++)
                    row[o] = w[(size_t)o * L->in_dim + k];
                memset(row + L->out_dim, 0, (size_t)(L->out_pad - L->out_dim) * sizeof(float));
            }
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
