/*
 * fuzz_config — libFuzzer target of the model's config.json loader (lm_config_parse, what
 * lm_config_load runs on the file's bytes). An accepted config must satisfy what the runner relies
 * on: positive sizes within the loader's limits, heads that divide, an even head_dim, token ids in
 * the vocabulary, a positive finite eps and RoPE theta.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "lm_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lm_config c;
    ha_status st = lm_config_parse("config.json", size ? (const char *)data : "", size, &c);
    if (st != HA_OK) {
        if (lm_last_error()[0] == '\0')
            abort(); /* a failure always says why */
        return 0;
    }
    int ok = c.hidden_size > 0 && c.num_layers > 0 && c.num_q_heads > 0 && c.num_kv_heads > 0 && c.head_dim >= 2 &&
             c.head_dim % 2 == 0 && c.num_q_heads % c.num_kv_heads == 0 && c.intermediate_size > 0 &&
             c.vocab_size > 0 && c.max_positions > 0 && c.bos_id >= -1 && c.bos_id < c.vocab_size &&
             c.eos_id >= -1 && c.eos_id < c.vocab_size && c.rms_norm_eps > 0.0f && isfinite(c.rms_norm_eps) &&
             c.rope_theta > 0.0 && isfinite(c.rope_theta);
    if (!ok)
        abort();
    return 0;
}
