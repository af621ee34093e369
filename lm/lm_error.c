/*
 * lm_error.c — the runner's thread-local error message (lm_last_error).
 */
#include <stdarg.h>
#include <stdio.h>

#include "lm_internal.h"

static _Thread_local char last_error[1024];

const char *lm_last_error(void)
{
    return last_error;
}

void lm_clear_error(void)
{
    last_error[0] = '\0';
}

ha_status lm_fail(ha_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    return status;
}

ha_status lm_fail_ha(ha_status status, const char *what)
{
    return lm_fail(status, "%s: %s (%s)", what, ha_last_error(), ha_status_string(status));
}
