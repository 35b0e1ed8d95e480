/* The matmul driver: argument checks, activation quantization, a persistent thread pool, and
 * the split of output rows into chunks that threads take from a shared counter.
 *
 * Cache tiling: a chunk is a run of weight rows small enough to stay in L2 (GEMM) while every
 * token tile passes over it, so with many tokens a weight row is read from memory once per call
 * and decoded once per token tile (the kernels' register tiles), not once per token. */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels.h"

static _Thread_local char err_buf[512];

void ek_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err_buf, sizeof err_buf, fmt, ap);
    va_end(ap);
}

const char *ek_last_error(void) { return err_buf; }

/* ---- persistent thread pool ------------------------------------------------------------------
 * Workers are created on first need and then sleep on a condition variable between calls.
 * One call uses the pool at a time; a concurrent caller (another application thread) runs its
 * work on its own thread instead of waiting. */
#define POOL_MAX 64
typedef void (*task_fn)(void *arg, int ith, int nth);

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    int nworkers;
    uint64_t gen, start_gen[POOL_MAX];
    task_fn fn;
    void *arg;
    int nth;
    atomic_int pending;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};
static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* A forked child has none of the parent's threads: start over with an empty pool. */
static void pool_atfork_child(void) {
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.wake, NULL);
    pthread_cond_init(&pool.done, NULL);
    pthread_mutex_init(&pool_busy, NULL);
    pool.nworkers = 0;
    atomic_store(&pool.pending, 0);
}

static void pool_init(void) { pthread_atfork(NULL, NULL, pool_atfork_child); }

static void *pool_worker(void *p) {
    const int id = (int)(intptr_t)p;
    pthread_mutex_lock(&pool.mu);
    uint64_t seen = pool.start_gen[id];
    for (;;) {
        while (pool.gen == seen) pthread_cond_wait(&pool.wake, &pool.mu);
        seen = pool.gen;
        if (id >= pool.nth) continue;
        const task_fn fn = pool.fn;
        void *arg = pool.arg;
        const int nth = pool.nth;
        pthread_mutex_unlock(&pool.mu);
        fn(arg, id, nth);
        if (atomic_fetch_sub(&pool.pending, 1) == 1) {
            pthread_mutex_lock(&pool.mu);
            pthread_cond_signal(&pool.done);
        } else {
            pthread_mutex_lock(&pool.mu);
        }
    }
    return NULL;
}

static void pool_run(task_fn fn, void *arg, int nth) {
    pthread_once(&pool_once, pool_init);
    if (nth <= 1 || pthread_mutex_trylock(&pool_busy) != 0) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    while (pool.nworkers < nth - 1 && pool.nworkers < POOL_MAX - 1) {
        const int id = pool.nworkers + 1;
        pthread_t th;
        pool.start_gen[id] = pool.gen; /* so the new worker takes the job posted below */
        if (pthread_create(&th, NULL, pool_worker, (void *)(intptr_t)id) != 0) break;
        pthread_detach(th);
        pool.nworkers++;
    }
    if (nth > pool.nworkers + 1) nth = pool.nworkers + 1; /* work is shared by a counter: fewer is fine */
    pool.fn = fn;
    pool.arg = arg;
    pool.nth = nth;
    atomic_store(&pool.pending, nth - 1);
    pool.gen++;
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);

    fn(arg, 0, nth);

    /* The others usually finish within microseconds of us: spin briefly before sleeping. */
    for (int spin = 0; spin < 20000 && atomic_load(&pool.pending) > 0; spin++) {
    }
    pthread_mutex_lock(&pool.mu);
    while (atomic_load(&pool.pending) > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool_busy);
}

void ek_parallel(void (*fn)(void *arg, int ith, int nth), void *arg, int nth) { pool_run(fn, arg, nth); }

/* ---- matmul ----------------------------------------------------------------------------------- */
static const ek_type_kernels *level_kernels(const ek_kernel_set *k, int type) {
    switch (type) {
    case EK_TYPE_F32: return &k->f32;
    case EK_TYPE_F16: return &k->f16;
    case EK_TYPE_BF16: return &k->bf16;
    case EK_TYPE_Q8_0: return &k->q8_0;
    case EK_TYPE_Q5_0: return &k->q5_0;
    case EK_TYPE_Q5_1: return &k->q5_1;
    case EK_TYPE_Q4_K: return &k->q4_k;
    case EK_TYPE_Q6_K: return &k->q6_k;
    default: return NULL;
    }
}

/* A level that lacks a type's kernels runs the scalar ones. */
static const ek_type_kernels *type_kernels(const ek_kernel_set *k, int type) {
    const ek_type_kernels *t = level_kernels(k, type);
    return t != NULL && t->dot == NULL ? level_kernels(&ek_kernels_scalar, type) : t;
}

int ek_vec_type(int type) {
    switch (type) {
    case EK_TYPE_F32:
    case EK_TYPE_F16: return EK_TYPE_F32;
    case EK_TYPE_BF16: return EK_TYPE_BF16;
    case EK_TYPE_Q8_0:
    case EK_TYPE_Q5_0: return EK_TYPE_Q8_0;
    case EK_TYPE_Q5_1: return EK_TYPE_Q8_1;
    case EK_TYPE_Q4_K:
    case EK_TYPE_Q6_K: return EK_TYPE_Q8_K;
    default: return -1;
    }
}

const char *ek_kernel_impl(int type) {
    const ek_type_kernels *k = type_kernels(ek_kernels(), type);
    return k ? k->impl : NULL;
}

typedef struct {
    const ek_type_kernels *k;
    const uint8_t *w, *x;
    float *y;
    size_t wrow, xrow;
    int64_t nrows, ncols, ntok, chunk;
    const uint8_t *packed; /* packed token groups for k->gemm, or NULL */
    int64_t ngroups;
    size_t gbytes;
    atomic_llong next;
} mm_job;

static void mm_rows(const mm_job *j, int64_t r0, int64_t r1) {
    const ek_type_kernels *k = j->k;
    const int64_t n = j->ncols, ld = j->nrows;
    int64_t t = 0;
    for (int64_t g = 0; g < j->ngroups; g++, t += k->gnc) {
        k->gemm(n, j->w + (size_t)r0 * j->wrow, j->wrow, r1 - r0, j->packed + (size_t)g * j->gbytes, j->y + t * ld + r0, ld);
    }
    if (k->tile != NULL) {
        for (; t + k->nc <= j->ntok; t += k->nc) {
            const uint8_t *x = j->x + (size_t)t * j->xrow;
            float *y = j->y + t * ld;
            int64_t r = r0;
            for (; r + k->mr <= r1; r += k->mr) k->tile(n, j->w + (size_t)r * j->wrow, j->wrow, x, j->xrow, y + r, ld);
            for (; r < r1; r++) {
                for (int c = 0; c < k->nc; c++) k->dot(n, j->w + (size_t)r * j->wrow, x + c * j->xrow, y + c * ld + r);
            }
        }
    }
    for (; t < j->ntok; t++) {
        const uint8_t *x = j->x + (size_t)t * j->xrow;
        int64_t r = r0;
        if (k->dotr != NULL) {
            for (; r + k->vr <= r1; r += k->vr) k->dotr(n, j->w + (size_t)r * j->wrow, j->wrow, x, j->y + t * ld + r);
        }
        for (; r < r1; r++) k->dot(n, j->w + (size_t)r * j->wrow, x, j->y + t * ld + r);
    }
}

static void mm_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    mm_job *j = (mm_job *)arg;
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= j->nrows) break;
        mm_rows(j, r0, r0 + j->chunk < j->nrows ? r0 + j->chunk : j->nrows);
    }
}

static int online_cpus(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Shared checks; returns the weight row size or 0 (error set). */
static size_t check_args(int type, const void *w, int64_t nrows, int64_t ncols, const void *x, int64_t ntokens,
                         const float *y) {
    if (ek_vec_type(type) < 0) {
        ek_set_error("no matmul kernels for ggml type %d (supported: F32=0, F16=1, Q5_0=6, Q5_1=7, Q8_0=8, Q4_K=12, Q6_K=14, "
                     "BF16=30)", type);
        return 0;
    }
    const size_t wrow = ek_row_size(type, ncols);
    if (wrow == 0) {
        ek_set_error("ncols=%lld is not a positive multiple of the type's block size (%s)", (long long)ncols,
                     ek_vec_type(type) == EK_TYPE_Q8_K ? "256" : ek_vec_type(type) == EK_TYPE_F32 || type == EK_TYPE_BF16 ? "1" : "32");
        return 0;
    }
    if (nrows < 0 || ntokens < 0) {
        ek_set_error("negative shape: nrows=%lld ntokens=%lld", (long long)nrows, (long long)ntokens);
        return 0;
    }
    if ((uint64_t)nrows > SIZE_MAX / wrow || (uint64_t)ntokens > SIZE_MAX / sizeof(float) / (uint64_t)ncols ||
        (ntokens > 0 && (uint64_t)nrows > SIZE_MAX / sizeof(float) / (uint64_t)ntokens)) {
        ek_set_error("shape too large");
        return 0;
    }
    if (nrows > 0 && ntokens > 0 && (w == NULL || x == NULL || y == NULL)) {
        ek_set_error("NULL buffer");
        return 0;
    }
    return wrow;
}

int ek_matmul_q(int type, const void *w, int64_t nrows, int64_t ncols, const void *xq, int64_t ntokens, float *y,
                int nthreads) {
    const size_t wrow = check_args(type, w, nrows, ncols, xq, ntokens, y);
    if (wrow == 0) return -1;
    if (nrows == 0 || ntokens == 0) return 0;

    mm_job job = {.k = type_kernels(ek_kernels(), type), .w = (const uint8_t *)w, .x = (const uint8_t *)xq, .y = y,
                  .wrow = wrow, .xrow = ek_row_size(ek_vec_type(type), ncols), .nrows = nrows, .ncols = ncols,
                  .ntok = ntokens};
    int nth = nthreads > 0 ? nthreads : online_cpus();
    /* Under ~64K multiply-adds a thread costs more than it saves. */
    const int64_t work = nrows * ncols * ntokens / 65536;
    if (nth > work) nth = work > 1 ? (int)work : 1;
    if (nth > POOL_MAX) nth = POOL_MAX;

    /* Chunks: about 4 per thread for balance (threads share cores with others), at most 256 KiB
     * of weights when there are several token tiles to pass over them, whole register tiles
     * (and whole dotr row groups). */
    const int mr = job.k->mr > job.k->vr ? job.k->mr : job.k->vr > 0 ? job.k->vr : 1;
    int64_t chunk = (nrows + 4 * nth - 1) / (4 * nth);
    if (ntokens > job.k->nc) {
        const int64_t fit = (int64_t)((256 * 1024) / wrow);
        if (chunk > fit) chunk = fit;
    }
    chunk = (chunk + mr - 1) / mr * mr;
    if (chunk < mr) chunk = mr;
    job.chunk = chunk;
    atomic_init(&job.next, 0);
    if ((nrows + chunk - 1) / chunk < nth) nth = (int)((nrows + chunk - 1) / chunk);

    /* Packed GEMM for whole token groups: rearrange their activations once, here. */
    void *packed = NULL;
    if (job.k->gemm != NULL && ntokens >= job.k->gnc) {
        job.ngroups = ntokens / job.k->gnc;
        job.gbytes = job.k->gbytes(ncols);
        /* posix_memalign, not C11 aligned_alloc: Android's libc has the latter only from API 28 */
        if (posix_memalign(&packed, 64, job.gbytes * (size_t)job.ngroups) != 0) {
            packed = NULL;
            job.ngroups = 0; /* no memory: the register tiles still work */
        } else {
            for (int64_t g = 0; g < job.ngroups; g++) {
                job.k->pack(ncols, job.x + (size_t)(g * job.k->gnc) * job.xrow, job.xrow,
                            (uint8_t *)packed + (size_t)g * job.gbytes);
            }
            job.packed = (const uint8_t *)packed;
        }
    }
    pool_run(mm_task, &job, nth);
    free(packed);
    return 0;
}

size_t ek_quantize_activations(int type, const float *x, void *dst, int64_t ntokens, int64_t ncols) {
    const int vt = ek_vec_type(type);
    if (vt < 0) {
        ek_set_error("no matmul kernels for ggml type %d", type);
        return 0;
    }
    const size_t xrow = ek_row_size(vt, ncols);
    if (xrow == 0 || ntokens <= 0 || x == NULL || dst == NULL) {
        ek_set_error("bad activation shape or buffer (ntokens=%lld, ncols=%lld)", (long long)ntokens, (long long)ncols);
        return 0;
    }
    uint8_t *out = (uint8_t *)dst;
    const ek_kernel_set *k = ek_kernels(); /* same bytes at every level; vectorized above scalar */
    for (int64_t t = 0; t < ntokens; t++) {
        const float *row = x + t * ncols;
        switch (vt) {
        case EK_TYPE_Q8_0: k->act_q8_0(row, out + (size_t)t * xrow, ncols); break;
        case EK_TYPE_Q8_K: k->act_q8_k(row, out + (size_t)t * xrow, ncols); break;
        case EK_TYPE_Q8_1: ek_act_q8_1(row, out + (size_t)t * xrow, ncols); break;
        case EK_TYPE_BF16: ek_act_bf16(row, out + (size_t)t * xrow, ncols); break;
        default: memcpy(out + (size_t)t * xrow, row, xrow); break;
        }
    }
    return xrow * (size_t)ntokens;
}

int ek_matmul(int type, const void *w, int64_t nrows, int64_t ncols, const float *x, int64_t ntokens, float *y,
              int nthreads) {
    if (check_args(type, w, nrows, ncols, x, ntokens, y) == 0) return -1;
    if (nrows == 0 || ntokens == 0) return 0;
    if (ek_vec_type(type) == EK_TYPE_F32) return ek_matmul_q(type, w, nrows, ncols, x, ntokens, y, nthreads);
    const size_t bytes = ek_row_size(ek_vec_type(type), ncols) * (size_t)ntokens;
    void *xq = malloc(bytes);
    if (xq == NULL) {
        ek_set_error("out of memory (%zu bytes for quantized activations)", bytes);
        return -2;
    }
    ek_quantize_activations(type, x, xq, ntokens, ncols);
    const int rc = ek_matmul_q(type, w, nrows, ncols, xq, ntokens, y, nthreads);
    free(xq);
    return rc;
}
