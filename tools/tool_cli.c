/*
 * tool_cli.c — see tool_cli.h.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tool_cli.h"

int tool_complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", program_invocation_short_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 0;
}

int tool_parse_int(const char *what, const char *s, int64_t lo, int64_t hi, int32_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi || *s == ' ' || *s == '+')
        return tool_complain("%s: \"%s\" is not an integer in [%lld, %lld]", what, s, (long long)lo, (long long)hi);
    *out = (int32_t)v;
    return 1;
}

int tool_parse_fraction(const char *what, const char *s, double *out)
{
    char *end;
    double f;
    if (!strncmp(s, "1/", 2)) {
        long long k = strtoll(s + 2, &end, 10);
        f = k > 0 && s[2] != '\0' && !*end ? 1.0 / (double)k : -1.0;
    } else {
        f = strtod(s, &end);
        f = *s == '\0' || *end ? -1.0 : f;
    }
    if (!(f > 0.0 && f <= 1.0))
        return tool_complain("%s: \"%s\" is not a fraction in (0, 1] (1/K or a decimal)", what, s);
    *out = f;
    return 1;
}

int tool_parse_dtype(const char *what, const char *s, ha_st_dtype *out)
{
    if (!strcmp(s, "f32"))
        *out = HA_ST_F32;
    else if (!strcmp(s, "f16"))
        *out = HA_ST_F16;
    else if (!strcmp(s, "bf16"))
        *out = HA_ST_BF16;
    else
        return tool_complain("%s: \"%s\" is not f32, f16 or bf16", what, s);
    return 1;
}
