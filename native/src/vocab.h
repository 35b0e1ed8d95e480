/* The vocabulary the text side works from (tokenizer, piece text, chat template), built from the arrays
 * a GGUF holds. The loader (model.c) fills ek_vocab_params from tokenizer.* metadata and keeps the result
 * in its ek_model; tests fill it from Python. Internal: the few ek_vocab_* functions the tests call are
 * declared (and exported) in include/edgekit_test.h; the rest here are hidden. */
#ifndef EDGEKIT_VOCAB_H
#define EDGEKIT_VOCAB_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit.h"
#include "edgekit_test.h" /* ek_vocab_params and the exported test entry points */

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


int32_t ek_vocab_n_tokens(const ek_vocab *vocab);
int32_t ek_vocab_bos(const ek_vocab *vocab);
int32_t ek_vocab_eos(const ek_vocab *vocab);
int32_t ek_vocab_eot(const ek_vocab *vocab);
int ek_vocab_add_bos(const ek_vocab *vocab);
/* SentencePiece with a prefix space: llama.cpp's detokenizer drops the first token's leading space. */
int ek_vocab_add_space_prefix(const ek_vocab *vocab);
const char *ek_vocab_chat_template(const ek_vocab *vocab); /* NULL if none */
/* A token's stored text (as in the GGUF), NULL for an id out of range. */
const char *ek_vocab_token_text(const ek_vocab *vocab, int32_t token, uint32_t *len);

/* ek_last_error's setter (matmul.c owns the thread-local buffer). */
void ek_set_error(const char *fmt, ...);

#endif
