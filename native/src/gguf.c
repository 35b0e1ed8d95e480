/* GGUF v3 reader: map the file, then walk header, metadata and tensor infos through a bounded
 * cursor. Nothing is trusted: counts are capped by what the remaining bytes could hold, every
 * length is checked before it is read, and each tensor's extent must lie inside the data section. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "kernels.h"

#define MAX_KV (1u << 16)
#define MAX_TENSORS (1u << 20)
#define MAX_KEY 65535u

int ek_type_block(int type) {
    switch (type) {
    case EK_TYPE_F32: case EK_TYPE_F16: case EK_TYPE_BF16: return 1;
    case EK_TYPE_Q8_0: case EK_TYPE_Q5_0: case EK_TYPE_Q5_1: return 32;
    case EK_TYPE_Q4_K: case EK_TYPE_Q6_K: return EK_QK_K;
    default: return 0;
    }
}

size_t ek_type_bytes(int type) {
    switch (type) {
    case EK_TYPE_F32: return 4;
    case EK_TYPE_F16: case EK_TYPE_BF16: return 2;
    case EK_TYPE_Q8_0: return 34;
    case EK_TYPE_Q5_0: return 22;
    case EK_TYPE_Q5_1: return 24;
    case EK_TYPE_Q4_K: return 144;
    case EK_TYPE_Q6_K: return 210;
    default: return 0;
    }
}

const char *ek_type_name(int type) {
    switch (type) {
    case EK_TYPE_F32: return "F32";
    case EK_TYPE_F16: return "F16";
    case EK_TYPE_BF16: return "BF16";
    case EK_TYPE_Q8_0: return "Q8_0";
    case EK_TYPE_Q5_0: return "Q5_0";
    case EK_TYPE_Q5_1: return "Q5_1";
    case EK_TYPE_Q4_K: return "Q4_K";
    case EK_TYPE_Q6_K: return "Q6_K";
    default: return NULL;
    }
}

typedef struct {
    const uint8_t *p, *end;
    const char *path;
} cursor;

static size_t left(const cursor *c) { return (size_t)(c->end - c->p); }

static int take(cursor *c, size_t n, const uint8_t **out, const char *what) {
    if (left(c) < n) {
        ek_set_error("%s: truncated file (%s needs %zu bytes, %zu left)", c->path, what, n, left(c));
        return 0;
    }
    *out = c->p;
    c->p += n;
    return 1;
}

static int take_u32(cursor *c, uint32_t *v, const char *what) {
    const uint8_t *p;
    if (!take(c, 4, &p, what)) return 0;
    memcpy(v, p, 4);
    return 1;
}

static int take_u64(cursor *c, uint64_t *v, const char *what) {
    const uint8_t *p;
    if (!take(c, 8, &p, what)) return 0;
    memcpy(v, p, 8);
    return 1;
}

/* A GGUF string: u64 length, bytes. */
static int take_str(cursor *c, const uint8_t **s, uint64_t *len, const char *what) {
    if (!take_u64(c, len, what)) return 0;
    if (*len > left(c)) {
        ek_set_error("%s: %s length %" PRIu64 " runs past the end of the file", c->path, what, *len);
        return 0;
    }
    return take(c, (size_t)*len, s, what);
}

static size_t scalar_size(uint32_t type) {
    static const size_t sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return type < sizeof sizes / sizeof sizes[0] ? sizes[type] : 0;
}

static char *dup_bytes(const uint8_t *s, size_t n) {
    char *t = malloc(n + 1);
    if (t != NULL) {
        memcpy(t, s, n);
        t[n] = 0;
    }
    return t;
}

/* One scalar as text. */
static void format_scalar(uint32_t type, const uint8_t *v, char *buf, size_t cap) {
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32; float f32;
            uint64_t u64; int64_t i64; double f64; } x;
    memcpy(&x, v, scalar_size(type));
    switch (type) {
    case GG_U8: snprintf(buf, cap, "%u", x.u8); break;
    case GG_I8: snprintf(buf, cap, "%d", x.i8); break;
    case GG_U16: snprintf(buf, cap, "%u", x.u16); break;
    case GG_I16: snprintf(buf, cap, "%d", x.i16); break;
    case GG_U32: snprintf(buf, cap, "%" PRIu32, x.u32); break;
    case GG_I32: snprintf(buf, cap, "%" PRId32, x.i32); break;
    case GG_F32: snprintf(buf, cap, "%.9g", (double)x.f32); break;
    case GG_BOOL: snprintf(buf, cap, "%s", x.u8 ? "true" : "false"); break;
    case GG_U64: snprintf(buf, cap, "%" PRIu64, x.u64); break;
    case GG_I64: snprintf(buf, cap, "%" PRId64, x.i64); break;
    case GG_F64: snprintf(buf, cap, "%.17g", x.f64); break;
    default: snprintf(buf, cap, "?"); break;
    }
}

static ek_status read_kv(cursor *c, ek_gguf_kv *kv) {
    const uint8_t *key;
    uint64_t klen;
    if (!take_str(c, &key, &klen, "metadata key")) return EK_ERR_FORMAT;
    if (klen == 0 || klen > MAX_KEY || memchr(key, 0, (size_t)klen) != NULL) {
        ek_set_error("%s: metadata key of length %" PRIu64 " is empty, too long or holds a NUL byte", c->path, klen);
        return EK_ERR_FORMAT;
    }
    kv->key = dup_bytes(key, (size_t)klen);
    if (kv->key == NULL) return EK_ERR_NOMEM;
    if (!take_u32(c, &kv->type, "metadata type")) return EK_ERR_FORMAT;
    char num[64];
    if (kv->type == GG_STRING) {
        const uint8_t *s;
        uint64_t n;
        if (!take_str(c, &s, &n, kv->key)) return EK_ERR_FORMAT;
        kv->val = s;
        kv->arr_n = n; /* string length */
        kv->text = dup_bytes(s, (size_t)n);
    } else if (kv->type == GG_ARRAY) {
        if (!take_u32(c, &kv->arr_type, kv->key) || !take_u64(c, &kv->arr_n, kv->key)) return EK_ERR_FORMAT;
        kv->val = c->p;
        if (kv->arr_type == GG_STRING) {
            if (kv->arr_n > left(c) / 8) {
                ek_set_error("%s: %s: array of %" PRIu64 " strings cannot fit in the file", c->path, kv->key, kv->arr_n);
                return EK_ERR_FORMAT;
            }
            for (uint64_t i = 0; i < kv->arr_n; i++) {
                const uint8_t *s;
                uint64_t n;
                if (!take_str(c, &s, &n, kv->key)) return EK_ERR_FORMAT;
            }
        } else {
            const size_t es = scalar_size(kv->arr_type);
            if (es == 0) {
                ek_set_error("%s: %s: array of element type %" PRIu32 " is not supported (nested or unknown)",
                             c->path, kv->key, kv->arr_type);
                return EK_ERR_FORMAT;
            }
            if (kv->arr_n > left(c) / es) {
                ek_set_error("%s: %s: array of %" PRIu64 " values runs past the end of the file", c->path, kv->key,
                             kv->arr_n);
                return EK_ERR_FORMAT;
            }
            c->p += (size_t)kv->arr_n * es;
        }
        snprintf(num, sizeof num, "[%" PRIu64 " items]", kv->arr_n);
        kv->text = dup_bytes((const uint8_t *)num, strlen(num));
    } else {
        const size_t es = scalar_size(kv->type);
        if (es == 0) {
            ek_set_error("%s: %s: unknown metadata value type %" PRIu32, c->path, kv->key, kv->type);
            return EK_ERR_FORMAT;
        }
        if (!take(c, es, &kv->val, kv->key)) return EK_ERR_FORMAT;
        format_scalar(kv->type, kv->val, num, sizeof num);
        kv->text = dup_bytes((const uint8_t *)num, strlen(num));
    }
    return kv->text != NULL ? EK_OK : EK_ERR_NOMEM;
}

static ek_status read_tensor_info(cursor *c, ek_gguf_tensor *t) {
    const uint8_t *name;
    uint64_t nlen;
    uint32_t n_dims, type;
    if (!take_str(c, &name, &nlen, "tensor name")) return EK_ERR_FORMAT;
    if (nlen == 0 || nlen >= EK_GGUF_MAX_NAME || memchr(name, 0, (size_t)nlen) != NULL) {
        ek_set_error("%s: tensor name of length %" PRIu64 " is empty, longer than %d bytes or holds a NUL byte",
                     c->path, nlen, EK_GGUF_MAX_NAME - 1);
        return EK_ERR_FORMAT;
    }
    memcpy(t->name, name, (size_t)nlen);
    t->name[nlen] = 0;
    if (!take_u32(c, &n_dims, t->name)) return EK_ERR_FORMAT;
    if (n_dims < 1 || n_dims > EK_GGUF_MAX_DIMS) {
        ek_set_error("%s: tensor %s has %" PRIu32 " dimensions (1..%d allowed)", c->path, t->name, n_dims,
                     EK_GGUF_MAX_DIMS);
        return EK_ERR_FORMAT;
    }
    t->n_dims = (int)n_dims;
    uint64_t count = 1;
    for (int d = 0; d < EK_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        if (!take_u64(c, &ne, t->name)) return EK_ERR_FORMAT;
        if (ne == 0 || ne > (uint64_t)INT64_MAX / count) {
            ek_set_error("%s: tensor %s has an empty or absurd dimension %" PRIu64, c->path, t->name, ne);
            return EK_ERR_FORMAT;
        }
        count *= ne;
        t->ne[d] = (int64_t)ne;
    }
    if (!take_u32(c, &type, t->name) || !take_u64(c, &t->offset, t->name)) return EK_ERR_FORMAT;
    t->type = (int)type;
    if (ek_type_block(t->type) == 0) {
        ek_set_error("%s: tensor %s has ggml type %" PRIu32 ", which this runtime does not run "
                     "(F32, F16, BF16, Q8_0, Q5_0, Q5_1, Q4_K, Q6_K)", c->path, t->name, type);
        return EK_ERR_UNSUPPORTED;
    }
    if (t->ne[0] % ek_type_block(t->type) != 0) {
        ek_set_error("%s: tensor %s: row of %" PRId64 " values is not a multiple of %s's block of %d", c->path,
                     t->name, t->ne[0], ek_type_name(t->type), ek_type_block(t->type));
        return EK_ERR_FORMAT;
    }
    const uint64_t blocks = (uint64_t)t->ne[0] / (uint64_t)ek_type_block(t->type);
    const uint64_t rows = count / (uint64_t)t->ne[0];
    if (blocks > SIZE_MAX / ek_type_bytes(t->type) || rows > SIZE_MAX / (blocks * ek_type_bytes(t->type))) {
        ek_set_error("%s: tensor %s: %" PRIu64 " values run past the end of the file", c->path, t->name, count);
        return EK_ERR_FORMAT;
    }
    const uint64_t row = blocks * ek_type_bytes(t->type);
    t->nbytes = (size_t)(row * rows);
    return EK_OK;
}

static int cmp_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* 1 if two of the n names are equal (sorted copy of the pointers: n log n, not n^2). */
static const char *find_duplicate(const char **names, size_t n) {
    qsort(names, n, sizeof *names, cmp_names);
    for (size_t i = 1; i < n; i++) {
        if (strcmp(names[i - 1], names[i]) == 0) return names[i];
    }
    return NULL;
}

static ek_status parse(ek_gguf *g, const char *path) {
    cursor c = {g->map, g->map + g->size, path};
    const uint8_t *magic;
    uint32_t version;
    if (!take(&c, 4, &magic, "magic")) return EK_ERR_FORMAT;
    if (memcmp(magic, "GGUF", 4) != 0) {
        ek_set_error("%s: not a GGUF file (bad magic)", path);
        return EK_ERR_FORMAT;
    }
    if (!take_u32(&c, &version, "version")) return EK_ERR_FORMAT;
    if (version != 3) {
        ek_set_error("%s: GGUF version %" PRIu32 " is not supported (only version 3)", path, version);
        return version == 2 ? EK_ERR_UNSUPPORTED : EK_ERR_FORMAT;
    }
    if (!take_u64(&c, &g->n_tensors, "tensor count") || !take_u64(&c, &g->n_kv, "metadata count"))
        return EK_ERR_FORMAT;
    /* a metadata entry takes >= 13 bytes (key length, one byte, type), a tensor info >= 29 */
    if (g->n_kv > MAX_KV || g->n_kv > left(&c) / 13) {
        ek_set_error("%s: metadata count %" PRIu64 " is absurd or the file is truncated (%zu bytes follow)", path,
                     g->n_kv, left(&c));
        return EK_ERR_FORMAT;
    }
    if (g->n_tensors > MAX_TENSORS || g->n_tensors > left(&c) / 29) {
        ek_set_error("%s: tensor count %" PRIu64 " is absurd or the file is truncated (%zu bytes follow)", path,
                     g->n_tensors, left(&c));
        return EK_ERR_FORMAT;
    }
    g->kv = calloc((size_t)g->n_kv + 1, sizeof *g->kv);
    g->tensors = calloc((size_t)g->n_tensors + 1, sizeof *g->tensors);
    const char **names = malloc(((size_t)(g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors) + 1) * sizeof *names);
    ek_status st = EK_OK;
    if (g->kv == NULL || g->tensors == NULL || names == NULL) {
        ek_set_error("%s: out of memory for the header", path);
        st = EK_ERR_NOMEM;
        goto out;
    }
    for (uint64_t i = 0; i < g->n_kv && st == EK_OK; i++) st = read_kv(&c, &g->kv[i]);
    if (st != EK_OK) goto out;
    for (uint64_t i = 0; i < g->n_kv; i++) names[i] = g->kv[i].key;
    const char *dup = find_duplicate(names, (size_t)g->n_kv);
    if (dup != NULL) {
        ek_set_error("%s: metadata key %s appears twice", path, dup);
        st = EK_ERR_FORMAT;
        goto out;
    }
    g->alignment = 32;
    const ek_gguf_kv *al = ek_gguf_find(g, "general.alignment");
    if (al != NULL) {
        uint32_t a = 0;
        if (al->type == GG_U32) memcpy(&a, al->val, 4);
        if (a == 0 || (a & (a - 1)) != 0 || a > (1u << 20)) {
            ek_set_error("%s: general.alignment must be a u32 power of two (<= 1 MiB), not %s", path, al->text);
            st = EK_ERR_FORMAT;
            goto out;
        }
        g->alignment = a;
    }
    for (uint64_t i = 0; i < g->n_tensors && st == EK_OK; i++) st = read_tensor_info(&c, &g->tensors[i]);
    if (st != EK_OK) goto out;
    for (uint64_t i = 0; i < g->n_tensors; i++) names[i] = g->tensors[i].name;
    dup = find_duplicate(names, (size_t)g->n_tensors);
    if (dup != NULL) {
        ek_set_error("%s: tensor %s appears twice", path, dup);
        st = EK_ERR_FORMAT;
        goto out;
    }
    /* the data section starts at the next multiple of the alignment */
    size_t data = (size_t)(c.p - g->map);
    data += (g->alignment - data % g->alignment) % g->alignment;
    if (data > g->size) data = g->size;
    const size_t room = g->size - data;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        ek_gguf_tensor *t = &g->tensors[i];
        if (t->offset % g->alignment != 0) {
            ek_set_error("%s: tensor %s: offset %" PRIu64 " is not a multiple of the alignment %" PRIu32, path,
                         t->name, t->offset, g->alignment);
            st = EK_ERR_FORMAT;
            goto out;
        }
        if (t->offset > room || t->nbytes > room - t->offset) {
            ek_set_error("%s: tensor %s: %zu bytes at offset %" PRIu64 " run past the end of the file "
                         "(truncated?)", path, t->name, t->nbytes, t->offset);
            st = EK_ERR_FORMAT;
            goto out;
        }
        t->data = g->map + data + t->offset;
    }
out:
    free(names);
    return st;
}

ek_status ek_gguf_open(const char *path, ek_gguf *g) {
    memset(g, 0, sizeof *g);
    const int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        ek_set_error("%s: cannot open: %s", path, strerror(errno));
        return EK_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        ek_set_error("%s: not a regular file", path);
        close(fd);
        return EK_ERR_IO;
    }
    if (sb.st_size < 24) {
        close(fd);
        ek_set_error("%s: truncated file (%lld bytes, a GGUF header takes 24)", path, (long long)sb.st_size);
        return EK_ERR_FORMAT;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        ek_set_error("%s: file too large for this address space", path);
        return EK_ERR_IO;
    }
    g->size = (size_t)sb.st_size;
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        ek_set_error("%s: cannot map: %s", path, strerror(errno));
        g->size = 0;
        return EK_ERR_IO;
    }
    g->map = m;
    const ek_status st = parse(g, path);
    if (st != EK_OK) ek_gguf_close(g);
    return st;
}

void ek_gguf_close(ek_gguf *g) {
    if (g->kv != NULL) {
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].text);
        }
    }
    free(g->kv);
    free(g->tensors);
    if (g->map != NULL) munmap((void *)g->map, g->size);
    memset(g, 0, sizeof *g);
}

const ek_gguf_kv *ek_gguf_find(const ek_gguf *g, const char *key) {
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (g->kv[i].key != NULL && strcmp(g->kv[i].key, key) == 0) return &g->kv[i];
    }
    return NULL;
}

int ek_gguf_int(const ek_gguf *g, const char *key, int64_t *out) {
    const ek_gguf_kv *kv = ek_gguf_find(g, key);
    if (kv == NULL) return 0;
    uint8_t b[8] = {0};
    if (kv->type != GG_STRING && kv->type != GG_ARRAY) memcpy(b, kv->val, scalar_size(kv->type));
    switch (kv->type) {
    case GG_U8: case GG_BOOL: *out = b[0]; return 1;
    case GG_I8: *out = (int8_t)b[0]; return 1;
    case GG_U16: { uint16_t v; memcpy(&v, b, 2); *out = v; return 1; }
    case GG_I16: { int16_t v; memcpy(&v, b, 2); *out = v; return 1; }
    case GG_U32: { uint32_t v; memcpy(&v, b, 4); *out = v; return 1; }
    case GG_I32: { int32_t v; memcpy(&v, b, 4); *out = v; return 1; }
    case GG_U64: { uint64_t v; memcpy(&v, b, 8); *out = v > INT64_MAX ? INT64_MAX : (int64_t)v; return 1; }
    case GG_I64: { int64_t v; memcpy(&v, b, 8); *out = v; return 1; }
    default: return -1;
    }
}

int ek_gguf_float(const ek_gguf *g, const char *key, double *out) {
    const ek_gguf_kv *kv = ek_gguf_find(g, key);
    if (kv == NULL) return 0;
    if (kv->type == GG_F32) {
        float f;
        memcpy(&f, kv->val, 4);
        *out = f;
        return 1;
    }
    if (kv->type == GG_F64) {
        memcpy(out, kv->val, 8);
        return 1;
    }
    int64_t i;
    const int r = ek_gguf_int(g, key, &i);
    if (r == 1) *out = (double)i;
    return r;
}

const char *ek_gguf_str(const ek_gguf *g, const char *key) {
    const ek_gguf_kv *kv = ek_gguf_find(g, key);
    return kv != NULL && kv->type == GG_STRING ? kv->text : NULL;
}

const ek_gguf_tensor *ek_gguf_tensor_find(const ek_gguf *g, const char *name) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        if (strcmp(g->tensors[i].name, name) == 0) return &g->tensors[i];
    }
    return NULL;
}
