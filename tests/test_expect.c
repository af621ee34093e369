/*
 * test_expect.c — see test_expect.h.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test_expect.h"
#include "test_util.h"
#include "weights_host.h"

int tx_mentions(const char *msg, const char *word)
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

/* ---- the tally ------------------------------------------------------------------------------ */

#define TALLY_MAX 64

static struct {
    char name[48];
    int count;
} tally[TALLY_MAX];
static int tally_used;

/** Counts one checked failure of the entry point named at the start of call ("ha_match(...)"). */
static void count_call(const char *call)
{
    const char *entry = strstr(call, "ha_"); /* past an assignment such as "x = ha_f(...)" */
    call = entry ? entry : call;
    char name[48];
    size_t n = 0;
    while (call[n] && (isalnum((unsigned char)call[n]) || call[n] == '_') && n + 1 < sizeof name) {
        name[n] = call[n];
        n++;
    }
    name[n] = '\0';
    for (int i = 0; i < tally_used; i++) {
        if (!strcmp(tally[i].name, name)) {
            tally[i].count++;
            return;
        }
    }
    if (tally_used < TALLY_MAX) {
        snprintf(tally[tally_used].name, sizeof tally[tally_used].name, "%s", name);
        tally[tally_used++].count = 1;
    }
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const char *)a), ((const char *)b));
}

int tx_print_tally(const char *title)
{
    qsort(tally, (size_t)tally_used, sizeof tally[0], by_name);
    int total = 0;
    printf("%s: checked failures per entry point\n", title);
    for (int i = 0; i < tally_used; i++) {
        printf("  %-32s %5d\n", tally[i].name, tally[i].count);
        total += tally[i].count;
    }
    printf("  %-32s %5d (%d entry points)\n", "total", total, tally_used);
    return total;
}

/* ---- checks ----------------------------------------------------------------------------------- */

void tx_expect_failure(ha_status got, unsigned accepted, const char *word, const char *call, int line)
{
    const char *msg = ha_last_error();
    if ((unsigned)got >= 32 || !((accepted >> got) & 1u))
        fail_msg("line %d: %s returned %s (%d); message: \"%s\"", line, call, ha_status_string(got), (int)got,
                 msg ? msg : "(null)");
    if (!msg || !*msg)
        fail_msg("line %d: %s failed with %s but ha_last_error() is empty", line, call, ha_status_string(got));
    if (word && !tx_mentions(msg, word))
        fail_msg("line %d: %s: the message \"%s\" does not name '%s'", line, call, msg, word);
    count_call(call);
}

void tx_expect_error_message(const char *word, const char *call, int line)
{
    const char *msg = ha_last_error();
    if (!msg || !*msg)
        fail_msg("line %d: %s: ha_last_error() is empty", line, call);
    if (word && !tx_mentions(msg, word))
        fail_msg("line %d: %s: the message \"%s\" does not name '%s'", line, call, msg, word);
    count_call(call);
}

/* ---- weights files ------------------------------------------------------------------------------ */

unsigned char *tx_weights_image(int32_t layers, uint32_t dense_mask, int32_t bits, int32_t depth, int32_t hidden,
                                int32_t head_dim, int32_t q_heads, int32_t k_heads, uint64_t seed, size_t *size)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    uint8_t dense[32] = {0};
    assert_true(layers >= 1 && layers <= 32);
    for (int32_t l = 0; l < layers; l++)
        dense[l] = (dense_mask >> l) & 1u;
    ha_weights_host w;
    assert_int_equal(ha_weights_host_alloc(&w, layers, bits, depth, hidden, head_dim, q_heads, k_heads, dense), HA_OK);
    for (int32_t l = 0; l < layers; l++) {
        for (int side = 0; side < 2 && !dense[l]; side++) {
            const ha_mlp_desc *d = side ? &w.k[l] : &w.q[l];
            for (int32_t i = 0; i < d->depth; i++) {
                int64_t outs = (int64_t)d->heads * d->dims[i + 1];
                for (int64_t j = 0; j < outs * d->dims[i]; j++)
                    ((float *)d->w[i])[j] = tu_rng_nonzero(&r, 0.5f);
                for (int64_t j = 0; j < outs; j++)
                    ((float *)d->b[i])[j] = tu_rng_nonzero(&r, 0.1f);
            }
        }
    }
    char path[] = "/tmp/hashattn-test-weights-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char err[256];
    assert_int_equal(ha_weights_host_write(&w, path, HA_ST_F32, err, sizeof err), HA_OK);
    ha_weights_host_free(&w);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    rewind(f);
    unsigned char *buf = malloc(*size);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, *size, f), *size);
    fclose(f);
    unlink(path);
    return buf;
}

void tx_write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    fclose(f);
}

/* ---- fixtures ------------------------------------------------------------------------------------ */

void tx_outputs_create(tx_outputs *o, ha_runtime *rt, tu_rng *r, int32_t batch, int32_t heads, int32_t dim,
                       int64_t max_kept, int padded)
{
    memset(o, 0, sizeof *o);
    o->rt = rt;
    o->row_bytes = (size_t)batch * (size_t)heads * sizeof(int32_t);
    o->index_bytes = o->row_bytes * (size_t)max_kept;
    tu_tensor3_create(&o->out, rt, r, HA_F32, batch, heads, dim, padded);
    o->lse = tu_dev_alloc(rt, o->row_bytes);
    o->codes = tu_dev_alloc(rt, o->row_bytes);
    o->indices = tu_dev_alloc(rt, o->index_bytes);
    o->counts = tu_dev_alloc(rt, o->row_bytes);
}

void tx_outputs_destroy(tx_outputs *o)
{
    tu_dev_free(o->rt, o->lse);
    tu_dev_free(o->rt, o->codes);
    tu_dev_free(o->rt, o->indices);
    tu_dev_free(o->rt, o->counts);
    tu_tensor3_destroy(&o->out, o->rt);
}

void tx_outputs_poison(const tx_outputs *o)
{
    tu_dev_poison(o->rt, o->out.dev, o->out.bytes);
    tu_dev_poison(o->rt, o->lse, o->row_bytes);
    tu_dev_poison(o->rt, o->codes, o->row_bytes);
    tu_dev_poison(o->rt, o->indices, o->index_bytes);
    tu_dev_poison(o->rt, o->counts, o->row_bytes);
}

static void expect_dev_poisoned(ha_runtime *rt, const void *dev, size_t bytes, const char *what, int line)
{
    unsigned char *host = malloc(bytes);
    assert_non_null(host);
    tu_from_dev(rt, host, dev, bytes);
    int ok = tu_is_poisoned(host, bytes);
    free(host);
    if (!ok)
        fail_msg("line %d: a failed call wrote into %s", line, what);
}

void tx_outputs_expect_untouched(const tx_outputs *o, int line)
{
    expect_dev_poisoned(o->rt, o->out.dev, o->out.bytes, "out", line);
    expect_dev_poisoned(o->rt, o->lse, o->row_bytes, "lse", line);
    expect_dev_poisoned(o->rt, o->codes, o->row_bytes, "codes", line);
    expect_dev_poisoned(o->rt, o->indices, o->index_bytes, "indices", line);
    expect_dev_poisoned(o->rt, o->counts, o->row_bytes, "counts", line);
}

static void kv_fill(tu_kv *kv, ha_runtime *rt, tu_rng *r)
{
    for (int32_t b = 0; b < kv->batch; b++)
        for (int32_t h = 0; h < kv->heads; h++)
            for (int64_t t = 0; t < kv->tokens; t++)
                for (int which = 0; which < 2; which++)
                    tu_fill_row(r, tu_kv_row(kv, which, b, h, t), kv->dtype, kv->dim, 1.0f);
    tu_kv_upload(kv, rt);
}

void tx_buffers_create(tx_buffers *b, ha_runtime *rt, tu_rng *r, int32_t batch, int32_t q_heads, int32_t kv_heads,
                       int32_t dim, int64_t tokens, int32_t page_size, int64_t max_kept, int padded)
{
    memset(b, 0, sizeof *b);
    b->rt = rt;
    tu_kv_create(&b->kv, rt, r, HA_F32, batch, kv_heads, dim, tokens, 0, 1);
    tu_kv_create(&b->kv_paged, rt, r, HA_F32, batch, kv_heads, dim, tokens, page_size, 0);
    kv_fill(&b->kv, rt, r);
    kv_fill(&b->kv_paged, rt, r);
    tu_tensor3_create(&b->q, rt, r, HA_F32, batch, q_heads, dim, padded);
    for (int32_t s = 0; s < batch; s++)
        for (int32_t h = 0; h < q_heads; h++)
            tu_fill_row(r, tu_tensor3_row(&b->q, s, h), HA_F32, dim, 1.0f);
    tu_tensor3_upload(&b->q, rt);
    tx_outputs_create(&b->o, rt, r, batch, q_heads, dim, max_kept, padded);
    b->lens = tu_dev_alloc(rt, (size_t)batch * sizeof(int32_t));
}

void tx_buffers_destroy(tx_buffers *b)
{
    tx_outputs_destroy(&b->o);
    tu_dev_free(b->rt, b->lens);
    tu_tensor3_destroy(&b->q, b->rt);
    tu_kv_destroy(&b->kv, b->rt);
    tu_kv_destroy(&b->kv_paged, b->rt);
}
