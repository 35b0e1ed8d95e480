/* Standalone check of the text side on this CPU (run under qemu for ARM): the sampler's random stream
 * against numpy's (the expected draws below were printed by numpy: int(16 * Generator(PCG64(seed)).random())),
 * and byte-level BPE merges on a vocabulary small enough to work out by hand. */
#include <stdio.h>
#include <string.h>

#include "vocab.h"

static int failures;
#define CHECK(cond, ...)                                                                                       \
    do {                                                                                                       \
        if (!(cond)) {                                                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                                        \
            printf(__VA_ARGS__);                                                                               \
            printf("\n");                                                                                      \
            failures++;                                                                                        \
        }                                                                                                      \
    } while (0)

static void test_stream(void) {
    static const struct {
        uint64_t seed;
        int draws[12];
    } want[] = {
        {0, {10, 4, 0, 0, 13, 14, 9, 11, 8, 14, 13, 0}},
        {42, {12, 7, 13, 11, 1, 15, 12, 12, 2, 7, 5, 14}},
        {4294967301ull, {12, 7, 11, 13, 8, 8, 3, 1, 7, 15, 14, 15}},
        {9223372036854775807ull, {2, 7, 13, 4, 7, 12, 9, 12, 10, 2, 4, 2}},
    };
    float logits[16] = {0}; /* uniform: the draw is floor(16 u), the cumulative sums being exact */
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        ek_sampling p = {.temperature = 1.0f, .seed = want[k].seed};
        ek_sampler *s = NULL;
        CHECK(ek_sampler_new(&p, &s) == EK_OK, "ek_sampler_new: %s", ek_last_error());
        for (int i = 0; i < 12; i++) {
            int32_t t = ek_sampler_sample(s, logits, 16, NULL, 0);
            CHECK(t == want[k].draws[i], "seed %llu draw %d: %d, numpy %d", (unsigned long long)want[k].seed, i, t,
                  want[k].draws[i]);
        }
        ek_sampler_free(s);
    }
}

static void test_bpe(void) {
    /* "hello" and " world" (GPT-2 writes the space as U+0120) built by the merges in rank order */
    const char *tok[] = {"h", "e", "l", "o", "\xc4\xa0", "w", "r", "d", "he", "ll", "hell", "hello", "\xc4\xa0w", "or",
                         "\xc4\xa0wor", "ld", "\xc4\xa0world", "<|endoftext|>"};
    const char *mer[] = {"h e", "l l", "he ll", "hell o", "\xc4\xa0 w", "o r", "\xc4\xa0w or", "l d",
                         "\xc4\xa0wor ld"};
    enum { NT = sizeof tok / sizeof tok[0], NM = sizeof mer / sizeof mer[0] };
    uint32_t tl[NT], ml[NM];
    int32_t types[NT];
    for (int i = 0; i < NT; i++) tl[i] = (uint32_t)strlen(tok[i]), types[i] = EK_TOKEN_NORMAL;
    types[NT - 1] = EK_TOKEN_CONTROL;
    for (int i = 0; i < NM; i++) ml[i] = (uint32_t)strlen(mer[i]);
    ek_vocab_params p = {.n_tokens = NT, .tokens = tok, .token_lens = tl, .types = types, .n_merges = NM,
                         .merges = mer, .merge_lens = ml, .model = "gpt2", .pre = "gpt-2", .bos = -1,
                         .eos = NT - 1, .eot = -1, .unk = -1, .add_bos = 0, .add_eos = 0, .add_space_prefix = -1};
    ek_vocab *v = NULL;
    CHECK(ek_vocab_new(&p, &v) == EK_OK, "ek_vocab_new: %s", ek_last_error());
    if (!v) return;
    const char *text = "hello world<|endoftext|>hell\xff";
    int32_t ids[16], n = 0;
    CHECK(ek_vocab_tokenize(v, text, strlen(text), 1, 1, ids, 16, &n) == EK_OK, "%s", ek_last_error());
    const int32_t want[] = {11, 16, NT - 1, 10}; /* the invalid byte becomes U+FFFD, which no token covers */
    CHECK(n == 4 && memcmp(ids, want, sizeof want) == 0, "tokens: %d ids, first %d %d", n, ids[0], ids[1]);
    char piece[16];
    CHECK(ek_vocab_token_to_piece(v, 16, 0, piece, sizeof piece, &n) == EK_OK && n == 6 && !memcmp(piece, " world", 6),
          "piece of \"\\u0120world\"");
    CHECK(ek_vocab_token_to_piece(v, NT - 1, 0, piece, sizeof piece, &n) == EK_OK && n == 0, "control piece");
    ek_vocab_free(v);
}

int main(void) {
    test_stream();
    test_bpe();
    printf("%s\n", failures ? "test_text: FAILED" : "test_text: ok");
    return failures != 0;
}
