/*
 * weights_host.c — the mapping-weights format (see weights_host.h and SPEC §2): validation of a
 * parsed safetensors file into fp32 host weights, allocation of empty weights, and writing.
 *
 * Every integer in the metadata is parsed strictly (decimal digits only, range-checked, no sign, no
 * spaces); every tensor name must follow the scheme, every shape must chain (w_i's input width is
 * w_{i-1}'s output width, the first input is head_dim, the last output is bits).
 */
#include "weights_host.h"
#include "host_alloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error_buffer.h"
#include "ha_shared.h"

#define WH_FORMAT "hashattn"
#define WH_VERSION "1"
#define WH_ACTIVATION "silu"
#define WH_MAX_BITS 1024
#define WH_MAX_WIDTH 65536 /* head_dim and hidden widths */
#define WH_MAX_HEADS 65536
#define WH_MAX_LAYERS 4096

enum { SIDE_Q, SIDE_K, SIDES };
enum { KIND_W, KIND_B, KINDS };
static const char side_char[SIDES] = {'q', 'k'};
static const char kind_char[KINDS] = {'w', 'b'};

/* every error of this file is reported into the caller's (err, err_size) buffer */
#define fail ha_error_to_buffer

/** Parses s[0..len) as a decimal in [lo, hi]: digits only, at least one. Returns 1 on success. */
static int parse_decimal(const char *s, size_t len, int64_t lo, int64_t hi, int32_t *out)
{
    if (len == 0)
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (s[i] - '0');
        if (v > hi) /* hi ≤ INT32_MAX, so v never overflows */
            return 0;
    }
    if (v < lo)
        return 0;
    *out = (int32_t)v;
    return 1;
}

static ha_status meta_int(const ha_st_file *f, const char *key, int64_t lo, int64_t hi, int32_t *out, char *err,
                          size_t err_size)
{
    const char *v = ha_st_meta(f, key);
    if (!v)
        return fail(err, err_size, HA_ERR_FORMAT, "weights: metadata \"%s\" is missing", key);
    if (!parse_decimal(v, strlen(v), lo, hi, out))
        return fail(err, err_size, HA_ERR_FORMAT, "weights: metadata %s=\"%s\" is not an integer in [%lld, %lld]",
                    key, v, (long long)lo, (long long)hi);
    return HA_OK;
}

static ha_status meta_equals(const ha_st_file *f, const char *key, const char *expected, char *err, size_t err_size)
{
    const char *v = ha_st_meta(f, key);
    if (!v)
        return fail(err, err_size, HA_ERR_FORMAT, "weights: metadata \"%s\" is missing (not a hashattn weights file?)",
                    key);
    if (strcmp(v, expected) != 0)
        return fail(err, err_size, HA_ERR_FORMAT, "weights: metadata %s=\"%s\", expected \"%s\"", key, v, expected);
    return HA_OK;
}

/** "0,1,5" → dense[0] = dense[1] = dense[5] = 1. Empty string: none. Duplicates are an error. */
static ha_status parse_dense_list(const char *s, int32_t num_layers, uint8_t *dense, char *err, size_t err_size)
{
    if (*s == '\0')
        return HA_OK;
    for (const char *p = s;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        int32_t layer;
        if (!parse_decimal(p, len, 0, num_layers - 1, &layer))
            return fail(err, err_size, HA_ERR_FORMAT,
                        "weights: metadata dense_layers=\"%s\": item \"%.*s\" is not a layer index in [0, %d]", s,
                        (int)len, p, (int)num_layers - 1);
        if (dense[layer])
            return fail(err, err_size, HA_ERR_FORMAT, "weights: metadata dense_layers=\"%s\" lists layer %d twice", s,
                        (int)layer);
        dense[layer] = 1;
        if (!comma)
            return HA_OK;
        p = comma + 1;
    }
}

/** Where a name of the scheme layers.{l}.{q|k}.{w|b}{i} points; l and i in canonical decimal. */
typedef struct tensor_slot {
    int32_t layer, side, kind, index; /* index is i - 1 */
} tensor_slot;

/** Scans a canonical decimal (no leading zeros) at *p, advancing it. */
static int scan_index(const char **p, int64_t hi, int32_t *out)
{
    const char *s = *p;
    size_t len = 0;
    while (s[len] >= '0' && s[len] <= '9')
        len++;
    if (len == 0 || (len > 1 && s[0] == '0') || !parse_decimal(s, len, 0, hi, out))
        return 0;
    *p = s + len;
    return 1;
}

static int parse_tensor_name(const char *name, int32_t num_layers, int32_t depth, tensor_slot *slot)
{
    static const char prefix[] = "layers.";
    if (strncmp(name, prefix, sizeof(prefix) - 1) != 0)
        return 0;
    const char *p = name + sizeof(prefix) - 1;
    int32_t layer, i;
    if (!scan_index(&p, num_layers - 1, &layer) || *p++ != '.')
        return 0;
    if (*p != 'q' && *p != 'k')
        return 0;
    slot->side = *p++ == 'q' ? SIDE_Q : SIDE_K;
    if (*p++ != '.' || (*p != 'w' && *p != 'b'))
        return 0;
    slot->kind = *p++ == 'w' ? KIND_W : KIND_B;
    if (!scan_index(&p, depth, &i) || i < 1 || *p != '\0')
        return 0;
    slot->layer = layer;
    slot->index = i - 1;
    return 1;
}

static size_t slot_offset(int32_t depth, int32_t layer, int32_t side, int32_t kind, int32_t index)
{
    return (((size_t)layer * SIDES + (size_t)side) * KINDS + (size_t)kind) * (size_t)depth + (size_t)index;
}

static void format_shape(const ha_st_tensor *t, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int32_t d = 0; d < t->ndim && used < size; d++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
}

/** Checks one MLP side of layer l and fills desc's heads, depth and dims from the tensor shapes. */
static ha_status check_side(const ha_weights_host *w, const ha_st_tensor *const *slots, int32_t l, int32_t side,
                            ha_mlp_desc *desc, char *err, size_t err_size)
{
    desc->heads = side == SIDE_Q ? w->q_heads : w->k_heads;
    desc->depth = w->depth;
    desc->dims[0] = w->head_dim;
    for (int32_t i = 0; i < w->depth; i++) {
        const ha_st_tensor *tw = slots[slot_offset(w->depth, l, side, KIND_W, i)];
        const ha_st_tensor *tb = slots[slot_offset(w->depth, l, side, KIND_B, i)];
        int last = i == w->depth - 1;
        for (int k = 0; k < KINDS; k++) {
            const ha_st_tensor *t = k == KIND_W ? tw : tb;
            if (t->dtype != HA_ST_F32 && t->dtype != HA_ST_F16 && t->dtype != HA_ST_BF16)
                return fail(err, err_size, HA_ERR_FORMAT, "weights: tensor %s has dtype %s (F32, F16 or BF16 needed)",
                            t->name, ha_st_dtype_name(t->dtype));
        }
        /* The output width of a hidden layer comes from its weight; the last one must be bits. */
        int64_t out_dim = last ? w->bits : (tw->ndim == 3 ? tw->shape[1] : -1);
        char shape[128], out_text[16];
        format_shape(tw, shape, sizeof(shape));
        if (last)
            snprintf(out_text, sizeof(out_text), "%d", (int)w->bits);
        else
            snprintf(out_text, sizeof(out_text), "hidden");
        if (tw->ndim != 3 || tw->shape[0] != desc->heads || tw->shape[2] != desc->dims[i] ||
            (last && tw->shape[1] != w->bits))
            return fail(err, err_size, HA_ERR_FORMAT,
                        "weights: tensor %s has shape [%s]; expected [%d, %s, %d] (heads, out, in)", tw->name, shape,
                        (int)desc->heads, out_text, (int)desc->dims[i]);
        if (out_dim < 1 || out_dim > WH_MAX_WIDTH)
            return fail(err, err_size, HA_ERR_FORMAT, "weights: tensor %s has hidden width %lld (1..%d allowed)",
                        tw->name, (long long)out_dim, WH_MAX_WIDTH);
        desc->dims[i + 1] = (int32_t)out_dim;
        format_shape(tb, shape, sizeof(shape));
        if (tb->ndim != 2 || tb->shape[0] != desc->heads || tb->shape[1] != out_dim)
            return fail(err, err_size, HA_ERR_FORMAT, "weights: tensor %s has shape [%s]; expected [%d, %d]",
                        tb->name, shape, (int)desc->heads, (int)out_dim);
    }
    return HA_OK;
}

static int checked_mul(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return 0;
    *out = a * b;
    return 1;
}

static int checked_add(size_t a, size_t b, size_t *out)
{
    if (b > SIZE_MAX - a)
        return 0;
    *out = a + b;
    return 1;
}

/** Floats of w[i] and b[i] of an MLP. Returns 0 on overflow. */
static int layer_floats(const ha_mlp_desc *d, int32_t i, size_t *w_floats, size_t *b_floats)
{
    return checked_mul((size_t)d->heads, (size_t)d->dims[i + 1], b_floats) &&
           checked_mul(*b_floats, (size_t)d->dims[i], w_floats);
}

/** Allocates storage (zeroed) for every non-dense layer's MLPs, whose geometry is set, and points w/b into it. */
static ha_status assign_storage(ha_weights_host *w, char *err, size_t err_size)
{
    size_t total = 0;
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            for (int32_t i = 0; i < d->depth; i++) {
                size_t wf = 0, bf = 0;
                if (!layer_floats(d, i, &wf, &bf) || !checked_add(total, wf, &total) ||
                    !checked_add(total, bf, &total))
                    return fail(err, err_size, HA_ERR_OVERFLOW, "weights: total size overflows");
            }
        }
    }
    if (total > SIZE_MAX / sizeof(float))
        return fail(err, err_size, HA_ERR_OVERFLOW, "weights: total size overflows");
    if (total == 0)
        return HA_OK; /* every layer dense */
    if (!(w->storage = ha_calloc(total, sizeof(float))))
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights: cannot allocate %zu floats", total);
    float *next = w->storage;
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            for (int32_t i = 0; i < d->depth; i++) {
                size_t wf = 0, bf = 0;
                layer_floats(d, i, &wf, &bf);
                d->w[i] = next;
                next += wf;
                d->b[i] = next;
                next += bf;
            }
        }
    }
    return HA_OK;
}

static ha_status alloc_layer_arrays(ha_weights_host *w, char *err, size_t err_size)
{
    w->dense = ha_calloc((size_t)w->num_layers, 1);
    w->q = ha_calloc((size_t)w->num_layers, sizeof(ha_mlp_desc));
    w->k = ha_calloc((size_t)w->num_layers, sizeof(ha_mlp_desc));
    if (!w->dense || !w->q || !w->k)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights: out of memory");
    return HA_OK;
}

void ha_weights_host_free(ha_weights_host *w)
{
    if (!w)
        return;
    free(w->dense);
    free(w->q);
    free(w->k);
    free(w->storage);
    memset(w, 0, sizeof(*w));
}

static ha_status read_header(const ha_st_file *f, ha_weights_host *w, char *err, size_t err_size)
{
    ha_status st;
    int32_t hidden;
    if ((st = meta_equals(f, "format", WH_FORMAT, err, err_size)) != HA_OK ||
        (st = meta_equals(f, "version", WH_VERSION, err, err_size)) != HA_OK ||
        (st = meta_equals(f, "activation", WH_ACTIVATION, err, err_size)) != HA_OK ||
        (st = meta_int(f, "bits", 1, WH_MAX_BITS, &w->bits, err, err_size)) != HA_OK ||
        (st = meta_int(f, "mlp_depth", 1, HA_PLUGIN_MAX_MLP_DEPTH, &w->depth, err, err_size)) != HA_OK ||
        (st = meta_int(f, "head_dim", 1, WH_MAX_WIDTH, &w->head_dim, err, err_size)) != HA_OK ||
        (st = meta_int(f, "q_heads", 1, WH_MAX_HEADS, &w->q_heads, err, err_size)) != HA_OK ||
        (st = meta_int(f, "k_heads", 1, WH_MAX_HEADS, &w->k_heads, err, err_size)) != HA_OK ||
        (st = meta_int(f, "num_layers", 1, WH_MAX_LAYERS, &w->num_layers, err, err_size)) != HA_OK)
        return st;
    /* hidden is informative (the shapes say the widths) but must still be well formed. */
    if (ha_st_meta(f, "hidden") && (st = meta_int(f, "hidden", 1, WH_MAX_WIDTH, &hidden, err, err_size)) != HA_OK)
        return st;
    if (w->q_heads % w->k_heads != 0)
        return fail(err, err_size, HA_ERR_FORMAT, "weights: k_heads %d does not divide q_heads %d", (int)w->k_heads,
                    (int)w->q_heads);
    w->words = (w->bits + 31) / 32;
    return HA_OK;
}

/** Sorts every tensor into its slot; a name outside the scheme is an error. */
static ha_status collect_tensors(const ha_st_file *f, const ha_weights_host *w, const ha_st_tensor **slots,
                                 char *err, size_t err_size)
{
    for (size_t t = 0; t < f->n_tensors; t++) {
        const ha_st_tensor *tensor = &f->tensors[t];
        tensor_slot s;
        if (!parse_tensor_name(tensor->name, w->num_layers, w->depth, &s))
            return fail(err, err_size, HA_ERR_FORMAT,
                        "weights: unexpected tensor \"%s\" (expected layers.{0..%d}.{q|k}.{w|b}{1..%d})", tensor->name,
                        (int)w->num_layers - 1, (int)w->depth);
        const ha_st_tensor **slot = &slots[slot_offset(w->depth, s.layer, s.side, s.kind, s.index)];
        if (*slot) /* unreachable with canonical names and unique keys; kept as a guard */
            return fail(err, err_size, HA_ERR_FORMAT, "weights: tensor \"%s\" appears twice", tensor->name);
        *slot = tensor;
    }
    return HA_OK;
}

/** Decides whether layer l is dense, and checks a sparse layer's tensors. */
static ha_status check_layer(ha_weights_host *w, const ha_st_tensor *const *slots, int32_t l, char *err,
                             size_t err_size)
{
    if (w->dense[l])
        return HA_OK; /* listed in dense_layers: its tensors, if any, are ignored */
    size_t first = slot_offset(w->depth, l, 0, 0, 0), count = (size_t)SIDES * KINDS * (size_t)w->depth;
    size_t present = 0;
    for (size_t i = 0; i < count; i++)
        present += slots[first + i] != NULL;
    if (present == 0) {
        w->dense[l] = 1;
        return HA_OK;
    }
    for (int side = 0; side < SIDES; side++)
        for (int kind = 0; kind < KINDS; kind++)
            for (int32_t i = 0; i < w->depth; i++)
                if (!slots[slot_offset(w->depth, l, side, kind, i)])
                    return fail(err, err_size, HA_ERR_FORMAT,
                                "weights: tensor layers.%d.%c.%c%d is missing (layer %d has some of its tensors; a "
                                "layer has all of them or none)",
                                (int)l, side_char[side], kind_char[kind], (int)i + 1, (int)l);
    ha_status st = check_side(w, slots, l, SIDE_Q, &w->q[l], err, err_size);
    if (st == HA_OK)
        st = check_side(w, slots, l, SIDE_K, &w->k[l], err, err_size);
    return st;
}

static ha_status load_values(const ha_st_file *f, ha_weights_host *w, const ha_st_tensor *const *slots)
{
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            for (int32_t i = 0; i < w->depth; i++) {
                ha_status st = ha_st_to_f32(f, slots[slot_offset(w->depth, l, side, KIND_W, i)], (float *)d->w[i]);
                if (st == HA_OK)
                    st = ha_st_to_f32(f, slots[slot_offset(w->depth, l, side, KIND_B, i)], (float *)d->b[i]);
                if (st != HA_OK)
                    return st;
            }
        }
    }
    return HA_OK;
}

ha_status ha_weights_host_from_st(const ha_st_file *f, ha_weights_host *out, char *err, size_t err_size)
{
    if (!out)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "weights: out is NULL");
    memset(out, 0, sizeof(*out));
    if (!f)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "weights: file is NULL");
    ha_status st = read_header(f, out, err, err_size);
    if (st == HA_OK)
        st = alloc_layer_arrays(out, err, err_size);
    const char *dense_list = ha_st_meta(f, "dense_layers");
    if (st == HA_OK && dense_list)
        st = parse_dense_list(dense_list, out->num_layers, out->dense, err, err_size);
    const ha_st_tensor **slots = NULL;
    if (st == HA_OK) {
        slots = ha_calloc((size_t)out->num_layers * SIDES * KINDS * (size_t)out->depth, sizeof(*slots));
        if (!slots)
            st = fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights: out of memory");
    }
    if (st == HA_OK)
        st = collect_tensors(f, out, slots, err, err_size);
    for (int32_t l = 0; st == HA_OK && l < out->num_layers; l++)
        st = check_layer(out, slots, l, err, err_size);
    if (st == HA_OK)
        st = assign_storage(out, err, err_size);
    if (st == HA_OK && (st = load_values(f, out, slots)) != HA_OK)
        fail(err, err_size, st, "weights: cannot convert tensor data");
    free(slots);
    if (st != HA_OK)
        ha_weights_host_free(out);
    return st;
}

ha_status ha_weights_host_alloc(ha_weights_host *out, int32_t num_layers, int32_t bits, int32_t depth,
                                int32_t hidden, int32_t head_dim, int32_t q_heads, int32_t k_heads,
                                const uint8_t *dense)
{
    if (!out)
        return HA_ERR_INVALID_ARGUMENT;
    memset(out, 0, sizeof(*out));
    if (num_layers < 1 || num_layers > WH_MAX_LAYERS || bits < 1 || bits > WH_MAX_BITS || depth < 1 ||
        depth > HA_PLUGIN_MAX_MLP_DEPTH || (depth > 1 && (hidden < 1 || hidden > WH_MAX_WIDTH)) || head_dim < 1 ||
        head_dim > WH_MAX_WIDTH || q_heads < 1 || q_heads > WH_MAX_HEADS || k_heads < 1 || k_heads > WH_MAX_HEADS ||
        q_heads % k_heads != 0)
        return HA_ERR_INVALID_ARGUMENT;
    out->num_layers = num_layers;
    out->bits = bits;
    out->words = (bits + 31) / 32;
    out->depth = depth;
    out->head_dim = head_dim;
    out->q_heads = q_heads;
    out->k_heads = k_heads;
    ha_status st = alloc_layer_arrays(out, NULL, 0);
    for (int32_t l = 0; st == HA_OK && l < num_layers; l++) {
        out->dense[l] = dense && dense[l] ? 1 : 0;
        for (int side = 0; side < SIDES && !out->dense[l]; side++) {
            ha_mlp_desc *d = side == SIDE_Q ? &out->q[l] : &out->k[l];
            d->heads = side == SIDE_Q ? q_heads : k_heads;
            d->depth = depth;
            d->dims[0] = head_dim;
            for (int32_t i = 1; i < depth; i++)
                d->dims[i] = hidden;
            d->dims[depth] = bits;
        }
    }
    if (st == HA_OK)
        st = assign_storage(out, NULL, 0);
    if (st != HA_OK)
        ha_weights_host_free(out);
    return st;
}

/* ---- writing ------------------------------------------------------------------------------ */

/** Checks that every sparse layer's descriptors agree with the header fields. */
static ha_status check_for_write(const ha_weights_host *w, char *err, size_t err_size)
{
    if (w->num_layers < 1 || w->num_layers > WH_MAX_LAYERS || w->bits < 1 || w->bits > WH_MAX_BITS ||
        w->depth < 1 || w->depth > HA_PLUGIN_MAX_MLP_DEPTH || w->head_dim < 1 || w->head_dim > WH_MAX_WIDTH ||
        w->q_heads < 1 || w->k_heads < 1 || w->q_heads % w->k_heads != 0 || !w->dense || !w->q || !w->k)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "weights write: invalid geometry");
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            int ok = d->heads == (side == SIDE_Q ? w->q_heads : w->k_heads) && d->depth == w->depth &&
                     d->dims[0] == w->head_dim && d->dims[w->depth] == w->bits;
            for (int32_t i = 0; ok && i < w->depth; i++)
                ok = d->w[i] && d->b[i] && d->dims[i + 1] >= 1 && d->dims[i + 1] <= WH_MAX_WIDTH;
            if (!ok)
                return fail(err, err_size, HA_ERR_INVALID_ARGUMENT,
                            "weights write: layer %d %c MLP disagrees with the header fields", (int)l, side_char[side]);
        }
    }
    return HA_OK;
}

/** The common hidden width of every sparse MLP, or 0 when there is none or they differ. */
static int32_t common_hidden(const ha_weights_host *w)
{
    int32_t hidden = 0;
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            for (int32_t i = 1; i < w->depth; i++) {
                if (hidden && d->dims[i] != hidden)
                    return 0;
                hidden = d->dims[i];
            }
        }
    }
    return hidden;
}

enum { NAME_CAP = 48, META_CAP = 12 };

typedef struct meta_list {
    const char *keys[META_CAP];
    const char *values[META_CAP];
    char numbers[META_CAP][16];
    size_t n;
} meta_list;

static void meta_add(meta_list *m, const char *key, const char *value)
{
    m->keys[m->n] = key;
    m->values[m->n++] = value;
}

static void meta_add_int(meta_list *m, const char *key, int32_t value)
{
    snprintf(m->numbers[m->n], sizeof(m->numbers[m->n]), "%d", (int)value);
    meta_add(m, key, m->numbers[m->n]);
}

typedef struct write_plan {
    ha_st_out_tensor *tensors;
    char (*names)[NAME_CAP];
    int64_t (*shapes)[3];
    void *converted; /* fp16/bf16 copies of every tensor, back to back */
    size_t n;
} write_plan;

static void write_plan_free(write_plan *p)
{
    free(p->tensors);
    free(p->names);
    free(p->shapes);
    free(p->converted);
}

/** Lists every tensor of w (layer, q then k, w1 b1 w2 b2 …), converted to dtype when not F32. */
static ha_status plan_tensors(const ha_weights_host *w, ha_st_dtype dtype, write_plan *p, char *err, size_t err_size)
{
    size_t sparse = 0;
    for (int32_t l = 0; l < w->num_layers; l++)
        sparse += !w->dense[l];
    size_t n = sparse * SIDES * KINDS * (size_t)w->depth, total = 0;
    memset(p, 0, sizeof(*p));
    if (n == 0)
        return HA_OK;
    p->tensors = ha_calloc(n, sizeof(*p->tensors));
    p->names = ha_calloc(n, sizeof(*p->names));
    p->shapes = ha_calloc(n, sizeof(*p->shapes));
    if (!p->tensors || !p->names || !p->shapes)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights write: out of memory");
    for (int32_t l = 0; l < w->num_layers; l++) {
        for (int side = 0; side < SIDES && !w->dense[l]; side++) {
            const ha_mlp_desc *d = side == SIDE_Q ? &w->q[l] : &w->k[l];
            for (int32_t i = 0; i < w->depth; i++) {
                for (int kind = 0; kind < KINDS; kind++) {
                    size_t t = p->n++;
                    snprintf(p->names[t], NAME_CAP, "layers.%d.%c.%c%d", (int)l, side_char[side], kind_char[kind],
                             (int)i + 1);
                    p->shapes[t][0] = d->heads;
                    p->shapes[t][1] = d->dims[i + 1];
                    p->shapes[t][2] = d->dims[i];
                    p->tensors[t] = (ha_st_out_tensor){.name = p->names[t], .dtype = HA_ST_F32,
                                                       .ndim = kind == KIND_W ? 3 : 2, .shape = p->shapes[t],
                                                       .data = kind == KIND_W ? d->w[i] : d->b[i]};
                    size_t wf = 0, bf = 0;
                    if (!layer_floats(d, i, &wf, &bf) || !checked_add(total, kind == KIND_W ? wf : bf, &total))
                        return fail(err, err_size, HA_ERR_OVERFLOW, "weights write: size overflows");
                }
            }
        }
    }
    if (dtype == HA_ST_F32)
        return HA_OK;
    uint16_t *half = total ? ha_malloc(total * sizeof(uint16_t)) : NULL;
    if (total && !half)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights write: out of memory");
    p->converted = half;
    for (size_t t = 0; t < p->n; t++) {
        ha_st_out_tensor *o = &p->tensors[t];
        size_t count = (size_t)o->shape[0] * (size_t)o->shape[1] * (o->ndim == 3 ? (size_t)o->shape[2] : 1);
        const float *src = o->data;
        for (size_t j = 0; j < count; j++)
            half[j] = dtype == HA_ST_F16 ? ha_f32_to_f16(src[j]) : ha_f32_to_bf16(src[j]);
        o->dtype = dtype;
        o->data = half;
        half += count;
    }
    return HA_OK;
}

ha_status ha_weights_host_write(const ha_weights_host *w, const char *path, ha_st_dtype dtype, char *err,
                                size_t err_size)
{
    if (!w || !path)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "weights write: NULL argument");
    if (dtype != HA_ST_F32 && dtype != HA_ST_F16 && dtype != HA_ST_BF16)
        return fail(err, err_size, HA_ERR_INVALID_ARGUMENT, "weights write: dtype %s (F32, F16 or BF16 allowed)",
                    ha_st_dtype_name(dtype));
    ha_status st = check_for_write(w, err, err_size);
    if (st != HA_OK)
        return st;

    /* dense_layers: up to WH_MAX_LAYERS indices of at most 4 digits and a comma each. */
    char *dense_list = ha_calloc((size_t)w->num_layers * 6 + 1, 1);
    if (!dense_list)
        return fail(err, err_size, HA_ERR_OUT_OF_MEMORY, "weights write: out of memory");
    size_t used = 0;
    for (int32_t l = 0; l < w->num_layers; l++)
        if (w->dense[l])
            used += (size_t)sprintf(dense_list + used, "%s%d", used ? "," : "", (int)l);

    meta_list meta = {.n = 0};
    meta_add(&meta, "format", WH_FORMAT);
    meta_add(&meta, "version", WH_VERSION);
    meta_add(&meta, "activation", WH_ACTIVATION);
    meta_add_int(&meta, "bits", w->bits);
    meta_add_int(&meta, "mlp_depth", w->depth);
    meta_add_int(&meta, "head_dim", w->head_dim);
    meta_add_int(&meta, "q_heads", w->q_heads);
    meta_add_int(&meta, "k_heads", w->k_heads);
    meta_add_int(&meta, "num_layers", w->num_layers);
    int32_t hidden = common_hidden(w);
    if (hidden > 0)
        meta_add_int(&meta, "hidden", hidden);
    if (used > 0)
        meta_add(&meta, "dense_layers", dense_list);

    write_plan plan;
    st = plan_tensors(w, dtype, &plan, err, err_size);
    if (st == HA_OK)
        st = ha_st_write(path, plan.tensors, plan.n, meta.keys, meta.values, meta.n, err, err_size);
    write_plan_free(&plan);
    free(dense_list);
    return st;
}
