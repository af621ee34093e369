/*
 * test_threads.c — the thread-safety contract of hashattn.h ("Threads"), exercised by real threads.
 * scripts/test.sh also runs it under ThreadSanitizer, which turns any data race these schedules
 * reach into a failure.
 *
 *   shared weights   one runtime and ONE weights object (the shipped trained codes, paper and group
 *                    mode) shared by THREADS threads. Each creates its own plan (its own budget) and
 *                    cache (contiguous or paged), encodes its prompt's keys and runs decode steps on
 *                    its own random data; every step's output and lse are compared with the core's
 *                    scalar reference (keys and queries are drawn with unambiguous codes, as in the
 *                    conformance suite, so the selection must match exactly).
 *   runtimes         threads open and close runtimes (by name and by probing every plugin), load
 *                    weights from the file and from memory, make and drop plans and caches, fail
 *                    calls on purpose (a missing backend with a name unique to the thread and round,
 *                    a truncated weights buffer, an impossible allocation on a shared runtime) and
 *                    check that their own ha_last_error names their own failure.
 *   log callback     threads fail calls (each logs a line) while another thread keeps replacing the
 *                    callback and frees the previous one's user data right after
 *                    ha_set_log_callback returns: a late call would read freed, dead data.
 *
 * cmocka's assertions fail a test by longjmp, which only works on the thread running the test; the
 * test runs with CMOCKA_TEST_ABORT=1 (see tests/meson.build) so that a failed assertion on any
 * thread prints its message and aborts the process.
 *
 * Environment: HASHATTN_TEST_WEIGHTS_DIR (the folder of hashattn_paper32/group32.safetensors);
 * HASHATTN_BACKEND picks the backend (read once, then removed so that the runtimes scenario can
 * also probe); HASHATTN_TEST_SEED overrides the seed. Exit 77 (meson: skipped) when the chosen
 * backend cannot run here (a GPU plugin without a GPU).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reference_steps.h"
#include "safetensors.h"
#include "test_util.h"
#include "weights_host.h"

#define THREADS 6
#define STEPS 3          /* decode steps per thread, one new token each */
#define MAX_BATCH 3
#define MIN_PROMPT 40
#define MAX_LEN 160
#define RUNTIME_ROUNDS 4 /* open/load/close rounds per thread */
#define LOG_SETTERS 40   /* callbacks the log scenario installs and frees */
#define MARGIN 2e-3      /* unambiguous codes: every MLP output ≥ this·max|y| from zero (as conformance) */
#define MAX_DRAWS 1000
#define OUT_TOL 1e-5     /* fp32 storage (SPEC §3) */
#define LSE_TOL 1e-4
#define DEFAULT_SEED 0x7472656164ull

static char g_backend[256]; /* HASHATTN_BACKEND as it was at start ("" = probe) */
static uint64_t g_seed = DEFAULT_SEED;

/* ---- the shared model --------------------------------------------------------------------------- */

typedef struct model {
    char path[1024];
    ha_runtime *rt;
    ha_weights *w;        /* the one object every thread uses */
    ha_weights_host ref;  /* the same file, parsed by the core's host loader (for the reference) */
    unsigned char *bytes; /* the file's bytes (for ha_weights_load_memory) */
    size_t size;
    int32_t kv_heads;
    int32_t sparse[64];
    int32_t n_sparse;
} model;

static const char *weights_dir(void)
{
    const char *dir = getenv("HASHATTN_TEST_WEIGHTS_DIR");
    assert_non_null(dir);
    return dir;
}

static ha_runtime_options backend_options(void)
{
    ha_runtime_options o = {sizeof o, g_backend[0] ? g_backend : NULL, 0};
    return o;
}

static void model_open(model *m, const char *file)
{
    memset(m, 0, sizeof *m);
    snprintf(m->path, sizeof m->path, "%s/%s", weights_dir(), file);
    m->bytes = tu_read_file(m->path, &m->size);
    ha_st_file parsed;
    char err[512] = "";
    assert_int_equal(ha_st_parse(m->bytes, m->size, &parsed, err, sizeof err), HA_OK);
    assert_int_equal(ha_weights_host_from_st(&parsed, &m->ref, err, sizeof err), HA_OK);
    ha_st_close(&parsed);

    ha_runtime_options o = backend_options();
    ha_status st = ha_runtime_open(&o, &m->rt);
    if (st != HA_OK)
        fail_msg("ha_runtime_open: %s", ha_last_error());
    st = ha_weights_load(m->rt, m->path, &m->w);
    if (st != HA_OK)
        fail_msg("ha_weights_load(%s): %s", m->path, ha_last_error());
    /* group mode: a key code per KV head; paper mode: pick a GQA layout (2 query heads per KV head) */
    const ha_weights_host *h = &m->ref;
    m->kv_heads = h->k_heads < h->q_heads ? h->k_heads : (h->q_heads % 2 ? h->q_heads : h->q_heads / 2);
    for (int32_t l = 0; l < h->num_layers && m->n_sparse < 64; l++)
        if (!h->dense[l])
            m->sparse[m->n_sparse++] = l;
    assert_true(m->n_sparse > 0);
}

static void model_close(model *m)
{
    ha_weights_free(m->w);
    ha_runtime_close(m->rt);
    ha_weights_host_free(&m->ref);
    free(m->bytes);
}

/* ---- shared weights: one thread's decode steps against the reference ----------------------------- */

typedef struct worker {
    const model *m;
    int id;
    pthread_barrier_t *start;
    int steps_checked;   /* out */
    double max_rel_err;  /* out */
} worker;

/** Random values in row until head range [first, first + count) of the MLP codes it unambiguously. */
static void fill_unambiguous(tu_rng *r, const ha_mlp_desc *desc, int32_t first, int32_t count, void *row, int32_t dim,
                             float scale, float *x, double *y)
{
    for (int attempt = 0; attempt < MAX_DRAWS; attempt++) {
        tu_fill_row(r, row, HA_F32, dim, scale);
        tu_load_row(row, HA_F32, dim, x);
        int ok = 1;
        for (int32_t m = first; m < first + count && ok; m++)
            ok = tu_code_unambiguous(desc, m, x, y, MARGIN);
        if (ok)
            return;
    }
    fail_msg("no unambiguous row in %d draws", MAX_DRAWS);
}

static void *shared_weights_worker(void *arg)
{
    worker *wk = arg;
    const model *m = wk->m;
    const ha_weights_host *h = &m->ref;
    ha_runtime *rt = m->rt;
    tu_rng rng;
    tu_rng_seed(&rng, g_seed ^ (0x9e37ull * (uint64_t)(wk->id + 1)));
    int32_t layer = m->sparse[wk->id % m->n_sparse];
    int32_t batch = 1 + wk->id % MAX_BATCH, hq = h->q_heads, hkv = m->kv_heads, d = h->head_dim;
    int32_t page = wk->id % 2 ? 16 : 0;
    int32_t lens[MAX_BATCH], prompt[MAX_BATCH], longest = 0, longest_prompt = 0;
    for (int32_t b = 0; b < batch; b++) {
        lens[b] = (int32_t)tu_rng_range(&rng, MIN_PROMPT + STEPS, MAX_LEN);
        prompt[b] = lens[b] - STEPS;
        longest = lens[b] > longest ? lens[b] : longest;
        longest_prompt = prompt[b] > longest_prompt ? prompt[b] : longest_prompt;
    }

    pthread_barrier_wait(wk->start); /* plans and caches are created concurrently */
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, batch, longest, hq, hkv, d);
    cfg.sink = (int32_t)tu_rng_range(&rng, 2, 12); /* small windows: the codes decide most tokens */
    cfg.local = (int32_t)tu_rng_range(&rng, 4, 16);
    cfg.heavy_fraction = 1.0 / (double)tu_rng_range(&rng, 4, 10);
    ha_plan *plan = NULL;
    if (ha_plan_create(rt, m->w, &cfg, &plan) != HA_OK)
        fail_msg("thread %d: ha_plan_create: %s", wk->id, ha_last_error());
    tu_kv kv;
    tu_kv_create(&kv, rt, &rng, HA_F32, batch, hkv, d, longest, page, 1);
    ha_cache_config cc = {sizeof cc, page, batch, longest, page ? kv.capacity : 0};
    ha_cache *cache = NULL;
    if (ha_cache_create(rt, m->w, &cc, &cache) != HA_OK)
        fail_msg("thread %d: ha_cache_create: %s", wk->id, ha_last_error());

    /* keys every reading key-code head codes unambiguously; any values */
    float *x = malloc((size_t)d * sizeof(float));
    double *y = malloc((size_t)h->bits * sizeof(double));
    assert_true(x && y);
    int32_t per_kv = h->k_heads / hkv; /* key MLP heads reading one KV head */
    for (int32_t b = 0; b < batch; b++)
        for (int32_t kh = 0; kh < hkv; kh++)
            for (int64_t t = 0; t < lens[b]; t++) {
                fill_unambiguous(&rng, &h->k[layer], kh * per_kv, per_kv, tu_kv_row(&kv, 0, b, kh, t), d, 1.0f, x, y);
                tu_fill_row(&rng, tu_kv_row(&kv, 1, b, kh, t), HA_F32, d, 1.0f);
            }
    tu_kv_upload(&kv, rt);

    /* the reference's own pipeline over the same host data */
    tu_ref ref = {batch, hq, hkv, d, h->k_heads, ha_plan_selection_heads(plan), h->words, h->bits, longest, NULL};
    tu_selection sel = {cfg.sink, cfg.local, cfg.heavy_fraction, cfg.heavy_count};
    int64_t max_kept = ha_plan_max_kept(plan), rows = (int64_t)batch * hq;
    ref.k_codes = malloc((size_t)batch * ref.code_heads * (size_t)longest * ref.words * sizeof(uint32_t));
    uint32_t *ref_q_codes = malloc((size_t)rows * ref.words * sizeof(uint32_t));
    int32_t *ref_indices = malloc((size_t)batch * ref.sel_heads * (size_t)max_kept * sizeof(int32_t));
    int32_t *ref_counts = malloc((size_t)batch * ref.sel_heads * sizeof(int32_t));
    float *ref_out = malloc((size_t)rows * d * sizeof(float)), *ref_lse = malloc((size_t)rows * sizeof(float));
    float *got = malloc((size_t)rows * d * sizeof(float)), *got_lse = malloc((size_t)rows * sizeof(float));
    assert_true(ref.k_codes && ref_q_codes && ref_indices && ref_counts && ref_out && ref_lse && got && got_lse);
    tu_ref_key_codes(&ref, &h->k[layer], tu_kv_rows(&kv, 0), lens, longest);

    tu_tensor3 q, out;
    tu_tensor3_create(&q, rt, &rng, HA_F32, batch, hq, d, 1);
    tu_tensor3_create(&out, rt, &rng, HA_F32, batch, hq, d, 1);
    int32_t *lens_dev = tu_dev_alloc(rt, sizeof lens);
    float *lse_dev = tu_dev_alloc(rt, (size_t)batch * hq * sizeof(float));
    ha_kv kv_dev = tu_kv_backend(&kv);

    /* prefill: the prompt's keys into this thread's cache (other threads are doing the same) */
    tu_to_dev(rt, lens_dev, prompt, sizeof prompt);
    if (ha_cache_encode_keys(plan, cache, layer, &kv_dev, batch, lens_dev, longest_prompt, NULL) != HA_OK)
        fail_msg("thread %d: ha_cache_encode_keys: %s", wk->id, ha_last_error());

    float scale = 1.0f / sqrtf((float)d);
    for (int32_t s = STEPS - 1; s >= 0; s--) {
        int32_t cur[MAX_BATCH];
        for (int32_t b = 0; b < batch; b++)
            cur[b] = lens[b] - s;
        for (int32_t b = 0; b < batch; b++)
            for (int32_t qh = 0; qh < hq; qh++)
                fill_unambiguous(&rng, &h->q[layer], qh, 1, tu_tensor3_row(&q, b, qh), d, 2.0f, x, y);
        tu_tensor3_upload(&q, rt);
        tu_poison(out.host, out.bytes);
        tu_tensor3_upload(&out, rt);
        tu_dev_poison(rt, lse_dev, (size_t)batch * hq * sizeof(float));
        tu_to_dev(rt, lens_dev, cur, sizeof cur);
        ha_step step;
        memset(&step, 0, sizeof step);
        step.batch = batch;
        step.seq_lens = lens_dev;
        step.new_tokens = 1;
        step.q = tu_tensor3_backend(&q);
        step.kv = kv_dev;
        step.out = tu_tensor3_backend(&out);
        step.lse = lse_dev;
        if (ha_decode_step(plan, cache, layer, &step) != HA_OK)
            fail_msg("thread %d: ha_decode_step: %s", wk->id, ha_last_error());
        tu_tensor3_download(&out, rt);
        tu_tensor3_to_f32(&out, got);
        tu_from_dev(rt, got_lse, lse_dev, (size_t)rows * sizeof(float));
        if (!tu_tensor3_padding_poisoned(&out))
            fail_msg("thread %d: ha_decode_step wrote into the padding of out", wk->id);

        tu_ref_query_codes(&ref, &h->q[layer], tu_tensor3_rows(&q), ref_q_codes);
        tu_ref_match(&ref, &sel, ref_q_codes, cur, max_kept, ref_indices, ref_counts);
        tu_ref_attend(&ref, tu_tensor3_rows(&q), tu_kv_rows(&kv, 0), tu_kv_rows(&kv, 1), scale, cur, ref_indices,
                      ref_counts, max_kept, ref_out, ref_lse);
        for (int64_t row = 0; row < rows; row++) {
            double rel = tu_rel_l2(got + row * d, ref_out + row * d, d);
            if (!(rel <= OUT_TOL) || !(fabs((double)got_lse[row] - (double)ref_lse[row]) <= LSE_TOL))
                fail_msg("thread %d (layer %d, %s cache, step %d): row %lld: relative error %.3g, lse %.7g vs "
                         "reference %.7g", wk->id, layer, page ? "paged" : "contiguous", STEPS - s, (long long)row, rel,
                         (double)got_lse[row], (double)ref_lse[row]);
            wk->max_rel_err = rel > wk->max_rel_err ? rel : wk->max_rel_err;
        }
        wk->steps_checked++;
    }

    tu_dev_free(rt, lens_dev);
    tu_dev_free(rt, lse_dev);
    tu_tensor3_destroy(&q, rt);
    tu_tensor3_destroy(&out, rt);
    tu_kv_destroy(&kv, rt);
    ha_cache_destroy(cache);
    ha_plan_destroy(plan);
    free(ref.k_codes);
    free(ref_q_codes);
    free(ref_indices);
    free(ref_counts);
    free(ref_out);
    free(ref_lse);
    free(got);
    free(got_lse);
    free(x);
    free(y);
    return NULL;
}

static void run_shared_weights(const char *file)
{
    model m;
    model_open(&m, file);
    pthread_t t[THREADS];
    worker wk[THREADS];
    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        wk[i] = (worker){&m, i, &start, 0, 0.0};
        assert_int_equal(pthread_create(&t[i], NULL, shared_weights_worker, &wk[i]), 0);
    }
    double worst = 0.0;
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(wk[i].steps_checked, STEPS);
        worst = wk[i].max_rel_err > worst ? wk[i].max_rel_err : worst;
    }
    pthread_barrier_destroy(&start);
    printf("%s on %s: %d threads × %d decode steps equal the reference (largest relative error %.2g)\n", file,
           ha_runtime_backend_name(m.rt), THREADS, STEPS, worst);
    model_close(&m);
}

static void test_shared_weights_paper(void **state)
{
    (void)state;
    run_shared_weights("hashattn_paper32.safetensors");
}

static void test_shared_weights_group(void **state)
{
    (void)state;
    run_shared_weights("hashattn_group32.safetensors");
}

/* ---- runtimes: concurrent open, load, failure, close ---------------------------------------------- */

typedef struct opener {
    const model *m; /* the expected weights, and a runtime shared by every opener */
    int id;
    int rounds_done; /* out */
} opener;

static void expect_own_failure(int id, const char *what, ha_status st, ha_status expected, const char *needle)
{
    if (st != expected || !strstr(ha_last_error(), needle))
        fail_msg("thread %d: %s -> %s, ha_last_error \"%s\" (expected %s naming \"%s\")", id, what,
                 ha_status_string(st), ha_last_error(), ha_status_string(expected), needle);
}

static void *opener_thread(void *arg)
{
    opener *op = arg;
    const ha_weights_host *ref = &op->m->ref;
    for (int round = 0; round < RUNTIME_ROUNDS; round++) {
        /* by name (the backend under test) or by probing every plugin found, in turn */
        ha_runtime_options o = backend_options();
        if (round % 2)
            o.backend = NULL;
        ha_runtime *rt = NULL;
        if (ha_runtime_open(&o, &rt) != HA_OK)
            fail_msg("thread %d: ha_runtime_open(%s): %s", op->id, o.backend ? o.backend : "probe", ha_last_error());
        ha_weights *w = NULL;
        ha_status st = round % 2 ? ha_weights_load_memory(rt, op->m->bytes, op->m->size, &w)
                                 : ha_weights_load(rt, op->m->path, &w);
        if (st != HA_OK)
            fail_msg("thread %d: loading %s: %s", op->id, op->m->path, ha_last_error());
        ha_weights_info info;
        assert_int_equal(ha_weights_get_info(w, &info), HA_OK);
        if (info.num_layers != ref->num_layers || info.bits != ref->bits || info.q_heads != ref->q_heads ||
            info.k_heads != ref->k_heads || info.head_dim != ref->head_dim)
            fail_msg("thread %d: the weights loaded concurrently disagree with the file", op->id);
        ha_plan_config cfg;
        ha_plan_config_init(&cfg, 2, 64 + op->id, ref->q_heads, op->m->kv_heads, ref->head_dim);
        ha_plan *plan = NULL;
        ha_cache *cache = NULL;
        ha_cache_config cc = {sizeof cc, 0, 2, 64 + op->id, 0};
        if (ha_plan_create(rt, w, &cfg, &plan) != HA_OK || ha_cache_create(rt, w, &cc, &cache) != HA_OK)
            fail_msg("thread %d: plan/cache: %s", op->id, ha_last_error());

        /* failures racing with other threads' failures: each thread sees its own message */
        char name[64];
        snprintf(name, sizeof name, "missing_backend_t%d_r%d", op->id, round);
        ha_runtime_options missing = {sizeof missing, name, 0};
        ha_runtime *none = (ha_runtime *)&missing;
        expect_own_failure(op->id, "ha_runtime_open(missing)", ha_runtime_open(&missing, &none),
                           HA_ERR_BACKEND_NOT_FOUND, name);
        assert_null(none);
        ha_weights *bad = (ha_weights *)&missing;
        expect_own_failure(op->id, "ha_weights_load_memory(truncated)",
                           ha_weights_load_memory(rt, op->m->bytes, 7 + (size_t)op->id, &bad), HA_ERR_FORMAT,
                           "ha_weights_load_memory");
        assert_null(bad);
        void *huge = (void *)1;
        st = ha_mem_alloc(op->m->rt, (size_t)1 << 62, &huge); /* the shared runtime's plugin fails */
        if (st != HA_ERR_OUT_OF_MEMORY || huge != NULL)
            fail_msg("thread %d: ha_mem_alloc(2^62) -> %s", op->id, ha_status_string(st));

        ha_cache_destroy(cache);
        ha_plan_destroy(plan);
        ha_weights_free(w);
        ha_runtime_close(rt);
        op->rounds_done++;
    }
    return NULL;
}

static void test_concurrent_runtimes(void **state)
{
    (void)state;
    model m;
    model_open(&m, "hashattn_paper32.safetensors");
    pthread_t t[THREADS];
    opener op[THREADS];
    for (int i = 0; i < THREADS; i++) {
        op[i] = (opener){&m, i, 0};
        assert_int_equal(pthread_create(&t[i], NULL, opener_thread, &op[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        assert_int_equal(pthread_join(t[i], NULL), 0);
        assert_int_equal(op[i].rounds_done, RUNTIME_ROUNDS);
    }
    model_close(&m);
}

/* ---- the log callback ---------------------------------------------------------------------------- */

#define SINK_ALIVE 0x5a5a5a5au
#define SINK_DEAD 0xdeadu

typedef struct log_sink {
    unsigned magic; /* plain, not atomic: only ha_set_log_callback's waiting orders the callback's read
                       before the free below; ThreadSanitizer reports the race if it does not */
    atomic_int lines;
} log_sink;

static atomic_int g_dead_sink_calls;
static atomic_int g_total_lines;
static atomic_int g_failers_running;

static void count_line(void *user, ha_log_level level, const char *message)
{
    (void)level;
    (void)message;
    log_sink *s = user;
    if (s->magic != SINK_ALIVE)
        atomic_fetch_add(&g_dead_sink_calls, 1);
    atomic_fetch_add(&s->lines, 1);
    atomic_fetch_add(&g_total_lines, 1);
}

static void *failing_thread(void *arg)
{
    int id = *(const int *)arg;
    for (int i = 0; atomic_load(&g_failers_running); i++) {
        char name[64];
        snprintf(name, sizeof name, "logged_missing_t%d_%d", id, i);
        ha_runtime_options o = {sizeof o, name, 0};
        ha_runtime *rt = NULL;
        expect_own_failure(id, "ha_runtime_open(missing)", ha_runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND, name);
    }
    return NULL;
}

static void test_log_callback_replaced_under_load(void **state)
{
    (void)state;
    atomic_store(&g_failers_running, 1);
    pthread_t t[THREADS];
    int ids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        ids[i] = i;
        assert_int_equal(pthread_create(&t[i], NULL, failing_thread, &ids[i]), 0);
    }
    int delivered_to = 0;
    for (int i = 0; i < LOG_SETTERS; i++) {
        log_sink *s = malloc(sizeof *s);
        assert_non_null(s);
        s->magic = SINK_ALIVE;
        atomic_init(&s->lines, 0);
        ha_set_log_callback(count_line, s, HA_LOG_WARN);
        while (atomic_load(&s->lines) == 0) /* until some failing call reached this callback */
            sched_yield();
        ha_set_log_callback(NULL, NULL, HA_LOG_ERROR);
        /* no thread is inside count_line(s) any more, and none will enter it */
        s->magic = SINK_DEAD;
        free(s);
        delivered_to++;
    }
    atomic_store(&g_failers_running, 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(delivered_to, LOG_SETTERS);
    assert_int_equal(atomic_load(&g_dead_sink_calls), 0);
    printf("log callback replaced %d times while %d threads logged %d lines through it\n", LOG_SETTERS, THREADS,
           atomic_load(&g_total_lines));
}

static int g_nested_status = -1;

static void set_from_inside(void *user, ha_log_level level, const char *message)
{
    (void)level;
    (void)message;
    int *calls = user;
    if ((*calls)++ == 0) {
        ha_set_log_callback(NULL, NULL, HA_LOG_ERROR); /* would wait for itself: refused */
        g_nested_status = strstr(ha_last_error(), "inside the log callback") != NULL;
    }
}

static void test_set_from_inside_callback_is_refused(void **state)
{
    (void)state;
    int calls = 0;
    ha_set_log_callback(set_from_inside, &calls, HA_LOG_WARN);
    ha_runtime_options o = {sizeof o, "missing_for_the_nested_set", 0};
    ha_runtime *rt = NULL;
    assert_int_equal(ha_runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_int_equal(g_nested_status, 1);
    calls = 100; /* the refused call left this callback installed: it still receives lines */
    assert_int_equal(ha_runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_true(calls > 100);
    ha_set_log_callback(NULL, NULL, HA_LOG_ERROR);
}

int main(void)
{
    const char *backend = getenv("HASHATTN_BACKEND");
    snprintf(g_backend, sizeof g_backend, "%s", backend ? backend : "");
    /* no other thread exists yet: the one moment the environment may change */
    unsetenv("HASHATTN_BACKEND");
    const char *seed = getenv("HASHATTN_TEST_SEED");
    if (seed && *seed)
        g_seed = strtoull(seed, NULL, 0);
    ha_runtime_options o = backend_options();
    ha_runtime *probe = NULL;
    ha_status st = ha_runtime_open(&o, &probe);
    if (st == HA_ERR_BACKEND_NOT_FOUND) { /* say, a GPU plugin on a machine without a GPU */
        printf("SKIP: backend %s cannot run here: %s\n", g_backend[0] ? g_backend : "(probe)", ha_last_error());
        return 77;
    }
    if (st != HA_OK) {
        fprintf(stderr, "ha_runtime_open: %s: %s\n", ha_status_string(st), ha_last_error());
        return 1;
    }
    printf("backend %s: %s\n", ha_runtime_backend_name(probe), ha_runtime_backend_description(probe));
    ha_runtime_close(probe);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_weights_paper),
        cmocka_unit_test(test_shared_weights_group),
        cmocka_unit_test(test_concurrent_runtimes),
        cmocka_unit_test(test_log_callback_replaced_under_load),
        cmocka_unit_test(test_set_from_inside_callback_is_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
