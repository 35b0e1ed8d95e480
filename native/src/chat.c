/* Chat templates: a GGUF's tokenizer.chat_template is Jinja, which this runtime does not interpret.
 * Instead the template is recognised as one of the families edgekit's converter meets, by substrings
 * (as llama.cpp's llm_chat_detect_template does), and that family is rendered here byte for byte as
 * Jinja renders the known variants (tests/chat_templates/ holds them). Anything else: EK_ERR_UNSUPPORTED. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "unicode.h"
#include "vocab.h"

enum family { CHATML = 1, LLAMA3, LLAMA31, LLAMA2, MISTRAL, INST_TRIM, PHI3, PHI3_OLD, ZEPHYR };

typedef struct {
    int family;
    int bos;             /* the template writes bos_token first */
    int trim;            /* message content goes through | trim (Python's str.strip) */
    int any_role;        /* Phi-3 style: '<|' + role + '|>' for every role, not only the three */
    int skip_empty_system;
    int eos_without_prompt; /* Phi-3: eos_token closes a conversation rendered without a generation prompt */
    char *default_system;   /* ChatML: the system turn written when the conversation has none */
    const char *end;        /* Zephyr: the end-of-turn text (a literal, or NULL: eos_token) */
    char date[32];          /* Llama 3.1+: "Today Date: ..." (the template's literal, or today's, as strftime_now) */
} style;

static int has(const char *t, const char *s) { return strstr(t, s) != NULL; }

/* ChatML templates that add a system turn when there is none (Qwen2, SmolLM2) hold it as one string
 * literal: '<|im_start|>system\n<text><|im_end|>\n' (the newline escaped or not). Returns the unescaped
 * text, or NULL. */
static char *default_system(const char *t) {
    static const char open[] = "<|im_start|>system";
    for (const char *p = strstr(t, open); p; p = strstr(p + 1, open)) {
        const char *s = p + sizeof open - 1;
        if (s[0] == '\\' && s[1] == 'n') s += 2;
        else if (s[0] == '\n') s += 1;
        else continue;
        const char *e = strstr(s, "<|im_end|>");
        if (!e || e == s) continue;
        size_t n = (size_t)(e - s);
        if (memchr(s, '\'', n) || memchr(s, '"', n) || memchr(s, '{', n)) continue; /* not one literal */
        char *out = malloc(n + 1);
        if (!out) return NULL;
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            if (s[i] == '\\' && i + 1 < n) {
                char c = s[++i];
                out[m++] = c == 'n' ? '\n' : c == 't' ? '\t' : c;
            } else {
                out[m++] = s[i];
            }
        }
        out[m] = 0;
        return out;
    }
    return NULL;
}

static int detect(const char *t, style *st) {
    memset(st, 0, sizeof *st);
    st->bos = has(t, "bos_token");
    st->trim = has(t, "trim") || has(t, "strip()");
    if (has(t, "<|im_start|>")) {
        if (has(t, "<|im_sep|>") || has(t, "<think>")) return -1; /* Phi-4, reasoning models */
        st->family = CHATML;
        st->bos = 0;
        if (has(t, "role'] != 'system'") || has(t, "role\"] != \"system\"") || has(t, "role != 'system'") ||
            has(t, "messages[0]['role'] == 'system'")) {
            st->default_system = default_system(t);
        }
        return 0;
    }
    if (has(t, "[INST]")) {
        if (has(t, "<<SYS>>") && has(t, "bos_token + '[INST] '")) st->family = LLAMA2;
        else if (has(t, "'[INST] ' + message['content'] + ' [/INST]'") && has(t, "message['content'] + eos_token"))
            st->family = MISTRAL;
        else if (has(t, "[INST] {{ message['content'] | trim }} [/INST]")) st->family = INST_TRIM;
        else return -1;
        return 0;
    }
    if (has(t, "<|assistant|>") && has(t, "<|end|>")) {
        st->family = has(t, "'<|end|>' + '\\n' + '<|assistant|>' + '\\n'") ? PHI3_OLD : PHI3;
        st->any_role = has(t, "message['role'] + '|>");
        st->skip_empty_system = has(t, "'system' and message['content']");
        st->eos_without_prompt = has(t, "{% else %}{{ eos_token }}");
        return 0;
    }
    if (has(t, "<|user|>") && has(t, "<|assistant|>") && (has(t, "<|endoftext|>") || has(t, "eos_token"))) {
        st->family = ZEPHYR;
        st->end = has(t, "<|endoftext|>") ? "<|endoftext|>" : NULL;
        return 0;
    }
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) {
        if (has(t, "Cutting Knowledge Date: December 2023\\n") && has(t, "Today Date: \" + date_string")) {
            /* Llama 3.1 / 3.2: a system turn with dates first; tools are not rendered here */
            st->family = LLAMA31;
            static const char lit[] = "set date_string = \"";
            const char *d = strstr(t, lit), *e = d ? strchr(d + sizeof lit - 1, '"') : NULL;
            if (has(t, "strftime_now")) { /* as edgekit's Python side defines it: today, local time */
                time_t now = time(NULL);
                struct tm tm;
                localtime_r(&now, &tm);
                strftime(st->date, sizeof st->date, "%d %b %Y", &tm);
            } else if (d && e && (size_t)(e - d) - (sizeof lit - 1) < sizeof st->date) {
                memcpy(st->date, d + sizeof lit - 1, (size_t)(e - d) - (sizeof lit - 1));
            } else {
                return -1;
            }
            return 0;
        }
        if (has(t, "Cutting Knowledge Date") || has(t, "tools")) return -1;
        st->family = LLAMA3;
        return 0;
    }
    return -1;
}

/* ---- output ---- */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s, size_t n) {
    if (b->oom || !n) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void puts_(sbuf *b, const char *s) {
    if (s) put(b, s, strlen(s));
}

static int py_space(uint32_t c) { /* Python's str.isspace, which Jinja's trim and str.strip() use */
    return ek_cp_is_space(c) || (c >= 0x1C && c <= 0x1F);
}

/* s with Python's strip() applied, when trim is set. */
static void put_content(sbuf *b, const char *s, int trim) {
    size_t n = strlen(s);
    if (!trim) {
        put(b, s, n);
        return;
    }
    size_t start = 0, pos = 0;
    while (pos < n) {
        size_t at = pos;
        if (!py_space(ek_utf8_next((const uint8_t *)s, n, &pos))) {
            start = at;
            break;
        }
        start = pos;
    }
    size_t end = n;
    while (end > start) {
        size_t lead = end - 1;
        while (lead > start && ((uint8_t)s[lead] & 0xC0) == 0x80) lead--;
        size_t p2 = lead;
        if (!py_space(ek_utf8_next((const uint8_t *)s, end, &p2))) break;
        end = lead;
    }
    put(b, s + start, end - start);
}

static int is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* Llama 2 / Mistral templates refuse conversations whose roles do not alternate user, assistant, ... */
static int alternates(const ek_message *m, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (is(m[i].role, "user") != (i % 2 == 0)) return 0;
    return 1;
}

static ek_status render(const style *st, const char *bos, const char *eos, const ek_message *m, size_t n, int agp,
                        sbuf *b) {
    if (st->bos && st->family != LLAMA2) puts_(b, bos);
    switch (st->family) {
    case CHATML:
        if (st->default_system && n > 0 && !is(m[0].role, "system")) {
            puts_(b, "<|im_start|>system\n");
            puts_(b, st->default_system);
            puts_(b, "<|im_end|>\n");
        }
        for (size_t i = 0; i < n; i++) {
            puts_(b, "<|im_start|>");
            puts_(b, m[i].role);
            puts_(b, "\n");
            put_content(b, m[i].content, 0);
            puts_(b, "<|im_end|>\n");
        }
        if (agp) puts_(b, "<|im_start|>assistant\n");
        break;
    case LLAMA3:
        for (size_t i = 0; i < n; i++) {
            puts_(b, "<|start_header_id|>");
            puts_(b, m[i].role);
            puts_(b, "<|end_header_id|>\n\n");
            put_content(b, m[i].content, st->trim);
            puts_(b, "<|eot_id|>");
        }
        if (agp) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case LLAMA31: {
        size_t from = n > 0 && is(m[0].role, "system");
        puts_(b, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ");
        puts_(b, st->date);
        puts_(b, "\n\n");
        put_content(b, from ? m[0].content : "", 1);
        puts_(b, "<|eot_id|>");
        for (size_t i = from; i < n; i++) {
            if (is(m[i].role, "tool") || is(m[i].role, "ipython")) {
                ek_set_error("tool messages are not supported by the native chat templates");
                return EK_ERR_UNSUPPORTED;
            }
            puts_(b, "<|start_header_id|>");
            puts_(b, m[i].role);
            puts_(b, "<|end_header_id|>\n\n");
            put_content(b, m[i].content, 1);
            puts_(b, "<|eot_id|>");
        }
        if (agp) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    }
    case LLAMA2: {
        const char *sys = n > 0 && is(m[0].role, "system") ? m[0].content : NULL;
        const ek_message *loop = sys ? m + 1 : m;
        size_t nl = sys ? n - 1 : n;
        if (!alternates(loop, nl)) goto alternate;
        for (size_t i = 0; i < nl; i++) {
            sbuf c = {0};
            if (i == 0 && sys) {
                puts_(&c, "<<SYS>>\n");
                puts_(&c, sys);
                puts_(&c, "\n<</SYS>>\n\n");
            }
            puts_(&c, loop[i].content);
            if (c.oom) b->oom = 1;
            if (is(loop[i].role, "user")) {
                puts_(b, bos);
                puts_(b, "[INST] ");
                put_content(b, c.s ? c.s : "", 1);
                puts_(b, " [/INST]");
            } else if (is(loop[i].role, "assistant")) {
                puts_(b, " ");
                put_content(b, c.s ? c.s : "", 1);
                puts_(b, " ");
                puts_(b, eos);
            }
            free(c.s);
        }
        break;
    }
    case MISTRAL:
        if (!alternates(m, n)) goto alternate;
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "user")) {
                puts_(b, "[INST] ");
                puts_(b, m[i].content);
                puts_(b, " [/INST]");
            } else if (is(m[i].role, "assistant")) {
                puts_(b, m[i].content);
                puts_(b, eos);
            } else {
                ek_set_error("the chat template supports only user and assistant roles (got '%s')", m[i].role);
                return EK_ERR_INVALID;
            }
        }
        break;
    case INST_TRIM:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "user")) {
                puts_(b, "[INST] ");
                put_content(b, m[i].content, 1);
                puts_(b, " [/INST]");
            } else if (is(m[i].role, "assistant")) {
                puts_(b, " ");
                put_content(b, m[i].content, 1);
                puts_(b, eos);
            } else {
                put_content(b, m[i].content, 1);
                puts_(b, "\n\n");
            }
        }
        break;
    case PHI3:
        for (size_t i = 0; i < n; i++) {
            int known = is(m[i].role, "system") || is(m[i].role, "user") || is(m[i].role, "assistant");
            if (!st->any_role && !known) continue;
            if (st->skip_empty_system && is(m[i].role, "system") && !m[i].content[0]) continue;
            puts_(b, "<|");
            puts_(b, m[i].role);
            puts_(b, "|>\n");
            puts_(b, m[i].content);
            puts_(b, "<|end|>\n");
        }
        if (agp) puts_(b, "<|assistant|>\n");
        else if (st->eos_without_prompt) puts_(b, eos);
        break;
    case PHI3_OLD: /* Phi-3-mini's first template: every user turn opens the assistant's; no system turn */
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "user")) {
                puts_(b, "<|user|>\n");
                puts_(b, m[i].content);
                puts_(b, "<|end|>\n<|assistant|>\n");
            } else if (is(m[i].role, "assistant")) {
                puts_(b, m[i].content);
                puts_(b, "<|end|>\n");
            }
        }
        break;
    case ZEPHYR:
        for (size_t i = 0; i < n; i++) {
            if (is(m[i].role, "user") || is(m[i].role, "system") || is(m[i].role, "assistant")) {
                puts_(b, "<|");
                puts_(b, m[i].role);
                puts_(b, "|>\n");
                puts_(b, m[i].content);
                puts_(b, st->end ? st->end : eos);
                puts_(b, "\n");
            }
            if (i + 1 == n && agp) puts_(b, "<|assistant|>\n");
        }
        break;
    }
    return EK_OK;
alternate:
    ek_set_error("the chat template needs roles alternating user/assistant/user/...");
    return EK_ERR_INVALID;
}

ek_status ek_vocab_chat_format(const ek_vocab *v, const ek_message *m, size_t n, int agp, char *buf, size_t cap,
                               size_t *n_out) {
    if (!v || (n && !m) || !n_out || (cap && !buf)) {
        ek_set_error("ek_chat_format: bad argument");
        return EK_ERR_INVALID;
    }
    for (size_t i = 0; i < n; i++)
        if (!m[i].role || !m[i].content) {
            ek_set_error("ek_chat_format: message %zu has no role or content", i);
            return EK_ERR_INVALID;
        }
    const char *t = ek_vocab_chat_template(v);
    if (!t) {
        ek_set_error("the model has no chat template (tokenizer.chat_template)");
        return EK_ERR_UNSUPPORTED;
    }
    style st;
    if (detect(t, &st)) {
        ek_set_error("unsupported chat template (known: ChatML/Qwen, Llama 3, Llama 2/Mistral [INST], Phi-3, Zephyr)");
        return EK_ERR_UNSUPPORTED;
    }
    /* bos_token / eos_token: the tokens' text ("" without one, as edgekit's Python side passes) */
    const char *bos = ek_vocab_token_text(v, ek_vocab_bos(v), NULL), *eos = ek_vocab_token_text(v, ek_vocab_eos(v), NULL);
    if (!bos) bos = "";
    if (!eos) eos = "";
    sbuf b = {0};
    ek_status rc = render(&st, bos, eos, m, n, agp, &b);
    free(st.default_system);
    if (rc == EK_OK && b.oom) {
        ek_set_error("ek_chat_format: out of memory");
        rc = EK_ERR_NOMEM;
    }
    if (rc == EK_OK) {
        *n_out = b.n;
        if (b.n + 1 > cap) {
            ek_set_error("ek_chat_format: %zu bytes do not fit in %zu", b.n + 1, cap);
            rc = EK_ERR_BUFFER;
        } else {
            if (b.n) memcpy(buf, b.s, b.n);
            buf[b.n] = 0;
        }
    }
    free(b.s);
    return rc;
}
