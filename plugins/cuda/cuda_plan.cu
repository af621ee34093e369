/*
 * cuda_plan.cu — plans: the work partition rules (candidate chunks of the match stage, sequence
 * splits of the attend stage) and the device scratch they need, allocated once for the plan's limits.
 *
 * Both partitions depend only on what the host knows at call time (batch, heads, the plan's limits),
 * never on the sequence lengths, which live in device memory: a block whose chunk or split is empty
 * for the actual length only does its share of the bookkeeping (its arrival at the per-item or
 * per-unit counter, an empty partial result).
 */
#include <stdlib.h>

#include "cuda_internal.h"
#include "cuda_match.cuh"

/* Fewest candidates worth a match block of their own. */
#define CU_MATCH_MIN_CHUNK 1024
/* The one-launch match (sm_90): fewest candidates worth a block of an item's cluster (at most
 * CU_MATCH_CLUSTER_MAX blocks, MATCH_CLUSTER_WIDE where the items are few: the planning gives each
 * chunk a quad or a pair of lanes). */
#define CU_MATCH_CLUSTER_MIN_CHUNK 512
/* Longest chunk the one-launch match aims for (a byte of score each in shared memory) */
#define CU_MATCH_CLUSTER_LONGEST_CHUNK 16384
/* Fewest tokens worth an attend split of their own (a warp takes 8 or 16 rows per round). */
#define CU_ATTEND_MIN_SPLIT 64
/* Blocks per SM that the partitions aim for: what the registers of the match kernels and of the usual
 * attend kernels (__launch_bounds__(256, 2)) keep resident. */
#define CU_BLOCKS_PER_SM 2

static int64_t ceil_div(int64_t x, int64_t y)
{
    return (x + y - 1) / y;
}

static int32_t clamp_count(int64_t want, int64_t cap)
{
    cap = cap < 1 ? 1 : cap;
    return (int32_t)(want < 1 ? 1 : want > cap ? cap : want);
}

int32_t cu_match_chunks(const cu_plan *plan, int64_t items)
{
    int64_t cap = ceil_div(plan->desc.max_tokens, CU_MATCH_MIN_CHUNK);
    cap = cap < CU_MATCH_THREADS ? cap : CU_MATCH_THREADS; /* the planning pass gives a chunk a thread */
    /* one wave: as many blocks as the match kernels' registers keep resident at once */
    return clamp_count(plan->target_blocks / (items < 1 ? 1 : items), cap);
}

int32_t cu_match_cluster_size(const cu_plan *plan, int64_t items)
{
    int64_t cap = ceil_div(plan->desc.max_tokens, CU_MATCH_CLUSTER_MIN_CHUNK);
    cap = cap < CU_MATCH_CLUSTER_MAX ? cap : CU_MATCH_CLUSTER_MAX;
    /* one wave, and chunks short enough that several blocks share an SM (one block keeps too few
     * bytes in flight to stream a long chunk) */
    const int64_t wave = plan->target_blocks / (items < 1 ? 1 : items);
    const int64_t shorter = ceil_div(plan->desc.max_tokens, CU_MATCH_CLUSTER_LONGEST_CHUNK);
    return clamp_count(wave > shorter ? wave : shorter, cap);
}

/* Shortest chunk of the narrow clusters (8 blocks) that the wide ones (16) halve by default. */
#define CU_MATCH_WIDE_MIN_CHUNK 32768

/* HASHATTN_CUDA_MATCH_WIDE: 1 takes the wide clusters wherever the items are few enough (tests: the
 * conformance cases are far shorter than CU_MATCH_WIDE_MIN_CHUNK), 0 never; else the default rule.
 * Read once per process. */
static int match_wide_switch(void)
{
    static const int value = [] {
        const char *v = getenv("HASHATTN_CUDA_MATCH_WIDE");
        return v && (v[0] == '0' || v[0] == '1') ? v[0] - '0' : -1;
    }();
    return value;
}

/* Few items (B = 1 in group mode: 8 items, so 8 clusters of 8 blocks for 132 SMs): clusters of up to 16
 * blocks (a non-portable size, sm_90; cu_match_cluster falls back where the device refuses it), each
 * block half the chunk. By default only where the narrow chunks are long (session 6, H200: at B1 n512K
 * group, chunks of 64 K tokens → 32 K, the match stage 32–36 → 29 µs; at n128K, 16 K → 8 K, the blocks
 * ran 20 % shorter but the kernel 1 µs longer: clusters of 16 take ~3.5 µs more to launch and drain). */
int32_t cu_match_cluster_size_wide(const cu_plan *plan, int64_t items)
{
    const int32_t C = cu_match_cluster_size(plan, items);
    const int rule = match_wide_switch();
    if (rule == 0 || C < CU_MATCH_CLUSTER_MAX || items * MATCH_CLUSTER_WIDE > plan->target_blocks ||
        (rule < 0 && plan->desc.max_tokens < (int64_t)C * CU_MATCH_WIDE_MIN_CHUNK))
        return C;
    const int64_t cap = ceil_div(plan->desc.max_tokens, CU_MATCH_CLUSTER_MIN_CHUNK);
    return clamp_count(MATCH_CLUSTER_WIDE, cap < C ? C : cap);
}

int32_t cu_attend_splits(const cu_plan *plan, int64_t units, int64_t max_len)
{
    int64_t cap = ceil_div(max_len, CU_ATTEND_MIN_SPLIT);
    cap = cap < CU_ATTEND_MAX_SPLITS ? cap : CU_ATTEND_MAX_SPLITS;
    /* one wave: as many blocks as the attend kernels' registers keep resident at once */
    return clamp_count(plan->target_blocks / (units < 1 ? 1 : units), cap);
}

/* Zeroed device memory for count elements of elem bytes (NULL when count is 0). */
static ha_status scratch(size_t count, size_t elem, void **out, const char *what)
{
    *out = NULL;
    if (count == 0)
        return HA_OK;
    if (count > SIZE_MAX / elem)
        return cu_fail(HA_ERR_OVERFLOW, "cuda plan_create: the %s scratch overflows", what);
    cudaError_t err = cudaMalloc(out, count * elem);
    if (err == cudaSuccess)
        err = cudaMemset(*out, 0, count * elem);
    if (err != cudaSuccess) {
        cudaFree(*out);
        cudaGetLastError();
        *out = NULL;
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda plan_create: cannot allocate %zu bytes of %s scratch: %s",
                       count * elem, what, cudaGetErrorString(err));
    }
    return HA_OK;
}

ha_status cu_plan_create(const cu_ctx *ctx, const ha_plan_desc *desc, cu_plan **out)
{
    *out = NULL;
    if (desc->head_dim > CU_MAX_HEAD_DIM)
        return cu_fail(HA_ERR_UNSUPPORTED, "cuda plan_create: head_dim %d exceeds this backend's limit of %d",
                       desc->head_dim, CU_MAX_HEAD_DIM);
    if (desc->q_heads < 1 || desc->kv_heads < 1 || desc->q_heads % desc->kv_heads != 0 ||
        (desc->code_heads > 0 && desc->q_heads % desc->code_heads != 0))
        return cu_fail(HA_ERR_SHAPE, "cuda plan_create: q_heads %d, kv_heads %d, code_heads %d do not fit together",
                       desc->q_heads, desc->kv_heads, desc->code_heads);
    cu_plan *p = (cu_plan *)calloc(1, sizeof *p);
    if (!p)
        return cu_fail(HA_ERR_OUT_OF_MEMORY, "cuda plan_create: out of host memory");
    p->desc = *desc;
    p->target_blocks = CU_BLOCKS_PER_SM * (ctx->sm_count > 0 ? ctx->sm_count : 1);
    ha_status st = HA_OK;

    if (desc->code_heads > 0 && desc->words > 0) {
        int64_t group = desc->q_heads / desc->code_heads;
        int64_t bins = group * desc->bits + 1;
        /* the histogram pass keeps one histogram per warp, and its planning about 2 KB, in shared memory */
        if (bins > INT32_MAX / 2 ||
            cu_match_smem((int32_t)bins, (int32_t)(group * desc->words)) + 2048 > ctx->smem_optin)
            st = cu_fail(HA_ERR_UNSUPPORTED, "cuda plan_create: %lld possible scores (group %lld × %d bits) exceed "
                         "the shared memory of one block", (long long)bins, (long long)group, desc->bits);
        int64_t items = (int64_t)desc->max_batch * desc->code_heads;
        p->match_bins = (int32_t)bins;
        p->match_slots = items + p->target_blocks;
        if (st == HA_OK)
            st = scratch((size_t)p->match_slots * (size_t)bins, sizeof(uint32_t), (void **)&p->match_hist, "match");
        if (st == HA_OK)
            st = scratch((size_t)p->match_slots * (size_t)cu_match_warps() * (size_t)bins, sizeof(uint32_t),
                         (void **)&p->match_warp_hist, "match");
        if (st == HA_OK)
            st = scratch((size_t)p->match_slots * 2, sizeof(int32_t), (void **)&p->match_chunk, "match");
        if (st == HA_OK)
            st = scratch((size_t)items, sizeof(uint32_t), (void **)&p->match_threshold, "match");
        if (st == HA_OK)
            st = scratch((size_t)items, sizeof(uint32_t), (void **)&p->match_arrived, "match");
    }
    /* rows × splits < rows + target × heads per unit (see cu_attend_splits), heads per unit ≤ group */
    if (st == HA_OK) {
        int64_t group = desc->q_heads / desc->kv_heads;
        p->partial_slots = (int64_t)desc->max_batch * desc->q_heads + (int64_t)p->target_blocks * group;
        st = scratch((size_t)p->partial_slots * ((size_t)desc->head_dim + 2), sizeof(float), (void **)&p->partials,
                     "attend");
        /* one counter per unit of query heads: at most one per query head */
        if (st == HA_OK)
            st = scratch((size_t)desc->max_batch * (size_t)desc->q_heads, sizeof(uint32_t),
                         (void **)&p->attend_arrived, "attend");
    }
    /* the arrival counters must read 0 before the first launch, on whatever stream it comes */
    if (st == HA_OK)
        st = cu_check(cudaDeviceSynchronize(), "cuda plan_create: cudaDeviceSynchronize");
    if (st != HA_OK) {
        cu_plan_destroy(p);
        return st;
    }
    *out = p;
    return HA_OK;
}

void cu_plan_destroy(cu_plan *plan)
{
    if (!plan)
        return;
    cudaFree(plan->match_hist);
    cudaFree(plan->match_warp_hist);
    cudaFree(plan->match_chunk);
    cudaFree(plan->match_threshold);
    cudaFree(plan->match_arrived);
    cudaFree(plan->partials);
    cudaFree(plan->attend_arrived);
    free(plan);
}
