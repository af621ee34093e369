/*
 * test_api_errors.c — bad input through the public API: every call must return a clear status, set
 * a non-empty ha_last_error() that names the offending argument, never crash, and leave its outputs
 * untouched (they are poisoned before the call and must still be poisoned after it).
 *
 * Also: status strings, version and API table, closing NULL objects, unknown backends, size
 * overflow at plan/cache creation, and weights files that are missing, truncated at every byte or
 * corrupted (targeted header edits and random byte flips).
 *
 * The backend is whatever HASHATTN_BACKEND or probing selects; checks that need the core to read
 * arrays in backend memory (lengths, block tables, index rows) run only on host-memory backends.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hashattn.h"
#include "safetensors.h"
#include "test_expect.h"
#include "test_util.h"
#include "weights_host.h"

#define HQ 4
#define HKV 2
#define DIM 16
#define BITS 32
#define LAYERS 2 /* layer 1 is dense */
#define MAX_BATCH 2
#define MAX_TOKENS 64
#define PAGE 8

/** A small valid weights file image (layer 1 dense); k_heads = HQ (paper) or HKV (group). */
static unsigned char *make_weights_image(int32_t k_heads, size_t *size)
{
    return tx_weights_image(LAYERS, 2u, BITS, 2, 8, DIM, HQ, k_heads, 0xabcdefull + (uint64_t)k_heads, size);
}

/* ---- the fixture: a runtime, weights, a plan, caches and buffers in backend memory ---------------- */

typedef struct fixture {
    ha_runtime *rt;
    int host_memory;
    unsigned char *image; /* the valid weights file */
    size_t image_size;
    ha_weights *w, *w_group;
    ha_plan *plan, *plan_paged;
    ha_cache *cache, *cache_paged;
    tx_buffers b;
    int64_t max_kept;
} fixture;

static fixture fx;

static void set_lens(int32_t a, int32_t b)
{
    int32_t lens[MAX_BATCH] = {a, b};
    tu_to_dev(fx.rt, fx.b.lens, lens, sizeof lens);
}

#define EXPECT_OUTPUTS_UNTOUCHED() tx_outputs_expect_untouched(&fx.b.o, __LINE__)

static ha_plan *make_plan(const ha_weights *w)
{
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    cfg.sink = 2;
    cfg.local = 4;
    cfg.heavy_fraction = 0.25;
    ha_plan *p = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, w, &cfg, &p));
    return p;
}

static ha_cache *make_cache(int32_t page_size, int64_t pages)
{
    ha_cache_config cc = {sizeof cc, page_size, MAX_BATCH, MAX_TOKENS, pages};
    ha_cache *c = NULL;
    EXPECT_OK(ha_cache_create(fx.rt, fx.w, &cc, &c));
    return c;
}

static int setup(void **state)
{
    (void)state;
    memset(&fx, 0, sizeof fx);
    ha_status st = ha_runtime_open(NULL, &fx.rt);
    if (st != HA_OK) {
        fprintf(stderr, "ha_runtime_open: %s: %s\n", ha_status_string(st), ha_last_error());
        return -1;
    }
    fx.host_memory = ha_runtime_is_host_memory(fx.rt);
    fx.image = make_weights_image(HQ, &fx.image_size);
    EXPECT_OK(ha_weights_load_memory(fx.rt, fx.image, fx.image_size, &fx.w));
    size_t group_size;
    unsigned char *group = make_weights_image(HKV, &group_size);
    EXPECT_OK(ha_weights_load_memory(fx.rt, group, group_size, &fx.w_group));
    free(group);

    fx.plan = make_plan(fx.w);
    fx.plan_paged = make_plan(fx.w);
    fx.max_kept = ha_plan_max_kept(fx.plan);
    tu_rng r;
    tu_rng_seed(&r, 7);
    tx_buffers_create(&fx.b, fx.rt, &r, MAX_BATCH, HQ, HKV, DIM, MAX_TOKENS, PAGE, fx.max_kept, 0);
    fx.cache = make_cache(0, 0);
    fx.cache_paged = make_cache(PAGE, fx.b.kv_paged.capacity);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    tx_buffers_destroy(&fx.b);
    ha_cache_destroy(fx.cache);
    ha_cache_destroy(fx.cache_paged);
    ha_plan_destroy(fx.plan);
    ha_plan_destroy(fx.plan_paged);
    ha_weights_free(fx.w);
    ha_weights_free(fx.w_group);
    ha_runtime_close(fx.rt);
    free(fx.image);
    return 0;
}

/** A well-formed decode step over the contiguous KV (lengths 40 and 13). */
static ha_step good_step(void)
{
    set_lens(40, 13);
    ha_step s;
    memset(&s, 0, sizeof s);
    s.batch = MAX_BATCH;
    s.seq_lens = fx.b.lens;
    s.new_tokens = 1;
    s.q = tu_tensor3_backend(&fx.b.q);
    s.kv = tu_kv_backend(&fx.b.kv);
    s.out = tu_tensor3_backend(&fx.b.o.out);
    s.lse = fx.b.o.lse;
    return s;
}

/* ---- library-level calls ------------------------------------------------------------------------ */

static void test_status_strings(void **state)
{
    (void)state;
    for (int s = HA_OK; s <= HA_ERR_STATE; s++) {
        const char *str = ha_status_string((ha_status)s);
        assert_non_null(str);
        assert_true(strlen(str) > 0);
        for (int t = HA_OK; t < s; t++) /* distinct names */
            assert_string_not_equal(str, ha_status_string((ha_status)t));
    }
    assert_non_null(ha_status_string((ha_status)12));
    assert_non_null(ha_status_string((ha_status)999));
    assert_non_null(ha_status_string((ha_status)-1));
    assert_true(strlen(ha_status_string((ha_status)999)) > 0);
}

static void test_version_and_api_table(void **state)
{
    (void)state;
    assert_int_equal(ha_version(), HA_VERSION);
    char expected[32];
    snprintf(expected, sizeof expected, "%d.%d.%d", HA_VERSION_MAJOR, HA_VERSION_MINOR, HA_VERSION_PATCH);
    assert_string_equal(ha_version_string(), expected);

    const ha_api *api = ha_get_api(HA_API_VERSION);
    assert_non_null(api);
    assert_int_equal(api->version, HA_API_VERSION);
    assert_true(api->struct_size >= sizeof(ha_api));
    assert_int_equal(api->version_number(), ha_version());
    assert_string_equal(api->status_string(HA_ERR_SHAPE), ha_status_string(HA_ERR_SHAPE));
    assert_int_equal(api->dtype_size(HA_BF16), 2);
    /* every member is set */
    const void *const *first = (const void *const *)&api->version_number;
    const void *const *end = (const void *const *)((const char *)api + sizeof(ha_api));
    for (const void *const *p = first; p < end; p++)
        assert_non_null(*p);
    /* calls through the table behave like the direct ones */
    ha_runtime *rt = (ha_runtime *)1;
    ha_runtime_options o = {sizeof o, "no_such_backend_via_table", 0};
    assert_int_equal(api->runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND);
    assert_null(rt);
    assert_true(tx_mentions(api->last_error(), "no_such_backend_via_table"));

    assert_null(ha_get_api(HA_API_VERSION + 1));
    assert_null(ha_get_api(UINT32_MAX));
}

static void test_dtype_size(void **state)
{
    (void)state;
    assert_int_equal(ha_dtype_size(HA_F32), 4);
    assert_int_equal(ha_dtype_size(HA_F16), 2);
    assert_int_equal(ha_dtype_size(HA_BF16), 2);
    assert_int_equal(ha_dtype_size((ha_dtype)7), 0);
    assert_int_equal(ha_dtype_size((ha_dtype)-1), 0);
}

static void test_close_null_is_noop(void **state)
{
    (void)state;
    ha_runtime_close(NULL);
    ha_weights_free(NULL);
    ha_plan_destroy(NULL);
    ha_cache_destroy(NULL);
    ha_mem_free(fx.rt, NULL);
    ha_mem_free(NULL, NULL);
}

static void test_runtime_open_bad_args(void **state)
{
    (void)state;
    EXPECT_FAIL(ha_runtime_open(NULL, NULL), HA_ERR_INVALID_ARGUMENT, "out");
    ha_runtime *rt = (ha_runtime *)1;
    ha_runtime_options o = {0, NULL, 0};
    EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_INVALID_ARGUMENT, "struct_size");
    assert_null(rt);
    o.struct_size = sizeof o;
    o.device = -1;
    rt = (ha_runtime *)1;
    EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_INVALID_ARGUMENT, "device");
    assert_null(rt);
}

static void test_unknown_backend(void **state)
{
    (void)state;
    const char *names[] = {"no_such_backend_xyz", "/nonexistent/dir/hashattn_nope.so", "bad name!",
                           "../relative/hashattn_up.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        ha_runtime *rt = (ha_runtime *)1;
        ha_runtime_options o = {sizeof o, names[i], 0};
        EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND, NULL);
        assert_null(rt);
        if (!strstr(ha_last_error(), names[i]))
            fail_msg("the message \"%s\" does not name the backend \"%s\"", ha_last_error(), names[i]);
    }
}

static void *fail_in_thread(void *arg)
{
    (void)arg;
    ha_runtime *rt;
    ha_runtime_options o = {sizeof o, "backend_of_the_other_thread", 0};
    ha_runtime_open(&o, &rt);
    return (void *)(intptr_t)tx_mentions(ha_last_error(), "backend_of_the_other_thread");
}

static void test_last_error_is_per_thread(void **state)
{
    (void)state;
    ha_runtime *rt;
    ha_runtime_options o = {sizeof o, "backend_of_the_main_thread", 0};
    EXPECT_FAIL(ha_runtime_open(&o, &rt), HA_ERR_BACKEND_NOT_FOUND, "backend_of_the_main_thread");
    pthread_t t;
    void *seen;
    assert_int_equal(pthread_create(&t, NULL, fail_in_thread, NULL), 0);
    assert_int_equal(pthread_join(t, &seen), 0);
    assert_true(seen != NULL); /* the other thread saw its own message */
    assert_true(tx_mentions(ha_last_error(), "backend_of_the_main_thread"));
    /* a successful call clears it */
    ha_weights_info info;
    EXPECT_OK(ha_weights_get_info(fx.w, &info));
    assert_string_equal(ha_last_error(), "");
}

static void test_memory_bad_args(void **state)
{
    (void)state;
    void *p = (void *)1;
    EXPECT_FAIL(ha_mem_alloc(NULL, 16, &p), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_mem_alloc(fx.rt, 16, NULL), HA_ERR_INVALID_ARGUMENT, "out");
    EXPECT_FAIL(ha_mem_alloc(fx.rt, 0, &p), HA_ERR_INVALID_ARGUMENT, "bytes");
    p = (void *)1;
    EXPECT_FAIL_ANY(ha_mem_alloc(fx.rt, SIZE_MAX, &p), BIT(HA_ERR_OVERFLOW) | BIT(HA_ERR_OUT_OF_MEMORY), NULL);
    assert_null(p);
    char host[8] = {0};
    EXPECT_FAIL(ha_mem_copy(NULL, fx.b.o.lse, host, 4, HA_COPY_HOST_TO_BACKEND), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_mem_copy(fx.rt, NULL, host, 4, HA_COPY_HOST_TO_BACKEND), HA_ERR_INVALID_ARGUMENT, "dst");
    EXPECT_FAIL(ha_mem_copy(fx.rt, fx.b.o.lse, NULL, 4, HA_COPY_HOST_TO_BACKEND), HA_ERR_INVALID_ARGUMENT, "src");
    EXPECT_FAIL(ha_mem_copy(fx.rt, fx.b.o.lse, host, 4, (ha_copy_kind)7), HA_ERR_INVALID_ARGUMENT, "kind");
    EXPECT_FAIL(ha_synchronize(NULL, NULL), HA_ERR_INVALID_ARGUMENT, "rt");
}

/* ---- weights ------------------------------------------------------------------------------------ */

static void test_weights_bad_args(void **state)
{
    (void)state;
    ha_weights *w = (ha_weights *)1;
    EXPECT_FAIL(ha_weights_load(NULL, "x.safetensors", &w), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_weights_load(fx.rt, NULL, &w), HA_ERR_INVALID_ARGUMENT, "path");
    EXPECT_FAIL(ha_weights_load(fx.rt, "x.safetensors", NULL), HA_ERR_INVALID_ARGUMENT, "out");
    EXPECT_FAIL(ha_weights_load_memory(NULL, fx.image, fx.image_size, &w), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_weights_load_memory(fx.rt, NULL, fx.image_size, &w), HA_ERR_INVALID_ARGUMENT, "data");
    EXPECT_FAIL(ha_weights_load_memory(fx.rt, fx.image, fx.image_size, NULL), HA_ERR_INVALID_ARGUMENT, "out");
    w = (ha_weights *)1;
    EXPECT_FAIL(ha_weights_load(fx.rt, "/nonexistent/hashattn/weights.safetensors", &w), HA_ERR_IO, NULL);
    assert_null(w);
    if (!strstr(ha_last_error(), "/nonexistent/hashattn/weights.safetensors"))
        fail_msg("the message \"%s\" does not name the missing file", ha_last_error());
    EXPECT_FAIL_ANY(ha_weights_load(fx.rt, "/tmp", &w), BIT(HA_ERR_IO) | BIT(HA_ERR_FORMAT), NULL);

    ha_weights_info info;
    EXPECT_FAIL(ha_weights_get_info(NULL, &info), HA_ERR_INVALID_ARGUMENT, "w");
    EXPECT_FAIL(ha_weights_get_info(fx.w, NULL), HA_ERR_INVALID_ARGUMENT, "out");
    assert_int_equal(ha_weights_layer_is_dense(fx.w, -1), -1);
    assert_int_equal(ha_weights_layer_is_dense(fx.w, LAYERS), -1);
    assert_int_equal(ha_weights_layer_is_dense(NULL, 0), -1);
    assert_int_equal(ha_weights_layer_is_dense(fx.w, 1), 1);
}

static void test_weights_truncated(void **state)
{
    (void)state;
    /* every prefix of the file, from memory */
    for (size_t len = 0; len < fx.image_size; len++) {
        ha_weights *w = (ha_weights *)1;
        ha_status st = ha_weights_load_memory(fx.rt, fx.image, len, &w);
        if (st != HA_ERR_FORMAT)
            fail_msg("weights truncated to %zu of %zu bytes: %s (expected format error); %s", len, fx.image_size,
                     ha_status_string(st), ha_last_error());
        assert_null(w);
        assert_true(strlen(ha_last_error()) > 0);
    }
    /* a few prefixes through a file */
    char path[] = "/tmp/hashattn-truncated-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    size_t cuts[] = {0, 1, 7, 8, 9, 100, fx.image_size / 2, fx.image_size - 4, fx.image_size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        tx_write_file(path, fx.image, cuts[i]);
        ha_weights *w = (ha_weights *)1;
        ha_status st = ha_weights_load(fx.rt, path, &w);
        if (st != HA_ERR_FORMAT)
            fail_msg("weights file truncated to %zu bytes: %s (expected format error); %s", cuts[i],
                     ha_status_string(st), ha_last_error());
        assert_null(w);
    }
    unlink(path);
}

/* The JSON header of the valid image, and a rebuilt image from an edited header. */
static json_t *image_header(size_t *data_start)
{
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | fx.image[i];
    json_error_t err;
    json_t *root = json_loadb((const char *)fx.image + 8, (size_t)len, 0, &err);
    assert_non_null(root);
    *data_start = 8 + (size_t)len;
    return root;
}

static unsigned char *rebuild_image(json_t *root, size_t data_start, size_t *size)
{
    char *header = json_dumps(root, JSON_COMPACT);
    assert_non_null(header);
    size_t hlen = strlen(header), padded = (hlen + 7) & ~(size_t)7;
    *size = 8 + padded + (fx.image_size - data_start);
    unsigned char *img = malloc(*size);
    assert_non_null(img);
    for (int i = 0; i < 8; i++)
        img[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(img + 8, header, hlen);
    memset(img + 8 + hlen, ' ', padded - hlen);
    memcpy(img + 8 + padded, fx.image + data_start, fx.image_size - data_start);
    free(header);
    return img;
}

typedef struct header_edit {
    const char *what;
    const char *tensor; /* NULL: edit __metadata__ */
    const char *key;
    const char *json;   /* new value as JSON text; NULL: delete the key */
} header_edit;

static const header_edit header_edits[] = {
    {"format is not hashattn", NULL, "format", "\"other\""},
    {"unknown version", NULL, "version", "\"2\""},
    {"unknown activation", NULL, "activation", "\"relu\""},
    {"bits = 0", NULL, "bits", "\"0\""},
    {"bits disagree with the shapes", NULL, "bits", "\"33\""},
    {"bits not a number", NULL, "bits", "\"3x\""},
    {"bits negative", NULL, "bits", "\"-32\""},
    {"bits missing", NULL, "bits", NULL},
    {"mlp_depth 5", NULL, "mlp_depth", "\"5\""},
    {"mlp_depth larger than the tensors", NULL, "mlp_depth", "\"3\""},
    {"mlp_depth smaller than the tensors", NULL, "mlp_depth", "\"1\""},
    {"head_dim disagrees", NULL, "head_dim", "\"17\""},
    {"q_heads disagree", NULL, "q_heads", "\"8\""},
    {"k_heads do not divide q_heads", NULL, "k_heads", "\"3\""},
    {"num_layers 0", NULL, "num_layers", "\"0\""},
    {"dense_layers out of range", NULL, "dense_layers", "\"9\""},
    {"dense_layers twice", NULL, "dense_layers", "\"1,1\""},
    {"dense_layers not numbers", NULL, "dense_layers", "\"a\""},
    {"tensor dtype I32", "layers.0.q.w1", "dtype", "\"I32\""},
    {"tensor dtype F64 (size mismatch)", "layers.0.q.w1", "dtype", "\"F64\""},
    {"tensor dtype unknown", "layers.0.q.w1", "dtype", "\"Q4\""},
    {"tensor shape wrong input width", "layers.0.q.w1", "shape", "[4, 8, 15]"},
    {"tensor shape negative", "layers.0.q.w1", "shape", "[4, 8, -16]"},
    {"tensor shape rank 2", "layers.0.q.w1", "shape", "[4, 128]"},
    {"tensor shape not numbers", "layers.0.q.w1", "shape", "[\"4\", 8, 16]"},
    {"bias shape wrong", "layers.0.k.b2", "shape", "[4, 31]"},
    {"data_offsets reversed", "layers.0.q.w1", "data_offsets", "[2048, 0]"},
    {"data_offsets past the end", "layers.0.k.b2", "data_offsets", "[0, 1000000000000]"},
    {"data_offsets huge", "layers.0.k.b2", "data_offsets", "[9223372036854775000, 9223372036854775807]"},
    {"data_offsets overlap another tensor", "layers.0.q.b1", "data_offsets", "[0, 128]"},
    {"data_offsets missing", "layers.0.q.w1", "data_offsets", NULL},
    {"data_offsets of one number", "layers.0.q.w1", "data_offsets", "[0]"},
    {"tensor missing", "layers.0.k.b2", NULL, NULL},
    {"unexpected tensor", "layers.5.q.w1", "", "{\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}"},
    {"tensor entry not an object", "layers.0.q.w1", "", "[1, 2, 3]"},
    {"metadata not strings", NULL, "bits", "32"},
};

static void apply_edit(json_t *root, const header_edit *e)
{
    json_t *value = NULL;
    if (e->json) {
        json_error_t err;
        value = json_loads(e->json, JSON_DECODE_ANY, &err);
        assert_non_null(value);
    }
    if (e->tensor && e->key && !*e->key) { /* replace or add a whole tensor entry */
        json_object_set_new(root, e->tensor, value);
        return;
    }
    json_t *obj = json_object_get(root, e->tensor ? e->tensor : "__metadata__");
    assert_non_null(obj);
    if (!e->key) {
        json_object_del(root, e->tensor);
        return;
    }
    if (value)
        json_object_set_new(obj, e->key, value);
    else
        json_object_del(obj, e->key);
}

static void expect_format_error(const unsigned char *img, size_t size, const char *what)
{
    ha_weights *w = (ha_weights *)1;
    ha_status st = ha_weights_load_memory(fx.rt, img, size, &w);
    if (st != HA_ERR_FORMAT)
        fail_msg("weights with %s: %s (expected format error); %s", what, ha_status_string(st), ha_last_error());
    assert_null(w);
    if (!*ha_last_error())
        fail_msg("weights with %s: empty error message", what);
}

static void test_weights_corrupted(void **state)
{
    (void)state;
    size_t data_start, size;
    /* the unedited rebuild loads: the edits below are what breaks it */
    json_t *root = image_header(&data_start);
    unsigned char *img = rebuild_image(root, data_start, &size);
    ha_weights *w = NULL;
    EXPECT_OK(ha_weights_load_memory(fx.rt, img, size, &w));
    ha_weights_free(w);
    free(img);
    json_decref(root);

    for (size_t i = 0; i < sizeof header_edits / sizeof header_edits[0]; i++) {
        root = image_header(&data_start);
        apply_edit(root, &header_edits[i]);
        img = rebuild_image(root, data_start, &size);
        expect_format_error(img, size, header_edits[i].what);
        free(img);
        json_decref(root);
    }

    /* raw damage: header length, non-JSON header, a header that is not an object */
    img = malloc(fx.image_size);
    assert_non_null(img);
    const uint64_t lengths[] = {0, 1, UINT64_MAX, (uint64_t)fx.image_size, (uint64_t)fx.image_size - 7,
                                UINT64_MAX / 2};
    for (size_t i = 0; i < sizeof lengths / sizeof lengths[0]; i++) {
        memcpy(img, fx.image, fx.image_size);
        for (int b = 0; b < 8; b++)
            img[b] = (unsigned char)(lengths[i] >> (8 * b));
        expect_format_error(img, fx.image_size, "a bad header length");
    }
    memcpy(img, fx.image, fx.image_size);
    img[8] = '[';
    expect_format_error(img, fx.image_size, "a header that is not a JSON object");
    memcpy(img, fx.image, fx.image_size);
    img[9] = '\x01';
    expect_format_error(img, fx.image_size, "a control byte in the header");
    free(img);
}

static void test_weights_random_damage(void **state)
{
    (void)state;
    size_t data_start;
    json_decref(image_header(&data_start));
    tu_rng r;
    tu_rng_seed(&r, 0xda3a6edull);
    unsigned char *img = malloc(fx.image_size);
    assert_non_null(img);
    int format_errors = 0, loaded = 0;
    for (int i = 0; i < 600; i++) {
        memcpy(img, fx.image, fx.image_size);
        int flips = (int)tu_rng_range(&r, 1, 3);
        for (int f = 0; f < flips; f++) {
            /* mostly the header, where damage matters; sometimes anywhere */
            size_t at = i % 4 ? (size_t)tu_rng_range(&r, 0, (int64_t)data_start - 1)
                              : (size_t)tu_rng_range(&r, 0, (int64_t)fx.image_size - 1);
            img[at] = (unsigned char)(i % 2 ? tu_rng_range(&r, 32, 126) : tu_rng_range(&r, 0, 255));
        }
        ha_weights *w = NULL;
        ha_status st = ha_weights_load_memory(fx.rt, img, fx.image_size, &w);
        if (st == HA_OK) {
            ha_weights_info info;
            EXPECT_OK(ha_weights_get_info(w, &info));
            ha_weights_free(w);
            loaded++;
        } else if (st == HA_ERR_FORMAT) {
            assert_null(w);
            assert_true(strlen(ha_last_error()) > 0);
            format_errors++;
        } else {
            fail_msg("damaged weights (iteration %d): %s; %s", i, ha_status_string(st), ha_last_error());
        }
    }
    free(img);
    print_message("      random damage: %d format errors, %d still-valid files\n", format_errors, loaded);
    assert_true(format_errors > 100);
}

/* ---- plans and caches ---------------------------------------------------------------------------- */

static void expect_plan_fails(const ha_weights *w, const ha_plan_config *cfg, unsigned accepted, const char *word,
                              int line)
{
    ha_plan *p = (ha_plan *)1;
    ha_status st = ha_plan_create(fx.rt, w, cfg, &p);
    char call[64];
    snprintf(call, sizeof call, "ha_plan_create (line %d)", line);
    tx_expect_failure(st, accepted, word, call, line);
    assert_null(p);
}

static void test_plan_bad_config(void **state)
{
    (void)state;
    ha_plan_config cfg, c;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    ha_plan *p = (ha_plan *)1;
    EXPECT_FAIL(ha_plan_create(NULL, fx.w, &cfg, &p), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_plan_create(fx.rt, fx.w, NULL, &p), HA_ERR_INVALID_ARGUMENT, "cfg");
    EXPECT_FAIL(ha_plan_create(fx.rt, fx.w, &cfg, NULL), HA_ERR_INVALID_ARGUMENT, "out");

#define PLAN_FAILS(field, value, accepted, word)                                                              \
    do {                                                                                                      \
        c = cfg;                                                                                              \
        c.field = value;                                                                                      \
        expect_plan_fails(fx.w, &c, accepted, word, __LINE__);                                                \
    } while (0)
    const unsigned inval = BIT(HA_ERR_INVALID_ARGUMENT), shape = BIT(HA_ERR_SHAPE);
    PLAN_FAILS(struct_size, 0, inval, "struct_size");
    PLAN_FAILS(max_batch, 0, inval, "max_batch");
    PLAN_FAILS(max_batch, -3, inval, "max_batch");
    PLAN_FAILS(max_tokens, 0, inval, "max_tokens");
    PLAN_FAILS(max_tokens, -1, inval, "max_tokens");
    PLAN_FAILS(num_q_heads, 8, shape, "num_q_heads");   /* weights have 4 */
    PLAN_FAILS(head_dim, 32, shape, "head_dim");         /* weights have 16 */
    PLAN_FAILS(num_kv_heads, 3, shape, "num_kv_heads"); /* does not divide 4 */
    PLAN_FAILS(num_kv_heads, 0, shape, "num_kv_heads");
    PLAN_FAILS(num_q_heads, 0, shape | inval, "num_q_heads");
    PLAN_FAILS(head_dim, 0, shape | inval, "head_dim");
    PLAN_FAILS(sink, -5, inval, "sink");
    PLAN_FAILS(local, -2, inval, "local");
    PLAN_FAILS(heavy_fraction, -0.1, inval, "heavy_fraction");
    PLAN_FAILS(heavy_fraction, NAN, inval, "heavy_fraction");
    PLAN_FAILS(heavy_count, -1, inval, "heavy_count");
    PLAN_FAILS(scale, NAN, inval, "scale");
    PLAN_FAILS(scale, -1.0f, inval, "scale");
    PLAN_FAILS(scale, INFINITY, inval, "scale");

    /* group-mode weights (k_heads 2) need num_kv_heads 2 */
    c = cfg;
    c.num_kv_heads = 4;
    expect_plan_fails(fx.w_group, &c, shape, "k_heads", __LINE__);
    c.num_kv_heads = 1;
    expect_plan_fails(fx.w_group, &c, shape, "k_heads", __LINE__);
    c.num_kv_heads = HKV;
    p = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, fx.w_group, &c, &p));
    assert_int_equal(ha_plan_selection_heads(p), HKV);
    ha_plan_destroy(p);
#undef PLAN_FAILS
}

/*
 * Sizes here either overflow 64 bits or need more than 2^50 bytes, which no machine can map: a
 * merely large request (gigabytes) might succeed, and meson's MALLOC_PERTURB_ would then touch it.
 */
static void test_plan_size_overflow(void **state)
{
    (void)state;
    const unsigned too_big = BIT(HA_ERR_OVERFLOW) | BIT(HA_ERR_OUT_OF_MEMORY);
    ha_plan_config c;
    /* lengths beyond int32 (seq_lens are int32) are out of range; anything else must not fit */
    ha_plan_config_init(&c, MAX_BATCH, INT64_MAX / 2, HQ, HKV, DIM);
    expect_plan_fails(fx.w, &c, too_big | BIT(HA_ERR_INVALID_ARGUMENT), "max_tokens", __LINE__);
    /* 2^20 sequences × 4 heads × 2^31 kept indices × 4 bytes = 2^55 bytes of index scratch */
    ha_plan_config_init(&c, 1 << 20, INT32_MAX, HQ, HKV, DIM);
    c.heavy_fraction = 1.0;
    expect_plan_fails(fx.w, &c, too_big, NULL, __LINE__);
    c.heavy_fraction = 0.0;
    c.heavy_count = INT64_MAX / 2;
    expect_plan_fails(fx.w, &c, too_big, NULL, __LINE__);
}

static void expect_cache_fails(const ha_weights *w, const ha_cache_config *cfg, unsigned accepted, const char *word,
                               int line)
{
    ha_cache *cache = (ha_cache *)1;
    ha_status st = ha_cache_create(fx.rt, w, cfg, &cache);
    char call[64];
    snprintf(call, sizeof call, "ha_cache_create (line %d)", line);
    tx_expect_failure(st, accepted, word, call, line);
    assert_null(cache);
}

static void test_cache_bad_config(void **state)
{
    (void)state;
    const unsigned inval = BIT(HA_ERR_INVALID_ARGUMENT), too_big = BIT(HA_ERR_OVERFLOW) | BIT(HA_ERR_OUT_OF_MEMORY);
    ha_cache_config good = {sizeof good, 0, MAX_BATCH, MAX_TOKENS, 0}, c;
    ha_cache *cache = (ha_cache *)1;
    EXPECT_FAIL(ha_cache_create(NULL, fx.w, &good, &cache), HA_ERR_INVALID_ARGUMENT, "rt");
    EXPECT_FAIL(ha_cache_create(fx.rt, NULL, &good, &cache), HA_ERR_INVALID_ARGUMENT, "w");
    EXPECT_FAIL(ha_cache_create(fx.rt, fx.w, NULL, &cache), HA_ERR_INVALID_ARGUMENT, "cfg");
    EXPECT_FAIL(ha_cache_create(fx.rt, fx.w, &good, NULL), HA_ERR_INVALID_ARGUMENT, "out");

#define CACHE_FAILS(field, value, accepted, word)                                                             \
    do {                                                                                                      \
        c = good;                                                                                             \
        c.field = value;                                                                                      \
        expect_cache_fails(fx.w, &c, accepted, word, __LINE__);                                               \
    } while (0)
    CACHE_FAILS(struct_size, 0, inval, "struct_size");
    CACHE_FAILS(page_size, -1, inval, "page_size");
    CACHE_FAILS(max_batch, 0, inval, "max_batch");
    CACHE_FAILS(max_tokens, -5, inval, "max_tokens");
    CACHE_FAILS(max_tokens, INT64_MAX / 2, too_big, NULL);
    c = good;
    c.max_batch = INT32_MAX;
    c.max_tokens = INT64_MAX / 4;
    expect_cache_fails(fx.w, &c, too_big, NULL, __LINE__);
    c.max_tokens = 1 << 24; /* 2^31 × 4 heads × 2^24 tokens × 4 bytes = 2^59 bytes */
    expect_cache_fails(fx.w, &c, too_big, NULL, __LINE__);
    c = good;
    c.page_size = PAGE;
    c.num_pages = 0;
    expect_cache_fails(fx.w, &c, inval, "num_pages", __LINE__);
    c.num_pages = INT64_MAX / 8;
    expect_cache_fails(fx.w, &c, too_big, NULL, __LINE__);
    c.page_size = INT32_MAX;
    c.num_pages = INT64_MAX / 2;
    expect_cache_fails(fx.w, &c, too_big, NULL, __LINE__);
#undef CACHE_FAILS
}

/* ---- stages --------------------------------------------------------------------------------------- */

static void test_decode_step_bad_args(void **state)
{
    (void)state;
    const unsigned inval = BIT(HA_ERR_INVALID_ARGUMENT);
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
    EXPECT_FAIL(ha_decode_step(NULL, fx.cache, 0, &s), HA_ERR_INVALID_ARGUMENT, "plan");
    EXPECT_FAIL(ha_decode_step(fx.plan, NULL, 0, &s), HA_ERR_INVALID_ARGUMENT, "cache");
    EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, 0, NULL), HA_ERR_INVALID_ARGUMENT, "step");
    EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, -1, &s), HA_ERR_INVALID_ARGUMENT, "layer");
    EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, LAYERS, &s), HA_ERR_INVALID_ARGUMENT, "layer");

#define STEP_FAILS(field, value, accepted, word)                                                              \
    do {                                                                                                      \
        ha_step bad_ = good_step();                                                                           \
        bad_.field = value;                                                                                   \
        EXPECT_FAIL_ANY(ha_decode_step(fx.plan, fx.cache, 0, &bad_), accepted, word);                         \
    } while (0)
    STEP_FAILS(q.data, NULL, inval, "q");
    STEP_FAILS(kv.k, NULL, inval, "k");
    STEP_FAILS(kv.v, NULL, inval, "v");
    STEP_FAILS(out.data, NULL, inval, "out");
    STEP_FAILS(seq_lens, NULL, inval, "seq_lens");
    STEP_FAILS(batch, 0, inval, "batch");
    STEP_FAILS(batch, -1, inval, "batch");
    STEP_FAILS(batch, MAX_BATCH + 1, inval, "batch");
    STEP_FAILS(new_tokens, -1, inval, "new_tokens");
    STEP_FAILS(q.dtype, (ha_dtype)7, inval, "q");
    STEP_FAILS(kv.dtype, (ha_dtype)7, inval, "dtype");
    STEP_FAILS(out.dtype, (ha_dtype)-1, inval, "out");
    STEP_FAILS(out.stride_head, DIM - 1, BIT(HA_ERR_SHAPE), "out");  /* heads overlap */
    STEP_FAILS(out.stride_batch, DIM, BIT(HA_ERR_SHAPE), "out");     /* sequences overlap */
    STEP_FAILS(q.stride_head, -DIM, BIT(HA_ERR_SHAPE), "q");
    STEP_FAILS(kv.stride_token, -1, BIT(HA_ERR_SHAPE), "kv");
    STEP_FAILS(kv.page_size, -4, inval, "page_size");
    STEP_FAILS(kv.capacity, 0, inval, "capacity");
    STEP_FAILS(kv.stride_seq, INT64_MAX / 2, BIT(HA_ERR_OVERFLOW), "kv");
    STEP_FAILS(kv.page_size, PAGE, inval, "block_table"); /* paged without a block table */

    /* a paged KV with the contiguous cache, the contiguous KV with the paged cache */
    ha_step c = good_step();
    c.kv = tu_kv_backend(&fx.b.kv_paged);
    EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, 0, &c), HA_ERR_SHAPE, "page_size");
    c = good_step();
    EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &c), HA_ERR_SHAPE, "page_size");
    /* a plan without weights cannot run a sparse layer */
    ha_plan_config cfg;
    ha_plan_config_init(&cfg, MAX_BATCH, MAX_TOKENS, HQ, HKV, DIM);
    ha_plan *dense_only = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, NULL, &cfg, &dense_only));
    EXPECT_FAIL_ANY(ha_decode_step(dense_only, fx.cache, 0, &c), BIT(HA_ERR_STATE) | inval, NULL);
    ha_plan_destroy(dense_only);
    /* a cache of other weights */
    ha_plan *group_plan = NULL;
    EXPECT_OK(ha_plan_create(fx.rt, fx.w_group, &cfg, &group_plan));
    EXPECT_FAIL(ha_decode_step(group_plan, fx.cache, 0, &c), HA_ERR_INVALID_ARGUMENT, "cache");
    ha_plan_destroy(group_plan);
    EXPECT_OUTPUTS_UNTOUCHED();
#undef STEP_FAILS
}

static void test_lengths_checked(void **state)
{
    (void)state;
    if (!fx.host_memory)
        skip(); /* the core cannot read device-memory lengths; GPU plugins clamp them */
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
    const int32_t bad[][MAX_BATCH] = {{MAX_TOKENS + 1, 3}, {5, -1}, {INT32_MAX, 1}, {INT32_MIN, 0}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        set_lens(bad[i][0], bad[i][1]);
        EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, 0, &s), HA_ERR_INVALID_ARGUMENT, "seq_lens");
        EXPECT_FAIL(ha_dense_attend(fx.plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, &s.out, fx.b.o.lse, NULL),
                    HA_ERR_INVALID_ARGUMENT, "seq_lens");
        EXPECT_FAIL(ha_match(fx.plan, fx.cache, 0, fx.b.o.codes, &s.kv, MAX_BATCH, fx.b.lens, fx.b.o.indices, fx.b.o.counts, NULL),
                    HA_ERR_INVALID_ARGUMENT, "seq_lens");
        EXPECT_FAIL(ha_cache_encode_keys(fx.plan, fx.cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 4, NULL),
                    HA_ERR_INVALID_ARGUMENT, "seq_end");
    }
    /* within the plan's limit but beyond the KV's capacity */
    s.kv.capacity = 32;
    set_lens(33, 1);
    EXPECT_FAIL(ha_decode_step(fx.plan, fx.cache, 0, &s), HA_ERR_INVALID_ARGUMENT, "capacity");
    EXPECT_OUTPUTS_UNTOUCHED();
}

static void test_paged_block_table_checked(void **state)
{
    (void)state;
    ha_step s = good_step();
    s.kv = tu_kv_backend(&fx.b.kv_paged);
    set_lens(40, 13);
    tx_outputs_poison(&fx.b.o);
    /* the good paged step works (after the prompt's keys are in the cache) */
    EXPECT_OK(ha_cache_encode_keys(fx.plan_paged, fx.cache_paged, 0, &s.kv, MAX_BATCH, fx.b.lens, 40, NULL));
    EXPECT_OK(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &s));
    tx_outputs_poison(&fx.b.o);

    ha_step bad = s;
    bad.kv.block_table = NULL;
    EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &bad), HA_ERR_INVALID_ARGUMENT, "block_table");
    bad = s;
    bad.kv.block_table_stride = 0;
    EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &bad), HA_ERR_INVALID_ARGUMENT,
                "block_table_stride");
    bad = s;
    bad.kv.page_size = 0; /* the pool read as a contiguous KV, with the paged cache */
    bad.kv.capacity = MAX_TOKENS;
    EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &bad), HA_ERR_SHAPE, "page_size");
    bad = s;
    bad.kv.page_size = PAGE * 2;
    EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &bad), HA_ERR_SHAPE, "page_size");

    if (fx.host_memory) {
        /* entries out of range, in a page the sequence uses */
        int64_t entries = (int64_t)MAX_BATCH * fx.b.kv_paged.block_table_stride;
        size_t bytes = (size_t)entries * sizeof(int32_t);
        int32_t *table = malloc(bytes);
        assert_non_null(table);
        const int32_t bad_ids[] = {-1, (int32_t)fx.b.kv_paged.capacity, INT32_MAX, INT32_MIN};
        for (size_t i = 0; i < sizeof bad_ids / sizeof bad_ids[0]; i++) {
            memcpy(table, fx.b.kv_paged.block_table, bytes);
            table[fx.b.kv_paged.block_table_stride + 1] = bad_ids[i]; /* sequence 1, page 1 (tokens 8..15) */
            tu_to_dev(fx.rt, fx.b.kv_paged.block_table_dev, table, bytes);
            EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &s), HA_ERR_INVALID_ARGUMENT, "block_table");
            EXPECT_FAIL(ha_dense_attend(fx.plan_paged, &s.q, &s.kv, MAX_BATCH, fx.b.lens, &s.out, fx.b.o.lse, NULL),
                        HA_ERR_INVALID_ARGUMENT, "block_table");
        }
        tu_to_dev(fx.rt, fx.b.kv_paged.block_table_dev, fx.b.kv_paged.block_table, bytes);
        free(table);
        /* a sequence needing more pages than a row holds */
        bad = s;
        bad.kv.block_table_stride = 2;
        EXPECT_FAIL(ha_decode_step(fx.plan_paged, fx.cache_paged, 0, &bad), HA_ERR_INVALID_ARGUMENT,
                    "block_table_stride");
    }
    EXPECT_OUTPUTS_UNTOUCHED();
}

static void test_stage_bad_args(void **state)
{
    (void)state;
    const ha_status inval = HA_ERR_INVALID_ARGUMENT;
    ha_step s = good_step();
    ha_kv kv = s.kv, no_k = s.kv;
    no_k.k = NULL;
    ha_tensor3 q = s.q, out = s.out, bad_q = s.q, overlapping = s.out;
    bad_q.dtype = (ha_dtype)7;
    overlapping.stride_head = 1;
    const int32_t *lens = fx.b.lens;
    int32_t *idx = fx.b.o.indices, *cnt = fx.b.o.counts;
    uint32_t *codes = fx.b.o.codes;
    float *lse = fx.b.o.lse;
    ha_plan *p = fx.plan;
    ha_cache *c = fx.cache;
    const int32_t B = MAX_BATCH;
    tx_outputs_poison(&fx.b.o);

    EXPECT_FAIL(ha_cache_encode_keys(NULL, c, 0, &kv, B, lens, 4, NULL), inval, "plan");
    EXPECT_FAIL(ha_cache_encode_keys(p, NULL, 0, &kv, B, lens, 4, NULL), inval, "cache");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, NULL, B, lens, 4, NULL), inval, "kv");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &kv, B, NULL, 4, NULL), inval, "seq_end");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &kv, B, lens, -1, NULL), inval, "count");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &kv, 0, lens, 4, NULL), inval, "batch");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 7, &kv, B, lens, 4, NULL), inval, "layer");
    EXPECT_FAIL(ha_cache_encode_keys(p, c, 0, &no_k, B, lens, 4, NULL), inval, "k");

    EXPECT_FAIL(ha_encode_queries(NULL, 0, &q, B, codes, NULL), inval, "plan");
    EXPECT_FAIL(ha_encode_queries(p, 0, NULL, B, codes, NULL), inval, "q");
    EXPECT_FAIL(ha_encode_queries(p, 0, &q, B, NULL, NULL), inval, "codes");
    EXPECT_FAIL(ha_encode_queries(p, 1, &q, B, codes, NULL), inval, "dense");
    EXPECT_FAIL(ha_encode_queries(p, -1, &q, B, codes, NULL), inval, "layer");
    EXPECT_FAIL(ha_encode_queries(p, 0, &q, B + 1, codes, NULL), inval, "batch");
    EXPECT_FAIL(ha_encode_queries(p, 0, &bad_q, B, codes, NULL), inval, "q");

    EXPECT_FAIL(ha_match(NULL, c, 0, codes, &kv, B, lens, idx, cnt, NULL), inval, "plan");
    EXPECT_FAIL(ha_match(p, NULL, 0, codes, &kv, B, lens, idx, cnt, NULL), inval, "cache");
    EXPECT_FAIL(ha_match(p, c, 0, NULL, &kv, B, lens, idx, cnt, NULL), inval, "q_codes");
    EXPECT_FAIL(ha_match(p, c, 0, codes, NULL, B, lens, idx, cnt, NULL), inval, "kv");
    EXPECT_FAIL(ha_match(p, c, 0, codes, &kv, B, NULL, idx, cnt, NULL), inval, "seq_lens");
    EXPECT_FAIL(ha_match(p, c, 0, codes, &kv, B, lens, NULL, cnt, NULL), inval, "indices");
    EXPECT_FAIL(ha_match(p, c, 0, codes, &kv, B, lens, idx, NULL, NULL), inval, "counts");
    EXPECT_FAIL(ha_match(p, c, 1, codes, &kv, B, lens, idx, cnt, NULL), inval, "dense");
    EXPECT_FAIL(ha_match(p, c, 0, codes, &kv, -2, lens, idx, cnt, NULL), inval, "batch");

    EXPECT_FAIL(ha_attend(NULL, &q, &kv, B, lens, idx, cnt, &out, lse, NULL), inval, "plan");
    EXPECT_FAIL(ha_attend(p, NULL, &kv, B, lens, idx, cnt, &out, lse, NULL), inval, "q");
    EXPECT_FAIL(ha_attend(p, &q, NULL, B, lens, idx, cnt, &out, lse, NULL), inval, "kv");
    EXPECT_FAIL(ha_attend(p, &q, &kv, B, lens, NULL, cnt, &out, lse, NULL), inval, "indices");
    EXPECT_FAIL(ha_attend(p, &q, &kv, B, lens, idx, NULL, &out, lse, NULL), inval, "counts");
    EXPECT_FAIL(ha_attend(p, &q, &kv, B, lens, idx, cnt, NULL, lse, NULL), inval, "out");
    EXPECT_FAIL(ha_dense_attend(p, &q, &kv, B, lens, NULL, lse, NULL), inval, "out");
    EXPECT_FAIL(ha_dense_attend(p, NULL, &kv, B, lens, &out, lse, NULL), inval, "q");
    EXPECT_FAIL(ha_dense_attend(p, &q, &kv, B + 1, lens, &out, lse, NULL), inval, "batch");
    EXPECT_FAIL(ha_dense_attend(p, &q, &kv, B, lens, &overlapping, lse, NULL), HA_ERR_SHAPE, "out");
    EXPECT_OUTPUTS_UNTOUCHED();
}

static void test_attend_selection_checked(void **state)
{
    (void)state;
    if (!fx.host_memory)
        skip();
    ha_step s = good_step(); /* lengths 40, 13 */
    tx_outputs_poison(&fx.b.o);
    int64_t rows = (int64_t)MAX_BATCH * HQ;
    int32_t *idx = malloc(fx.b.o.index_bytes), counts[MAX_BATCH * HQ];
    assert_non_null(idx);
    for (int64_t r = 0; r < rows; r++) {
        counts[r] = 3;
        for (int64_t i = 0; i < fx.max_kept; i++)
            idx[r * fx.max_kept + i] = (int32_t)i;
    }
    int32_t *idx_dev = tu_dev_upload(fx.rt, idx, fx.b.o.index_bytes);
    int32_t *cnt_dev = tu_dev_upload(fx.rt, counts, sizeof counts);

    /* a count beyond the sequence's length, a negative count, an index beyond the length */
    counts[HQ] = 14; /* sequence 1 has 13 tokens */
    tu_to_dev(fx.rt, cnt_dev, counts, sizeof counts);
    EXPECT_FAIL(ha_attend(fx.plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, idx_dev, cnt_dev, &s.out, fx.b.o.lse, NULL),
                HA_ERR_INVALID_ARGUMENT, "counts");
    counts[HQ] = -1;
    tu_to_dev(fx.rt, cnt_dev, counts, sizeof counts);
    EXPECT_FAIL(ha_attend(fx.plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, idx_dev, cnt_dev, &s.out, fx.b.o.lse, NULL),
                HA_ERR_INVALID_ARGUMENT, "counts");
    counts[HQ] = 3;
    tu_to_dev(fx.rt, cnt_dev, counts, sizeof counts);
    idx[HQ * fx.max_kept + 2] = 13;
    tu_to_dev(fx.rt, idx_dev, idx, fx.b.o.index_bytes);
    EXPECT_FAIL(ha_attend(fx.plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, idx_dev, cnt_dev, &s.out, fx.b.o.lse, NULL),
                HA_ERR_INVALID_ARGUMENT, "index");
    idx[HQ * fx.max_kept + 2] = -7;
    tu_to_dev(fx.rt, idx_dev, idx, fx.b.o.index_bytes);
    EXPECT_FAIL(ha_attend(fx.plan, &s.q, &s.kv, MAX_BATCH, fx.b.lens, idx_dev, cnt_dev, &s.out, fx.b.o.lse, NULL),
                HA_ERR_INVALID_ARGUMENT, "index");
    EXPECT_OUTPUTS_UNTOUCHED();
    free(idx);
    tu_dev_free(fx.rt, idx_dev);
    tu_dev_free(fx.rt, cnt_dev);
}

static void test_good_calls_still_work(void **state)
{
    (void)state;
    /* after all the failures above, the same objects run a correct step */
    ha_step s = good_step();
    tx_outputs_poison(&fx.b.o);
    EXPECT_OK(ha_cache_encode_keys(fx.plan, fx.cache, 0, &s.kv, MAX_BATCH, fx.b.lens, 40, NULL));
    EXPECT_OK(ha_decode_step(fx.plan, fx.cache, 0, &s));
    EXPECT_OK(ha_decode_step(fx.plan, fx.cache, 1, &s)); /* the dense layer */
    float out[MAX_BATCH * HQ * DIM];
    tu_tensor3_download(&fx.b.o.out, fx.rt);
    tu_tensor3_to_f32(&fx.b.o.out, out);
    for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
        assert_true(isfinite(out[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_strings),
        cmocka_unit_test(test_version_and_api_table),
        cmocka_unit_test(test_dtype_size),
        cmocka_unit_test(test_close_null_is_noop),
        cmocka_unit_test(test_runtime_open_bad_args),
        cmocka_unit_test(test_unknown_backend),
        cmocka_unit_test(test_last_error_is_per_thread),
        cmocka_unit_test(test_memory_bad_args),
        cmocka_unit_test(test_weights_bad_args),
        cmocka_unit_test(test_weights_truncated),
        cmocka_unit_test(test_weights_corrupted),
        cmocka_unit_test(test_weights_random_damage),
        cmocka_unit_test(test_plan_bad_config),
        cmocka_unit_test(test_plan_size_overflow),
        cmocka_unit_test(test_cache_bad_config),
        cmocka_unit_test(test_decode_step_bad_args),
        cmocka_unit_test(test_lengths_checked),
        cmocka_unit_test(test_paged_block_table_checked),
        cmocka_unit_test(test_stage_bad_args),
        cmocka_unit_test(test_attend_selection_checked),
        cmocka_unit_test(test_good_calls_still_work),
    };
    int failed = cmocka_run_group_tests(tests, setup, teardown);
    tx_print_tally("test_api_errors");
    return failed;
}
