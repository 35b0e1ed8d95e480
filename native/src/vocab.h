/* The vocabulary the text side works from (tokenizer, piece text, chat template), built from the arrays
 * a GGUF holds. The loader (model.c) fills ek_vocab_params from tokenizer.* metadata and keeps the result
 * in its ek_model; tests fill it from Python. Internal, but exported: the ek_vocab_* functions are the
 * text side's test entry points (the public ek_tokenize & co. take an ek_model and call them). */
#ifndef EDGEKIT_VOCAB_H
#define EDGEKIT_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit.h"

enum ek_token_type { /* tokenizer.ggml.token_type values (llama.cpp's) */
    EK_TOKEN_UNDEFINED = 0,
    EK_TOKEN_NORMAL = 1,
    EK_TOKEN_UNKNOWN = 2,
    EK_TOKEN_CONTROL = 3,
    EK_TOKEN_USER_DEFINED = 4,
    EK_TOKEN_UNUSED = 5,
    EK_TOKEN_BYTE = 6,
};

enum ek_vocab_kind { EK_VOCAB_BPE = 1, EK_VOCAB_SPM = 2 };
enum ek_pre { EK_PRE_NONE = 0, EK_PRE_GPT2, EK_PRE_LLAMA3, EK_PRE_QWEN2, EK_PRE_SMOLLM };

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

int32_t ek_vocab_n_tokens(const ek_vocab *vocab);
int32_t ek_vocab_bos(const ek_vocab *vocab);
int32_t ek_vocab_eos(const ek_vocab *vocab);
int32_t ek_vocab_eot(const ek_vocab *vocab);
int ek_vocab_add_bos(const ek_vocab *vocab);
/* SentencePiece with a prefix space: llama.cpp's detokenizer drops the first token's leading space. */
int ek_vocab_add_space_prefix(const ek_vocab *vocab);
/* Whether generation ends at this token (eos, eot and the end-of-turn markers llama.cpp knows by text). */
int ek_vocab_is_eog(const ek_vocab *vocab, int32_t token);
const char *ek_vocab_chat_template(const ek_vocab *vocab); /* NULL if none */
/* A token's stored text (as in the GGUF), NULL for an id out of range. */
const char *ek_vocab_token_text(const ek_vocab *vocab, int32_t token, uint32_t *len);

/* The model-free forms of ek_tokenize, ek_token_to_piece, ek_token_is_special, ek_chat_format. */
ek_status ek_vocab_tokenize(const ek_vocab *vocab, const char *text, size_t len, int add_special,
                            int parse_special, int32_t *out, int32_t cap, int32_t *n_out);
ek_status ek_vocab_token_to_piece(const ek_vocab *vocab, int32_t token, int special, char *buf, int32_t cap,
                                  int32_t *n_out);
int ek_vocab_is_special(const ek_vocab *vocab, int32_t token);
ek_status ek_vocab_chat_format(const ek_vocab *vocab, const ek_message *messages, size_t n,
                               int add_generation_prompt, char *buf, size_t cap, size_t *n_out);

/* ek_last_error's setter (matmul.c owns the thread-local buffer). */
void ek_set_error(const char *fmt, ...);

#endif
