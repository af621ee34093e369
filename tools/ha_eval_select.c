/*
 * ha_eval_select.c — the baselines of SPEC §5 and the two measures of a kept set.
 *
 * Every method keeps the same sink and local windows and picks `heavy` = floor(fraction · n)
 * candidates (indices [sink, n − local)) in its own order of preference; kept sets of smaller budgets
 * are prefixes of larger ones, so one ordering per (query, method) serves every budget.
 *   oracle    true logits, descending; ties to the higher index (SPEC §1.3).
 *   SimHash   the MIPS transform of the paper's LSH baseline: keys augmented with sqrt(M² − ‖k‖²)
 *             (M: largest key norm of the layer and KV head over the window), queries with 0; 32
 *             random Gaussian hyperplanes over the d+1 dimensions per query head; Hamming
 *             similarity, ties to the higher index.
 *   Quest     pages of P tokens aligned to position 0; per page and channel the min and max of the
 *             keys, rounded to fp16 (Quest's metadata: 2·d·16 bits per page); page score
 *             Σ_c max(q_c·min_c, q_c·max_c); whole pages by descending score (ties to the later
 *             page), candidate tokens of a page most recent first, so that the last page is cut to
 *             fill the budget exactly and every method keeps the same number of tokens.
 *   sink+local  no heavy tokens (the floor).
 * Measures, with p the true causal softmax (scale 1/√d) of the query over keys 0..i:
 *   recall = Σ_{j∈kept} p_j;   error = ‖o_kept − o‖ / ‖o‖, o_kept exact attention over the kept set.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ha_eval.h"
#include "ha_shared.h"

#define SIMHASH_BITS 32

static const int32_t quest_page_sizes[2] = {16, 128};

struct eval_layer_index {
    int32_t layer;
    uint32_t *simhash_keys; /* [Hq, n]: key codes under each query head's hyperplanes     */
    float *simhash_planes;  /* [Hq, bits, d+1]                                             */
    float *quest_min[2];    /* per page size: [Hkv, pages, d]                              */
    float *quest_max[2];
};

const char *eval_baseline_name(eval_baseline b)
{
    static const char *names[EVAL_NUM_BASELINES] = {"oracle", "simhash32_mips", "quest_p16", "quest_p128",
                                                    "sink_local"};
    return b < EVAL_NUM_BASELINES ? names[b] : "?";
}

int32_t eval_baseline_bits(eval_baseline b, int32_t head_dim)
{
    switch (b) {
    case EVAL_SIMHASH_MIPS: return SIMHASH_BITS;
    case EVAL_QUEST_16: return 2 * head_dim * 16 / 16;
    case EVAL_QUEST_128: return 2 * head_dim * 16 / 128;
    default: return 0;
    }
}

/* ---- random hyperplanes (splitmix64 + Box-Muller: deterministic for a seed) -------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double gaussian(uint64_t *s)
{
    double u1 = ((double)(splitmix64(s) >> 11) + 0.5) * 0x1p-53, u2 = (double)(splitmix64(s) >> 11) * 0x1p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static double dot(const float *a, const float *b, int32_t d)
{
    double s = 0.0;
    for (int32_t c = 0; c < d; c++)
        s += (double)a[c] * (double)b[c];
    return s;
}

/* ---- per-layer precomputation ------------------------------------------------------------------ */

static int build_simhash(eval_layer_index *x, const eval_capture *c, uint64_t seed)
{
    const int32_t d = c->head_dim, Hq = c->q_heads, g = c->q_heads / c->kv_heads;
    const int64_t n = c->n;
    x->simhash_planes = malloc((size_t)Hq * SIMHASH_BITS * (size_t)(d + 1) * sizeof(float));
    x->simhash_keys = malloc((size_t)(Hq * n) * sizeof(uint32_t));
    if (!x->simhash_planes || !x->simhash_keys)
        return 0;
    for (int32_t h = 0; h < Hq; h++) {
        uint64_t s = seed ^ (0x1000003ull * (uint64_t)(x->layer * 1024 + h + 1));
        for (int64_t i = 0; i < (int64_t)SIMHASH_BITS * (d + 1); i++)
            x->simhash_planes[(int64_t)h * SIMHASH_BITS * (d + 1) + i] = (float)gaussian(&s);
    }
    for (int32_t kh = 0; kh < c->kv_heads; kh++) {
        const float *K = c->k[x->layer] + kh * n * d;
        double max_sq = 0.0;
        for (int64_t j = 0; j < n; j++) {
            double sq = dot(K + j * d, K + j * d, d);
            max_sq = sq > max_sq ? sq : max_sq;
        }
#pragma omp parallel for schedule(static)
        for (int64_t j = 0; j < n; j++) {
            const float *kj = K + j * d;
            double extra = sqrt(fmax(0.0, max_sq - dot(kj, kj, d)));
            for (int32_t h = kh * g; h < (kh + 1) * g; h++) {
                uint32_t code = 0;
                for (int32_t b = 0; b < SIMHASH_BITS; b++) {
                    const float *plane = x->simhash_planes + ((int64_t)h * SIMHASH_BITS + b) * (d + 1);
                    if (dot(plane, kj, d) + (double)plane[d] * extra > 0.0)
                        code |= 1u << b;
                }
                x->simhash_keys[h * n + j] = code;
            }
        }
    }
    return 1;
}

static float fp16_round(float v)
{
    return ha_f16_to_f32(ha_f32_to_f16(v));
}

static int build_quest(eval_layer_index *x, const eval_capture *c)
{
    const int32_t d = c->head_dim;
    for (int p = 0; p < 2; p++) {
        const int32_t ps = quest_page_sizes[p];
        const int64_t pages = (c->n + ps - 1) / ps;
        x->quest_min[p] = malloc((size_t)(c->kv_heads * pages * d) * sizeof(float));
        x->quest_max[p] = malloc((size_t)(c->kv_heads * pages * d) * sizeof(float));
        if (!x->quest_min[p] || !x->quest_max[p])
            return 0;
        for (int32_t kh = 0; kh < c->kv_heads; kh++)
            for (int64_t P = 0; P < pages; P++) {
                float *mn = x->quest_min[p] + (kh * pages + P) * d, *mx = x->quest_max[p] + (kh * pages + P) * d;
                const float *K = c->k[x->layer] + kh * c->n * d;
                int64_t end = (P + 1) * ps < c->n ? (P + 1) * ps : c->n;
                for (int32_t ch = 0; ch < d; ch++)
                    mn[ch] = mx[ch] = K[P * ps * d + ch];
                for (int64_t j = P * ps + 1; j < end; j++)
                    for (int32_t ch = 0; ch < d; ch++) {
                        float v = K[j * d + ch];
                        mn[ch] = v < mn[ch] ? v : mn[ch];
                        mx[ch] = v > mx[ch] ? v : mx[ch];
                    }
                for (int32_t ch = 0; ch < d; ch++) {
                    mn[ch] = fp16_round(mn[ch]);
                    mx[ch] = fp16_round(mx[ch]);
                }
            }
    }
    return 1;
}

void eval_layer_index_free(eval_layer_index *x)
{
    if (!x)
        return;
    free(x->simhash_keys);
    free(x->simhash_planes);
    for (int p = 0; p < 2; p++) {
        free(x->quest_min[p]);
        free(x->quest_max[p]);
    }
    free(x);
}

eval_layer_index *eval_layer_index_build(const eval_capture *c, int32_t layer, uint64_t seed)
{
    eval_layer_index *x = calloc(1, sizeof(*x));
    if (!x)
        return NULL;
    x->layer = layer;
    if (!build_simhash(x, c, seed) || !build_quest(x, c)) {
        eval_layer_index_free(x);
        return NULL;
    }
    return x;
}

/* ---- orderings --------------------------------------------------------------------------------- */

typedef struct scored {
    double score;
    int32_t index;
} scored;

/* Descending score, ties to the higher index. */
static int compare_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return (x->index < y->index) - (x->index > y->index);
}

typedef struct scratch_layout {
    double *p;      /* [n] softmax                      */
    scored *pairs;  /* [n]                              */
    int32_t *order; /* [n] candidates, preferred first  */
    double *o_dense, *o_base, *o_acc; /* [d] each       */
} scratch_layout;

size_t eval_scratch_bytes(const eval_capture *c)
{
    return (size_t)c->n * (sizeof(double) + sizeof(scored) + sizeof(int32_t)) + 3 * (size_t)c->head_dim * sizeof(double) +
           64;
}

static scratch_layout carve(const eval_capture *c, void *scratch)
{
    scratch_layout s;
    char *p = scratch;
    s.p = (double *)p;
    p += (size_t)c->n * sizeof(double);
    s.pairs = (scored *)p;
    p += (size_t)c->n * sizeof(scored);
    s.o_dense = (double *)p;
    p += (size_t)c->head_dim * sizeof(double);
    s.o_base = (double *)p;
    p += (size_t)c->head_dim * sizeof(double);
    s.o_acc = (double *)p;
    p += (size_t)c->head_dim * sizeof(double);
    s.order = (int32_t *)p;
    return s;
}

/* p_j is monotone in the logit, so sorting by p gives the logit order. */
static void order_oracle(const scratch_layout *s, int64_t lo, int64_t hi)
{
    for (int64_t j = lo; j < hi; j++)
        s->pairs[j - lo] = (scored){s->p[j], (int32_t)j};
    qsort(s->pairs, (size_t)(hi - lo), sizeof(scored), compare_scored);
    for (int64_t t = 0; t < hi - lo; t++)
        s->order[t] = s->pairs[t].index;
}

static void order_simhash(const eval_layer_index *x, const eval_capture *c, int32_t h, const float *q,
                          const scratch_layout *s, int64_t lo, int64_t hi)
{
    const int32_t d = c->head_dim;
    uint32_t qc = 0;
    for (int32_t b = 0; b < SIMHASH_BITS; b++) /* the query's extra coordinate is 0 */
        if (dot(x->simhash_planes + ((int64_t)h * SIMHASH_BITS + b) * (d + 1), q, d) > 0.0)
            qc |= 1u << b;
    const uint32_t *kc = x->simhash_keys + h * c->n;
    /* counting sort by Hamming distance, ascending (similarity descending); visiting j downwards
     * puts the higher index first within a distance */
    int64_t next[SIMHASH_BITS + 1] = {0};
    for (int64_t j = lo; j < hi; j++)
        next[__builtin_popcount(qc ^ kc[j])]++;
    for (int64_t dist = 0, start = 0; dist <= SIMHASH_BITS; dist++) {
        int64_t count = next[dist];
        next[dist] = start;
        start += count;
    }
    for (int64_t j = hi - 1; j >= lo; j--)
        s->order[next[__builtin_popcount(qc ^ kc[j])]++] = (int32_t)j;
}

static void order_quest(const eval_layer_index *x, const eval_capture *c, int which, int32_t kh, const float *q,
                        const scratch_layout *s, int64_t lo, int64_t hi)
{
    const int32_t d = c->head_dim, ps = quest_page_sizes[which];
    const int64_t pages = (c->n + ps - 1) / ps;
    const int64_t first = lo / ps, last = (hi - 1) / ps;
    for (int64_t P = first; P <= last; P++) {
        const float *mn = x->quest_min[which] + (kh * pages + P) * d, *mx = x->quest_max[which] + (kh * pages + P) * d;
        double bound = 0.0;
        for (int32_t ch = 0; ch < d; ch++) {
            double a = (double)q[ch] * mn[ch], b = (double)q[ch] * mx[ch];
            bound += a > b ? a : b;
        }
        s->pairs[P - first] = (scored){bound, (int32_t)P};
    }
    qsort(s->pairs, (size_t)(last - first + 1), sizeof(scored), compare_scored);
    int64_t t = 0;
    for (int64_t i = 0; i <= last - first; i++) {
        int64_t P = s->pairs[i].index;
        int64_t a = P * ps > lo ? P * ps : lo, b = (P + 1) * ps < hi ? (P + 1) * ps : hi;
        for (int64_t j = b - 1; j >= a; j--)
            s->order[t++] = (int32_t)j;
    }
}

/* ---- measures ---------------------------------------------------------------------------------- */

static eval_metric measure(double mass, const double *o_unnorm, const double *o_dense, int32_t d)
{
    double diff = 0.0, ref = 0.0;
    for (int32_t c = 0; c < d; c++) {
        double e = (mass > 0.0 ? o_unnorm[c] / mass : 0.0) - o_dense[c];
        diff += e * e;
        ref += o_dense[c] * o_dense[c];
    }
    return (eval_metric){mass, ref > 0.0 ? sqrt(diff / ref) : sqrt(diff)};
}

static void add_row(double *acc, double w, const float *v, int32_t d)
{
    for (int32_t c = 0; c < d; c++)
        acc[c] += w * (double)v[c];
}

/* Walks order, adding candidates to the base (sink ∪ local) set; measures at each budget's count. */
static void measure_prefixes(const scratch_layout *s, const float *V, int32_t d, double base_mass,
                             const int64_t *takes, int32_t num_budgets, eval_metric *out)
{
    /* budgets in increasing take order */
    int32_t idx[EVAL_MAX_BUDGETS];
    for (int32_t b = 0; b < num_budgets; b++)
        idx[b] = b;
    for (int32_t a = 1; a < num_budgets; a++)
        for (int32_t b = a; b > 0 && takes[idx[b]] < takes[idx[b - 1]]; b--) {
            int32_t t = idx[b];
            idx[b] = idx[b - 1];
            idx[b - 1] = t;
        }
    memcpy(s->o_acc, s->o_base, (size_t)d * sizeof(double));
    double mass = base_mass;
    int64_t t = 0;
    for (int32_t k = 0; k < num_budgets; k++) {
        int32_t b = idx[k];
        for (; t < takes[b]; t++) {
            int32_t j = s->order[t];
            mass += s->p[j];
            add_row(s->o_acc, s->p[j], V + (int64_t)j * d, d);
        }
        out[b] = measure(mass, s->o_acc, s->o_dense, d);
    }
}

void eval_one_query(const eval_capture *c, const eval_layer_index *x, int32_t layer, int32_t h, int64_t r,
                    const eval_budget *budgets, int32_t num_budgets, eval_window_rule rule,
                    const eval_learned_sets *const *learned, int32_t num_learned, void *scratch,
                    eval_metric *out_baselines, eval_metric *out_learned)
{
    const int32_t d = c->head_dim, Hq = c->q_heads, kh = h / (c->q_heads / c->kv_heads);
    const int64_t n = c->row_begin + r + 1;
    const float *q = c->q[layer] + (r * Hq + h) * d;
    const float *K = c->k[layer] + kh * c->n * d, *V = c->v[layer] + kh * c->n * d;
    scratch_layout s = carve(c, scratch);

    /* true softmax and the dense output */
    const double scale = 1.0 / sqrt((double)d);
    double mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        s.p[j] = scale * dot(q, K + j * d, d);
        mx = s.p[j] > mx ? s.p[j] : mx;
    }
    double z = 0.0;
    for (int64_t j = 0; j < n; j++)
        z += (s.p[j] = exp(s.p[j] - mx));
    memset(s.o_dense, 0, (size_t)d * sizeof(double));
    for (int64_t j = 0; j < n; j++) {
        s.p[j] /= z;
        add_row(s.o_dense, s.p[j], V + j * d, d);
    }

    /* sink ∪ local, and the candidates [lo, hi) */
    const int64_t lo = rule.sink < n ? rule.sink : n, hi = ha_local_start(n, rule.sink, rule.local);
    double base_mass = 0.0;
    memset(s.o_base, 0, (size_t)d * sizeof(double));
    for (int64_t j = 0; j < n; j++)
        if (j < lo || j >= hi) {
            base_mass += s.p[j];
            add_row(s.o_base, s.p[j], V + j * d, d);
        }
    const int64_t candidates = hi > lo ? hi - lo : 0;
    int64_t takes[EVAL_MAX_BUDGETS], none[EVAL_MAX_BUDGETS] = {0};
    for (int32_t b = 0; b < num_budgets; b++) {
        int64_t heavy = ha_heavy_for_length(n, budgets[b].fraction, 0);
        takes[b] = heavy < candidates ? heavy : candidates;
    }

    for (int m = 0; m < EVAL_NUM_BASELINES; m++) {
        if (candidates > 0) {
            switch ((eval_baseline)m) {
            case EVAL_ORACLE: order_oracle(&s, lo, hi); break;
            case EVAL_SIMHASH_MIPS: order_simhash(x, c, h, q, &s, lo, hi); break;
            case EVAL_QUEST_16: order_quest(x, c, 0, kh, q, &s, lo, hi); break;
            case EVAL_QUEST_128: order_quest(x, c, 1, kh, q, &s, lo, hi); break;
            default: break;
            }
        }
        measure_prefixes(&s, V, d, base_mass, m == EVAL_SINK_LOCAL ? none : takes, num_budgets,
                         out_baselines + m * num_budgets);
    }

    for (int32_t w = 0; w < num_learned; w++) {
        const eval_learned_sets *ls = learned[w];
        const int32_t S = ls->selection_heads, sel = S == Hq ? h : h / (Hq / S);
        for (int32_t b = 0; b < num_budgets; b++) {
            const int32_t *idx = ls->indices[b] + (r * S + sel) * ls->max_kept[b];
            const int32_t count = ls->counts[b][r * S + sel];
            double mass = 0.0;
            memset(s.o_acc, 0, (size_t)d * sizeof(double));
            for (int32_t t = 0; t < count; t++) {
                mass += s.p[idx[t]];
                add_row(s.o_acc, s.p[idx[t]], V + (int64_t)idx[t] * d, d);
            }
            out_learned[w * num_budgets + b] = measure(mass, s.o_acc, s.o_dense, d);
        }
    }
}
