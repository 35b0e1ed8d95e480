/* A validated, read-only view of a GGUF v3 file mapped into memory (weights are never copied).
 * Every count, length, offset and extent is checked against the file size when opened, so the
 * rest of the runtime can use what this returns without further bounds checks. */
#ifndef EDGEKIT_GGUF_H
#define EDGEKIT_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "edgekit.h"

enum { /* GGUF metadata value types */
    GG_U8 = 0, GG_I8, GG_U16, GG_I16, GG_U32, GG_I32, GG_F32, GG_BOOL, GG_STRING, GG_ARRAY, GG_U64, GG_I64, GG_F64,
};

#define EK_GGUF_MAX_DIMS 4
#define EK_GGUF_MAX_NAME 64 /* ggml's GGML_MAX_NAME, terminator included */

typedef struct {
    char *key;            /* NUL-terminated copy */
    uint32_t type;        /* GG_*; for arrays the element type is arr_type */
    uint32_t arr_type;
    uint64_t arr_n;
    const uint8_t *val;   /* the value (or the first array element) in the map */
    char *text;           /* the value as text (ek_model_meta) */
} ek_gguf_kv;

typedef struct {
    char name[EK_GGUF_MAX_NAME];
    int n_dims;
    int64_t ne[EK_GGUF_MAX_DIMS]; /* ne[0]: values per row */
    int type;
    uint64_t offset;              /* from the start of the data section */
    size_t nbytes;
    const void *data;
} ek_gguf_tensor;

typedef struct {
    const uint8_t *map;
    size_t size;
    uint32_t alignment;
    uint64_t n_kv, n_tensors;
    ek_gguf_kv *kv;
    ek_gguf_tensor *tensors;
} ek_gguf;

/* Map and validate path; on failure the message (naming the file) is in ek_last_error(). */
ek_status ek_gguf_open(const char *path, ek_gguf *g);
void ek_gguf_close(ek_gguf *g);

const ek_gguf_kv *ek_gguf_find(const ek_gguf *g, const char *key);
/* 1 and *out if key holds an integer (or bool) / a number; 0 if absent; -1 if it has another type. */
int ek_gguf_int(const ek_gguf *g, const char *key, int64_t *out);
int ek_gguf_float(const ek_gguf *g, const char *key, double *out);
/* A string value (not NUL-terminated in the map: use its text copy), or NULL. */
const char *ek_gguf_str(const ek_gguf *g, const char *key);
const ek_gguf_tensor *ek_gguf_tensor_find(const ek_gguf *g, const char *name);

/* Values per block and bytes per block of the tensor types the runtime runs; 0 for others. */
int ek_type_block(int type);
size_t ek_type_bytes(int type);
const char *ek_type_name(int type);

#endif
