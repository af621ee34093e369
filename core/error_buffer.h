/*
 * error_buffer.h — formatting an error message into a caller's buffer, for the internal pieces
 * (file readers, format converters) that report through `char *err, size_t err_size`.
 */
#ifndef HA_ERROR_BUFFER_H
#define HA_ERROR_BUFFER_H

#include <stddef.h>

#include "hashattn.h"

/** Writes the formatted message to err (when err is non-NULL and err_size > 0); returns status. */
ha_status ha_error_to_buffer(char *err, size_t err_size, ha_status status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif /* HA_ERROR_BUFFER_H */
