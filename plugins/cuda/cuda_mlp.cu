/*
 * cuda_mlp.cu — mapping MLPs in device memory, fp32: each layer's weights transposed to
 * [heads, in, out] so that the threads of an encode block, one output each, read consecutive
 * addresses for every input; biases [heads, out]. One allocation per MLP.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

ha_status cu_mlp_upload(const cu_ctx *ctx, const ha_mlp_desc *desc, cu_mlp **out)
{
    *out = NULL;
    if (!desc || desc->heads < 1 || desc->depth < 1 || desc->depth > HA_PLUGIN_MAX_MLP_DEPTH)
        return cu_fail(HA_ERR_INVALID_ARGUMENT, "cuda mlp_upload: bad MLP description (heads %d, depth %d)",
                       desc ? desc->heads : 0, desc ? desc->depth : 0);
    size_t total = 0; /* floats */
    int32_t widest = 0;
    for (int32_t i = 0; i <= desc->depth; i++) {
        if (desc->dims[i] < 1 || desc->dims[i] > (1 << 24) || (i < desc->depth && (!desc->w[i] || !desc->b[i])))
            return cu_fail(HA_ERR_INVALID_ARGUMENT, "cuda mlp_upload: layer %d: bad width %d or NULL weights", i,
                           desc->dims[i]);
        if (i < desc->depth) {
            widest = desc->dims[i] > widest ? desc->dims[i] : widest;
            size_t layer = 0;
            if (__builtin_mul_overflow((size_t)desc->heads * ((size_t)desc->dims[i] + 1), (size_t)desc->dims[i + 1],
                                       &layer) ||
                __builtin_add_overflow(total, layer, &total) || total > SIZE_MAX / sizeof(float))
                return cu_fail(HA_ERR_OVERFLOW, "cuda mlp_upload: the weights overflow the address space");
        }
    }
    if (cu_encode_smem(widest, 1) > ctx->smem_optin)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda mlp_upload: a layer input of width %d needs %zu bytes of shared "
                       "memory per block; this device allows %zu", widest, cu_encode_smem(widest, 1),
                       ctx->smem_optin);

    float *host = (float *)malloc(total * sizeof(float));
    cu_mlp *mlp = (cu_mlp *)calloc(1, sizeof *mlp);
    if (!host || !mlp) {
        free(host);
        free(mlp);
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda mlp_upload: out of host memory");
    }
    ha_status st = cu_check(cudaMalloc(&mlp->storage, total * sizeof(float)), "cuda mlp_upload: cudaMalloc");
    if (st != HA_OK) {
        free(host);
        free(mlp);
        return st;
    }
    mlp->heads = desc->heads;
    mlp->depth = desc->depth;
    mlp->widest_input = widest;
    memcpy(mlp->dims, desc->dims, sizeof mlp->dims);
    size_t at = 0;
    for (int32_t i = 0; i < desc->depth; i++) {
        const size_t in = (size_t)desc->dims[i], outs = (size_t)desc->dims[i + 1];
        float *wt = host + at, *bias = wt + (size_t)desc->heads * in * outs;
        for (int32_t h = 0; h < desc->heads; h++) {
            const float *w = desc->w[i] + (size_t)h * outs * in;
            float *t = wt + (size_t)h * in * outs;
            for (size_t o = 0; o < outs; o++)
                for (size_t k = 0; k < in; k++)
                    t[k * outs + o] = w[o * in + k];
        }
        memcpy(bias, desc->b[i], (size_t)desc->heads * outs * sizeof(float));
        mlp->wt[i] = mlp->storage + at;
        mlp->bias[i] = mlp->storage + (bias - host);
        at += (size_t)desc->heads * (in + 1) * outs;
    }
    st = cu_check(cudaMemcpy(mlp->storage, host, total * sizeof(float), cudaMemcpyHostToDevice),
                  "cuda mlp_upload: cudaMemcpy");
    /* a copy from pageable memory may still be in flight when cudaMemcpy returns */
    if (st == HA_OK)
        st = cu_check(cudaStreamSynchronize(0), "cuda mlp_upload: cudaStreamSynchronize");
    free(host);
    if (st != HA_OK) {
        cu_mlp_free(mlp);
        return st;
    }
    *out = mlp;
    return HA_OK;
}

void cu_mlp_free(cu_mlp *mlp)
{
    if (!mlp)
        return;
    cudaFree(mlp->storage);
    free(mlp);
}
