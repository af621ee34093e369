/*
 * fuzz_tokenizer_files — libFuzzer target of the tokenizer loader (lm_tokenizer_parse, what
 * lm_tokenizer_load runs on the bytes of vocab.json, merges.txt and tokenizer_config.json).
 *
 * Input layout: vocab.json, then FUZZ_SPLIT, then merges.txt, then optionally FUZZ_SPLIT and
 * tokenizer_config.json (absent when there is no second separator). A tokenizer that loads must
 * round-trip any text; the text used is the input's merges part (at most 4 KiB of it).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_tokenizer_check.h"
#include "lm_internal.h"

#define FUZZ_SPLIT "\n#~#\n"

/* Cuts [*at, end) at the next separator: returns the part, moves *at past the separator (or to end). */
static lm_file_bytes next_part(const char *name, const char **at, const char *end, int *found)
{
    lm_file_bytes part = {name, *at, (size_t)(end - *at)};
    const char *sep = memmem(*at, (size_t)(end - *at), FUZZ_SPLIT, strlen(FUZZ_SPLIT));
    *found = sep != NULL;
    if (sep) {
        part.len = (size_t)(sep - *at);
        *at = sep + strlen(FUZZ_SPLIT);
    } else {
        *at = end;
    }
    return part;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly the input's size: the parts are not NUL-terminated, reading past is caught */
    char *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    const char *at = copy, *end = copy + size;
    int more;
    lm_file_bytes vocab = next_part("vocab.json", &at, end, &more);
    lm_file_bytes merges = next_part("merges.txt", &at, end, &more);
    lm_file_bytes config = {"tokenizer_config.json", NULL, 0};
    if (more)
        config = next_part("tokenizer_config.json", &at, end, &more);

    lm_tokenizer *tok = NULL;
    ha_status st = lm_tokenizer_parse(&vocab, &merges, &config, &tok);
    if ((st == HA_OK) != (tok != NULL) || (st != HA_OK && lm_last_error()[0] == '\0'))
        abort(); /* success gives a tokenizer; failure gives none and a message */
    if (tok) {
        fuzz_check_round_trip(tok, merges.data, merges.len < 4096 ? merges.len : 4096);
        lm_tokenizer_free(tok);
    }
    free(copy);
    return 0;
}
