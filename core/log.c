/*
 * log.c — the process-wide log callback and the per-thread last-error message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HA_ERROR_MAX 1024

static _Thread_local char last_error[HA_ERROR_MAX];

static ha_log_fn log_fn;
static void *log_user;
static int log_max_level = -1; /* -1: not yet read from HASHATTN_LOG */

static int default_level(void)
{
    const char *env = getenv("HASHATTN_LOG");
    if (!env)
        return HA_LOG_WARN;
    if (!strcmp(env, "none"))
        return -2;
    if (!strcmp(env, "error"))
        return HA_LOG_ERROR;
    if (!strcmp(env, "info"))
        return HA_LOG_INFO;
    if (!strcmp(env, "debug"))
        return HA_LOG_DEBUG;
    return HA_LOG_WARN;
}

static const char *level_name(ha_log_level level)
{
    switch (level) {
    case HA_LOG_ERROR: return "error";
    case HA_LOG_WARN: return "warning";
    case HA_LOG_INFO: return "info";
    default: return "debug";
    }
}

HA_API void ha_set_log_callback(ha_log_fn fn, void *user, ha_log_level max_level)
{
    log_fn = fn;
    log_user = user;
    log_max_level = fn ? (int)max_level : -1;
}

static void vlog(ha_log_level level, const char *fmt, va_list ap)
{
    if (log_max_level == -1 && !log_fn)
        log_max_level = default_level();
    if ((int)level > log_max_level)
        return;
    char line[HA_ERROR_MAX];
    vsnprintf(line, sizeof line, fmt, ap);
    if (log_fn)
        log_fn(log_user, level, line);
    else
        fprintf(stderr, "hashattn %s: %s\n", level_name(level), line);
}

void ha_log(ha_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, fmt, ap);
    va_end(ap);
}

void ha_log_plain(ha_log_level level, const char *message)
{
    ha_log(level, "%s", message);
}

ha_status ha_fail(ha_status status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    ha_log(HA_LOG_WARN, "%s (%s)", last_error, ha_status_string(status));
    return status;
}

void ha_clear_error(void)
{
    last_error[0] = '\0';
}

HA_API const char *ha_last_error(void)
{
    return last_error;
}
