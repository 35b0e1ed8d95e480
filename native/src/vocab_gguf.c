/* The vocabulary from a GGUF's tokenizer.* metadata: the arrays are read in place from the mapped file
 * (which ek_gguf_open has already bounds-checked) and handed to ek_vocab_new, which copies what it keeps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vocab_gguf.h"

/* A string array's elements (u64 length, bytes) as pointers and lengths into the map. */
static ek_status strings(const ek_gguf_kv *kv, const char ***s, uint32_t **len) {
    *s = malloc((size_t)kv->arr_n * sizeof **s + 1);
    *len = malloc((size_t)kv->arr_n * sizeof **len + 1);
    if (!*s || !*len) return EK_ERR_NOMEM;
    const uint8_t *p = kv->val;
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        uint64_t n;
        memcpy(&n, p, 8);
        if (n > UINT32_MAX) {
            ek_set_error("%s[%llu] is longer than 4 GiB", kv->key, (unsigned long long)i);
            return EK_ERR_FORMAT;
        }
        (*s)[i] = (const char *)p + 8;
        (*len)[i] = (uint32_t)n;
        p += 8 + n;
    }
    return EK_OK;
}

/* A numeric array of n elements of `type` (4 bytes each), copied out (the map may be unaligned). */
static ek_status numbers(const ek_gguf *g, const char *key, uint32_t type, int32_t n, void **out) {
    *out = NULL;
    const ek_gguf_kv *kv = ek_gguf_find(g, key);
    if (!kv) return EK_OK;
    if (kv->type != GG_ARRAY || kv->arr_type != type || kv->arr_n != (uint64_t)n) {
        ek_set_error("%s is not an array of %d %s", key, n, type == GG_F32 ? "float32" : "int32");
        return EK_ERR_FORMAT;
    }
    if (!(*out = malloc((size_t)n * 4 + 1))) return EK_ERR_NOMEM;
    memcpy(*out, kv->val, (size_t)n * 4);
    return EK_OK;
}

static int32_t id(const ek_gguf *g, const char *key) {
    int64_t v;
    return ek_gguf_int(g, key, &v) == 1 ? (v >= INT32_MIN && v <= INT32_MAX ? (int32_t)v : INT32_MAX) : -1;
}

static int32_t flag(const ek_gguf *g, const char *key) {
    int64_t v;
    return ek_gguf_int(g, key, &v) == 1 ? v != 0 : -1;
}

ek_status ek_vocab_from_gguf(const ek_gguf *g, const char *path, ek_vocab **out) {
    *out = NULL;
    const ek_gguf_kv *tk = ek_gguf_find(g, "tokenizer.ggml.tokens");
    if (!tk) return EK_OK; /* no tokenizer: the model runs on token ids only */
    ek_vocab_params p = {0};
    const char **mer = NULL;
    uint32_t *mlen = NULL;
    ek_status st = EK_OK;
    if (tk->type != GG_ARRAY || tk->arr_type != GG_STRING || tk->arr_n == 0 || tk->arr_n > INT32_MAX) {
        ek_set_error("tokenizer.ggml.tokens is not a non-empty array of strings");
        st = EK_ERR_FORMAT;
        goto done;
    }
    p.n_tokens = (int32_t)tk->arr_n;
    const char **tok = NULL;
    uint32_t *tlen = NULL;
    st = strings(tk, &tok, &tlen);
    p.tokens = tok;
    p.token_lens = tlen;
    if (st != EK_OK) goto done;
    const ek_gguf_kv *mk = ek_gguf_find(g, "tokenizer.ggml.merges");
    if (mk) {
        if (mk->type != GG_ARRAY || mk->arr_type != GG_STRING || mk->arr_n > INT32_MAX) {
            ek_set_error("tokenizer.ggml.merges is not an array of strings");
            st = EK_ERR_FORMAT;
            goto done;
        }
        if ((st = strings(mk, &mer, &mlen)) != EK_OK) goto done;
        p.n_merges = (int32_t)mk->arr_n;
        p.merges = mer;
        p.merge_lens = mlen;
    }
    void *scores = NULL, *types = NULL;
    if ((st = numbers(g, "tokenizer.ggml.scores", GG_F32, p.n_tokens, &scores)) != EK_OK) goto done;
    p.scores = scores;
    if ((st = numbers(g, "tokenizer.ggml.token_type", GG_I32, p.n_tokens, &types)) != EK_OK) goto done;
    p.types = types;
    p.model = ek_gguf_str(g, "tokenizer.ggml.model");
    p.pre = ek_gguf_str(g, "tokenizer.ggml.pre");
    p.name = ek_gguf_str(g, "general.name");
    p.chat_template = ek_gguf_str(g, "tokenizer.chat_template");
    p.bos = id(g, "tokenizer.ggml.bos_token_id");
    p.eos = id(g, "tokenizer.ggml.eos_token_id");
    p.eot = id(g, "tokenizer.ggml.eot_token_id");
    p.unk = id(g, "tokenizer.ggml.unknown_token_id");
    p.add_bos = flag(g, "tokenizer.ggml.add_bos_token");
    p.add_eos = flag(g, "tokenizer.ggml.add_eos_token");
    p.add_space_prefix = flag(g, "tokenizer.ggml.add_space_prefix");
    st = ek_vocab_new(&p, out);
done:
    if (st == EK_ERR_NOMEM && !*out) ek_set_error("out of memory reading the vocabulary");
    if (st != EK_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", ek_last_error());
        ek_set_error("%s: %s", path ? path : "model", msg);
    }
    free((void *)p.tokens);
    free((void *)p.token_lens);
    free((void *)p.scores);
    free((void *)p.types);
    free(mer);
    free(mlen);
    return st;
}
