/*
 * ha_train_loss.c — the attention-mass-at-budget loss (see ha_train_loss.h). The soft quantile θ_l
 * is found by Newton's method on f(θ) = Σ_j σ((s_j − θ)/T) − K_l (decreasing in θ), started at the
 * midpoint of the K-th and (K+1)-th largest scores (the hard quantile, where f ≈ 0 for small T) and
 * kept inside a bracket where f changes sign (bisection when a Newton step leaves it).
 */
#include "ha_train_loss.h"

#include <math.h>

#include "ha_train_data.h"
#include "ha_train_mlp.h"

#define TR_MASS_MAX_LEVELS 16

/* Σ_j σ_j and Σ_j σ_j(1 − σ_j) at θ, σ_j = σ((s_j − θ)/T). */
static void sigmoid_sums(const float *s, int64_t n, double theta, float inv_t, double *sum, double *dsum)
{
    double a = 0.0, b = 0.0;
#pragma omp simd reduction(+ : a, b)
    for (int64_t j = 0; j < n; j++) {
        const float sg = tr_sigmoid((float)((double)s[j] - theta) * inv_t);
        a += (double)sg;
        b += (double)(sg * (1.0f - sg));
    }
    *sum = a;
    *dsum = b;
}

/* θ with Σ_j σ((s_j − θ)/T) = k, from the start value init; smin/smax: the extreme scores. */
static double soft_quantile(const float *s, int64_t n, int64_t k, float temp, double init, float smin, float smax)
{
    const float inv_t = 1.0f / temp;
    double lo = (double)smin - 40.0 * temp, hi = (double)smax + 40.0 * temp; /* f(lo) > 0 > f(hi) */
    double theta = init;
    for (int it = 0; it < 80; it++) {
        double sum, dsum;
        sigmoid_sums(s, n, theta, inv_t, &sum, &dsum);
        const double f = sum - (double)k;
        if (f == 0.0)
            break;
        if (f > 0.0)
            lo = theta;
        else
            hi = theta;
        double next = theta + (double)temp * f / dsum; /* Newton: f'(θ) = −Σσ'/T */
        if (!(dsum > 0.0) || !(next > lo && next < hi))
            next = 0.5 * (lo + hi);
        const double moved = fabs(next - theta);
        theta = next;
        if (moved < 1e-7 * (double)temp)
            break;
    }
    return theta;
}

double tr_mass_loss_row(const float *s, const float *p, int64_t n, const int64_t *counts, int32_t levels, float temp,
                        float *grad, float gscale, float *tmp)
{
    if (n <= 0 || levels <= 0)
        return 0.0;
    if (levels > TR_MASS_MAX_LEVELS)
        levels = TR_MASS_MAX_LEVELS;
    float smin = s[0], smax = s[0];
    double ptotal = 0.0;
    for (int64_t j = 0; j < n; j++) {
        smin = s[j] < smin ? s[j] : smin;
        smax = s[j] > smax ? s[j] : smax;
        ptotal += (double)p[j];
    }
    /* hard quantiles, levels by decreasing K so that each selection narrows the next one's prefix */
    int64_t k[TR_MASS_MAX_LEVELS];
    int32_t order[TR_MASS_MAX_LEVELS];
    double init[TR_MASS_MAX_LEVELS];
    for (int32_t l = 0; l < levels; l++) {
        k[l] = counts[l] < 1 ? 1 : counts[l];
        int32_t at = l;
        while (at > 0 && k[order[at - 1]] < k[l]) {
            order[at] = order[at - 1];
            at--;
        }
        order[at] = l;
    }
    for (int64_t j = 0; j < n; j++)
        tmp[j] = s[j];
    int64_t prefix = n;
    for (int32_t a = 0; a < levels; a++) {
        const int32_t l = order[a];
        if (k[l] >= n)
            continue;
        const float kth = tr_kth_largest(tmp, prefix, k[l]); /* tmp[0..k) the k largest */
        float next = -INFINITY;
        for (int64_t j = k[l]; j < prefix; j++)
            next = tmp[j] > next ? tmp[j] : next;
        init[l] = 0.5 * ((double)kth + (double)next);
        prefix = k[l];
    }

    const float inv_t = 1.0f / temp;
    double loss = 0.0;
    for (int32_t l = 0; l < levels; l++) {
        if (k[l] >= n) {
            loss -= ptotal;
            continue;
        }
        const double theta = soft_quantile(s, n, k[l], temp, init[l], smin, smax);
        double kept = 0.0, pd = 0.0, d = 0.0;
        for (int64_t j = 0; j < n; j++) {
            const float sg = tr_sigmoid((float)((double)s[j] - theta) * inv_t);
            const float sd = sg * (1.0f - sg);
            tmp[j] = sd;
            kept += (double)(p[j] * sg);
            pd += (double)(p[j] * sd);
            d += (double)sd;
        }
        loss -= kept;
        if (!grad || !(d > 0.0))
            continue;
        const float pbar = (float)(pd / d), c = -gscale * inv_t / (float)levels;
        for (int64_t j = 0; j < n; j++)
            grad[j] += c * tmp[j] * (p[j] - pbar);
    }
    return loss / (double)levels;
}
