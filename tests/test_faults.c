/*
 * test_faults.c — fault injection. (1) Allocation failure at every allocation site, in turn, of a
 * weights load (from memory and from a file) and of a whole decode sequence (runtime open, backend
 * memory, weights load, plan, caches, every stage, decode steps), through the core's test hook
 * (ha_test_alloc_fail_at: the n-th host allocation of the core, of jansson and of the reference
 * backend, and the n-th backend allocation the core asks for, fails). (2) A plugin whose entry points
 * fail, each in turn, at each of their calls in the sequence (tests/faulty_plugin.c).
 *
 * Every injected failure must reach the caller as a failed status with a message (the plugin's own
 * text for plugin failures), nothing may crash, and nothing may leak: under the ASan build
 * LeakSanitizer checks the whole run at exit.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hashattn.h"
#include "test_expect.h"
#include "test_util.h"

#define HQ 4
#define HKV 2
#define DIM 16
#define LAYERS 3 /* layer 1 is dense */
#define DENSE_LAYER 1
#define BATCH 2
#define TOKENS 40
#define PAGE 8

/* ---- the hook, found in the loaded libhashattn (the tests' static copy of the core's helpers has
 *      its own, unused counter) ------------------------------------------------------------------- */

static void (*hook_fail_at)(uint64_t);
static uint64_t (*hook_count)(void);
static int (*hook_failed_in_json)(void);

static int find_hook(void)
{
    Dl_info info;
    if (!dladdr((void *)&ha_runtime_open, &info) || !info.dli_fname)
        return -1;
    void *lib = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (!lib)
        return -1;
    *(void **)&hook_fail_at = dlsym(lib, "ha_test_alloc_fail_at");
    *(void **)&hook_count = dlsym(lib, "ha_test_alloc_count");
    *(void **)&hook_failed_in_json = dlsym(lib, "ha_test_alloc_failed_in_json");
    dlclose(lib);
    return hook_fail_at && hook_count && hook_failed_in_json ? 0 : -1;
}

/* ---- fixture: a weights file and host buffers (every backend used here has host memory) ---------- */

static struct {
    ha_runtime *rt; /* the reference backend, for the buffers and the weights-only loads */
    unsigned char *image;
    size_t image_size;
    char path[64];
    tx_buffers b;
    int32_t lens[BATCH];
} fx;

static int setup(void **state)
{
    (void)state;
    if (find_hook() != 0) {
        fprintf(stderr, "test_faults: libhashattn exports no ha_test_alloc_fail_at\n");
        return -1;
    }
    ha_runtime_options ref = {sizeof ref, "reference", 0};
    if (ha_runtime_open(&ref, &fx.rt) != HA_OK)
        return -1;
    fx.image = tx_weights_image(LAYERS, 1u << DENSE_LAYER, 32, 2, 8, DIM, HQ, HKV, 0xfa17ull, &fx.image_size);
    snprintf(fx.path, sizeof fx.path, "/tmp/hashattn-faults-XXXXXX");
    int fd = mkstemp(fx.path);
    if (fd < 0)
        return -1;
    close(fd);
    tx_write_file(fx.path, fx.image, fx.image_size);
    tu_rng r;
    tu_rng_seed(&r, 0xfa175ull);
    tx_buffers_create(&fx.b, fx.rt, &r, BATCH, HQ, HKV, DIM, TOKENS, PAGE, TOKENS, 0);
    fx.lens[0] = TOKENS;
    fx.lens[1] = 23;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tx_buffers_destroy(&fx.b);
    ha_runtime_close(fx.rt);
    unlink(fx.path);
    free(fx.image);
    return 0;
}

/* ---- the sequences ------------------------------------------------------------------------------- */

/** What a sequence saw first go wrong. */
typedef struct outcome {
    ha_status status;
    char call[256];
    char message[1024];
} outcome;

/** Records st of call when it is the first failure; returns 1 while nothing has failed. */
static int step(outcome *o, const char *call, ha_status st)
{
    if (o->status == HA_OK && st != HA_OK) {
        o->status = st;
        snprintf(o->call, sizeof o->call, "%s", call);
        snprintf(o->message, sizeof o->message, "%s", ha_last_error());
    }
    return o->status == HA_OK;
}

#define STEP(o, call) step((o), #call, (call))

static void load_weights_memory(outcome *o)
{
    ha_weights *w = NULL;
    if (STEP(o, ha_weights_load_memory(fx.rt, fx.image, fx.image_size, &w)))
        STEP(o, ha_weights_get_info(w, &(ha_weights_info){0}));
    ha_weights_free(w);
}

static void load_weights_file(outcome *o)
{
    ha_weights *w = NULL;
    STEP(o, ha_weights_load(fx.rt, fx.path, &w));
    ha_weights_free(w);
}

static const char *sequence_backend; /* NULL: probing */

/** Runtime, backend memory, weights, plan, contiguous and paged caches, every stage, decode steps. */
static void decode_sequence(outcome *o)
{
    ha_runtime_options opt = {sizeof opt, sequence_backend, 0};
    ha_runtime *rt = NULL;
    ha_weights *w = NULL;
    ha_plan *plan = NULL;
    ha_cache *cache = NULL, *paged = NULL;
    int32_t *lens = NULL, *indices = NULL, *counts = NULL;
    uint32_t *codes = NULL;
    ha_kv kv = tu_kv_backend(&fx.b.kv), kv_paged = tu_kv_backend(&fx.b.kv_paged);
    kv.k = fx.b.kv.k;
    kv.v = fx.b.kv.v;
    kv_paged.k = fx.b.kv_paged.k;
    kv_paged.v = fx.b.kv_paged.v;
    kv_paged.block_table = fx.b.kv_paged.block_table;
    ha_tensor3 q = tu_tensor3_backend(&fx.b.q), out = tu_tensor3_backend(&fx.b.o.out);
    q.data = fx.b.q.host;
    out.data = fx.b.o.out.host;
    ha_plan_config pc;
    ha_plan_config_init(&pc, BATCH, TOKENS, HQ, HKV, DIM);
    pc.sink = 3;
    pc.local = 5;
    pc.heavy_fraction = 0.25;
    ha_cache_config cc = {sizeof cc, 0, BATCH, TOKENS, 0};
    ha_cache_config pcc = {sizeof pcc, PAGE, 0, 0, fx.b.kv_paged.capacity};

    int ok = STEP(o, ha_runtime_open(&opt, &rt)) && STEP(o, ha_mem_alloc(rt, sizeof fx.lens, (void **)&lens)) &&
             STEP(o, ha_mem_copy(rt, lens, fx.lens, sizeof fx.lens, HA_COPY_HOST_TO_BACKEND)) &&
             STEP(o, ha_synchronize(rt, NULL)) && STEP(o, ha_weights_load(rt, fx.path, &w)) &&
             STEP(o, ha_plan_create(rt, w, &pc, &plan)) && STEP(o, ha_cache_create(rt, w, &cc, &cache)) &&
             STEP(o, ha_cache_create(rt, w, &pcc, &paged));
    if (ok) {
        /* host buffers of the test (not counted: only the library's allocations are) */
        size_t rows = (size_t)BATCH * HQ;
        codes = calloc(rows, sizeof *codes);
        indices = calloc(rows * (size_t)ha_plan_max_kept(plan), sizeof *indices);
        counts = calloc(rows, sizeof *counts);
        assert_true(codes && indices && counts);
        ha_step s = {BATCH, lens, 1, q, kv, out, NULL, NULL};
        ha_step sp = s;
        sp.kv = kv_paged;
        ha_step dense = s;
        dense.new_tokens = 0;
        ok = STEP(o, ha_cache_encode_keys(plan, cache, 0, &kv, BATCH, lens, TOKENS, NULL)) &&
             STEP(o, ha_encode_queries(plan, 0, &q, BATCH, codes, NULL)) &&
             STEP(o, ha_match(plan, cache, 0, codes, &kv, BATCH, lens, indices, counts, NULL)) &&
             STEP(o, ha_attend(plan, &q, &kv, BATCH, lens, indices, counts, &out, NULL, NULL)) &&
             STEP(o, ha_dense_attend(plan, &q, &kv, BATCH, lens, &out, NULL, NULL)) &&
             STEP(o, ha_decode_step(plan, cache, 0, &s)) &&
             STEP(o, ha_cache_encode_keys(plan, paged, 2, &kv_paged, BATCH, lens, TOKENS, NULL)) &&
             STEP(o, ha_decode_step(plan, paged, 2, &sp)) && STEP(o, ha_decode_step(plan, NULL, DENSE_LAYER, &dense));
    }
    (void)ok;
    free(codes);
    free(indices);
    free(counts);
    ha_cache_destroy(paged);
    ha_cache_destroy(cache);
    ha_plan_destroy(plan);
    ha_weights_free(w);
    ha_mem_free(rt, lens);
    ha_runtime_close(rt);
}

/* ---- allocation failures ------------------------------------------------------------------------- */

static int json_as_format; /* jansson allocation failures that jansson reported as a syntax error */

/**
 * Runs the sequence with allocation n failing, n = 1, 2, … until the sequence makes fewer than n
 * allocations (then it must succeed). Every failing run must report HA_ERR_OUT_OF_MEMORY with a
 * message, except that jansson's lexer turns some of its own allocation failures into syntax errors
 * (its source says so): those may surface as HA_ERR_FORMAT. Returns the allocations exercised.
 */
static int fail_each_allocation(const char *name, void (*sequence)(outcome *))
{
    for (uint64_t n = 1;; n++) {
        outcome o = {HA_OK, "", ""};
        hook_fail_at(n);
        sequence(&o);
        uint64_t made = hook_count();
        int in_json = hook_failed_in_json();
        hook_fail_at(0);
        if (made < n) {
            if (o.status != HA_OK)
                fail_msg("%s without an injected failure: %s -> %s: %s", name, o.call, ha_status_string(o.status),
                         o.message);
            print_message("      %-28s %3llu allocations, each failed in turn\n", name, (unsigned long long)(n - 1));
            return (int)(n - 1);
        }
        if (o.status == HA_OK)
            fail_msg("%s: allocation %llu of %llu failed but every call succeeded", name, (unsigned long long)n,
                     (unsigned long long)made);
        if (o.status == HA_ERR_FORMAT && in_json && o.message[0]) {
            json_as_format++;
            continue;
        }
        if (o.status != HA_ERR_OUT_OF_MEMORY || !o.message[0])
            fail_msg("%s: allocation %llu failed: %s -> %s (expected out of memory): \"%s\"", name,
                     (unsigned long long)n, o.call, ha_status_string(o.status), o.message);
    }
}

static int allocation_sites;

static void test_alloc_weights_load(void **state)
{
    (void)state;
    allocation_sites += fail_each_allocation("weights from memory", load_weights_memory);
    allocation_sites += fail_each_allocation("weights from a file", load_weights_file);
}

static void test_alloc_decode_reference(void **state)
{
    (void)state;
    sequence_backend = "reference";
    allocation_sites += fail_each_allocation("decode sequence, reference", decode_sequence);
}

static void test_alloc_decode_probed(void **state)
{
    (void)state;
    sequence_backend = NULL; /* plugin search and probing, then the best plugin (the core's sites only) */
    allocation_sites += fail_each_allocation("decode sequence, probed", decode_sequence);
}

/* ---- a plugin whose calls fail ---------------------------------------------------------------------- */

static void test_plugin_failures(void **state)
{
    (void)state;
    const char *path = getenv("HASHATTN_FAULTY_PLUGIN");
    if (!path)
        skip();
    sequence_backend = path;
    const char *entries[] = {"init", "mem_alloc", "mem_copy", "synchronize", "mlp_upload",
                             "plan_create", "encode", "match", "attend", "decode"};
    int (*fired)(void) = NULL;
    int injected = 0;
    for (size_t e = 0; e < sizeof entries / sizeof entries[0]; e++) {
        int per_entry = 0;
        for (int n = 1;; n++) {
            char spec[64];
            snprintf(spec, sizeof spec, "%s:%d", entries[e], n);
            setenv("HASHATTN_FAULTY_FAIL", spec, 1);
            outcome o = {HA_OK, "", ""};
            decode_sequence(&o);
            if (!fired) {
                void *module = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
                assert_non_null(module);
                *(void **)&fired = dlsym(module, "faulty_plugin_fired");
                dlclose(module);
                assert_non_null(fired);
            }
            if (!fired()) {
                if (o.status != HA_OK)
                    fail_msg("%s not injected, yet %s -> %s: %s", spec, o.call, ha_status_string(o.status), o.message);
                break;
            }
            char expected[64];
            snprintf(expected, sizeof expected, "injected failure in %s (call %d)", entries[e], n);
            ha_status want = !strcmp(entries[e], "mem_alloc") ? HA_ERR_OUT_OF_MEMORY : HA_ERR_BACKEND;
            if (o.status != want || !strstr(o.message, expected))
                fail_msg("%s: %s -> %s: \"%s\" (expected %s and the plugin's \"%s\")", spec, o.call,
                         ha_status_string(o.status), o.message, ha_status_string(want), expected);
            per_entry++;
        }
        if (per_entry == 0)
            fail_msg("the sequence never calls the plugin's %s", entries[e]);
        print_message("      plugin %-12s failed at each of its %d calls in turn\n", entries[e], per_entry);
        injected += per_entry;
    }
    unsetenv("HASHATTN_FAULTY_FAIL");
    print_message("      %d injected plugin failures\n", injected);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alloc_weights_load),
        cmocka_unit_test(test_alloc_decode_reference),
        cmocka_unit_test(test_alloc_decode_probed),
        cmocka_unit_test(test_plugin_failures),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    printf("allocations failed in turn: %d (%d inside jansson reported as malformed JSON)\n", allocation_sites,
           json_as_format);
    return failed;
}
