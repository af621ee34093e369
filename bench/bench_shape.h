/*
 * bench_shape.h — the shape the CPU benchmark runs (Llama-3.1-8B decode: Hq 32, Hkv 8, d 128, bf16
 * K/V; mapping functions of depth 3, widths 128→128→128→32) and the bytes each stage must read,
 * which divided by the measured DRAM read bandwidth give the stage's floor time.
 */
#ifndef BENCH_SHAPE_H
#define BENCH_SHAPE_H

#include <stdint.h>

#include "hashattn.h"

#define BENCH_Q_HEADS 32
#define BENCH_KV_HEADS 8
#define BENCH_HEAD_DIM 128
#define BENCH_BITS 32
#define BENCH_WORDS ((BENCH_BITS + 31) / 32)
#define BENCH_MLP_DEPTH 3
#define BENCH_MLP_HIDDEN 128
#define BENCH_KV_ELEM_BYTES 2 /* bf16 */
/* The mapping weights are written as F16, the dtype the trained weights ship in; the CPU plugin
 * keeps F16-exact weights in F16 (biases stay fp32). */
#define BENCH_WEIGHT_ELEM_BYTES 2
#define BENCH_SINK 128        /* ha_plan_config_init defaults, set explicitly */
#define BENCH_LOCAL 128

/** Key-code heads: one per query head in paper mode, one per KV head in group mode. */
static inline int32_t bench_code_heads(ha_mode mode)
{
    return mode == HA_MODE_PAPER ? BENCH_Q_HEADS : BENCH_KV_HEADS;
}

/** F16 weights and fp32 biases of `heads` mapping-function MLPs: what one encode call reads. */
static inline double bench_mlp_bytes(int32_t heads)
{
    const int64_t dims[BENCH_MLP_DEPTH + 1] = {BENCH_HEAD_DIM, BENCH_MLP_HIDDEN, BENCH_MLP_HIDDEN, BENCH_BITS};
    double bytes = 0;
    for (int i = 0; i < BENCH_MLP_DEPTH; i++)
        bytes += (double)(dims[i + 1] * dims[i]) * BENCH_WEIGHT_ELEM_BYTES + (double)dims[i + 1] * 4.0;
    return (double)heads * bytes;
}

/** The key codes ha_match scans: B · code_heads · n · words · 4. */
static inline double bench_match_bytes(ha_mode mode, int32_t batch, int64_t tokens)
{
    return (double)batch * bench_code_heads(mode) * (double)tokens * BENCH_WORDS * 4.0;
}

/**
 * The K and V rows sparse attention reads: every query head its own kept rows in paper mode
 * (Hq · kept · d · 2 tensors · 2 bytes per sequence), one shared set per KV head in group mode.
 */
static inline double bench_attend_bytes(ha_mode mode, int32_t batch, int64_t kept)
{
    int32_t row_sets = mode == HA_MODE_PAPER ? BENCH_Q_HEADS : BENCH_KV_HEADS;
    return (double)batch * row_sets * (double)kept * BENCH_HEAD_DIM * 2.0 * BENCH_KV_ELEM_BYTES;
}

/** All of K and V: B · Hkv · n · d · 2 tensors · 2 bytes. */
static inline double bench_dense_bytes(int32_t batch, int64_t tokens)
{
    return (double)batch * BENCH_KV_HEADS * (double)tokens * BENCH_HEAD_DIM * 2.0 * BENCH_KV_ELEM_BYTES;
}

#endif /* BENCH_SHAPE_H */
