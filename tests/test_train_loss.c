/*
 * test_train_loss.c — ha-train's attention-mass loss (tools/ha_train_loss.c, --loss mass):
 * its gradient against central finite differences of the loss itself (per coordinate and along a
 * random direction), its limit at a small temperature (minus the attention mass of the top-K scores,
 * what the runtime's recall measures), and its invariance to shifting every score.
 * Fresh random rows of odd lengths; the gradient buffer starts non-zero (it is added to).
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "ha_train_loss.h"

static uint64_t rng_state;

static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unit(void) { return (double)(next_u64() >> 11) / 9007199254740992.0; }

static void seed_from_time(void)
{
    rng_state = (uint64_t)time(NULL) * 0x2545f4914f6cdd1dull;
    print_message("seed state %llu\n", (unsigned long long)rng_state);
}

/** A row: scores in ±range (like ⟨tanh, tanh⟩ of 32 bits), probabilities a softmax of random logits. */
static void random_row(int64_t n, float range, float *s, float *p)
{
    double z = 0.0;
    for (int64_t j = 0; j < n; j++) {
        s[j] = (float)((2.0 * unit() - 1.0) * range);
        p[j] = (float)exp(4.0 * unit() * unit());
        z += p[j];
    }
    for (int64_t j = 0; j < n; j++)
        p[j] = (float)(p[j] / z);
}

static void test_gradient_matches_finite_differences(void **state)
{
    (void)state;
    seed_from_time();
    for (int trial = 0; trial < 4; trial++) {
        const int64_t n = 301 + (int64_t)(next_u64() % 700) * 2; /* odd */
        const int32_t levels = 1 + (int32_t)(next_u64() % 3);
        int64_t counts[3];
        for (int32_t l = 0; l < levels; l++)
            counts[l] = 1 + (int64_t)(next_u64() % (uint64_t)(n / 4));
        const float temp = (float)(0.5 + 1.5 * unit()), gscale = (float)(0.5 + unit());
        float *s = malloc((size_t)n * sizeof(float)), *p = malloc((size_t)n * sizeof(float));
        float *grad = malloc((size_t)n * sizeof(float)), *base = malloc((size_t)n * sizeof(float));
        float *tmp = malloc((size_t)n * sizeof(float)), *sp = malloc((size_t)n * sizeof(float));
        assert_non_null(s && p && grad && base && tmp && sp);
        random_row(n, 8.0f, s, p);
        for (int64_t j = 0; j < n; j++)
            base[j] = grad[j] = (float)(unit() - 0.5); /* the loss adds to what is there */
        const double l0 = tr_mass_loss_row(s, p, n, counts, levels, temp, grad, gscale, tmp);
        assert_true(l0 < 0.0 && l0 > -1.0 - 1e-6);
        double gsum = 0.0, gmax = 0.0;
        for (int64_t j = 0; j < n; j++) {
            grad[j] = (grad[j] - base[j]) / gscale;
            gsum += grad[j];
            gmax = fabs(grad[j]) > gmax ? fabs(grad[j]) : gmax;
        }
        assert_true(gmax > 0.0);
        assert_true(fabs(gsum) < 1e-3 * gmax * sqrt((double)n)); /* zero-sum through the soft quantile */
        /* the coordinates of largest gradient: central differences of the loss (no gradient asked) */
        const float h = 1e-2f * temp;
        for (int rep = 0; rep < 6; rep++) {
            int64_t jm = 0;
            for (int64_t j = 0; j < n; j++)
                if (fabs(grad[j]) > fabs(grad[jm]))
                    jm = j;
            const float keep = s[jm];
            s[jm] = keep + h;
            const double up = tr_mass_loss_row(s, p, n, counts, levels, temp, NULL, 1.0f, tmp);
            s[jm] = keep - h;
            const double down = tr_mass_loss_row(s, p, n, counts, levels, temp, NULL, 1.0f, tmp);
            s[jm] = keep;
            const double fd = (up - down) / (2.0 * (double)h);
            print_message("n %lld levels %d T %.3f coord %lld: grad %.6e fd %.6e\n", (long long)n, levels, temp,
                          (long long)jm, grad[jm], fd);
            assert_true(fabs(fd - grad[jm]) <= 2e-2 * fabs(grad[jm]) + 1e-6);
            grad[jm] = 0.0f; /* next-largest next */
        }
        /* a random direction v: (L(s + hv) − L(s − hv)) / 2h against ∇L·v (recomputed gradient) */
        for (int64_t j = 0; j < n; j++)
            grad[j] = 0.0f;
        tr_mass_loss_row(s, p, n, counts, levels, temp, grad, 1.0f, tmp);
        double dir = 0.0;
        float *v = malloc((size_t)n * sizeof(float));
        assert_non_null(v);
        for (int64_t j = 0; j < n; j++) {
            v[j] = (float)(2.0 * unit() - 1.0);
            dir += (double)grad[j] * v[j];
        }
        for (int64_t j = 0; j < n; j++)
            sp[j] = s[j] + h * v[j];
        const double up = tr_mass_loss_row(sp, p, n, counts, levels, temp, NULL, 1.0f, tmp);
        for (int64_t j = 0; j < n; j++)
            sp[j] = s[j] - h * v[j];
        const double down = tr_mass_loss_row(sp, p, n, counts, levels, temp, NULL, 1.0f, tmp);
        const double fd = (up - down) / (2.0 * (double)h);
        print_message("direction: grad·v %.6e fd %.6e\n", dir, fd);
        assert_true(fabs(fd - dir) <= 3e-2 * fabs(dir) + 1e-6);
        free(v);
        free(s);
        free(p);
        free(grad);
        free(base);
        free(tmp);
        free(sp);
    }
}

static int cmp_desc(const void *a, const void *b)
{
    const float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

typedef struct pair {
    float s, p;
} pair;

static int cmp_pair_desc(const void *a, const void *b)
{
    return cmp_desc(&((const pair *)a)->s, &((const pair *)b)->s);
}

/* With T small against the gaps between scores, the loss is minus the mass of the K top-scoring candidates. */
static void test_small_temperature_is_top_k_mass(void **state)
{
    (void)state;
    seed_from_time();
    const int64_t n = 777;
    float *s = malloc((size_t)n * sizeof(float)), *p = malloc((size_t)n * sizeof(float));
    float *tmp = malloc((size_t)n * sizeof(float));
    pair *pr = malloc((size_t)n * sizeof(pair));
    assert_non_null(s && p && tmp && pr);
    random_row(n, 8.0f, s, p);
    for (int64_t j = 0; j < n; j++) /* distinct scores on a grid of 0.02 */
        s[j] = (float)(0.02 * (double)j - 7.0);
    for (int64_t j = n - 1; j > 0; j--) { /* shuffled */
        const int64_t k = (int64_t)(next_u64() % (uint64_t)(j + 1));
        const float t = s[j];
        s[j] = s[k];
        s[k] = t;
    }
    for (int64_t j = 0; j < n; j++)
        pr[j] = (pair){s[j], p[j]};
    qsort(pr, (size_t)n, sizeof(pair), cmp_pair_desc);
    const int64_t counts[3] = {97, 24, 5};
    double want = 0.0;
    for (int32_t l = 0; l < 3; l++)
        for (int64_t j = 0; j < counts[l]; j++)
            want -= pr[j].p / 3.0;
    const double got = tr_mass_loss_row(s, p, n, counts, 3, 1e-3f, NULL, 1.0f, tmp);
    print_message("T 1e-3: loss %.7f, minus the top-K mass %.7f\n", got, want);
    assert_true(fabs(got - want) < 1e-5);
    /* a level that keeps everything: minus the whole mass, whatever T */
    const int64_t all[1] = {n};
    assert_true(fabs(tr_mass_loss_row(s, p, n, all, 1, 1.0f, NULL, 1.0f, tmp) + 1.0) < 1e-5);
    free(s);
    free(p);
    free(tmp);
    free(pr);
}

static void test_shift_invariance(void **state)
{
    (void)state;
    seed_from_time();
    const int64_t n = 513;
    float *s = malloc((size_t)n * sizeof(float)), *p = malloc((size_t)n * sizeof(float));
    float *tmp = malloc((size_t)n * sizeof(float));
    assert_non_null(s && p && tmp);
    random_row(n, 6.0f, s, p);
    const int64_t counts[2] = {64, 16};
    const double a = tr_mass_loss_row(s, p, n, counts, 2, 0.75f, NULL, 1.0f, tmp);
    for (int64_t j = 0; j < n; j++)
        s[j] += 3.5f;
    const double b = tr_mass_loss_row(s, p, n, counts, 2, 0.75f, NULL, 1.0f, tmp);
    print_message("shifted by 3.5: %.7f vs %.7f\n", b, a);
    assert_true(fabs(a - b) < 1e-5);
    /* and a permutation of the candidates changes nothing either */
    for (int64_t j = 0; j + 1 < n; j += 2) {
        float t = s[j];
        s[j] = s[j + 1];
        s[j + 1] = t;
        t = p[j];
        p[j] = p[j + 1];
        p[j + 1] = t;
    }
    const double c = tr_mass_loss_row(s, p, n, counts, 2, 0.75f, NULL, 1.0f, tmp);
    assert_true(fabs(c - b) < 1e-5);
    free(s);
    free(p);
    free(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradient_matches_finite_differences),
        cmocka_unit_test(test_small_temperature_is_top_k_mass),
        cmocka_unit_test(test_shift_invariance),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
