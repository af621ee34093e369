/*
 * dlopen_host.c — a host with no link-time dependency on libhashattn: it dlopen()s the library at
 * run time, asks it for the whole public API as one versioned table (ha_get_api), and runs one
 * decode step (HashAttention next to dense attention) through that table only.
 *
 *   dlopen_host [LIBRARY [WEIGHTS]]
 *
 * LIBRARY: argv[1] (unless ""), else $HASHATTN_LIBRARY, else the build tree's library (set by
 * meson), else "libhashattn.so.0" from the loader's search path. WEIGHTS: argv[2], else the
 * weights meson generates. The backend comes from $HASHATTN_BACKEND or probing, as for any host.
 * Exit status 0 on success, 1 on any error.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashattn.h" /* types and HA_API_VERSION only: no ha_* function is called directly */

#ifndef DLOPEN_HOST_DEFAULT_LIBRARY
#define DLOPEN_HOST_DEFAULT_LIBRARY "libhashattn.so.0"
#endif
#ifndef DLOPEN_HOST_DEFAULT_WEIGHTS
#define DLOPEN_HOST_DEFAULT_WEIGHTS "dlopen_weights.safetensors"
#endif

enum { BATCH = 1, TOKENS = 1000 };

static const ha_api *api;

static void check(ha_status status, const char *call)
{
    if (status == HA_OK)
        return;
    fprintf(stderr, "dlopen_host: %s failed: %s: %s\n", call, api->status_string(status), api->last_error());
    exit(1);
}
#define CHECK(call) check((call), #call)

/* Loads the library and returns its API table, checked against the version this host was built for. */
static const ha_api *load_api(const char *path, void **handle)
{
    *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*handle) {
        fprintf(stderr, "dlopen_host: cannot load %s: %s\n", path, dlerror());
        return NULL;
    }
    void *symbol = dlsym(*handle, "ha_get_api");
    if (!symbol) {
        fprintf(stderr, "dlopen_host: %s exports no ha_get_api: not libhashattn?\n", path);
        return NULL;
    }
    const ha_api *(*get_api)(uint32_t);
    memcpy(&get_api, &symbol, sizeof get_api); /* object pointer to function pointer, portably */
    const ha_api *table = get_api(HA_API_VERSION);
    if (!table) {
        fprintf(stderr, "dlopen_host: %s is older than API table version %d\n", path, HA_API_VERSION);
        return NULL;
    }
    /* A newer library may hand out a longer table (members are only appended); never a shorter one. */
    if (table->version != HA_API_VERSION || table->struct_size < sizeof(ha_api)) {
        fprintf(stderr, "dlopen_host: %s returned table version %u of %u bytes; this host needs version %d, %zu bytes\n",
                path, table->version, table->struct_size, HA_API_VERSION, sizeof(ha_api));
        return NULL;
    }
    return table;
}

static void *backend_copy_of(ha_runtime *rt, const void *host, size_t bytes)
{
    void *p;
    CHECK(api->mem_alloc(rt, bytes, &p));
    CHECK(api->mem_copy(rt, p, host, bytes, HA_COPY_HOST_TO_BACKEND));
    return p;
}

/* count uniform values in [-1, 1), fp32, in backend memory. */
static void *backend_random(ha_runtime *rt, size_t count, uint64_t *state)
{
    float *host = malloc(count * sizeof *host);
    if (!host) {
        fprintf(stderr, "dlopen_host: out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < count; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull; /* 64-bit LCG */
        host[i] = 2.0f * (float)(*state >> 40) / 16777216.0f - 1.0f;
    }
    void *p = backend_copy_of(rt, host, count * sizeof *host);
    free(host);
    return p;
}

int main(int argc, char **argv)
{
    const char *env_library = getenv("HASHATTN_LIBRARY");
    const char *library = argc > 1 && *argv[1] ? argv[1] : env_library && *env_library ? env_library : DLOPEN_HOST_DEFAULT_LIBRARY;
    const char *weights_path = argc > 2 ? argv[2] : DLOPEN_HOST_DEFAULT_WEIGHTS;
    if (argc > 3 || (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))) {
        fprintf(argc > 3 ? stderr : stdout, "usage: dlopen_host [LIBRARY [WEIGHTS]]\n");
        return argc > 3;
    }

    void *handle;
    api = load_api(library, &handle);
    if (!api)
        return 1;
    printf("loaded   %s: hashattn %s, API table version %u (%u bytes)\n", library, api->version_string(),
           api->version, api->struct_size);

    ha_runtime *rt;
    CHECK(api->runtime_open(NULL, &rt));
    printf("backend  %s: %s\n", api->runtime_backend_name(rt), api->runtime_backend_description(rt));

    ha_weights *w;
    CHECK(api->weights_load(rt, weights_path, &w));
    ha_weights_info info;
    CHECK(api->weights_get_info(w, &info));
    int32_t layer = 0;
    while (layer < info.num_layers && api->weights_layer_is_dense(w, layer))
        layer++;
    if (layer == info.num_layers) {
        fprintf(stderr, "dlopen_host: %s has no sparse layer\n", weights_path);
        return 1;
    }
    /* Shape from the weights (Hq 4, Hkv 2, d 64 for the default ones). */
    int32_t q_heads = info.q_heads, head_dim = info.head_dim;
    int32_t kv_heads = info.mode == HA_MODE_GROUP ? info.k_heads : q_heads % 2 == 0 ? q_heads / 2 : q_heads;

    ha_plan_config pc;
    api->plan_config_init(&pc, BATCH, TOKENS, q_heads, kv_heads, head_dim);
    ha_plan *plan;
    CHECK(api->plan_create(rt, w, &pc, &plan));
    ha_cache_config cc = {sizeof cc, 0, BATCH, TOKENS, 0};
    ha_cache *cache;
    CHECK(api->cache_create(rt, w, &cc, &cache));

    /* K, V contiguous [B, Hkv, n, d]. */
    uint64_t rng = 42;
    size_t kv_elems = (size_t)BATCH * (size_t)kv_heads * TOKENS * (size_t)head_dim;
    size_t q_elems = (size_t)BATCH * (size_t)q_heads * (size_t)head_dim;
    ha_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.k = backend_random(rt, kv_elems, &rng);
    kv.v = backend_random(rt, kv_elems, &rng);
    kv.dtype = HA_F32;
    kv.stride_seq = (int64_t)kv_heads * TOKENS * head_dim;
    kv.stride_token = head_dim;
    kv.stride_head = (int64_t)TOKENS * head_dim;
    kv.capacity = TOKENS;
    int32_t lens[BATCH] = {TOKENS}, prompt_lens[BATCH] = {TOKENS - 1};
    int32_t *d_lens = backend_copy_of(rt, lens, sizeof lens);
    int32_t *d_prompt_lens = backend_copy_of(rt, prompt_lens, sizeof prompt_lens);
    ha_tensor3 q = {backend_random(rt, q_elems, &rng), HA_F32, (int64_t)q_heads * head_dim, head_dim};
    ha_tensor3 sparse = {NULL, HA_F32, (int64_t)q_heads * head_dim, head_dim};
    ha_tensor3 dense = sparse;
    CHECK(api->mem_alloc(rt, q_elems * sizeof(float), &sparse.data));
    CHECK(api->mem_alloc(rt, q_elems * sizeof(float), &dense.data));

    /* Prefill encodes the prompt's keys; the step encodes the new token's key, selects, attends. */
    CHECK(api->cache_encode_keys(plan, cache, layer, &kv, BATCH, d_prompt_lens, TOKENS - 1, NULL));
    ha_step step;
    memset(&step, 0, sizeof step);
    step.batch = BATCH;
    step.seq_lens = d_lens;
    step.new_tokens = 1;
    step.q = q;
    step.kv = kv;
    step.out = sparse;
    CHECK(api->decode_step(plan, cache, layer, &step));
    CHECK(api->dense_attend(plan, &q, &kv, BATCH, d_lens, &dense, NULL, NULL));
    CHECK(api->synchronize(rt, NULL));

    float *sparse_host = malloc(q_elems * sizeof(float)), *dense_host = malloc(q_elems * sizeof(float));
    if (!sparse_host || !dense_host) {
        fprintf(stderr, "dlopen_host: out of host memory\n");
        return 1;
    }
    CHECK(api->mem_copy(rt, sparse_host, sparse.data, q_elems * sizeof(float), HA_COPY_BACKEND_TO_HOST));
    CHECK(api->mem_copy(rt, dense_host, dense.data, q_elems * sizeof(float), HA_COPY_BACKEND_TO_HOST));
    double diff = 0.0, norm = 0.0;
    for (size_t i = 0; i < q_elems; i++) {
        diff += ((double)sparse_host[i] - dense_host[i]) * ((double)sparse_host[i] - dense_host[i]);
        norm += (double)dense_host[i] * dense_host[i];
    }
    printf("step     layer %d, B %d, n %d, Hq %d, Hkv %d, d %d: kept %lld of %d tokens\n", layer, BATCH, TOKENS,
           q_heads, kv_heads, head_dim, (long long)api->plan_kept_for_length(plan, TOKENS), TOKENS);
    printf("error    ||sparse - dense|| / ||dense|| = %.4f (random K/V spread attention evenly: expect it large)\n",
           norm > 0.0 ? sqrt(diff / norm) : sqrt(diff));

    free(sparse_host);
    free(dense_host);
    api->mem_free(rt, sparse.data);
    api->mem_free(rt, dense.data);
    api->mem_free(rt, q.data);
    api->mem_free(rt, d_lens);
    api->mem_free(rt, d_prompt_lens);
    api->mem_free(rt, (void *)kv.k);
    api->mem_free(rt, (void *)kv.v);
    api->cache_destroy(cache);
    api->plan_destroy(plan);
    api->weights_free(w);
    api->runtime_close(rt);
    dlclose(handle);
    return 0;
}
