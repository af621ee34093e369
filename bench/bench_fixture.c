/*
 * bench_fixture.c — see bench_fixture.h.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* mkstemp */
#endif

#include "bench_fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_shape.h"
#include "ha_shared.h"
#include "weights_host.h"

#define FILL_CHUNK ((size_t)1 << 16)

/* ---- random numbers ------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/** Uniform in [-1, 1) from the state's next value. */
static float next_uniform(uint64_t *state)
{
    uint64_t s = *state;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    *state = s;
    return (float)(int32_t)(uint32_t)(s >> 32) * (1.0f / 2147483648.0f);
}

/** Random bf16 values in [-1, 1); chunked so the content does not depend on the thread count. */
static void fill_bf16(uint16_t *dst, size_t count, uint64_t seed)
{
    const size_t chunks = (count + FILL_CHUNK - 1) / FILL_CHUNK;
#pragma omp parallel for schedule(static)
    for (size_t c = 0; c < chunks; c++) {
        uint64_t state = splitmix64(seed ^ splitmix64(c)) | 1;
        size_t end = (c + 1) * FILL_CHUNK < count ? (c + 1) * FILL_CHUNK : count;
        for (size_t i = c * FILL_CHUNK; i < end; i++)
            dst[i] = ha_f32_to_bf16(next_uniform(&state));
    }
}

/* ---- buffers ------------------------------------------------------------------------------- */

void *bench_alloc(ha_runtime *rt, size_t bytes)
{
    void *p = NULL;
    ha_status st = ha_mem_alloc(rt, bytes, &p);
    if (st != HA_OK) {
        fprintf(stderr, "bench_cpu: ha_mem_alloc(%zu bytes) failed: %s: %s\n", bytes, ha_status_string(st),
                ha_last_error());
        return NULL;
    }
    return p;
}

static ha_status report(ha_status st, const char *what)
{
    if (st != HA_OK)
        fprintf(stderr, "bench_cpu: %s failed: %s: %s\n", what, ha_status_string(st), ha_last_error());
    return st;
}

double bench_fixture_layer_bytes(ha_mode mode, int32_t batch, int64_t tokens)
{
    return bench_dense_bytes(batch, tokens) + bench_match_bytes(mode, batch, tokens) +
           bench_mlp_bytes(BENCH_Q_HEADS) + bench_mlp_bytes(bench_code_heads(mode));
}

/* ---- random mapping functions ------------------------------------------------------------- */

/** Uniform weights of variance 1/fan_in (so activations keep their scale), small random biases. */
static void fill_mlp(ha_mlp_desc *d, uint64_t *state)
{
    for (int32_t i = 0; i < d->depth; i++) {
        int64_t rows = (int64_t)d->heads * d->dims[i + 1];
        float wscale = sqrtf(3.0f / (float)d->dims[i]);
        float *w = (float *)d->w[i]; /* points into the host weights' own storage */
        float *b = (float *)d->b[i];
        for (int64_t j = 0; j < rows * d->dims[i]; j++)
            w[j] = wscale * next_uniform(state);
        for (int64_t j = 0; j < rows; j++)
            b[j] = 0.1f * next_uniform(state);
    }
}

/** Random weights with `layers` sparse layers, saved to a temporary safetensors file and loaded. */
static ha_status make_weights(ha_runtime *rt, ha_mode mode, int32_t layers, uint64_t seed, ha_weights **out)
{
    ha_weights_host host;
    ha_status st = ha_weights_host_alloc(&host, layers, BENCH_BITS, BENCH_MLP_DEPTH, BENCH_MLP_HIDDEN,
                                         BENCH_HEAD_DIM, BENCH_Q_HEADS, bench_code_heads(mode), NULL);
    if (st != HA_OK)
        return report(st, "ha_weights_host_alloc");
    uint64_t state = splitmix64(seed) | 1;
    for (int32_t l = 0; l < layers; l++) {
        fill_mlp(&host.q[l], &state);
        fill_mlp(&host.k[l], &state);
    }

    const char *dir = getenv("TMPDIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/bench_cpu_weights_XXXXXX", dir && *dir ? dir : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "bench_cpu: cannot create a temporary file %s\n", path);
        ha_weights_host_free(&host);
        return HA_ERR_IO;
    }
    close(fd);
    char err[512] = "";
    st = ha_weights_host_write(&host, path, HA_ST_F16, err, sizeof err); /* as shipped */
    ha_weights_host_free(&host);
    if (st != HA_OK)
        fprintf(stderr, "bench_cpu: writing weights to %s failed: %s\n", path, err);
    else
        st = report(ha_weights_load(rt, path, out), "ha_weights_load");
    unlink(path);
    return st;
}

/* ---- the fixture ---------------------------------------------------------------------------- */

static ha_tensor3 tensor3_bf16(void *data)
{
    ha_tensor3 t = {data, HA_BF16, (int64_t)BENCH_Q_HEADS * BENCH_HEAD_DIM, BENCH_HEAD_DIM};
    return t;
}

static ha_status alloc_layer(bench_fixture *f, int32_t l, uint64_t seed)
{
    const size_t kv_elems = (size_t)f->batch * BENCH_KV_HEADS * (size_t)f->tokens * BENCH_HEAD_DIM;
    const size_t q_elems = (size_t)f->batch * BENCH_Q_HEADS * BENCH_HEAD_DIM;
    void *k = bench_alloc(f->rt, kv_elems * 2), *v = bench_alloc(f->rt, kv_elems * 2);
    void *q = bench_alloc(f->rt, q_elems * 2);
    void *codes = bench_alloc(f->rt, (size_t)f->batch * BENCH_Q_HEADS * BENCH_WORDS * sizeof(uint32_t));
    ha_kv kv = {k, v, HA_BF16, (int64_t)BENCH_KV_HEADS * f->tokens * BENCH_HEAD_DIM, BENCH_HEAD_DIM,
                f->tokens * BENCH_HEAD_DIM, 0, 0, NULL, f->tokens};
    f->kv[l] = kv;
    f->q[l] = tensor3_bf16(q);
    f->q_codes[l] = codes;
    if (!k || !v || !q || !codes)
        return HA_ERR_OUT_OF_MEMORY;
    fill_bf16(k, kv_elems, splitmix64(seed + 1));
    fill_bf16(v, kv_elems, splitmix64(seed + 2));
    fill_bf16(q, q_elems, splitmix64(seed + 3));
    return HA_OK;
}

/** The prefill: codes of all n keys of every copy, through a plan with the default budget. */
static ha_status encode_prompt_keys(bench_fixture *f)
{
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, f->batch, f->tokens, BENCH_Q_HEADS, BENCH_KV_HEADS, BENCH_HEAD_DIM);
    ha_plan *plan = NULL;
    ha_status st = report(ha_plan_create(f->rt, f->weights, &cfg, &plan), "ha_plan_create (prefill)");
    for (int32_t l = 0; st == HA_OK && l < f->layers; l++)
        st = report(ha_cache_encode_keys(plan, f->cache, l, &f->kv[l], f->batch, f->seq_lens, (int32_t)f->tokens, NULL),
                    "ha_cache_encode_keys (prefill)");
    ha_plan_destroy(plan);
    return st;
}

ha_status bench_fixture_create(ha_runtime *rt, ha_mode mode, int32_t batch, int64_t tokens, int32_t layers,
                               uint64_t seed, bench_fixture *out)
{
    memset(out, 0, sizeof(*out));
    if (!ha_runtime_is_host_memory(rt)) {
        fprintf(stderr, "bench_cpu: backend %s does not use host memory; this benchmark is for CPU backends\n",
                ha_runtime_backend_name(rt));
        return HA_ERR_UNSUPPORTED;
    }
    bench_fixture *f = out;
    f->rt = rt;
    f->mode = mode;
    f->batch = batch;
    f->tokens = tokens;
    f->layers = layers;
    f->kv = calloc((size_t)layers, sizeof(ha_kv));
    f->q = calloc((size_t)layers, sizeof(ha_tensor3));
    f->q_codes = calloc((size_t)layers, sizeof(uint32_t *));
    const size_t out_bytes = (size_t)batch * BENCH_Q_HEADS * BENCH_HEAD_DIM * 2;
    f->out = tensor3_bf16(bench_alloc(rt, out_bytes));
    f->out_check = tensor3_bf16(bench_alloc(rt, out_bytes));
    f->seq_lens = bench_alloc(rt, (size_t)batch * sizeof(int32_t));
    ha_status st = f->kv && f->q && f->q_codes && f->out.data && f->out_check.data && f->seq_lens
                       ? HA_OK
                       : HA_ERR_OUT_OF_MEMORY;
    for (int32_t b = 0; st == HA_OK && b < batch; b++)
        f->seq_lens[b] = (int32_t)tokens;
    for (int32_t l = 0; st == HA_OK && l < layers; l++)
        st = alloc_layer(f, l, splitmix64(seed * 1000003u + (uint64_t)l));
    if (st == HA_OK)
        st = make_weights(rt, mode, layers, seed, &f->weights);
    if (st == HA_OK) {
        ha_cache_config cc = {sizeof(ha_cache_config), 0, batch, tokens, 0};
        st = report(ha_cache_create(rt, f->weights, &cc, &f->cache), "ha_cache_create");
    }
    if (st == HA_OK)
        st = encode_prompt_keys(f);
    if (st != HA_OK)
        bench_fixture_destroy(f);
    return st;
}

void bench_fixture_destroy(bench_fixture *f)
{
    for (int32_t l = 0; l < f->layers; l++) {
        if (f->kv) {
            ha_mem_free(f->rt, (void *)f->kv[l].k);
            ha_mem_free(f->rt, (void *)f->kv[l].v);
        }
        if (f->q)
            ha_mem_free(f->rt, f->q[l].data);
        if (f->q_codes)
            ha_mem_free(f->rt, f->q_codes[l]);
    }
    ha_cache_destroy(f->cache);
    ha_weights_free(f->weights);
    ha_mem_free(f->rt, f->out.data);
    ha_mem_free(f->rt, f->out_check.data);
    ha_mem_free(f->rt, f->seq_lens);
    free(f->kv);
    free(f->q);
    free(f->q_codes);
    memset(f, 0, sizeof(*f));
}
