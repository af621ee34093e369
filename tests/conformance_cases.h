/*
 * conformance_cases.h — the cases of the conformance suite (conformance_cases.c): one per property
 * of SPEC §3 that a backend could get wrong (GQA group sizes, both modes, code lengths, MLP shapes,
 * budgets, lengths, dtypes, layouts, weights files, numerics, decode steps).
 */
#ifndef HA_CONFORMANCE_CASES_H
#define HA_CONFORMANCE_CASES_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"
#include "safetensors.h"

#define CONF_MAX_BATCH 8
#define CONF_MAX_CASES 128

typedef struct conf_case {
    char name[48];
    int32_t q_heads, kv_heads, head_dim;
    int group_mode; /* key codes per KV head (k_heads = kv_heads) instead of per query head */
    int32_t bits, depth, hidden;
    ha_st_dtype weights_dtype;
    int32_t num_layers;
    uint32_t dense_mask; /* bit l: layer l is dense */
    int load_from_memory;
    int32_t batch, extra_batch; /* the plan allows batch + extra_batch sequences */
    int32_t extra_tokens;       /* and max_len + extra_tokens tokens (0: exactly the longest) */
    int32_t lens[CONF_MAX_BATCH];
    int32_t sink, local; /* -1: the default (128) */
    double heavy_fraction;
    int64_t heavy_count;
    float scale; /* 0: 1/sqrt(d) */
    ha_dtype q_dtype, kv_dtype, out_dtype;
    int32_t page_size;
    int padded;
    int32_t new_tokens;   /* keys each decode step encodes */
    int32_t decode_steps; /* consecutive steps, each adding new_tokens */
    float q_scale;        /* magnitude of query entries */
    float min_top_lse;    /* > 0: the case is only meaningful if some lse exceeds this */
} conf_case;

/** Fills out[0..CONF_MAX_CASES) with the fixed cases; returns how many. */
int conf_build_cases(conf_case *out);

/** Cases of random shapes drawn from seed ("random-NN"); at most max of them; returns how many. */
#define CONF_RANDOM_CASES 24
int conf_build_random_cases(conf_case *out, int max, uint64_t seed);

/** One line describing a case's shape (for failure messages). */
void conf_describe_case(const conf_case *c, char *buf, size_t size);

#endif /* HA_CONFORMANCE_CASES_H */
