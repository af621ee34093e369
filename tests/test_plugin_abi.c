/*
 * test_plugin_abi.c — backend discovery and ABI negotiation with deliberately broken plugins
 * (bad_plugin.c, built as hashattn_<defect>.so in $HASHATTN_BAD_PLUGIN_DIR):
 *
 *  - each broken plugin named by path (option or $HASHATTN_BACKEND) or by name is refused with
 *    HA_ERR_ABI_MISMATCH / HA_ERR_BACKEND_NOT_FOUND and a message naming both sides' versions;
 *  - a missing path or a file that is not a shared object: HA_ERR_BACKEND_NOT_FOUND;
 *  - probing over directories full of broken plugins (which all claim a huge probe score) still
 *    picks what it picks without them;
 *  - the explicit option overrides $HASHATTN_BACKEND.
 *
 * The good plugins' directories come from $HASHATTN_PLUGIN_PATH as meson sets it; the test then
 * changes the environment itself before each ha_runtime_open.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hashattn.h"
#include "hashattn_plugin.h"

typedef struct bad_plugin {
    const char *defect;    /* file hashattn_<defect>.so */
    unsigned accepted;     /* bit mask of statuses */
    const char *words[3];  /* the message must contain each (as a word) */
} bad_plugin;

#define BIT(s) (1u << (s))

static char version_word[16], v1_size_word[16], small_size_word[16];

static const bad_plugin bad_plugins[] = {
    {"bad_abi_version", BIT(HA_ERR_ABI_MISMATCH), {"999", version_word, NULL}},
    {"bad_table_size", BIT(HA_ERR_ABI_MISMATCH), {small_size_word, v1_size_word, NULL}},
    {"no_entry_symbol", BIT(HA_ERR_ABI_MISMATCH) | BIT(HA_ERR_BACKEND_NOT_FOUND), {HA_PLUGIN_ENTRY_SYMBOL, NULL}},
    {"returns_null", BIT(HA_ERR_ABI_MISMATCH) | BIT(HA_ERR_BACKEND_NOT_FOUND), {version_word, NULL}},
    {"missing_member", BIT(HA_ERR_ABI_MISMATCH), {"encode", NULL}},
    {"bad_name", BIT(HA_ERR_ABI_MISMATCH), {"name", NULL}},
    {"probe_zero", BIT(HA_ERR_BACKEND_NOT_FOUND), {NULL}},
    {"init_fails", ~(BIT(HA_OK)), {NULL}},
};
#define N_BAD (sizeof bad_plugins / sizeof bad_plugins[0])

static char bad_dir[PATH_MAX];        /* where meson built the broken plugins */
static char good_path[8192];          /* the good plugins' directories */
static char only_bad_dir[PATH_MAX];   /* links to every broken plugin but init_fails, plus junk files */
static char init_fails_dir[PATH_MAX]; /* a link to init_fails only */
static char empty_dir[PATH_MAX];

static int mentions(const char *msg, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = strstr(msg, word); p; p = strstr(p + 1, word)) {
        int before = p == msg || !(isalnum((unsigned char)p[-1]) || p[-1] == '_');
        int after = !(isalnum((unsigned char)p[n]) || p[n] == '_');
        if (before && after)
            return 1;
    }
    return 0;
}

static void plugin_file(const char *defect, char *path, size_t size)
{
    snprintf(path, size, "%s/hashattn_%s.so", bad_dir, defect);
}

static void link_into(const char *dir, const char *defect)
{
    char target[PATH_MAX + 64], link[PATH_MAX + 64];
    plugin_file(defect, target, sizeof target);
    snprintf(link, sizeof link, "%s/hashattn_%s.so", dir, defect);
    assert_int_equal(symlink(target, link), 0);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void make_temp_dir(char *out)
{
    snprintf(out, PATH_MAX, "/tmp/hashattn-abi-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static int setup(void **state)
{
    (void)state;
    const char *dir = getenv("HASHATTN_BAD_PLUGIN_DIR");
    if (!dir || !*dir) {
        fprintf(stderr, "HASHATTN_BAD_PLUGIN_DIR is not set (run through meson test)\n");
        return -1;
    }
    snprintf(bad_dir, sizeof bad_dir, "%s", dir);
    const char *good = getenv("HASHATTN_PLUGIN_PATH");
    snprintf(good_path, sizeof good_path, "%s", good ? good : "");
    snprintf(version_word, sizeof version_word, "%u", HA_PLUGIN_ABI_VERSION);
    snprintf(v1_size_word, sizeof v1_size_word, "%zu", (size_t)HA_PLUGIN_API_V1_SIZE);
    snprintf(small_size_word, sizeof small_size_word, "%zu", (size_t)HA_PLUGIN_API_V1_SIZE - 8);
    unsetenv("HASHATTN_BACKEND");

    make_temp_dir(only_bad_dir);
    make_temp_dir(init_fails_dir);
    make_temp_dir(empty_dir);
    for (size_t i = 0; i < N_BAD; i++)
        if (strcmp(bad_plugins[i].defect, "init_fails") != 0)
            link_into(only_bad_dir, bad_plugins[i].defect);
    write_text(only_bad_dir, "hashattn_garbage.so", "this is not an ELF file\n");
    write_text(only_bad_dir, "hashattn_empty.so", "");
    write_text(only_bad_dir, "README.txt", "not a plugin name\n");
    link_into(init_fails_dir, "init_fails");
    return 0;
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int teardown(void **state)
{
    (void)state;
    remove_dir(only_bad_dir);
    remove_dir(init_fails_dir);
    remove_dir(empty_dir);
    return 0;
}

/** Opens with the given explicit choice (NULL: none) and plugin path; returns the status. */
static ha_status open_with(const char *choice, const char *plugin_path, ha_runtime **rt)
{
    setenv("HASHATTN_PLUGIN_PATH", plugin_path, 1);
    ha_runtime_options o = {sizeof o, choice, 0};
    *rt = (ha_runtime *)1;
    ha_status st = ha_runtime_open(&o, rt);
    if (st != HA_OK && *rt != NULL)
        fail_msg("ha_runtime_open failed (%s) but did not set *out to NULL", ha_status_string(st));
    return st;
}

static void expect_refused(const bad_plugin *p, ha_status st, const char *how)
{
    const char *msg = ha_last_error();
    if (st >= 32 || !((p->accepted >> st) & 1u))
        fail_msg("%s (%s): ha_runtime_open returned %s; message: %s", p->defect, how, ha_status_string(st), msg);
    if (!*msg)
        fail_msg("%s (%s): refused with %s but no message", p->defect, how, ha_status_string(st));
    for (int w = 0; w < 3 && p->words[w]; w++)
        if (!mentions(msg, p->words[w]))
            fail_msg("%s (%s): the message \"%s\" does not name '%s'", p->defect, how, msg, p->words[w]);
}

/** The backend probing chooses with the given plugin path (must succeed). */
static void probe_choice(const char *plugin_path, char *name, size_t size)
{
    ha_runtime *rt;
    ha_status st = open_with(NULL, plugin_path, &rt);
    if (st != HA_OK)
        fail_msg("probing with HASHATTN_PLUGIN_PATH=%s: %s: %s", plugin_path, ha_status_string(st), ha_last_error());
    snprintf(name, size, "%s", ha_runtime_backend_name(rt));
    ha_runtime_close(rt);
}

/* ---- tests ------------------------------------------------------------------------------------ */

static void test_bad_plugins_by_path(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_BAD; i++) {
        char path[PATH_MAX + 64];
        plugin_file(bad_plugins[i].defect, path, sizeof path);
        assert_int_equal(access(path, R_OK), 0);
        ha_runtime *rt;
        expect_refused(&bad_plugins[i], open_with(path, good_path, &rt), "options.backend = path");
        /* the same through the environment */
        setenv("HASHATTN_BACKEND", path, 1);
        expect_refused(&bad_plugins[i], open_with(NULL, good_path, &rt), "HASHATTN_BACKEND = path");
        unsetenv("HASHATTN_BACKEND");
    }
}

static void test_bad_plugins_by_name(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_BAD; i++) {
        ha_runtime *rt;
        const char *dir = strcmp(bad_plugins[i].defect, "init_fails") ? only_bad_dir : init_fails_dir;
        expect_refused(&bad_plugins[i], open_with(bad_plugins[i].defect, dir, &rt), "by name");
    }
}

static void test_missing_and_junk_files(void **state)
{
    (void)state;
    ha_runtime *rt;
    const char *missing = "/nonexistent/hashattn/hashattn_missing.so";
    assert_int_equal(open_with(missing, good_path, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_true(strstr(ha_last_error(), missing) != NULL);
    char path[PATH_MAX + 64];
    const char *junk[] = {"hashattn_garbage.so", "hashattn_empty.so", "README.txt"};
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", only_bad_dir, junk[i]);
        ha_status st = open_with(path, good_path, &rt);
        if (st != HA_ERR_BACKEND_NOT_FOUND)
            fail_msg("%s: %s (expected backend not found); %s", junk[i], ha_status_string(st), ha_last_error());
        assert_true(strlen(ha_last_error()) > 0);
    }
    /* a name whose file is not in any search directory */
    assert_int_equal(open_with("not_installed_anywhere", only_bad_dir, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_true(mentions(ha_last_error(), "not_installed_anywhere"));
}

static void test_probing_ignores_bad_plugins(void **state)
{
    (void)state;
    char baseline[64], with_bad[64], good[64], good_and_bad[64], bad_and_good[64];
    probe_choice(empty_dir, baseline, sizeof baseline);
    probe_choice(only_bad_dir, with_bad, sizeof with_bad);
    assert_string_equal(with_bad, baseline);
    assert_string_not_equal(with_bad, "bad_plugin");

    char path[sizeof good_path + PATH_MAX + 2];
    probe_choice(good_path, good, sizeof good);
    snprintf(path, sizeof path, "%s:%s", good_path, only_bad_dir);
    probe_choice(path, good_and_bad, sizeof good_and_bad);
    snprintf(path, sizeof path, "%s:%s", only_bad_dir, good_path);
    probe_choice(path, bad_and_good, sizeof bad_and_good);
    print_message("      probing picks '%s' without plugins, '%s' with the good ones\n", baseline, good);
    assert_string_equal(good_and_bad, good);
    assert_string_equal(bad_and_good, good);
}

static void test_probing_survives_failing_init(void **state)
{
    (void)state;
    /* a plugin that probes best but cannot initialize must not make automatic choice fail */
    char good[64], with_init_fails[64];
    probe_choice(good_path, good, sizeof good);
    char path[sizeof good_path + PATH_MAX + 2];
    snprintf(path, sizeof path, "%s:%s", init_fails_dir, good_path);
    probe_choice(path, with_init_fails, sizeof with_init_fails);
    assert_string_equal(with_init_fails, good);
}

static void test_explicit_choice_overrides_env(void **state)
{
    (void)state;
    ha_runtime *rt;
    setenv("HASHATTN_BACKEND", "nonexistent_backend_from_env", 1);
    assert_int_equal(open_with(NULL, good_path, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_true(mentions(ha_last_error(), "nonexistent_backend_from_env"));
    assert_int_equal(open_with("reference", good_path, &rt), HA_OK);
    assert_string_equal(ha_runtime_backend_name(rt), "reference");
    ha_runtime_close(rt);
    /* an explicit broken plugin is refused even when the environment names a good one */
    setenv("HASHATTN_BACKEND", "reference", 1);
    char path[PATH_MAX + 64];
    plugin_file("bad_abi_version", path, sizeof path);
    assert_int_equal(open_with(path, good_path, &rt), HA_ERR_ABI_MISMATCH);
    assert_int_equal(open_with(NULL, good_path, &rt), HA_OK);
    assert_string_equal(ha_runtime_backend_name(rt), "reference");
    ha_runtime_close(rt);
    unsetenv("HASHATTN_BACKEND");
}

static void test_good_plugins_by_path(void **state)
{
    (void)state;
    /* every hashattn_*.so in the good directories loads by path, or says it cannot run here */
    char dirs[sizeof good_path];
    snprintf(dirs, sizeof dirs, "%s", good_path);
    int found = 0;
    for (char *save = NULL, *dir = strtok_r(dirs, ":", &save); dir; dir = strtok_r(NULL, ":", &save)) {
        DIR *d = opendir(dir);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t n = strlen(e->d_name);
            if (strncmp(e->d_name, "hashattn_", 9) != 0 || n < 12 || strcmp(e->d_name + n - 3, ".so") != 0)
                continue;
            char path[PATH_MAX + 300];
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            ha_runtime *rt;
            ha_status st = open_with(path, good_path, &rt);
            if (st == HA_ERR_BACKEND_NOT_FOUND) {
                print_message("      %s cannot run here: %s\n", e->d_name, ha_last_error());
                continue;
            }
            if (st != HA_OK)
                fail_msg("%s: %s: %s", path, ha_status_string(st), ha_last_error());
            /* the file name is hashattn_<name>.so */
            const char *name = ha_runtime_backend_name(rt);
            if (strlen(name) != n - 12 || strncmp(e->d_name + 9, name, n - 12) != 0)
                fail_msg("%s reports the name '%s'", e->d_name, name);
            ha_runtime_close(rt);
            found++;
        }
        closedir(d);
    }
    print_message("      %d good plugin(s) loaded by path\n", found);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_plugins_by_path),
        cmocka_unit_test(test_bad_plugins_by_name),
        cmocka_unit_test(test_missing_and_junk_files),
        cmocka_unit_test(test_probing_ignores_bad_plugins),
        cmocka_unit_test(test_probing_survives_failing_init),
        cmocka_unit_test(test_explicit_choice_overrides_env),
        cmocka_unit_test(test_good_plugins_by_path),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
