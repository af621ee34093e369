/*
 * plugin_loader.c — finding, loading and negotiating with backend plugins.
 *
 * Choice: an explicit name/path from the API, else $HASHATTN_BACKEND, else the highest probe score
 * among all plugins found. A name N means the file hashattn_N.so in the search directories:
 * $HASHATTN_PLUGIN_PATH (':'-separated), the directory of libhashattn and its hashattn/
 * subdirectory, and the install directory. Environment overrides are ignored in set-uid processes
 * (secure_getenv), as the Vulkan loader does. "reference" is the core's built-in scalar backend.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"
#include "reference.h"

#ifndef HA_PLUGIN_INSTALL_DIR
#define HA_PLUGIN_INSTALL_DIR "/usr/local/lib/hashattn"
#endif

#define PLUGIN_PREFIX "hashattn_"
#define PLUGIN_SUFFIX ".so"
#define MAX_DIRS 64

static const char *env(const char *name)
{
    return secure_getenv(name);
}

/* ---- negotiation --------------------------------------------------------------------------- */

/** A plugin name is what HASHATTN_BACKEND selects it by: letters, digits, '_' and '-'. */
static int is_plugin_name(const char *name)
{
    size_t n = strnlen(name, HA_PLUGIN_NAME_MAX + 1);
    if (n == 0 || n > HA_PLUGIN_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

ha_status ha_plugin_table_check(const ha_plugin_api *api, const char *where)
{
    if (!api)
        return ha_fail(HA_ERR_ABI_MISMATCH, "plugin %s does not speak plugin ABI version %u (its entry point returned NULL)",
                       where, HA_PLUGIN_ABI_VERSION);
    if (api->abi_version != HA_PLUGIN_ABI_VERSION)
        return ha_fail(HA_ERR_ABI_MISMATCH, "plugin %s speaks plugin ABI version %u, the core speaks version %u", where,
                       api->abi_version, HA_PLUGIN_ABI_VERSION);
    if (api->struct_size < HA_PLUGIN_API_V1_SIZE)
        return ha_fail(HA_ERR_ABI_MISMATCH,
                       "plugin %s has a function table of %u bytes, the core needs at least %zu bytes for ABI version %u",
                       where, api->struct_size, (size_t)HA_PLUGIN_API_V1_SIZE, HA_PLUGIN_ABI_VERSION);
    const char *missing = !api->name              ? "name"
                          : !api->probe           ? "probe"
                          : !api->init            ? "init"
                          : !api->shutdown        ? "shutdown"
                          : !api->mem_alloc       ? "mem_alloc"
                          : !api->mem_free        ? "mem_free"
                          : !api->mem_copy        ? "mem_copy"
                          : !api->synchronize     ? "synchronize"
                          : !api->mlp_upload      ? "mlp_upload"
                          : !api->mlp_free        ? "mlp_free"
                          : !api->encode          ? "encode"
                          : !api->match           ? "match"
                          : !api->attend          ? "attend"
                          : (!api->plan_create) != (!api->plan_destroy) ? "plan_create/plan_destroy pair"
                                                                        : NULL;
    if (missing)
        return ha_fail(HA_ERR_ABI_MISMATCH, "plugin %s: required table member '%s' is NULL", where, missing);
    if (!is_plugin_name(api->name))
        return ha_fail(HA_ERR_ABI_MISMATCH,
                       "plugin %s: its name is not 1 to %d letters, digits, '_' or '-' (what HASHATTN_BACKEND names)",
                       where, HA_PLUGIN_NAME_MAX);
    return HA_OK;
}

/** dlopens path and negotiates. On success *api and *handle are set. */
static ha_status load_file(const char *path, const ha_plugin_api **api, void **handle)
{
    *api = NULL;
    *handle = NULL;
    /* RTLD_NODELETE: a plugin may start threads (OpenMP pools) that outlive dlclose; unloading its
     * code under them would crash at exit. A plugin stays mapped once loaded. */
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!h) {
        const char *why = dlerror();
        return ha_fail(HA_ERR_BACKEND_NOT_FOUND, "cannot load plugin %s: %s", path, why ? why : "unknown error");
    }
    ha_plugin_get_api_fn entry;
    *(void **)&entry = dlsym(h, HA_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        return ha_fail(HA_ERR_ABI_MISMATCH, "%s is not a hashattn plugin: it exports no symbol %s", path,
                       HA_PLUGIN_ENTRY_SYMBOL);
    }
    const ha_plugin_api *table = entry(HA_PLUGIN_ABI_VERSION);
    ha_status st = ha_plugin_table_check(table, path);
    if (st != HA_OK) {
        dlclose(h);
        return st;
    }
    *api = table;
    *handle = h;
    return HA_OK;
}

/* ---- search directories -------------------------------------------------------------------- */

typedef struct dir_list {
    char *dirs[MAX_DIRS];
    int n;
    int out_of_memory; /* a directory could not be recorded: the search would be incomplete */
} dir_list;

static void add_dir(dir_list *l, const char *dir, size_t len)
{
    if (len == 0 || l->n == MAX_DIRS)
        return;
    char *copy = ha_strndup(dir, len);
    if (!copy) {
        l->out_of_memory = 1;
        return;
    }
    for (int i = 0; i < l->n; i++) {
        if (!strcmp(l->dirs[i], copy)) {
            free(copy);
            return;
        }
    }
    l->dirs[l->n++] = copy;
}

static void free_dirs(dir_list *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->dirs[i]);
    l->n = 0;
}

static void search_dirs(dir_list *l)
{
    const char *path = env("HASHATTN_PLUGIN_PATH");
    while (path && *path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        add_dir(l, path, len);
        path = colon ? colon + 1 : NULL;
    }
    Dl_info info;
    if (dladdr((void *)&ha_backend_open, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash) {
            size_t len = (size_t)(slash - info.dli_fname);
            add_dir(l, info.dli_fname, len);
            char sub[PATH_MAX];
            int k = snprintf(sub, sizeof sub, "%.*s/hashattn", (int)len, info.dli_fname);
            if (k > 0 && (size_t)k < sizeof sub)
                add_dir(l, sub, (size_t)k);
        }
    }
    add_dir(l, HA_PLUGIN_INSTALL_DIR, strlen(HA_PLUGIN_INSTALL_DIR));
}

static int is_plugin_file(const char *name)
{
    size_t n = strlen(name), p = strlen(PLUGIN_PREFIX), s = strlen(PLUGIN_SUFFIX);
    return n > p + s && !strncmp(name, PLUGIN_PREFIX, p) && !strcmp(name + n - s, PLUGIN_SUFFIX);
}

/* ---- opening ------------------------------------------------------------------------------- */

static ha_status init_backend(ha_backend *b, int32_t device)
{
    ha_plugin_host host = {sizeof(ha_plugin_host), NULL, device, NULL, NULL};
    host.log = ha_log_plain;
    host.host_alloc = ha_aligned_alloc;
    host.host_free = ha_free;
    void *ctx = NULL;
    ha_status st = b->api->init(&host, &ctx);
    if (st != HA_OK) {
        const char *why = b->api->last_error ? b->api->last_error(NULL) : NULL;
        return ha_fail(st, "plugin '%s' failed to initialize: %s", b->api->name,
                       why && *why ? why : ha_status_string(st));
    }
    b->ctx = ctx;
    return HA_OK;
}

static void use_reference(ha_backend *b)
{
    b->api = ha_reference_plugin_api();
    b->dl_handle = NULL;
    snprintf(b->path, sizeof b->path, "(built in)");
}

/** Loads an explicitly chosen backend (name or path); no fallback. */
static ha_status open_explicit(const char *choice, ha_backend *b)
{
    if (!strcmp(choice, "reference")) {
        use_reference(b);
        return HA_OK;
    }
    if (strchr(choice, '/')) {
        snprintf(b->path, sizeof b->path, "%s", choice);
        return load_file(choice, &b->api, &b->dl_handle);
    }
    for (const char *c = choice; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') || *c == '_' ||
              *c == '-'))
            return ha_fail(HA_ERR_BACKEND_NOT_FOUND, "backend name '%s' is neither a plugin name nor a path", choice);
    }
    dir_list dirs = {0};
    search_dirs(&dirs);
    if (dirs.out_of_memory) {
        free_dirs(&dirs);
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory while listing the plugin directories");
    }
    ha_status st = HA_ERR_BACKEND_NOT_FOUND;
    int found = 0;
    for (int i = 0; i < dirs.n && !found; i++) {
        char path[PATH_MAX];
        int k = snprintf(path, sizeof path, "%s/" PLUGIN_PREFIX "%s" PLUGIN_SUFFIX, dirs.dirs[i], choice);
        if (k < 0 || (size_t)k >= sizeof path || access(path, F_OK) != 0)
            continue;
        snprintf(b->path, sizeof b->path, "%s", path);
        st = load_file(path, &b->api, &b->dl_handle);
        found = 1;
    }
    if (!found) {
        char where[2048] = "";
        size_t used = 0;
        for (int i = 0; i < dirs.n && used < sizeof where; i++) {
            int k = snprintf(where + used, sizeof where - used, "%s%s", i ? ":" : "", dirs.dirs[i]);
            if (k < 0)
                break;
            used += (size_t)k;
        }
        st = ha_fail(HA_ERR_BACKEND_NOT_FOUND, "no backend named '%s' (looked for " PLUGIN_PREFIX "%s" PLUGIN_SUFFIX
                     " in %s)", choice, choice, where);
    }
    free_dirs(&dirs);
    return st;
}

typedef struct candidate {
    const ha_plugin_api *api;
    void *handle;
    int score;
    int order; /**< position in the search: breaks ties (qsort is not stable) */
    char path[PATH_MAX];
} candidate;

#define MAX_CANDIDATES 64

/** Adds every loadable plugin of the search directories whose probe score is positive; -1 when out of
 *  memory. */
static int collect_candidates(candidate *c, int max)
{
    int n = 0;
    dir_list dirs = {0};
    search_dirs(&dirs);
    if (dirs.out_of_memory) {
        free_dirs(&dirs);
        return -1;
    }
    for (int i = 0; i < dirs.n && n < max; i++) {
        DIR *d = opendir(dirs.dirs[i]);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d)) && n < max) {
            if (!is_plugin_file(e->d_name))
                continue;
            candidate *cur = &c[n];
            int k = snprintf(cur->path, sizeof cur->path, "%s/%s", dirs.dirs[i], e->d_name);
            if (k < 0 || (size_t)k >= sizeof cur->path)
                continue;
            if (load_file(cur->path, &cur->api, &cur->handle) != HA_OK) {
                ha_log(HA_LOG_INFO, "skipping %s: %s", cur->path, ha_last_error());
                continue;
            }
            cur->score = cur->api->probe();
            cur->order = n;
            ha_log(HA_LOG_DEBUG, "plugin %s (%s): probe score %d", cur->api->name, cur->path, cur->score);
            if (cur->score > 0)
                n++;
            else
                dlclose(cur->handle);
        }
        closedir(d);
    }
    free_dirs(&dirs);
    return n;
}

static int by_score_descending(const void *a, const void *b)
{
    const candidate *x = a, *y = b;
    if (x->score != y->score)
        return (y->score > x->score) - (y->score < x->score);
    return (x->order > y->order) - (x->order < y->order); /* equal scores: the first found */
}

/**
 * Automatic choice: every plugin found is probed and initialized in order of score (highest first)
 * until one succeeds; one that fails to initialize (say, a GPU in a bad state) is skipped. The
 * built-in reference comes last.
 */
static ha_status open_best(ha_backend *b, int32_t device)
{
    candidate *c = ha_calloc(MAX_CANDIDATES, sizeof *c);
    if (!c)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory");
    int n = collect_candidates(c, MAX_CANDIDATES);
    if (n < 0) {
        free(c);
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: out of memory while listing the plugin directories");
    }
    qsort(c, (size_t)n, sizeof *c, by_score_descending);
    int chosen = -1, out_of_memory = 0;
    char why[512] = "";
    for (int i = 0; i < n; i++) {
        if (chosen < 0 && !out_of_memory) {
            b->api = c[i].api;
            b->dl_handle = c[i].handle;
            snprintf(b->path, sizeof b->path, "%s", c[i].path);
            ha_status st = init_backend(b, device);
            if (st == HA_OK) {
                chosen = i;
                continue;
            }
            /* out of memory is no reason to settle silently for a slower backend */
            out_of_memory = st == HA_ERR_OUT_OF_MEMORY;
            snprintf(why, sizeof why, "%s", ha_last_error());
            if (!out_of_memory)
                ha_log(HA_LOG_WARN, "skipping %s: %s", c[i].path, why);
            b->api = NULL;
            b->dl_handle = NULL;
        }
        dlclose(c[i].handle);
    }
    free(c);
    if (out_of_memory)
        return ha_fail(HA_ERR_OUT_OF_MEMORY, "ha_runtime_open: %s", why);
    ha_clear_error();
    if (chosen >= 0)
        return HA_OK;
    use_reference(b);
    return init_backend(b, device);
}

ha_status ha_backend_open(const char *explicit_choice, int32_t device, ha_backend *b)
{
    memset(b, 0, sizeof *b);
    const char *choice = explicit_choice;
    if (!choice || !*choice)
        choice = env("HASHATTN_BACKEND");
    if (!choice || !*choice) {
        ha_status st = open_best(b, device);
        if (st != HA_OK)
            memset(b, 0, sizeof *b);
        else
            ha_log(HA_LOG_INFO, "backend '%s' from %s", b->api->name, b->path);
        return st;
    }
    ha_status st = open_explicit(choice, b);
    if (st != HA_OK) {
        memset(b, 0, sizeof *b);
        return st;
    }
    if (b->api->probe() <= 0) {
        ha_status fail = ha_fail(HA_ERR_BACKEND_NOT_FOUND, "backend '%s' (%s) cannot run on this machine (probe score 0)",
                                 b->api->name, b->path);
        ha_backend_close(b);
        return fail;
    }
    st = init_backend(b, device);
    if (st != HA_OK) {
        if (b->dl_handle)
            dlclose(b->dl_handle);
        memset(b, 0, sizeof *b);
        return st;
    }
    ha_log(HA_LOG_INFO, "backend '%s' from %s", b->api->name, b->path);
    return HA_OK;
}

void ha_backend_close(ha_backend *b)
{
    if (b->ctx && b->api)
        b->api->shutdown(b->ctx);
    if (b->dl_handle)
        dlclose(b->dl_handle);
    memset(b, 0, sizeof *b);
}

ha_status ha_backend_fail(const ha_backend *b, ha_status st, const char *what)
{
    const char *msg = b->api->last_error ? b->api->last_error(b->ctx) : NULL;
    return ha_fail(st, "%s: backend '%s' failed: %s", what, b->api->name,
                   msg && *msg ? msg : ha_status_string(st));
}
