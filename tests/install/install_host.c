/*
 * install_host.c — a host program that tests/test_install.sh copies out of the source tree and
 * builds against the INSTALLED library only (cc $(pkg-config --cflags --libs hashattn)): it includes
 * nothing but <hashattn.h>. It opens a runtime by probing the plugins, prints which libhashattn and
 * which plugin file were loaded (for the script to check that both are the installed ones), then
 * runs a prefill and one decode step on random data: a sequence short enough that the budget keeps
 * every token must equal plain softmax attention computed here, and a longer one (real selection)
 * must give, per coordinate, a convex combination of its values.
 *
 * Usage: install_host WEIGHTS.safetensors        Exit status 0 only when every check passed.
 */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn.h>

#define BATCH 2
static const int32_t lens[BATCH] = {100, 700}; /* 100 ≤ sink + local: every token kept */

static char plugin_path[4096];

/* The runtime logs "backend 'NAME' from PATH" at INFO when it opens. */
static void capture_backend(void *user, ha_log_level level, const char *message)
{
    (void)user;
    const char *from = strstr(message, "' from ");
    if (level == HA_LOG_INFO && !strncmp(message, "backend '", 9) && from)
        snprintf(plugin_path, sizeof plugin_path, "%s", from + 7);
}

static uint64_t rng_state = 0x1a57a11ull;
static float random_nonzero(void) /* ±U(0.05, 1) */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    float m = 0.05f + 0.95f * (float)((z >> 11) * (1.0 / 9007199254740992.0));
    return z & 1 ? m : -m;
}

static int failed(const char *what, ha_status st)
{
    fprintf(stderr, "install_host: %s: %s: %s\n", what, ha_status_string(st), ha_last_error());
    return 1;
}

/** Copies host data into new backend memory. */
static void *upload(ha_runtime *rt, const void *host, size_t bytes)
{
    void *dev = NULL;
    if (ha_mem_alloc(rt, bytes, &dev) != HA_OK || ha_mem_copy(rt, dev, host, bytes, HA_COPY_HOST_TO_BACKEND) != HA_OK) {
        fprintf(stderr, "install_host: backend memory: %s\n", ha_last_error());
        exit(1);
    }
    return dev;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: install_host WEIGHTS.safetensors\n");
        return 2;
    }
    Dl_info lib;
    if (!dladdr((void *)&ha_runtime_open, &lib) || !lib.dli_fname)
        return fprintf(stderr, "install_host: dladdr found no libhashattn\n"), 1;
    printf("library: %s\n", lib.dli_fname);
    printf("version: %s (header %d)\n", ha_version_string(), HA_VERSION);
    if (ha_version() != HA_VERSION)
        return fprintf(stderr, "install_host: library version %u differs from the header's %d\n", ha_version(), HA_VERSION), 1;

    ha_set_log_callback(capture_backend, NULL, HA_LOG_INFO);
    ha_runtime *rt;
    ha_status st = ha_runtime_open(NULL, &rt); /* no name: probe every plugin found */
    ha_set_log_callback(NULL, NULL, HA_LOG_WARN);
    if (st != HA_OK)
        return failed("ha_runtime_open", st);
    printf("backend: %s (%s)\n", ha_runtime_backend_name(rt), ha_runtime_backend_description(rt));
    printf("plugin: %s\n", plugin_path[0] ? plugin_path : "(none reported)");

    ha_weights *w;
    if ((st = ha_weights_load(rt, argv[1], &w)) != HA_OK)
        return failed("ha_weights_load", st);
    ha_weights_info info;
    ha_weights_get_info(w, &info);
    int32_t layer = 0;
    while (layer < info.num_layers && ha_weights_layer_is_dense(w, layer))
        layer++;
    if (layer == info.num_layers)
        return fprintf(stderr, "install_host: the weights have no sparse layer\n"), 1;
    int32_t hq = info.q_heads, hkv = info.mode == HA_MODE_GROUP ? info.k_heads : hq, d = info.head_dim;
    int64_t tokens = lens[1], longest = lens[1];

    ha_plan_config pc;
    ha_plan_config_init(&pc, BATCH, tokens, hq, hkv, d);
    ha_plan *plan;
    if ((st = ha_plan_create(rt, w, &pc, &plan)) != HA_OK)
        return failed("ha_plan_create", st);
    ha_cache_config cc = {sizeof cc, 0, BATCH, tokens, 0};
    ha_cache *cache;
    if ((st = ha_cache_create(rt, w, &cc, &cache)) != HA_OK)
        return failed("ha_cache_create", st);

    /* host data: K, V [B][T][Hkv][d], Q [B][Hq][d] */
    size_t kv_n = (size_t)BATCH * tokens * hkv * d, q_n = (size_t)BATCH * hq * d;
    float *k = malloc(kv_n * sizeof(float)), *v = malloc(kv_n * sizeof(float)), *q = malloc(q_n * sizeof(float));
    float *out = malloc(q_n * sizeof(float)), lse[BATCH * 64];
    if (!k || !v || !q || !out || hq > 64)
        return fprintf(stderr, "install_host: out of host memory\n"), 1;
    for (size_t i = 0; i < kv_n; i++) {
        k[i] = random_nonzero();
        v[i] = random_nonzero();
    }
    for (size_t i = 0; i < q_n; i++)
        q[i] = random_nonzero();
    int32_t prompt[BATCH] = {lens[0] - 1, lens[1] - 1};
    ha_kv kv = {upload(rt, k, kv_n * sizeof(float)), upload(rt, v, kv_n * sizeof(float)), HA_F32,
                tokens * hkv * d, (int64_t)hkv * d, d, 0, 0, NULL, tokens};
    int32_t *prompt_dev = upload(rt, prompt, sizeof prompt), *lens_dev = upload(rt, lens, sizeof lens);
    float *out_dev = NULL, *lse_dev = NULL;
    if (ha_mem_alloc(rt, q_n * sizeof(float), (void **)&out_dev) != HA_OK ||
        ha_mem_alloc(rt, sizeof lse, (void **)&lse_dev) != HA_OK)
        return failed("ha_mem_alloc", HA_ERR_OUT_OF_MEMORY);

    if ((st = ha_cache_encode_keys(plan, cache, layer, &kv, BATCH, prompt_dev, (int32_t)longest - 1, NULL)) != HA_OK)
        return failed("ha_cache_encode_keys", st);
    ha_step step;
    memset(&step, 0, sizeof step);
    step.batch = BATCH;
    step.seq_lens = lens_dev;
    step.new_tokens = 1;
    step.q = (ha_tensor3){upload(rt, q, q_n * sizeof(float)), HA_F32, (int64_t)hq * d, d};
    step.kv = kv;
    step.out = (ha_tensor3){out_dev, HA_F32, (int64_t)hq * d, d};
    step.lse = lse_dev;
    if ((st = ha_decode_step(plan, cache, layer, &step)) != HA_OK)
        return failed("ha_decode_step", st);
    if (ha_synchronize(rt, NULL) != HA_OK ||
        ha_mem_copy(rt, out, out_dev, q_n * sizeof(float), HA_COPY_BACKEND_TO_HOST) != HA_OK ||
        ha_mem_copy(rt, lse, lse_dev, (size_t)BATCH * hq * sizeof(float), HA_COPY_BACKEND_TO_HOST) != HA_OK)
        return failed("reading the outputs", HA_ERR_BACKEND);

    /* sequence 0: every token kept, so the step is plain softmax attention */
    double scale = 1.0 / sqrt((double)d), worst = 0.0;
    int32_t group = hq / hkv;
    double *p = malloc((size_t)lens[0] * sizeof(double));
    if (!p)
        return 1;
    for (int32_t h = 0; h < hq; h++) {
        const float *qh = q + (size_t)h * d;
        double mx = -INFINITY, sum = 0.0, err = 0.0, norm = 0.0;
        for (int32_t t = 0; t < lens[0]; t++) {
            const float *kt = k + ((size_t)t * hkv + h / group) * d;
            double dot = 0.0;
            for (int32_t i = 0; i < d; i++)
                dot += (double)qh[i] * kt[i];
            p[t] = dot * scale;
            mx = fmax(mx, p[t]);
        }
        for (int32_t t = 0; t < lens[0]; t++)
            sum += (p[t] = exp(p[t] - mx));
        for (int32_t i = 0; i < d; i++) {
            double o = 0.0;
            for (int32_t t = 0; t < lens[0]; t++)
                o += p[t] * v[((size_t)t * hkv + h / group) * d + i];
            o /= sum;
            double got = out[(size_t)h * d + i];
            err += (got - o) * (got - o);
            norm += o * o;
        }
        double rel = sqrt(err / norm), lse_ref = mx + log(sum);
        worst = fmax(worst, rel);
        if (!(rel <= 1e-5) || !(fabs(lse[h] - lse_ref) <= 1e-4))
            return fprintf(stderr, "install_host: head %d: relative error %.3g, lse %.7g vs %.7g\n", h, rel,
                           (double)lse[h], lse_ref), 1;
    }
    /* sequence 1: whatever was selected, each output coordinate lies within its values' range */
    for (int32_t h = 0; h < hq; h++) {
        for (int32_t i = 0; i < d; i++) {
            float lo = INFINITY, hi = -INFINITY;
            for (int32_t t = 0; t < lens[1]; t++) {
                float x = v[(((size_t)tokens + t) * hkv + h / group) * d + i];
                lo = fminf(lo, x);
                hi = fmaxf(hi, x);
            }
            float got = out[((size_t)hq + h) * d + i];
            if (!(got >= lo - 1e-5f && got <= hi + 1e-5f) || !isfinite(lse[hq + h]))
                return fprintf(stderr, "install_host: sequence 1, head %d: out[%d] = %g outside [%g, %g]\n", h, i,
                               (double)got, (double)lo, (double)hi), 1;
        }
    }
    printf("decode step: layer %d, %d sequences (n = %d, %d); dense-equivalent one within %.2g of softmax attention\n",
           layer, BATCH, lens[0], lens[1], worst);

    free(p);
    ha_mem_free(rt, (void *)kv.k);
    ha_mem_free(rt, (void *)kv.v);
    ha_mem_free(rt, step.q.data);
    ha_mem_free(rt, out_dev);
    ha_mem_free(rt, lse_dev);
    ha_mem_free(rt, prompt_dev);
    ha_mem_free(rt, lens_dev);
    ha_cache_destroy(cache);
    ha_plan_destroy(plan);
    ha_weights_free(w);
    ha_runtime_close(rt);
    free(k);
    free(v);
    free(q);
    free(out);
    return 0;
}
