/*
 * test_cuda_graph.cu — a decode step of the cuda backend can be captured in a CUDA graph: one
 * ha_decode_step is captured on a stream (global capture mode: any forbidden call, such as an
 * allocation or a synchronization, fails the capture), the graph is replayed, and its outputs must
 * equal, bit for bit, those of the same step run directly. The graph is then replayed after the
 * sequence lengths (in device memory) and the queries changed, and must again equal a direct step:
 * a captured step reads its inputs at replay time, so one graph serves every step.
 *
 * Exits 77 (meson: skipped) where no CUDA device is usable.
 */
#include <cuda_runtime.h>

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern "C" {
#include <cmocka.h>

#include "test_util.h"
#include "weights_host.h"
}

#define BATCH 3
#define HEAD_DIM 64
#define BITS 32
#define MAX_TOKENS 2100
#define GROWTH 37 /* tokens the sequences grow by between the two replays */

static ha_runtime *g_rt;

#define CUDA_OK(call)                                                                                         \
    do {                                                                                                      \
        cudaError_t e_ = (call);                                                                              \
        if (e_ != cudaSuccess) {                                                                              \
            print_error("%s: %s\n", #call, cudaGetErrorString(e_));                                           \
            fail();                                                                                           \
        }                                                                                                     \
    } while (0)

#define HA_CHECK(call)                                                                                        \
    do {                                                                                                      \
        ha_status st_ = (call);                                                                               \
        if (st_ != HA_OK) {                                                                                   \
            print_error("%s -> %s: %s\n", #call, ha_status_string(st_), ha_last_error());                     \
            fail();                                                                                           \
        }                                                                                                     \
    } while (0)

typedef struct graph_case {
    const char *name;
    int32_t q_heads, kv_heads;
    int group_mode;
    int32_t page_size;
    ha_dtype dtype;
} graph_case;

static void fill_mlp(tu_rng *r, const ha_mlp_desc *d)
{
    for (int32_t i = 0; i < d->depth; i++) {
        int64_t outs = (int64_t)d->heads * d->dims[i + 1];
        float scale = (float)sqrt(3.0 / d->dims[i]);
        for (int64_t j = 0; j < outs * d->dims[i]; j++)
            ((float *)d->w[i])[j] = tu_rng_nonzero(r, scale);
        for (int64_t j = 0; j < outs; j++)
            ((float *)d->b[i])[j] = tu_rng_nonzero(r, 0.2f);
    }
}

static ha_weights *make_weights(tu_rng *r, const graph_case *c)
{
    ha_weights_host host;
    HA_CHECK(ha_weights_host_alloc(&host, 1, BITS, 3, HEAD_DIM, HEAD_DIM, c->q_heads,
                                   c->group_mode ? c->kv_heads : c->q_heads, NULL));
    fill_mlp(r, &host.q[0]);
    fill_mlp(r, &host.k[0]);
    const char *tmp = getenv("TMPDIR");
    char path[512], err[256] = "";
    snprintf(path, sizeof path, "%s/hashattn-graph-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    ha_status st = ha_weights_host_write(&host, path, HA_ST_F32, err, sizeof err);
    ha_weights_host_free(&host);
    if (st != HA_OK) {
        unlink(path);
        print_error("ha_weights_host_write: %s\n", err);
        fail();
    }
    ha_weights *w = NULL;
    st = ha_weights_load(g_rt, path, &w);
    unlink(path);
    HA_CHECK(st);
    return w;
}

typedef struct step_buffers {
    tu_tensor3 out;
    float *lse;
} step_buffers;

static void run_step(ha_plan *plan, ha_cache *cache, const tu_kv *kv, const tu_tensor3 *q, const int32_t *lens_dev,
                     step_buffers *o, cudaStream_t stream, ha_status *status)
{
    ha_step step;
    memset(&step, 0, sizeof step);
    step.batch = BATCH;
    step.seq_lens = lens_dev;
    step.new_tokens = 1;
    step.q = tu_tensor3_backend(q);
    step.kv = tu_kv_backend(kv);
    step.out = tu_tensor3_backend(&o->out);
    step.lse = o->lse;
    step.stream = stream;
    *status = ha_decode_step(plan, cache, 0, &step);
}

static void poison(step_buffers *o)
{
    tu_poison(o->out.host, o->out.bytes);
    tu_tensor3_upload(&o->out, g_rt);
    tu_dev_poison(g_rt, o->lse, BATCH * (size_t)o->out.heads * sizeof(float));
}

/* The direct and the replayed step wrote the same bits, and every output is a finite number. */
static void check_equal(step_buffers *direct, step_buffers *graph, const char *what)
{
    const int64_t rows = (int64_t)BATCH * direct->out.heads;
    float *a = (float *)malloc((size_t)rows * HEAD_DIM * sizeof(float));
    float *b = (float *)malloc((size_t)rows * HEAD_DIM * sizeof(float));
    float la[BATCH * 64], lb[BATCH * 64];
    assert_true(a && b && rows <= BATCH * 64);
    tu_tensor3_download(&direct->out, g_rt);
    tu_tensor3_download(&graph->out, g_rt);
    tu_tensor3_to_f32(&direct->out, a);
    tu_tensor3_to_f32(&graph->out, b);
    tu_from_dev(g_rt, la, direct->lse, (size_t)rows * sizeof(float));
    tu_from_dev(g_rt, lb, graph->lse, (size_t)rows * sizeof(float));
    for (int64_t i = 0; i < rows * HEAD_DIM; i++) {
        if (!isfinite(a[i]) || memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            print_error("%s: out[%lld] direct %.9g, graph replay %.9g\n", what, (long long)i, (double)a[i],
                        (double)b[i]);
            fail();
        }
    }
    for (int64_t i = 0; i < rows; i++) {
        if (!isfinite(la[i]) || memcmp(&la[i], &lb[i], sizeof(float)) != 0) {
            print_error("%s: lse[%lld] direct %.9g, graph replay %.9g\n", what, (long long)i, (double)la[i],
                        (double)lb[i]);
            fail();
        }
    }
    free(a);
    free(b);
}

static void fill_queries(tu_rng *r, tu_tensor3 *q)
{
    for (int32_t b = 0; b < BATCH; b++)
        for (int32_t h = 0; h < q->heads; h++)
            tu_fill_row(r, tu_tensor3_row(q, b, h), q->dtype, HEAD_DIM, 1.0f);
    tu_tensor3_upload(q, g_rt);
}

static void graph_step(void **state)
{
    const graph_case *c = (const graph_case *)*state;
    tu_rng rng;
    tu_rng_seed(&rng, 0x67a9b1ull ^ (uint64_t)c->q_heads << 8 ^ (uint64_t)c->page_size);
    ha_weights *w = make_weights(&rng, c);

    ha_plan_config cfg;
    ha_plan_config_init(&cfg, BATCH, MAX_TOKENS, c->q_heads, c->kv_heads, HEAD_DIM);
    cfg.sink = 16;
    cfg.local = 32;
    cfg.heavy_fraction = 1.0 / 16.0;
    ha_plan *plan = NULL;
    HA_CHECK(ha_plan_create(g_rt, w, &cfg, &plan));

    tu_kv kv;
    tu_kv_create(&kv, g_rt, &rng, c->dtype, BATCH, c->kv_heads, HEAD_DIM, MAX_TOKENS, c->page_size, 0);
    for (int32_t b = 0; b < BATCH; b++)
        for (int32_t h = 0; h < c->kv_heads; h++)
            for (int64_t t = 0; t < MAX_TOKENS; t++)
                for (int which = 0; which < 2; which++)
                    tu_fill_row(&rng, tu_kv_row(&kv, which, b, h, t), c->dtype, HEAD_DIM, 1.0f);
    tu_kv_upload(&kv, g_rt);
    ha_kv kv_dev = tu_kv_backend(&kv);

    ha_cache_config cc;
    memset(&cc, 0, sizeof cc);
    cc.struct_size = sizeof cc;
    cc.page_size = c->page_size;
    cc.max_batch = BATCH;
    cc.max_tokens = kv.tokens;
    cc.num_pages = c->page_size ? kv.capacity : 0;
    ha_cache *cache = NULL;
    HA_CHECK(ha_cache_create(g_rt, w, &cc, &cache));

    tu_tensor3 q;
    step_buffers direct, graph;
    tu_tensor3_create(&q, g_rt, &rng, c->dtype, BATCH, c->q_heads, HEAD_DIM, 0);
    tu_tensor3_create(&direct.out, g_rt, &rng, c->dtype, BATCH, c->q_heads, HEAD_DIM, 0);
    tu_tensor3_create(&graph.out, g_rt, &rng, c->dtype, BATCH, c->q_heads, HEAD_DIM, 0);
    direct.lse = (float *)tu_dev_alloc(g_rt, BATCH * (size_t)c->q_heads * sizeof(float));
    graph.lse = (float *)tu_dev_alloc(g_rt, BATCH * (size_t)c->q_heads * sizeof(float));
    int32_t *lens_dev = (int32_t *)tu_dev_alloc(g_rt, BATCH * sizeof(int32_t));
    fill_queries(&rng, &q);

    /* prefill: every token but the step's new one */
    int32_t lens[BATCH] = {700, 129, 2000}, prompt[BATCH];
    for (int32_t b = 0; b < BATCH; b++)
        prompt[b] = lens[b] - 1;
    tu_to_dev(g_rt, lens_dev, prompt, sizeof prompt);
    HA_CHECK(ha_cache_encode_keys(plan, cache, 0, &kv_dev, BATCH, lens_dev, 2000, NULL));
    tu_to_dev(g_rt, lens_dev, lens, sizeof lens);

    cudaStream_t stream;
    CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ha_status st;

    /* 1. direct */
    poison(&direct);
    run_step(plan, cache, &kv, &q, lens_dev, &direct, stream, &st);
    HA_CHECK(st);
    CUDA_OK(cudaStreamSynchronize(stream));

    /* 2. captured, then replayed */
    poison(&graph);
    cudaGraph_t g = NULL;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    run_step(plan, cache, &kv, &q, lens_dev, &graph, stream, &st);
    cudaError_t end = cudaStreamEndCapture(stream, &g);
    HA_CHECK(st);
    CUDA_OK(end);
    size_t nodes = 0;
    CUDA_OK(cudaGraphGetNodes(g, NULL, &nodes));
    /* encode (the new keys and the queries in one launch), match (one launch on sm_90, two before),
     * attend: one node at least each; or, where the fused step applies (cuda_decode_fused.cu), one */
    assert_true(nodes >= 1);
    cudaGraphExec_t exec = NULL;
    CUDA_OK(cudaGraphInstantiate(&exec, g, 0));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    check_equal(&direct, &graph, "first replay");

    /* 3. longer sequences and new queries: the same graph, replayed, equals a direct step */
    int32_t grown[BATCH];
    for (int32_t b = 0; b < BATCH; b++) {
        prompt[b] = lens[b] - 1 + GROWTH;
        grown[b] = lens[b] + GROWTH;
    }
    tu_to_dev(g_rt, lens_dev, prompt, sizeof prompt);
    HA_CHECK(ha_cache_encode_keys(plan, cache, 0, &kv_dev, BATCH, lens_dev, GROWTH, NULL));
    tu_to_dev(g_rt, lens_dev, grown, sizeof grown);
    fill_queries(&rng, &q);
    poison(&direct);
    run_step(plan, cache, &kv, &q, lens_dev, &direct, stream, &st);
    HA_CHECK(st);
    CUDA_OK(cudaStreamSynchronize(stream));
    poison(&graph);
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    check_equal(&direct, &graph, "replay after the lengths and queries changed");

    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(g));
    CUDA_OK(cudaStreamDestroy(stream));
    tu_dev_free(g_rt, lens_dev);
    tu_dev_free(g_rt, direct.lse);
    tu_dev_free(g_rt, graph.lse);
    tu_tensor3_destroy(&q, g_rt);
    tu_tensor3_destroy(&direct.out, g_rt);
    tu_tensor3_destroy(&graph.out, g_rt);
    tu_kv_destroy(&kv, g_rt);
    ha_cache_destroy(cache);
    ha_plan_destroy(plan);
    ha_weights_free(w);
}

int main(void)
{
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) {
        printf("SKIP: no CUDA device\n");
        return 77;
    }
    ha_status st = ha_runtime_open(NULL, &g_rt);
    if (st == HA_ERR_BACKEND_NOT_FOUND) {
        printf("SKIP: the cuda backend cannot run here: %s\n", ha_last_error());
        return 77;
    }
    if (st != HA_OK) {
        fprintf(stderr, "ha_runtime_open: %s: %s\n", ha_status_string(st), ha_last_error());
        return 1;
    }
    if (strcmp(ha_runtime_backend_name(g_rt), "cuda") != 0) {
        fprintf(stderr, "expected the cuda backend, got %s\n", ha_runtime_backend_name(g_rt));
        ha_runtime_close(g_rt);
        return 1;
    }
    printf("backend cuda: %s\n", ha_runtime_backend_description(g_rt));
    static const graph_case cases[] = {
        {"paper-contiguous-bf16", 8, 2, 0, 0, HA_BF16},
        {"group-paged16-f16", 8, 2, 1, 16, HA_F16},
        {"group-mqa-paged7-f32", 8, 1, 1, 7, HA_F32},
    };
    struct CMUnitTest tests[sizeof cases / sizeof cases[0]];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct CMUnitTest t = {cases[i].name, graph_step, NULL, NULL, (void *)&cases[i]};
        tests[i] = t;
    }
    int failed = _cmocka_run_group_tests("cuda_graph", tests, sizeof tests / sizeof tests[0], NULL, NULL);
    ha_runtime_close(g_rt);
    return failed;
}
