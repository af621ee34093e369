/*
 * lm_tokenizer.c — byte-level BPE (GPT-2; Hugging Face `tokenizers` with a ByteLevel pre-tokenizer,
 * no normalizer, no prefix space), working on bytes throughout:
 *
 *   - vocab.json keys are strings of GPT-2's byte symbols (bytes_to_unicode: printable Latin-1 bytes
 *     stand for themselves, the other 68 bytes for U+0100..U+0143); they are mapped back to bytes at
 *     load, so a token is a byte string and a merge is a pair of token ids;
 *   - encoding: special tokens are cut out of the text first (as `tokenizers` does with added
 *     tokens), every other stretch is split by the pre-tokenizer regex (PCRE2), and each piece goes
 *     from single-byte tokens through the merges, lowest rank first (leftmost on a tie);
 *   - decoding concatenates the tokens' bytes.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lm_internal.h"

/*
 * GPT-2's pre-tokenizer: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * with \s spelled out as Oniguruma's Unicode \s (what `tokenizers` runs): U+0009–U+000D, U+0085 and
 * the separators \p{Z}. PCRE2's own \s under UCP lacks U+0085.
 */
#define WS "\\t\\n\\x{0B}\\f\\r\\x{85}\\p{Z}"
static const char pretokenizer_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS "]+(?![^" WS "])|[" WS "]+";

#define MAX_SPECIAL 8

typedef struct merge_entry {
    uint64_t key;   /**< (left id << 32) | right id */
    int32_t rank;   /**< -1: empty slot */
    int32_t merged; /**< id of the concatenation */
} merge_entry;

struct lm_tokenizer {
    int32_t vocab_size;
    char *bytes;          /**< every token's bytes, back to back */
    size_t *offset;       /**< [vocab_size + 1]: token id's bytes are bytes[offset[id] .. offset[id+1]) */
    int32_t *vocab_slots; /**< open addressing over token bytes → id; -1 empty */
    size_t vocab_mask;
    int32_t byte_id[256]; /**< token of each single byte */
    merge_entry *merges;
    size_t merge_mask;
    int32_t n_merges;
    int32_t special[MAX_SPECIAL]; /**< ids matched literally in the text before pre-tokenizing */
    int32_t n_special;
    pcre2_code *re;
};

/* ---- byte symbols --------------------------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: bytes '!'..'~', 0xA1..0xAC, 0xAE..0xFF map to the same code point; the
 * others, in increasing order, to 256, 257, … */
static void byte_symbols(uint32_t cp_of_byte[256])
{
    uint32_t next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_of_byte[b] = printable ? (uint32_t)b : next++;
    }
}

/* Decodes one UTF-8 code point of s[0..n) into *cp; returns its length, 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (n == 0)
        return 0;
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n)
        return 0;
    uint32_t v = len == 1 ? c : len == 2 ? (c & 0x1f) : len == 3 ? (c & 0x0f) : (c & 0x07);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    *cp = v;
    return len;
}

/* Maps a string of byte symbols to the bytes they stand for, in place (never longer). Returns the
 * byte count, or -1 if some character is not a byte symbol. */
static long symbols_to_bytes(char *s, const int16_t byte_of_cp[324])
{
    size_t n = strlen(s), out = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (len == 0 || cp >= 324 || byte_of_cp[cp] < 0)
            return -1;
        s[out++] = (char)byte_of_cp[cp];
        i += len;
    }
    return (long)out;
}

/* ---- hash tables ------------------------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static uint64_t hash_u64(uint64_t z) /* splitmix64's finalizer */
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t table_size_for(size_t count)
{
    size_t size = 16;
    while (size < 2 * count)
        size *= 2;
    return size;
}

static const char *token_ptr(const lm_tokenizer *t, int32_t id, size_t *len)
{
    *len = t->offset[id + 1] - t->offset[id];
    return t->bytes + t->offset[id];
}

/** Id of the token with these bytes, or -1. */
static int32_t vocab_find(const lm_tokenizer *t, const char *s, size_t n)
{
    for (size_t i = hash_bytes(s, n) & t->vocab_mask;; i = (i + 1) & t->vocab_mask) {
        int32_t id = t->vocab_slots[i];
        if (id < 0)
            return -1;
        size_t len;
        const char *p = token_ptr(t, id, &len);
        if (len == n && memcmp(p, s, n) == 0)
            return id;
    }
}

static const merge_entry *merge_find(const lm_tokenizer *t, int32_t left, int32_t right)
{
    uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
    for (size_t i = hash_u64(key) & t->merge_mask;; i = (i + 1) & t->merge_mask) {
        const merge_entry *e = &t->merges[i];
        if (e->rank < 0)
            return NULL;
        if (e->key == key)
            return e;
    }
}

/* ---- loading ---------------------------------------------------------------------------------- */

static char *read_text_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t size = 0, cap = 0;
    for (;;) {
        if (size + 65536 + 1 > cap) {
            cap = (size + 65536 + 1) * 2;
            char *grown = realloc(buf, cap);
            if (!grown) {
                free(buf);
                fclose(fp);
                return NULL;
            }
            buf = grown;
        }
        size_t got = fread(buf + size, 1, 65536, fp);
        size += got;
        if (got < 65536)
            break;
    }
    int failed = ferror(fp);
    fclose(fp);
    if (failed) {
        free(buf);
        return NULL;
    }
    buf[size] = '\0';
    *len = size;
    return buf;
}

static ha_status load_vocab(lm_tokenizer *t, const lm_file_bytes *file, const int16_t byte_of_cp[324])
{
    const char *path = file->name;
    json_error_t jerr;
    json_t *root = json_loadb(file->data, file->len, 0, &jerr);
    if (!root)
        return lm_fail(HA_ERR_FORMAT, "%s: %s (line %d)", path, jerr.text, jerr.line);
    ha_status st = HA_OK;
    size_t count = json_is_object(root) ? json_object_size(root) : 0;
    if (count == 0 || count > (1u << 24)) {
        st = lm_fail(HA_ERR_FORMAT, "%s: not a non-empty object of token → id", path);
        goto out;
    }
    t->vocab_size = (int32_t)count;
    char **key_of_id = calloc(count, sizeof(char *));
    size_t *len_of_id = calloc(count, sizeof(size_t));
    if (!key_of_id || !len_of_id) {
        free(key_of_id);
        free(len_of_id);
        st = lm_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto out;
    }
    const char *key;
    json_t *value;
    size_t total = 0;
    json_object_foreach(root, key, value) {
        json_int_t v = json_is_integer(value) ? json_integer_value(value) : -1;
        if (v < 0 || v >= (json_int_t)count) {
            st = lm_fail(HA_ERR_FORMAT, "%s: id of \"%s\" is not an integer in [0, %zu)", path, key, count);
            break;
        }
        size_t id = (size_t)v;
        if (key_of_id[id]) {
            st = lm_fail(HA_ERR_FORMAT, "%s: id %zu is used twice", path, id);
            break;
        }
        if (!(key_of_id[id] = strdup(key))) {
            st = lm_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
            break;
        }
        /* a key made of byte symbols stands for those bytes; any other (an added token) for itself */
        long n = symbols_to_bytes(key_of_id[id], byte_of_cp);
        len_of_id[id] = n >= 0 ? (size_t)n : strlen(key);
        if (n < 0)
            strcpy(key_of_id[id], key);
        total += len_of_id[id];
    }
    if (st == HA_OK) {
        t->offset = malloc((count + 1) * sizeof(size_t));
        t->bytes = malloc(total + 1);
        t->vocab_mask = table_size_for(count) - 1;
        t->vocab_slots = malloc((t->vocab_mask + 1) * sizeof(int32_t));
        if (!t->offset || !t->bytes || !t->vocab_slots)
            st = lm_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    if (st == HA_OK) {
        /* ids are unique and in [0, count) and there are count of them: every id has a key */
        size_t at = 0;
        for (size_t id = 0; id < count; id++) {
            t->offset[id] = at;
            memcpy(t->bytes + at, key_of_id[id], len_of_id[id]);
            at += len_of_id[id];
        }
        t->offset[count] = at;
        memset(t->vocab_slots, 0xff, (t->vocab_mask + 1) * sizeof(int32_t));
        for (size_t id = 0; id < count && st == HA_OK; id++) {
            size_t len;
            const char *p = token_ptr(t, (int32_t)id, &len);
            if (vocab_find(t, p, len) >= 0) {
                st = lm_fail(HA_ERR_FORMAT, "%s: two tokens (one is id %zu) stand for the same bytes", path, id);
                break;
            }
            size_t i = hash_bytes(p, len) & t->vocab_mask;
            while (t->vocab_slots[i] >= 0)
                i = (i + 1) & t->vocab_mask;
            t->vocab_slots[i] = (int32_t)id;
        }
        for (int b = 0; b < 256 && st == HA_OK; b++) {
            char c = (char)b;
            if ((t->byte_id[b] = vocab_find(t, &c, 1)) < 0)
                st = lm_fail(HA_ERR_FORMAT, "%s: no token for byte 0x%02x", path, b);
        }
    }
    for (size_t id = 0; id < count; id++)
        free(key_of_id[id]);
    free(key_of_id);
    free(len_of_id);
out:
    json_decref(root);
    return st;
}

static ha_status load_merges(lm_tokenizer *t, const lm_file_bytes *file, const int16_t byte_of_cp[324])
{
    const char *path = file->name;
    size_t len = file->len;
    /* lines are cut in place (strtok_r): a NUL-terminated copy; a NUL inside would hide what follows */
    if (memchr(file->data, '\0', len))
        return lm_fail(HA_ERR_FORMAT, "%s: contains a NUL byte", path);
    char *text = malloc(len + 1);
    if (!text)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    memcpy(text, file->data, len);
    text[len] = '\0';
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    t->merge_mask = table_size_for(lines) - 1;
    t->merges = malloc((t->merge_mask + 1) * sizeof(merge_entry));
    if (!t->merges) {
        free(text);
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    for (size_t i = 0; i <= t->merge_mask; i++)
        t->merges[i].rank = -1;

    ha_status st = HA_OK;
    int line_no = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && st == HA_OK; line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        size_t n = strlen(line);
        if (n > 0 && line[n - 1] == '\r')
            line[--n] = '\0';
        if (n == 0 || (line_no == 1 && strncmp(line, "#version", 8) == 0))
            continue;
        char *space = strchr(line, ' ');
        if (!space || space == line || space[1] == '\0' || strchr(space + 1, ' ')) {
            st = lm_fail(HA_ERR_FORMAT, "%s:%d: not two symbols separated by one space", path, line_no);
            break;
        }
        *space = '\0';
        char *left = line, *right = space + 1;
        long nl = symbols_to_bytes(left, byte_of_cp), nr = symbols_to_bytes(right, byte_of_cp);
        int32_t a = nl > 0 ? vocab_find(t, left, (size_t)nl) : -1;
        int32_t b = nr > 0 ? vocab_find(t, right, (size_t)nr) : -1;
        int32_t m = -1;
        if (a >= 0 && b >= 0) {
            memmove(left + nl, right, (size_t)nr); /* the concatenation, in place */
            m = vocab_find(t, left, (size_t)(nl + nr));
        }
        if (m < 0) {
            st = lm_fail(HA_ERR_FORMAT, "%s:%d: a symbol or the merged token is not in the vocabulary", path, line_no);
            break;
        }
        if (merge_find(t, a, b))
            continue; /* a repeated pair keeps its first (lowest) rank */
        uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
        size_t i = hash_u64(key) & t->merge_mask;
        while (t->merges[i].rank >= 0)
            i = (i + 1) & t->merge_mask;
        t->merges[i] = (merge_entry){.key = key, .rank = t->n_merges++, .merged = m};
    }
    free(text);
    return st;
}

/* Adds the token whose bytes are content to the special tokens (unknown contents are ignored). */
static void add_special(lm_tokenizer *t, json_t *v)
{
    if (json_is_object(v))
        v = json_object_get(v, "content");
    if (!json_is_string(v) || json_string_length(v) == 0)
        return;
    int32_t id = vocab_find(t, json_string_value(v), json_string_length(v));
    if (id < 0 || t->n_special == MAX_SPECIAL)
        return;
    for (int32_t i = 0; i < t->n_special; i++)
        if (t->special[i] == id)
            return;
    t->special[t->n_special++] = id;
}

static ha_status load_special(lm_tokenizer *t, const lm_file_bytes *file)
{
    if (!file || !file->data) /* optional file */
        return HA_OK;
    json_error_t jerr;
    /* model_max_length is often 1e30 written as an integer, too big for json_int_t */
    json_t *root = json_loadb(file->data, file->len, JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root)
        return lm_fail(HA_ERR_FORMAT, "%s: %s (line %d)", file->name, jerr.text, jerr.line);
    static const char *const keys[] = {"bos_token", "eos_token", "unk_token", "pad_token"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        add_special(t, json_object_get(root, keys[i]));
    json_decref(root);
    return HA_OK;
}

static ha_status compile_pattern(lm_tokenizer *t)
{
    int code;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)pretokenizer_pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof(msg));
        return lm_fail(HA_ERR_UNSUPPORTED, "pre-tokenizer regex: %s at offset %zu", (const char *)msg, (size_t)at);
    }
    pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); /* faster where the JIT exists; interpreted otherwise */
    return HA_OK;
}

ha_status lm_tokenizer_parse(const lm_file_bytes *vocab, const lm_file_bytes *merges, const lm_file_bytes *config,
                            lm_tokenizer **out)
{
    lm_clear_error();
    if (!out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_tokenizer_parse: out is NULL");
    *out = NULL;
    if (!vocab || !vocab->name || !vocab->data || !merges || !merges->name || !merges->data ||
        (config && config->data && !config->name))
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_tokenizer_parse: a file (or its name) is NULL");
    lm_tokenizer *t = calloc(1, sizeof(*t));
    if (!t)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenizer_parse: out of memory");
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[324];
    byte_symbols(cp_of_byte);
    memset(byte_of_cp, 0xff, sizeof(byte_of_cp));
    for (int b = 0; b < 256; b++)
        byte_of_cp[cp_of_byte[b]] = (int16_t)b;

    ha_status st = load_vocab(t, vocab, byte_of_cp);
    if (st == HA_OK)
        st = load_merges(t, merges, byte_of_cp);
    if (st == HA_OK)
        st = load_special(t, config);
    if (st == HA_OK)
        st = compile_pattern(t);
    if (st != HA_OK) {
        lm_tokenizer_free(t);
        return st;
    }
    *out = t;
    return HA_OK;
}

/* Reads dir/name into *file (file->data NULL when it cannot be read; free() it). */
static void read_file_in(const char *dir, const char *name, char *path, size_t path_size, lm_file_bytes *file)
{
    snprintf(path, path_size, "%s/%s", dir, name);
    file->name = path;
    file->data = read_text_file(path, &file->len);
}

ha_status lm_tokenizer_load(const char *dir, lm_tokenizer **out)
{
    lm_clear_error();
    if (!out)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_tokenizer_load: out is NULL");
    *out = NULL;
    if (!dir)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_tokenizer_load: dir is NULL");
    size_t n = strlen(dir) + 32;
    char *paths = malloc(3 * n);
    if (!paths)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenizer_load: out of memory");
    lm_file_bytes files[3] = {{0}};
    static const char *const names[3] = {"vocab.json", "merges.txt", "tokenizer_config.json"};
    for (int i = 0; i < 3; i++)
        read_file_in(dir, names[i], paths + (size_t)i * n, n, &files[i]);
    ha_status st = HA_OK;
    for (int i = 0; i < 2 && st == HA_OK; i++) /* tokenizer_config.json is optional */
        if (!files[i].data)
            st = lm_fail(HA_ERR_IO, "%s: cannot read", files[i].name);
    if (st == HA_OK)
        st = lm_tokenizer_parse(&files[0], &files[1], &files[2], out);
    for (int i = 0; i < 3; i++)
        free((char *)files[i].data);
    free(paths);
    return st;
}

void lm_tokenizer_free(lm_tokenizer *t)
{
    if (!t)
        return;
    pcre2_code_free(t->re);
    free(t->bytes);
    free(t->offset);
    free(t->vocab_slots);
    free(t->merges);
    free(t);
}

int32_t lm_tokenizer_vocab_size(const lm_tokenizer *t)
{
    return t ? t->vocab_size : 0;
}

const char *lm_token_bytes(const lm_tokenizer *t, int32_t id, size_t *len)
{
    if (!t || id < 0 || id >= t->vocab_size)
        return NULL;
    size_t n;
    const char *p = token_ptr(t, id, &n);
    if (len)
        *len = n;
    return p;
}

/* ---- encoding --------------------------------------------------------------------------------- */

typedef struct candidate {
    int32_t rank;
    int32_t pos; /**< left symbol of the pair */
} candidate;

/** Scratch of one encode call, grown as needed. */
typedef struct encoder {
    const lm_tokenizer *t;
    int32_t *ids; /**< output */
    int64_t n_ids, cap_ids;
    int32_t *sym, *prev, *next; /**< one piece's symbols as a linked list; sym -1 = merged away */
    candidate *heap;
    size_t cap_piece, n_heap;
} encoder;

static int push_id(encoder *e, int32_t id)
{
    if (e->n_ids == e->cap_ids) {
        int64_t cap = e->cap_ids ? 2 * e->cap_ids : 256;
        int32_t *grown = realloc(e->ids, (size_t)cap * sizeof(int32_t));
        if (!grown)
            return 0;
        e->ids = grown;
        e->cap_ids = cap;
    }
    e->ids[e->n_ids++] = id;
    return 1;
}

static int before(candidate a, candidate b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(encoder *e, int32_t left)
{
    int32_t right = e->next[left];
    if (right < 0)
        return;
    const merge_entry *m = merge_find(e->t, e->sym[left], e->sym[right]);
    if (!m)
        return;
    candidate c = {m->rank, left};
    size_t i = e->n_heap++;
    while (i > 0 && before(c, e->heap[(i - 1) / 2])) {
        e->heap[i] = e->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    e->heap[i] = c;
}

static candidate heap_pop(encoder *e)
{
    candidate top = e->heap[0], last = e->heap[--e->n_heap];
    size_t i = 0, n = e->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(e->heap[c + 1], e->heap[c]))
            c++;
        if (!before(e->heap[c], last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0)
        e->heap[i] = last;
    return top;
}

static int reserve_piece(encoder *e, size_t n)
{
    if (n <= e->cap_piece)
        return 1;
    size_t cap = n > 2 * e->cap_piece ? n : 2 * e->cap_piece;
    int32_t *sym = realloc(e->sym, cap * sizeof(int32_t));
    if (sym)
        e->sym = sym;
    int32_t *prev = realloc(e->prev, cap * sizeof(int32_t));
    if (prev)
        e->prev = prev;
    int32_t *next = realloc(e->next, cap * sizeof(int32_t));
    if (next)
        e->next = next;
    /* each merge pushes at most two candidates after the n-1 initial ones */
    candidate *heap = realloc(e->heap, 3 * cap * sizeof(candidate));
    if (heap)
        e->heap = heap;
    if (!sym || !prev || !next || !heap)
        return 0;
    e->cap_piece = cap;
    return 1;
}

/* BPE of one pre-tokenized piece. */
static int encode_piece(encoder *e, const unsigned char *p, size_t n)
{
    if (n == 1)
        return push_id(e, e->t->byte_id[p[0]]);
    if (n > INT32_MAX / 4 || !reserve_piece(e, n))
        return 0;
    for (size_t i = 0; i < n; i++) {
        e->sym[i] = e->t->byte_id[p[i]];
        e->prev[i] = (int32_t)i - 1;
        e->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    e->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        heap_push(e, (int32_t)i);
    while (e->n_heap > 0) {
        candidate c = heap_pop(e);
        int32_t left = c.pos, right = e->next[left];
        if (e->sym[left] < 0 || right < 0)
            continue;
        const merge_entry *m = merge_find(e->t, e->sym[left], e->sym[right]);
        if (!m || m->rank != c.rank)
            continue; /* a stale candidate: one of its symbols has merged since */
        e->sym[left] = m->merged;
        e->sym[right] = -1;
        e->next[left] = e->next[right];
        if (e->next[left] >= 0)
            e->prev[e->next[left]] = left;
        if (e->prev[left] >= 0)
            heap_push(e, e->prev[left]);
        heap_push(e, left);
    }
    for (int32_t i = 0; i >= 0; i = e->next[i]) /* symbol 0 is never merged away (merges keep the left) */
        if (!push_id(e, e->sym[i]))
            return 0;
    return 1;
}

/* Pre-tokenizes s[0..n) (no special tokens in it) and encodes every piece. Bytes that are not valid
 * UTF-8 are skipped by the regex (PCRE2_MATCH_INVALID_UTF); they become pieces of their own. */
static ha_status encode_stretch(encoder *e, const char *s, size_t n, pcre2_match_data *md)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t off = 0;
    while (off < n) {
        int rc = pcre2_match(e->t->re, (PCRE2_SPTR)s, n, off, 0, md, NULL);
        size_t start = n, end = n;
        if (rc >= 0) {
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            start = ov[0];
            end = ov[1] > ov[0] ? ov[1] : ov[0] + 1; /* no alternative matches empty; never loop */
        } else if (rc != PCRE2_ERROR_NOMATCH) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof(msg));
            return lm_fail(HA_ERR_BACKEND, "lm_tokenize: regex match failed: %s", (const char *)msg);
        }
        if (start > off && !encode_piece(e, u + off, start - off))
            return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenize: out of memory");
        if (end > start && !encode_piece(e, u + start, end - start))
            return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenize: out of memory");
        off = end;
    }
    return HA_OK;
}

/* The earliest (then longest) special token in s[0..n): its id and start, or -1. */
static int32_t find_special(const lm_tokenizer *t, const char *s, size_t n, size_t *at, size_t *len)
{
    int32_t best = -1;
    for (int32_t i = 0; i < t->n_special; i++) {
        size_t l;
        const char *p = token_ptr(t, t->special[i], &l);
        const char *hit = memmem(s, n, p, l);
        if (!hit)
            continue;
        size_t pos = (size_t)(hit - s);
        if (best < 0 || pos < *at || (pos == *at && l > *len)) {
            best = t->special[i];
            *at = pos;
            *len = l;
        }
    }
    return best;
}

ha_status lm_tokenize(const lm_tokenizer *t, const char *text, size_t len, int32_t **ids, int64_t *n)
{
    lm_clear_error();
    if (!t || (!text && len > 0) || !ids || !n)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_tokenize: %s is NULL",
                       !t ? "tok" : !ids ? "ids" : !n ? "n" : "text");
    *ids = NULL;
    *n = 0;
    encoder e = {.t = t};
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!md)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenize: out of memory");
    ha_status st = HA_OK;
    size_t off = 0;
    while (off < len && st == HA_OK) {
        size_t at = 0, slen = 0;
        int32_t special = find_special(t, text + off, len - off, &at, &slen);
        size_t stretch = special >= 0 ? at : len - off;
        st = encode_stretch(&e, text + off, stretch, md);
        if (st == HA_OK && special >= 0 && !push_id(&e, special))
            st = lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_tokenize: out of memory");
        off += stretch + (special >= 0 ? slen : 0);
    }
    pcre2_match_data_free(md);
    free(e.sym);
    free(e.prev);
    free(e.next);
    free(e.heap);
    if (st != HA_OK) {
        free(e.ids);
        return st;
    }
    *ids = e.ids;
    *n = e.n_ids;
    return HA_OK;
}

/* ---- decoding --------------------------------------------------------------------------------- */

ha_status lm_detokenize(const lm_tokenizer *t, const int32_t *ids, int64_t n, char **text, size_t *len)
{
    lm_clear_error();
    if (!t || (!ids && n > 0) || !text || !len || n < 0)
        return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_detokenize: %s", n < 0 ? "n < 0" : "a pointer is NULL");
    *text = NULL;
    *len = 0;
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return lm_fail(HA_ERR_INVALID_ARGUMENT, "lm_detokenize: ids[%lld] = %d is outside [0, %d)", (long long)i,
                           ids[i], t->vocab_size);
        total += t->offset[ids[i] + 1] - t->offset[ids[i]];
    }
    char *out = malloc(total + 1);
    if (!out)
        return lm_fail(HA_ERR_OUT_OF_MEMORY, "lm_detokenize: out of memory");
    size_t at = 0;
    for (int64_t i = 0; i < n; i++) {
        size_t l;
        const char *p = token_ptr(t, ids[i], &l);
        memcpy(out + at, p, l);
        at += l;
    }
    out[at] = '\0';
    *text = out;
    *len = at;
    return HA_OK;
}
