/* Building the vocabulary from a mapped GGUF (the loader's side of vocab.h). Internal. */
#ifndef EDGEKIT_VOCAB_GGUF_H
#define EDGEKIT_VOCAB_GGUF_H

#include "gguf.h"
#include "unicode.h" /* EK_HIDDEN */
#include "vocab.h"

/* The vocabulary of tokenizer.* metadata; *out = NULL (EK_OK) if the file has no tokenizer.ggml.tokens.
 * Errors name path. */
EK_HIDDEN ek_status ek_vocab_from_gguf(const ek_gguf *g, const char *path, ek_vocab **out);

#endif
