/*
 * safetensors.h — reader and writer of the safetensors format (8-byte little-endian header length,
 * a JSON header, then the raw tensor bytes). The JSON is parsed with jansson. The reader validates
 * every field: dtype names, shapes (non-negative, products that fit), data_offsets (ordered, inside
 * the data section, matching dtype size × element count), duplicate names, header length against
 * the file size. Used for the mapping-function weights and for model weights.
 */
#ifndef HA_SAFETENSORS_H
#define HA_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"

#define HA_ST_MAX_DIMS 8

typedef enum ha_st_dtype {
    HA_ST_F32, HA_ST_F16, HA_ST_BF16, HA_ST_F64,
    HA_ST_I8, HA_ST_U8, HA_ST_I16, HA_ST_I32, HA_ST_I64, HA_ST_BOOL,
} ha_st_dtype;

typedef struct ha_st_tensor {
    char *name;
    ha_st_dtype dtype;
    int32_t ndim;
    int64_t shape[HA_ST_MAX_DIMS];
    int64_t numel;
    size_t offset;  /**< into the data section */
    size_t nbytes;
} ha_st_tensor;

typedef struct ha_st_file {
    void *owned;        /**< the buffer or mapping this file holds (NULL when borrowed)   */
    size_t owned_size;
    int mapped;         /**< owned is an mmap                                              */
    const uint8_t *data; /**< start of the data section                                    */
    size_t data_size;
    ha_st_tensor *tensors;
    size_t n_tensors;
    char **meta_keys;   /**< __metadata__ entries (string values only, as the format says) */
    char **meta_values;
    size_t n_meta;
} ha_st_file;

/** Size in bytes of one element; 0 for an unknown dtype. */
size_t ha_st_dtype_size(ha_st_dtype dt);
/** The dtype's name in the format ("F32", "BF16", …). */
const char *ha_st_dtype_name(ha_st_dtype dt);

/** Parses buf (borrowed: must outlive *out). On failure *out is zeroed and err holds a message. */
ha_status ha_st_parse(const void *buf, size_t len, ha_st_file *out, char *err, size_t err_size);
/** Reads (maps) and parses a file; *out owns the mapping. */
ha_status ha_st_open(const char *path, ha_st_file *out, char *err, size_t err_size);
void ha_st_close(ha_st_file *f);

const ha_st_tensor *ha_st_find(const ha_st_file *f, const char *name);
/** Value of a metadata key, or NULL. */
const char *ha_st_meta(const ha_st_file *f, const char *key);
/** Pointer to a tensor's bytes (may be unaligned). */
static inline const void *ha_st_tensor_data(const ha_st_file *f, const ha_st_tensor *t)
{
    return f->data + t->offset;
}
/** Converts a F32/F16/BF16 tensor to fp32 (dst holds numel floats). HA_ERR_FORMAT for other dtypes. */
ha_status ha_st_to_f32(const ha_st_file *f, const ha_st_tensor *t, float *dst);

/** One tensor to write. */
typedef struct ha_st_out_tensor {
    const char *name;
    ha_st_dtype dtype;
    int32_t ndim;
    const int64_t *shape;
    const void *data; /**< numel × dtype size bytes */
} ha_st_out_tensor;

/** Writes a safetensors file (tensors in the given order, 8-byte aligned header). */
ha_status ha_st_write(const char *path, const ha_st_out_tensor *tensors, size_t n_tensors,
                      const char *const *meta_keys, const char *const *meta_values, size_t n_meta,
                      char *err, size_t err_size);

#endif /* HA_SAFETENSORS_H */
