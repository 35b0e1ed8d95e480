/* Text in, text out on a session: ek_generate and ek_chat (tokenize, reuse the cached prefix, prefill,
 * sample until a stop token, stream whole UTF-8 characters), and the model's text API (ek_tokenize & co.),
 * which hands the model's vocabulary to the tokenizer and chat code. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime.h"
#include "unicode.h"
#include "vocab.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const ek_vocab *vocab_of(const ek_model *m, const char *fn) {
    if (!m) {
        ek_set_error("%s: NULL model", fn);
        return NULL;
    }
    if (!m->vocab) {
        ek_set_error("%s: the model has no vocabulary (tokenizer.ggml.tokens)", fn);
        return NULL;
    }
    return m->vocab;
}

ek_status ek_tokenize(const ek_model *m, const char *text, size_t len, int add_special, int parse_special,
                      int32_t *out, int32_t cap, int32_t *n_out) {
    const ek_vocab *v = vocab_of(m, "ek_tokenize");
    return v ? ek_vocab_tokenize(v, text, len, add_special, parse_special, out, cap, n_out) : EK_ERR_INVALID;
}

ek_status ek_token_to_piece(const ek_model *m, int32_t token, int special, char *buf, int32_t cap, int32_t *n_out) {
    const ek_vocab *v = vocab_of(m, "ek_token_to_piece");
    return v ? ek_vocab_token_to_piece(v, token, special, buf, cap, n_out) : EK_ERR_INVALID;
}

int ek_token_is_special(const ek_model *m, int32_t token) {
    return m && m->vocab ? ek_vocab_is_special(m->vocab, token) : 0;
}

ek_status ek_chat_format(const ek_model *m, const ek_message *messages, size_t n, int add_generation_prompt,
                         char *buf, size_t cap, size_t *n_out) {
    const ek_vocab *v = vocab_of(m, "ek_chat_format");
    return v ? ek_vocab_chat_format(v, messages, n, add_generation_prompt, buf, cap, n_out) : EK_ERR_INVALID;
}

/* Pieces are held back until they end on a whole UTF-8 character (a byte-level token may split one). */
typedef struct {
    char *s;
    size_t n, cap;
} pending;

static int pending_add(pending *p, const char *s, size_t n) {
    if (p->n + n > p->cap) {
        size_t cap = p->cap ? p->cap : 64;
        while (cap < p->n + n) cap *= 2;
        char *q = realloc(p->s, cap);
        if (!q) return -1;
        p->s = q;
        p->cap = cap;
    }
    memcpy(p->s + p->n, s, n);
    p->n += n;
    return 0;
}

/* Send the whole characters (ill-formed bytes as U+FFFD, like the Python side's decoding; a cut-off character
 * too if flush); returns the callback's stop request. */
static int pending_emit(pending *p, ek_piece_fn cb, void *user, int flush) {
    char small[768], *buf = 3 * p->n <= sizeof small ? small : malloc(3 * p->n);
    if (!buf) return 1;
    size_t m = 0, k = ek_utf8_sanitize(p->s, p->n, flush, buf, &m);
    int stop = m && cb ? cb(buf, m, user) : 0;
    memmove(p->s, p->s + k, p->n - k);
    p->n -= k;
    if (buf != small) free(buf);
    return stop;
}

/* add_special: prepend BOS when the model asks for it (a plain prompt); a rendered chat template already
 * holds the special tokens it wants, as text. */
static ek_status generate(ek_session *s, const char *prompt, int add_special, const ek_sampling *sampling,
                          ek_piece_fn on_piece, void *user) {
    if (!s || !prompt) {
        ek_set_error("ek_generate: NULL session or prompt");
        return EK_ERR_INVALID;
    }
    const ek_vocab *v = vocab_of(s->m, "ek_generate");
    if (!v) return EK_ERR_INVALID;
    ek_sampling sp = sampling ? *sampling : ek_sampling_default();
    if (sp.max_tokens == 0) sp.max_tokens = 256;
    const double t0 = now_ms();
    double load_ms = s->stats.load_ms;
    memset(&s->stats, 0, sizeof s->stats);
    s->stats.load_ms = load_ms;

    size_t len = strlen(prompt);
    int32_t n = 0, cap = (int32_t)(len < 1024 ? len + 16 : 1024);
    int32_t *toks = malloc((size_t)cap * sizeof *toks);
    ek_status st = toks ? ek_vocab_tokenize(v, prompt, len, add_special, 1, toks, cap, &n) : EK_ERR_NOMEM;
    if (st == EK_ERR_BUFFER) {
        free(toks);
        cap = n;
        toks = malloc((size_t)cap * sizeof *toks);
        st = toks ? ek_vocab_tokenize(v, prompt, len, add_special, 1, toks, cap, &n) : EK_ERR_NOMEM;
    }
    if (st != EK_OK) {
        if (st == EK_ERR_NOMEM) ek_set_error("ek_generate: out of memory");
        free(toks);
        return st;
    }
    if (n == 0) {
        free(toks);
        ek_set_error("ek_generate: the prompt has no tokens (and the model adds no BOS)");
        return EK_ERR_INVALID;
    }
    ek_sampler *smp = NULL;
    st = ek_sampler_new(&sp, &smp);
    if (st != EK_OK) {
        free(toks);
        return st;
    }
    /* reuse the cached prefix; the last prompt token always runs, for its logits */
    int32_t common = 0;
    while (common < n && common < s->n_past && s->tokens[common] == toks[common]) common++;
    if (common == n) common--;
    s->stats.n_reused = common;
    st = ek_decode(s, toks + common, n - common, common, 0);
    free(toks);

    pending out = {0};
    float *masked = NULL;
    const int32_t nv = s->m->n_vocab;
    int32_t emitted = 0, stopped = 0;
    while (st == EK_OK && emitted < sp.max_tokens) {
        const float *logits = ek_logits(s, -1);
        if (sp.ignore_eos) { /* stop tokens can never be drawn */
            if (!masked && !(masked = malloc((size_t)nv * sizeof *masked))) {
                st = EK_ERR_NOMEM;
                ek_set_error("ek_generate: out of memory");
                break;
            }
            for (int32_t i = 0; i < nv; i++) masked[i] = ek_vocab_is_eog(v, i) ? -INFINITY : logits[i];
            logits = masked;
        }
        int32_t t = ek_sampler_sample(smp, logits, nv, s->tokens, s->n_past);
        if (t < 0) {
            st = EK_ERR_INVALID;
            break;
        }
        if (emitted == 0) s->stats.first_token_ms = now_ms() - t0;
        if (!sp.ignore_eos && ek_vocab_is_eog(v, t)) break;
        emitted++;
        char small[256], *piece = small;
        int32_t pn = 0;
        st = ek_vocab_token_to_piece(v, t, 0, piece, sizeof small, &pn);
        if (st == EK_ERR_BUFFER && (piece = malloc((size_t)pn)) != NULL) /* a very long token */
            st = ek_vocab_token_to_piece(v, t, 0, piece, pn, &pn);
        if (!piece) {
            st = EK_ERR_NOMEM;
            ek_set_error("ek_generate: out of memory");
        }
        if (st != EK_OK) {
            if (piece != small) free(piece);
            break;
        }
        /* as llama.cpp's detokenizer, and so the Python side, gives the answer: without the prefix space */
        int skip = emitted == 1 && pn > 0 && piece[0] == ' ' && ek_vocab_add_space_prefix(v);
        int added = pending_add(&out, piece + skip, (size_t)(pn - skip));
        if (piece != small) free(piece);
        if (added) {
            st = EK_ERR_NOMEM;
            ek_set_error("ek_generate: out of memory");
            break;
        }
        if ((stopped = pending_emit(&out, on_piece, user, 0))) break;
        if (atomic_exchange(&s->abort, 0)) {
            st = EK_ABORTED;
            ek_set_error("ek_generate: aborted");
            break;
        }
        if (emitted == sp.max_tokens) break;
        if (s->n_past >= s->p.n_ctx) {
            st = EK_CONTEXT_FULL;
            ek_set_error("ek_generate: the context of %d positions is full", s->p.n_ctx);
            break;
        }
        st = ek_decode(s, &t, 1, s->n_past, 0);
    }
    if (out.n && st >= 0 && !stopped) pending_emit(&out, on_piece, user, 1);
    free(out.s);
    free(masked);
    ek_sampler_free(smp);
    return st;
}

ek_status ek_generate(ek_session *s, const char *prompt, const ek_sampling *sampling, ek_piece_fn on_piece,
                      void *user) {
    return generate(s, prompt, 1, sampling, on_piece, user);
}

ek_status ek_chat(ek_session *s, const ek_message *messages, size_t n, const ek_sampling *sampling,
                  ek_piece_fn on_piece, void *user) {
    if (!s) {
        ek_set_error("ek_chat: NULL session");
        return EK_ERR_INVALID;
    }
    size_t len = 0;
    char small[1];
    ek_status st = ek_chat_format(s->m, messages, n, 1, small, 0, &len);
    if (st != EK_ERR_BUFFER && st != EK_OK) return st;
    char *text = malloc(len + 1);
    if (!text) {
        ek_set_error("ek_chat: out of memory");
        return EK_ERR_NOMEM;
    }
    st = ek_chat_format(s->m, messages, n, 1, text, len + 1, &len);
    if (st == EK_OK) st = generate(s, text, 0, sampling, on_piece, user);
    free(text);
    return st;
}
