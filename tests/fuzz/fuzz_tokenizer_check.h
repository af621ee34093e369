/*
 * fuzz_tokenizer_check.h — the property both tokenizer fuzz targets check (lm.h): any byte string
 * round-trips through lm_tokenize and lm_detokenize, with every id in the vocabulary.
 */
#ifndef FUZZ_TOKENIZER_CHECK_H
#define FUZZ_TOKENIZER_CHECK_H

#include <stddef.h>

#include "lm.h"

/** Encodes text, decodes the ids and aborts unless the bytes come back unchanged. */
void fuzz_check_round_trip(const lm_tokenizer *tok, const char *text, size_t len);

#endif
