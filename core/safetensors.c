/*
 * safetensors.c — reader and writer of the safetensors format (see safetensors.h).
 *
 * Layout: u64 little-endian header length N, N bytes of a JSON object (UTF-8, starts with '{', may be
 * padded with trailing spaces), then the data section. The reader follows the format's own rules
 * (huggingface/safetensors): the data section is entirely indexed by the tensors, without holes or
 * overlaps, so a file cannot smuggle extra bytes and a truncated file is always detected. Tensors are
 * kept sorted by name (as the Python API lists them) so lookups are binary searches.
 *
 * The host must be little-endian (as every platform this runtime targets): tensor bytes are used as is.
 */
#include "safetensors.h"
#include "host_alloc.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error_buffer.h"
#include "ha_shared.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The reference implementation's limit: a larger header is a malformed (or hostile) file. */
#define ST_MAX_HEADER_BYTES 100000000ull
#define ST_META_KEY "__metadata__"

/* every error of this file is reported into the caller's (err, err_size) buffer */
#define fail ha_error_to_buffer

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [HA_ST_F32] = {"F32", 4},  [HA_ST_F16] = {"F16", 2}, [HA_ST_BF16] = {"BF16", 2}, [HA_ST_F64] = {"F64", 8},
    [HA_ST_I8] = {"I8", 1},    [HA_ST_U8] = {"U8", 1},   [HA_ST_I16] = {"I16", 2},   [HA_ST_I32] = {"I32", 4},
    [HA_ST_I64] = {"I64", 8},  [HA_ST_BOOL] = {"BOOL", 1},
};
#define DTYPE_COUNT (sizeof(dtype_table) / sizeof(dtype_table[0]))

size_t ha_st_dtype_size(ha_st_dtype dt)
{
    return (unsigned)dt < DTYPE_COUNT ? dtype_table[dt].size : 0;
}

const char *ha_st_dtype_name(ha_st_dtype dt)
{
    return (unsigned)dt < DTYPE_COUNT ? dtype_table[dt].name : "?";
}

static int dtype_from_name(const char *name, ha_st_dtype *out)
{
    for (size_t i = 0; i < DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_table[i].name) == 0) {
            *out = (ha_st_dtype)i;
            return 1;
        }
    }
    return 0;
}

/** Element count of a shape, or -1 when the product does not fit in int64. */
static int64_t shape_numel(const int64_t *shape, int32_t ndim)
{
    int64_t n = 1;
    for (int32_t i = 0; i < ndim; i++) {
        if (shape[i] != 0 && n > INT64_MAX / shape[i])
            return -1;
        n *= shape[i];
    }
    return n;
}

/* ---- reading ------------------------------------------------------------------------------ */

void ha_st_close(ha_st_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    if (f->owned) {
        if (f->mapped)
            munmap(f->owned, f->owned_size);
        else
            free(f->owned);
    }
    memset(f, 0, sizeof(*f));
}

static ha_status parse_metadata(json_t *meta, ha_st_file *out, char *err, size_t err_size)
{
    if (!json_is_object(meta))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: %s is not an object", ST_META_KEY);
    size_t n = json_object_size(meta);
    if (n == 0)
        return HA_OK;
    out->meta_keys = ha_calloc(n, sizeof(char *));
    out->meta_values = ha_calloc(n, sizeof(char *));
    if (!out->meta_keys || !out->meta_values)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors header: out of memory");
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: %s value of \"%s\" is not a string",
                        ST_META_KEY, key);
        char *k = ha_strdup(key);
        char *v = ha_strdup(json_string_value(value));
        out->meta_keys[out->n_meta] = k;
        out->meta_values[out->n_meta] = v;
        out->n_meta++; /* counted before the check so ha_st_close frees what was made */
        if (!k || !v)
            return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors header: out of memory");
    }
    return HA_OK;
}

/** A non-negative JSON integer, or -1. */
static int64_t json_nonneg_int(const json_t *v)
{
    if (!json_is_integer(v))
        return -1;
    json_int_t i = json_integer_value(v);
    return i < 0 ? -1 : (int64_t)i;
}

/** Fills t (except name) from one tensor entry; data_size bounds the offsets. */
static ha_status parse_tensor(const char *name, json_t *entry, size_t data_size, ha_st_tensor *t, char *err,
                              size_t err_size)
{
    if (!json_is_object(entry))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" is not an object", name);
    const char *key;
    json_t *value;
    json_object_foreach(entry, key, value) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
            return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" has unknown field \"%s\"",
                        name, key);
    }

    json_t *dtype = json_object_get(entry, "dtype");
    if (!json_is_string(dtype))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" has no dtype string", name);
    if (!dtype_from_name(json_string_value(dtype), &t->dtype))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" has unknown dtype \"%s\"",
                    name, json_string_value(dtype));

    json_t *shape = json_object_get(entry, "shape");
    if (!json_is_array(shape))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" has no shape array", name);
    size_t ndim = json_array_size(shape);
    if (ndim > HA_ST_MAX_DIMS)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" has %zu dimensions (at most %d)",
                    name, ndim, HA_ST_MAX_DIMS);
    t->ndim = (int32_t)ndim;
    for (size_t i = 0; i < ndim; i++) {
        t->shape[i] = json_nonneg_int(json_array_get(shape, i));
        if (t->shape[i] < 0)
            return fail(err, err_size, HA_ERR_FORMAT,
                        "safetensors header: tensor \"%s\" shape[%zu] is not a non-negative integer", name, i);
    }
    t->numel = shape_numel(t->shape, t->ndim);
    size_t elem = ha_st_dtype_size(t->dtype);
    if (t->numel < 0 || (uint64_t)t->numel > SIZE_MAX / elem)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" shape is too large", name);
    t->nbytes = (size_t)t->numel * elem;

    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" data_offsets is not [begin, end]",
                    name);
    int64_t begin = json_nonneg_int(json_array_get(offsets, 0));
    int64_t end = json_nonneg_int(json_array_get(offsets, 1));
    if (begin < 0 || end < 0)
        return fail(err, err_size, HA_ERR_FORMAT,
                    "safetensors header: tensor \"%s\" data_offsets are not non-negative integers", name);
    if (begin > end)
        return fail(err, err_size, HA_ERR_FORMAT,
                    "safetensors header: tensor \"%s\" data_offsets begin %lld > end %lld", name, (long long)begin,
                    (long long)end);
    if ((uint64_t)end > data_size)
        return fail(err, err_size, HA_ERR_FORMAT,
                    "safetensors: tensor \"%s\" ends at byte %lld of a data section of %zu bytes (truncated file?)",
                    name, (long long)end, data_size);
    if ((uint64_t)(end - begin) != t->nbytes)
        return fail(err, err_size, HA_ERR_FORMAT,
                    "safetensors header: tensor \"%s\" has %lld data bytes; its dtype %s and shape need %zu", name,
                    (long long)(end - begin), ha_st_dtype_name(t->dtype), t->nbytes);
    t->offset = (size_t)begin;
    return HA_OK;
}

static int compare_by_offset(const void *a, const void *b)
{
    const ha_st_tensor *x = *(const ha_st_tensor *const *)a, *y = *(const ha_st_tensor *const *)b;
    size_t xe = x->offset + x->nbytes, ye = y->offset + y->nbytes;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return xe < ye ? -1 : xe > ye ? 1 : 0;
}

static int compare_by_name(const void *a, const void *b)
{
    return strcmp(((const ha_st_tensor *)a)->name, ((const ha_st_tensor *)b)->name);
}

/** The format's rule: tensors cover the data section exactly, without overlap or holes. */
static ha_status check_coverage(const ha_st_file *f, char *err, size_t err_size)
{
    if (f->n_tensors == 0) {
        if (f->data_size != 0)
            return fail(err, err_size, HA_ERR_FORMAT, "safetensors: %zu data bytes but no tensors", f->data_size);
        return HA_OK;
    }
    const ha_st_tensor **order = ha_malloc(f->n_tensors * sizeof(*order));
    if (!order)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors: out of memory");
    for (size_t i = 0; i < f->n_tensors; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n_tensors, sizeof(*order), compare_by_offset);
    ha_status st = HA_OK;
    size_t covered = 0;
    for (size_t i = 0; i < f->n_tensors && st == HA_OK; i++) {
        const ha_st_tensor *t = order[i];
        if (t->offset < covered)
            st = fail(err, err_size, HA_ERR_FORMAT, "safetensors header: tensor \"%s\" overlaps tensor \"%s\"",
                      t->name, order[i - 1]->name);
        else if (t->offset > covered)
            st = fail(err, err_size, HA_ERR_FORMAT,
                      "safetensors header: data bytes [%zu, %zu) belong to no tensor (before \"%s\")", covered,
                      t->offset, t->name);
        covered = t->offset + t->nbytes;
    }
    if (st == HA_OK && covered != f->data_size)
        st = fail(err, err_size, HA_ERR_FORMAT, "safetensors: %zu trailing data bytes belong to no tensor",
                  f->data_size - covered);
    free(order);
    return st;
}

static ha_status parse_header(json_t *root, ha_st_file *out, char *err, size_t err_size)
{
    if (!json_is_object(root))
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: JSON is not an object");
    size_t n = json_object_size(root);
    json_t *meta = json_object_get(root, ST_META_KEY);
    if (meta) {
        ha_status st = parse_metadata(meta, out, err, err_size);
        if (st != HA_OK)
            return st;
        n--;
    }
    if (n > 0 && !(out->tensors = ha_calloc(n, sizeof(ha_st_tensor))))
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors header: out of memory");
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, ST_META_KEY) == 0)
            continue;
        if (key[0] == '\0')
            return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: a tensor has an empty name");
        ha_st_tensor *t = &out->tensors[out->n_tensors];
        ha_status st = parse_tensor(key, value, out->data_size, t, err, err_size);
        if (st != HA_OK)
            return st;
        if (!(t->name = ha_strdup(key)))
            return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors header: out of memory");
        out->n_tensors++;
    }
    ha_status st = check_coverage(out, err, err_size);
    if (st != HA_OK)
        return st;
    if (out->n_tensors > 1)
        qsort(out->tensors, out->n_tensors, sizeof(ha_st_tensor), compare_by_name);
    return HA_OK;
}

ha_status ha_st_parse(const void *buf, size_t len, ha_st_file *out, char *err, size_t err_size)
{
    if (!out)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors: out is NULL");
    memset(out, 0, sizeof(*out));
    if (!buf && len > 0)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors: buffer is NULL");
    if (len < 8)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors: %zu bytes, shorter than the 8-byte header length", len);
    const uint8_t *bytes = buf;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--)
        header_len = (header_len << 8) | bytes[i];
    if (header_len > ST_MAX_HEADER_BYTES)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors: header length %llu is absurd (limit %llu)",
                    (unsigned long long)header_len, ST_MAX_HEADER_BYTES);
    if (header_len > len - 8)
        return fail(err, err_size, HA_ERR_FORMAT,
                    "safetensors: header length %llu exceeds the %zu bytes after it (truncated file?)",
                    (unsigned long long)header_len, len - 8);
    if (header_len < 2 || bytes[8] != '{')
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors: header does not start with '{'");

    json_error_t jerr;
    json_t *root = json_loadb((const char *)bytes + 8, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    /* jansson reports a failed allocation as an error code, or (when its lexer cannot even start) as an
     * error without text: neither means the file is malformed */
    if (!root && (json_error_code(&jerr) == json_error_out_of_memory || !jerr.text[0]))
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors header: out of memory while parsing the JSON");
    if (!root)
        return fail(err, err_size, HA_ERR_FORMAT, "safetensors header: invalid JSON at byte %d: %s", jerr.position,
                    jerr.text);
    out->data = bytes + 8 + header_len;
    out->data_size = len - 8 - (size_t)header_len;
    ha_status st = parse_header(root, out, err, err_size);
    json_decref(root);
    if (st != HA_OK)
        ha_st_close(out);
    return st;
}

ha_status ha_st_open(const char *path, ha_st_file *out, char *err, size_t err_size)
{
    if (!out)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors: out is NULL");
    memset(out, 0, sizeof(*out));
    if (!path)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors: path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(err, err_size, HA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return fail(err, err_size, HA_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return fail(err, err_size, HA_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return fail(err, err_size, HA_ERR_IO, "%s: too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    void *map = NULL;
    if (size > 0) { /* mmap of 0 bytes fails; an empty file is reported by the parser as too short */
        map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return fail(err, err_size, HA_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd);

    char msg[512];
    ha_status st = ha_st_parse(map, size, out, msg, sizeof(msg));
    if (st != HA_OK) {
        if (map)
            munmap(map, size);
        return fail(err, err_size, st, "%s: %s", path, msg);
    }
    out->owned = map;
    out->owned_size = size;
    out->mapped = map != NULL;
    return HA_OK;
}

const ha_st_tensor *ha_st_find(const ha_st_file *f, const char *name)
{
    if (!f || !name || f->n_tensors == 0)
        return NULL;
    ha_st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->tensors, f->n_tensors, sizeof(ha_st_tensor), compare_by_name);
}

const char *ha_st_meta(const ha_st_file *f, const char *key)
{
    if (!f || !key)
        return NULL;
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0)
            return f->meta_values[i];
    return NULL;
}

ha_status ha_st_to_f32(const ha_st_file *f, const ha_st_tensor *t, float *dst)
{
    if (!f || !t || (!dst && t->numel > 0))
        return HA_ERR_INVALID_ARGUMENT;
    const uint8_t *src = ha_st_tensor_data(f, t);
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case HA_ST_F32:
        if (n > 0)
            memcpy(dst, src, n * sizeof(float));
        return HA_OK;
    case HA_ST_F16:
    case HA_ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2); /* the data section gives no alignment guarantee */
            dst[i] = t->dtype == HA_ST_F16 ? ha_f16_to_f32(h) : ha_bf16_to_f32(h);
        }
        return HA_OK;
    default:
        return HA_ERR_FORMAT;
    }
}

/* ---- writing ------------------------------------------------------------------------------ */

/** Whether s is a non-NULL, valid UTF-8 string (what jansson accepts as a string or key). */
static int valid_utf8(const char *s)
{
    json_t *probe = s ? json_string(s) : NULL;
    json_decref(probe);
    return probe != NULL;
}

static ha_status check_out_tensor(const ha_st_out_tensor *t, size_t index, size_t *nbytes, char *err,
                                  size_t err_size)
{
    if (!valid_utf8(t->name) || t->name[0] == '\0' || strcmp(t->name, ST_META_KEY) == 0)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT,
                    "safetensors write: tensor %zu has no valid name (NULL, empty, not UTF-8 or reserved)", index);
    if ((unsigned)t->dtype >= DTYPE_COUNT)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors write: tensor \"%s\" has an unknown dtype",
                    t->name);
    if (t->ndim < 0 || t->ndim > HA_ST_MAX_DIMS || (t->ndim > 0 && !t->shape))
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors write: tensor \"%s\" has ndim %d",
                    t->name, (int)t->ndim);
    for (int32_t d = 0; d < t->ndim; d++)
        if (t->shape[d] < 0)
            return fail(err, err_size, HA_ERR_INVALID_ARGUMENT,
                        "safetensors write: tensor \"%s\" has a negative dimension", t->name);
    int64_t numel = shape_numel(t->shape, t->ndim);
    size_t elem = ha_st_dtype_size(t->dtype);
    if (numel < 0 || (uint64_t)numel > SIZE_MAX / elem)
        return fail(err, err_size, HA_ERR_OVERFLOW, "safetensors write: tensor \"%s\" is too large", t->name);
    *nbytes = (size_t)numel * elem;
    if (*nbytes > 0 && !t->data)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors write: tensor \"%s\" has no data", t->name);
    return HA_OK;
}

/** Builds the JSON header; sizes[i] receives each tensor's byte count. */
static ha_status build_header(const ha_st_out_tensor *tensors, size_t n_tensors, const char *const *meta_keys,
                              const char *const *meta_values, size_t n_meta, size_t *sizes, char **json_out,
                              char *err, size_t err_size)
{
    ha_status st = HA_OK;
    json_t *root = json_object();
    if (!root)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors write: out of memory");
#define NEED(cond)                                                                                               \
    do {                                                                                                         \
        if (!(cond)) {                                                                                           \
            st = fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors write: out of memory");                  \
            goto done;                                                                                           \
        }                                                                                                        \
    } while (0)
    if (n_meta > 0) {
        json_t *meta = json_object();
        NEED(json_object_set_new(root, ST_META_KEY, meta) == 0);
        for (size_t i = 0; i < n_meta; i++) {
            if (!valid_utf8(meta_keys[i]) || !valid_utf8(meta_values[i]) || json_object_get(meta, meta_keys[i])) {
                st = fail(err, err_size, HA_ERR_INVALID_ARGUMENT,
                          "safetensors write: metadata entry %zu is NULL, not UTF-8 or a duplicate key", i);
                goto done;
            }
            NEED(json_object_set_new(meta, meta_keys[i], json_string(meta_values[i])) == 0);
        }
    }
    size_t offset = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        const ha_st_out_tensor *t = &tensors[i];
        if ((st = check_out_tensor(t, i, &sizes[i], err, err_size)) != HA_OK)
            goto done;
        if (json_object_get(root, t->name)) {
            st = fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors write: duplicate tensor name \"%s\"",
                      t->name);
            goto done;
        }
        if (sizes[i] > SIZE_MAX - offset || offset + sizes[i] > (size_t)INT64_MAX) {
            st = fail(err, err_size, HA_ERR_OVERFLOW, "safetensors write: data section too large");
            goto done;
        }
        /* json_*_set_new and _append_new take ownership, also of NULL (then they fail). */
        json_t *entry = json_object(), *shape, *offsets;
        NEED(json_object_set_new(root, t->name, entry) == 0);
        NEED(json_object_set_new(entry, "dtype", json_string(ha_st_dtype_name(t->dtype))) == 0);
        NEED(json_object_set_new(entry, "shape", shape = json_array()) == 0);
        for (int32_t d = 0; d < t->ndim; d++)
            NEED(json_array_append_new(shape, json_integer(t->shape[d])) == 0);
        NEED(json_object_set_new(entry, "data_offsets", offsets = json_array()) == 0);
        NEED(json_array_append_new(offsets, json_integer((json_int_t)offset)) == 0);
        offset += sizes[i];
        NEED(json_array_append_new(offsets, json_integer((json_int_t)offset)) == 0);
    }
    *json_out = json_dumps(root, JSON_COMPACT);
    NEED(*json_out);
#undef NEED
done:
    json_decref(root);
    return st;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/** Creates a fresh temporary file next to path (same filesystem, so rename is atomic). */
static int create_temp(const char *path, char *tmp, size_t tmp_size)
{
    static atomic_uint counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        int n = snprintf(tmp, tmp_size, "%s.tmp.%ld.%u", path, (long)getpid(), atomic_fetch_add(&counter, 1));
        if (n < 0 || (size_t)n >= tmp_size) {
            errno = ENAMETOOLONG;
            return -1;
        }
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}

ha_status ha_st_write(const char *path, const ha_st_out_tensor *tensors, size_t n_tensors,
                      const char *const *meta_keys, const char *const *meta_values, size_t n_meta, char *err,
                      size_t err_size)
{
    if (!path || (n_tensors > 0 && !tensors) || (n_meta > 0 && (!meta_keys || !meta_values)))
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "safetensors write: NULL argument");
    size_t *sizes = ha_calloc(n_tensors ? n_tensors : 1, sizeof(size_t));
    if (!sizes)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors write: out of memory");
    char *json = NULL;
    ha_status st = build_header(tensors, n_tensors, meta_keys, meta_values, n_meta, sizes, &json, err, err_size);
    if (st != HA_OK) {
        free(sizes);
        return st;
    }
    /* Pad with spaces so the data section starts 8-byte aligned. */
    size_t json_len = strlen(json), header_len = (json_len + 7) / 8 * 8;
    char *header = ha_malloc(8 + header_len);
    if (!header) {
        free(json);
        free(sizes);
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "safetensors write: out of memory");
    }
    for (int i = 0; i < 8; i++)
        header[i] = (char)(((uint64_t)header_len >> (8 * i)) & 0xff);
    memcpy(header + 8, json, json_len);
    memset(header + 8 + json_len, ' ', header_len - json_len);
    free(json);

    char tmp[4096];
    int fd = create_temp(path, tmp, sizeof(tmp));
    if (fd < 0) {
        st = fail(err, err_size, HA_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
    } else {
        int ok = write_all(fd, header, 8 + header_len) == 0;
        for (size_t i = 0; ok && i < n_tensors; i++)
            ok = sizes[i] == 0 || write_all(fd, tensors[i].data, sizes[i]) == 0;
        ok = ok && fsync(fd) == 0;
        int e = ok ? 0 : errno;
        if (close(fd) != 0 && ok) {
            ok = 0;
            e = errno;
        }
        if (!ok)
            st = fail(err, err_size, HA_ERR_IO, "%s: write failed: %s", tmp, strerror(e));
        else if (rename(tmp, path) != 0)
            st = fail(err, err_size, HA_ERR_IO, "%s: cannot rename the temporary file into place: %s", path,
                      strerror(errno));
        if (st != HA_OK)
            unlink(tmp);
    }
    free(header);
    free(sizes);
    return st;
}
