/*
 * bench_fixture.h — everything one benchmark configuration (mode, batch B, length n) runs on, in
 * `layers` independent copies so that consecutive timed calls never reuse each other's data: random
 * mapping functions (one sparse layer per copy, written as safetensors and loaded through the public
 * API), a contiguous bf16 KV cache per copy filled with random values, random bf16 queries per copy,
 * and the key-code cache holding the codes of all n tokens of every copy (encoded once, the
 * "prefill"). All buffers the runtime reads live in backend memory (host memory: CPU backends only).
 */
#ifndef BENCH_FIXTURE_H
#define BENCH_FIXTURE_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"

typedef struct bench_fixture {
    ha_runtime *rt;
    ha_mode mode;
    int32_t batch;
    int64_t tokens;
    int32_t layers;       /**< independent copies; layer l of the weights and cache uses kv[l], q[l] */
    ha_weights *weights;
    ha_cache *cache;
    int32_t *seq_lens;    /**< [batch], all = tokens                                                */
    ha_kv *kv;            /**< [layers]                                                             */
    ha_tensor3 *q;        /**< [layers], bf16 [batch, Hq, d]                                        */
    uint32_t **q_codes;   /**< [layers], [batch, Hq, words]                                         */
    ha_tensor3 out;       /**< bf16 [batch, Hq, d]                                                  */
    ha_tensor3 out_check; /**< a second output, to compare the fused step with the separate stages  */
} bench_fixture;

/** Bytes one copy holds that a decode step may touch: K and V, the key codes, both MLPs. */
double bench_fixture_layer_bytes(ha_mode mode, int32_t batch, int64_t tokens);

/**
 * Builds the fixture (see above), seeded by seed. On failure prints what failed to stderr, frees
 * what was made and returns the status.
 */
ha_status bench_fixture_create(ha_runtime *rt, ha_mode mode, int32_t batch, int64_t tokens, int32_t layers,
                               uint64_t seed, bench_fixture *out);
void bench_fixture_destroy(bench_fixture *f);

/** Allocates bytes of backend memory, printing the failure; NULL on failure. */
void *bench_alloc(ha_runtime *rt, size_t bytes);

#endif /* BENCH_FIXTURE_H */
