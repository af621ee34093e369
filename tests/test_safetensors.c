/*
 * test_safetensors.c — the safetensors reader/writer (core/safetensors.c) and the half-precision
 * conversions of core/ha_shared.h: round trips of random tensors of every dtype and rank, every
 * malformed-header case, truncation at every byte and random byte flips (must never crash).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ha_shared.h"
#include "safetensors.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s) /* splitmix64 */
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static char tmp_dir[256];

static int make_tmp_dir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof(tmp_dir), "%s/ha_test_st_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_tmp_dir(void **state)
{
    (void)state;
    return rmdir(tmp_dir); /* every test removes its own files, so this fails if one leaked */
}

static void tmp_path(char *buf, size_t size, const char *name)
{
    snprintf(buf, size, "%s/%s", tmp_dir, name);
}

static uint8_t *read_whole(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

/** A file: header length, json (unpadded), then data_len bytes of a pattern. */
static uint8_t *make_file(const char *json, size_t data_len, size_t *len)
{
    size_t n = strlen(json);
    *len = 8 + n + data_len;
    uint8_t *buf = malloc(*len);
    assert_non_null(buf);
    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)n >> (8 * i));
    memcpy(buf + 8, json, n);
    for (size_t i = 0; i < data_len; i++)
        buf[8 + n + i] = (uint8_t)(i * 7 + 3);
    return buf;
}

static void assert_zeroed(const ha_st_file *f)
{
    assert_null(f->tensors);
    assert_int_equal(f->n_tensors, 0);
    assert_null(f->meta_keys);
    assert_int_equal(f->n_meta, 0);
    assert_null(f->owned);
}

/** Parses buf (copied to an exact-size allocation so ASan sees overreads) and expects status. */
static void expect_parse(const uint8_t *buf, size_t len, ha_status expected, const char *needle)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len)
        memcpy(copy, buf, len);
    ha_st_file f;
    char err[512] = "";
    ha_status st = ha_st_parse(copy, len, &f, err, sizeof(err));
    if (st != expected)
        fail_msg("expected status %d, got %d (%s)", (int)expected, (int)st, err);
    if (expected != HA_OK) {
        assert_zeroed(&f);
        assert_true(strlen(err) > 0);
        if (needle && !strstr(err, needle))
            fail_msg("message \"%s\" does not mention \"%s\"", err, needle);
    }
    ha_st_close(&f);
    free(copy);
}

static void expect_json(const char *json, size_t data_len, ha_status expected, const char *needle)
{
    size_t len;
    uint8_t *buf = make_file(json, data_len, &len);
    expect_parse(buf, len, expected, needle);
    free(buf);
}

/* ---- round trip ---------------------------------------------------------------------------- */

enum { RT_TENSORS = 24 };

static void test_round_trip(void **state)
{
    (void)state;
    uint64_t rng = 42;
    ha_st_out_tensor out[RT_TENSORS];
    int64_t shapes[RT_TENSORS][HA_ST_MAX_DIMS];
    char names[RT_TENSORS][32];
    uint8_t *data[RT_TENSORS];
    for (int i = 0; i < RT_TENSORS; i++) {
        ha_st_dtype dt = (ha_st_dtype)(i % 10);
        int32_t ndim = i % 5; /* 0..4 */
        size_t numel = 1;
        for (int d = 0; d < ndim; d++) {
            shapes[i][d] = 1 + (int64_t)(rng_next(&rng) % 5);
            if (i == 9 && d == 1)
                shapes[i][d] = 0; /* a zero-size tensor */
            numel *= (size_t)shapes[i][d];
        }
        size_t bytes = numel * ha_st_dtype_size(dt);
        data[i] = malloc(bytes ? bytes : 1);
        for (size_t b = 0; b < bytes; b++)
            data[i][b] = (uint8_t)rng_next(&rng);
        /* names in non-sorted order, with a dot and a UTF-8 character */
        snprintf(names[i], sizeof(names[i]), "t%02d.\xc3\xa9%s", (i * 7) % RT_TENSORS, ha_st_dtype_name(dt));
        out[i] = (ha_st_out_tensor){names[i], dt, ndim, shapes[i], data[i]};
    }
    const char *keys[] = {"format", "empty", "utf8"};
    const char *values[] = {"hashattn", "", "\xe2\x82\xac 5"};
    char path[512], err[512] = "";
    tmp_path(path, sizeof(path), "rt.safetensors");
    assert_int_equal(ha_st_write(path, out, RT_TENSORS, keys, values, 3, err, sizeof(err)), HA_OK);

    size_t len;
    uint8_t *bytes = read_whole(path, &len);
    uint64_t header_len = 0;
    memcpy(&header_len, bytes, 8);
    assert_int_equal((8 + header_len) % 8, 0);
    assert_true(bytes[8 + header_len - 1] == '}' || bytes[8 + header_len - 1] == ' ');

    for (int pass = 0; pass < 2; pass++) {
        ha_st_file f;
        if (pass == 0)
            assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_OK);
        else
            assert_int_equal(ha_st_parse(bytes, len, &f, err, sizeof(err)), HA_OK);
        assert_int_equal(f.mapped, pass == 0);
        assert_int_equal(f.n_tensors, RT_TENSORS);
        assert_int_equal(f.n_meta, 3);
        for (int m = 0; m < 3; m++)
            assert_string_equal(ha_st_meta(&f, keys[m]), values[m]);
        assert_null(ha_st_meta(&f, "missing"));
        assert_null(ha_st_find(&f, "missing"));
        for (size_t t = 1; t < f.n_tensors; t++)
            assert_true(strcmp(f.tensors[t - 1].name, f.tensors[t].name) < 0);
        for (int i = 0; i < RT_TENSORS; i++) {
            const ha_st_tensor *t = ha_st_find(&f, names[i]);
            assert_non_null(t);
            assert_int_equal(t->dtype, out[i].dtype);
            assert_int_equal(t->ndim, out[i].ndim);
            int64_t numel = 1;
            for (int d = 0; d < t->ndim; d++) {
                assert_int_equal(t->shape[d], shapes[i][d]);
                numel *= shapes[i][d];
            }
            assert_int_equal(t->numel, numel);
            assert_int_equal(t->nbytes, (size_t)numel * ha_st_dtype_size(t->dtype));
            assert_memory_equal(ha_st_tensor_data(&f, t), data[i], t->nbytes ? t->nbytes : 0);

            float *conv = malloc(((size_t)numel + 1) * sizeof(float));
            ha_status st = ha_st_to_f32(&f, t, conv);
            if (t->dtype == HA_ST_F32 || t->dtype == HA_ST_F16 || t->dtype == HA_ST_BF16) {
                assert_int_equal(st, HA_OK);
                for (int64_t e = 0; e < numel; e++) {
                    uint32_t got, want;
                    memcpy(&got, &conv[e], 4);
                    if (t->dtype == HA_ST_F32) {
                        memcpy(&want, data[i] + 4 * e, 4);
                    } else {
                        uint16_t h;
                        memcpy(&h, data[i] + 2 * e, 2);
                        float x = t->dtype == HA_ST_F16 ? ha_f16_to_f32(h) : ha_bf16_to_f32(h);
                        memcpy(&want, &x, 4);
                    }
                    assert_int_equal(got, want); /* bitwise, NaN payloads included */
                }
            } else {
                assert_int_equal(st, HA_ERR_FORMAT);
            }
            free(conv);
        }
        ha_st_close(&f);
        assert_zeroed(&f);
    }
    free(bytes);
    for (int i = 0; i < RT_TENSORS; i++)
        free(data[i]);
    assert_int_equal(unlink(path), 0);
}

static void test_write_empty_and_rejects(void **state)
{
    (void)state;
    char path[512], err[512];
    tmp_path(path, sizeof(path), "empty.safetensors");
    assert_int_equal(ha_st_write(path, NULL, 0, NULL, NULL, 0, err, sizeof(err)), HA_OK);
    size_t len;
    uint8_t *bytes = read_whole(path, &len);
    static const uint8_t expect[16] = {8, 0, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    assert_int_equal(len, 16); /* "{}" padded with spaces to 8 bytes */
    assert_memory_equal(bytes, expect, 16);
    free(bytes);
    ha_st_file f;
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_OK);
    assert_int_equal(f.n_tensors, 0);
    assert_int_equal(f.n_meta, 0);
    assert_int_equal(f.data_size, 0);
    ha_st_close(&f);

    /* invalid requests fail without touching the existing file */
    float x[2] = {1.0f, 2.0f};
    int64_t shape1[1] = {2}, neg[1] = {-1};
    ha_st_out_tensor dup[2] = {{"a", HA_ST_F32, 1, shape1, x}, {"a", HA_ST_F32, 1, shape1, x}};
    assert_int_equal(ha_st_write(path, dup, 2, NULL, NULL, 0, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
    ha_st_out_tensor bad[] = {
        {"", HA_ST_F32, 1, shape1, x},          {"__metadata__", HA_ST_F32, 1, shape1, x},
        {"n", (ha_st_dtype)99, 1, shape1, x},   {"n", HA_ST_F32, 9, shape1, x},
        {"n", HA_ST_F32, 1, neg, x},            {"n", HA_ST_F32, 1, shape1, NULL},
        {NULL, HA_ST_F32, 1, shape1, x},        {"\xff\xfe", HA_ST_F32, 1, shape1, x},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        assert_int_equal(ha_st_write(path, &bad[i], 1, NULL, NULL, 0, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
        assert_true(strlen(err) > 0);
    }
    int64_t huge[2] = {INT64_MAX / 2, 4};
    ha_st_out_tensor big = {"big", HA_ST_F32, 2, huge, x};
    assert_int_equal(ha_st_write(path, &big, 1, NULL, NULL, 0, err, sizeof(err)), HA_ERR_OVERFLOW);
    const char *k2[] = {"a", "a"}, *v2[] = {"1", "2"};
    assert_int_equal(ha_st_write(path, NULL, 0, k2, v2, 2, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
    const char *vnull[] = {"1", NULL};
    const char *k3[] = {"a", "b"};
    assert_int_equal(ha_st_write(path, NULL, 0, k3, vnull, 2, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_OK); /* still the empty file */
    assert_int_equal(f.n_tensors, 0);
    ha_st_close(&f);

    /* a write that cannot create its file leaves nothing behind */
    char dir_path[512];
    tmp_path(dir_path, sizeof(dir_path), "no_such_dir/x.safetensors");
    assert_int_equal(ha_st_write(dir_path, NULL, 0, NULL, NULL, 0, err, sizeof(err)), HA_ERR_IO);
    assert_int_equal(unlink(path), 0);
}

static void test_open_errors(void **state)
{
    (void)state;
    char path[512], err[512];
    ha_st_file f;
    tmp_path(path, sizeof(path), "does_not_exist.safetensors");
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_ERR_IO);
    assert_non_null(strstr(err, path));
    assert_zeroed(&f);
    assert_int_equal(ha_st_open(tmp_dir, &f, err, sizeof(err)), HA_ERR_IO); /* a directory */
    assert_zeroed(&f);

    tmp_path(path, sizeof(path), "empty_file");
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    fclose(fp);
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_ERR_FORMAT);
    assert_zeroed(&f);
    fp = fopen(path, "wb");
    fwrite("{\"a\":1}", 1, 7, fp); /* 7 bytes: no room for the header length */
    fclose(fp);
    assert_int_equal(ha_st_open(path, &f, err, sizeof(err)), HA_ERR_FORMAT);
    assert_int_equal(unlink(path), 0);
    assert_int_equal(ha_st_open(NULL, &f, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(ha_st_parse(NULL, 8, &f, err, sizeof(err)), HA_ERR_INVALID_ARGUMENT);
}

/* ---- malformed files ------------------------------------------------------------------------- */

#define T_F32_2 "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}"

static void test_header_length(void **state)
{
    (void)state;
    uint8_t small[8] = {0};
    for (size_t n = 0; n < 8; n++)
        expect_parse(small, n, HA_ERR_FORMAT, "8-byte");
    size_t len;
    uint8_t *buf = make_file("{\"a\":" T_F32_2 "}", 8, &len);
    buf[0] = (uint8_t)(len - 8 + 1); /* one byte beyond the file */
    expect_parse(buf, len, HA_ERR_FORMAT, "header length");
    memset(buf, 0xff, 8); /* 2^64 - 1 */
    expect_parse(buf, len, HA_ERR_FORMAT, "header length");
    memset(buf, 0, 8);
    buf[4] = 1; /* 2^32: absurd */
    expect_parse(buf, len, HA_ERR_FORMAT, "absurd");
    memset(buf, 0, 8); /* zero-length header */
    expect_parse(buf, len, HA_ERR_FORMAT, NULL);
    free(buf);
}

static void test_bad_json(void **state)
{
    (void)state;
    expect_json("{}", 0, HA_OK, NULL);
    expect_json("{}      ", 0, HA_OK, NULL); /* space padding */
    expect_json("{\"a\":" T_F32_2 "}   ", 8, HA_OK, NULL);
    expect_json("{\"a\":", 0, HA_ERR_FORMAT, "JSON");
    expect_json("{\"a\":" T_F32_2 "}x", 8, HA_ERR_FORMAT, "JSON");
    expect_json("{\"a\":" T_F32_2 "}{}", 8, HA_ERR_FORMAT, "JSON");
    expect_json("[1, 2]", 0, HA_ERR_FORMAT, "'{'");
    expect_json("\"x\"", 0, HA_ERR_FORMAT, NULL);
    expect_json(" {}", 0, HA_ERR_FORMAT, "'{'");
    expect_json("{\"\xff\":" T_F32_2 "}", 8, HA_ERR_FORMAT, "JSON"); /* not UTF-8 */
    expect_json("{\"a\\u0000b\":" T_F32_2 "}", 8, HA_ERR_FORMAT, NULL); /* NUL in a name */
    expect_json("{\"a\":" T_F32_2 ",\"a\":" T_F32_2 "}", 16, HA_ERR_FORMAT, "duplicate");
    expect_json("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, HA_ERR_FORMAT, "duplicate");
    expect_json("{\"a\":" T_F32_2 ",\"\":" T_F32_2 "}", 16, HA_ERR_FORMAT, "empty name");
    expect_json("{\"a\":[]}", 0, HA_ERR_FORMAT, "not an object");
    size_t len;
    uint8_t *buf = make_file("{\"a\":" T_F32_2 "}", 8, &len);
    buf[12] = '\0'; /* a NUL byte inside the header */
    expect_parse(buf, len, HA_ERR_FORMAT, NULL);
    free(buf);
}

static void test_bad_tensor_entries(void **state)
{
    (void)state;
    static const struct {
        const char *json;
        size_t data;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, "unknown dtype"},
        {"{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "unknown dtype"},
        {"{\"a\":{\"dtype\":32,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 8, "unknown field"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, "shape[0]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "dimensions"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, "too large"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[3037000500,3037000500],\"data_offsets\":[0,8]}}", 8, "too large"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952,2],\"data_offsets\":[0,8]}}", 8, "too large"},
        {"{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,8]}}", 8, "JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{\"0\":8}}}", 8, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,\"8\"]}}", 8, "non-negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 7, "truncated"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,12]}}", 12, "need 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "need 12"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 12, "trailing"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "belong to no tensor"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, "overlaps"},
        {"{}", 4, "no tensors"},
        {"{\"__metadata__\":{\"a\":1}}", 0, "not a string"},
        {"{\"__metadata__\":{\"a\":null}}", 0, "not a string"},
        {"{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, "not a string"},
        {"{\"__metadata__\":[\"a\"]}", 0, "not an object"},
        {"{\"__metadata__\":\"a\"}", 0, "not an object"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        print_message("case %zu: %s\n", i, cases[i].json);
        expect_json(cases[i].json, cases[i].data, HA_ERR_FORMAT, cases[i].needle);
    }
    /* valid neighbours of the cases above */
    expect_json("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]}}", 8, HA_OK, NULL);
    expect_json("{\"z\":{\"dtype\":\"BOOL\",\"shape\":[0,4611686018427387904],\"data_offsets\":[0,0]}}", 0, HA_OK,
                NULL);
    expect_json("{\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
                "\"__metadata__\":{}}", 8, HA_OK, NULL);
}

/* ---- robustness: truncation and byte flips --------------------------------------------------- */

static uint8_t *valid_sample(size_t *len)
{
    char path[512], err[512];
    tmp_path(path, sizeof(path), "sample.safetensors");
    float w[6] = {1.0f, -2.0f, 3.5f, 0.25f, -0.125f, 8.0f};
    uint16_t h[4] = {0x3c00, 0xc100, 0x7bff, 0x0001};
    int64_t s_w[2] = {2, 3}, s_h[1] = {4}, s_z[2] = {0, 3};
    ha_st_out_tensor t[] = {{"layers.0.q.w1", HA_ST_F32, 2, s_w, w},
                            {"layers.0.q.b1", HA_ST_F16, 1, s_h, h},
                            {"bf", HA_ST_BF16, 1, s_h, h},
                            {"empty", HA_ST_F32, 2, s_z, NULL},
                            {"scalar", HA_ST_I32, 0, NULL, w}};
    const char *keys[] = {"format", "bits"}, *values[] = {"hashattn", "32"};
    assert_int_equal(ha_st_write(path, t, 5, keys, values, 2, err, sizeof(err)), HA_OK);
    uint8_t *buf = read_whole(path, len);
    assert_int_equal(unlink(path), 0);
    return buf;
}

static void test_truncation_every_offset(void **state)
{
    (void)state;
    size_t len;
    uint8_t *buf = valid_sample(&len);
    expect_parse(buf, len, HA_OK, NULL);
    for (size_t n = 0; n < len; n++)
        expect_parse(buf, n, HA_ERR_FORMAT, NULL);
    free(buf);
}

/** A parse that succeeded must describe only bytes inside the buffer. */
static void check_invariants(const ha_st_file *f, const uint8_t *buf, size_t len)
{
    assert_true(f->data >= buf && f->data + f->data_size == buf + len);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const ha_st_tensor *t = &f->tensors[i];
        assert_true(t->offset <= f->data_size && t->nbytes <= f->data_size - t->offset);
        assert_ptr_equal(ha_st_find(f, t->name), t);
        if (t->dtype == HA_ST_F32 || t->dtype == HA_ST_F16 || t->dtype == HA_ST_BF16) {
            float *dst = malloc((size_t)t->numel * sizeof(float) + 1);
            assert_int_equal(ha_st_to_f32(f, t, dst), HA_OK);
            free(dst);
        }
    }
}

static void test_random_byte_flips(void **state)
{
    (void)state;
    static const uint8_t interesting[] = {'{', '}', '[', ']', '"', ',', ':', '0', '1', '9', '-', ' ', '\\', 0, 0xff, 0x80};
    size_t len;
    uint8_t *orig = valid_sample(&len);
    uint64_t header_len;
    memcpy(&header_len, orig, 8);
    uint64_t rng = 7;
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 2000; iter++) {
        uint8_t *buf = malloc(len);
        memcpy(buf, orig, len);
        int flips = 1 + (int)(rng_next(&rng) % 4);
        for (int k = 0; k < flips; k++) {
            uint64_t r = rng_next(&rng);
            /* mostly inside the header, where the parser's decisions are */
            size_t pos = (r & 3) ? 8 + (size_t)((r >> 8) % header_len) : (size_t)((r >> 8) % len);
            uint8_t v = (r >> 40) & 1 ? interesting[(r >> 48) % sizeof(interesting)] : (uint8_t)(r >> 48);
            buf[pos] = v;
        }
        ha_st_file f;
        char err[256];
        ha_status st = ha_st_parse(buf, len, &f, err, sizeof(err));
        assert_true(st == HA_OK || st == HA_ERR_FORMAT);
        if (st == HA_OK) {
            check_invariants(&f, buf, len);
            accepted++;
        } else {
            assert_zeroed(&f);
            rejected++;
        }
        ha_st_close(&f);
        free(buf);
    }
    print_message("byte flips: %d accepted, %d rejected\n", accepted, rejected);
    assert_true(rejected > 1000); /* most flips in the header break it */
    free(orig);
}

/* ---- half precision (core/ha_shared.h) ------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_f16_known_values(void **state)
{
    (void)state;
    static const struct {
        uint16_t h;
        float f;
    } known[] = {
        {0x3c00, 1.0f},       {0xc100, -2.5f},       {0x7bff, 65504.0f},         {0xfbff, -65504.0f},
        {0x0000, 0.0f},       {0x0001, 0x1p-24f},    {0x03ff, 1023 * 0x1p-24f},  {0x0400, 0x1p-14f},
        {0x8001, -0x1p-24f},  {0x3555, 0x1.554p-2f}, {0x7c00, INFINITY},         {0xfc00, -INFINITY},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        assert_int_equal(f32_bits(ha_f16_to_f32(known[i].h)), f32_bits(known[i].f));
        assert_int_equal(ha_f32_to_f16(known[i].f), known[i].h);
    }
    assert_int_equal(f32_bits(ha_f16_to_f32(0x8000)), 0x80000000u); /* -0 */
    assert_int_equal(ha_f32_to_f16(-0.0f), 0x8000);
    assert_true(isnan(ha_f16_to_f32(0x7e00)) && isnan(ha_f16_to_f32(0xfc01)));
    uint16_t qnan = ha_f32_to_f16(NAN);
    assert_true((qnan & 0x7c00) == 0x7c00 && (qnan & 0x3ff) != 0);
    uint16_t snan = ha_f32_to_f16(f32_from_bits(0x7f800001u)); /* payload below fp16's mantissa */
    assert_true((snan & 0x7c00) == 0x7c00 && (snan & 0x3ff) != 0);
    /* overflow and rounding at the top */
    assert_int_equal(ha_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(ha_f32_to_f16(65520.0f), 0x7c00);
    assert_int_equal(ha_f32_to_f16(1e10f), 0x7c00);
    assert_int_equal(ha_f32_to_f16(-1e10f), 0xfc00);
    /* ties to even */
    assert_int_equal(ha_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(ha_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(ha_f32_to_f16(0x1p-25f), 0x0000);     /* half of the smallest subnormal: to even 0 */
    assert_int_equal(ha_f32_to_f16(3 * 0x1p-25f), 0x0002); /* 1.5 ulp: to even 2 */
    assert_int_equal(ha_f32_to_f16(0x1.8p-25f), 0x0001);   /* above half: up */
    assert_int_equal(ha_f32_to_f16(1e-9f), 0x0000);
    assert_int_equal(ha_f32_to_f16(f32_from_bits(1)), 0x0000); /* fp32 subnormal */
}

/** Every pair of neighbouring finite fp16 values: the midpoint and its fp32 neighbours round right. */
static void test_f16_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = ha_f16_to_f32((uint16_t)h);
        if (isnan(f)) {
            assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
            assert_true(isnan(ha_f16_to_f32(ha_f32_to_f16(f))));
            continue;
        }
        assert_int_equal(ha_f32_to_f16(f), h);
        /* reference decoding in double, independent of the helper */
        int e = (h >> 10) & 31;
        double m = h & 0x3ff;
        double ref = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
        if (h & 0x8000)
            ref = -ref;
        assert_true((double)f == ref);
    }
    for (uint32_t sign = 0; sign <= 0x8000; sign += 0x8000) {
        for (uint32_t h = 0; h < 0x7c00; h++) {
            float a = ha_f16_to_f32((uint16_t)(sign | h));
            /* the next value up; above 65504 the (virtual) next is 65536, where rounding goes to inf */
            float b = h + 1 < 0x7c00 ? ha_f16_to_f32((uint16_t)(sign | (h + 1))) : (sign ? -65536.0f : 65536.0f);
            uint16_t hb = (uint16_t)(sign | (h + 1));
            float mid = (a + b) / 2; /* exact: 12 significant bits */
            uint16_t even = (h & 1) ? hb : (uint16_t)(sign | h);
            assert_int_equal(ha_f32_to_f16(mid), even);
            assert_int_equal(ha_f32_to_f16(nextafterf(mid, a)), (uint16_t)(sign | h));
            assert_int_equal(ha_f32_to_f16(nextafterf(mid, b)), hb);
        }
    }
}

static void test_bf16(void **state)
{
    (void)state;
    assert_int_equal(ha_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(ha_f32_to_bf16(-2.5f), 0xc020);
    assert_true(ha_bf16_to_f32(0x3f80) == 1.0f && ha_bf16_to_f32(0xc020) == -2.5f);
    assert_true(ha_bf16_to_f32(0x7f7f) == 0x1.fep127f);
    assert_true(ha_bf16_to_f32(0x0001) == 0x1p-133f); /* smallest subnormal */
    assert_true(isinf(ha_bf16_to_f32(0x7f80)) && ha_bf16_to_f32(0xff80) < 0);
    assert_true(isnan(ha_bf16_to_f32(0x7fc0)));
    assert_int_equal(ha_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie to even (down) */
    assert_int_equal(ha_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie to even (up) */
    assert_int_equal(ha_f32_to_bf16(3.4028235e38f), 0x7f80);      /* FLT_MAX rounds to inf */
    assert_int_equal(ha_f32_to_bf16(-INFINITY), 0xff80);
    uint16_t n = ha_f32_to_bf16(f32_from_bits(0x7f800001u)); /* payload only in the dropped bits */
    assert_true(isnan(ha_bf16_to_f32(n)));
    for (uint32_t h = 0; h <= 0xffff; h++) {
        float f = ha_bf16_to_f32((uint16_t)h);
        assert_int_equal(f32_bits(f), h << 16);
        if (isnan(f)) {
            assert_true(isnan(ha_bf16_to_f32(ha_f32_to_bf16(f))));
            continue;
        }
        assert_int_equal(ha_f32_to_bf16(f), h);
        if ((h & 0x7fff) >= 0x7f80 - 1) /* no finite neighbour above */
            continue;
        float b = ha_bf16_to_f32((uint16_t)(h + 1));
        float mid = f + (b - f) / 2; /* (f + b) / 2 would overflow near FLT_MAX */
        assert_int_equal(ha_f32_to_bf16(mid), (h & 1) ? h + 1 : h);
        assert_int_equal(ha_f32_to_bf16(nextafterf(mid, f)), h);
        assert_int_equal(ha_f32_to_bf16(nextafterf(mid, b)), h + 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_write_empty_and_rejects),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_bad_tensor_entries),
        cmocka_unit_test(test_truncation_every_offset),
        cmocka_unit_test(test_random_byte_flips),
        cmocka_unit_test(test_f16_known_values),
        cmocka_unit_test(test_f16_exhaustive),
        cmocka_unit_test(test_bf16),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
