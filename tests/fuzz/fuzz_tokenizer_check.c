/* fuzz_tokenizer_check.c — see fuzz_tokenizer_check.h. */
#include "fuzz_tokenizer_check.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

void fuzz_check_round_trip(const lm_tokenizer *tok, const char *text, size_t len)
{
    int32_t *ids = NULL;
    int64_t n = 0;
    if (lm_tokenize(tok, len ? text : "", len, &ids, &n) != HA_OK)
        abort(); /* encoding has no failure but out of memory */
    if ((len > 0) != (n > 0) || n > (int64_t)len)
        abort(); /* at least one token per non-empty text, never more tokens than bytes */
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= lm_tokenizer_vocab_size(tok))
            abort();
    char *back = NULL;
    size_t back_len = 0;
    if (lm_detokenize(tok, ids, n, &back, &back_len) != HA_OK)
        abort();
    if (back_len != len || memcmp(back, text, len) != 0 || back[back_len] != '\0')
        abort(); /* the bytes did not round-trip */
    free(ids);
    free(back);
}
