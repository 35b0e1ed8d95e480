/* ek_model: map a GGUF (gguf.c validates the container), read the hyperparameters the way
 * llama.cpp does, and find and check every weight of the architecture: name, shape and type. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "kernels.h"
#include "runtime.h"
#include "vocab_gguf.h"

int ek_abi_version(void) { return EK_ABI_VERSION; }

const char *ek_status_name(int status) {
    switch (status) {
    case EK_OK: return "ok";
    case EK_ABORTED: return "aborted";
    case EK_CONTEXT_FULL: return "context full";
    case EK_ERR_INVALID: return "invalid argument";
    case EK_ERR_IO: return "i/o error";
    case EK_ERR_FORMAT: return "format error";
    case EK_ERR_UNSUPPORTED: return "unsupported";
    case EK_ERR_NOMEM: return "out of memory";
    case EK_ERR_BUFFER: return "buffer too small";
    default: return "unknown status";
    }
}

void ek_dequant_row(int type, const void *src, float *y, int64_t n) {
    switch (type) {
    case EK_TYPE_F32: memcpy(y, src, (size_t)n * 4); return;
    case EK_TYPE_F16:
        for (int64_t i = 0; i < n; i++) y[i] = ek_fp16_to_fp32(((const uint16_t *)src)[i]);
        return;
    case EK_TYPE_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = ek_bf16_to_fp32(((const uint16_t *)src)[i]);
        return;
    case EK_TYPE_Q8_0: {
        const ek_block_q8_0 *b = src;
        for (int64_t i = 0; i < n / 32; i++) {
            const float d = ek_fp16_to_fp32(b[i].d);
            for (int k = 0; k < 32; k++) y[32 * i + k] = d * b[i].qs[k];
        }
        return;
    }
    case EK_TYPE_Q5_0:
    case EK_TYPE_Q5_1: {
        const int is1 = type == EK_TYPE_Q5_1;
        const size_t bs = is1 ? sizeof(ek_block_q5_1) : sizeof(ek_block_q5_0);
        for (int64_t i = 0; i < n / 32; i++) {
            const uint8_t *p = (const uint8_t *)src + (size_t)i * bs;
            uint16_t dh, mh = 0;
            uint32_t qh;
            memcpy(&dh, p, 2);
            if (is1) memcpy(&mh, p + 2, 2);
            memcpy(&qh, p + (is1 ? 4 : 2), 4);
            const uint8_t *qs = p + (is1 ? 8 : 6);
            const float d = ek_fp16_to_fp32(dh), m = is1 ? ek_fp16_to_fp32(mh) : 0.0f;
            for (int j = 0; j < 16; j++) {
                const int q0 = (qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4);
                const int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
                y[32 * i + j] = is1 ? d * q0 + m : d * (q0 - 16);
                y[32 * i + j + 16] = is1 ? d * q1 + m : d * (q1 - 16);
            }
        }
        return;
    }
    case EK_TYPE_Q4_K: {
        const ek_block_q4_k *b = src;
        for (int64_t i = 0; i < n / EK_QK_K; i++, y += EK_QK_K) {
            uint8_t sc[8], mn[8];
            ek_unpack_q4_k_scales(b[i].scales, sc, mn);
            const float d = ek_fp16_to_fp32(b[i].d), dmin = ek_fp16_to_fp32(b[i].dmin);
            for (int c = 0; c < 4; c++) {
                const uint8_t *q = b[i].qs + 32 * c;
                const float d1 = d * sc[2 * c], m1 = dmin * mn[2 * c];
                const float d2 = d * sc[2 * c + 1], m2 = dmin * mn[2 * c + 1];
                for (int l = 0; l < 32; l++) {
                    y[64 * c + l] = d1 * (q[l] & 0xF) - m1;
                    y[64 * c + l + 32] = d2 * (q[l] >> 4) - m2;
                }
            }
        }
        return;
    }
    case EK_TYPE_Q6_K: {
        const ek_block_q6_k *b = src;
        for (int64_t i = 0; i < n / EK_QK_K; i++) {
            const float d = ek_fp16_to_fp32(b[i].d);
            const uint8_t *ql = b[i].ql, *qh = b[i].qh;
            const int8_t *sc = b[i].scales;
            for (int c = 0; c < 2; c++, ql += 64, qh += 32, sc += 8, y += 128) {
                for (int l = 0; l < 32; l++) {
                    const int is = l / 16;
                    y[l] = d * sc[is] * (((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                    y[l + 32] = d * sc[is + 2] * (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                    y[l + 64] = d * sc[is + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                    y[l + 96] = d * sc[is + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                }
            }
        }
        return;
    }
    default: memset(y, 0, (size_t)n * 4); return;
    }
}

/* ---- hyperparameters ---- */

typedef struct {
    ek_model *m;
    ek_status st;
} loader;

/* Record the first problem (the file's path, then the message); returns 0 for the callers' results. */
__attribute__((format(printf, 3, 4))) static int fail(loader *L, ek_status st, const char *fmt, ...) {
    if (L->st == EK_OK) {
        char msg[384];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        ek_set_error("%s: %s", L->m->path, msg);
        L->st = st;
    }
    return 0;
}

/* {arch}.suffix as an integer in lo..hi; def if absent and def >= 0, else an error. */
static int32_t hp_int(loader *L, const char *suffix, int64_t def, int64_t lo, int64_t hi) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->info.arch, suffix);
    int64_t v = def;
    const int r = ek_gguf_int(&L->m->g, key, &v);
    if (r < 0) {
        const ek_gguf_kv *kv = ek_gguf_find(&L->m->g, key);
        if (kv->type == GG_ARRAY) return fail(L, EK_ERR_UNSUPPORTED, "%s: per-layer values are not supported", key);
        return fail(L, EK_ERR_FORMAT, "%s must be an integer", key);
    }
    if (r == 0 && def < 0) return fail(L, EK_ERR_FORMAT, "%s is missing", key);
    if (v < lo || v > hi) return fail(L, EK_ERR_FORMAT, "%s = %lld is out of range", key, (long long)v);
    return (int32_t)v;
}

static float hp_float(loader *L, const char *suffix, double def, double lo, double hi) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", L->m->info.arch, suffix);
    double v = def;
    const int r = ek_gguf_float(&L->m->g, key, &v);
    if (r < 0) return (float)fail(L, EK_ERR_FORMAT, "%s must be a number", key);
    if (r == 0 && isnan(def)) return (float)fail(L, EK_ERR_FORMAT, "%s is missing", key);
    if (!(v >= lo && v <= hi)) return (float)fail(L, EK_ERR_FORMAT, "%s = %g is out of range", key, v);
    return (float)v;
}

static int32_t token_id(const ek_model *m, const char *key) {
    int64_t v;
    return ek_gguf_int(&m->g, key, &v) == 1 && v >= 0 && v < m->n_vocab ? (int32_t)v : -1;
}

/* ---- weights ---- */

/* The tensor `name` (a printf pattern over the layer index) with exactly ne0 x ne1 values (ne1 = 0:
 * a vector); NULL if absent and optional. Vectors (norms, biases) must be F32. */
static const ek_gguf_tensor *tensor(loader *L, const char *fmt, int il, int64_t ne0, int64_t ne1, int optional) {
    char name[EK_GGUF_MAX_NAME + 16];
    snprintf(name, sizeof name, fmt, il);
    const ek_gguf_tensor *t = ek_gguf_tensor_find(&L->m->g, name);
    if (t == NULL) {
        if (!optional) fail(L, EK_ERR_FORMAT, "tensor %s is missing", name);
        return NULL;
    }
    const int dims = ne1 ? 2 : 1;
    if (t->n_dims != dims || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        fail(L, EK_ERR_FORMAT, "tensor %s has the wrong shape (expected %lld x %lld)", name, (long long)ne0,
             (long long)(ne1 ? ne1 : 1));
        return NULL;
    }
    if (!ne1 && t->type != EK_TYPE_F32) {
        fail(L, EK_ERR_UNSUPPORTED, "tensor %s is %s; vectors must be F32", name, ek_type_name(t->type));
        return NULL;
    }
    return t;
}

static const float *vec(loader *L, const char *fmt, int il, int64_t n, int optional) {
    const ek_gguf_tensor *t = tensor(L, fmt, il, n, 0, optional);
    return t ? (const float *)t->data : NULL;
}

static ek_weight mat(loader *L, const char *fmt, int il, int64_t ncols, int64_t nrows, int optional) {
    const ek_gguf_tensor *t = tensor(L, fmt, il, ncols, nrows, optional);
    if (t == NULL) return (ek_weight){0};
    return (ek_weight){t->data, t->type, ncols, nrows};
}

static void load_hparams(loader *L) {
    ek_model *m = L->m;
    const int32_t big = 1 << 20;
    m->n_ctx_train = hp_int(L, "context_length", -1, 1, INT32_MAX);
    m->n_embd = hp_int(L, "embedding_length", -1, 1, big);
    m->n_layer = hp_int(L, "block_count", -1, 1, 4096);
    m->n_ff = hp_int(L, "feed_forward_length", -1, 1, big);
    m->n_head = hp_int(L, "attention.head_count", -1, 1, 4096);
    m->n_head_kv = hp_int(L, "attention.head_count_kv", m->n_head, 1, m->n_head > 0 ? m->n_head : 1);
    if (L->st != EK_OK) return;
    if (m->n_head % m->n_head_kv != 0)
        fail(L, EK_ERR_FORMAT, "head_count (%d) is not a multiple of head_count_kv (%d)", m->n_head, m->n_head_kv);
    else if (m->n_head / m->n_head_kv > EK_MAX_GROUP)
        fail(L, EK_ERR_UNSUPPORTED, "%d query heads per kv head (head_count %d, head_count_kv %d): at most %d",
             m->n_head / m->n_head_kv, m->n_head, m->n_head_kv, EK_MAX_GROUP);
    m->head_dim = hp_int(L, "attention.key_length", m->n_embd / m->n_head, 2, 65536);
    const int32_t vdim = hp_int(L, "attention.value_length", m->head_dim, 1, 65536);
    if (L->st == EK_OK && vdim != m->head_dim)
        fail(L, EK_ERR_UNSUPPORTED, "value_length (%d) != key_length (%d)", vdim, m->head_dim);
    m->n_rot = hp_int(L, "rope.dimension_count", m->head_dim, 2, m->head_dim > 2 ? m->head_dim : 2);
    if (L->st == EK_OK && m->n_rot % 2 != 0) fail(L, EK_ERR_FORMAT, "rope.dimension_count %d is odd", m->n_rot);
    m->n_swa = hp_int(L, "attention.sliding_window", 0, 0, INT32_MAX);
    m->rms_eps = hp_float(L, "attention.layer_norm_rms_epsilon", NAN, 0.0, 1.0);
    m->rope_base = hp_float(L, "rope.freq_base", 10000.0, 1e-6, 1e30);
    const float factor = hp_float(L, "rope.scaling.factor", 0.0, 0.0, 1e6);
    m->rope_freq_scale = factor > 0.0f ? 1.0f / factor : 1.0f;
    char key[128];
    snprintf(key, sizeof key, "%s.rope.scaling.type", m->info.arch);
    const char *scaling = ek_gguf_str(&m->g, key);
    if (scaling != NULL && strcmp(scaling, "none") != 0 && strcmp(scaling, "linear") != 0)
        fail(L, EK_ERR_UNSUPPORTED, "RoPE scaling %s is not supported (none, linear, llama3)", scaling);
}

static void load_weights(loader *L) {
    ek_model *m = L->m;
    const int64_t e = m->n_embd, hd = m->head_dim, nq = (int64_t)m->n_head * hd, nkv = (int64_t)m->n_head_kv * hd;
    const int phi3 = strcmp(m->info.arch, "phi3") == 0, qwen2 = strcmp(m->info.arch, "qwen2") == 0;
    const int qwen3 = strcmp(m->info.arch, "qwen3") == 0;
    const ek_gguf_tensor *te = ek_gguf_tensor_find(&m->g, "token_embd.weight");
    if (te == NULL || te->n_dims != 2 || te->ne[0] != e || te->ne[1] > INT32_MAX) {
        fail(L, EK_ERR_FORMAT, "tensor token_embd.weight is missing or not %lld x n_vocab", (long long)e);
        return;
    }
    m->n_vocab = (int32_t)te->ne[1];
    m->tok_embd = mat(L, "token_embd.weight", 0, e, m->n_vocab, 0);
    m->output_norm = vec(L, "output_norm.weight", 0, e, 0);
    m->output = mat(L, "output.weight", 0, e, m->n_vocab, 1);
    if (m->output.data == NULL) m->output = m->tok_embd; /* tied embeddings */
    m->rope_freqs = vec(L, "rope_freqs.weight", 0, m->n_rot / 2, 1);
    m->layers = calloc((size_t)m->n_layer, sizeof *m->layers);
    if (m->layers == NULL) {
        fail(L, EK_ERR_NOMEM, "out of memory");
        return;
    }
    for (int il = 0; il < m->n_layer && L->st == EK_OK; il++) {
        ek_layer *l = &m->layers[il];
        l->attn_norm = vec(L, "blk.%d.attn_norm.weight", il, e, 0);
        l->ffn_norm = vec(L, "blk.%d.ffn_norm.weight", il, e, 0);
        if (phi3) {
            l->qkv = mat(L, "blk.%d.attn_qkv.weight", il, e, nq + 2 * nkv, 0);
        } else {
            l->q = mat(L, "blk.%d.attn_q.weight", il, e, nq, 0);
            l->k = mat(L, "blk.%d.attn_k.weight", il, e, nkv, 0);
            l->v = mat(L, "blk.%d.attn_v.weight", il, e, nkv, 0);
        }
        l->o = mat(L, "blk.%d.attn_output.weight", il, nq, e, 0);
        l->bq = vec(L, "blk.%d.attn_q.bias", il, nq, !qwen2);
        l->bk = vec(L, "blk.%d.attn_k.bias", il, nkv, !qwen2);
        l->bv = vec(L, "blk.%d.attn_v.bias", il, nkv, !qwen2);
        l->q_norm = vec(L, "blk.%d.attn_q_norm.weight", il, hd, !qwen3);
        l->k_norm = vec(L, "blk.%d.attn_k_norm.weight", il, hd, !qwen3);
        if (phi3) {
            l->up = mat(L, "blk.%d.ffn_up.weight", il, e, 2 * (int64_t)m->n_ff, 0);
        } else {
            l->gate = mat(L, "blk.%d.ffn_gate.weight", il, e, m->n_ff, 0);
            l->up = mat(L, "blk.%d.ffn_up.weight", il, e, m->n_ff, 0);
        }
        l->down = mat(L, "blk.%d.ffn_down.weight", il, m->n_ff, e, 0);
    }
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

ek_status ek_model_load(const char *path, const ek_model_params *params, ek_model **out) {
    (void)params;
    const double t0 = now_ms();
    if (path == NULL || out == NULL) {
        ek_set_error("ek_model_load: NULL path or out");
        return EK_ERR_INVALID;
    }
    *out = NULL;
    ek_model *m = calloc(1, sizeof *m);
    if (m == NULL || (m->path = strdup(path)) == NULL) {
        free(m);
        ek_set_error("%s: out of memory", path);
        return EK_ERR_NOMEM;
    }
    ek_status st = ek_gguf_open(path, &m->g);
    if (st != EK_OK) {
        ek_model_free(m);
        return st;
    }
    loader L = {m, EK_OK};
    m->info.arch = ek_gguf_str(&m->g, "general.architecture");
    m->info.name = ek_gguf_str(&m->g, "general.name");
    if (m->info.name == NULL) m->info.name = "";
    if (m->info.arch == NULL) {
        fail(&L, EK_ERR_FORMAT, "general.architecture is missing");
    } else if (strcmp(m->info.arch, "llama") != 0 && strcmp(m->info.arch, "qwen2") != 0 &&
               strcmp(m->info.arch, "qwen3") != 0 && strcmp(m->info.arch, "phi3") != 0) {
        fail(&L, EK_ERR_UNSUPPORTED, "architecture %s is not supported (llama, qwen2, qwen3, phi3)", m->info.arch);
    }
    if (L.st == EK_OK) load_hparams(&L);
    if (L.st == EK_OK) load_weights(&L);
    if (L.st == EK_OK) L.st = ek_vocab_from_gguf(&m->g, path, &m->vocab);
    if (L.st == EK_OK && m->vocab && ek_vocab_n_tokens(m->vocab) != m->n_vocab)
        fail(&L, EK_ERR_FORMAT, "tokenizer.ggml.tokens has %d tokens but token_embd.weight %d rows",
             ek_vocab_n_tokens(m->vocab), m->n_vocab);
    if (L.st != EK_OK) {
        ek_model_free(m);
        return L.st;
    }
    /* llama.cpp's llama_model_rope_type: NORM for llama, NEOX for qwen2, qwen3 and phi3 */
    m->rope_neox = strcmp(m->info.arch, "llama") != 0;
    ek_model_info *info = &m->info;
    info->n_vocab = m->n_vocab;
    info->n_ctx_train = m->n_ctx_train;
    info->n_embd = m->n_embd;
    info->n_layer = m->n_layer;
    info->n_head = m->n_head;
    info->n_head_kv = m->n_head_kv;
    info->n_ff = m->n_ff;
    for (uint64_t i = 0; i < m->g.n_tensors; i++) {
        int64_t c = 1;
        for (int d = 0; d < m->g.tensors[i].n_dims; d++) c *= m->g.tensors[i].ne[d];
        info->n_params += c;
    }
    info->file_bytes = m->g.size;
    info->bos = token_id(m, "tokenizer.ggml.bos_token_id");
    info->eos = token_id(m, "tokenizer.ggml.eos_token_id");
    info->eot = token_id(m, "tokenizer.ggml.eot_token_id");
    int64_t add_bos;
    const char *tok_model = ek_gguf_str(&m->g, "tokenizer.ggml.model");
    if (ek_gguf_int(&m->g, "tokenizer.ggml.add_bos_token", &add_bos) == 1) {
        info->add_bos = add_bos != 0;
    } else { /* llama.cpp's default: SentencePiece models add bos, BPE ones do not */
        info->add_bos = tok_model != NULL && strcmp(tok_model, "llama") == 0;
    }
    if (m->vocab) info->add_bos = ek_vocab_add_bos(m->vocab); /* the tokenizer's own rule */
    m->load_ms = now_ms() - t0;
    *out = m;
    return EK_OK;
}

void ek_model_free(ek_model *m) {
    if (m == NULL) return;
    ek_vocab_free(m->vocab);
    ek_gguf_close(&m->g);
    free(m->layers);
    free(m->path);
    free(m);
}

ek_status ek_model_get_info(const ek_model *m, ek_model_info *info) {
    if (m == NULL || info == NULL) {
        ek_set_error("ek_model_get_info: NULL model or info");
        return EK_ERR_INVALID;
    }
    *info = m->info;
    return EK_OK;
}

const char *ek_model_meta(const ek_model *m, const char *key) {
    if (m == NULL || key == NULL) return NULL;
    const ek_gguf_kv *kv = ek_gguf_find(&m->g, key);
    return kv ? kv->text : NULL;
}
