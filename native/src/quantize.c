/* Public entry points: type dispatch, row sizes, and a fork-join split of rows over pthreads.
 * Rows are independent, so the output does not depend on the thread count. */
#include <pthread.h>
#include <unistd.h>

#include "common.h"
#include "edgekit.h"

#define EK_MAX_THREADS 64
/* Below this many values a thread costs more than it saves. */
#define EK_MIN_VALUES_PER_THREAD (32 * 1024)

typedef void (*row_fn)(const float *x, void *dst, int64_t n_per_row, const float *imatrix);

typedef struct {
    row_fn fn;
    const float *src;
    uint8_t *dst;
    int64_t row_begin, row_end, n_per_row;
    size_t row_bytes;
    const float *imatrix;
} ek_job;

const char *ek_version(void) { return "0.1.0"; }

static int block_size(int type) {
    switch (type) {
    case EK_TYPE_F32:
    case EK_TYPE_F16:
    case EK_TYPE_BF16: return 1;
    case EK_TYPE_Q8_0:
    case EK_TYPE_Q8_1:
    case EK_TYPE_Q5_0:
    case EK_TYPE_Q5_1: return EK_QK8_0;
    case EK_TYPE_Q4_K:
    case EK_TYPE_Q6_K:
    case EK_TYPE_Q8_K: return EK_QK_K;
    default: return 0;
    }
}

static size_t block_bytes(int type) {
    switch (type) {
    case EK_TYPE_F32: return 4;
    case EK_TYPE_F16:
    case EK_TYPE_BF16: return 2;
    case EK_TYPE_Q8_1: return sizeof(ek_block_q8_1);
    case EK_TYPE_Q5_0: return sizeof(ek_block_q5_0);
    case EK_TYPE_Q5_1: return sizeof(ek_block_q5_1);
    case EK_TYPE_Q8_K: return 292; /* float d, 256 int8, 16 int16 (kernels.h) */
    case EK_TYPE_Q8_0: return sizeof(ek_block_q8_0);
    case EK_TYPE_Q4_K: return sizeof(ek_block_q4_k);
    case EK_TYPE_Q6_K: return sizeof(ek_block_q6_k);
    default: return 0;
    }
}

static row_fn row_quantizer(int type) {
    switch (type) {
    case EK_TYPE_Q5_0: return ek_quantize_row_q5_0;
    case EK_TYPE_Q5_1: return ek_quantize_row_q5_1;
    case EK_TYPE_Q8_0: return ek_quantize_row_q8_0;
    case EK_TYPE_Q4_K: return ek_quantize_row_q4_k;
    case EK_TYPE_Q6_K: return ek_quantize_row_q6_k;
    default: return NULL;
    }
}

size_t ek_row_size(int type, int64_t n_per_row) {
    const int bs = block_size(type);
    if (bs == 0 || n_per_row <= 0 || n_per_row % bs != 0) return 0;
    return (size_t)(n_per_row / bs) * block_bytes(type);
}

static void *run_job(void *arg) {
    const ek_job *job = (const ek_job *)arg;
    for (int64_t r = job->row_begin; r < job->row_end; r++) {
        job->fn(job->src + r * job->n_per_row, job->dst + (size_t)r * job->row_bytes, job->n_per_row,
                job->imatrix);
    }
    return NULL;
}

static int online_cpus(void) {
    const long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

size_t ek_quantize(int type, const float *src, void *dst, int64_t nrows, int64_t n_per_row,
                   const float *imatrix, int nthreads) {
    const size_t row_bytes = ek_row_size(type, n_per_row);
    const row_fn fn = row_quantizer(type);
    if (row_bytes == 0 || fn == NULL || nrows < 0 || (nrows > 0 && (src == NULL || dst == NULL))) return 0;
    if (nrows == 0) return 0;

    int nt = nthreads > 0 ? nthreads : online_cpus();
    const int64_t by_work = (nrows * n_per_row) / EK_MIN_VALUES_PER_THREAD;
    if (nt > by_work) nt = by_work > 0 ? (int)by_work : 1;
    if (nt > nrows) nt = (int)nrows;
    if (nt > EK_MAX_THREADS) nt = EK_MAX_THREADS;

    ek_job jobs[EK_MAX_THREADS];
    pthread_t threads[EK_MAX_THREADS];
    for (int t = 0; t < nt; t++) {
        jobs[t] = (ek_job){fn, src, (uint8_t *)dst, nrows * t / nt, nrows * (t + 1) / nt, n_per_row, row_bytes,
                           imatrix};
    }
    /* Thread 0's share runs on the caller; if a thread cannot be created its rows run here too. */
    int started[EK_MAX_THREADS] = {0};
    for (int t = 1; t < nt; t++) {
        started[t] = pthread_create(&threads[t], NULL, run_job, &jobs[t]) == 0;
    }
    run_job(&jobs[0]);
    for (int t = 1; t < nt; t++) {
        if (started[t]) {
            pthread_join(threads[t], NULL);
        } else {
            run_job(&jobs[t]);
        }
    }
    return row_bytes * (size_t)nrows;
}
