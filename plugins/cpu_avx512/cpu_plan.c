/*
 * cpu_plan.c — per-plan scratch: one allocation with a slice per OpenMP thread (encode activations,
 * match histograms, attend state) plus the split-sequence partial results, so that the stage calls
 * allocate nothing. Sized by the plan description and, for encode, by the widest MLP uploaded to this
 * context before the plan was created (a plan is always created after its weights).
 */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"

/* Partial results a split attend or match may hold, per thread (chunks of one unit go to several
 * threads). */
#define PARTIAL_SLOTS_PER_THREAD 4
/* Largest similarity (bits × group) the match histograms cover: 16 MiB of counters per thread. */
#define MAX_SCORE_LIMIT (1 << 20)

/* Reserves bytes (64-byte aligned) at *offset within a thread's slice; returns the part's offset. */
static size_t take(size_t *offset, size_t bytes)
{
    size_t at = *offset;
    *offset += (size_t)cpu_round_up((int64_t)bytes, 64);
    return at;
}

ha_status cpu_plan_create(cpu_ctx *ctx, const ha_plan_desc *desc, cpu_plan **out)
{
    *out = NULL;
    if (desc->q_heads < 1 || desc->kv_heads < 1 || desc->q_heads % desc->kv_heads != 0 || desc->head_dim < 1 ||
        desc->head_dim > (1 << 20) || desc->max_batch < 1 ||
        (desc->code_heads > 0 && (desc->q_heads % desc->code_heads != 0 || desc->bits < 1 || desc->words < 1)))
        return cpu_fail(HA_ERR_INVALID_ARGUMENT, "cpu_avx512 plan_create: inconsistent plan (q_heads %d, kv_heads %d, "
                        "head_dim %d, code_heads %d, bits %d)", desc->q_heads, desc->kv_heads, desc->head_dim,
                        desc->code_heads, desc->bits);
    cpu_plan *p = cpu_alloc_zeroed(ctx, sizeof *p);
    if (!p)
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 plan_create: out of memory");
    p->desc = *desc;
    p->threads = omp_get_max_threads();

    size_t slice = 0;
    if (desc->code_heads > 0) {
        int32_t width = __atomic_load_n(&ctx->widest_mlp, __ATOMIC_RELAXED);
        int32_t ends = (int32_t)cpu_round_up(desc->head_dim > desc->bits ? desc->head_dim : desc->bits, 16);
        p->enc_width = width > ends ? width : ends;
        int32_t block = 32768 / p->enc_width;
        p->enc_block = block < 1 ? 1 : block > CPU_ENCODE_BLOCK ? CPU_ENCODE_BLOCK : block;
        p->enc_offset = take(&slice, 2 * (size_t)p->enc_block * (size_t)p->enc_width * sizeof(float));
        int64_t max_score = (int64_t)desc->bits * (desc->q_heads / desc->code_heads);
        if (max_score > MAX_SCORE_LIMIT) {
            cpu_free(ctx, p);
            return cpu_fail(HA_ERR_UNSUPPORTED, "cpu_avx512 plan_create: similarities up to %lld (bits × group) "
                            "exceed the %d this backend supports", (long long)max_score, MAX_SCORE_LIMIT);
        }
        p->max_score = (int32_t)max_score;
        p->hist_offset = take(&slice, (size_t)CPU_HIST_COPIES * ((size_t)p->max_score + 1) * sizeof(uint32_t));
        int64_t tokens = desc->max_tokens > 0 ? desc->max_tokens : 0;
        p->score_offset = take(&slice, (size_t)tokens * (size_t)cpu_score_bytes(p->max_score));
        if (cpu_score_bytes(p->max_score) == 1) { /* 4 × budgets of up to an eighth of the tokens */
            p->cand_cap = tokens / 2 + CPU_CAND_SLICE + 16;
            p->cand_idx_offset = take(&slice, 2 * (size_t)p->cand_cap * sizeof(int32_t));
            p->cand_score_offset = take(&slice, 2 * (size_t)p->cand_cap);
        }
        p->match_sched_offset = take(&slice, 64); /* a line of its own: other threads take from it */
    }
    p->group = desc->q_heads / desc->kv_heads;
    p->dim_pad = (int32_t)cpu_round_up(desc->head_dim, 16);
    size_t g = (size_t)p->group, dp = (size_t)p->dim_pad;
    /* q, acc [g, dim_pad]; m, l [g]; p [g, tile]; k_tile [tile, dim_pad] */
    p->att_offset = take(&slice, (2 * g * dp + 2 * (size_t)cpu_round_up(p->group, 16) + g * CPU_ATTEND_TILE +
                                  CPU_ATTEND_TILE * dp) * sizeof(float));
    p->thread_stride = (size_t)cpu_round_up((int64_t)slice, 128); /* no shared lines between threads */

    p->partial_slots = p->threads > 1 ? PARTIAL_SLOTS_PER_THREAD * p->threads : 0;
    p->partial_floats = (size_t)cpu_round_up((int64_t)(g * (dp + 2)), 16);
    p->match_slots = p->threads > 1 && desc->code_heads > 0 ? PARTIAL_SLOTS_PER_THREAD * p->threads : 0;
    size_t partial_bytes = (size_t)p->partial_slots * p->partial_floats * sizeof(float);
    size_t split_bytes = (size_t)p->match_slots * (((size_t)p->max_score + 1) * sizeof(uint32_t) + 2 * sizeof(int64_t) +
                                                   sizeof(uint32_t));
    size_t bytes = p->thread_stride * (size_t)p->threads + dp * sizeof(float) + partial_bytes + split_bytes;
    void *mem = cpu_alloc(ctx, bytes);
    if (!mem) {
        cpu_free(ctx, p);
        return cpu_fail(HA_ERR_OUT_OF_MEMORY, "cpu_avx512 plan_create: cannot allocate %zu bytes of scratch", bytes);
    }
    memset(mem, 0, bytes);
    p->scratch = mem;
    p->zero_row = (float *)(p->scratch + p->thread_stride * (size_t)p->threads);
    p->partials = p->zero_row + dp;
    p->match_split = p->match_slots > 0 ? (uint32_t *)((char *)p->partials + partial_bytes) : NULL;
    *out = p;
    return HA_OK;
}

void cpu_plan_destroy(const cpu_ctx *ctx, cpu_plan *plan)
{
    if (!plan)
        return;
    cpu_free(ctx, plan->scratch);
    cpu_free(ctx, plan);
}
