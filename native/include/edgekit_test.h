/* libedgekit's test-only entry points: exported from the shared library so that tests (tests/test_native_text.py,
 * native/tests/test_text.c) can drive the tokenizer, the chat templates and the UTF-8 streamer without a GGUF.
 * NOT part of the stable API: no ABI promise, may change with any release. Apps use edgekit.h only.
 * native/edgekit.map lists every exported name; tests/test_native_runtime.py checks each one is declared in
 * a header of native/include. */
#ifndef EDGEKIT_TEST_H
#define EDGEKIT_TEST_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Test only: a vocabulary from a GGUF's tokenizer.* arrays, without a model ---- */

/* Everything is copied: the arrays may be freed (or unmapped) after ek_vocab_new returns. */
typedef struct ek_vocab_params {
    int32_t n_tokens;
    const char *const *tokens;     /* tokenizer.ggml.tokens (UTF-8, not NUL-terminated) */
    const uint32_t *token_lens;
    const float *scores;           /* tokenizer.ggml.scores, NULL if absent (BPE) */
    const int32_t *types;          /* tokenizer.ggml.token_type, NULL: all normal */
    int32_t n_merges;
    const char *const *merges;     /* tokenizer.ggml.merges, "left right" */
    const uint32_t *merge_lens;
    const char *model;             /* tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece) */
    const char *pre;               /* tokenizer.ggml.pre, NULL if absent */
    const char *name;              /* general.name: llama.cpp applies a few rules by model name (Phi-3) */
    const char *chat_template;     /* tokenizer.chat_template, NULL if absent */
    int32_t bos, eos, eot, unk;    /* special ids, -1 if absent */
    int32_t add_bos, add_eos;      /* tokenizer.ggml.add_bos_token / add_eos_token: 0, 1, or -1 if absent */
    int32_t add_space_prefix;      /* tokenizer.ggml.add_space_prefix: 0, 1, or -1 if absent (SPM default 1) */
} ek_vocab_params;

typedef struct ek_vocab ek_vocab;

/* Check and index a vocabulary: EK_ERR_FORMAT for inconsistent arrays or ids (the message names the
 * problem), EK_ERR_UNSUPPORTED for a tokenizer model or pre-tokenizer this runtime does not have. */
ek_status ek_vocab_new(const ek_vocab_params *params, ek_vocab **out);
void ek_vocab_free(ek_vocab *vocab);

/* The model-free forms of ek_tokenize, ek_token_to_piece, ek_token_is_special, ek_chat_format. */
ek_status ek_vocab_tokenize(const ek_vocab *vocab, const char *text, size_t len, int add_special,
                            int parse_special, int32_t *out, int32_t cap, int32_t *n_out);
ek_status ek_vocab_token_to_piece(const ek_vocab *vocab, int32_t token, int special, char *buf, int32_t cap,
                                  int32_t *n_out);
int ek_vocab_is_special(const ek_vocab *vocab, int32_t token);
/* Whether generation ends at this token (eos, eot and the end-of-turn markers llama.cpp knows by text). */
int ek_vocab_is_eog(const ek_vocab *vocab, int32_t token);
ek_status ek_vocab_chat_format(const ek_vocab *vocab, const ek_message *messages, size_t n,
                               int add_generation_prompt, char *buf, size_t cap, size_t *n_out);

/* ---- Test only: UTF-8 streaming ---- */

/* Streaming text out as valid UTF-8: copies s[0..n) to out (room for 3 * n bytes), each ill-formed part
 * replaced by U+FFFD as Python's bytes.decode(errors="replace") does (one per maximal subpart). A character
 * cut off at the end is held back (not consumed) unless flush. Sets *out_n; returns the bytes consumed. */
size_t ek_utf8_sanitize(const char *s, size_t n, int flush, char *out, size_t *out_n);

#ifdef __cplusplus
}
#endif

#endif
