/*
 * plugin_template.c — a minimal, complete hashattn backend plugin: every member of the plugin ABI v1
 * table, written as plain scalar loops. Copy this one file to start a new backend (a GPU, another
 * instruction set, a different thread pool), then replace one stage at a time while the conformance
 * suite keeps comparing it against the core's reference (see README.md).
 *
 * Self-contained on purpose: it includes only the public plugin header, so it builds outside the
 * hashattn tree. (In-tree plugins share the budget rule and the fp16/bf16 conversions through
 * core/ha_shared.h instead of the small copies below.)
 *
 * Backend memory is host memory; nothing is threaded; accumulation is in double.
 */
#include "hashattn_plugin.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEMPLATE_NAME "template"
/* Above the built-in reference (1), below the optimized CPU plugin: chosen by probing only when
 * nothing better is installed. HASHATTN_BACKEND=template always picks it. */
#define TEMPLATE_PROBE_SCORE 5

/* ---- context and errors ---------------------------------------------------------------------- */

typedef struct template_ctx {
    ha_plugin_host host; /* the core's services (log), copied at init */
} template_ctx;

/* Per thread, not per context: threads sharing a runtime share its context, and the core reads the
 * message right after the failing call, on the same thread (hashattn_plugin.h, "Threads"). */
static _Thread_local char last_error[256];

/* Records a message for last_error() and returns status: the core appends it to its own message. */
static ha_status fail(template_ctx *ctx, ha_status status, const char *fmt, ...)
{
    (void)ctx;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

static int template_probe(void)
{
    return TEMPLATE_PROBE_SCORE; /* a GPU plugin returns 0 here when it finds no usable device */
}

static ha_status template_init(const ha_plugin_host *host, void **out)
{
    template_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return HA_ERR_OUT_OF_MEMORY;
    /* The host struct may grow: copy only what both sides know. */
    if (host) {
        size_t known = host->struct_size < sizeof ctx->host ? host->struct_size : sizeof ctx->host;
        memcpy(&ctx->host, host, known);
        ctx->host.struct_size = (uint32_t)known;
    }
    if (ctx->host.struct_size >= offsetof(ha_plugin_host, log) + sizeof ctx->host.log && ctx->host.log)
        ctx->host.log(HA_LOG_DEBUG, "template plugin: initialized");
    *out = ctx;
    return HA_OK;
}

static void template_shutdown(void *ctx)
{
    free(ctx);
}

static const char *template_describe(void *ctx)
{
    (void)ctx;
    return "plugin template: portable scalar loops, one thread";
}

static const char *template_last_error(void *ctx)
{
    (void)ctx; /* NULL ctx: asked after a failed init */
    return last_error;
}

/* ---- memory (host memory here; a GPU plugin wraps cudaMalloc, cudaMemcpy, …) ----------------- */

static void *template_mem_alloc(void *vctx, size_t bytes)
{
    /* aligned_alloc wants a multiple of the alignment; 0 bytes still gives a unique block. */
    if (bytes > SIZE_MAX - 63) {
        fail(vctx, HA_ERR_OUT_OF_MEMORY, "template mem_alloc: %zu bytes is too large", bytes);
        return NULL;
    }
    size_t rounded = bytes == 0 ? 64 : (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, rounded);
    if (!p)
        fail(vctx, HA_ERR_OUT_OF_MEMORY, "template mem_alloc: out of memory for %zu bytes", bytes);
    return p;
}

static void template_mem_free(void *ctx, void *ptr)
{
    (void)ctx;
    free(ptr);
}

static ha_status template_mem_copy(void *ctx, void *dst, const void *src, size_t bytes, ha_copy_kind kind)
{
    (void)ctx;
    (void)kind; /* every direction is host to host */
    if (bytes > 0)
        memmove(dst, src, bytes);
    return HA_OK;
}

static ha_status template_synchronize(void *ctx, void *stream)
{
    (void)ctx;
    (void)stream; /* every call has finished when it returns */
    return HA_OK;
}

/* ---- element conversion (copies of core/ha_shared.h, to stay self-contained) ----------------- */

static float f16_to_f32(uint16_t h)
{
    float sign = (h & 0x8000u) ? -1.0f : 1.0f;
    int exponent = (h >> 10) & 0x1f;
    int mantissa = h & 0x3ff;
    if (exponent == 0)
        return sign * ldexpf((float)mantissa, -24); /* zero or subnormal */
    if (exponent == 31)
        return mantissa ? NAN : sign * INFINITY;
    return sign * ldexpf((float)(1024 + mantissa), exponent - 25);
}

/* Round to nearest even (the default rounding mode of lrintf), overflow to infinity. */
static uint16_t f32_to_f16(float f)
{
    uint16_t sign = signbit(f) ? 0x8000u : 0u;
    float a = fabsf(f);
    if (isnan(f))
        return sign | 0x7e00u;
    if (a >= 65520.0f)
        return sign | 0x7c00u;
    if (a < 6.103515625e-05f) /* below the smallest normal: a multiple of 2^-24 (may round up to it) */
        return (uint16_t)(sign | (uint16_t)lrintf(a * 16777216.0f));
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    long mantissa = lrintf((2.0f * m - 1.0f) * 1024.0f); /* 1024 carries into the exponent */
    return (uint16_t)(sign | (uint16_t)(((long)(e + 14) << 10) + mantissa));
}

static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u); /* keep NaN a NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static size_t elem_size(ha_dtype dtype)
{
    return dtype == HA_F32 ? 4 : 2;
}

static double load(const void *row, ha_dtype dtype, int64_t i)
{
    switch (dtype) {
    case HA_F16: return f16_to_f32(((const uint16_t *)row)[i]);
    case HA_BF16: return bf16_to_f32(((const uint16_t *)row)[i]);
    default: return ((const float *)row)[i];
    }
}

static void store(void *row, ha_dtype dtype, int64_t i, float x)
{
    switch (dtype) {
    case HA_F16: ((uint16_t *)row)[i] = f32_to_f16(x); break;
    case HA_BF16: ((uint16_t *)row)[i] = f32_to_bf16(x); break;
    default: ((float *)row)[i] = x; break;
    }
}

/* Row (b, h, t) of r, contiguous or paged (ha_rows_offset is in the plugin header). */
static const void *row_ptr(const ha_rows *r, size_t elem, int64_t b, int64_t h, int64_t t)
{
    return (const char *)r->data + ha_rows_offset(r, b, h, t) * (int64_t)elem;
}

/* ---- scratch: owned by a plan, so steps allocate nothing once warm --------------------------- */

typedef struct template_scratch {
    double *values; /* attend: query and accumulator (2 * head_dim); encode: two MLP activations */
    size_t values_len;
    int64_t *histogram; /* match: one counter per possible score */
    size_t histogram_len;
} template_scratch;

/* Grows a buffer to at least `needed` elements; only the first step of a plan (or a wider MLP) pays. */
static int reserve(void **buf, size_t *len, size_t needed, size_t elem)
{
    if (*len >= needed)
        return 1;
    void *p = realloc(*buf, needed * elem);
    if (!p)
        return 0;
    *buf = p;
    *len = needed;
    return 1;
}

static void scratch_release(template_scratch *s)
{
    free(s->values);
    free(s->histogram);
    memset(s, 0, sizeof *s);
}

typedef struct template_plan {
    ha_plan_desc desc;
    template_scratch scratch;
} template_plan;

static ha_status template_plan_create(void *vctx, const ha_plan_desc *desc, void **out)
{
    template_ctx *ctx = vctx;
    template_plan *plan = calloc(1, sizeof *plan);
    if (!plan)
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template plan_create: out of memory");
    plan->desc = *desc;
    /* Everything attend and match will need is known now; the MLP widths are not (see encode). */
    int64_t group = desc->code_heads > 0 ? desc->q_heads / desc->code_heads : 1;
    template_scratch *s = &plan->scratch;
    if (!reserve((void **)&s->values, &s->values_len, 2 * (size_t)desc->head_dim, sizeof(double)) ||
        !reserve((void **)&s->histogram, &s->histogram_len, (size_t)(group * desc->bits + 1), sizeof(int64_t))) {
        scratch_release(s);
        free(plan);
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template plan_create: out of memory for scratch");
    }
    *out = plan;
    return HA_OK;
}

static void template_plan_destroy(void *ctx, void *vplan)
{
    (void)ctx;
    template_plan *plan = vplan;
    if (!plan)
        return;
    scratch_release(&plan->scratch);
    free(plan);
}

/* Lengths in backend memory cannot be checked by the core on a GPU: clamp them to the plan. */
static int64_t clamp_length(const template_plan *plan, int64_t n)
{
    if (n < 0)
        return 0;
    return plan && n > plan->desc.max_tokens ? plan->desc.max_tokens : n;
}

/* ---- mapping MLPs ----------------------------------------------------------------------------- */

/* The handle owns a copy of the weights (a GPU plugin would copy them to the device here). */
typedef struct template_mlp {
    ha_mlp_desc desc; /* w[i], b[i] point into storage */
    float *storage;
} template_mlp;

static ha_status template_mlp_upload(void *vctx, const ha_mlp_desc *desc, void **handle)
{
    template_ctx *ctx = vctx;
    size_t total = 0;
    for (int32_t i = 0; i < desc->depth; i++)
        total += (size_t)desc->heads * (size_t)desc->dims[i + 1] * ((size_t)desc->dims[i] + 1);
    template_mlp *mlp = malloc(sizeof *mlp);
    float *storage = malloc((total ? total : 1) * sizeof(float));
    if (!mlp || !storage) {
        free(mlp);
        free(storage);
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template mlp_upload: out of memory for %zu weights", total);
    }
    mlp->desc = *desc;
    mlp->storage = storage;
    float *next = storage;
    for (int32_t i = 0; i < desc->depth; i++) {
        size_t w_len = (size_t)desc->heads * (size_t)desc->dims[i + 1] * (size_t)desc->dims[i];
        size_t b_len = (size_t)desc->heads * (size_t)desc->dims[i + 1];
        memcpy(next, desc->w[i], w_len * sizeof(float));
        mlp->desc.w[i] = next;
        next += w_len;
        memcpy(next, desc->b[i], b_len * sizeof(float));
        mlp->desc.b[i] = next;
        next += b_len;
    }
    *handle = mlp;
    return HA_OK;
}

static void template_mlp_free(void *ctx, void *handle)
{
    (void)ctx;
    template_mlp *mlp = handle;
    if (!mlp)
        return;
    free(mlp->storage);
    free(mlp);
}

static double silu(double z)
{
    return z / (1.0 + exp(-z));
}

/* y = W_depth · silu(… silu(W_1 · x + b_1) …) + b_depth for MLP head m. cur holds x on entry; cur and
 * next hold the widest layer each; returns the buffer holding the output (dims[depth] values). */
static double *mlp_forward(const ha_mlp_desc *d, int32_t m, double *cur, double *next)
{
    for (int32_t layer = 0; layer < d->depth; layer++) {
        int64_t in_dim = d->dims[layer], out_dim = d->dims[layer + 1];
        const float *w = d->w[layer] + (int64_t)m * out_dim * in_dim;
        const float *bias = d->b[layer] + (int64_t)m * out_dim;
        for (int64_t o = 0; o < out_dim; o++) {
            double acc = 0.0;
            for (int64_t i = 0; i < in_dim; i++)
                acc += (double)w[o * in_dim + i] * cur[i];
            acc += (double)bias[o];
            next[o] = layer + 1 < d->depth ? silu(acc) : acc;
        }
        double *swap = cur;
        cur = next;
        next = swap;
    }
    return cur;
}

/* ---- encode ----------------------------------------------------------------------------------- */

static ha_status encode_with(template_ctx *ctx, template_scratch *s, const template_plan *plan,
                             const ha_encode_args *a)
{
    const ha_mlp_desc *d = &((const template_mlp *)a->mlp)->desc;
    int32_t widest = 1;
    for (int32_t i = 0; i <= d->depth; i++)
        widest = d->dims[i] > widest ? d->dims[i] : widest;
    if (!reserve((void **)&s->values, &s->values_len, 2 * (size_t)widest, sizeof(double)))
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template encode: out of memory for an MLP of width %d", widest);

    int32_t bits = d->dims[d->depth];
    int32_t heads_per_input = d->heads / a->in.heads;
    size_t in_elem = elem_size(a->in.dtype);
    double *cur = s->values, *next = s->values + widest;
    for (int32_t b = 0; b < a->batch; b++) {
        int64_t end = clamp_length(plan, a->end ? a->end[b] : a->count);
        int64_t start = end - a->count > 0 ? end - a->count : 0;
        for (int64_t t = start; t < end; t++) {
            for (int32_t m = 0; m < d->heads; m++) {
                const void *in = row_ptr(&a->in, in_elem, b, m / heads_per_input, t);
                for (int32_t i = 0; i < d->dims[0]; i++)
                    cur[i] = load(in, a->in.dtype, i);
                const double *y = mlp_forward(d, m, cur, next);
                /* out.data is writable for encode (the struct is shared with read-only inputs). */
                uint32_t *code = (uint32_t *)row_ptr(&a->out, sizeof(uint32_t), b, m, t);
                memset(code, 0, (size_t)a->out.dim * sizeof(uint32_t)); /* padding bits stay 0 */
                for (int32_t i = 0; i < bits; i++)
                    if (y[i] > 0.0)
                        code[i / 32] |= 1u << (i % 32);
            }
        }
    }
    return HA_OK;
}

/* Without plugin plans (plan_create NULL) the same code runs on scratch that lives for one call. */
static ha_status template_encode(void *ctx, void *vplan, const ha_encode_args *a)
{
    template_plan *plan = vplan;
    if (plan)
        return encode_with(ctx, &plan->scratch, plan, a);
    template_scratch once = {0};
    ha_status st = encode_with(ctx, &once, NULL, a);
    scratch_release(&once);
    return st;
}

/* ---- match ------------------------------------------------------------------------------------ */

static int32_t popcount32(uint32_t x)
{
    x = x - ((x >> 1) & 0x55555555u);
    x = (x & 0x33333333u) + ((x >> 2) & 0x33333333u);
    x = (x + (x >> 4)) & 0x0f0f0f0fu;
    return (int32_t)((x * 0x01010101u) >> 24);
}

/* Similarity of token j for selection head s of sequence b: over the group's query heads, the sum of
 * bits - popcount(q XOR k), counting only the first `bits` bits. Paper mode: a group of one. */
static int64_t similarity(const ha_match_args *a, int32_t b, int32_t s, int64_t j)
{
    int32_t group = a->q_heads / a->sel_heads;
    const uint32_t *key = row_ptr(&a->k_codes, sizeof(uint32_t), b, s, j);
    int64_t sum = 0;
    for (int32_t h = s * group; h < (s + 1) * group; h++) {
        const uint32_t *query = a->q_codes + ((int64_t)b * a->q_heads + h) * a->words;
        int32_t distance = 0;
        for (int32_t w = 0; w < a->words; w++) {
            int32_t valid = a->bits - 32 * w; /* bits of this word inside the code */
            uint32_t mask = valid >= 32 ? 0xffffffffu : valid <= 0 ? 0u : (1u << valid) - 1u;
            distance += popcount32((query[w] ^ key[w]) & mask);
        }
        sum += a->bits - distance;
    }
    return sum;
}

/* The selection budget of SPEC §1.3 (core/ha_shared.h has the same rule). */
static int64_t heavy_for_length(const ha_match_args *a, int64_t n)
{
    if (a->heavy_fraction > 0.0)
        return (int64_t)(a->heavy_fraction * (double)n);
    return a->heavy_count > 0 ? a->heavy_count : 0;
}

/* Kept tokens of one (b, s), ascending; returns their number. The heavy part is a histogram select:
 * find the lowest score still taken, take everything above it, and take the ties at that score
 * from the most recent token backwards (the normative tie rule). */
static int64_t select_one(const ha_match_args *a, int32_t b, int32_t s, int64_t n, int64_t *histogram,
                          int32_t *out)
{
    int64_t heavy = heavy_for_length(a, n);
    if (n <= (int64_t)a->sink + a->local + heavy) { /* the budget covers everything: dense */
        for (int64_t j = 0; j < n; j++)
            out[j] = (int32_t)j;
        return n;
    }
    int64_t local_start = n - a->local > a->sink ? n - a->local : a->sink;
    int64_t max_score = (int64_t)(a->q_heads / a->sel_heads) * a->bits;
    for (int64_t v = 0; v <= max_score; v++)
        histogram[v] = 0;
    for (int64_t j = a->sink; j < local_start; j++)
        histogram[similarity(a, b, s, j)]++;

    int64_t threshold = max_score, above = 0; /* `above` candidates score more than threshold */
    while (threshold > 0 && above + histogram[threshold] < heavy)
        above += histogram[threshold--];
    int64_t ties_taken = heavy - above;
    int64_t first_tie = local_start; /* the oldest token taken at the threshold score */
    for (int64_t j = local_start - 1, taken = 0; j >= a->sink && taken < ties_taken; j--) {
        if (similarity(a, b, s, j) == threshold) {
            taken++;
            first_tie = j;
        }
    }

    int64_t count = 0;
    for (int64_t j = 0; j < n; j++) {
        int keep = j < a->sink || j >= local_start;
        if (!keep) {
            int64_t score = similarity(a, b, s, j);
            keep = score > threshold || (score == threshold && j >= first_tie);
        }
        if (keep)
            out[count++] = (int32_t)j;
    }
    return count;
}

static ha_status match_with(template_ctx *ctx, template_scratch *s, const template_plan *plan,
                            const ha_match_args *a)
{
    size_t scores = (size_t)(a->q_heads / a->sel_heads) * (size_t)a->bits + 1;
    if (!reserve((void **)&s->histogram, &s->histogram_len, scores, sizeof(int64_t)))
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template match: out of memory for %zu score counters", scores);
    for (int32_t b = 0; b < a->batch; b++) {
        int64_t n = clamp_length(plan, a->seq_lens[b]);
        for (int32_t sel = 0; sel < a->sel_heads; sel++) {
            int64_t row = (int64_t)b * a->sel_heads + sel;
            a->counts[row] = (int32_t)select_one(a, b, sel, n, s->histogram, a->indices + row * a->index_stride);
        }
    }
    return HA_OK;
}

static ha_status template_match(void *ctx, void *vplan, const ha_match_args *a)
{
    template_plan *plan = vplan;
    if (plan)
        return match_with(ctx, &plan->scratch, plan, a);
    template_scratch once = {0};
    ha_status st = match_with(ctx, &once, NULL, a);
    scratch_release(&once);
    return st;
}

/* ---- attend ----------------------------------------------------------------------------------- */

/* One query head: online softmax (running max, rescaled sum and accumulator) in double, one pass
 * over K and V. q and acc hold head_dim values. Returns the log-sum-exp (-inf if nothing is kept). */
static double attend_one(const ha_attend_args *a, int32_t b, int32_t h, int64_t n, double *q, double *acc)
{
    const int32_t *kept = NULL;
    int64_t count = n;
    if (a->indices) {
        int64_t row = (int64_t)b * a->sel_heads + h / (a->q_heads / a->sel_heads);
        kept = a->indices + row * a->index_stride;
        count = a->counts[row] > 0 ? a->counts[row] : 0;
    }
    int32_t kv_head = h / (a->q_heads / a->kv_heads);
    const void *q_row = row_ptr(&a->q, elem_size(a->q.dtype), b, h, 0);
    for (int32_t i = 0; i < a->head_dim; i++) {
        q[i] = load(q_row, a->q.dtype, i);
        acc[i] = 0.0;
    }
    double max_logit = -INFINITY, sum = 0.0;
    for (int64_t i = 0; i < count; i++) {
        int64_t t = kept ? kept[i] : i;
        const void *k = row_ptr(&a->k, elem_size(a->k.dtype), b, kv_head, t);
        const void *v = row_ptr(&a->v, elem_size(a->v.dtype), b, kv_head, t);
        double dot = 0.0;
        for (int32_t i2 = 0; i2 < a->head_dim; i2++)
            dot += q[i2] * load(k, a->k.dtype, i2);
        double logit = (double)a->scale * dot;
        if (logit > max_logit) { /* rescale what was summed under the old maximum */
            double rescale = exp(max_logit - logit);
            sum *= rescale;
            for (int32_t d = 0; d < a->head_dim; d++)
                acc[d] *= rescale;
            max_logit = logit;
        }
        double weight = exp(logit - max_logit);
        sum += weight;
        for (int32_t d = 0; d < a->head_dim; d++)
            acc[d] += weight * load(v, a->v.dtype, d);
    }
    if (count == 0)
        return -INFINITY;
    for (int32_t d = 0; d < a->head_dim; d++)
        acc[d] /= sum;
    return max_logit + log(sum);
}

static ha_status attend_with(template_ctx *ctx, template_scratch *s, const template_plan *plan,
                             const ha_attend_args *a)
{
    if (!reserve((void **)&s->values, &s->values_len, 2 * (size_t)a->head_dim, sizeof(double)))
        return fail(ctx, HA_ERR_OUT_OF_MEMORY, "template attend: out of memory for head_dim %d", a->head_dim);
    double *q = s->values, *acc = s->values + a->head_dim;
    size_t out_elem = elem_size(a->out_dtype);
    for (int32_t b = 0; b < a->batch; b++) {
        int64_t n = clamp_length(plan, a->seq_lens[b]);
        for (int32_t h = 0; h < a->q_heads; h++) {
            double lse = attend_one(a, b, h, n, q, acc);
            char *out = (char *)a->out + ((int64_t)b * a->out_stride_seq + (int64_t)h * a->out_stride_head) *
                                             (int64_t)out_elem;
            for (int32_t d = 0; d < a->head_dim; d++)
                store(out, a->out_dtype, d, (float)acc[d]);
            if (a->lse)
                a->lse[(int64_t)b * a->q_heads + h] = (float)lse;
        }
    }
    return HA_OK;
}

static ha_status template_attend(void *ctx, void *vplan, const ha_attend_args *a)
{
    template_plan *plan = vplan;
    if (plan)
        return attend_with(ctx, &plan->scratch, plan, a);
    template_scratch once = {0};
    ha_status st = attend_with(ctx, &once, NULL, a);
    scratch_release(&once);
    return st;
}

/* ---- fused step ------------------------------------------------------------------------------- */

/* The optional fused entry. This one only chains the stages, which is exactly what the core does
 * when decode is NULL; a real backend fuses them (one kernel launch, codes kept in registers). */
static ha_status template_decode(void *ctx, void *plan, const ha_decode_args *a)
{
    ha_status st = HA_OK;
    if (a->key_encode.count > 0)
        st = template_encode(ctx, plan, &a->key_encode);
    if (st == HA_OK)
        st = template_encode(ctx, plan, &a->query_encode);
    if (st == HA_OK)
        st = template_match(ctx, plan, &a->match);
    if (st == HA_OK)
        st = template_attend(ctx, plan, &a->attend);
    return st;
}

/* ---- the table and the entry point ------------------------------------------------------------ */

static const ha_plugin_api template_api = {
    .abi_version = HA_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(ha_plugin_api),
    .name = TEMPLATE_NAME,
    .probe = template_probe,
    .init = template_init,
    .shutdown = template_shutdown,
    .describe = template_describe,
    .last_error = template_last_error,
    .host_memory = 1,
    .mem_alloc = template_mem_alloc,
    .mem_free = template_mem_free,
    .mem_copy = template_mem_copy,
    .synchronize = template_synchronize,
    .mlp_upload = template_mlp_upload,
    .mlp_free = template_mlp_free,
    .plan_create = template_plan_create,
    .plan_destroy = template_plan_destroy,
    .encode = template_encode,
    .match = template_match,
    .attend = template_attend,
    .decode = template_decode,
};

/* The one exported symbol (the module is built with hidden visibility; HA_API marks it default). */
HA_API const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version);

HA_API const ha_plugin_api *hashattn_plugin_get_api(uint32_t core_abi_version)
{
    /* A plugin that speaks several ABI versions returns the table matching the core's here. */
    return core_abi_version == HA_PLUGIN_ABI_VERSION ? &template_api : NULL;
}
