/* edgekit-run: run a GGUF with libedgekit from the command line.
 *
 *   edgekit-run -m model.gguf -p PROMPT [-n N] [--seed S] [--temp T] [-t THREADS]   generated text to stdout
 *   edgekit-run -m model.gguf --chat                  interactive: one user message per stdin line
 *   edgekit-run -m model.gguf --bench [-p 128] [-n 64] [--depth D] [--json]   load, TTFT, prefill/decode speed,
 *                                                     peak RSS (--depth: D tokens in the KV cache first, untimed)
 *   edgekit-run --bandwidth [--mb 1024] [-t THREADS]  memory read bandwidth (GB/s)
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "edgekit.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void usage(void) {
    fprintf(stderr,
            "usage: edgekit-run -m MODEL.gguf (-p PROMPT | --chat | --bench) [-n N] [--seed S] [--temp T] [-t THREADS]\n"
            "                   [--ctx N] [--kv-f32] [--depth D] [--json]\n"
            "       edgekit-run --bandwidth [--mb MIB] [-t THREADS]\n");
    exit(1);
}

/* One line and exit 1; what: the step that failed, or NULL when the message names the file already. */
static void die(const char *what, ek_status st) {
    if (what) fprintf(stderr, "edgekit-run: %s: %s (%s)\n", what, ek_last_error(), ek_status_name(st));
    else fprintf(stderr, "edgekit-run: %s (%s)\n", ek_last_error(), ek_status_name(st));
    exit(1);
}

static int print_piece(const char *piece, size_t len, void *user) {
    (void)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int64_t peak_rss(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
#ifdef __APPLE__
    return (int64_t)ru.ru_maxrss;
#else
    return (int64_t)ru.ru_maxrss * 1024;
#endif
}

/* Resident set now (bytes), where the OS says (Linux and Android: /proc/self/statm); 0 elsewhere. */
static int64_t current_rss(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    int ok = fscanf(f, "%ld %ld", &pages, &resident) == 2;
    fclose(f);
    return ok ? (int64_t)resident * sysconf(_SC_PAGESIZE) : 0;
}

/* ---- bandwidth: every thread sums its own slice of one large buffer ---- */

typedef struct {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
} slice;

static void *read_slice(void *arg) {
    slice *s = arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = 0; i + 4 <= s->n; i += 4) {
        a += s->p[i];
        b += s->p[i + 1];
        c += s->p[i + 2];
        d += s->p[i + 3];
    }
    s->sum = a + b + c + d;
    return NULL;
}

static int bandwidth(size_t mib, int threads, int json) {
    size_t n = mib * (1u << 20) / sizeof(uint64_t);
    uint64_t *buf = malloc(n * sizeof *buf);
    if (!buf) {
        fprintf(stderr, "edgekit-run: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++) buf[i] = i; /* touch every page */
    if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (threads > 64) threads = 64;
    pthread_t tid[64];
    slice sl[64];
    double best = 0;
    uint64_t sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_ms();
        for (int k = 0; k < threads; k++) {
            size_t lo = n / threads * k, hi = k + 1 == threads ? n : n / threads * (k + 1);
            sl[k] = (slice){buf + lo, hi - lo, 0};
            pthread_create(&tid[k], NULL, read_slice, &sl[k]);
        }
        for (int k = 0; k < threads; k++) {
            pthread_join(tid[k], NULL);
            sink += sl[k].sum;
        }
        double gbs = (double)(n * sizeof *buf) / ((now_ms() - t0) * 1e6);
        if (gbs > best) best = gbs;
    }
    if (json) printf("{\"bandwidth_gb_s\": %.2f, \"mib\": %zu, \"threads\": %d}\n", best, mib, threads);
    else printf("read bandwidth: %.2f GB/s (%zu MiB, %d threads)\n", best, mib, threads);
    fprintf(stderr, "%s", sink == 42 ? " " : ""); /* keep the sums alive */
    free(buf);
    return 0;
}

/* ---- benchmark: prefill P tokens, decode N greedily ---- */

static int argmax(const float *x, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static int bench(const char *path, int depth, int n_prompt, int n_gen, int threads, int n_ctx, int json) {
    double t0 = now_ms();
    ek_model *m = NULL;
    ek_status st = ek_model_load(path, NULL, &m);
    if (st != EK_OK) die(NULL, st);
    double load_ms = now_ms() - t0;
    ek_model_info info;
    ek_model_get_info(m, &info);
    if (n_ctx <= 0) n_ctx = depth + n_prompt + n_gen + 8;
    ek_session *s = NULL;
    st = ek_session_new(m, &(ek_session_params){.n_ctx = n_ctx, .n_threads = threads}, &s);
    if (st != EK_OK) die("session", st);
    int32_t *toks = malloc((size_t)(depth + n_prompt) * sizeof *toks);
    for (int i = 0; i < depth + n_prompt; i++) toks[i] = (int32_t)((i * 7919u + 13u) % (uint32_t)info.n_vocab);
    if (info.bos >= 0 && depth + n_prompt > 0) toks[0] = info.bos;
    if (depth > 0 && (st = ek_decode(s, toks, depth, 0, 0)) != EK_OK) die("depth", st);
    t0 = now_ms();
    if ((st = ek_decode(s, toks + depth, n_prompt, depth, 0)) != EK_OK) die("prefill", st);
    double prefill_ms = now_ms() - t0;
    int32_t t = argmax(ek_logits(s, -1), info.n_vocab);
    double ttft_ms = now_ms() - t0;
    t0 = now_ms();
    for (int i = 0; i < n_gen; i++) {
        if ((st = ek_decode(s, &t, 1, depth + n_prompt + i, 0)) != EK_OK) die("decode", st);
        t = argmax(ek_logits(s, -1), info.n_vocab);
    }
    double decode_ms = now_ms() - t0;
    double pf = n_prompt / (prefill_ms / 1e3), dc = n_gen / (decode_ms / 1e3);
    int64_t steady = current_rss(); /* what stays resident after decoding (read first: reading it allocates) */
    int64_t rss = peak_rss();
    if (json)
        printf("{\"model\": \"%s\", \"depth\": %d, \"n_prompt\": %d, \"n_gen\": %d, \"threads\": %d, \"load_ms\": %.1f, "
               "\"ttft_ms\": %.1f, \"prefill_tok_s\": %.1f, \"decode_tok_s\": %.1f, \"peak_rss_bytes\": %lld, "
               "\"rss_bytes\": %lld}\n",
               path, depth, n_prompt, n_gen, threads, load_ms, ttft_ms, pf, dc, (long long)rss, (long long)steady);
    else
        printf("load %.1f ms, TTFT %.1f ms, prefill %.1f tok/s (%d), decode %.1f tok/s (%d), peak RSS %.1f MiB\n",
               load_ms, ttft_ms, pf, n_prompt, dc, n_gen, rss / 1048576.0);
    free(toks);
    ek_session_free(s);
    ek_model_free(m);
    return 0;
}

/* ---- chat: one user line at a time, the conversation kept ---- */

typedef struct {
    char *s;
    size_t n, cap;
} text;

static int collect(const char *piece, size_t len, void *user) {
    text *t = user;
    if (t->n + len + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->n + len + 1) cap *= 2;
        char *p = realloc(t->s, cap);
        if (!p) return 1;
        t->s = p;
        t->cap = cap;
    }
    memcpy(t->s + t->n, piece, len);
    t->n += len;
    t->s[t->n] = 0;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static int chat(ek_session *s, const ek_sampling *sp) {
    ek_message *msgs = NULL;
    size_t n = 0;
    char line[8192];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        ek_message *grown = realloc(msgs, (n + 2) * sizeof *msgs);
        if (!grown) break;
        msgs = grown;
        msgs[n++] = (ek_message){"user", strdup(line)};
        text reply = {0};
        ek_status st = ek_chat(s, msgs, n, sp, collect, &reply);
        printf("\n");
        if (st < 0) die("chat", st);
        msgs[n++] = (ek_message){"assistant", reply.s ? reply.s : strdup("")};
    }
    for (size_t i = 0; i < n; i++) free((char *)msgs[i].content);
    free(msgs);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL;
    int n = -1, threads = 0, n_ctx = 0, depth = 0, do_chat = 0, do_bench = 0, do_bw = 0, json = 0, have_seed = 0,
        kv_f32 = 0;
    size_t mib = 1024;
    ek_sampling sp = ek_sampling_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "-m") && more) model = argv[++i];
        else if (!strcmp(a, "-p") && more) prompt = argv[++i];
        else if (!strcmp(a, "-n") && more) n = atoi(argv[++i]);
        else if (!strcmp(a, "-t") && more) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--ctx") && more) n_ctx = atoi(argv[++i]);
        else if (!strcmp(a, "--depth") && more) depth = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && more) sp.seed = strtoull(argv[++i], NULL, 10), have_seed = 1;
        else if (!strcmp(a, "--temp") && more) sp.temperature = (float)atof(argv[++i]);
        else if (!strcmp(a, "--mb") && more) mib = (size_t)atol(argv[++i]);
        else if (!strcmp(a, "--chat")) do_chat = 1;
        else if (!strcmp(a, "--bench")) do_bench = 1;
        else if (!strcmp(a, "--bandwidth")) do_bw = 1;
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--kv-f32")) kv_f32 = 1;
        else usage();
    }
    if (do_bw) return bandwidth(mib, threads, json);
    if (!model || (!prompt && !do_chat && !do_bench)) usage();
    if (do_bench) return bench(model, depth > 0 ? depth : 0, prompt ? atoi(prompt) : 128, n >= 0 ? n : 64, threads,
                               n_ctx, json);
    if (!have_seed) sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    if (n > 0) sp.max_tokens = n;
    ek_model *m = NULL;
    ek_status st = ek_model_load(model, NULL, &m);
    if (st != EK_OK) die(NULL, st);
    ek_session *s = NULL;
    st = ek_session_new(m, &(ek_session_params){.n_ctx = n_ctx, .n_threads = threads, .kv_f32 = kv_f32}, &s);
    if (st != EK_OK) die("session", st);
    int rc = 0;
    if (do_chat) {
        rc = chat(s, &sp);
    } else {
        st = ek_generate(s, prompt, &sp, print_piece, NULL);
        if (st < 0) die("generate", st);
    }
    ek_session_free(s);
    ek_model_free(m);
    return rc;
}
