/*
 * fuzz_weights — libFuzzer target of the safetensors reader and the mapping-weights loader.
 *
 * The input is a whole safetensors image. It goes through the generic reader (ha_st_parse: every
 * tensor found, converted to fp32 when it is F32/F16/BF16, metadata looked up), then through the
 * public ha_weights_load_memory on the built-in reference backend. Weights that load are used: a
 * plan is made and every sparse layer encodes one query, so a descriptor that disagrees with its
 * storage would read out of bounds under ASan. Any status is fine; a crash, leak or sanitizer report
 * is the failure.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hashattn.h"
#include "safetensors.h"

static void quiet(void *user, ha_log_level level, const char *message)
{
    (void)user, (void)level, (void)message; /* every failure would log a warning: too slow */
}

static ha_runtime *runtime(void)
{
    static ha_runtime *rt;
    if (!rt) {
        ha_set_log_callback(quiet, NULL, HA_LOG_ERROR);
        ha_runtime_options opt = {sizeof opt, "reference", 0};
        if (ha_runtime_open(&opt, &rt) != HA_OK)
            abort();
    }
    return rt;
}

/* The generic reader: every tensor readable, fp32 conversion in bounds. */
static void read_generic(const uint8_t *data, size_t size)
{
    ha_st_file f;
    char err[256];
    if (ha_st_parse(data, size, &f, err, sizeof err) != HA_OK)
        return;
    for (size_t i = 0; i < f.n_tensors; i++) {
        const ha_st_tensor *t = &f.tensors[i];
        if (ha_st_find(&f, t->name) != t)
            abort(); /* names are unique and sorted: the lookup finds this very tensor */
        if (t->numel > (1 << 20) || (t->dtype != HA_ST_F32 && t->dtype != HA_ST_F16 && t->dtype != HA_ST_BF16))
            continue;
        float *dst = malloc((size_t)t->numel * sizeof(float) + 1);
        if (dst && ha_st_to_f32(&f, t, dst) != HA_OK)
            abort(); /* a float tensor the parser accepted converts */
        free(dst);
    }
    for (size_t i = 0; i < f.n_meta; i++)
        if (ha_st_meta(&f, f.meta_keys[i]) == NULL)
            abort();
    ha_st_close(&f);
}

/* Encodes one deterministic query per sparse layer with loaded weights (small shapes only). */
static void use_weights(ha_runtime *rt, const ha_weights *w)
{
    ha_weights_info info;
    if (ha_weights_get_info(w, &info) != HA_OK)
        abort();
    int64_t q_elems = (int64_t)info.q_heads * info.head_dim;
    if (q_elems > (1 << 16) || (int64_t)info.q_heads * info.words > (1 << 16))
        return;
    ha_plan_config pc;
    ha_plan_config_init(&pc, 1, 8, info.q_heads, info.k_heads, info.head_dim);
    ha_plan *plan;
    if (ha_plan_create(rt, w, &pc, &plan) != HA_OK)
        return;
    float *q = malloc((size_t)q_elems * sizeof(float));
    uint32_t *codes = malloc((size_t)info.q_heads * (size_t)info.words * sizeof(uint32_t));
    if (q && codes) {
        uint32_t s = 12345;
        for (int64_t i = 0; i < q_elems; i++) {
            s = s * 1664525u + 1013904223u;
            q[i] = (float)(int32_t)s / 2147483648.0f;
        }
        ha_tensor3 qt = {q, HA_F32, q_elems, info.head_dim};
        for (int32_t l = 0; l < info.num_layers; l++)
            if (ha_weights_layer_is_dense(w, l) == 0 && ha_encode_queries(plan, l, &qt, 1, codes, NULL) != HA_OK)
                abort(); /* valid weights and a valid query: encoding succeeds */
    }
    free(q);
    free(codes);
    ha_plan_destroy(plan);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    read_generic(data, size);
    ha_runtime *rt = runtime();
    ha_weights *w = NULL;
    /* a non-NULL pointer even for an empty input: NULL data is a different (argument) error */
    ha_status st = ha_weights_load_memory(rt, size ? (const void *)data : (const void *)"", size, &w);
    if ((st == HA_OK) != (w != NULL) || (st != HA_OK && ha_last_error()[0] == '\0'))
        abort(); /* success gives an object; failure gives no object and a message */
    if (w) {
        use_weights(rt, w);
        ha_weights_free(w);
    }
    return 0;
}
