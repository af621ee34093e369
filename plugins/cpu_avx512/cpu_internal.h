/*
 * cpu_internal.h — private types of the CPU plugin: its context, plans, packed MLPs, and the table
 * of ISA kernels. The stage drivers (cpu_encode.c, cpu_match.c, cpu_attend.c) are compiled once,
 * portable, and do everything but the hot inner loops, which they reach through a cpu_kernels
 * table: cpu_*_portable.c (plain C) or cpu_*_avx512.c (built with -mavx512*, called only after the
 * run-time CPU check passed).
 */
#ifndef HA_CPU_INTERNAL_H
#define HA_CPU_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "ha_shared.h"
#include "hashattn_plugin.h"

#define CPU_HIDDEN __attribute__((visibility("hidden")))

/** Tokens per attend tile (one 512-bit vector of fp32 logits). */
#define CPU_ATTEND_TILE 16
/** Most tokens an encode work item runs through the MLP together (weights reused from cache). */
#define CPU_ENCODE_BLOCK 32
/** Sub-histograms of the scalar match histogram (breaks store-to-load chains on repeated scores). */
#define CPU_HIST_COPIES 4
/* Tokens one call of the match's candidates kernel scans at most (the candidate buffer keeps this
 * much room, plus one vector, free before each call). */
#define CPU_CAND_SLICE 2048

static inline int64_t cpu_round_up(int64_t x, int64_t multiple)
{
    return (x + multiple - 1) / multiple * multiple;
}

/** Bits of word w that belong to a `bits`-bit code: padding bits never count (as the reference). */
static inline uint32_t cpu_code_word_mask(int32_t w, int32_t bits)
{
    int64_t first_bit = (int64_t)w * 32;
    if (first_bit + 32 <= bits)
        return 0xffffffffu;
    if (first_bit >= bits)
        return 0u;
    return (1u << (bits - first_bit)) - 1u;
}

/** Bytes per stored match score: 1, 2 or 4, the narrowest that holds max_score. */
static inline int32_t cpu_score_bytes(int64_t max_score)
{
    return max_score <= UINT8_MAX ? 1 : max_score <= UINT16_MAX ? 2 : 4;
}

static inline uint32_t cpu_score_at(const void *scores, int32_t bytes, int64_t i)
{
    return bytes == 1 ? ((const uint8_t *)scores)[i]
                      : bytes == 2 ? ((const uint16_t *)scores)[i] : ((const uint32_t *)scores)[i];
}

/** Prefetches the first `bytes` of each of rows[0 .. count) (rows NULL: nothing). */
static inline void cpu_prefetch_rows(const void *const *rows, int32_t count, size_t bytes)
{
    for (int32_t j = 0; rows && j < count; j++)
        for (size_t off = 0; off < bytes; off += 64)
            __builtin_prefetch((const char *)rows[j] + off);
}

/* ---- kernel arguments ------------------------------------------------------------------------ */

/** One linear layer over `tokens` rows: y = act(x · wt + bias); wt is [in_dim, out_pad]. */
typedef struct cpu_layer_args {
    const float *x;
    int64_t x_stride;
    float *y;
    int64_t y_stride;
    int32_t tokens;
    int32_t in_dim;
    int32_t out_pad; /**< multiple of 16; padded weight columns and biases are 0 */
    const void *wt;  /**< of dtype wt_dtype */
    ha_dtype wt_dtype;
    const float *bias;
    int silu;
} cpu_layer_args;

/** Similarity of a run of key codes (same sequence, head and page) against a group of query codes. */
typedef struct cpu_score_args {
    const uint32_t *q;    /**< [group, words] */
    int32_t group;
    int32_t words;
    int32_t bits;
    const uint32_t *keys; /**< code of the first token */
    int64_t stride_token; /**< uint32 words between consecutive tokens */
    int32_t score_bytes;  /**< width of a stored score: cpu_score_bytes(group × bits) */
} cpu_score_args;

/** Running state of one attend unit: `heads` query heads sharing a KV head and a token list. */
typedef struct cpu_attend_unit {
    int32_t heads;
    int32_t dim;
    int32_t dim_pad;   /**< dim rounded up to 16 */
    ha_dtype k_dtype;
    ha_dtype v_dtype;
    const float *q;    /**< [heads, dim_pad], pre-scaled, zero padded */
    float *acc;        /**< [heads, dim_pad] unnormalized output        */
    float *m;          /**< [heads] running max of the logits           */
    float *l;          /**< [heads] running sum of exp(logit - m)       */
    float *p;          /**< [heads, CPU_ATTEND_TILE] scratch            */
    float *k_tile;     /**< [CPU_ATTEND_TILE, dim_pad] scratch (portable kernel) */
} cpu_attend_unit;

/** The ISA-specific inner loops. */
typedef struct cpu_kernels {
    /** Converts n elements of src (dtype dt) to fp32. */
    void (*load_row)(const void *src, ha_dtype dt, int32_t n, float *dst);
    void (*mlp_layer)(const cpu_layer_args *a);
    /** Stores the similarity of token i (i < count) as scores[i], score_bytes wide. */
    void (*match_scores)(const cpu_score_args *a, int32_t count, void *scores);
    /** Adds to hist[v] the count of scores == v for v in [lo, hi], and returns lo: the kernel picks
     *  how many bins below hi one pass counts (at least one). hist has CPU_HIST_COPIES × bins
     *  counters; the copies past the first are scratch. */
    int32_t (*match_histogram)(const void *scores, int32_t bytes, int32_t count, int32_t hi, int32_t bins,
                               uint32_t *hist);
    /** The position of the wanted-th score == threshold counted from the end (wanted ≥ 1), or -1. */
    int32_t (*match_tie_start)(const void *scores, int32_t bytes, int32_t count, uint32_t threshold,
                               int64_t wanted);
    /** For every i < count whose (byte) score is ≥ floor, in order: idx[n] = first + i and
     *  score[n] = its score; returns n. Both buffers need room for count + 16 entries. */
    int32_t (*match_candidates)(const cpu_score_args *a, int32_t count, int32_t first, uint32_t floor, int32_t *idx,
                                uint8_t *score);
    /** Keeps the candidates (idx[i], score[i]), i < count, whose score is ≥ floor, in order, at the
     *  front of both arrays; returns how many. */
    int32_t (*match_filter)(int32_t *idx, uint8_t *score, int32_t count, uint32_t floor);
    /** Writes ids[i] (ids NULL: first + i) for every i < count with score > threshold, or == threshold
     *  and i ≥ tie_start, ascending in i; returns how many. */
    int32_t (*match_compact)(const void *scores, int32_t bytes, int32_t count, int32_t first, const int32_t *ids,
                             uint32_t threshold, int64_t tie_start, int32_t *out);
    /** Folds count (1..CPU_ATTEND_TILE) tokens into the unit's online softmax; rows past count point
     *  at a zero row. next_k and next_v (NULL: none) are the next tile's CPU_ATTEND_TILE rows, which the
     *  kernel prefetches while it works. */
    void (*attend_tile)(const cpu_attend_unit *u, const void *const *k_rows, const void *const *v_rows,
                        int32_t count, const void *const *next_k, const void *const *next_v);
} cpu_kernels;

CPU_HIDDEN extern const cpu_kernels cpu_kernels_portable;
#if HA_CPU_HAVE_AVX512
CPU_HIDDEN extern const cpu_kernels cpu_kernels_avx512;
#endif

/* The kernels, defined in cpu_{encode,match,attend}_portable.c and _avx512.c. The _avx512 ones are
 * called only when the CPU check at init passed. */
#define CPU_DECLARE_KERNELS(isa)                                                                            \
    CPU_HIDDEN void cpu_load_row_##isa(const void *src, ha_dtype dt, int32_t n, float *dst);                 \
    CPU_HIDDEN void cpu_mlp_layer_##isa(const cpu_layer_args *a);                                           \
    CPU_HIDDEN void cpu_match_scores_##isa(const cpu_score_args *a, int32_t count, void *scores);            \
    CPU_HIDDEN int32_t cpu_match_histogram_##isa(const void *scores, int32_t bytes, int32_t count, int32_t hi, \
                                                 int32_t bins, uint32_t *hist);                            \
    CPU_HIDDEN int32_t cpu_match_tie_start_##isa(const void *scores, int32_t bytes, int32_t count,           \
                                                 uint32_t threshold, int64_t wanted);                      \
    CPU_HIDDEN int32_t cpu_match_candidates_##isa(const cpu_score_args *a, int32_t count, int32_t first,       \
                                                  uint32_t floor, int32_t *idx, uint8_t *score);             \
    CPU_HIDDEN int32_t cpu_match_filter_##isa(int32_t *idx, uint8_t *score, int32_t count, uint32_t floor);    \
    CPU_HIDDEN int32_t cpu_match_compact_##isa(const void *scores, int32_t bytes, int32_t count, int32_t first, \
                                               const int32_t *ids, uint32_t threshold, int64_t tie_start,    \
                                               int32_t *out);                                              \
    CPU_HIDDEN void cpu_attend_tile_##isa(const cpu_attend_unit *u, const void *const *k_rows,              \
                                          const void *const *v_rows, int32_t count, const void *const *next_k, \
                                          const void *const *next_v);
CPU_DECLARE_KERNELS(portable)
CPU_DECLARE_KERNELS(avx512)
/** match_candidates through any score kernel, a block at a time (byte scores only). */
CPU_HIDDEN int32_t cpu_match_candidates_scored(void (*scores)(const cpu_score_args *, int32_t, void *),
                                               const cpu_score_args *a, int32_t count, int32_t first, uint32_t floor,
                                               int32_t *idx, uint8_t *score);

/* ---- plugin objects ---------------------------------------------------------------------------- */

typedef struct cpu_ctx {
    const cpu_kernels *k;
    int use_avx512;
    int threads;
    void (*log)(ha_log_level level, const char *message);
    char description[96];
    int32_t widest_mlp; /**< widest padded layer of any MLP uploaded so far (atomic) */
    void *(*host_alloc)(size_t alignment, size_t bytes); /**< the core's, or posix_memalign */
    void (*host_free)(void *ptr);
} cpu_ctx;

/** 64-byte aligned host memory through the core's allocator (see ha_plugin_host); NULL when out of memory. */
CPU_HIDDEN void *cpu_alloc(const cpu_ctx *ctx, size_t bytes);
/** cpu_alloc, zeroed. */
CPU_HIDDEN void *cpu_alloc_zeroed(const cpu_ctx *ctx, size_t bytes);
CPU_HIDDEN void cpu_free(const cpu_ctx *ctx, void *ptr);

typedef struct cpu_mlp_layer {
    int32_t in_dim;
    int32_t out_dim;
    int32_t out_pad;
    ha_dtype wt_dtype; /**< F32, or F16 / BF16 when every weight of the layer is exact in it */
    void *wt;          /**< [heads, in_dim, out_pad] of wt_dtype (transposed, zero-padded columns) */
    float *bias;       /**< [heads, out_pad] */
} cpu_mlp_layer;

typedef struct cpu_mlp {
    int32_t heads;
    int32_t depth;
    int32_t bits;
    int32_t widest_pad; /**< widest layer (input included), rounded up to 16 */
    cpu_mlp_layer layer[HA_PLUGIN_MAX_MLP_DEPTH];
    void *storage;
} cpu_mlp;

/** Per-thread scratch, carved from one allocation; every part 64-byte aligned. */
typedef struct cpu_plan {
    ha_plan_desc desc;
    int threads;
    char *scratch;
    size_t thread_stride;   /**< bytes per thread                                    */
    /* encode: two [block, width] fp32 buffers */
    int32_t enc_width;      /**< widest padded MLP layer the plan can run            */
    int32_t enc_block;      /**< tokens per encode work item                          */
    size_t enc_offset;
    /* match: CPU_HIST_COPIES histograms of max_score + 1 counters; the scores of max_tokens
     * candidates (cpu_score_bytes(max_score) each), so every code is scored once */
    int32_t max_score;      /**< bits × group the plan can score                      */
    size_t hist_offset;
    size_t score_offset;
    /* the candidates above a floor (byte scores only; cand_cap 0: none): token indices, scores; two
     * buffers of cand_cap each (an item's compaction runs while the next item gathers) */
    int64_t cand_cap;
    size_t cand_idx_offset;
    size_t cand_score_offset;
    /* a cpu_match_sched of the thread's own (own cache line) */
    size_t match_sched_offset;

    /* match split across threads: per (item, chunk) slot a histogram of max_score + 1 counters,
     * then per slot an int64 offset, per item an int64 tie start and a uint32 threshold */
    uint32_t *match_split;
    int32_t match_slots;
    /* attend */
    int32_t group;          /**< q_heads / kv_heads: most heads of one attend unit    */
    int32_t dim_pad;
    size_t att_offset;
    float *zero_row;        /**< dim_pad zeros: stands in for missing tile rows        */
    float *partials;        /**< split-sequence partial results                       */
    int32_t partial_slots;  /**< (unit, chunk) pairs the partial buffer holds         */
    size_t partial_floats;  /**< floats per slot: group × (dim_pad + 2)                */
} cpu_plan;

static inline char *cpu_thread_scratch(const cpu_plan *p, int thread)
{
    return p->scratch + (size_t)thread * p->thread_stride;
}

/** A thread's match scheduling state, kept in its scratch between calls. */
typedef struct cpu_match_sched {
    int64_t next;        /**< the next item of the thread's block not yet taken (by it or a thief) */
    uint32_t floor_hint; /**< the thread's last candidate floor hint (0 in a new plan)             */
} cpu_match_sched;

static inline cpu_match_sched *cpu_thread_match_sched(const cpu_plan *p, int thread)
{
    return (cpu_match_sched *)(void *)(cpu_thread_scratch(p, thread) + p->match_sched_offset);
}

/* ---- errors and stage drivers -------------------------------------------------------------------- */

/** Records this thread's last error (what last_error returns) and returns status. */
CPU_HIDDEN ha_status cpu_fail(ha_status status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
CPU_HIDDEN const char *cpu_last_error(void);

CPU_HIDDEN ha_status cpu_mlp_upload(cpu_ctx *ctx, const ha_mlp_desc *desc, cpu_mlp **out);
CPU_HIDDEN void cpu_mlp_free(const cpu_ctx *ctx, cpu_mlp *mlp);
CPU_HIDDEN ha_status cpu_plan_create(cpu_ctx *ctx, const ha_plan_desc *desc, cpu_plan **out);
CPU_HIDDEN void cpu_plan_destroy(const cpu_ctx *ctx, cpu_plan *plan);

CPU_HIDDEN ha_status cpu_encode(const cpu_ctx *ctx, const cpu_plan *plan, const ha_encode_args *a);
CPU_HIDDEN ha_status cpu_match(const cpu_ctx *ctx, const cpu_plan *plan, const ha_match_args *a);
CPU_HIDDEN ha_status cpu_attend(const cpu_ctx *ctx, const cpu_plan *plan, const ha_attend_args *a);

#endif /* HA_CPU_INTERNAL_H */
