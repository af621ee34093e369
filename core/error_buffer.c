/*
 * error_buffer.c — see error_buffer.h.
 */
#include <stdarg.h>
#include <stdio.h>

#include "error_buffer.h"

ha_status ha_error_to_buffer(char *err, size_t err_size, ha_status status, const char *fmt, ...)
{
    if (err && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return status;
}
