/*
 * conformance_match.c — the match stage of one backend, called through its plugin-ABI table, against
 * the core's scalar reference ha_ref_match on crafted key codes: counts equal and every index row
 * equal (SPEC §1.3 tie rule: higher score first, equal scores to the more recent token).
 *
 * The conformance suite gets its codes from the MLP encode, whose near-binomial scores rarely tie
 * for long. Here every token's score is chosen:
 *
 *   ties             keys drawn from two or three codes: thousands of candidates share the threshold;
 *   trap             the oldest quarter of the candidates holds more than `heavy` ties at a score S and
 *                    fewer than heavy/2 above it; the rest scores far below S but for a few above
 *                    (fewer than heavy/2 in all): the threshold is S and every tie taken lies in the
 *                    oldest quarter, so a selection that raises its floor early must keep the ties;
 *   staircase-up/-down  scores rising with position / falling with position, in plateaus;
 *   equal/complement every key equals the query (all scores maximal) / is its complement (minimal);
 *   random           uniform random codes.
 *
 * Each case runs paper mode and group mode (group 2 and 4) × 8, 20, 32 and 64-bit codes × max_tokens
 * equal to the longest sequence and far above it, on three code layouts in turn (the cache's own,
 * paged with a shuffled block table, heads innermost), with several sequences of unequal lengths
 * (below sink + local, at the keep-all boundary, thousands) and fresh sink, local and budget.
 *
 * Group-mode scores are exact too: per bit, a key agrees with c of the group's g query heads when the
 * bit is 1 and with g − c when it is 0, so a score is the majority code's minus a subset sum of the
 * per-bit costs |2c − g| (code_with_score). Code bits past `bits` hold random garbage (they never
 * count); sinks, locals and the tokens past a sequence's length often hold maximal-score lures.
 *
 * Usage: conformance_match [backend] — a plugin name (hashattn_<name>.so along $HASHATTN_PLUGIN_PATH),
 * a path to a plugin, or "reference" (the core's built-in table); default $HASHATTN_BACKEND. Exit 77
 * (meson: skipped) when the plugin's probe() says it cannot run here. The base seed is fresh on every
 * run and printed; HASHATTN_TEST_SEED=<it> repeats a run, HASHATTN_TEST_CASES=substring filters cases.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ha_shared.h"
#include "reference.h"
#include "test_util.h"

#define MAX_BATCH 4
#define MAX_GROUP 4
#define MAX_WORDS 2
#define MAX_BITS (32 * MAX_WORDS)
#define MAX_SCORE (MAX_GROUP * MAX_BITS)
#define POOL 4 /* distinct codes per score, drawn at random */
#define RANDOM_CODE (-1)

static const ha_plugin_api *g_api;
static void *g_ctx;
static uint64_t g_base_seed;

/* ---- what a match call looks like -------------------------------------------------------------- */

typedef enum code_layout { LAYOUT_CACHE, LAYOUT_PAGED, LAYOUT_HEADS_INNER, LAYOUTS } code_layout;
static const char *const layout_names[LAYOUTS] = {"cache", "paged", "heads-inner"};

typedef struct match_shape {
    int32_t batch, q_heads, sel_heads, group, bits, words;
    int32_t sink, local;
    double heavy_fraction;
    int64_t heavy_count;
    int64_t max_tokens, max_kept, index_stride;
    int32_t lens[MAX_BATCH];
    code_layout layout;
    int32_t page_size; /* LAYOUT_PAGED */
} match_shape;

/* A case fills the target scores of the candidates [lo, hi) of one (sequence, selection head) item. */
typedef struct item_scores item_scores;
typedef void (*pattern_fn)(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target);

typedef struct match_case {
    const char *name;
    pattern_fn fill;
    int32_t pool;       /* distinct codes per score (1: every key of a score is the same code)  */
    int equal_queries;  /* the group's query heads share one code                               */
    int trap;           /* check that the reference takes ties from the oldest quarter          */
} match_case;

/* ---- scores of key codes against one item's query heads -------------------------------------- */

struct item_scores {
    int32_t group, bits, words;
    int32_t ones[MAX_BITS];  /* query heads of the group with bit i set        */
    int32_t cost[MAX_BITS];  /* |2·ones − group|: what moving off the majority costs */
    uint32_t best[MAX_WORDS]; /* per bit the majority: the highest score          */
    int32_t max_score;
    int32_t levels[MAX_SCORE + 1]; /* every reachable score, ascending */
    int32_t n_levels;
    uint32_t pool[MAX_SCORE + 1][POOL][MAX_WORDS];
    uint8_t pooled[MAX_SCORE + 1];
};

static int code_bit(const uint32_t *code, int32_t i)
{
    return (int)(code[i / 32] >> (i % 32)) & 1;
}

static void flip_bit(uint32_t *code, int32_t i)
{
    code[i / 32] ^= 1u << (i % 32);
}

/* Random garbage in the bits of the last word past `bits` (they must never count). */
static void garble_padding(tu_rng *r, uint32_t *code, int32_t bits, int32_t words)
{
    int32_t used = bits - 32 * (words - 1);
    if (used < 32)
        code[words - 1] |= (uint32_t)tu_rng_next(r) & ~((1u << used) - 1u);
}

/* The similarity of code to the item's query heads, counted bit by bit (independently of popcounts). */
static int32_t score_of(const item_scores *sc, const uint32_t *code)
{
    int32_t score = 0;
    for (int32_t i = 0; i < sc->bits; i++)
        score += code_bit(code, i) ? sc->ones[i] : sc->group - sc->ones[i];
    return score;
}

static void item_scores_init(item_scores *sc, const uint32_t *q_heads, int32_t group, int32_t bits, int32_t words)
{
    memset(sc, 0, sizeof *sc);
    sc->group = group;
    sc->bits = bits;
    sc->words = words;
    for (int32_t i = 0; i < bits; i++) {
        for (int32_t h = 0; h < group; h++)
            sc->ones[i] += code_bit(q_heads + h * words, i);
        sc->cost[i] = abs(2 * sc->ones[i] - group);
        if (2 * sc->ones[i] >= group)
            sc->best[i / 32] |= 1u << (i % 32);
        sc->max_score += sc->ones[i] > group - sc->ones[i] ? sc->ones[i] : group - sc->ones[i];
    }
    /* reachable costs: subset sums of the per-bit costs */
    uint8_t reach[MAX_SCORE + 1] = {1};
    for (int32_t i = 0; i < bits; i++)
        for (int32_t v = sc->max_score; v >= sc->cost[i]; v--)
            reach[v] |= reach[v - sc->cost[i]];
    for (int32_t v = sc->max_score; v >= 0; v--)
        if (reach[v])
            sc->levels[sc->n_levels++] = sc->max_score - v;
}

/* A code of exactly `score` (reachable): from the majority code, the costliest bits move first (in
 * random order within a cost; greedy is exact for costs {1}, {2}, {2, 4}); costless bits are random. */
static void code_with_score(tu_rng *r, const item_scores *sc, int32_t score, uint32_t *code)
{
    int32_t order[MAX_BITS], rest = sc->max_score - score;
    memcpy(code, sc->best, sizeof sc->best);
    for (int32_t i = 0; i < sc->bits; i++)
        order[i] = i;
    tu_rng_shuffle(r, order, sc->bits);
    for (int32_t c = sc->group; c >= 1; c--)
        for (int32_t k = 0; k < sc->bits; k++)
            if (sc->cost[order[k]] == c && rest >= c) {
                flip_bit(code, order[k]);
                rest -= c;
            }
    for (int32_t i = 0; i < sc->bits; i++)
        if (sc->cost[i] == 0 && (tu_rng_next(r) & 1))
            flip_bit(code, i);
    garble_padding(r, code, sc->bits, sc->words);
    assert_int_equal(rest, 0);
    assert_int_equal(score_of(sc, code), score);
}

/* One of the first `pool` codes of a score, made on first use. */
static const uint32_t *pooled_code(tu_rng *r, item_scores *sc, int32_t score, int32_t pool)
{
    if (!sc->pooled[score]) {
        for (int32_t k = 0; k < POOL; k++)
            code_with_score(r, sc, score, sc->pool[score][k]);
        sc->pooled[score] = 1;
    }
    return sc->pool[score][tu_rng_range(r, 0, pool - 1)];
}

static int32_t random_level(tu_rng *r, const item_scores *sc, int32_t from, int32_t to)
{
    return sc->levels[tu_rng_range(r, from, to)];
}

/* ---- the cases ------------------------------------------------------------------------------- */

static void fill_ties(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)heavy;
    int32_t codes = sc->n_levels >= 3 ? (int32_t)tu_rng_range(r, 2, 3) : sc->n_levels, score[3];
    for (int32_t k = 0; k < codes; k++)
        score[k] = random_level(r, sc, 0, sc->n_levels - 1);
    double first = 0.3 + 0.6 * tu_rng_unit(r); /* one code dominates, or not */
    for (int64_t j = lo; j < hi; j++) {
        double u = tu_rng_unit(r);
        target[j] = score[u < first ? 0 : codes == 3 && u < first + (1 - first) / 2 ? 2 : codes - 1];
    }
}

/* Whether the trap fits n candidates: three scores, and the oldest quarter holds more than heavy. */
static int trap_fits(const item_scores *sc, int64_t n, int64_t heavy)
{
    return sc->n_levels >= 3 && heavy >= 2 && n / 4 >= heavy + 2;
}

static void fill_trap(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    int64_t n = hi - lo, old = n / 4;
    if (!trap_fits(sc, n, heavy)) { /* a short or a keep-all item */
        fill_ties(r, sc, lo, hi, heavy, target);
        return;
    }
    int32_t k = (int32_t)tu_rng_range(r, sc->n_levels / 2 > 1 ? sc->n_levels / 2 : 1, sc->n_levels - 2);
    int32_t s = sc->levels[k], far = sc->levels[0];
    for (int32_t f = k - 1; f >= 0; f--) /* far below: under s by at least an eighth of the range, if any */
        if (sc->levels[f] <= s - sc->max_score / 8) {
            far = random_level(r, sc, 0, f);
            break;
        }
    int64_t above = tu_rng_range(r, 0, (heavy - 1) / 2); /* < heavy/2 above s in all */
    int64_t above_old = tu_rng_range(r, 0, above < old - heavy - 1 ? above : old - heavy - 1);
    int64_t room = old - heavy - 1 - above_old; /* ≥ 0: more ties still fit in the oldest quarter */
    int64_t ties = heavy + 1 + tu_rng_range(r, 0, room < heavy ? room : heavy);
    int64_t later_ties = tu_rng_range(r, 0, 1) ? tu_rng_range(r, 0, (heavy - above - 1) / 2) : 0;
    for (int64_t j = lo; j < hi; j++)
        target[j] = far;
    for (int64_t j = lo; j < lo + ties; j++)
        target[j] = s;
    for (int64_t j = lo + ties; j < lo + ties + above_old; j++)
        target[j] = random_level(r, sc, k + 1, sc->n_levels - 1);
    tu_rng_shuffle(r, target + lo, old);
    /* the later region: the other scores above s and a few ties, at random places */
    for (int64_t m = 0; m < above - above_old + later_ties; m++) {
        int64_t j = tu_rng_range(r, lo + old, hi - 1);
        target[j] = m < above - above_old ? random_level(r, sc, k + 1, sc->n_levels - 1) : s;
    }
}

static void fill_staircase(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int up, int32_t *target)
{
    int32_t steps = (int32_t)tu_rng_range(r, sc->n_levels > 1 ? 2 : 1, sc->n_levels < 40 ? sc->n_levels : 40);
    int32_t first = (int32_t)tu_rng_range(r, 0, sc->n_levels - steps);
    for (int64_t j = lo; j < hi; j++) {
        int64_t step = (j - lo) * steps / (hi - lo);
        target[j] = sc->levels[first + (up ? step : steps - 1 - step)];
    }
}

static void fill_up(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)heavy;
    fill_staircase(r, sc, lo, hi, 1, target);
}

static void fill_down(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)heavy;
    fill_staircase(r, sc, lo, hi, 0, target);
}

static void fill_equal(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)r;
    (void)heavy;
    for (int64_t j = lo; j < hi; j++)
        target[j] = sc->max_score;
}

static void fill_complement(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)r;
    (void)heavy;
    for (int64_t j = lo; j < hi; j++)
        target[j] = sc->levels[0];
}

static void fill_random(tu_rng *r, const item_scores *sc, int64_t lo, int64_t hi, int64_t heavy, int32_t *target)
{
    (void)r;
    (void)sc;
    (void)heavy;
    for (int64_t j = lo; j < hi; j++)
        target[j] = RANDOM_CODE;
}

static const match_case cases[] = {
    {"ties", fill_ties, 1, 0, 0},
    {"trap", fill_trap, POOL, 0, 1},
    {"staircase-up", fill_up, POOL, 0, 0},
    {"staircase-down", fill_down, POOL, 0, 0},
    {"equal", fill_equal, 1, 1, 0},
    {"complement", fill_complement, 1, 1, 0},
    {"random", fill_random, POOL, 0, 0},
};
#define N_CASES (sizeof cases / sizeof cases[0])

/* ---- shapes -------------------------------------------------------------------------------------- */

/* A length at the keep-all boundary n ≤ sink + local + heavy(n): the last kept whole, or one past. */
static int32_t boundary_length(tu_rng *r, const match_shape *m)
{
    int32_t n = m->sink + m->local;
    while (n < 100000 && ha_kept_for_length(n + 1, m->sink, m->local, m->heavy_fraction, m->heavy_count) == n + 1)
        n++;
    return n + (int32_t)tu_rng_range(r, 0, 1);
}

/* group 1: paper mode (sel_heads = q_heads); 2 or 4: group mode. long_heads > 0: one long sequence
 * with that many selection heads (one item: a multi-threaded backend may split it across threads). */
static match_shape make_shape(tu_rng *r, int32_t group, int32_t bits, int far_tokens, code_layout layout,
                              int32_t long_heads)
{
    match_shape m = {0};
    m.group = group;
    m.sel_heads = long_heads ? long_heads : (int32_t)tu_rng_range(r, 1, group == 1 ? 3 : 2);
    m.q_heads = m.sel_heads * group;
    m.bits = bits;
    m.words = (bits + 31) / 32;
    m.sink = tu_rng_range(r, 0, 5) == 0 ? 0 : (int32_t)tu_rng_range(r, 1, 130);
    m.local = tu_rng_range(r, 0, 5) == 0 ? 0 : (int32_t)tu_rng_range(r, 1, 130);
    static const double fractions[] = {1.0 / 32, 1.0 / 16, 0.1};
    int64_t pick = tu_rng_range(r, 0, 7);
    if (pick < 3)
        m.heavy_fraction = fractions[pick];
    else if (pick < 7)
        m.heavy_count = tu_rng_range(r, 1, 200);
    /* else heavy 0: sinks and locals only */
    m.batch = long_heads ? 1 : (int32_t)tu_rng_range(r, 3, MAX_BATCH);
    m.lens[0] = m.sink + m.local > 0 ? (int32_t)tu_rng_range(r, 0, m.sink + m.local - 1) : 0;
    m.lens[1] = boundary_length(r, &m);
    for (int32_t b = 2; b < m.batch; b++)
        m.lens[b] = (int32_t)tu_rng_range(r, 1500, 6000);
    if (long_heads) { /* just past 16384 candidates, fewer than heavy past it: where 8-bit counters of a
                       * vector histogram would wrap, a run of equal scores loses the threshold */
        m.heavy_fraction = tu_rng_range(r, 0, 1) ? 1.0 / 16 : 0.1;
        m.heavy_count = 0;
        m.lens[0] = m.sink + m.local + (int32_t)tu_rng_range(r, 16640, 17200);
    }
    tu_rng_shuffle(r, m.lens, m.batch);
    int64_t longest = 1;
    for (int32_t b = 0; b < m.batch; b++)
        longest = m.lens[b] > longest ? m.lens[b] : longest;
    m.max_tokens = far_tokens ? 2 * longest + tu_rng_range(r, 1, 999) : longest;
    m.max_kept = ha_kept_for_length(m.max_tokens, m.sink, m.local, m.heavy_fraction, m.heavy_count);
    m.index_stride = m.max_kept + tu_rng_range(r, 0, 7);
    m.layout = layout;
    static const int32_t page_sizes[] = {16, 61, 256, 1000};
    m.page_size = page_sizes[tu_rng_range(r, 0, 3)];
    return m;
}

static void describe_shape(const match_shape *m, char *out, size_t size)
{
    int k = snprintf(out, size, "%s mode (q_heads %d, sel_heads %d), bits %d, %s layout", m->group == 1 ? "paper" : "group",
                     m->q_heads, m->sel_heads, m->bits, layout_names[m->layout]);
    if (m->layout == LAYOUT_PAGED)
        k += snprintf(out + k, size - (size_t)k, " (page %d)", m->page_size);
    k += snprintf(out + k, size - (size_t)k, ", sink %d, local %d, heavy %s %g, max_tokens %lld, lens", m->sink,
                  m->local, m->heavy_fraction > 0 ? "fraction" : "count",
                  m->heavy_fraction > 0 ? m->heavy_fraction : (double)m->heavy_count, (long long)m->max_tokens);
    for (int32_t b = 0; b < m->batch; b++)
        k += snprintf(out + k, size - (size_t)k, " %d", m->lens[b]);
}

/* ---- buffers in host and backend memory ------------------------------------------------------ */

typedef struct mirror {
    void *host, *dev;
    size_t bytes;
} mirror;

static void mirror_alloc(mirror *m, size_t bytes)
{
    m->bytes = bytes;
    m->host = malloc(bytes ? bytes : 1);
    m->dev = g_api->mem_alloc(g_ctx, bytes);
    assert_non_null(m->host);
    if (!m->dev)
        fail_msg("mem_alloc(%zu) failed: %s", bytes, g_api->last_error ? g_api->last_error(g_ctx) : "");
}

static void mirror_copy(mirror *m, ha_copy_kind kind)
{
    void *dst = kind == HA_COPY_HOST_TO_BACKEND ? m->dev : m->host;
    const void *src = kind == HA_COPY_HOST_TO_BACKEND ? m->host : m->dev;
    ha_status st = g_api->mem_copy(g_ctx, dst, src, m->bytes, kind);
    if (st != HA_OK)
        fail_msg("mem_copy of %zu bytes: %s", m->bytes, g_api->last_error ? g_api->last_error(g_ctx) : "");
}

static void mirror_free(mirror *m)
{
    free(m->host);
    g_api->mem_free(g_ctx, m->dev);
}

/* Code rows of the shape's layout over data; the block table is laid out by make_rows too. */
static ha_rows code_rows(const match_shape *m, const void *data, const int32_t *block_table, int32_t bt_stride)
{
    ha_rows r = {.data = data, .dtype = HA_F32, .heads = m->sel_heads, .dim = m->words};
    switch (m->layout) {
    case LAYOUT_CACHE:
        r.stride_token = m->words;
        r.stride_head = m->max_tokens * m->words;
        r.stride_seq = r.stride_head * m->sel_heads;
        break;
    case LAYOUT_PAGED:
        r.page_size = m->page_size;
        r.stride_token = m->words;
        r.stride_head = (int64_t)m->page_size * m->words;
        r.stride_seq = r.stride_head * m->sel_heads;
        r.block_table = block_table;
        r.block_table_stride = bt_stride;
        break;
    default:
        r.stride_head = m->words;
        r.stride_token = (int64_t)m->sel_heads * m->words;
        r.stride_seq = m->max_tokens * r.stride_token;
        break;
    }
    return r;
}

/* ---- one match call --------------------------------------------------------------------------- */

typedef struct call_buffers {
    mirror q, codes, lens, table, indices, counts;
    int32_t bt_stride, pages;
} call_buffers;

static void alloc_buffers(tu_rng *r, const match_shape *m, call_buffers *c)
{
    memset(c, 0, sizeof *c);
    int64_t units = m->layout == LAYOUT_PAGED ? 0 : m->batch; /* sequences, or pages */
    if (m->layout == LAYOUT_PAGED) {
        int32_t per_seq = (int32_t)((m->max_tokens + m->page_size - 1) / m->page_size);
        c->bt_stride = per_seq + (int32_t)tu_rng_range(r, 0, 2);
        c->pages = per_seq * m->batch + (int32_t)tu_rng_range(r, 1, 3); /* spare pages stay unused */
        units = c->pages;
        mirror_alloc(&c->table, (size_t)m->batch * c->bt_stride * sizeof(int32_t));
        int32_t *ids = malloc((size_t)c->pages * sizeof(int32_t)), *bt = c->table.host;
        assert_non_null(ids);
        for (int32_t p = 0; p < c->pages; p++)
            ids[p] = p;
        tu_rng_shuffle(r, ids, c->pages);
        tu_poison(bt, c->table.bytes); /* columns past a sequence's pages: -1 */
        for (int32_t b = 0; b < m->batch; b++)
            for (int32_t p = 0; p < per_seq; p++)
                bt[b * c->bt_stride + p] = ids[b * per_seq + p];
        free(ids);
    }
    int64_t per_unit = m->layout == LAYOUT_PAGED ? (int64_t)m->sel_heads * m->page_size : m->sel_heads * m->max_tokens;
    mirror_alloc(&c->codes, (size_t)(units * per_unit * m->words) * sizeof(uint32_t));
    mirror_alloc(&c->q, (size_t)m->batch * m->q_heads * m->words * sizeof(uint32_t));
    mirror_alloc(&c->lens, (size_t)m->batch * sizeof(int32_t));
    mirror_alloc(&c->indices, (size_t)(m->batch * m->sel_heads * m->index_stride) * sizeof(int32_t));
    mirror_alloc(&c->counts, (size_t)m->batch * m->sel_heads * sizeof(int32_t));
    memcpy(c->lens.host, m->lens, c->lens.bytes);
}

static void free_buffers(call_buffers *c)
{
    mirror *all[] = {&c->q, &c->codes, &c->lens, &c->table, &c->indices, &c->counts};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (all[i]->host)
            mirror_free(all[i]);
}

/* Random query codes; with equal_queries the heads of a group share one. */
static void fill_queries(tu_rng *r, const match_shape *m, int equal_queries, uint32_t *q)
{
    for (int32_t b = 0; b < m->batch; b++)
        for (int32_t h = 0; h < m->q_heads; h++) {
            uint32_t *code = q + ((int64_t)b * m->q_heads + h) * m->words;
            if (equal_queries && h % m->group != 0) {
                memcpy(code, code - m->words, (size_t)m->words * sizeof(uint32_t));
                continue;
            }
            for (int32_t w = 0; w < m->words; w++)
                code[w] = (uint32_t)tu_rng_next(r);
        }
}

/* Key codes of item (b, s): the case's scores over the candidates; lures or random codes elsewhere. */
static void fill_item(tu_rng *r, const match_case *mc, const match_shape *m, item_scores *sc, const ha_rows *rows,
                      int32_t b, int32_t s, int32_t *target)
{
    int64_t n = m->lens[b];
    int64_t lo = m->sink < n ? m->sink : n, hi = ha_local_start(n, m->sink, m->local);
    hi = hi > n ? n : hi;
    int64_t heavy = ha_heavy_for_length(n, m->heavy_fraction, m->heavy_count);
    int lures = (int)(tu_rng_next(r) & 1);
    for (int64_t j = 0; j < m->max_tokens; j++)
        target[j] = lures ? sc->max_score : RANDOM_CODE;
    if (hi > lo)
        mc->fill(r, sc, lo, hi, heavy, target);
    for (int64_t j = 0; j < m->max_tokens; j++) {
        uint32_t *code = (uint32_t *)rows->data + ha_rows_offset(rows, b, s, j);
        if (target[j] == RANDOM_CODE) {
            for (int32_t w = 0; w < m->words; w++)
                code[w] = (uint32_t)tu_rng_next(r);
        } else {
            memcpy(code, pooled_code(r, sc, target[j], mc->pool), (size_t)m->words * sizeof(uint32_t));
        }
    }
}

/* Fails with the first difference between the backend's rows and the reference's. */
static void compare_rows(const match_shape *m, const call_buffers *c, const int32_t *want_idx, const int32_t *want_cnt,
                         item_scores *const *sc, const ha_rows *rows, const char *context)
{
    const int32_t *got_idx = c->indices.host, *got_cnt = c->counts.host;
    for (int32_t b = 0; b < m->batch; b++) {
        for (int32_t s = 0; s < m->sel_heads; s++) {
            int64_t row = (int64_t)b * m->sel_heads + s;
            if (got_cnt[row] != want_cnt[row])
                fail_msg("[%s] seq %d (n %d), selection head %d: count %d, reference %d", context, b, m->lens[b], s,
                         got_cnt[row], want_cnt[row]);
            const int32_t *got = got_idx + row * m->index_stride, *want = want_idx + row * m->index_stride;
            for (int64_t i = 0; i < want_cnt[row]; i++) {
                if (got[i] == want[i])
                    continue;
                const item_scores *it = sc[row];
                int32_t got_score = got[i] >= 0 && got[i] < m->lens[b]
                                        ? score_of(it, (const uint32_t *)rows->data + ha_rows_offset(rows, b, s, got[i]))
                                        : -1;
                int32_t want_score = score_of(it, (const uint32_t *)rows->data + ha_rows_offset(rows, b, s, want[i]));
                fail_msg("[%s] seq %d (n %d), selection head %d: index[%lld] = %d (score %d), reference %d (score %d), "
                         "count %d", context, b, m->lens[b], s, (long long)i, got[i], got_score, want[i], want_score,
                         want_cnt[row]);
            }
        }
    }
}

/* The trap must work as designed: for each item it applied to, the reference takes a tie from the
 * oldest quarter of the candidates (the generator's own check, not the backend's). */
static void check_trap_reached(const match_shape *m, const int32_t *want_idx, const int32_t *want_cnt,
                               const int32_t *applied, const char *context)
{
    for (int32_t b = 0; b < m->batch; b++)
        for (int32_t s = 0; s < m->sel_heads; s++) {
            int64_t row = (int64_t)b * m->sel_heads + s;
            if (!applied[row])
                continue;
            int64_t n = m->lens[b], lo = m->sink, hi = ha_local_start(n, m->sink, m->local);
            const int32_t *idx = want_idx + row * m->index_stride;
            int reached = 0;
            for (int64_t i = 0; i < want_cnt[row]; i++)
                reached |= idx[i] >= lo && idx[i] < lo + (hi - lo) / 4;
            if (!reached)
                fail_msg("[%s] trap: seq %d, head %d: the reference took no token of the oldest quarter", context, b, s);
        }
}

static void run_call(tu_rng *r, const match_case *mc, const match_shape *m, uint64_t seed, int call)
{
    char shape[400], context[640];
    describe_shape(m, shape, sizeof shape);
    snprintf(context, sizeof context, "%s #%d, case seed 0x%016llx, HASHATTN_TEST_SEED=0x%llx; %s", mc->name, call,
             (unsigned long long)seed, (unsigned long long)g_base_seed, shape);
    call_buffers c;
    alloc_buffers(r, m, &c);
    uint32_t *codes = c.codes.host;
    for (size_t i = 0; i < c.codes.bytes / sizeof(uint32_t); i++) /* gaps and spare pages: garbage */
        codes[i] = (uint32_t)tu_rng_next(r);
    fill_queries(r, m, mc->equal_queries, c.q.host);
    ha_rows host_rows = code_rows(m, c.codes.host, c.table.host, c.bt_stride);

    int64_t items = (int64_t)m->batch * m->sel_heads;
    item_scores **sc = calloc((size_t)items, sizeof *sc);
    int32_t *target = malloc((size_t)m->max_tokens * sizeof(int32_t));
    int32_t *applied = calloc((size_t)items, sizeof(int32_t));
    assert_true(sc && target && applied);
    for (int32_t b = 0; b < m->batch; b++)
        for (int32_t s = 0; s < m->sel_heads; s++) {
            int64_t row = (int64_t)b * m->sel_heads + s;
            sc[row] = malloc(sizeof **sc);
            assert_non_null(sc[row]);
            const uint32_t *q = (const uint32_t *)c.q.host + ((int64_t)b * m->q_heads + (int64_t)s * m->group) * m->words;
            item_scores_init(sc[row], q, m->group, m->bits, m->words);
            fill_item(r, mc, m, sc[row], &host_rows, b, s, target);
            int64_t n = m->lens[b], lo = m->sink, hi = ha_local_start(n, m->sink, m->local);
            int64_t heavy = ha_heavy_for_length(n, m->heavy_fraction, m->heavy_count);
            applied[row] = mc->trap && trap_fits(sc[row], hi - lo, heavy);
        }
    for (int32_t b = 0; b < m->batch; b++) /* the query codes' padding bits: garbage too */
        for (int32_t h = 0; h < m->q_heads; h++)
            garble_padding(r, (uint32_t *)c.q.host + ((int64_t)b * m->q_heads + h) * m->words, m->bits, m->words);

    /* the reference on host copies */
    int32_t *want_idx = malloc(c.indices.bytes), *want_cnt = malloc(c.counts.bytes);
    assert_true(want_idx && want_cnt);
    tu_poison(want_idx, c.indices.bytes);
    ha_match_args a = {
        .batch = m->batch, .q_heads = m->q_heads, .sel_heads = m->sel_heads, .words = m->words, .bits = m->bits,
        .q_codes = c.q.host, .k_codes = host_rows, .seq_lens = c.lens.host, .sink = m->sink, .local = m->local,
        .heavy_fraction = m->heavy_fraction, .heavy_count = m->heavy_count, .indices = want_idx,
        .index_stride = m->index_stride, .counts = want_cnt, .stream = NULL,
    };
    assert_int_equal(ha_ref_match(&a), HA_OK);
    if (mc->trap)
        check_trap_reached(m, want_idx, want_cnt, applied, context);

    /* the backend, through its table */
    mirror *inputs[] = {&c.q, &c.codes, &c.lens, &c.table};
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
        if (inputs[i]->host)
            mirror_copy(inputs[i], HA_COPY_HOST_TO_BACKEND);
    tu_poison(c.indices.host, c.indices.bytes);
    tu_poison(c.counts.host, c.counts.bytes);
    mirror_copy(&c.indices, HA_COPY_HOST_TO_BACKEND);
    mirror_copy(&c.counts, HA_COPY_HOST_TO_BACKEND);
    ha_plan_desc desc = {
        .max_batch = m->batch + (int32_t)tu_rng_range(r, 0, 2), .max_tokens = m->max_tokens, .q_heads = m->q_heads,
        .kv_heads = m->sel_heads, .head_dim = 64, .code_heads = m->sel_heads, .words = m->words, .bits = m->bits,
        .sink = m->sink, .local = m->local, .heavy_fraction = m->heavy_fraction, .heavy_count = m->heavy_count,
        .max_kept = m->max_kept, .scale = 0.125f,
    };
    if (m->group == 1)
        desc.kv_heads = 1; /* paper mode: code heads are query heads, whatever the KV heads */
    void *plan = NULL;
    if (g_api->plan_create && g_api->plan_create(g_ctx, &desc, &plan) != HA_OK)
        fail_msg("[%s] plan_create: %s", context, g_api->last_error ? g_api->last_error(g_ctx) : "");
    a.q_codes = c.q.dev;
    a.k_codes = code_rows(m, c.codes.dev, c.table.dev, c.bt_stride);
    a.seq_lens = c.lens.dev;
    a.indices = c.indices.dev;
    a.counts = c.counts.dev;
    ha_status st = g_api->match(g_ctx, plan, &a);
    if (st == HA_OK)
        st = g_api->synchronize(g_ctx, NULL);
    if (st != HA_OK)
        fail_msg("[%s] match: %s: %s", context, ha_status_string(st), g_api->last_error ? g_api->last_error(g_ctx) : "");
    mirror_copy(&c.indices, HA_COPY_BACKEND_TO_HOST);
    mirror_copy(&c.counts, HA_COPY_BACKEND_TO_HOST);
    compare_rows(m, &c, want_idx, want_cnt, sc, &host_rows, context);

    if (plan)
        g_api->plan_destroy(g_ctx, plan);
    for (int64_t i = 0; i < items; i++)
        free(sc[i]);
    free(sc);
    free(target);
    free(applied);
    free(want_idx);
    free(want_cnt);
    free_buffers(&c);
}

/* ---- the tests ----------------------------------------------------------------------------------- */

/* A case's seed depends on the base seed and its place in cases[] only (filtering keeps seeds). */
static uint64_t case_seed(const match_case *mc)
{
    tu_rng r;
    tu_rng_seed(&r, g_base_seed + 0x9e3779b97f4a7c15ull * (uint64_t)(mc - cases + 1));
    return tu_rng_next(&r);
}

/* Every mode × bits × max_tokens choice once, the layouts in turn; then one long sequence with one
 * selection head and one with two. */
static void run_case(void **state)
{
    const match_case *mc = *state;
    static const int32_t groups[] = {1, 2, 4}, bit_counts[] = {8, 20, 32, 64};
    tu_rng r;
    uint64_t seed = case_seed(mc);
    tu_rng_seed(&r, seed);
    int call = 0;
    for (int gi = 0; gi < 3; gi++)
        for (int bi = 0; bi < 4; bi++)
            for (int far = 0; far < 2; far++, call++) {
                match_shape m = make_shape(&r, groups[gi], bit_counts[bi], far, (code_layout)(call % LAYOUTS), 0);
                run_call(&r, mc, &m, seed, call);
            }
    for (int32_t heads = 1; heads <= 2; heads++, call++) {
        match_shape m = make_shape(&r, groups[tu_rng_range(&r, 0, 2)], bit_counts[tu_rng_range(&r, 0, 2)],
                                   (int)tu_rng_range(&r, 0, 1), (code_layout)tu_rng_range(&r, 0, LAYOUTS - 1), heads);
        run_call(&r, mc, &m, seed, call);
    }
}

/* ---- loading the plugin ---------------------------------------------------------------------------- */

static void host_log(ha_log_level level, const char *message)
{
    if (level <= HA_LOG_WARN)
        fprintf(stderr, "plugin: %s\n", message);
}

/* The table of `choice`: "reference", a path, or a name looked up along $HASHATTN_PLUGIN_PATH. */
static const ha_plugin_api *load_plugin(const char *choice)
{
    if (!strcmp(choice, "reference"))
        return ha_reference_plugin_api();
    char path[PATH_MAX] = "";
    if (strchr(choice, '/')) {
        snprintf(path, sizeof path, "%s", choice);
    } else {
        const char *dirs = getenv("HASHATTN_PLUGIN_PATH");
        while (dirs && *dirs && !*path) {
            size_t len = strcspn(dirs, ":");
            snprintf(path, sizeof path, "%.*s/hashattn_%s.so", (int)len, dirs, choice);
            if (access(path, F_OK) != 0)
                path[0] = '\0';
            dirs += len + (dirs[len] == ':');
        }
        if (!*path) {
            fprintf(stderr, "no hashattn_%s.so along HASHATTN_PLUGIN_PATH\n", choice);
            return NULL;
        }
    }
    /* RTLD_NODELETE: the plugin's thread pool may outlive a dlclose (the core loads it the same way) */
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!handle) {
        fprintf(stderr, "dlopen %s: %s\n", path, dlerror());
        return NULL;
    }
    ha_plugin_get_api_fn entry;
    *(void **)&entry = dlsym(handle, HA_PLUGIN_ENTRY_SYMBOL);
    const ha_plugin_api *api = entry ? entry(HA_PLUGIN_ABI_VERSION) : NULL;
    if (!api || api->abi_version != HA_PLUGIN_ABI_VERSION || api->struct_size < HA_PLUGIN_API_V1_SIZE) {
        fprintf(stderr, "%s: no ABI v%u table\n", path, HA_PLUGIN_ABI_VERSION);
        return NULL;
    }
    if (!strchr(choice, '/') && strcmp(api->name, choice) != 0) {
        fprintf(stderr, "%s: the table is named '%s', not '%s'\n", path, api->name, choice);
        return NULL;
    }
    return api;
}

static uint64_t base_seed(void)
{
    const char *env = getenv("HASHATTN_TEST_SEED");
    if (env && *env)
        return strtoull(env, NULL, 0);
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    tu_rng r;
    tu_rng_seed(&r, (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec + ((uint64_t)getpid() << 32));
    return tu_rng_next(&r);
}

int main(int argc, char **argv)
{
    const char *choice = argc > 1 ? argv[1] : getenv("HASHATTN_BACKEND");
    if (!choice || !*choice) {
        fprintf(stderr, "usage: %s BACKEND (a plugin name, a path, or reference; or set HASHATTN_BACKEND)\n", argv[0]);
        return 1;
    }
    g_api = load_plugin(choice);
    if (!g_api)
        return 1;
    if (g_api->probe() == 0) {
        printf("SKIP: backend %s cannot run here (probe 0)\n", g_api->name);
        return 77;
    }
    ha_plugin_host host = {.struct_size = sizeof host, .log = host_log, .device = 0};
    ha_status st = g_api->init(&host, &g_ctx);
    if (st != HA_OK) {
        const char *why = g_api->last_error ? g_api->last_error(NULL) : NULL;
        fprintf(stderr, "%s init: %s: %s\n", g_api->name, ha_status_string(st), why ? why : "");
        return 1;
    }
    g_base_seed = base_seed();
    printf("backend %s: %s; base seed 0x%llx (HASHATTN_TEST_SEED repeats it)\n", g_api->name,
           g_api->describe(g_ctx), (unsigned long long)g_base_seed);

    struct CMUnitTest tests[N_CASES];
    size_t n_tests = 0;
    const char *filter = getenv("HASHATTN_TEST_CASES");
    for (size_t i = 0; i < N_CASES; i++) {
        if (filter && *filter && !strstr(cases[i].name, filter))
            continue;
        struct CMUnitTest t = {cases[i].name, run_case, NULL, NULL, (void *)&cases[i]};
        tests[n_tests++] = t;
    }
    int failed = _cmocka_run_group_tests("conformance_match", tests, n_tests, NULL, NULL);
    g_api->shutdown(g_ctx);
    return failed;
}
