/*
 * test_misuse.c — a host misusing the public API: handles that are NULL, never were handles, of the
 * wrong kind or already destroyed, at every handle argument of every entry point; closing twice and
 * using closed objects; destroying objects in any order; objects of different weights or runtimes
 * mixed; indices (layers, batch entries, counts, block-table entries) out of range; sizes whose
 * products overflow; stages called before the keys they need were encoded.
 *
 * Each case must return the documented status with an ha_last_error() naming the argument (void and
 * value calls: the message), and the outputs must be untouched (poisoned before, still poisoned
 * after) or, for `out` handles of create calls, NULL. Complements test_api_errors.c (malformed
 * arguments of each call); both print how many failure cases each entry point met.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashattn.h"
#include "test_expect.h"
#include "test_util.h"

#define HQ 4
#define HKV 2
#define DIM 16
#define LAYERS 3 /* layer 2 is dense */
#define DENSE_LAYER 2
#define MAX_BATCH 3
#define MAX_TOKENS 48
#define PAGE 8

typedef struct fixture {
    ha_runtime *rt, *rt_other;       /* rt_other: the reference backend                  */
    unsigned char *image;
    size_t image_size;
    ha_weights *w, *w_bits, *w_other; /* w_bits: 40-bit codes; w_other: loaded by rt_other */
    ha_plan *plan;
    ha_cache *cache, *cache_paged;
    /* handles already destroyed, one of each kind */
    ha_runtime *rt_dead;
    ha_weights *w_dead;
    ha_plan *plan_dead;
    ha_cache *cache_dead;
    tx_buffers b;
    int64_t max_kept;
    int host_memory;
} fixture;

static fixture fx;

#define EXPECT_OUTPUTS_UNTOUCHED() tx_outputs_expect_untouched(&fx.b.o, __LINE__)

static void set_lens(int32_t a, int32_t b, int32_t c)
{
    int32_t lens[MAX_BATCH] = {a, b, c};
    tu_to_dev(fx.rt, fx.b.lens, lens, sizeof lens);
}

/* ---- the fixture ---------------------------------------------------------------------------------- */

static ha_weights *load(ha_runtime *rt, int32_t bits, uint64_t seed)
{
    size_t size;
    unsigned char *img = tx_weights_image(LAYERS, 1u << DENSE_LAYER, bits, 2, 8, DIM, HQ, HQ, seed, &size);
    ha_weights *w = NULL;
    EXPECT_OK(ha_weights_load_memory(rt, img, size, &w));
    free(img);
    return w;
}

static ha_plan *make_plan(ha_runtime *rt, const ha_weights *w, int32_t max_batch)
{
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, max_batch, MAX_TOKENS, HQ, HKV, DIM);
    cfg.sink = 2;
    cfg.local = 3;
    cfg.heavy_fraction = 0.25;
    ha_plan *p = NULL;
    EXPECT_OK(ha_plan_create(rt, w, &cfg, &p));
    return p;
}

static ha_cache *make_cache(ha_runtime *rt, const ha_weights *w, int32_t page_size, int32_t max_batch,
                            int64_t tokens, int64_t pages)
{
    ha_cache_config cc = {sizeof cc, page_size, max_batch, tokens, pages};
    ha_cache *c = NULL;
    EXPECT_OK(ha_cache_create(rt, w, &cc, &c));
    return c;
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    if (ha_runtime_open(NULL, &fx.rt) != HA_OK)
        return -1;
    ha_runtime_options ref = {sizeof ref, "reference", 0};
    if (ha_runtime_open(&ref, &fx.rt_other) != HA_OK)
        return -1;
    fx.host_memory = ha_runtime_is_host_memory(fx.rt);
    fx.image = tx_weights_image(LAYERS, 1u << DENSE_LAYER, 32, 2, 8, DIM, HQ, HQ, 0x5eedull, &fx.image_size);
    EXPECT_OK(ha_weights_load_memory(fx.rt, fx.image, fx.image_size, &fx.w));
    fx.w_bits = load(fx.rt, 40, 0xb175ull);
    fx.w_other = load(fx.rt_other, 32, 0x07e4ull);
    fx.plan = make_plan(fx.rt, fx.w, MAX_BATCH);
    fx.max_kept = ha_plan_max_kept(fx.plan);

    tu_rng r;
    tu_rng_seed(&r, 0x1517ull);
    tx_buffers_create(&fx.b, fx.rt, &r, MAX_BATCH, HQ, HKV, DIM, MAX_TOKENS, PAGE, fx.max_kept, 1);
    fx.cache = make_cache(fx.rt, fx.w, 0, MAX_BATCH, MAX_TOKENS, 0);
    fx.cache_paged = make_cache(fx.rt, fx.w, PAGE, 0, 0, fx.b.kv_paged.capacity);

    /* one destroyed handle of each kind */
    EXPECT_OK(ha_runtime_open(&ref, &fx.rt_dead));
    ha_runtime_close(fx.rt_dead);
    fx.w_dead = load(fx.rt, 32, 0xdeadull);
    ha_weights_free(fx.w_dead);
    fx.plan_dead = make_plan(fx.rt, fx.w, MAX_BATCH);
    ha_plan_destroy(fx.plan_dead);
    fx.cache_dead = make_cache(fx.rt, fx.w, 0, 1, 8, 0);
    ha_cache_destroy(fx.cache_dead);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tx_buffers_destroy(&fx.b);
    ha_cache_destroy(fx.cache);
    ha_cache_destroy(fx.cache_paged);
    ha_plan_destroy(fx.plan);
    ha_weights_free(fx.w);
    ha_weights_free(fx.w_bits);
    ha_weights_free(fx.w_other);
    ha_runtime_close(fx.rt);
    ha_runtime_close(fx.rt_other);
    free(fx.image);
    return 0;
}

/** A well-formed step over the contiguous KV (lengths 40, 13, 5). */
static ha_step good_step(void)
{
    set_lens(40, 13, 5);
    ha_step s;
    memset(&s, 0, sizeof s);
    s.batch = MAX_BATCH;
    s.seq_lens = fx.b.lens;
    s.new_tokens = 1;
    s.q = tu_tensor3_backend(&fx.b.q);
    s.kv = tu_kv_backend(&fx.b.kv);
    s.out = tu_tensor3_backend(&fx.b.o.out);
    s.lse = fx.b.o.lse;
    return s;
}

/* ---- bad handles at every handle argument ------------------------------------------------------- */

/* The handles one call receives: all good except the one under test. */
typedef struct handles {
    ha_runtime *rt;
    ha_weights *w;
    ha_plan *plan;
    ha_cache *cache;
} handles;

enum { NO_STATUS = 100 }; /* what a wrapper of a void or value call returns */

typedef struct entry {
    const char *name;
    unsigned positions; /* bit per handle kind it takes: 1 rt, 2 w, 4 plan, 8 cache */
    int null_is_noop;   /* close/free/destroy: NULL is a documented no-op */
    ha_status (*call)(const handles *h);
} entry;

enum { P_RT = 1, P_W = 2, P_PLAN = 4, P_CACHE = 8 };

static ha_status neutral(int ok)
{
    if (!ok)
        fail_msg("a call with a bad handle returned something other than its neutral value");
    return (ha_status)NO_STATUS;
}

/** A create call that failed must have set its out handle to NULL. */
static ha_status out_cleared(ha_status st, const void *out, const char *fn)
{
    if (out)
        fail_msg("%s with a bad handle left *out = %p", fn, out);
    return st;
}

static ha_status call_runtime_close(const handles *h) { ha_runtime_close(h->rt); return neutral(1); }
static ha_status call_backend_name(const handles *h) { return neutral(!strcmp(ha_runtime_backend_name(h->rt), "")); }
static ha_status call_backend_description(const handles *h)
{
    return neutral(!strcmp(ha_runtime_backend_description(h->rt), ""));
}
static ha_status call_is_host_memory(const handles *h) { return neutral(ha_runtime_is_host_memory(h->rt) == 0); }
static ha_status call_mem_alloc(const handles *h)
{
    void *p = (void *)&fx;
    ha_status st = ha_mem_alloc(h->rt, 64, &p);
    return out_cleared(st, p, "ha_mem_alloc");
}
static ha_status call_mem_free(const handles *h) { ha_mem_free(h->rt, fx.b.o.lse); return neutral(1); }
static ha_status call_mem_copy(const handles *h)
{
    float host[4] = {1, 2, 3, 4};
    return ha_mem_copy(h->rt, fx.b.o.lse, host, sizeof host, HA_COPY_HOST_TO_BACKEND);
}
static ha_status call_synchronize(const handles *h) { return ha_synchronize(h->rt, NULL); }
static ha_status call_weights_load(const handles *h)
{
    ha_weights *w = (ha_weights *)&fx;
    ha_status st = ha_weights_load(h->rt, "/nonexistent/weights.safetensors", &w);
    return out_cleared(st, w, "ha_weights_load");
}
static ha_status call_weights_load_memory(const handles *h)
{
    ha_weights *w = (ha_weights *)&fx;
    ha_status st = ha_weights_load_memory(h->rt, fx.image, fx.image_size, &w);
    return out_cleared(st, w, "ha_weights_load_memory");
}
static ha_status call_weights_free(const handles *h) { ha_weights_free(h->w); return neutral(1); }
static ha_status call_weights_get_info(const handles *h)
{
    ha_weights_info info;
    memset(&info, TU_POISON, sizeof info);
    ha_status st = ha_weights_get_info(h->w, &info);
    if (!tu_is_poisoned(&info, sizeof info))
        fail_msg("ha_weights_get_info with a bad handle wrote its output");
    return st;
}
static ha_status call_layer_is_dense(const handles *h) { return neutral(ha_weights_layer_is_dense(h->w, 0) == -1); }
static ha_status call_plan_create(const handles *h)
{
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    ha_plan *p = (ha_plan *)&fx;
    ha_status st = ha_plan_create(h->rt, h->w, &cfg, &p);
    return out_cleared(st, p, "ha_plan_create");
}
static ha_status call_plan_destroy(const handles *h) { ha_plan_destroy(h->plan); return neutral(1); }
static ha_status call_plan_max_kept(const handles *h) { return neutral(ha_plan_max_kept(h->plan) == 0); }
static ha_status call_kept_for_length(const handles *h) { return neutral(ha_plan_kept_for_length(h->plan, 9) == 0); }
static ha_status call_selection_heads(const handles *h) { return neutral(ha_plan_selection_heads(h->plan) == 0); }
static ha_status call_cache_create(const handles *h)
{
    ha_cache_config cc = {sizeof cc, 0, 1, 8, 0};
    ha_cache *c = (ha_cache *)&fx;
    ha_status st = ha_cache_create(h->rt, h->w, &cc, &c);
    return out_cleared(st, c, "ha_cache_create");
}
static ha_status call_cache_destroy(const handles *h) { ha_cache_destroy(h->cache); return neutral(1); }
static ha_status call_cache_bytes(const handles *h) { return neutral(ha_cache_bytes(h->cache) == 0); }
static ha_status call_encode_keys(const handles *h)
{
    ha_step s = good_step();
    return ha_cache_encode_keys(h->plan, h->cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 40, NULL);
}
static ha_status call_encode_queries(const handles *h)
{
    ha_step s = good_step();
    return ha_encode_queries(h->plan, 0, &s.q, MAX_BATCH, fx.b.o.codes, NULL);
}
static ha_status call_match(const handles *h)
{
    ha_step s = good_step();
    return ha_match(h->plan, h->cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL);
}
static ha_status call_attend(const handles *h)
{
    ha_step s = good_step();
    return ha_attend(h->plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, &s.out, fx.b.o.lse, NULL);
}
static ha_status call_dense_attend(const handles *h)
{
    ha_step s = good_step();
    return ha_dense_attend(h->plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, &s.out, fx.b.o.lse, NULL);
}
static ha_status call_decode_step(const handles *h)
{
    ha_step s = good_step();
    return ha_decode_step(h->plan, h->cache, 0, &s);
}

static const entry entries[] = {
    {"ha_runtime_close", P_RT, 1, call_runtime_close},
    {"ha_runtime_backend_name", P_RT, 0, call_backend_name},
    {"ha_runtime_backend_description", P_RT, 0, call_backend_description},
    {"ha_runtime_is_host_memory", P_RT, 0, call_is_host_memory},
    {"ha_mem_alloc", P_RT, 0, call_mem_alloc},
    {"ha_mem_free", P_RT, 0, call_mem_free},
    {"ha_mem_copy", P_RT, 0, call_mem_copy},
    {"ha_synchronize", P_RT, 0, call_synchronize},
    {"ha_weights_load", P_RT, 0, call_weights_load},
    {"ha_weights_load_memory", P_RT, 0, call_weights_load_memory},
    {"ha_weights_free", P_W, 1, call_weights_free},
    {"ha_weights_get_info", P_W, 0, call_weights_get_info},
    {"ha_weights_layer_is_dense", P_W, 0, call_layer_is_dense},
    {"ha_plan_create", P_RT | P_W, 0, call_plan_create},
    {"ha_plan_destroy", P_PLAN, 1, call_plan_destroy},
    {"ha_plan_max_kept", P_PLAN, 0, call_plan_max_kept},
    {"ha_plan_kept_for_length", P_PLAN, 0, call_kept_for_length},
    {"ha_plan_selection_heads", P_PLAN, 0, call_selection_heads},
    {"ha_cache_create", P_RT | P_W, 0, call_cache_create},
    {"ha_cache_destroy", P_CACHE, 1, call_cache_destroy},
    {"ha_cache_bytes", P_CACHE, 0, call_cache_bytes},
    {"ha_cache_encode_keys", P_PLAN | P_CACHE, 0, call_encode_keys},
    {"ha_encode_queries", P_PLAN, 0, call_encode_queries},
    {"ha_match", P_PLAN | P_CACHE, 0, call_match},
    {"ha_attend", P_PLAN, 0, call_attend},
    {"ha_dense_attend", P_PLAN, 0, call_dense_attend},
    {"ha_decode_step", P_PLAN | P_CACHE, 0, call_decode_step},
};

static const char *arg_of(unsigned position)
{
    return position == P_RT ? "rt" : position == P_W ? "w" : position == P_PLAN ? "plan" : "cache";
}

/** Sets the handle at position to value (any pointer-sized bits). */
static void substitute(handles *h, unsigned position, void *value)
{
    switch (position) {
    case P_RT: h->rt = value; break;
    case P_W: h->w = value; break;
    case P_PLAN: h->plan = value; break;
    default: h->cache = value; break;
    }
}

/** A live handle of another kind than position's. */
static void *other_kind(unsigned position)
{
    return position == P_RT ? (void *)fx.plan : position == P_W ? (void *)fx.cache : position == P_PLAN ? (void *)fx.w : (void *)fx.rt;
}

static void *destroyed(unsigned position)
{
    return position == P_RT ? (void *)fx.rt_dead : position == P_W ? (void *)fx.w_dead
           : position == P_PLAN ? (void *)fx.plan_dead : (void *)fx.cache_dead;
}

/** Runs e with the bad value at position and checks the outcome. */
static void expect_rejected(const entry *e, unsigned position, void *value, ha_status expected, const char *what)
{
    handles h = {fx.rt, fx.w, fx.plan, fx.cache};
    substitute(&h, position, value);
    ha_status st = e->call(&h);
    char call[160];
    snprintf(call, sizeof call, "%s (%s = %s)", e->name, arg_of(position), what);
    if (st == (ha_status)NO_STATUS)
        tx_expect_error_message(arg_of(position), call, __LINE__);
    else
        tx_expect_failure(st, BIT(expected), arg_of(position), call, __LINE__);
}

static void test_bad_handles_everywhere(void **state)
{
    (void)state;
    int local = 0;
    void *never[] = {(void *)(uintptr_t)1, (void *)(uintptr_t)0xdeadbeef, (void *)&local, (void *)&fx,
                     (void *)(uintptr_t)UINTPTR_MAX, (void *)((uintptr_t)7 << 32 | 0xfffffu)};
    const char *never_names[] = {"1", "0xdeadbeef", "a stack address", "a data address", "UINTPTR_MAX",
                                 "generation 7 of an unused slot"};
    set_lens(40, 13, 5);
    tx_outputs_poison(&fx.b.o);
    int cases = 0;
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        const entry *e = &entries[i];
        for (unsigned position = 1; position <= P_CACHE; position <<= 1) {
            if (!(e->positions & position))
                continue;
            handles h = {fx.rt, fx.w, fx.plan, fx.cache};
            substitute(&h, position, NULL);
            if (e->null_is_noop || (position == P_W && !strcmp(e->name, "ha_plan_create"))) {
                /* documented as allowed: NULL closes nothing; a plan without weights is dense-only */
                if (e->null_is_noop) {
                    ha_status st = e->call(&h);
                    assert_int_equal(st, NO_STATUS);
                    assert_string_equal(ha_last_error(), "");
                }
            } else {
                expect_rejected(e, position, NULL, HA_ERR_INVALID_ARGUMENT, "NULL");
                cases++;
            }
            for (size_t k = 0; k < sizeof never / sizeof never[0]; k++, cases++)
                expect_rejected(e, position, never[k], HA_ERR_INVALID_ARGUMENT, never_names[k]);
            expect_rejected(e, position, other_kind(position), HA_ERR_INVALID_ARGUMENT, "a handle of another kind");
            const char *expected_kind = position == P_RT ? "runtime" : position == P_W ? "weights" : arg_of(position);
            if (!strstr(ha_last_error(), "handle, not a") || !tx_mentions(ha_last_error(), expected_kind))
                fail_msg("%s: the message \"%s\" does not say which kinds were mixed", e->name, ha_last_error());
            expect_rejected(e, position, destroyed(position), HA_ERR_STATE, "a destroyed handle");
            if (!tx_mentions(ha_last_error(), "destroyed"))
                fail_msg("%s: the message \"%s\" does not say the handle was destroyed", e->name, ha_last_error());
            cases += 2;
        }
    }
    EXPECT_OUTPUTS_UNTOUCHED();
    print_message("      %d bad-handle cases over %zu entry points\n", cases, sizeof entries / sizeof entries[0]);
    /* the fixture's objects are all still usable: nothing above freed or closed them */
    assert_true(ha_plan_max_kept(fx.plan) > 0);
    assert_true(ha_cache_bytes(fx.cache) > 0);
    assert_true(strlen(ha_runtime_backend_name(fx.rt)) > 0);
    ha_weights_info info;
    EXPECT_OK(ha_weights_get_info(fx.w, &info));
}

/* ---- closing twice, stale handles whose slot was reused, destruction order --------------------- */

static void test_destroy_twice(void **state)
{
    (void)state;
    ha_runtime_options ref = {sizeof ref, "reference", 0};
    ha_runtime *rt = NULL;
    EXPECT_OK(ha_runtime_open(&ref, &rt));
    ha_weights *w = load(rt, 32, 0x7717ull);
    ha_plan *plan = make_plan(rt, w, 1);
    ha_cache *cache = make_cache(rt, w, 0, 1, 16, 0);

    ha_cache_destroy(cache);
    assert_string_equal(ha_last_error(), "");
    EXPECT_ERROR_MESSAGE(ha_cache_destroy(cache), "cache");
    EXPECT_FAIL(ha_cache_bytes(cache) == 0 ? HA_ERR_STATE : HA_OK, HA_ERR_STATE, "cache");
    ha_plan_destroy(plan);
    EXPECT_ERROR_MESSAGE(ha_plan_destroy(plan), "plan");
    ha_weights_free(w);
    EXPECT_ERROR_MESSAGE(ha_weights_free(w), "w");
    ha_runtime_close(rt);
    assert_string_equal(ha_last_error(), "");
    EXPECT_ERROR_MESSAGE(ha_runtime_close(rt), "rt");
    EXPECT_ERROR_MESSAGE(ha_runtime_close(rt), "rt"); /* and a third time */
    assert_true(tx_mentions(ha_last_error(), "destroyed"));
}

static void test_stale_handle_after_slot_reuse(void **state)
{
    (void)state;
    /* the registry recycles slots: a new plan may take the old one's slot (and its old address) */
    ha_plan *old = make_plan(fx.rt, fx.w, 1);
    ha_plan_destroy(old);
    ha_plan *fresh = make_plan(fx.rt, fx.w, 2);
    assert_ptr_not_equal(old, fresh);
    EXPECT_FAIL(ha_plan_max_kept(old) == 0 ? HA_ERR_STATE : HA_OK, HA_ERR_STATE, "plan");
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
    EXPECT_FAIL(ha_dense_attend(old, &s.q, &s.kv, 2, fx.b.lens, &s.out, NULL, NULL), HA_ERR_STATE, "plan");
    EXPECT_ERROR_MESSAGE(ha_plan_destroy(old), "plan");
    EXPECT_OUTPUTS_UNTOUCHED();
    /* the new plan is unharmed by the stale handle's calls */
    EXPECT_OK(ha_dense_attend(fresh, &s.q, &s.kv, 2, fx.b.lens, &s.out, NULL, NULL));
    ha_plan_destroy(fresh);
    assert_string_equal(ha_last_error(), "");
}

/** Objects outlive the handles of what they were made from: free the weights and close the runtime
 *  first, then run a step with the plan and cache (host memory: the reference backend). */
static void test_destruction_order(void **state)
{
    (void)state;
    ha_runtime_options ref = {sizeof ref, "reference", 0};
    ha_runtime *rt = NULL;
    EXPECT_OK(ha_runtime_open(&ref, &rt));
    ha_weights *w = load(rt, 32, 0x0dd5ull);
    ha_plan *plan = make_plan(rt, w, MAX_BATCH);
    ha_cache *cache = make_cache(rt, w, 0, MAX_BATCH, MAX_TOKENS, 0);
    ha_weights_free(w);
    EXPECT_FAIL(ha_weights_get_info(w, &(ha_weights_info){0}), HA_ERR_STATE, "w");
    ha_cache_config cc = {sizeof cc, 0, 1, 8, 0};
    ha_cache *c2 = (ha_cache *)&fx;
    EXPECT_FAIL(ha_cache_create(rt, w, &cc, &c2), HA_ERR_STATE, "w");
    assert_null(c2);
    ha_runtime_close(rt);
    EXPECT_FAIL(ha_synchronize(rt, NULL), HA_ERR_STATE, "rt");

    /* host copies of the fixture's tensors serve as this host-memory backend's memory */
    int32_t lens[MAX_BATCH] = {40, 13, 5};
    ha_kv kv = tu_kv_backend(&fx.b.kv);
    kv.k = fx.b.kv.k;
    kv.v = fx.b.kv.v;
    ha_tensor3 q = tu_tensor3_backend(&fx.b.q), out = tu_tensor3_backend(&fx.b.o.out);
    q.data = fx.b.q.host;
    void *out_host = malloc(fx.b.o.out.bytes);
    assert_non_null(out_host);
    tu_poison(out_host, fx.b.o.out.bytes);
    out.data = out_host;
    ha_step s = {MAX_BATCH, lens, 1, q, kv, out, NULL, NULL};
    EXPECT_OK(ha_cache_encode_keys(plan, cache, 0, &kv, MAX_BATCH, lens, 40, NULL));
    EXPECT_OK(ha_decode_step(plan, cache, 0, &s));
    const float *o = out_host;
    for (int32_t b = 0; b < MAX_BATCH; b++)
        for (int32_t h = 0; h < HQ; h++)
            for (int32_t d = 0; d < DIM; d++)
                assert_true(isfinite(o[b * fx.b.o.out.stride_batch + h * fx.b.o.out.stride_head + d]));
    free(out_host);
    /* the last user releases the weights, then the runtime (LeakSanitizer checks nothing stays) */
    ha_plan_destroy(plan);
    ha_cache_destroy(cache);
    assert_string_equal(ha_last_error(), "");
}

/* Backend memory: ha_mem_free takes only live blocks of its own runtime. */
static void test_mem_free_misuse(void **state)
{
    (void)state;
    void *p = NULL, *other = NULL, *big = NULL;
    EXPECT_OK(ha_mem_alloc(fx.rt, 100, &p));
    ha_mem_free(fx.rt, p);
    assert_string_equal(ha_last_error(), "");
    EXPECT_ERROR_MESSAGE(ha_mem_free(fx.rt, p), "ptr"); /* twice */
    EXPECT_OK(ha_mem_alloc(fx.rt_other, 64, &other));
    EXPECT_ERROR_MESSAGE(ha_mem_free(fx.rt, other), "ptr"); /* another runtime's block */
    ha_mem_free(fx.rt_other, other);                        /* still there for its own runtime */
    assert_string_equal(ha_last_error(), "");
    EXPECT_OK(ha_mem_alloc(fx.rt, 256, &big));
    EXPECT_ERROR_MESSAGE(ha_mem_free(fx.rt, (char *)big + 64), "ptr"); /* inside a block */
    int local;
    EXPECT_ERROR_MESSAGE(ha_mem_free(fx.rt, &local), "ptr");
    ha_mem_free(fx.rt, big);
    ha_mem_free(fx.rt, NULL);
    assert_string_equal(ha_last_error(), "");

    /* many blocks freed in random order, each freed twice: the first free works, the second is refused */
    enum { N = 1500 };
    void **blocks = malloc(N * sizeof *blocks);
    int32_t *order = malloc(2 * N * sizeof *order);
    assert_true(blocks && order);
    for (int i = 0; i < N; i++) {
        EXPECT_OK(ha_mem_alloc(fx.rt, (size_t)(1 + i % 97), &blocks[i]));
        order[i] = order[N + i] = i;
    }
    tu_rng r;
    tu_rng_seed(&r, 0xf7eeull);
    tu_rng_shuffle(&r, order, 2 * N);
    char *freed = calloc(N, 1);
    assert_non_null(freed);
    int refused = 0;
    for (int k = 0; k < 2 * N; k++) {
        int i = order[k];
        ha_mem_free(fx.rt, blocks[i]);
        if (freed[i]) { /* checked here, not tallied: 1500 alike cases would swamp the counts */
            if (!tx_mentions(ha_last_error(), "ptr"))
                fail_msg("freeing block %d twice: \"%s\" does not name ptr", i, ha_last_error());
            refused++;
        } else if (*ha_last_error()) {
            fail_msg("freeing block %d the first time: %s", i, ha_last_error());
        }
        freed[i] = 1;
    }
    assert_int_equal(refused, N);
    free(freed);
    free(order);
    free(blocks);
}

/* A log callback that destroys an object: the registry must not hold its lock while logging. */
static ha_plan *callback_victim;

static void destroy_in_callback(void *user, ha_log_level level, const char *message)
{
    (void)user;
    (void)level;
    (void)message;
    ha_plan *p = callback_victim;
    callback_victim = NULL;
    ha_plan_destroy(p);
}

static void test_log_callback_calls_back(void **state)
{
    (void)state;
    callback_victim = make_plan(fx.rt, fx.w, 1);
    ha_set_log_callback(destroy_in_callback, NULL, HA_LOG_WARN);
    ha_plan_destroy(fx.plan_dead); /* fails, logs: the callback destroys another plan (would deadlock) */
    ha_cache_destroy(fx.cache_dead);
    ha_set_log_callback(NULL, NULL, HA_LOG_WARN);
    assert_null(callback_victim);
}

/* ---- objects that do not belong together ------------------------------------------------------- */

static void test_mixed_objects(void **state)
{
    (void)state;
    const ha_status inval = HA_ERR_INVALID_ARGUMENT;
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    ha_plan *p = (ha_plan *)&fx;
    EXPECT_FAIL(ha_plan_create(fx.rt, fx.w_other, &cfg, &p), inval, "w");
    assert_null(p);
    ha_cache_config cc = {sizeof cc, 0, MAX_BATCH, MAX_TOKENS, 0};
    ha_cache *c = (ha_cache *)&fx;
    EXPECT_FAIL(ha_cache_create(fx.rt, fx.w_other, &cc, &c), inval, "w");
    assert_null(c);

    ha_plan *plan_bits = make_plan(fx.rt, fx.w_bits, MAX_BATCH);             /* 40-bit codes */
    ha_plan *plan_other = make_plan(fx.rt_other, fx.w_other, MAX_BATCH);     /* another runtime */
    ha_cache *cache_other = make_cache(fx.rt_other, fx.w_other, 0, MAX_BATCH, MAX_TOKENS, 0);
    ha_cache *small = make_cache(fx.rt, fx.w, 0, 2, 24, 0);                   /* fewer sequences, tokens */
    ha_cache *few_pages = make_cache(fx.rt, fx.w, PAGE, 0, 0, 3);             /* smaller than the pool */
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
    /* a cache of other weights (other bits), of another runtime's weights */
    EXPECT_FAIL(ha_decode_step(plan_bits, fx.cache, 0, &s), inval, "cache");
    EXPECT_FAIL(ha_match(plan_bits, fx.cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                inval, "cache");
    EXPECT_FAIL(ha_cache_encode_keys(plan_bits, fx.cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 4, NULL), inval, "cache");
    EXPECT_FAIL(ha_decode_step(fx.plan, cache_other, 0, &s), inval, "cache");
    EXPECT_FAIL(ha_decode_step(plan_other, fx.cache, 0, &s), inval, "cache");
    EXPECT_FAIL(ha_cache_encode_keys(fx.plan, cache_other, 0, &s.kv, MAX_BATCH, fx.b.lens, 4, NULL), inval, "cache");
    /* a plan for 3 sequences with a cache of 2 */
    EXPECT_FAIL(ha_decode_step(fx.plan, small, 0, &s), inval, "max_batch");
    EXPECT_FAIL(ha_cache_encode_keys(fx.plan, small, 0, &s.kv, MAX_BATCH, fx.b.lens, 4, NULL), inval, "max_batch");
    if (fx.host_memory) {
        /* 40 tokens in a cache of 24 per sequence */
        EXPECT_FAIL(ha_decode_step(fx.plan, small, 0, &(ha_step){.batch = 2, .seq_lens = fx.b.lens, .new_tokens = 1,
                                                                   .q = s.q, .kv = s.kv, .out = s.out}),
                    inval, "cache");
        /* a paged KV whose pages exist in the pool but not in the smaller cache */
        ha_step p8 = good_step();
        p8.kv = tu_kv_backend(&fx.b.kv_paged);
        EXPECT_FAIL(ha_decode_step(fx.plan, few_pages, 0, &p8), inval, "block_table");
        EXPECT_FAIL(ha_cache_encode_keys(fx.plan, few_pages, 0, &p8.kv, MAX_BATCH, fx.b.lens, 8, NULL), inval,
                    "block_table");
    }
    EXPECT_OUTPUTS_UNTOUCHED();
    ha_cache_destroy(few_pages);
    ha_cache_destroy(small);
    ha_cache_destroy(cache_other);
    ha_plan_destroy(plan_other);
    ha_plan_destroy(plan_bits);
}

/* ---- NULL in every pointer argument and pointer field of the stages ------------------------------- */

static void test_null_pointers(void **state)
{
    (void)state;
    const ha_status inval = HA_ERR_INVALID_ARGUMENT;
    ha_step s = good_step();
    ha_plan *p = fx.plan;
    ha_cache *c = fx.cache;
    const int32_t *lens = fx.b.lens;
    int32_t *idx = fx.b.o.indices, *cnt = fx.b.o.counts;
    ha_tensor3 q_null = s.q, out_null = s.out;
    q_null.data = NULL;
    out_null.data = NULL;
    ha_kv k_null = s.kv, v_null = s.kv;
    k_null.k = NULL;
    v_null.v = NULL;
    tx_outputs_poison(&fx.b.o);
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, NULL, MAX_BATCH, lens, 4, NULL), inval, "kv");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &k_null, MAX_BATCH, lens, 4, NULL), inval, "k");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &s.kv, MAX_BATCH, NULL, 4, NULL), inval, "seq_end");
    EXPECT_FAIL(ha_encode_queries(p, 0, NULL, MAX_BATCH, fx.b.o.codes, NULL), inval, "q");
    EXPECT_FAIL(ha_encode_queries(p, 0, &q_null, MAX_BATCH, fx.b.o.codes, NULL), inval, "q");
    EXPECT_FAIL(ha_encode_queries(p, 0, &s.q, MAX_BATCH, NULL, NULL), inval, "codes");
    EXPECT_FAIL(ha_match(p, c, 0, NULL, &s.kv, MAX_BATCH, lens, idx, cnt, NULL), inval, "q_codes");
    EXPECT_FAIL(ha_match(p, c, 0, fx.b.o.codes, NULL, MAX_BATCH, lens, idx, cnt, NULL), inval, "kv");
    EXPECT_FAIL(ha_match(p, c, 0, fx.b.o.codes, &s.kv, MAX_BATCH, NULL, idx, cnt, NULL), inval, "seq_lens");
    EXPECT_FAIL(ha_match(p, c, 0, fx.b.o.codes, &s.kv, MAX_BATCH, lens, NULL, cnt, NULL), inval, "indices");
    EXPECT_FAIL(ha_match(p, c, 0, fx.b.o.codes, &s.kv, MAX_BATCH, lens, idx, NULL, NULL), inval, "counts");
    EXPECT_FAIL(ha_match(p, NULL, 0, fx.b.o.codes, &s.kv, MAX_BATCH, lens, idx, cnt, NULL), inval, "cache");
    /* attend, dense attend: every pointer and pointer field */
    EXPECT_FAIL(ha_attend(p, NULL, &s.kv, MAX_BATCH, lens, idx, cnt, &s.out, NULL, NULL), inval, "q");
    EXPECT_FAIL(ha_attend(p, &q_null, &s.kv, MAX_BATCH, lens, idx, cnt, &s.out, NULL, NULL), inval, "q");
    EXPECT_FAIL(ha_attend(p, &s.q, NULL, MAX_BATCH, lens, idx, cnt, &s.out, NULL, NULL), inval, "kv");
    EXPECT_FAIL(ha_attend(p, &s.q, &k_null, MAX_BATCH, lens, idx, cnt, &s.out, NULL, NULL), inval, "k");
    EXPECT_FAIL(ha_attend(p, &s.q, &v_null, MAX_BATCH, lens, idx, cnt, &s.out, NULL, NULL), inval, "v");
    EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, MAX_BATCH, NULL, idx, cnt, &s.out, NULL, NULL), inval, "seq_lens");
    EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, MAX_BATCH, lens, NULL, cnt, &s.out, NULL, NULL), inval, "indices");
    EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, MAX_BATCH, lens, idx, NULL, &s.out, NULL, NULL), inval, "counts");
    EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, MAX_BATCH, lens, idx, cnt, NULL, NULL, NULL), inval, "out");
    EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, MAX_BATCH, lens, idx, cnt, &out_null, NULL, NULL), inval, "out");
    EXPECT_FAIL(ha_dense_attend(p, NULL, &s.kv, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "q");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, NULL, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "kv");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, &k_null, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "k");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, &v_null, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "v");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, &s.kv, MAX_BATCH, NULL, &s.out, NULL, NULL), inval, "seq_lens");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, &s.kv, MAX_BATCH, lens, &out_null, NULL, NULL), inval, "out");
    /* a paged KV without its block table, for every stage that reads it */
    ha_kv no_table = tu_kv_backend(&fx.b.kv_paged);
    no_table.block_table = NULL;
    ha_cache *cp = fx.cache_paged;
    EXPECT_FAIL(ha_cache_encode_keys(p, cp, 0, &no_table, MAX_BATCH, lens, 4, NULL), inval, "block_table");
    EXPECT_FAIL(ha_match(p, cp, 0, fx.b.o.codes, &no_table, MAX_BATCH, lens, idx, cnt, NULL), inval, "block_table");
    EXPECT_FAIL(ha_dense_attend(p, &s.q, &no_table, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "block_table");
    EXPECT_OUTPUTS_UNTOUCHED();
}

/* ---- indices out of range ---------------------------------------------------------------------- */

static void test_indices_out_of_range(void **state)
{
    (void)state;
    const ha_status inval = HA_ERR_INVALID_ARGUMENT;
    ha_step s = good_step();
    ha_plan *p = fx.plan;
    ha_cache *c = fx.cache;
    const int32_t *lens = fx.b.lens;
    tx_outputs_poison(&fx.b.o);
    const int32_t bad_layers[] = {-1, LAYERS, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_layers / sizeof bad_layers[0]; i++) {
        int32_t l = bad_layers[i];
        EXPECT_FAIL(ha_cache_encode_keys(p, c, l, &s.kv, MAX_BATCH, lens, 4, NULL), inval, "layer");
        EXPECT_FAIL(ha_encode_queries(p, l, &s.q, MAX_BATCH, fx.b.o.codes, NULL), inval, "layer");
        EXPECT_FAIL(ha_match(p, c, l, fx.b.o.codes, &s.kv, MAX_BATCH, lens, fx.b.o.indices, fx.b.o.counts, NULL), inval, "layer");
        EXPECT_FAIL(ha_decode_step(p, c, l, &s), inval, "layer");
        int dense = 0;
        EXPECT_ERROR_MESSAGE(dense = ha_weights_layer_is_dense(fx.w, l), "layer");
        assert_int_equal(dense, -1);
    }
    const int32_t bad_batches[] = {0, -1, MAX_BATCH + 1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_batches / sizeof bad_batches[0]; i++) {
        int32_t b = bad_batches[i];
        ha_step bad = s;
        bad.batch = b;
        EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &s.kv, b, lens, 4, NULL), inval, "batch");
        EXPECT_FAIL(ha_encode_queries(p, 0, &s.q, b, fx.b.o.codes, NULL), inval, "batch");
        EXPECT_FAIL(ha_match(p, c, 0, fx.b.o.codes, &s.kv, b, lens, fx.b.o.indices, fx.b.o.counts, NULL), inval, "batch");
        EXPECT_FAIL(ha_attend(p, &s.q, &s.kv, b, lens, fx.b.o.indices, fx.b.o.counts, &s.out, NULL, NULL), inval, "batch");
        EXPECT_FAIL(ha_dense_attend(p, &s.q, &s.kv, b, lens, &s.out, NULL, NULL), inval, "batch");
        EXPECT_FAIL(ha_decode_step(p, c, 0, &bad), inval, "batch");
    }
    const int32_t bad_counts[] = {-1, MAX_TOKENS + 1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_counts / sizeof bad_counts[0]; i++) {
        EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &s.kv, MAX_BATCH, lens, bad_counts[i], NULL), inval, "count");
        ha_step bad = s;
        bad.new_tokens = bad_counts[i];
        EXPECT_FAIL(ha_decode_step(p, c, 0, &bad), inval, "new_tokens");
    }
    if (fx.host_memory) {
        /* block-table entries outside the pool, in a page the sequence uses, for every stage reading K or codes */
        ha_kv kv = tu_kv_backend(&fx.b.kv_paged);
        ha_step sp = s;
        sp.kv = kv;
        size_t bytes = (size_t)MAX_BATCH * (size_t)fx.b.kv_paged.block_table_stride * sizeof(int32_t);
        int32_t *table = malloc(bytes);
        assert_non_null(table);
        const int32_t bad_ids[] = {-1, (int32_t)fx.b.kv_paged.capacity, INT32_MAX, INT32_MIN};
        for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
            memcpy(table, fx.b.kv_paged.block_table, bytes);
            table[2 * fx.b.kv_paged.block_table_stride] = bad_ids[i]; /* sequence 2, page 0 */
            tu_to_dev(fx.rt, fx.b.kv_paged.block_table_dev, table, bytes);
            ha_cache *cp = fx.cache_paged;
            EXPECT_FAIL(ha_cache_encode_keys(p, cp, 0, &kv, MAX_BATCH, lens, 4, NULL), inval, "block_table");
            EXPECT_FAIL(ha_match(p, cp, 0, fx.b.o.codes, &kv, MAX_BATCH, lens, fx.b.o.indices, fx.b.o.counts, NULL), inval,
                        "block_table");
            EXPECT_FAIL(ha_attend(p, &s.q, &kv, MAX_BATCH, lens, fx.b.o.indices, fx.b.o.counts, &s.out, NULL, NULL), inval,
                        "block_table");
            EXPECT_FAIL(ha_dense_attend(p, &s.q, &kv, MAX_BATCH, lens, &s.out, NULL, NULL), inval, "block_table");
            EXPECT_FAIL(ha_decode_step(p, cp, 0, &sp), inval, "block_table");
        }
        tu_to_dev(fx.rt, fx.b.kv_paged.block_table_dev, fx.b.kv_paged.block_table, bytes);
        free(table);
    }
    EXPECT_OUTPUTS_UNTOUCHED();
}

/* ---- sizes whose products overflow ------------------------------------------------------------- */

static void test_overflowing_sizes(void **state)
{
    (void)state;
    const ha_status over = HA_ERR_OVERFLOW;
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
#define STEP_OVERFLOWS(field, value, word)                                                                    \
    do {                                                                                                      \
        ha_step bad_ = good_step();                                                                           \
        bad_.field = value;                                                                                   \
        EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, 0, &bad_), over, word);                                 \
        EXPECT_FAIL(ha_dense_attend(fx.plan, &bad_.q, &bad_.kv, MAX_BATCH, fx.b.lens, &bad_.out, NULL, NULL), over, \
                    word);                                                                                    \
    } while (0)
    STEP_OVERFLOWS(q.stride_batch, INT64_MAX / 2, "q");
    STEP_OVERFLOWS(q.stride_head, INT64_MAX / 3, "q");
    STEP_OVERFLOWS(out.stride_batch, INT64_MAX / 2, "out");
    STEP_OVERFLOWS(out.stride_head, INT64_MAX / 4, "out");
    STEP_OVERFLOWS(kv.stride_seq, INT64_MAX / 2, "kv");
    STEP_OVERFLOWS(kv.stride_token, INT64_MAX / 8, "kv");
    STEP_OVERFLOWS(kv.stride_head, INT64_MAX / 2, "kv");
    STEP_OVERFLOWS(kv.capacity, INT64_MAX, "kv");
#undef STEP_OVERFLOWS
    ha_tensor3 q = s.q;
    q.stride_batch = INT64_MAX / 2;
    EXPECT_FAIL(ha_encode_queries(fx.plan, 0, &q, MAX_BATCH, fx.b.o.codes, NULL), over, "q");
    ha_kv kv = s.kv;
    kv.stride_token = INT64_MAX / 16;
    EXPECT_FAIL(ha_cache_encode_keys(fx.plan, fx.cache, 0, &kv, MAX_BATCH, fx.b.lens, 4, NULL), over, "kv");
    EXPECT_FAIL(ha_match(fx.plan, fx.cache, 0, fx.b.o.codes, &kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL), over,
                "kv");
    float host[4];
    EXPECT_FAIL(ha_mem_copy(fx.rt, fx.b.o.lse, host, SIZE_MAX, HA_COPY_HOST_TO_BACKEND), over, "bytes");
    void *mem = (void *)&fx;
    EXPECT_FAIL(ha_mem_alloc(fx.rt, SIZE_MAX / 2 + 1, &mem), over, "bytes");
    assert_null(mem);
    EXPECT_OUTPUTS_UNTOUCHED();

    /* budgets near INT64_MAX neither overflow nor fail: kept tokens are capped by the length */
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, 1, MAX_TOKENS, HQ, HKV, DIM);
    cfg.heavy_fraction = 0.0;
    cfg.heavy_count = INT64_MAX;
    ha_plan *p = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, fx.w, &cfg, &p));
    assert_int_equal(ha_plan_max_kept(p), MAX_TOKENS);
    assert_int_equal(ha_plan_kept_for_length(p, INT64_MAX), INT64_MAX);
    assert_int_equal(ha_plan_kept_for_length(p, 7), 7);
    ha_plan_destroy(p);
    cfg.heavy_fraction = 1.0;
    EXPECT_OK(ha_plan_create(fx.rt, fx.w, &cfg, &p));
    assert_int_equal(ha_plan_kept_for_length(p, INT64_MAX), INT64_MAX);
    assert_int_equal(ha_plan_kept_for_length(p, -5), 0);
    ha_plan_destroy(p);
}

/* ---- calls in the wrong order ------------------------------------------------------------------- */

static void test_wrong_order(void **state)
{
    (void)state;
    if (!fx.host_memory)
        skip(); /* the encoded prefix is tracked where the core can read the lengths */
    const ha_status st_state = HA_ERR_STATE;
    ha_cache *cache = make_cache(fx.rt, fx.w, 0, MAX_BATCH, MAX_TOKENS, 0);
    ha_cache *paged = make_cache(fx.rt, fx.w, PAGE, 0, 0, fx.b.kv_paged.capacity);
    ha_step s = good_step(); /* lengths 40, 13, 5 */
    ha_step sp = s;
    sp.kv = tu_kv_backend(&fx.b.kv_paged);
    tx_outputs_poison(&fx.b.o);
    /* selecting before any key was encoded */
    EXPECT_FAIL(ha_match(fx.plan, cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                st_state, "ha_cache_encode_keys");
    EXPECT_FAIL(ha_decode_step(fx.plan, cache, 0, &s), st_state, "ha_cache_encode_keys");
    EXPECT_FAIL(ha_decode_step(fx.plan, paged, 0, &sp), st_state, "ha_cache_encode_keys");
    EXPECT_FAIL(ha_match(fx.plan, paged, 0, fx.b.o.codes, &sp.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                st_state, "ha_cache_encode_keys");
    /* only the last 13 tokens of each prompt encoded: the start of sequence 0 is missing */
    EXPECT_OK(ha_cache_encode_keys(fx.plan, cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 13, NULL));
    EXPECT_FAIL(ha_match(fx.plan, cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                st_state, "ha_cache_encode_keys");
    /* another layer's keys do not count */
    EXPECT_OK(ha_cache_encode_keys(fx.plan, paged, 1, &sp.kv, MAX_BATCH, fx.b.lens, 40, NULL));
    EXPECT_FAIL(ha_decode_step(fx.plan, paged, 0, &sp), st_state, "ha_cache_encode_keys");
    EXPECT_OUTPUTS_UNTOUCHED();

    /* in order, the same calls succeed */
    set_lens(39, 12, 4);
    EXPECT_OK(ha_cache_encode_keys(fx.plan, cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 39, NULL));
    EXPECT_OK(ha_cache_encode_keys(fx.plan, paged, 0, &sp.kv, MAX_BATCH, fx.b.lens, 39, NULL));
    set_lens(40, 13, 5); /* one new token each, encoded by the step */
    EXPECT_OK(ha_decode_step(fx.plan, cache, 0, &s));
    EXPECT_OK(ha_decode_step(fx.plan, paged, 0, &sp));
    EXPECT_OK(ha_match(fx.plan, cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL));
    /* skipping a token: length 42 with one new token leaves token 40 without a code */
    tx_outputs_poison(&fx.b.o);
    set_lens(42, 14, 6);
    EXPECT_FAIL(ha_decode_step(fx.plan, cache, 0, &s), st_state, "ha_cache_encode_keys");
    EXPECT_FAIL(ha_decode_step(fx.plan, paged, 0, &sp), st_state, "ha_cache_encode_keys");
    EXPECT_OUTPUTS_UNTOUCHED();
    /* a slot taken over by a new sequence: encoding from token 0 replaces what it held */
    set_lens(3, 14, 6);
    EXPECT_OK(ha_cache_encode_keys(fx.plan, cache, 0, &s.kv, 1, fx.b.lens, 3, NULL));
    set_lens(30, 14, 6);
    EXPECT_FAIL(ha_match(fx.plan, cache, 0, fx.b.o.codes, &s.kv, 1, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL), st_state,
                "ha_cache_encode_keys");
    /* dense layers and empty sequences need no codes */
    set_lens(0, 0, 0);
    EXPECT_OK(ha_match(fx.plan, fx.cache_paged, 0, fx.b.o.codes, &sp.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL));
    set_lens(40, 13, 5);
    s.new_tokens = 0;
    EXPECT_OK(ha_decode_step(fx.plan, NULL, DENSE_LAYER, &s));
    ha_cache_destroy(paged);
    ha_cache_destroy(cache);

    /* a plan made without weights cannot run the sparse stages */
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    ha_plan *dense = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, NULL, &cfg, &dense));
    tx_outputs_poison(&fx.b.o);
    EXPECT_FAIL(ha_encode_queries(dense, 0, &s.q, MAX_BATCH, fx.b.o.codes, NULL), st_state, "weights");
    EXPECT_FAIL(ha_cache_encode_keys(dense, fx.cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 4, NULL), st_state, "weights");
    EXPECT_FAIL(ha_match(dense, fx.cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                st_state, "weights");
    EXPECT_OUTPUTS_UNTOUCHED();
    EXPECT_OK(ha_dense_attend(dense, &s.q, &s.kv, MAX_BATCH, fx.b.lens, &s.out, NULL, NULL));
    ha_plan_destroy(dense);
}

/* ---- zero sizes ------------------------------------------------------------------------------------ */

static void test_zero_sizes(void **state)
{
    (void)state;
    /* zero bytes: nothing to copy, even without buffers; no weights in zero bytes */
    EXPECT_OK(ha_mem_copy(fx.rt, NULL, NULL, 0, HA_COPY_HOST_TO_BACKEND));
    ha_weights *w = (ha_weights *)&fx;
    EXPECT_FAIL(ha_weights_load_memory(fx.rt, fx.image, 0, &w), HA_ERR_FORMAT, NULL);
    assert_null(w);
    void *mem = (void *)&fx;
    EXPECT_FAIL(ha_mem_alloc(fx.rt, 0, &mem), HA_ERR_INVALID_ARGUMENT, "bytes");
    assert_null(mem);
    /* encoding zero tokens writes nothing and is no error */
    ha_step s = good_step();
    EXPECT_OK(ha_cache_encode_keys(fx.plan, fx.cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 0, NULL));
    assert_int_equal(ha_plan_kept_for_length(fx.plan, 0), 0);
}

/* ---- the entry points without handles ----------------------------------------------------------- */

static void test_calls_without_handles(void **state)
{
    (void)state;
    /* values outside the enums have names, sizes of 0, no table */
    assert_true(strlen(ha_status_string((ha_status)-5)) > 0);
    assert_true(strlen(ha_status_string((ha_status)INT32_MAX)) > 0);
    assert_int_equal(ha_dtype_size((ha_dtype)99), 0);
    assert_null(ha_get_api(0));
    assert_null(ha_get_api(HA_API_VERSION + 1));
    ha_plan_config_init(NULL, 1, 1, 1, 1, 1); /* documented no-op */
    /* options that do not fit the struct they claim to be */
    ha_runtime *rt = (ha_runtime *)&fx;
    ha_runtime_options o = {5000, NULL, 0};
    EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_INVALID_ARGUMENT, "struct_size");
    assert_null(rt);
    o.struct_size = offsetof(ha_runtime_options, device); /* too short to hold device */
    rt = (ha_runtime *)&fx;
    EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_INVALID_ARGUMENT, "struct_size");
    assert_null(rt);
    /* the API table's functions check handles like the direct ones */
    const ha_api *api = ha_get_api(HA_API_VERSION);
    assert_non_null(api);
    tx_expect_failure(api->synchronize(fx.rt_dead, NULL), BIT(HA_ERR_STATE), "rt",
                      "ha_synchronize (through the API table)", __LINE__);
    api->plan_destroy(fx.plan_dead);
    tx_expect_error_message("plan", "ha_plan_destroy (through the API table)", __LINE__);
    /* ha_last_error() is never NULL and each call clears it */
    assert_non_null(ha_last_error());
    assert_int_equal(ha_plan_selection_heads(fx.plan), HQ);
    assert_string_equal(ha_last_error(), "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_handles_everywhere),
        cmocka_unit_test(test_destroy_twice),
        cmocka_unit_test(test_stale_handle_after_slot_reuse),
        cmocka_unit_test(test_destruction_order),
        cmocka_unit_test(test_log_callback_calls_back),
        cmocka_unit_test(test_mem_free_misuse),
        cmocka_unit_test(test_mixed_objects),
        cmocka_unit_test(test_null_pointers),
        cmocka_unit_test(test_indices_out_of_range),
        cmocka_unit_test(test_overflowing_sizes),
        cmocka_unit_test(test_wrong_order),
        cmocka_unit_test(test_zero_sizes),
        cmocka_unit_test(test_calls_without_handles),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    tx_print_tally("test_misuse");
    return failed;
}
