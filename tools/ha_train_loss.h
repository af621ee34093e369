/*
 * ha_train_loss.h — the attention-mass-at-budget loss of ha-train (--loss mass): per query row, the
 * share of the row's true attention mass that a soft top-K of the relaxed scores keeps.
 *
 * The paper's BCE rewards membership: every target key counts the same, and a key just outside the
 * target set costs as much as one far outside. What the runtime is judged on (recall of attention
 * mass at a budget) counts each kept key by its probability and only cares about the keys near the
 * budget's threshold. For a row with relaxed scores s_j = ⟨tanh F_q(q), tanh F_k(k_j)⟩, the true
 * attention probabilities p_j over its n candidates (Σ p = 1) and budgets K_1..K_L:
 *
 *   L = −(1/L) Σ_l Σ_j p_j σ((s_j − θ_l)/T),   θ_l the soft quantile: Σ_j σ((s_j − θ_l)/T) = K_l.
 *
 * As T → 0 the inner sum is the attention mass of the K_l highest-scoring candidates, i.e. minus the
 * recall the runtime gets at that budget. θ_l depends on s; by the implicit function theorem
 *
 *   ∂L/∂s_j = −(1/(L·T)) Σ_l σ'_jl (p_j − p̄_l),   p̄_l = Σ_k p_k σ'_kl / Σ_k σ'_kl,
 *
 * with σ' = σ(1 − σ): a candidate near the threshold is pushed up iff it holds more attention mass
 * than the candidates at the threshold on average, and Σ_j ∂L/∂s_j = 0 (shifting every score
 * together changes nothing, as with a real top-K).
 */
#ifndef HA_TRAIN_LOSS_H
#define HA_TRAIN_LOSS_H

#include <stdint.h>

/**
 * The loss above for one row. s, p: [n]; counts: [levels] budgets K_l (a level with K_l ≥ n keeps
 * everything: it adds −Σ p and no gradient; K_l < 1 counts as 1); temp: T > 0. When grad is not
 * NULL, adds gscale · ∂L/∂s_j to grad[j]. tmp: scratch of n floats. Deterministic (fixed order).
 */
double tr_mass_loss_row(const float *s, const float *p, int64_t n, const int64_t *counts, int32_t levels, float temp,
                        float *grad, float gscale, float *tmp);

#endif /* HA_TRAIN_LOSS_H */
