/*
 * fuzz_tokenizer_text — libFuzzer target of encoding and decoding with the shipped tokenizer
 * (models/tinylm-25m: 8192 tokens, its merges and special tokens).
 *
 * The input is used twice: as text, which must round-trip through lm_tokenize / lm_detokenize; and
 * as an array of int32 ids (little-endian, trailing bytes ignored), which lm_detokenize must decode
 * when every id is in the vocabulary (to the concatenation of the tokens' bytes) and refuse with
 * HA_ERR_INVALID_ARGUMENT otherwise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_tokenizer_check.h"

#ifndef FUZZ_MODEL_DIR
#error "FUZZ_MODEL_DIR (the shipped model's directory) must be defined"
#endif

static const lm_tokenizer *shipped(void)
{
    static lm_tokenizer *tok;
    if (!tok && lm_tokenizer_load(FUZZ_MODEL_DIR, &tok) != HA_OK) {
        fprintf(stderr, "fuzz_tokenizer_text: %s\n", lm_last_error());
        abort();
    }
    return tok;
}

static void check_decode(const lm_tokenizer *tok, const uint8_t *data, size_t size)
{
    int64_t n = (int64_t)(size / 4);
    int32_t *ids = malloc((size_t)n * sizeof(int32_t) + 1);
    if (!ids)
        return;
    memcpy(ids, data, (size_t)n * sizeof(int32_t));
    int all_valid = 1;
    size_t expected = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t len = 0;
        if (!lm_token_bytes(tok, ids[i], &len))
            all_valid = 0;
        expected += len;
    }
    char *text = NULL;
    size_t len = 0;
    ha_status st = lm_detokenize(tok, ids, n, &text, &len);
    if (all_valid ? (st != HA_OK || len != expected || text[len] != '\0')
                  : (st != HA_ERR_INVALID_ARGUMENT || text != NULL))
        abort();
    for (int64_t i = 0, at = 0; st == HA_OK && i < n; i++) { /* the tokens' bytes, in order */
        size_t l;
        const char *p = lm_token_bytes(tok, ids[i], &l);
        if (memcmp(text + at, p, l) != 0)
            abort();
        at += (int64_t)l;
    }
    free(text);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const lm_tokenizer *tok = shipped();
    fuzz_check_round_trip(tok, (const char *)data, size);
    check_decode(tok, data, size);
    return 0;
}
