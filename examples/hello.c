/*
 * hello.c — the smallest complete host of libhashattn, through the public API only: one decode step
 * of one layer for a batch of sequences with HashAttention (sparse), next to plain dense attention.
 *
 *   hello [--backend NAME|PATH] [--weights FILE] [--batch B] [--tokens N] [--dtype f32|bf16]
 *         [--layer L] [--paged]
 *
 * It plays the inference engine: random post-RoPE Q, K, V stand in for a model's; "prefill" encodes
 * each prompt's keys into the key-code cache; the decode step appends one token per sequence (the
 * step encodes its key itself), selects the kept tokens and attends to them. Every buffer the
 * runtime reads lives in backend memory (ha_mem_alloc + ha_mem_copy), so the same code drives a GPU
 * backend. Exit status 0 on success, 1 on any error (the message names the failed call).
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hashattn.h"

#ifndef HELLO_DEFAULT_WEIGHTS /* set by examples/meson.build to the weights it generates */
#define HELLO_DEFAULT_WEIGHTS "hello_weights.safetensors"
#endif

#define PAGE_SIZE 16
#define TIMING_REPS 20

/* ---- errors ----------------------------------------------------------------------------------- */

static void check(ha_status status, const char *call)
{
    if (status == HA_OK)
        return;
    fprintf(stderr, "hello: %s failed: %s: %s\n", call, ha_status_string(status), ha_last_error());
    exit(1);
}
#define CHECK(call) check((call), #call)

static void die(const char *message)
{
    fprintf(stderr, "hello: %s\n", message);
    exit(1);
}

/* ---- options ---------------------------------------------------------------------------------- */

typedef struct options {
    const char *backend; /* NULL: $HASHATTN_BACKEND or the best probe */
    const char *weights;
    int32_t batch;
    int64_t tokens; /* length of the longest sequence, the new token included */
    ha_dtype dtype;
    int32_t layer; /* -1: the first sparse layer */
    int paged;
} options;

static void usage(FILE *to)
{
    fprintf(to, "usage: hello [--backend NAME|PATH] [--weights FILE] [--batch B] [--tokens N]\n"
                "             [--dtype f32|bf16] [--layer L] [--paged]\n"
                "  --backend  plugin name (cpu_avx512, reference, ...) or path to a plugin .so\n"
                "             (default: $HASHATTN_BACKEND, else the best plugin found)\n"
                "  --weights  mapping-function weights, safetensors (default: %s)\n"
                "  --batch    sequences, of unequal lengths (default 2)\n"
                "  --tokens   tokens of the longest sequence (default 4096)\n"
                "  --dtype    storage type of Q, K, V (default f32)\n"
                "  --layer    layer to run (default: the first sparse one)\n"
                "  --paged    paged KV cache (pages of %d tokens, shuffled block table)\n",
            HELLO_DEFAULT_WEIGHTS, PAGE_SIZE);
}

static long long parse_int(const char *flag, const char *text, long long min, long long max)
{
    char *end;
    long long v = strtoll(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "hello: %s wants an integer in [%lld, %lld], got '%s'\n", flag, min, max, text);
        exit(1);
    }
    return v;
}

static options parse_options(int argc, char **argv)
{
    options o = {NULL, HELLO_DEFAULT_WEIGHTS, 2, 4096, HA_F32, -1, 0};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(flag, "--paged")) {
            o.paged = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage(stderr);
            exit(1);
        }
        const char *value = argv[++i];
        if (!strcmp(flag, "--backend")) {
            o.backend = value;
        } else if (!strcmp(flag, "--weights")) {
            o.weights = value;
        } else if (!strcmp(flag, "--batch")) {
            o.batch = (int32_t)parse_int(flag, value, 1, 4096);
        } else if (!strcmp(flag, "--tokens")) {
            o.tokens = parse_int(flag, value, 1, INT32_MAX);
        } else if (!strcmp(flag, "--layer")) {
            o.layer = (int32_t)parse_int(flag, value, 0, INT32_MAX);
        } else if (!strcmp(flag, "--dtype")) {
            if (!strcmp(value, "f32"))
                o.dtype = HA_F32;
            else if (!strcmp(value, "bf16"))
                o.dtype = HA_BF16;
            else
                die("--dtype wants f32 or bf16");
        } else {
            usage(stderr);
            exit(1);
        }
    }
    return o;
}

/* ---- random data ------------------------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static double uniform01(void) /* splitmix64, in (0, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

static float gaussian(void) /* Box-Muller */
{
    return (float)(sqrt(-2.0 * log(uniform01())) * cos(6.283185307179586 * uniform01()));
}

/* bf16 is the top half of an fp32, rounded to nearest even (the values here are finite). */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ---- backend memory --------------------------------------------------------------------------- */

static void *backend_alloc(ha_runtime *rt, size_t bytes)
{
    void *p;
    CHECK(ha_mem_alloc(rt, bytes, &p));
    return p;
}

static void *upload(ha_runtime *rt, const void *host, size_t bytes)
{
    void *p = backend_alloc(rt, bytes);
    CHECK(ha_mem_copy(rt, p, host, bytes, HA_COPY_HOST_TO_BACKEND));
    return p;
}

/* count random N(0,1) values stored as dtype, in backend memory. */
static void *upload_random(ha_runtime *rt, size_t count, ha_dtype dtype)
{
    size_t bytes = count * ha_dtype_size(dtype);
    void *host = malloc(bytes);
    if (!host)
        die("out of host memory");
    for (size_t i = 0; i < count; i++) {
        if (dtype == HA_BF16)
            ((uint16_t *)host)[i] = to_bf16(gaussian());
        else
            ((float *)host)[i] = gaussian();
    }
    void *p = upload(rt, host, bytes);
    free(host);
    return p;
}

/* ---- the KV cache the host would own ---------------------------------------------------------- */

/* Contiguous [B, Hkv, N, d], or a pool of pages [pages, PAGE_SIZE, Hkv, d] handed out to the
 * sequences in shuffled order through a block table (as vLLM's allocator would). */
static ha_kv make_kv(ha_runtime *rt, const options *o, const int32_t *lens, int32_t kv_heads, int32_t head_dim,
                     void **block_table_out)
{
    ha_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.dtype = o->dtype;
    kv.stride_head = head_dim;
    size_t rows;
    *block_table_out = NULL;
    if (!o->paged) {
        kv.stride_token = head_dim;
        kv.stride_head = o->tokens * head_dim;
        kv.stride_seq = kv_heads * o->tokens * head_dim;
        kv.capacity = o->tokens;
        rows = (size_t)o->batch * (size_t)o->tokens;
    } else {
        int32_t table_stride = (int32_t)((o->tokens + PAGE_SIZE - 1) / PAGE_SIZE);
        int64_t pages = 0;
        for (int32_t b = 0; b < o->batch; b++)
            pages += (lens[b] + PAGE_SIZE - 1) / PAGE_SIZE;
        int32_t *order = malloc((size_t)pages * sizeof *order);
        int32_t *table = calloc((size_t)o->batch * (size_t)table_stride, sizeof *table);
        if (!order || !table)
            die("out of host memory");
        for (int64_t p = 0; p < pages; p++)
            order[p] = (int32_t)p;
        for (int64_t p = pages - 1; p > 0; p--) { /* Fisher-Yates */
            int64_t q = (int64_t)(uniform01() * (double)(p + 1));
            int32_t t = order[p];
            order[p] = order[q];
            order[q] = t;
        }
        int64_t next = 0;
        for (int32_t b = 0; b < o->batch; b++)
            for (int64_t i = 0; i < (lens[b] + PAGE_SIZE - 1) / PAGE_SIZE; i++)
                table[(int64_t)b * table_stride + i] = order[next++];
        *block_table_out = upload(rt, table, (size_t)o->batch * (size_t)table_stride * sizeof *table);
        free(order);
        free(table);
        kv.stride_token = (int64_t)kv_heads * head_dim;
        kv.stride_seq = PAGE_SIZE * kv.stride_token;
        kv.page_size = PAGE_SIZE;
        kv.block_table_stride = table_stride;
        kv.block_table = *block_table_out;
        kv.capacity = pages;
        rows = (size_t)pages * PAGE_SIZE;
    }
    size_t elements = rows * (size_t)kv_heads * (size_t)head_dim;
    kv.k = upload_random(rt, elements, o->dtype);
    kv.v = upload_random(rt, elements, o->dtype);
    return kv;
}

/* ---- measuring -------------------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ‖sparse − dense‖ / ‖dense‖ over the elements [first, first + count) of two float arrays. */
static double relative_error(const float *sparse, const float *dense, size_t first, size_t count)
{
    double diff = 0.0, ref = 0.0;
    for (size_t i = first; i < first + count; i++) {
        double e = (double)sparse[i] - (double)dense[i];
        diff += e * e;
        ref += (double)dense[i] * (double)dense[i];
    }
    return ref > 0.0 ? sqrt(diff / ref) : sqrt(diff);
}

/* ---- the program ------------------------------------------------------------------------------ */

static const char *mode_name(ha_mode mode)
{
    return mode == HA_MODE_GROUP ? "group mode (one key code per KV head)" : "paper mode (one key code per query head)";
}

int main(int argc, char **argv)
{
    options o = parse_options(argc, argv);

    ha_runtime_options ro = {sizeof ro, o.backend, 0};
    ha_runtime *rt;
    CHECK(ha_runtime_open(&ro, &rt));
    printf("hashattn %s, backend %s: %s\n", ha_version_string(), ha_runtime_backend_name(rt),
           ha_runtime_backend_description(rt));

    ha_weights *w;
    CHECK(ha_weights_load(rt, o.weights, &w));
    ha_weights_info info;
    CHECK(ha_weights_get_info(w, &info));
    int32_t dense_layers = 0, first_sparse = -1;
    for (int32_t l = 0; l < info.num_layers; l++) {
        if (ha_weights_layer_is_dense(w, l))
            dense_layers++;
        else if (first_sparse < 0)
            first_sparse = l;
    }
    printf("weights  %s\n         %s, %d-bit codes (%d word%s), MLP depth %d, q_heads %d, k_heads %d, head_dim %d,\n"
           "         %d layer%s (%d dense)\n",
           o.weights, mode_name(info.mode), info.bits, info.words, info.words == 1 ? "" : "s", info.mlp_depth,
           info.q_heads, info.k_heads, info.head_dim, info.num_layers, info.num_layers == 1 ? "" : "s", dense_layers);

    int32_t layer = o.layer >= 0 ? o.layer : first_sparse >= 0 ? first_sparse : 0;
    int layer_is_dense = ha_weights_layer_is_dense(w, layer);
    if (layer_is_dense < 0) {
        fprintf(stderr, "hello: --layer %d is out of range: the weights have %d layers\n", layer, info.num_layers);
        return 1;
    }

    /* The model's shape follows the weights: Hq and d from them; Hkv = the key-code heads in group
     * mode, else a GQA group of 4 (8 query heads share 2 KV heads for the default weights). */
    int32_t q_heads = info.q_heads, head_dim = info.head_dim;
    int32_t kv_heads = info.mode == HA_MODE_GROUP ? info.k_heads : q_heads % 4 == 0 ? q_heads / 4 : q_heads;
    size_t q_elems = (size_t)o.batch * (size_t)q_heads * (size_t)head_dim;

    /* Unequal lengths, from N down to about 3N/4 (not a multiple of the page size). */
    int32_t *lens = malloc((size_t)o.batch * sizeof *lens);
    int32_t *prompt_lens = malloc((size_t)o.batch * sizeof *prompt_lens);
    if (!lens || !prompt_lens)
        die("out of host memory");
    int64_t spread = o.tokens / 4 + 3;
    int32_t longest_prompt = 0;
    for (int32_t b = 0; b < o.batch; b++) {
        int64_t n = o.batch == 1 ? o.tokens : o.tokens - spread * b / (o.batch - 1);
        lens[b] = (int32_t)(n < 1 ? 1 : n);
        prompt_lens[b] = lens[b] - 1; /* the decode step appends the last token */
        if (prompt_lens[b] > longest_prompt)
            longest_prompt = prompt_lens[b];
    }

    ha_plan_config pc;
    ha_plan_config_init(&pc, o.batch, o.tokens, q_heads, kv_heads, head_dim);
    pc.sink = 128;
    pc.local = 128;
    pc.heavy_fraction = 1.0 / 32.0;
    ha_plan *plan;
    CHECK(ha_plan_create(rt, w, &pc, &plan));

    void *block_table;
    ha_kv kv = make_kv(rt, &o, lens, kv_heads, head_dim, &block_table);
    ha_cache_config cc = {sizeof cc, kv.page_size, o.batch, o.tokens, o.paged ? kv.capacity : 0};
    ha_cache *cache;
    CHECK(ha_cache_create(rt, w, &cc, &cache));

    printf("shape    batch %d, Hq %d, Hkv %d, d %d, %s, %s KV cache; layer %d (%s)\n", o.batch, q_heads, kv_heads,
           head_dim, o.dtype == HA_BF16 ? "bf16" : "f32", o.paged ? "paged" : "contiguous", layer,
           layer_is_dense ? "dense: no mapping functions, attends to every token" : "sparse");
    printf("budget   sink %d + local %d + heavy n/32; %d selection heads; key-code cache %.1f KiB\n", pc.sink,
           pc.local, ha_plan_selection_heads(plan), (double)ha_cache_bytes(cache) / 1024.0);

    int32_t *d_lens = upload(rt, lens, (size_t)o.batch * sizeof *lens);
    int32_t *d_prompt_lens = upload(rt, prompt_lens, (size_t)o.batch * sizeof *prompt_lens);
    ha_tensor3 q = {upload_random(rt, q_elems, o.dtype), o.dtype, (int64_t)q_heads * head_dim, head_dim};
    ha_tensor3 sparse_out = {backend_alloc(rt, q_elems * sizeof(float)), HA_F32, (int64_t)q_heads * head_dim, head_dim};
    ha_tensor3 dense_out = {backend_alloc(rt, q_elems * sizeof(float)), HA_F32, (int64_t)q_heads * head_dim, head_dim};

    /* Prefill: the prompt's keys enter the key-code cache once. */
    CHECK(ha_cache_encode_keys(plan, cache, layer, &kv, o.batch, d_prompt_lens, longest_prompt, NULL));

    /* Decode: the new token's key is encoded by the step (new_tokens = 1). Repeating the step, as the
     * timing loop does, re-encodes that same key: same codes, same result. */
    ha_step step;
    memset(&step, 0, sizeof step);
    step.batch = o.batch;
    step.seq_lens = d_lens;
    step.new_tokens = 1;
    step.q = q;
    step.kv = kv;
    step.out = sparse_out;
    step.lse = NULL;
    step.stream = NULL;

    double step_ms[TIMING_REPS], dense_ms[TIMING_REPS];
    for (int r = -1; r < TIMING_REPS; r++) { /* r = -1: warm-up */
        double t0 = now_ms();
        CHECK(ha_decode_step(plan, cache, layer, &step));
        CHECK(ha_synchronize(rt, NULL));
        double t1 = now_ms();
        CHECK(ha_dense_attend(plan, &q, &kv, o.batch, d_lens, &dense_out, NULL, NULL));
        CHECK(ha_synchronize(rt, NULL));
        double t2 = now_ms();
        if (r >= 0) {
            step_ms[r] = t1 - t0;
            dense_ms[r] = t2 - t1;
        }
    }

    float *sparse_host = malloc(q_elems * sizeof(float));
    float *dense_host = malloc(q_elems * sizeof(float));
    if (!sparse_host || !dense_host)
        die("out of host memory");
    CHECK(ha_mem_copy(rt, sparse_host, sparse_out.data, q_elems * sizeof(float), HA_COPY_BACKEND_TO_HOST));
    CHECK(ha_mem_copy(rt, dense_host, dense_out.data, q_elems * sizeof(float), HA_COPY_BACKEND_TO_HOST));

    printf("\n  seq   tokens     kept   kept/n   rel. error of sparse vs dense output\n");
    size_t per_seq = (size_t)q_heads * (size_t)head_dim;
    for (int32_t b = 0; b < o.batch; b++) {
        int64_t kept = layer_is_dense ? lens[b] : ha_plan_kept_for_length(plan, lens[b]);
        printf("  %3d %8d %8lld   %5.1f%%   %.4f\n", b, lens[b], (long long)kept, 100.0 * (double)kept / lens[b],
               relative_error(sparse_host, dense_host, (size_t)b * per_seq, per_seq));
    }
    printf("  all                               %.4f\n", relative_error(sparse_host, dense_host, 0, q_elems));
    if (!layer_is_dense && ha_plan_kept_for_length(plan, lens[0]) < lens[0])
        printf("  (expected to be large here: random K/V spread attention almost evenly, so the dense output is\n"
               "   an average of thousands of random vectors, near zero, and any small selection misses most of\n"
               "   it. Trained weights on a real model's attention, which is concentrated on few tokens, are\n"
               "   what make the error small.%s)\n",
               strcmp(o.weights, HELLO_DEFAULT_WEIGHTS) ? "" : " The default weights are random as well.");

    double step_median = median(step_ms, TIMING_REPS), dense_median = median(dense_ms, TIMING_REPS);
    printf("\ntime     decode step %.3f ms, dense attention %.3f ms (median of %d; dense/step = %.2fx)\n",
           step_median, dense_median, TIMING_REPS, dense_median / step_median);

    free(sparse_host);
    free(dense_host);
    ha_mem_free(rt, q.data);
    ha_mem_free(rt, sparse_out.data);
    ha_mem_free(rt, dense_out.data);
    ha_mem_free(rt, d_lens);
    ha_mem_free(rt, d_prompt_lens);
    ha_mem_free(rt, (void *)kv.k);
    ha_mem_free(rt, (void *)kv.v);
    ha_mem_free(rt, block_table);
    free(lens);
    free(prompt_lens);
    ha_cache_destroy(cache);
    ha_plan_destroy(plan);
    ha_weights_free(w);
    ha_runtime_close(rt);
    return 0;
}
