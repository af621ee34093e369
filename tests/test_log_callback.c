/*
 * test_log_callback.c — ha_set_log_callback: a failing call delivers its message to the callback
 * (with the user pointer, at WARN or ERROR), the level filter holds, and NULL restores the default.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "hashattn.h"

typedef struct log_record {
    int calls;
    int max_level_seen;
    int matching; /* lines naming the backend of the failing call */
    const char *needle;
} log_record;

static void record(void *user, ha_log_level level, const char *message)
{
    log_record *r = user;
    r->calls++;
    if ((int)level > r->max_level_seen)
        r->max_level_seen = (int)level;
    assert_non_null(message);
    assert_null(strchr(message, '\n'));
    if (r->needle && strstr(message, r->needle) && level <= HA_LOG_WARN)
        r->matching++;
}

static ha_status open_named(const char *name)
{
    ha_runtime *rt = NULL;
    ha_runtime_options o = {sizeof o, name, 0};
    ha_status st = ha_runtime_open(&o, &rt);
    ha_runtime_close(rt);
    return st;
}

static void test_failure_is_logged(void **state)
{
    (void)state;
    log_record r = {0, -1, 0, "no_such_backend_for_the_log"};
    ha_set_log_callback(record, &r, HA_LOG_DEBUG);
    assert_int_equal(open_named("no_such_backend_for_the_log"), HA_ERR_BACKEND_NOT_FOUND);
    assert_true(r.matching >= 1);
    /* a successful call is allowed to log, but only within the level */
    assert_int_equal(open_named("reference"), HA_OK);
    assert_true(r.max_level_seen <= HA_LOG_DEBUG);
    ha_set_log_callback(NULL, NULL, HA_LOG_ERROR);
}

static void test_level_filter(void **state)
{
    (void)state;
    log_record r = {0, -1, 0, "filtered_backend_name"};
    ha_set_log_callback(record, &r, HA_LOG_ERROR);
    assert_int_equal(open_named("filtered_backend_name"), HA_ERR_BACKEND_NOT_FOUND);
    assert_int_equal(open_named("reference"), HA_OK);
    assert_true(r.max_level_seen <= HA_LOG_ERROR); /* nothing above ERROR got through */
    ha_set_log_callback(NULL, NULL, HA_LOG_ERROR);
}

static void test_null_restores_default(void **state)
{
    (void)state;
    log_record r = {0, -1, 0, NULL};
    ha_set_log_callback(record, &r, HA_LOG_DEBUG);
    ha_set_log_callback(NULL, NULL, HA_LOG_DEBUG);
    assert_int_equal(open_named("backend_after_reset"), HA_ERR_BACKEND_NOT_FOUND);
    assert_int_equal(r.calls, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failure_is_logged),
        cmocka_unit_test(test_level_filter),
        cmocka_unit_test(test_null_restores_default),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
