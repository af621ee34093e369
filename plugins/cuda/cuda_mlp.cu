/*
 * cuda_mlp.cu — mapping MLPs in device memory, fp32, one contiguous block per head (see cu_mlp):
 * each layer's weights transposed to [in, out] so that the threads of an encode block, one output
 * each, read consecutive addresses for every input, then its biases. A head's block starts 16-byte
 * aligned so that an encode block can copy it to shared memory with 16-byte copies. Where every layer
 * is at most CU_ENCODE_ROW_WIDTH wide, a second copy, output-major with each weight row padded to 4
 * floats, serves the row encode (a warp reads an output's weights as one contiguous row). One
 * allocation per layout.
 */
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

static int64_t round4(int64_t x)
{
    return (x + 3) & ~(int64_t)3;
}

/* Floats of one head's block: every layer's [in, out] weights and [out] biases, each layer starting
 * at a multiple of 4 floats (the encode kernel waits for one layer's 16-byte copies at a time). */
static int64_t head_layout(const ha_mlp_desc *desc, int64_t *w_off, int64_t *b_off)
{
    int64_t at = 0;
    for (int32_t i = 0; i < desc->depth; i++) {
        w_off[i] = at;
        at += (int64_t)desc->dims[i] * desc->dims[i + 1];
        b_off[i] = at;
        at = round4(at + desc->dims[i + 1]);
    }
    return at;
}

/* Floats of one head's block in the row layout: layer i's [out][round4(in)] weights at w_off[i], its
 * biases at b_off[i], each starting at a multiple of 4 floats. */
static int64_t row_head_layout(const ha_mlp_desc *desc, int64_t *w_off, int64_t *b_off)
{
    int64_t at = 0;
    for (int32_t i = 0; i < desc->depth; i++) {
        w_off[i] = at;
        at += round4(desc->dims[i]) * desc->dims[i + 1];
        b_off[i] = at;
        at = round4(at + desc->dims[i + 1]);
    }
    return at;
}

/* Both layouts of one head's parameters (desc: [out][in] weights) into its blocks; row: NULL if none. */
static void fill_head(const cu_mlp *mlp, const ha_mlp_desc *desc, int32_t h, float *block, float *row)
{
    for (int32_t i = 0; i < desc->depth; i++) {
        const size_t in = (size_t)desc->dims[i], outs = (size_t)desc->dims[i + 1];
        const float *w = desc->w[i] + (size_t)h * outs * in;
        const float *bias = desc->b[i] + (size_t)h * outs;
        float *t = block + mlp->w_off[i];
        for (size_t o = 0; o < outs; o++)
            for (size_t k = 0; k < in; k++)
                t[k * outs + o] = w[o * in + k];
        memcpy(block + mlp->b_off[i], bias, outs * sizeof(float));
        if (!row)
            continue;
        const size_t padded = (size_t)round4((int64_t)in);
        for (size_t o = 0; o < outs; o++)
            memcpy(row + mlp->row_w_off[i] + o * padded, w + o * in, in * sizeof(float));
        memcpy(row + mlp->row_b_off[i], bias, outs * sizeof(float));
    }
}

/* A device copy of host[0, floats) in *dev (the host buffer is the caller's). */
static ha_status upload(const float *host, size_t floats, float **dev)
{
    ha_status st = cu_check(cudaMalloc(dev, floats * sizeof(float)), "cuda mlp_upload: cudaMalloc");
    if (st == HA_OK)
        st = cu_check(cudaMemcpy(*dev, host, floats * sizeof(float), cudaMemcpyHostToDevice),
                      "cuda mlp_upload: cudaMemcpy");
    /* a copy from pageable memory may still be in flight when cudaMemcpy returns */
    if (st == HA_OK)
        st = cu_check(cudaStreamSynchronize(0), "cuda mlp_upload: cudaStreamSynchronize");
    return st;
}

ha_status cu_mlp_upload(const cu_ctx *ctx, const ha_mlp_desc *desc, cu_mlp **out)
{
    *out = NULL;
    if (!desc || desc->heads < 1 || desc->depth < 1 || desc->depth > HA_PLUGIN_MAX_MLP_DEPTH)
        return cu_fail(HA_ERR_INVALID_ARGUMENT, "cuda mlp_upload: bad MLP description (heads %d, depth %d)",
                       desc ? desc->heads : 0, desc ? desc->depth : 0);
    int32_t widest_in = 0, widest_out = 0;
    for (int32_t i = 0; i <= desc->depth; i++) {
        if (desc->dims[i] < 1 || desc->dims[i] > (1 << 16) || (i < desc->depth && (!desc->w[i] || !desc->b[i])))
            return cu_fail(HA_ERR_INVALID_ARGUMENT, "cuda mlp_upload: layer %d: bad width %d or NULL weights", i,
                           desc->dims[i]);
        if (i < desc->depth)
            widest_in = desc->dims[i] > widest_in ? desc->dims[i] : widest_in;
        if (i > 0)
            widest_out = desc->dims[i] > widest_out ? desc->dims[i] : widest_out;
    }
    cu_mlp *mlp = (cu_mlp *)calloc(1, sizeof *mlp);
    if (!mlp)
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda mlp_upload: out of host memory");
    mlp->heads = desc->heads;
    mlp->depth = desc->depth;
    mlp->widest_input = widest_in;
    mlp->widest_output = widest_out;
    memcpy(mlp->dims, desc->dims, sizeof mlp->dims);
    mlp->head_floats = head_layout(desc, mlp->w_off, mlp->b_off); /* widths ≤ 2^16: no overflow */
    if (cu_encode_smem(mlp, 1, false) > ctx->smem_optin) {
        size_t need = cu_encode_smem(mlp, 1, false);
        free(mlp);
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda mlp_upload: layers of width %d → %d need %zu bytes of shared memory "
                       "per block; this device allows %zu", widest_in, widest_out, need, ctx->smem_optin);
    }
    /* the row layout only where every layer is ≤ CU_ENCODE_ROW_WIDTH wide (else row_head_floats 0) */
    if (widest_in <= CU_ENCODE_ROW_WIDTH && widest_out <= CU_ENCODE_ROW_WIDTH)
        mlp->row_head_floats = row_head_layout(desc, mlp->row_w_off, mlp->row_b_off);
    size_t total = 0, row_total = 0;
    if (__builtin_mul_overflow((size_t)desc->heads, (size_t)mlp->head_floats, &total) ||
        __builtin_mul_overflow((size_t)desc->heads, (size_t)mlp->row_head_floats, &row_total) ||
        total > SIZE_MAX / sizeof(float) || row_total > SIZE_MAX / sizeof(float)) {
        free(mlp);
        return cu_fail(HA_ERR_OVERFLOW, "cuda mlp_upload: the weights overflow the address space");
    }
    const bool rows = row_total > 0;
    float *host = (float *)calloc(total, sizeof(float));
    float *row_host = rows ? (float *)calloc(row_total, sizeof(float)) : NULL;
    if (!host || (rows && !row_host)) {
        free(host);
        free(row_host);
        free(mlp);
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda mlp_upload: out of host memory");
    }
    for (int32_t h = 0; h < desc->heads; h++)
        fill_head(mlp, desc, h, host + (size_t)h * (size_t)mlp->head_floats,
                  rows ? row_host + (size_t)h * (size_t)mlp->row_head_floats : NULL);
    ha_status st = upload(host, total, &mlp->storage);
    if (st == HA_OK && rows)
        st = upload(row_host, row_total, &mlp->row_storage);
    free(host);
    free(row_host);
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
    cudaFree(mlp->row_storage);
    free(mlp);
}
