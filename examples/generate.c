/*
 * generate.c — text generation with the tiny LM (models/tinylm-25m), HashAttention in every decode
 * step of the layers the mapping weights mark sparse, next to the same model with dense attention.
 *
 *   generate [--model DIR] [--weights FILE] [--prompt TEXT | --prompt-file FILE] [--tokens N]
 *            [--backend NAME|PATH] [--budget 1/32]
 *
 * Two sessions run side by side on the same prompt (prefill is dense in both). Greedy decoding: the
 * sparse session feeds itself its own tokens, and the dense session is fed the *same* tokens
 * (teacher forcing), so at every step both see the same prefix and "agreement" is the share of steps
 * where the sparse session's next token equals the one dense attention would have chosen. The text
 * is the sparse session's, streamed as it is generated.
 *
 * Exit status: 0 on success, 1 on an error (the message names the failed call), 2 on bad usage.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#endif

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hashattn.h"
#include "lm.h"

/* Set by examples/meson.build: the repository's model folder, its trained mapping weights (used
 * when present) and SimHash weights made at build time (the fallback), and the default prompt. */
#ifndef GENERATE_DEFAULT_MODEL
#define GENERATE_DEFAULT_MODEL "models/tinylm-25m"
#endif
#ifndef GENERATE_TRAINED_WEIGHTS
#define GENERATE_TRAINED_WEIGHTS "models/tinylm-25m/hashattn_paper32.safetensors"
#endif
#ifndef GENERATE_SIMHASH_WEIGHTS
#define GENERATE_SIMHASH_WEIGHTS "generate_simhash32.safetensors"
#endif
#ifndef GENERATE_DEFAULT_PROMPT_FILE
#define GENERATE_DEFAULT_PROMPT_FILE "models/tinylm-25m/prompt.txt"
#endif

#define EXIT_USAGE 2
#define PROMPT_TAIL_BYTES 240 /* of the prompt, shown before the generated text */

/* ---- errors ----------------------------------------------------------------------------------- */

static void check_ha(ha_status status, const char *call)
{
    if (status == HA_OK)
        return;
    fprintf(stderr, "generate: %s failed: %s: %s\n", call, ha_status_string(status), ha_last_error());
    exit(1);
}

static void check_lm(ha_status status, const char *call)
{
    if (status == HA_OK)
        return;
    fprintf(stderr, "generate: %s failed: %s: %s\n", call, ha_status_string(status), lm_last_error());
    exit(1);
}
#define CHECK_HA(call) check_ha((call), #call)
#define CHECK_LM(call) check_lm((call), #call)

static void *xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "generate: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

/* ---- options ---------------------------------------------------------------------------------- */

typedef struct options {
    const char *model;
    const char *weights; /* NULL: the trained weights when present, else the build's SimHash ones */
    const char *prompt;  /* NULL: read prompt_file */
    const char *prompt_file;
    int64_t tokens;
    const char *backend;
    double heavy_fraction; /* > 0: heavy = floor(fraction · n); else heavy_count */
    int64_t heavy_count;
} options;

static void usage(FILE *to)
{
    fprintf(to,
            "usage: generate [--model DIR] [--weights FILE] [--prompt TEXT | --prompt-file FILE]\n"
            "                [--tokens N] [--backend NAME|PATH] [--budget B]\n"
            "  --model        model folder (default %s)\n"
            "  --weights      mapping weights (default: %s if it exists,\n"
            "                 else untrained 32-bit SimHash weights made at build time)\n"
            "  --prompt       prompt text; --prompt-file reads it from a file (default %s)\n"
            "  --tokens       new tokens to generate (default 128)\n"
            "  --backend      hashattn plugin name or path (default: $HASHATTN_BACKEND, else the best)\n"
            "  --budget       heavy tokens: a fraction 1/K or 0.x of the length, or a count (default 1/32);\n"
            "                 128 sink and 128 local tokens are always kept\n",
            GENERATE_DEFAULT_MODEL, GENERATE_TRAINED_WEIGHTS, GENERATE_DEFAULT_PROMPT_FILE);
}

static void usage_error(const char *fmt, const char *what)
{
    fprintf(stderr, "generate: ");
    fprintf(stderr, fmt, what);
    fprintf(stderr, "\n");
    usage(stderr);
    exit(EXIT_USAGE);
}

/* "1/32", "0.03125" (a fraction of the length) or "512" (a count of heavy tokens). */
static void parse_budget(const char *text, options *o)
{
    char *end;
    errno = 0;
    if (!strncmp(text, "1/", 2)) {
        long long k = strtoll(text + 2, &end, 10);
        if (text[2] && !*end && !errno && k >= 1) {
            o->heavy_fraction = 1.0 / (double)k;
            return;
        }
    } else if (strchr(text, '.')) {
        double f = strtod(text, &end);
        if (!*end && !errno && f > 0.0 && f <= 1.0) {
            o->heavy_fraction = f;
            return;
        }
    } else {
        long long n = strtoll(text, &end, 10);
        if (*text && !*end && !errno && n >= 0) {
            o->heavy_fraction = 0.0;
            o->heavy_count = n;
            return;
        }
    }
    usage_error("--budget wants 1/K, a fraction in (0, 1] or a token count, got '%s'", text);
}

static options parse_options(int argc, char **argv)
{
    options o = {GENERATE_DEFAULT_MODEL, NULL, NULL, GENERATE_DEFAULT_PROMPT_FILE, 128, NULL, 1.0 / 32.0, 0};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (i + 1 >= argc)
            usage_error("%s wants a value", flag);
        const char *value = argv[++i];
        if (!strcmp(flag, "--model")) {
            o.model = value;
        } else if (!strcmp(flag, "--weights")) {
            o.weights = value;
        } else if (!strcmp(flag, "--prompt")) {
            o.prompt = value;
        } else if (!strcmp(flag, "--prompt-file")) {
            o.prompt_file = value;
            o.prompt = NULL;
        } else if (!strcmp(flag, "--tokens")) {
            char *end;
            errno = 0;
            long long n = strtoll(value, &end, 10);
            if (!*value || *end || errno || n < 1 || n > 1000000)
                usage_error("--tokens wants an integer in [1, 1000000], got '%s'", value);
            o.tokens = n;
        } else if (!strcmp(flag, "--backend")) {
            o.backend = value;
        } else if (!strcmp(flag, "--budget")) {
            parse_budget(value, &o);
        } else {
            usage_error("unknown option '%s'", flag);
        }
    }
    return o;
}

/* ---- helpers ---------------------------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int file_exists(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f)
        fclose(f);
    return f != NULL;
}

/* The whole file, NUL-terminated; *len excludes the NUL. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "generate: cannot open the prompt file %s: %s\n", path, strerror(errno));
        exit(1);
    }
    size_t cap = 1 << 16, n = 0;
    char *text = xmalloc(cap);
    size_t got;
    while ((got = fread(text + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *bigger = realloc(text, cap *= 2);
            if (!bigger) {
                fprintf(stderr, "generate: out of host memory reading %s\n", path);
                exit(1);
            }
            text = bigger;
        }
    }
    int failed = ferror(f);
    fclose(f);
    if (failed) {
        fprintf(stderr, "generate: error reading %s\n", path);
        exit(1);
    }
    text[n] = '\0';
    *len = n;
    return text;
}

static int32_t argmax(const float *v, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

static void print_token(const lm_tokenizer *tok, int32_t id)
{
    size_t len;
    const char *bytes = lm_token_bytes(tok, id, &len);
    if (bytes)
        fwrite(bytes, 1, len, stdout);
    fflush(stdout);
}

static void describe_budget(const options *o, char *buf, size_t size)
{
    if (o->heavy_fraction > 0.0)
        snprintf(buf, size, "heavy %g of the length (1/%.4g)", o->heavy_fraction, 1.0 / o->heavy_fraction);
    else
        snprintf(buf, size, "heavy %lld tokens", (long long)o->heavy_count);
}

/* ---- the program ------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    options o = parse_options(argc, argv);
    const char *weights_path = o.weights;
    const char *weights_note = "";
    if (!weights_path) {
        if (file_exists(GENERATE_TRAINED_WEIGHTS)) {
            weights_path = GENERATE_TRAINED_WEIGHTS;
            weights_note = " (trained)";
        } else {
            weights_path = GENERATE_SIMHASH_WEIGHTS;
            weights_note = " (untrained 32-bit SimHash: trained weights not found)";
        }
    }

    lm_model *model;
    double t0 = now_s();
    CHECK_LM(lm_model_load(o.model, &model));
    const lm_config *cfg = lm_model_config(model);
    const lm_tokenizer *tok = lm_model_tokenizer(model);
    printf("model    %s: %d layers, %d query heads, %d KV heads, head_dim %d, vocab %d (loaded in %.2f s)\n",
           o.model, cfg->num_layers, cfg->num_q_heads, cfg->num_kv_heads, cfg->head_dim, cfg->vocab_size,
           now_s() - t0);

    ha_runtime_options ro = {sizeof ro, o.backend, 0};
    ha_runtime *rt;
    CHECK_HA(ha_runtime_open(&ro, &rt));
    ha_weights *weights;
    CHECK_HA(ha_weights_load(rt, weights_path, &weights));
    ha_weights_info info;
    CHECK_HA(ha_weights_get_info(weights, &info));
    char sparse_layers[256] = "";
    for (int32_t l = 0, used = 0; l < info.num_layers && used < (int)sizeof sparse_layers - 8; l++)
        if (ha_weights_layer_is_dense(weights, l) == 0)
            used += snprintf(sparse_layers + used, sizeof sparse_layers - (size_t)used, "%s%d", used ? "," : "", l);
    printf("weights  %s%s\n         %s mode, %d-bit codes, MLP depth %d; sparse layers %s\n", weights_path, weights_note,
           info.mode == HA_MODE_GROUP ? "group" : "paper", info.bits, info.mlp_depth,
           sparse_layers[0] ? sparse_layers : "none");
    printf("backend  %s: %s\n", ha_runtime_backend_name(rt), ha_runtime_backend_description(rt));

    /* Prompt: BOS, then the text; keep its end if prompt + new tokens exceed the model's context. */
    size_t text_len = o.prompt ? strlen(o.prompt) : 0;
    char *text = o.prompt ? strdup(o.prompt) : read_file(o.prompt_file, &text_len);
    if (!text) {
        fprintf(stderr, "generate: out of host memory\n");
        return 1;
    }
    int32_t *text_ids;
    int64_t text_n;
    CHECK_LM(lm_tokenize(tok, text, text_len, &text_ids, &text_n));
    const int64_t room = cfg->max_positions - o.tokens - 1;
    if (room < 1) {
        fprintf(stderr, "generate: --tokens %lld leaves no room for a prompt in %d positions\n", (long long)o.tokens,
                cfg->max_positions);
        return EXIT_USAGE;
    }
    int64_t skip = text_n > room ? text_n - room : 0;
    int64_t prompt_n = (text_n - skip) + (cfg->bos_id >= 0 ? 1 : 0);
    int32_t *prompt = xmalloc((size_t)(prompt_n > 0 ? prompt_n : 1) * sizeof *prompt);
    if (cfg->bos_id >= 0)
        prompt[0] = cfg->bos_id;
    memcpy(prompt + (cfg->bos_id >= 0 ? 1 : 0), text_ids + skip, (size_t)(text_n - skip) * sizeof *prompt);
    if (prompt_n < 1) {
        fprintf(stderr, "generate: the prompt is empty and the model has no BOS token\n");
        return EXIT_USAGE;
    }

    /* Two sessions on one runtime: dense decode, and HashAttention in the weights' sparse layers. */
    ha_plan_config budget;
    ha_plan_config_init(&budget, 1, prompt_n + o.tokens, cfg->num_q_heads, cfg->num_kv_heads, cfg->head_dim);
    budget.sink = 128;
    budget.local = 128;
    budget.heavy_fraction = o.heavy_fraction;
    budget.heavy_count = o.heavy_count;
    lm_session_config dense_cfg, sparse_cfg;
    lm_session_config_init(&dense_cfg, prompt_n + o.tokens);
    dense_cfg.rt = rt;
    sparse_cfg = dense_cfg;
    sparse_cfg.hash_weights = weights;
    sparse_cfg.plan = &budget;
    lm_session *dense, *sparse;
    CHECK_LM(lm_session_create(model, &dense_cfg, &dense));
    CHECK_LM(lm_session_create(model, &sparse_cfg, &sparse));

    char budget_text[96];
    describe_budget(&o, budget_text, sizeof budget_text);
    int64_t final_len = prompt_n + o.tokens - 1;
    printf("budget   sink 128 + local 128 + %s: at %lld tokens %lld are attended to (%.1f%%)\n", budget_text,
           (long long)final_len, (long long)ha_plan_kept_for_length(lm_session_plan(sparse), final_len),
           100.0 * (double)ha_plan_kept_for_length(lm_session_plan(sparse), final_len) / (double)final_len);

    const int32_t V = cfg->vocab_size;
    float *dense_logits = xmalloc((size_t)V * sizeof(float));
    float *sparse_logits = xmalloc((size_t)V * sizeof(float));

    /* Prefill is dense attention in both sessions (the sparse one also encodes the prompt's key codes). */
    t0 = now_s();
    CHECK_LM(lm_prefill(dense, prompt, prompt_n, LM_LOGITS_LAST, dense_logits));
    double dense_prefill_s = now_s() - t0;
    t0 = now_s();
    CHECK_LM(lm_prefill(sparse, prompt, prompt_n, LM_LOGITS_LAST, sparse_logits));
    double sparse_prefill_s = now_s() - t0;
    printf("prompt   %lld tokens%s%s; prefill %.2f s (dense session), %.2f s (sparse session, + key codes)\n",
           (long long)prompt_n, o.prompt ? "" : " from ", o.prompt ? "" : o.prompt_file, dense_prefill_s,
           sparse_prefill_s);
    if (skip)
        printf("         (its first %lld tokens were dropped to fit %d positions)\n", (long long)skip,
               cfg->max_positions);

    size_t shown = text_len > PROMPT_TAIL_BYTES ? PROMPT_TAIL_BYTES : text_len;
    printf("\n%s%.*s", text_len > shown ? "..." : "", (int)shown, text + text_len - shown);
    const int bold = isatty(fileno(stdout)); /* the generated text in bold on a terminal */
    if (bold)
        printf("\033[1m");

    int32_t next = argmax(sparse_logits, V);
    int64_t generated = 0, steps = 0, agreed = 0;
    double dense_s = 0.0, sparse_s = 0.0;
    while (generated < o.tokens) {
        print_token(tok, next);
        generated++;
        if (next == cfg->eos_id || generated == o.tokens)
            break;
        t0 = now_s();
        CHECK_LM(lm_decode_step(sparse, next, sparse_logits));
        double t1 = now_s();
        CHECK_LM(lm_decode_step(dense, next, dense_logits)); /* teacher-forced on the sparse tokens */
        double t2 = now_s();
        sparse_s += t1 - t0;
        dense_s += t2 - t1;
        int32_t sparse_next = argmax(sparse_logits, V), dense_next = argmax(dense_logits, V);
        steps++;
        agreed += sparse_next == dense_next;
        next = sparse_next;
    }
    printf("%s\n\n", bold ? "\033[0m" : "");

    printf("generated %lld tokens; %lld decode steps at %lld..%lld tokens of context\n", (long long)generated,
           (long long)steps, (long long)prompt_n + 1, (long long)(prompt_n + steps));
    if (steps > 0) {
        printf("speed    sparse %.1f tokens/s (%.2f ms/token), dense %.1f tokens/s (%.2f ms/token)\n",
               (double)steps / sparse_s, 1e3 * sparse_s / (double)steps, (double)steps / dense_s,
               1e3 * dense_s / (double)steps);
        printf("agree    %lld of %lld steps (%.1f%%): the sparse next token equals dense attention's\n",
               (long long)agreed, (long long)steps, 100.0 * (double)agreed / (double)steps);
    }

    free(dense_logits);
    free(sparse_logits);
    free(prompt);
    free(text_ids);
    free(text);
    lm_session_free(dense);
    lm_session_free(sparse);
    ha_weights_free(weights);
    ha_runtime_close(rt);
    lm_model_free(model);
    return 0;
}
