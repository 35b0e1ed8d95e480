/* libedgekit: quantizers and matmul kernels for ggml's block formats, and a small runtime that runs
 * the GGUF files edgekit writes (load, forward, tokenize, sample, chat).
 * Plain C11 API; no Python headers. Type ids use ggml/GGUF numbering. */
#ifndef EDGEKIT_H
#define EDGEKIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ek_type {
    EK_TYPE_F32 = 0,
    EK_TYPE_F16 = 1,
    EK_TYPE_Q5_0 = 6,
    EK_TYPE_Q5_1 = 7,
    EK_TYPE_Q8_0 = 8,
    EK_TYPE_Q8_1 = 9,  /* activations only (for Q5_1): fp16 d, fp16 s = d * sum(qs), int8 qs[32] */
    EK_TYPE_Q4_K = 12,
    EK_TYPE_Q6_K = 14,
    EK_TYPE_Q8_K = 15, /* activations only: 256 values, float d, int8 qs[256], int16 bsums[16] */
    EK_TYPE_BF16 = 30,
};

/* Library version string, e.g. "0.1.0". */
const char *ek_version(void);

/* Bytes one row of n_per_row values takes in `type` (F32, F16, BF16, Q5_0, Q5_1, Q8_0, Q8_1, Q4_K, Q6_K, Q8_K); 0 if the
 * type is unsupported or n_per_row is not a positive multiple of its block size. */
size_t ek_row_size(int type, int64_t n_per_row);

/* Quantize nrows rows of n_per_row float32 values into dst (ek_row_size * nrows bytes) as Q5_0,
 * Q5_1, Q8_0, Q4_K or Q6_K, byte-identical to ggml. imatrix: NULL, or n_per_row non-negative
 * importance weights (per column) that steer the scale search (Q8_0 ignores it).
 * nthreads <= 0 uses all online CPUs. Returns bytes written, 0 on error. */
size_t ek_quantize(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                   const float *imatrix, int nthreads);

/* ---- CPU features and kernel levels -------------------------------------------------------
 * Every kernel exists as a portable scalar reference and, where the CPU allows, in SIMD levels.
 * The best level the CPU (and OS) supports is picked once, at the first call into the kernels.
 * EDGEKIT_CPU_LEVEL=<name> (read at that moment) forces a lower level; asking for a level the
 * CPU lacks prints a warning to stderr and clamps to the best available level below it. */

enum ek_cpu_feature { /* bits of ek_cpu_features() */
    EK_CPU_SSE3 = 1u << 0,
    EK_CPU_SSSE3 = 1u << 1,
    EK_CPU_AVX = 1u << 2,
    EK_CPU_AVX2 = 1u << 3,
    EK_CPU_FMA = 1u << 4,
    EK_CPU_F16C = 1u << 5,
    EK_CPU_AVX512F = 1u << 6,
    EK_CPU_AVX512BW = 1u << 7,
    EK_CPU_AVX512VL = 1u << 8,
    EK_CPU_AVX512VNNI = 1u << 9,
    EK_CPU_AVXVNNI = 1u << 10,
    EK_CPU_OS_YMM = 1u << 11, /* the OS saves YMM state (XCR0) */
    EK_CPU_OS_ZMM = 1u << 12, /* the OS saves opmask and ZMM state (XCR0) */
    EK_CPU_NEON = 1u << 16,
    EK_CPU_FP16 = 1u << 17, /* ARM: half-precision conversions (armv7 VFPv4/fp16; always on aarch64) */
    EK_CPU_DOTPROD = 1u << 18,
    EK_CPU_I8MM = 1u << 19,
};

enum ek_level { /* ranks: a higher level implies the ones below it on the same architecture */
    EK_LEVEL_SCALAR = 0,
    EK_LEVEL_AVX2 = 10,       /* AVX2 + FMA + F16C */
    EK_LEVEL_AVXVNNI = 11,    /* + AVX-VNNI (256-bit VEX vpdpbusd) */
    EK_LEVEL_AVX512VNNI = 12, /* + AVX-512 F/BW/VL/VNNI, OS saves ZMM state */
    EK_LEVEL_NEON = 20,       /* aarch64 armv8-a, or armv7 NEON + VFPv4 (32-bit) */
    EK_LEVEL_DOTPROD = 21,    /* armv8.2-a sdot */
    EK_LEVEL_I8MM = 22,       /* armv8.6-a smmla */
};

/* Features found on this CPU (enum ek_cpu_feature bits). */
uint32_t ek_cpu_features(void);
/* Name of one feature bit ("avx2", "dotprod", ...); NULL for an unknown bit. */
const char *ek_cpu_feature_name(uint32_t bit);

/* The level in use (enum ek_level). Picks it on first use. */
int ek_kernel_level(void);
/* "scalar", "avx2", "avxvnni", "avx512vnni", "neon", "dotprod", "i8mm"; NULL if unknown. */
const char *ek_level_name(int level);
/* Level for a name, or -1. */
int ek_level_from_name(const char *name);
/* 1 if this build has the level and this CPU can run it, else 0. */
int ek_level_available(int level);
/* Switch the level in use (for tests and benchmarks; do not call while a matmul runs).
 * Returns 0, or -1 (and sets ek_last_error) if the level is unavailable. */
int ek_set_kernel_level(int level);
/* Which implementation runs weights of `type` at the current level (a level name: some types
 * reuse a lower level's code, e.g. F32 at i8mm runs the neon kernels); NULL if unsupported. */
const char *ek_kernel_impl(int type);

/* ---- matmul --------------------------------------------------------------------------------
 * Y = X @ W^T with W as ggml stores a 2-D weight: nrows rows of ncols values, each row a run of
 * blocks of `type`; X: ntokens rows of ncols float32; Y: ntokens rows of nrows float32
 * (y[t*nrows + r] = dot(W row r, X row t)).
 * Activations are quantized first, as ggml does: to Q8_0 blocks for Q8_0 / Q5_0 weights, Q8_1 for
 * Q5_1, Q8_K for Q4_K / Q6_K and BF16 for BF16; F16 and F32 weights meet float32 activations (F16
 * widened exactly).
 * nthreads <= 0 uses every online CPU; threads come from a persistent pool created on first
 * use. Rows split over threads, so results do not depend on the thread count. y must not
 * overlap w or x.
 * Functions returning int give 0 on success, a negative value on bad input (message in
 * ek_last_error). */

/* Type activations are quantized to for weights of `type` (EK_TYPE_Q8_0, EK_TYPE_Q8_1, EK_TYPE_Q8_K,
 * EK_TYPE_BF16 or EK_TYPE_F32); -1 if the type has no kernels. */
int ek_vec_type(int type);

/* Quantize ntokens rows of ncols float32 activations to ek_vec_type(type) rows in dst
 * (ek_row_size(ek_vec_type(type), ncols) bytes each), byte for byte as ggml's CPU backend does
 * (Q8_0: d = max|x|/127, round half to even; Q8_K: the largest magnitude maps to -127), so
 * values stay in -127..127. Returns bytes written, 0 on error. */
size_t ek_quantize_activations(int type, const float *x, void *dst, int64_t ntokens, int64_t ncols);

/* Y = X @ W^T from float activations (quantized internally into a temporary buffer). */
int ek_matmul(int type, const void *w, int64_t nrows, int64_t ncols, const float *x, int64_t ntokens, float *y,
              int nthreads);

/* The same from activations already in ek_vec_type(type) rows (ek_quantize_activations), e.g. one
 * input shared by several projections. Hand-made Q8_0 activations must avoid -128. */
int ek_matmul_q(int type, const void *w, int64_t nrows, int64_t ncols, const void *xq, int64_t ntokens, float *y,
                int nthreads);

/* ==== runtime: load a GGUF, run it, tokenize, sample, chat ====================================
 * Conventions: functions return ek_status (0 ok, > 0 recoverable, < 0 error; on an error the message
 * is in ek_last_error() of the calling thread and the object is as it was before the call). Every
 * create has its free; free(NULL) is a no-op. Param structs are zero-initialisable: a 0 field takes
 * its documented default, so `&(ek_session_params){.n_ctx = 2048}` works and new fields can be added
 * at the end without breaking callers (their `size`-less literals zero the new ones). */

#define EK_ABI_VERSION 1 /* bumped on any incompatible change to the declarations below */
/* ABI version of the loaded library: compare with EK_ABI_VERSION to detect a header/library mismatch. */
int ek_abi_version(void);

typedef enum ek_status {
    EK_OK = 0,
    EK_ABORTED = 1,           /* ek_abort() was called; the session stays usable */
    EK_CONTEXT_FULL = 2,      /* no room left in the KV cache for the tokens asked */
    EK_ERR_INVALID = -1,      /* a bad argument */
    EK_ERR_IO = -2,           /* a file could not be opened, mapped or read */
    EK_ERR_FORMAT = -3,       /* a malformed or hostile file */
    EK_ERR_UNSUPPORTED = -4,  /* a valid file this runtime cannot run (architecture, tensor type, template) */
    EK_ERR_NOMEM = -5,
    EK_ERR_BUFFER = -6,       /* an output buffer was too small; the size needed is reported */
} ek_status;

/* Name of a status ("ok", "aborted", "format error", ...). */
const char *ek_status_name(int status);

typedef struct ek_model ek_model;     /* weights (mmap of the GGUF), vocabulary, template: read-only, shareable */
typedef struct ek_session ek_session; /* KV cache, sampler state, stats: one thread at a time */

typedef struct ek_model_params {
    int32_t reserved; /* no options yet */
} ek_model_params;

/* Map a GGUF v3 file and check every header field, metadata value, tensor offset, extent and alignment
 * before anything is used; weights are never copied. params may be NULL. */
ek_status ek_model_load(const char *path, const ek_model_params *params, ek_model **out);
void ek_model_free(ek_model *model);

typedef struct ek_model_info {
    const char *arch;        /* general.architecture: "llama", "qwen2", "qwen3", "phi3" (Mistral is "llama") */
    const char *name;        /* general.name, "" if absent */
    int32_t n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff;
    int64_t n_params;        /* weights, counted over the tensors */
    uint64_t file_bytes;
    int32_t bos, eos, eot;   /* token ids, -1 if absent */
    int32_t add_bos;         /* whether ek_tokenize(add_special=1) prepends bos */
} ek_model_info;

/* Fill info; its strings belong to the model. */
ek_status ek_model_get_info(const ek_model *model, ek_model_info *info);
/* A metadata value as text (numbers formatted, arrays as "[n items]"), or NULL if the key is absent. */
const char *ek_model_meta(const ek_model *model, const char *key);

typedef struct ek_session_params {
    int32_t n_ctx;           /* KV-cache positions; 0: min(4096, the model's training context) */
    int32_t n_threads;       /* decode threads; 0: the physical cores, at most 8 */
    int32_t n_threads_batch; /* prefill threads; 0: n_threads */
    int32_t n_batch;         /* most tokens per forward pass; 0: 512 */
    int32_t kv_f32;          /* 1: an F32 KV cache (exact comparisons); 0: F16 (EK_TYPE_F32 is 0, so no type id) */
} ek_session_params;

ek_status ek_session_new(const ek_model *model, const ek_session_params *params, ek_session **out);
void ek_session_free(ek_session *session);

/* Run n tokens at positions pos..pos+n-1 (forgetting anything cached at or after pos; 0 <= pos <= the
 * positions cached) in batches of n_batch, keeping the last token's logits, or every token's if
 * logits_all. EK_CONTEXT_FULL if pos + n > n_ctx, EK_ABORTED if aborted between batches (the cache
 * then holds the batches that finished: ek_session_n_past says how many). */
ek_status ek_decode(ek_session *session, const int32_t *tokens, int32_t n, int32_t pos, int logits_all);
/* (n = 0 only forgets the positions at and after pos.) */
/* Logits (n_vocab floats) of row i of the last ek_decode: 0..n-1 with logits_all, else only i = -1 (the
 * last token). NULL if there is no such row. Valid until the next call on the session. */
const float *ek_logits(const ek_session *session, int32_t i);
/* Positions in the KV cache. */
int32_t ek_session_n_past(const ek_session *session);

/* Ask a running call on the session (decode, generate, chat) to stop at the next token, layer or batch;
 * callable from any thread. The call returns EK_ABORTED and the flag clears; a flag set while no call runs
 * stops the next call before its first batch. */
void ek_abort(ek_session *session);

/* ---- text ---- */

/* Tokens of len bytes of UTF-8 text, as llama.cpp tokenizes (byte-level BPE with the pre-tokenizer named by
 * tokenizer.ggml.pre: gpt-2, llama-bpe, qwen2, smollm; or SentencePiece BPE with byte fallback). Invalid UTF-8
 * is read as llama.cpp reads it (each bad byte a U+FFFD). add_special: prepend bos (append eos) when the model
 * asks for it; parse_special: text of control tokens ("<|im_end|>") becomes those tokens (user-defined tokens
 * always do). Writes at most cap ids and sets *n_out to the count; EK_ERR_BUFFER if cap was too small
 * (*n_out is then the count needed). A model without tokenizer.ggml.tokens: EK_ERR_INVALID. */
ek_status ek_tokenize(const ek_model *model, const char *text, size_t len, int add_special, int parse_special,
                      int32_t *out, int32_t cap, int32_t *n_out);
/* Bytes of one token, as llama.cpp's llama_token_to_piece (a byte-level BPE token may be part of a UTF-8
 * character); control tokens give their text only if special != 0, else "". Writes at most cap bytes (no NUL)
 * and sets *n_out; EK_ERR_BUFFER as above; EK_ERR_INVALID for an id outside the vocabulary. */
ek_status ek_token_to_piece(const ek_model *model, int32_t token, int special, char *buf, int32_t cap,
                            int32_t *n_out);
/* Whether a token is a control token (not text): llama_vocab_is_control. */
int ek_token_is_special(const ek_model *model, int32_t token);

/* ---- sampling: the same chain and the same seeded stream as edgekit's Python sampler ----
 * (edgekit/runtime/sampling.py): penalty, top-k, top-p, min-p at temperature 1 (most likely first, equal
 * logits by lower id), temperature, one inverse-CDF draw from numpy's Generator(PCG64(seed)).random(). */

typedef struct ek_sampling {
    float temperature;       /* 0: greedy */
    int32_t top_k;           /* 0: off */
    float top_p;             /* 0 or 1: off */
    float min_p;             /* 0: off */
    float repeat_penalty;    /* 0 or 1: off */
    int32_t repeat_last_n;   /* tokens the penalty looks at; 0: 64 */
    uint64_t seed;
    int32_t max_tokens;      /* ek_generate / ek_chat: most tokens to generate; 0: 256 */
    int32_t ignore_eos;      /* never sample stop tokens (their logits become -inf) */
} ek_sampling;

/* edgekit's defaults (llama.cpp's): temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no penalty. */
ek_sampling ek_sampling_default(void);

typedef struct ek_sampler ek_sampler;
ek_status ek_sampler_new(const ek_sampling *params, ek_sampler **out);
void ek_sampler_free(ek_sampler *sampler);
/* Draw a token from n_vocab logits; recent: the last n_recent tokens of the sequence (for the penalty; may be
 * NULL if n_recent is 0). Returns the token, or -1 on bad input (message in ek_last_error). */
int32_t ek_sampler_sample(ek_sampler *sampler, const float *logits, int32_t n_vocab, const int32_t *recent,
                          int32_t n_recent);

/* ---- chat ---- */

typedef struct ek_message {
    const char *role;    /* "system", "user", "assistant" */
    const char *content; /* UTF-8 */
} ek_message;

/* Render messages with the model's chat template (tokenizer.chat_template, recognised as one of the
 * families edgekit meets: ChatML/Qwen, Llama 3, Mistral/Llama 2 [INST], Phi-3, Zephyr; EK_ERR_UNSUPPORTED for
 * another or none), byte for byte as Jinja renders it; EK_ERR_INVALID where the template itself refuses the
 * conversation (roles that do not alternate, a system message it has no place for). Writes at most cap bytes
 * plus a NUL and sets *n_out to the length (NUL excluded); EK_ERR_BUFFER as above (cap 0 asks the size). */
ek_status ek_chat_format(const ek_model *model, const ek_message *messages, size_t n, int add_generation_prompt,
                         char *buf, size_t cap, size_t *n_out);

/* Receives generated text in whole UTF-8 characters; return nonzero to stop the generation. */
typedef int (*ek_piece_fn)(const char *piece, size_t len, void *user);

/* Tokenize prompt (add_special, parse_special), reuse the cached prefix it shares with the session's
 * sequence, prefill the rest, then sample until a stop token (eos, eot and the end-of-turn markers that are
 * single control tokens; not passed on), max_tokens, on_piece returning nonzero (all EK_OK) or a full context
 * (EK_CONTEXT_FULL), streaming the text through on_piece (may be NULL): whole UTF-8 characters, ill-formed
 * bytes as U+FFFD, a SentencePiece model's first prefix space dropped (as llama.cpp's detokenizer and edgekit's
 * Python side give the text). The session keeps the sequence, so a following call reuses what it shares. */
ek_status ek_generate(ek_session *session, const char *prompt, const ek_sampling *sampling, ek_piece_fn on_piece,
                      void *user);
/* ek_chat_format(messages, add_generation_prompt=1), then ek_generate on that text without add_special (the
 * template writes the special tokens it wants, bos included, as text). */
ek_status ek_chat(ek_session *session, const ek_message *messages, size_t n, const ek_sampling *sampling,
                  ek_piece_fn on_piece, void *user);

typedef struct ek_stats {
    double load_ms;          /* of the model */
    double prefill_ms;       /* last generate/chat (or the ek_decode calls since the last reset of stats) */
    double decode_ms;
    double first_token_ms;   /* from the call to the first sampled token */
    int64_t n_prefill;       /* tokens prefilled (not reused from the cache) */
    int64_t n_decode;        /* tokens decoded one by one */
    int64_t n_reused;        /* prompt tokens found in the cache */
    int64_t peak_rss_bytes;  /* of the process, 0 where the OS does not say */
} ek_stats;

ek_status ek_session_stats(const ek_session *session, ek_stats *stats);

/* Message for the last failed call on this thread ("" if none). */
const char *ek_last_error(void);

#ifdef __cplusplus
}
#endif
#endif
