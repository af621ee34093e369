/*
 * test_expect.h — checking failures of public calls (shared by the bad-input, misuse and fault
 * tests): the status is one of those accepted, ha_last_error() is not empty and names the offending
 * argument as a word. Every checked failure is tallied per entry point, so a test can print how many
 * misuse cases each public function met.
 */
#ifndef HA_TEST_EXPECT_H
#define HA_TEST_EXPECT_H

#include <stddef.h>
#include <stdint.h>

#include "hashattn.h"

/** 1 if msg contains word delimited by characters that cannot be part of an identifier. */
int tx_mentions(const char *msg, const char *word);

/** Fails the running cmocka test unless got is in the accepted bit mask and the message names word
 *  (word NULL: any non-empty message). call is the call's text: its leading name is tallied. */
void tx_expect_failure(ha_status got, unsigned accepted, const char *word, const char *call, int line);
/** For calls without a status (destroy, getters): ha_last_error() must be non-empty and name word. */
void tx_expect_error_message(const char *word, const char *call, int line);

#define BIT(s) (1u << (s))
/** call must fail with status (one of a bit mask for EXPECT_FAIL_ANY) and a message naming word. */
#define EXPECT_FAIL(call, status, word) tx_expect_failure((call), BIT(status), (word), #call, __LINE__)
#define EXPECT_FAIL_ANY(call, mask, word) tx_expect_failure((call), (mask), (word), #call, __LINE__)
/** A call without a status must report the problem through ha_last_error(). */
#define EXPECT_ERROR_MESSAGE(call, word)                                                                      \
    do {                                                                                                      \
        call;                                                                                                 \
        tx_expect_error_message((word), #call, __LINE__);                                                     \
    } while (0)
#define EXPECT_OK(call)                                                                                       \
    do {                                                                                                      \
        ha_status st_ = (call);                                                                               \
        if (st_ != HA_OK)                                                                                     \
            fail_msg("line %d: %s -> %s: %s", __LINE__, #call, ha_status_string(st_), ha_last_error());       \
    } while (0)

/** Prints the tally of checked failures per entry point (name, count) and their total; returns it. */
int tx_print_tally(const char *title);

/** Writes a small valid weights file (fp32) and returns its bytes (malloc'd). Layers whose bit is set
 *  in dense_mask are dense; the others have random non-zero MLPs drawn from seed. */
unsigned char *tx_weights_image(int32_t layers, uint32_t dense_mask, int32_t bits, int32_t depth, int32_t hidden,
                                int32_t head_dim, int32_t q_heads, int32_t k_heads, uint64_t seed, size_t *size);
/* ---- fixtures of the failure tests ------------------------------------------------------------ */

#include "test_util.h"

/** The output buffers of the stages in backend memory, to check that failed calls leave them alone. */
typedef struct tx_outputs {
    ha_runtime *rt;
    tu_tensor3 out;   /**< [batch, heads, dim] f32                      */
    float *lse;       /**< [batch * heads]                              */
    uint32_t *codes;  /**< [batch * heads] (one 32-bit word per code)   */
    int32_t *indices; /**< [batch * heads * max_kept]                   */
    int32_t *counts;  /**< [batch * heads]                              */
    size_t row_bytes, index_bytes;
} tx_outputs;

void tx_outputs_create(tx_outputs *o, ha_runtime *rt, tu_rng *r, int32_t batch, int32_t heads, int32_t dim,
                       int64_t max_kept, int padded);
void tx_outputs_destroy(tx_outputs *o);
/** Fills every output buffer with TU_POISON. */
void tx_outputs_poison(const tx_outputs *o);
/** Fails the test (naming line) if a byte of any output buffer is no longer TU_POISON. */
void tx_outputs_expect_untouched(const tx_outputs *o, int line);
/** The buffers of a failure test's stage calls, in backend memory, all f32: queries (random, never
 *  zero), a contiguous padded KV and a paged KV (both random), the outputs, and the lengths. */
typedef struct tx_buffers {
    ha_runtime *rt;
    tu_tensor3 q;
    tu_kv kv, kv_paged;
    tx_outputs o;
    int32_t *lens; /**< [batch] */
} tx_buffers;

/** padded: q and out get gaps between rows. */
void tx_buffers_create(tx_buffers *b, ha_runtime *rt, tu_rng *r, int32_t batch, int32_t q_heads, int32_t kv_heads,
                       int32_t dim, int64_t tokens, int32_t page_size, int64_t max_kept, int padded);
void tx_buffers_destroy(tx_buffers *b);

/** Writes data to path (fails the test on error). */
void tx_write_file(const char *path, const void *data, size_t size);

#endif /* HA_TEST_EXPECT_H */
