/*
 * ha_eval_lm.c — perplexity and next-token agreement with sparse decode attention. Targets
 * [begin, end) of the window: tokens [0, begin-1) are prefilled (dense), then tokens begin-1 .. end-2
 * are decoded one step at a time through the runtime, each step predicting the next token of the
 * text (teacher forcing). The dense run decodes with ha_dense_attend in every layer; a sparse run
 * uses HashAttention (ha_decode_step) in the layers the mapping weights mark sparse.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ha_eval.h"

typedef struct decode_pass {
    const lm_model *m;
    ha_runtime *rt;
    const ha_weights *w;
    const ha_plan_config *plan;
    const int32_t *tokens;
    int64_t begin, end;
    const char *label;
} decode_pass;

static double nll_of(const float *logits, int32_t vocab, int32_t target, int32_t *argmax)
{
    float mx = logits[0];
    int32_t best = 0;
    for (int32_t i = 1; i < vocab; i++)
        if (logits[i] > mx) {
            mx = logits[i];
            best = i;
        }
    double z = 0.0;
    for (int32_t i = 0; i < vocab; i++)
        z += exp((double)logits[i] - (double)mx);
    *argmax = best;
    return log(z) + (double)mx - (double)logits[target];
}

/* Runs the pass; per target its argmax into argmax_out (may be NULL) and, with dense_argmax, the
 * agreement with it. */
static ha_status run_pass(const decode_pass *p, int32_t *argmax_out, const int32_t *dense_argmax, eval_lm_run *out)
{
    memset(out, 0, sizeof(*out));
    lm_session_config sc;
    lm_session_config_init(&sc, p->end);
    sc.rt = p->rt;
    sc.hash_weights = p->w;
    sc.plan = p->plan;
    lm_session *s;
    ha_status st = lm_session_create(p->m, &sc, &s);
    if (st != HA_OK) {
        fprintf(stderr, "ha-eval: lm_session_create failed: %s\n", lm_last_error());
        return st;
    }
    const int32_t vocab = lm_model_config(p->m)->vocab_size;
    float *logits = malloc((size_t)vocab * sizeof(float));
    if (!logits) {
        lm_session_free(s);
        return HA_ERR_OUT_OF_MEMORY;
    }
    if ((st = lm_prefill(s, p->tokens, p->begin - 1, LM_LOGITS_NONE, NULL)) != HA_OK)
        fprintf(stderr, "ha-eval: lm_prefill failed: %s\n", lm_last_error());
    const int64_t targets = p->end - p->begin;
    double nll = 0.0, started = eval_now_s();
    int64_t agreed = 0;
    for (int64_t t = 0; t < targets && st == HA_OK; t++) {
        if ((st = lm_decode_step(s, p->tokens[p->begin - 1 + t], logits)) != HA_OK) {
            fprintf(stderr, "ha-eval: lm_decode_step failed: %s\n", lm_last_error());
            break;
        }
        int32_t best;
        nll += nll_of(logits, vocab, p->tokens[p->begin + t], &best);
        if (argmax_out)
            argmax_out[t] = best;
        if (dense_argmax)
            agreed += best == dense_argmax[t];
        if ((t & 63) == 63 || t + 1 == targets)
            eval_progress(p->label, t + 1, targets, started);
    }
    out->seconds = eval_now_s() - started;
    out->targets = targets;
    out->nll = targets ? nll / (double)targets : 0.0;
    out->agreement = dense_argmax && targets ? (double)agreed / (double)targets : 1.0;
    free(logits);
    lm_session_free(s);
    return st;
}

ha_status eval_lm_dense_run(const lm_model *m, ha_runtime *rt, const int32_t *tokens, int64_t begin, int64_t end,
                            eval_lm_dense *out)
{
    memset(out, 0, sizeof(*out));
    out->begin = begin;
    out->end = end;
    if (begin < 1 || end <= begin)
        return HA_ERR_INVALID_ARGUMENT;
    if (!(out->argmax = malloc((size_t)(end - begin) * sizeof(int32_t))))
        return HA_ERR_OUT_OF_MEMORY;
    decode_pass p = {m, rt, NULL, NULL, tokens, begin, end, "perplexity: dense"};
    return run_pass(&p, out->argmax, NULL, &out->run);
}

ha_status eval_lm_sparse_run(const lm_model *m, ha_runtime *rt, const ha_weights *w, const int32_t *tokens,
                             const eval_lm_dense *dense, eval_window_rule rule, double fraction, eval_lm_run *out)
{
    const lm_config *cfg = lm_model_config(m);
    ha_plan_config pc;
    ha_plan_config_init(&pc, 1, dense->end, cfg->num_q_heads, cfg->num_kv_heads, cfg->head_dim);
    pc.sink = rule.sink;
    pc.local = rule.local;
    pc.heavy_fraction = fraction;
    char label[64];
    snprintf(label, sizeof label, "perplexity: sparse 1/%.0f", 1.0 / fraction);
    decode_pass p = {m, rt, w, &pc, tokens, dense->begin, dense->end, label};
    return run_pass(&p, NULL, dense->argmax, out);
}

void eval_lm_dense_free(eval_lm_dense *d)
{
    free(d->argmax);
    memset(d, 0, sizeof(*d));
}
