/*
 * log.c — the process-wide log callback and the per-thread last-error message.
 *
 * Threads: the callback, its user pointer and its level form one setting guarded by a read-write
 * lock. Logging holds the read lock while the callback runs, so lines from several threads are
 * delivered concurrently, and ha_set_log_callback (the write lock) returns only once no thread is
 * still inside the previous callback: the host may free that callback's user data right after.
 * glibc's default rwlock prefers readers, so a callback that calls into the library (and logs
 * again, taking the read lock recursively) cannot deadlock behind a waiting writer. A callback that
 * calls ha_set_log_callback would wait for itself; that call is refused (see in_callback).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define HA_ERROR_MAX 1024
/* A level below every ha_log_level: nothing is delivered (HASHATTN_LOG=none). */
#define LEVEL_NONE (-2)

static _Thread_local char last_error[HA_ERROR_MAX];
/* Depth of callbacks this thread is running (a callback may log again through the library). */
static _Thread_local int in_callback;

static pthread_rwlock_t log_lock = PTHREAD_RWLOCK_INITIALIZER;
static ha_log_fn log_fn;      /* guarded by log_lock */
static void *log_user;        /* guarded by log_lock */
static int log_max_level;     /* guarded by log_lock; the default's level until set */
static int default_max_level; /* written once, by read_default_level */
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

/** The level of the default (stderr) logger, from HASHATTN_LOG: read once per process. */
static void read_default_level(void)
{
    const char *env = getenv("HASHATTN_LOG");
    int level = HA_LOG_WARN;
    if (env && !strcmp(env, "none"))
        level = LEVEL_NONE;
    else if (env && !strcmp(env, "error"))
        level = HA_LOG_ERROR;
    else if (env && !strcmp(env, "info"))
        level = HA_LOG_INFO;
    else if (env && !strcmp(env, "debug"))
        level = HA_LOG_DEBUG;
    default_max_level = level;
    pthread_rwlock_wrlock(&log_lock);
    if (!log_fn)
        log_max_level = level;
    pthread_rwlock_unlock(&log_lock);
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
    pthread_once(&default_once, read_default_level);
    ha_clear_error();
    if (in_callback) {
        /* the write lock would wait for this very thread's read lock */
        snprintf(last_error, sizeof last_error,
                 "ha_set_log_callback: called from inside the log callback; the setting is unchanged");
        ha_log(HA_LOG_ERROR, "%s", last_error);
        return;
    }
    pthread_rwlock_wrlock(&log_lock);
    log_fn = fn;
    log_user = user;
    log_max_level = fn ? (int)max_level : default_max_level;
    pthread_rwlock_unlock(&log_lock);
}

static void vlog(ha_log_level level, const char *fmt, va_list ap)
{
    pthread_once(&default_once, read_default_level);
    if (pthread_rwlock_rdlock(&log_lock) != 0) { /* only past the lock's reader limit */
        fprintf(stderr, "hashattn %s: ", level_name(level));
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        return;
    }
    if ((int)level <= log_max_level) {
        char line[HA_ERROR_MAX];
        vsnprintf(line, sizeof line, fmt, ap);
        if (log_fn) {
            in_callback++;
            log_fn(log_user, level, line);
            in_callback--;
        } else {
            fprintf(stderr, "hashattn %s: %s\n", level_name(level), line);
        }
    }
    pthread_rwlock_unlock(&log_lock);
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
    char message[HA_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    ha_log(HA_LOG_WARN, "%s (%s)", message, ha_status_string(status));
    /* after the callback: a callback that calls into the library must not replace this message */
    memcpy(last_error, message, sizeof last_error);
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
