/*
 * tool_cli.h — what the command-line tools share: error lines prefixed with the program's name, and
 * strict integer, fraction and dtype arguments.
 */
#ifndef HA_TOOL_CLI_H
#define HA_TOOL_CLI_H

#include <stdint.h>

#include "safetensors.h"

/** Prints "<program>: <message>" to stderr; returns 0 (the parsers' failure value). */
int tool_complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/** Parses s as a decimal integer in [lo, hi] (digits only, optional leading '-', whole string).
 *  Returns 1, or complains naming `what` and returns 0. */
int tool_parse_int(const char *what, const char *s, int64_t lo, int64_t hi, int32_t *out);

/** Parses s as a fraction in (0, 1], written "1/K" or as a decimal number. Returns 1, or complains
 *  naming `what` and returns 0. */
int tool_parse_fraction(const char *what, const char *s, double *out);

/** Parses s as a tensor dtype of the weights writer: f32, f16 or bf16. Returns 1, or complains naming
 *  `what` and returns 0. */
int tool_parse_dtype(const char *what, const char *s, ha_st_dtype *out);

#endif /* HA_TOOL_CLI_H */
