/*
 * weights_host.h — mapping-function weights in host memory, fp32: what a safetensors weights file
 * (SPEC §2) becomes after validation, before it is uploaded to a backend; and the reverse, for
 * tools that create or train weights.
 *
 * File format: tensors layers.{l}.{q|k}.w{i} [heads, out, in] and layers.{l}.{q|k}.b{i} [heads, out],
 * i = 1..depth (W1 first), dtype F32/F16/BF16; __metadata__: format=hashattn, version=1, bits,
 * activation=silu, mlp_depth, head_dim, q_heads, k_heads, num_layers, optional dense_layers
 * ("0,1,2"), optional hidden (width of hidden layers, informative). A layer is dense when listed in
 * dense_layers or when it has no tensors at all; a sparse layer must have every tensor.
 */
#ifndef HA_WEIGHTS_HOST_H
#define HA_WEIGHTS_HOST_H

#include "hashattn_plugin.h"
#include "safetensors.h"

typedef struct ha_weights_host {
    int32_t num_layers;
    int32_t bits;
    int32_t words;
    int32_t depth;
    int32_t head_dim;
    int32_t q_heads;
    int32_t k_heads;
    uint8_t *dense;     /**< [num_layers]: 1 = dense layer (q[l], k[l] then have heads = 0)  */
    ha_mlp_desc *q;     /**< [num_layers] */
    ha_mlp_desc *k;     /**< [num_layers] */
    float *storage;     /**< every w/b array points into this one allocation                */
} ha_weights_host;

/** Validates metadata, names, dtypes and shapes; converts to fp32. err says what was wrong. */
ha_status ha_weights_host_from_st(const ha_st_file *f, ha_weights_host *out, char *err, size_t err_size);
void ha_weights_host_free(ha_weights_host *w);

/** Allocates zeroed weights of the given geometry (hidden = width of hidden layers; dense = 1 per dense layer). */
ha_status ha_weights_host_alloc(ha_weights_host *out, int32_t num_layers, int32_t bits, int32_t depth,
                                int32_t hidden, int32_t head_dim, int32_t q_heads, int32_t k_heads,
                                const uint8_t *dense);
/** Writes the weights as safetensors in dtype (HA_ST_F32, HA_ST_F16 or HA_ST_BF16). */
ha_status ha_weights_host_write(const ha_weights_host *w, const char *path, ha_st_dtype dtype, char *err,
                                size_t err_size);

#endif /* HA_WEIGHTS_HOST_H */
