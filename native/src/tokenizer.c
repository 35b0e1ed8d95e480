/* Tokenizer: llama.cpp's tokenization of the vocabularies edgekit writes, re-implemented.
 *
 * Byte-level BPE (tokenizer.ggml.model "gpt2"): text is split by the pre-tokenizer's regex (written out by
 * hand below), each piece's bytes are mapped to GPT-2's printable alphabet, then adjacent symbols merge by
 * rank (lowest first, leftmost on ties). SentencePiece BPE ("llama"): spaces become U+2581, a space is
 * prefixed, symbols merge by token score (highest first), and what no token covers falls back to <0xXX>
 * byte tokens. Special tokens are split out of the text first, longest first, as llama.cpp does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unicode.h"
#include "vocab.h"

enum { ATTR_RSTRIP = 1, ATTR_LSTRIP = 2 };

struct ek_vocab {
    int kind, pre;
    int32_t n;
    char *text;       /* every token's text, each NUL-terminated */
    uint32_t *off, *len;
    float *scores;
    uint8_t *type, *attr, *eog;
    uint32_t hmask;   /* text -> id, open addressing (ids + 1, 0 = empty) */
    int32_t *hslot;
    int32_t n_merges; /* "left right" -> rank */
    char *mtext;
    uint32_t *moff, *mlen;
    uint32_t mmask;
    int32_t *mslot;
    int32_t *specials; /* ids split out of text before tokenizing, longest text first */
    int32_t n_specials;
    int32_t byte_tok[256]; /* SPM: the <0xXX> token of each byte */
    int32_t bos, eos, eot, unk;
    int add_bos, add_eos, add_space_prefix;
    char *chat_template;
};

/* ---- small containers ---- */

/* Make room for `need` elements of `elem` bytes in *p (capacity *cap, doubling from 64). */
static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need) cap2 *= 2;
    void *q = realloc(*p, cap2 * elem);
    if (!q) return -1;
    *p = q;
    *cap = cap2;
    return 0;
}


typedef struct {
    int32_t *a;
    size_t n, cap;
} ivec;

static int ivec_push(ivec *v, int32_t x) {
    if (grow((void **)&v->a, &v->cap, v->n + 1, sizeof *v->a)) return -1;
    v->a[v->n++] = x;
    return 0;
}

static uint32_t hash_bytes(uint32_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u; /* FNV-1a */
    return h;
}
#define HASH_SEED 2166136261u

static uint32_t table_size(int64_t n) {
    uint32_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    return cap;
}

int32_t ek_vocab_find(const ek_vocab *v, const char *s, size_t n) {
    for (uint32_t h = hash_bytes(HASH_SEED, s, n) & v->hmask;; h = (h + 1) & v->hmask) {
        int32_t id = v->hslot[h] - 1;
        if (id < 0) return -1;
        if (v->len[id] == n && memcmp(v->text + v->off[id], s, n) == 0) return id;
    }
}

static int32_t merge_rank(const ek_vocab *v, const char *a, size_t an, const char *b, size_t bn) {
    if (!v->n_merges) return -1;
    uint32_t h = hash_bytes(hash_bytes(hash_bytes(HASH_SEED, a, an), " ", 1), b, bn);
    for (h &= v->mmask;; h = (h + 1) & v->mmask) {
        int32_t r = v->mslot[h] - 1;
        if (r < 0) return -1;
        const char *m = v->mtext + v->moff[r];
        if (v->mlen[r] == an + 1 + bn && memcmp(m, a, an) == 0 && m[an] == ' ' && memcmp(m + an + 1, b, bn) == 0)
            return r;
    }
}

/* ---- building ---- */

static int ascii_contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (const char *p = hay; *p; p++) {
        size_t i = 0;
        while (i < n && p[i] && (p[i] | 32) == (needle[i] | 32)) i++;
        if (i == n) return 1;
    }
    return 0;
}

static int id_ok(int32_t id, int32_t n) { return id >= -1 && id < n; }

/* Specials are sorted as (text length, id) keys: longest first, then lowest id. */
static int special_order(const void *pa, const void *pb) {
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

ek_status ek_vocab_new(const ek_vocab_params *p, ek_vocab **out) {
    if (!p || !out) {
        ek_set_error("ek_vocab_new: NULL argument");
        return EK_ERR_INVALID;
    }
    *out = NULL;
    int kind = 0, pre = EK_PRE_NONE;
    if (p->model && strcmp(p->model, "gpt2") == 0) kind = EK_VOCAB_BPE;
    else if (p->model && strcmp(p->model, "llama") == 0) kind = EK_VOCAB_SPM;
    else {
        ek_set_error("tokenizer.ggml.model '%s' is not supported (gpt2 or llama)", p->model ? p->model : "");
        return EK_ERR_UNSUPPORTED;
    }
    if (kind == EK_VOCAB_BPE) {
        static const struct { const char *name; int pre; } pres[] = {
            {"gpt-2", EK_PRE_GPT2}, {"llama-bpe", EK_PRE_LLAMA3}, {"llama3", EK_PRE_LLAMA3},
            {"llama-v3", EK_PRE_LLAMA3}, {"qwen2", EK_PRE_QWEN2}, {"smollm", EK_PRE_SMOLLM},
        };
        for (size_t i = 0; i < sizeof pres / sizeof pres[0] && p->pre; i++)
            if (strcmp(p->pre, pres[i].name) == 0) pre = pres[i].pre;
        if (pre == EK_PRE_NONE) {
            ek_set_error("tokenizer.ggml.pre '%s' is not supported (gpt-2, llama-bpe, qwen2, smollm)",
                         p->pre ? p->pre : "");
            return EK_ERR_UNSUPPORTED;
        }
    }
    if (p->n_tokens <= 0 || !p->tokens || !p->token_lens) {
        ek_set_error("tokenizer.ggml.tokens is missing or empty");
        return EK_ERR_FORMAT;
    }
    if (p->n_merges < 0 || (p->n_merges > 0 && (!p->merges || !p->merge_lens))) {
        ek_set_error("tokenizer.ggml.merges: bad array");
        return EK_ERR_FORMAT;
    }
    if (kind == EK_VOCAB_SPM && !p->scores) {
        ek_set_error("tokenizer.ggml.scores is missing (a SentencePiece vocabulary needs it)");
        return EK_ERR_FORMAT;
    }
    int32_t n = p->n_tokens;
    if (!id_ok(p->bos, n) || !id_ok(p->eos, n) || !id_ok(p->eot, n) || !id_ok(p->unk, n)) {
        ek_set_error("a special token id (bos %d, eos %d, eot %d, unk %d) is outside the %d tokens", p->bos,
                     p->eos, p->eot, p->unk, n);
        return EK_ERR_FORMAT;
    }
    if (p->add_bos == 1 && p->bos < 0) {
        ek_set_error("tokenizer.ggml.add_bos_token is set but there is no bos token id");
        return EK_ERR_FORMAT;
    }
    if (p->add_eos == 1 && p->eos < 0) {
        ek_set_error("tokenizer.ggml.add_eos_token is set but there is no eos token id");
        return EK_ERR_FORMAT;
    }
    ek_vocab *v = calloc(1, sizeof *v);
    if (!v) goto nomem;
    v->kind = kind;
    v->pre = pre;
    v->n = n;
    size_t total = 0;
    for (int32_t i = 0; i < n; i++) {
        if (!p->tokens[i] && p->token_lens[i]) {
            ek_set_error("tokenizer.ggml.tokens[%d] is NULL", i);
            ek_vocab_free(v);
            return EK_ERR_FORMAT;
        }
        total += (size_t)p->token_lens[i] + 1;
    }
    v->text = malloc(total);
    v->off = malloc(n * sizeof *v->off);
    v->len = malloc(n * sizeof *v->len);
    v->scores = calloc(n, sizeof *v->scores);
    v->type = malloc(n);
    v->attr = calloc(n, 1);
    v->eog = calloc(n, 1);
    v->hmask = table_size(n) - 1;
    v->hslot = calloc((size_t)v->hmask + 1, sizeof *v->hslot);
    v->specials = malloc(n * sizeof *v->specials);
    if (!v->text || !v->off || !v->len || !v->scores || !v->type || !v->attr || !v->eog || !v->hslot || !v->specials)
        goto nomem;
    size_t pos = 0;
    for (int32_t i = 0; i < n; i++) {
        v->off[i] = (uint32_t)pos;
        v->len[i] = p->token_lens[i];
        if (v->len[i]) memcpy(v->text + pos, p->tokens[i], v->len[i]);
        pos += v->len[i];
        v->text[pos++] = 0;
        int t = p->types ? p->types[i] : EK_TOKEN_NORMAL;
        if (t < EK_TOKEN_UNDEFINED || t > EK_TOKEN_BYTE) {
            ek_set_error("tokenizer.ggml.token_type[%d] = %d is not a token type", i, t);
            ek_vocab_free(v);
            return EK_ERR_FORMAT;
        }
        v->type[i] = (uint8_t)t;
        if (p->scores) v->scores[i] = p->scores[i];
        /* insert; a later duplicate text wins, as in llama.cpp's map */
        uint32_t h = hash_bytes(HASH_SEED, v->text + v->off[i], v->len[i]) & v->hmask;
        for (;; h = (h + 1) & v->hmask) {
            int32_t id = v->hslot[h] - 1;
            if (id < 0 || (v->len[id] == v->len[i] && memcmp(v->text + v->off[id], v->text + v->off[i], v->len[i]) == 0))
                break;
        }
        v->hslot[h] = i + 1;
    }
    if (p->n_merges > 0) {
        size_t mtotal = 0;
        for (int32_t i = 0; i < p->n_merges; i++) mtotal += p->merge_lens[i];
        v->n_merges = p->n_merges;
        v->mtext = malloc(mtotal + 1);
        v->moff = malloc(p->n_merges * sizeof *v->moff);
        v->mlen = malloc(p->n_merges * sizeof *v->mlen);
        v->mmask = table_size(p->n_merges) - 1;
        v->mslot = calloc((size_t)v->mmask + 1, sizeof *v->mslot);
        if (!v->mtext || !v->moff || !v->mlen || !v->mslot) goto nomem;
        pos = 0;
        for (int32_t r = 0; r < p->n_merges; r++) {
            const char *m = p->merges[r];
            uint32_t ml = p->merge_lens[r];
            /* llama.cpp splits at the first space after the first byte */
            const char *sp = ml > 1 && m ? memchr(m + 1, ' ', ml - 1) : NULL;
            if (!sp) {
                ek_set_error("tokenizer.ggml.merges[%d] has no space between its two parts", r);
                ek_vocab_free(v);
                return EK_ERR_FORMAT;
            }
            v->moff[r] = (uint32_t)pos;
            v->mlen[r] = ml;
            memcpy(v->mtext + pos, m, ml);
            pos += ml;
            uint32_t h = hash_bytes(HASH_SEED, m, ml) & v->mmask;
            for (;; h = (h + 1) & v->mmask) {
                int32_t o = v->mslot[h] - 1;
                if (o < 0) break;
                if (v->mlen[o] == ml && memcmp(v->mtext + v->moff[o], m, ml) == 0) break; /* first rank wins */
            }
            if (!v->mslot[h]) v->mslot[h] = r + 1;
        }
    }
    v->bos = p->bos;
    v->eos = p->eos;
    v->eot = p->eot;
    v->unk = p->unk;
    /* without the key, llama.cpp prepends BOS for SentencePiece and Llama 3 vocabularies */
    v->add_bos = p->add_bos == 1 || (p->add_bos < 0 && (kind == EK_VOCAB_SPM || pre == EK_PRE_LLAMA3) && v->bos >= 0);
    v->add_eos = p->add_eos == 1;
    v->add_space_prefix = p->add_space_prefix < 0 ? kind == EK_VOCAB_SPM : p->add_space_prefix;

    /* llama.cpp's rules by token text: a known end-of-turn marker becomes eot when none is given, and every
     * such marker ends generation and is a control token. */
    static const char *const eot_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>",
                                            "<|endoftext|>", "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of"
                                            "\xe2\x96\x81sentence\xef\xbd\x9c>"};
    static const char *const eog_names[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
                                            "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>",
                                            "<|end_of_text|>", "<end_of_utterance>"};
    if (v->eot < 0)
        for (size_t k = 0; k < sizeof eot_names / sizeof eot_names[0] && v->eot < 0; k++)
            v->eot = ek_vocab_find(v, eot_names[k], strlen(eot_names[k]));
    if (v->eot >= 0) v->type[v->eot] = EK_TOKEN_CONTROL;
    for (size_t k = 0; k < sizeof eog_names / sizeof eog_names[0]; k++) {
        int32_t id = ek_vocab_find(v, eog_names[k], strlen(eog_names[k]));
        if (id >= 0) {
            v->eog[id] = 1;
            v->type[id] = EK_TOKEN_CONTROL;
        }
    }
    int32_t eos_s = ek_vocab_find(v, "</s>", 4); /* llama.cpp 0.3.36 ends generation at </s> too (Phi-3, measured) */
    if (eos_s >= 0 && v->type[eos_s] == EK_TOKEN_CONTROL) v->eog[eos_s] = 1;
    if (v->eos >= 0) v->eog[v->eos] = 1;
    if (v->eot >= 0) v->eog[v->eot] = 1;

    for (int32_t i = 0; i < n; i++) {
        int t = v->type[i];
        if ((t == EK_TOKEN_CONTROL || t == EK_TOKEN_USER_DEFINED || t == EK_TOKEN_UNKNOWN) && v->len[i] > 0)
            v->specials[v->n_specials++] = i;
    }
    uint64_t *keys = malloc((size_t)v->n_specials * sizeof *keys + 1);
    if (!keys) goto nomem;
    for (int32_t k = 0; k < v->n_specials; k++)
        keys[k] = (uint64_t)(UINT32_MAX - v->len[v->specials[k]]) << 32 | (uint32_t)v->specials[k];
    qsort(keys, (size_t)v->n_specials, sizeof *keys, special_order);
    for (int32_t k = 0; k < v->n_specials; k++) v->specials[k] = (int32_t)(uint32_t)keys[k];
    free(keys);
    if (p->name && (ascii_contains_ci(p->name, "phi-3") || ascii_contains_ci(p->name, "phi3"))) {
        /* Phi-3's chat tokens eat the white space after them (its tokenizer.json says rstrip) */
        for (int32_t k = 0; k < v->n_specials; k++) v->attr[v->specials[k]] |= ATTR_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        int32_t id = ek_vocab_find(v, "</s>", 4);
        if (id >= 0) v->attr[id] |= ATTR_RSTRIP;
        for (int k = 0; k < 3; k++) {
            id = ek_vocab_find(v, keep[k], strlen(keep[k]));
            if (id >= 0) v->attr[id] &= (uint8_t)~ATTR_RSTRIP;
        }
    }
    for (int b = 0; b < 256; b++) {
        char hex[7];
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        v->byte_tok[b] = ek_vocab_find(v, hex, 6);
        if (v->byte_tok[b] < 0) { /* llama.cpp falls back to the byte itself as a token */
            char c = (char)b;
            v->byte_tok[b] = ek_vocab_find(v, &c, 1);
        }
    }
    if (p->chat_template && !(v->chat_template = strdup(p->chat_template))) goto nomem;
    *out = v;
    return EK_OK;
nomem:
    ek_vocab_free(v);
    ek_set_error("out of memory building the vocabulary");
    return EK_ERR_NOMEM;
}

void ek_vocab_free(ek_vocab *v) {
    if (!v) return;
    free(v->text);
    free(v->off);
    free(v->len);
    free(v->scores);
    free(v->type);
    free(v->attr);
    free(v->eog);
    free(v->hslot);
    free(v->mtext);
    free(v->moff);
    free(v->mlen);
    free(v->mslot);
    free(v->specials);
    free(v->chat_template);
    free(v);
}

int32_t ek_vocab_n_tokens(const ek_vocab *v) { return v->n; }
int32_t ek_vocab_bos(const ek_vocab *v) { return v->bos; }
int32_t ek_vocab_eos(const ek_vocab *v) { return v->eos; }
int32_t ek_vocab_eot(const ek_vocab *v) { return v->eot; }
int ek_vocab_add_bos(const ek_vocab *v) { return v->add_bos; }
int ek_vocab_add_space_prefix(const ek_vocab *v) { return v->add_space_prefix; }
int ek_vocab_is_eog(const ek_vocab *v, int32_t t) { return t >= 0 && t < v->n && v->eog[t]; }
const char *ek_vocab_chat_template(const ek_vocab *v) { return v->chat_template; }

const char *ek_vocab_token_text(const ek_vocab *v, int32_t t, uint32_t *len) {
    if (t < 0 || t >= v->n) return NULL;
    if (len) *len = v->len[t];
    return v->text + v->off[t];
}

int ek_vocab_is_special(const ek_vocab *v, int32_t t) {
    return t >= 0 && t < v->n && v->type[t] == EK_TOKEN_CONTROL;
}

/* ---- pre-tokenizers: the regexes of tokenizer.json, as hand-written matchers over code points ----
 * Each returns the end of the match that starts at i (the regex alternatives tried left to right, as a
 * backtracking engine does); the text is c[0..n). */

static int is_l(uint32_t c) { return ek_cp_is_letter(c); }
static int is_n(uint32_t c) { return ek_cp_is_number(c); }
static int is_s(uint32_t c) { return ek_cp_is_space(c); }
static int is_other(uint32_t c) { return !is_s(c) && !is_l(c) && !is_n(c); } /* [^\s\p{L}\p{N}] */
static int is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }
static uint32_t lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's 't 're 've 'm 'll 'd: length of the contraction at i, or 0. */
static size_t contraction(const uint32_t *c, size_t i, size_t n, int any_case) {
    if (c[i] != '\'' || i + 1 >= n) return 0;
    uint32_t a = any_case ? lower(c[i + 1]) : c[i + 1];
    uint32_t b = i + 2 < n ? (any_case ? lower(c[i + 2]) : c[i + 2]) : 0;
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* \s+(?!\S) then \s+ : a white-space run leaves its last space to the word after it. */
static size_t space_run(const uint32_t *c, size_t i, size_t n) {
    size_t j = i;
    while (j < n && is_s(c[j])) j++;
    if (j < n && j - i >= 2) return j - 1;
    return j;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t match_gpt2(const uint32_t *c, size_t i, size_t n) {
    size_t k = contraction(c, i, n, 0);
    if (k) return i + k;
    size_t j = i + (c[i] == ' ' && i + 1 < n);
    int (*cls[3])(uint32_t) = {is_l, is_n, is_other};
    for (int t = 0; t < 3; t++) {
        if (cls[t](c[j])) {
            while (j < n && cls[t](c[j])) j++;
            return j;
        }
    }
    return space_run(c, i, n);
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * with D = 3 (Llama 3) or 1 (Qwen2). */
static size_t match_llama3(const uint32_t *c, size_t i, size_t n, int max_digits) {
    size_t k = contraction(c, i, n, 1);
    if (k) return i + k;
    size_t j = i;
    if (!is_crlf(c[j]) && !is_l(c[j]) && !is_n(c[j]) && j + 1 < n && is_l(c[j + 1])) j++;
    if (is_l(c[j])) {
        while (j < n && is_l(c[j])) j++;
        return j;
    }
    j = i;
    if (is_n(c[j])) {
        while (j < n && is_n(c[j]) && j - i < (size_t)max_digits) j++;
        return j;
    }
    j = i + (c[i] == ' ' && i + 1 < n);
    if (is_other(c[j])) {
        while (j < n && is_other(c[j])) j++;
        while (j < n && is_crlf(c[j])) j++;
        return j;
    }
    /* \s*[\r\n]+ : up to the last line break of the white-space run */
    size_t last_nl = 0;
    for (j = i; j < n && is_s(c[j]); j++)
        if (is_crlf(c[j])) last_nl = j + 1;
    if (last_nl) return last_nl;
    return space_run(c, i, n);
}

/* Ends of the pre-tokens of c[0..n) (appended to ends). */
static int pre_split(int pre, const uint32_t *c, size_t n, ivec *ends) {
    size_t i = 0;
    while (i < n) {
        size_t e;
        if (pre == EK_PRE_SMOLLM) {
            /* \p{N} first, alone; the text between digits then goes through GPT-2's regex */
            if (is_n(c[i])) {
                e = i + 1;
            } else {
                size_t stop = i;
                while (stop < n && !is_n(c[stop])) stop++;
                while (i < stop) {
                    i = match_gpt2(c, i, stop);
                    if (ivec_push(ends, (int32_t)i)) return -1;
                }
                continue;
            }
        } else if (pre == EK_PRE_GPT2) {
            e = match_gpt2(c, i, n);
        } else {
            e = match_llama3(c, i, n, pre == EK_PRE_LLAMA3 ? 3 : 1);
        }
        if (ivec_push(ends, (int32_t)e)) return -1;
        i = e;
    }
    return 0;
}

/* ---- merging: a linked list of symbols and a heap of candidate pairs ---- */

typedef struct {
    uint32_t start, n;
    int32_t prev, next;
} symbol;

typedef struct {
    double key; /* BPE: merge rank; SPM: minus the token's score */
    int32_t left, right;
    uint32_t size;
} bigram;

typedef struct {
    symbol *sym;
    size_t nsym, capsym;
    bigram *heap;
    size_t nheap, capheap;
    ivec ends;
    uint32_t *cps;
    size_t capcps;
    char *buf;
    size_t capbuf;
} workspace;

static int heap_less(const bigram *a, const bigram *b) {
    return a->key < b->key || (a->key == b->key && a->left < b->left);
}

static int heap_push(workspace *w, bigram b) {
    if (grow((void **)&w->heap, &w->capheap, w->nheap + 1, sizeof *w->heap)) return -1;
    size_t i = w->nheap++;
    while (i > 0 && heap_less(&b, &w->heap[(i - 1) / 2])) {
        w->heap[i] = w->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    w->heap[i] = b;
    return 0;
}

static bigram heap_pop(workspace *w) {
    bigram top = w->heap[0], last = w->heap[--w->nheap];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= w->nheap) break;
        if (c + 1 < w->nheap && heap_less(&w->heap[c + 1], &w->heap[c])) c++;
        if (!heap_less(&w->heap[c], &last)) break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (w->nheap) w->heap[i] = last;
    return top;
}

/* One symbol per UTF-8 character of s[0..n). */
static int init_symbols(workspace *w, const char *s, size_t n) {
    if (grow((void **)&w->sym, &w->capsym, n + 1, sizeof *w->sym)) return -1;
    w->nsym = 0;
    w->nheap = 0;
    for (size_t off = 0; off < n;) {
        size_t len = (size_t)ek_utf8_len((uint8_t)s[off]);
        if (len > n - off) len = n - off;
        symbol *y = &w->sym[w->nsym];
        y->start = (uint32_t)off;
        y->n = (uint32_t)len;
        y->prev = (int32_t)w->nsym - 1;
        off += len;
        y->next = off == n ? -1 : (int32_t)w->nsym + 1;
        w->nsym++;
    }
    return 0;
}

static int add_pair(workspace *w, const ek_vocab *v, const char *s, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    const symbol *a = &w->sym[l], *b = &w->sym[r];
    bigram g = {0, l, r, a->n + b->n};
    if (v->kind == EK_VOCAB_BPE) {
        int32_t rank = merge_rank(v, s + a->start, a->n, s + b->start, b->n);
        if (rank < 0) return 0;
        g.key = rank;
    } else {
        int32_t id = ek_vocab_find(v, s + a->start, g.size);
        if (id < 0) return 0;
        g.key = -(double)v->scores[id];
    }
    return heap_push(w, g);
}

static int merge_all(workspace *w, const ek_vocab *v, const char *s) {
    for (size_t i = 1; i < w->nsym; i++)
        if (add_pair(w, v, s, (int32_t)i - 1, (int32_t)i)) return -1;
    while (w->nheap) {
        bigram g = heap_pop(w);
        symbol *a = &w->sym[g.left], *b = &w->sym[g.right];
        if (a->n == 0 || b->n == 0 || a->n + b->n != g.size) continue; /* outdated */
        a->n += b->n;
        b->n = 0;
        a->next = b->next;
        if (b->next >= 0) w->sym[b->next].prev = g.left;
        if (add_pair(w, v, s, a->prev, g.left) || add_pair(w, v, s, g.left, a->next)) return -1;
    }
    return 0;
}

/* Byte-level BPE of one raw-text fragment. */
static int tokenize_bpe(workspace *w, const ek_vocab *v, const uint8_t *s, size_t len, ivec *out) {
    if (grow((void **)&w->cps, &w->capcps, len + 1, sizeof *w->cps)) return -1;
    size_t n = 0;
    for (size_t pos = 0; pos < len;) w->cps[n++] = ek_utf8_next(s, len, &pos);
    w->ends.n = 0;
    if (pre_split(v->pre, w->cps, n, &w->ends)) return -1;
    size_t begin = 0;
    for (size_t k = 0; k < w->ends.n; k++) {
        size_t end = (size_t)w->ends.a[k];
        /* the piece's UTF-8 bytes, each written as its GPT-2 alphabet character (at most 2 bytes) */
        if (grow((void **)&w->buf, &w->capbuf, (end - begin) * 8 + 1, 1)) return -1;
        size_t m = 0;
        for (size_t i = begin; i < end; i++) {
            char u[4];
            int ul = ek_utf8_put(w->cps[i], u);
            for (int b = 0; b < ul; b++) m += (size_t)ek_utf8_put(ek_byte_to_cp((uint8_t)u[b]), w->buf + m);
        }
        begin = end;
        int32_t whole = v->pre == EK_PRE_LLAMA3 ? ek_vocab_find(v, w->buf, m) : -1; /* Llama 3 ignores merges */
        if (whole >= 0) {
            if (ivec_push(out, whole)) return -1;
            continue;
        }
        if (init_symbols(w, w->buf, m) || merge_all(w, v, w->buf)) return -1;
        for (int32_t i = 0; i >= 0 && w->nsym; i = w->sym[i].next) {
            const symbol *y = &w->sym[i];
            int32_t id = ek_vocab_find(v, w->buf + y->start, y->n);
            if (id >= 0) {
                if (ivec_push(out, id)) return -1;
                continue;
            }
            for (uint32_t b = 0; b < y->n; b++) { /* llama.cpp's fallback: single bytes that are tokens */
                int32_t bid = ek_vocab_find(v, w->buf + y->start + b, 1);
                if (bid >= 0 && ivec_push(out, bid)) return -1;
            }
        }
    }
    return 0;
}

/* SentencePiece BPE of one raw-text fragment (space_prefix: prepend " " first). */
static int tokenize_spm(workspace *w, const ek_vocab *v, const char *s, size_t len, int space_prefix, ivec *out) {
    if (grow((void **)&w->buf, &w->capbuf, 3 * (len + 1) + 1, 1)) return -1;
    size_t m = 0;
    if (space_prefix) {
        memcpy(w->buf, "\xe2\x96\x81", 3);
        m = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(w->buf + m, "\xe2\x96\x81", 3);
            m += 3;
        } else {
            w->buf[m++] = s[i];
        }
    }
    if (init_symbols(w, w->buf, m) || merge_all(w, v, w->buf)) return -1;
    for (int32_t i = 0; i >= 0 && w->nsym; i = w->sym[i].next) {
        const symbol *y = &w->sym[i];
        int32_t id = ek_vocab_find(v, w->buf + y->start, y->n);
        if (id >= 0) {
            if (ivec_push(out, id)) return -1;
            continue;
        }
        for (uint32_t b = 0; b < y->n; b++) {
            int32_t bid = v->byte_tok[(uint8_t)w->buf[y->start + b]];
            if (bid < 0) bid = v->unk;
            if (bid >= 0 && ivec_push(out, bid)) return -1;
        }
    }
    return 0;
}

/* ---- special tokens: split them out of the text, longest first ---- */

typedef struct {
    int32_t token; /* -1: raw text */
    size_t off, len;
} fragment;

typedef struct {
    fragment *a;
    size_t n, cap;
} fragments;

static int is_ascii_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

static int partition(const ek_vocab *v, const char *text, size_t len, int parse_special, fragments *fr) {
    if (grow((void **)&fr->a, &fr->cap, 1, sizeof *fr->a)) return -1;
    fr->n = 0;
    if (len) fr->a[fr->n++] = (fragment){-1, 0, len};
    for (int32_t k = 0; k < v->n_specials; k++) {
        int32_t id = v->specials[k];
        if (!parse_special && v->type[id] != EK_TOKEN_USER_DEFINED) continue; /* user tokens always split */
        const char *tok = v->text + v->off[id];
        size_t tl = v->len[id];
        for (size_t f = 0; f < fr->n; f++) {
            if (fr->a[f].token >= 0 || fr->a[f].len < tl) continue;
            size_t off = fr->a[f].off, flen = fr->a[f].len, hit = (size_t)-1;
            for (size_t i = off; i + tl <= off + flen; i++)
                if (text[i] == tok[0] && memcmp(text + i, tok, tl) == 0) {
                    hit = i;
                    break;
                }
            if (hit == (size_t)-1) continue;
            size_t left = hit - off;
            if (v->attr[id] & ATTR_LSTRIP)
                while (left > 0 && is_ascii_space(text[off + left - 1])) left--;
            size_t roff = hit + tl, rlen = off + flen - roff;
            if (v->attr[id] & ATTR_RSTRIP)
                while (rlen > 0 && is_ascii_space(text[roff])) roff++, rlen--;
            /* replace fragment f by [left text] token [right text]; the right part is searched next */
            size_t add = (left > 0) + 1 + (rlen > 0) - 1;
            if (grow((void **)&fr->a, &fr->cap, fr->n + add, sizeof *fr->a)) return -1;
            memmove(fr->a + f + 1 + add, fr->a + f + 1, (fr->n - f - 1) * sizeof *fr->a);
            fr->n += add;
            size_t g = f;
            if (left > 0) fr->a[g++] = (fragment){-1, off, left};
            fr->a[g] = (fragment){id, 0, 0};
            if (rlen > 0) fr->a[g + 1] = (fragment){-1, roff, rlen};
            f = g; /* the loop's f++ moves to the right part */
        }
    }
    return 0;
}

ek_status ek_vocab_tokenize(const ek_vocab *v, const char *text, size_t len, int add_special, int parse_special,
                            int32_t *out, int32_t cap, int32_t *n_out) {
    if (!v || (!text && len) || !n_out || cap < 0 || (cap > 0 && !out)) {
        ek_set_error("ek_tokenize: bad argument");
        return EK_ERR_INVALID;
    }
    fragments fr = {0};
    workspace w = {0};
    ivec ids = {0};
    ek_status st = EK_OK;
    if (partition(v, text, len, parse_special, &fr)) goto nomem;
    if (add_special && v->add_bos && ivec_push(&ids, v->bos)) goto nomem;
    int prev_special = 1;
    for (size_t f = 0; f < fr.n; f++) {
        const fragment *g = &fr.a[f];
        if (g->token >= 0) {
            if (ivec_push(&ids, g->token)) goto nomem;
            prev_special = 1;
            continue;
        }
        int rc = v->kind == EK_VOCAB_BPE
                     ? tokenize_bpe(&w, v, (const uint8_t *)text + g->off, g->len, &ids)
                     : tokenize_spm(&w, v, text + g->off, g->len, v->add_space_prefix && prev_special, &ids);
        if (rc) goto nomem;
        prev_special = 0;
    }
    if (add_special && v->add_eos && ivec_push(&ids, v->eos)) goto nomem;
    if (ids.n > INT32_MAX) {
        ek_set_error("ek_tokenize: more than 2^31 tokens");
        st = EK_ERR_INVALID;
        goto done;
    }
    *n_out = (int32_t)ids.n;
    if (ids.n > (size_t)cap) {
        ek_set_error("ek_tokenize: %zu tokens do not fit in %d", ids.n, cap);
        st = EK_ERR_BUFFER;
    } else if (ids.n) {
        memcpy(out, ids.a, ids.n * sizeof *out);
    }
    goto done;
nomem:
    ek_set_error("ek_tokenize: out of memory");
    st = EK_ERR_NOMEM;
done:
    free(fr.a);
    free(w.sym);
    free(w.heap);
    free(w.ends.a);
    free(w.cps);
    free(w.buf);
    free(ids.a);
    return st;
}

/* ---- token -> text ---- */

static ek_status put_piece(const char *s, size_t n, char *buf, int32_t cap, int32_t *n_out) {
    *n_out = (int32_t)n;
    if (n > (size_t)cap) {
        ek_set_error("ek_token_to_piece: %zu bytes do not fit in %d", n, cap);
        return EK_ERR_BUFFER;
    }
    if (n) memcpy(buf, s, n);
    return EK_OK;
}

ek_status ek_vocab_token_to_piece(const ek_vocab *v, int32_t t, int special, char *buf, int32_t cap,
                                  int32_t *n_out) {
    if (!v || !n_out || cap < 0 || (cap > 0 && !buf)) {
        ek_set_error("ek_token_to_piece: bad argument");
        return EK_ERR_INVALID;
    }
    if (t < 0 || t >= v->n) {
        ek_set_error("ek_token_to_piece: token %d is outside the vocabulary (%d tokens)", t, v->n);
        return EK_ERR_INVALID;
    }
    const char *s = v->text + v->off[t];
    size_t n = v->len[t];
    int type = v->type[t];
    if (type == EK_TOKEN_CONTROL || type == EK_TOKEN_UNKNOWN) return put_piece(s, special ? n : 0, buf, cap, n_out);
    if (type == EK_TOKEN_USER_DEFINED) return put_piece(s, n, buf, cap, n_out);
    if (v->kind == EK_VOCAB_SPM && type == EK_TOKEN_BYTE) {
        char b = (char)strtol(s + 3, NULL, 16); /* "<0xXX>" */
        return put_piece(&b, n >= 6 ? 1 : 0, buf, cap, n_out);
    }
    if (type != EK_TOKEN_NORMAL) return put_piece(s, 0, buf, cap, n_out); /* unused, undefined */
    /* normal tokens: SPM's U+2581 back to spaces; byte-level BPE's alphabet back to bytes */
    char tmp[256], *out = n * 16 + 32 <= sizeof tmp ? tmp : malloc(n * 16 + 32);
    if (!out) {
        ek_set_error("ek_token_to_piece: out of memory");
        return EK_ERR_NOMEM;
    }
    size_t m = 0;
    if (v->kind == EK_VOCAB_SPM) {
        for (size_t i = 0; i < n; i++) {
            if (i + 3 <= n && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                out[m++] = ' ';
                i += 2;
            } else {
                out[m++] = s[i];
            }
        }
    } else {
        for (size_t pos = 0; pos < n;) {
            size_t at = pos;
            uint32_t cp = ek_utf8_next((const uint8_t *)s, n, &pos);
            int b = ek_cp_to_byte(cp);
            if (b >= 0) {
                out[m++] = (char)b;
                continue;
            }
            /* not in the alphabet: llama.cpp writes "[UNK_BYTE_0x<hex>" + the character + "]" */
            m += (size_t)sprintf(out + m, "[UNK_BYTE_0x");
            for (size_t i = at; i < pos; i++) m += (size_t)sprintf(out + m, "%02x", (uint8_t)s[i]);
            memcpy(out + m, s + at, pos - at);
            m += pos - at;
            out[m++] = ']';
        }
    }
    ek_status st = put_piece(out, m, buf, cap, n_out);
    if (out != tmp) free(out);
    return st;
}
