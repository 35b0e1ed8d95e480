/* Internals of the runtime shared by model.c, session.c and the text side (tokenizer, sampler,
 * chat): the model's hyperparameters and weights, and a session's KV cache, scratch and stats. */
#ifndef EDGEKIT_RUNTIME_H
#define EDGEKIT_RUNTIME_H

#include <stdatomic.h>

#include "edgekit.h"
#include "gguf.h"

/* Most query heads sharing one kv head (GQA group) the attention supports: its per-group arrays are on
 * the stack. Llama 3 and Qwen2.5 use 4-7, multi-query models up to 32 or so. */
#define EK_MAX_GROUP 64

typedef struct {
    const void *data; /* rows of ncols values of `type`, in the map */
    int type;
    int64_t ncols, nrows;
} ek_weight;

typedef struct {
    const float *attn_norm, *ffn_norm;
    ek_weight q, k, v, qkv, o; /* qkv (Phi-3) or q/k/v */
    const float *bq, *bk, *bv; /* Qwen2 biases, or NULL */
    const float *q_norm, *k_norm; /* Qwen3 per-head RMSNorm weights, or NULL */
    ek_weight gate, up, down; /* no gate: up holds gate and up rows (Phi-3) */
} ek_layer;

struct ek_model {
    ek_gguf g;
    char *path;
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
    int32_t head_dim, n_rot, n_swa;
    int rope_neox; /* rotate (i, i + n_rot/2) pairs instead of (2i, 2i+1) */
    float rope_base, rope_freq_scale, rms_eps;
    const float *rope_freqs; /* n_rot/2 divisors (Llama 3 scaling), or NULL */
    ek_weight tok_embd, output;
    const float *output_norm;
    ek_layer *layers;
    double load_ms;
    ek_model_info info;
    struct ek_vocab *vocab; /* from tokenizer.* (vocab.h); NULL for a model without a tokenizer */
};

struct ek_session {
    const ek_model *m;
    ek_session_params p; /* with the defaults filled in */
    int32_t n_past;
    size_t kv_elem;      /* 2 (F16) or 4 (F32) */
    uint8_t *kc, *vc;    /* [n_layer][n_ctx][n_head_kv * head_dim] */
    /* scratch for n_batch tokens, allocated once */
    float *x, *xn, *q, *k, *v, *att, *tmp, *ffa, *ffb, *rope, *scores;
    uint8_t *xq;         /* quantized activations */
    float *logits;       /* n_logits rows of n_vocab */
    size_t logits_cap;   /* rows allocated */
    int32_t n_logits, logits_all;
    atomic_int abort;
    ek_stats stats;
    int32_t *tokens;     /* the token at each cached position (n_past of them): ek_generate reuses the prefix */
};

/* Dequantize one row of n values of a runtime type into floats. */
void ek_dequant_row(int type, const void *src, float *dst, int64_t n);

#endif
