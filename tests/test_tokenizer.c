/*
 * test_tokenizer.c — the byte-level BPE tokenizer of lm/ on the shipped model's vocabulary: every case
 * of fixtures/tokenizer_cases.json (ids from the reference tokenizer; decoding gives the text back),
 * round trips of random byte strings (invalid UTF-8 included), the byte symbols, special tokens and
 * bad input. The model folder comes from $LM_MODEL_DIR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm.h"
#include "lm_internal.h"
#include "test_util.h"

static lm_tokenizer *tok;
static const char *model_dir;

static int setup(void **state)
{
    (void)state;
    model_dir = getenv("LM_MODEL_DIR");
    if (!model_dir) {
        fprintf(stderr, "LM_MODEL_DIR is not set (the folder of models/tinylm-25m)\n");
        return -1;
    }
    if (lm_tokenizer_load(model_dir, &tok) != HA_OK) {
        fprintf(stderr, "lm_tokenizer_load: %s\n", lm_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    lm_tokenizer_free(tok);
    return 0;
}

/* Encodes text, checks every id is a real token, decodes, and checks the bytes come back. Returns the
 * ids (free() them). */
static int32_t *round_trip(const char *text, size_t len, int64_t *n)
{
    int32_t *ids = NULL;
    assert_int_equal(lm_tokenize(tok, text, len, &ids, n), HA_OK);
    assert_true(*n <= (int64_t)len); /* no piece is ever shorter than one byte */
    for (int64_t i = 0; i < *n; i++)
        assert_true(ids[i] >= 0 && ids[i] < lm_tokenizer_vocab_size(tok));
    char *back = NULL;
    size_t back_len = 0;
    assert_int_equal(lm_detokenize(tok, ids, *n, &back, &back_len), HA_OK);
    assert_int_equal(back_len, len);
    assert_memory_equal(back, text, len);
    assert_int_equal(back[back_len], '\0');
    free(back);
    return ids;
}

static void test_fixture_cases(void **state)
{
    (void)state;
    char path[4096];
    snprintf(path, sizeof(path), "%s/fixtures/tokenizer_cases.json", model_dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    assert_non_null(root);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_is_array(cases));
    assert_true(json_array_size(cases) >= 10);
    size_t index;
    json_t *c;
    json_array_foreach(cases, index, c) {
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        assert_true(json_is_string(text) && json_is_array(want));
        int64_t n = 0;
        int32_t *ids = round_trip(json_string_value(text), json_string_length(text), &n);
        if (n != (int64_t)json_array_size(want))
            fail_msg("case %zu (\"%.40s…\"): %lld ids, the reference has %zu", index, json_string_value(text),
                     (long long)n, json_array_size(want));
        for (int64_t i = 0; i < n; i++)
            if (ids[i] != json_integer_value(json_array_get(want, (size_t)i)))
                fail_msg("case %zu: id %lld is %d, the reference has %lld", index, (long long)i, ids[i],
                         (long long)json_integer_value(json_array_get(want, (size_t)i)));
        /* decoding the reference ids gives the text */
        int32_t *ref = malloc((size_t)(n + 1) * sizeof(int32_t));
        for (int64_t i = 0; i < n; i++)
            ref[i] = (int32_t)json_integer_value(json_array_get(want, (size_t)i));
        char *back = NULL;
        size_t back_len = 0;
        assert_int_equal(lm_detokenize(tok, ref, n, &back, &back_len), HA_OK);
        assert_int_equal(back_len, json_string_length(text));
        assert_memory_equal(back, json_string_value(text), back_len);
        free(back);
        free(ref);
        free(ids);
    }
    json_decref(root);
}

/* Every byte alone is one token whose bytes are that byte; the 256 ids are all different and are not
 * byte + 1 throughout (the symbols are ordered by code point). */
static void test_byte_tokens(void **state)
{
    (void)state;
    int32_t seen[256];
    int offset_one = 1;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int64_t n = 0;
        int32_t *ids = round_trip(&c, 1, &n);
        assert_int_equal(n, 1);
        size_t len = 0;
        const char *bytes = lm_token_bytes(tok, ids[0], &len);
        assert_non_null(bytes);
        assert_int_equal(len, 1);
        assert_int_equal((unsigned char)bytes[0], b);
        for (int j = 0; j < b; j++)
            assert_int_not_equal(seen[j], ids[0]);
        seen[b] = ids[0];
        offset_one &= ids[0] == b + 1;
        free(ids);
    }
    assert_false(offset_one);
    assert_int_equal(seen['a'], 65); /* from the fixture: "a" → [65] */
}

static void fill_random(tu_rng *r, char *buf, size_t len, int kind)
{
    static const char ascii[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789    \n\n\t'.,;:!?-\"()";
    static const char *const utf8[] = {"é", "ï", "—", "“", "”", "…", "日本", "🙂", "\xc2\x85", "\xe2\x80\xa8",
                                       "\xc2\xa0", "'s", "'ll", " 12", "\r\n"};
    size_t i = 0;
    while (i < len) {
        uint64_t x = tu_rng_next(r);
        if (kind == 0 || (kind == 2 && x % 5 == 0)) { /* any byte: mostly invalid UTF-8 */
            buf[i++] = (char)(x >> 8);
        } else if (kind == 1 || x % 3 == 0) {
            buf[i++] = ascii[(x >> 8) % (sizeof(ascii) - 1)];
        } else {
            const char *s = utf8[(x >> 8) % (sizeof(utf8) / sizeof(utf8[0]))];
            for (size_t j = 0; s[j] && i < len; j++)
                buf[i++] = s[j];
        }
    }
}

static void test_random_round_trips(void **state)
{
    (void)state;
    tu_rng r;
    tu_rng_seed(&r, 4242);
    char buf[1200];
    for (int iter = 0; iter < 600; iter++) {
        int kind = iter % 3; /* random bytes, text-like ASCII, valid UTF-8 mixed with stray bytes */
        size_t len = (size_t)tu_rng_range(&r, 0, iter % 50 == 0 ? (int64_t)sizeof(buf) : 80);
        fill_random(&r, buf, len, kind);
        int64_t n = 0;
        int32_t *ids = round_trip(buf, len, &n);
        for (int64_t i = 0; i < n; i++) /* BPE never produces the special token */
            assert_int_not_equal(ids[i], 0);
        free(ids);
    }
    /* long runs: one piece of 5000 letters, 5000 spaces, 5000 invalid bytes */
    static char big[5000];
    const char fills[] = {'x', ' ', (char)0xff};
    for (size_t f = 0; f < sizeof(fills); f++) {
        memset(big, fills[f], sizeof(big));
        int64_t n = 0;
        free(round_trip(big, sizeof(big), &n));
    }
}

/* Encoding splits at pre-token boundaries: the ids of "A B" are those of "A" then those of " B". */
static void test_pieces_concatenate(void **state)
{
    (void)state;
    const char *a = "Holmes", *b = " said, 'tis 1890's";
    char ab[64];
    snprintf(ab, sizeof(ab), "%s%s", a, b);
    int64_t na, nb, nab;
    int32_t *ia = round_trip(a, strlen(a), &na), *ib = round_trip(b, strlen(b), &nb);
    int32_t *iab = round_trip(ab, strlen(ab), &nab);
    assert_int_equal(nab, na + nb);
    assert_memory_equal(iab, ia, (size_t)na * sizeof(int32_t));
    assert_memory_equal(iab + na, ib, (size_t)nb * sizeof(int32_t));
    free(ia);
    free(ib);
    free(iab);
}

/* The special token's text is its id (as `tokenizers` matches added tokens), and decodes back. */
static void test_special_token(void **state)
{
    (void)state;
    const char *text = "end.<|endoftext|>Start";
    int64_t n = 0, n1 = 0, n2 = 0;
    int32_t *ids = round_trip(text, strlen(text), &n);
    int32_t *i1 = round_trip("end.", 4, &n1), *i2 = round_trip("Start", 5, &n2);
    assert_int_equal(n, n1 + 1 + n2);
    assert_memory_equal(ids, i1, (size_t)n1 * sizeof(int32_t));
    assert_int_equal(ids[n1], 0);
    assert_memory_equal(ids + n1 + 1, i2, (size_t)n2 * sizeof(int32_t));
    free(ids);
    free(i1);
    free(i2);
}

static void test_bad_input(void **state)
{
    (void)state;
    int32_t *ids = (int32_t *)1;
    int64_t n = -1;
    assert_int_equal(lm_tokenize(NULL, "a", 1, &ids, &n), HA_ERR_INVALID_ARGUMENT);
    assert_int_equal(lm_tokenize(tok, NULL, 1, &ids, &n), HA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(lm_last_error(), "text"));
    assert_int_equal(lm_tokenize(tok, "", 0, &ids, &n), HA_OK);
    assert_null(ids);
    assert_int_equal(n, 0);

    char *text = NULL;
    size_t len = 0;
    int32_t bad[2] = {5, 8192};
    assert_int_equal(lm_detokenize(tok, bad, 2, &text, &len), HA_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(lm_last_error(), "ids[1] = 8192"));
    assert_null(text);
    bad[1] = -3;
    assert_int_equal(lm_detokenize(tok, bad, 2, &text, &len), HA_ERR_INVALID_ARGUMENT);
    assert_null(lm_token_bytes(tok, 8192, &len));
    assert_null(lm_token_bytes(tok, -1, &len));

    lm_tokenizer *none = (lm_tokenizer *)1;
    assert_int_equal(lm_tokenizer_load("/nonexistent/lm-test-dir", &none), HA_ERR_IO);
    assert_null(none);
    assert_non_null(strstr(lm_last_error(), "vocab.json"));
}

/* lm_tokenizer_parse (lm_tokenizer_load on the files' bytes): malformed files are refused, naming
 * the file; a NUL byte in merges.txt is refused (it used to hide every line after it). */
static void test_bad_files(void **state)
{
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/vocab.json", model_dir);
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    char *vocab_json = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    assert_non_null(vocab_json);
    static const struct {
        const char *vocab; /* NULL: the shipped vocabulary */
        const char *merges;
        size_t merges_len;
        ha_status want;
        const char *says;
    } cases[] = {
        {NULL, "\xc4\xa0 t\nh e\n", 9, HA_OK, ""},
        {NULL, "\xc4\xa0 t\n\0h e\n", 10, HA_ERR_FORMAT, "NUL"},
        {NULL, "h e x\n", 6, HA_ERR_FORMAT, "m.txt:1"},
        {NULL, "h e\n\xc4\xa0 qqqqq\n", 13, HA_ERR_FORMAT, "m.txt:2"},
        {"{}", "", 0, HA_ERR_FORMAT, "v.json"},
        {"{\"a\": 0", "", 0, HA_ERR_FORMAT, "v.json"},
        {"{\"a\": 0}", "", 0, HA_ERR_FORMAT, "byte 0x00"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *v = cases[i].vocab ? cases[i].vocab : vocab_json;
        lm_file_bytes vocab = {"v.json", v, strlen(v)}, merges = {"m.txt", cases[i].merges, cases[i].merges_len};
        lm_tokenizer *t = (lm_tokenizer *)1;
        ha_status st = lm_tokenizer_parse(&vocab, &merges, NULL, &t);
        if (st != cases[i].want || !strstr(lm_last_error(), cases[i].says))
            fail_msg("case %zu: status %d (%s), want %d mentioning \"%s\"", i, st, lm_last_error(), cases[i].want,
                     cases[i].says);
        assert_true(st == HA_OK ? t != NULL : t == NULL);
        lm_tokenizer_free(st == HA_OK ? t : NULL);
    }
    free(vocab_json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_cases),
        cmocka_unit_test(test_byte_tokens),
        cmocka_unit_test(test_random_round_trips),
        cmocka_unit_test(test_pieces_concatenate),
        cmocka_unit_test(test_special_token),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_bad_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
