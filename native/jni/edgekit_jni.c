/* JNI glue between dev.edgekit.EdgekitModel / EdgekitSession and libedgekit's C runtime.
 *
 * Handles cross as jlong (the C pointers); nothing is kept in JNI globals, so any number of models and
 * sessions live in one process. Text crosses as byte[] of UTF-8 in both directions: JNI's
 * NewStringUTF / GetStringUTFChars speak *modified* UTF-8 (4-byte characters as surrogate pairs), which
 * would mangle emoji; the Java side converts with StandardCharsets.UTF_8. Every C error becomes
 * dev.edgekit.EdgekitException carrying ek_last_error() and the status. */
#include <jni.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "edgekit.h"

#define EXC_CLASS "dev/edgekit/EdgekitException"

static void *ptr(jlong h) { return (void *)(intptr_t)h; }
static jlong handle(const void *p) { return (jlong)(intptr_t)p; }

/* Throw EdgekitException(status, message); message is ek_last_error() unless given. */
static void throw_status(JNIEnv *env, int status, const char *msg) {
    if ((*env)->ExceptionCheck(env)) return; /* a Java exception (from the callback) wins */
    jclass cls = (*env)->FindClass(env, EXC_CLASS);
    if (!cls) return; /* NoClassDefFoundError is pending */
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(I[B)V");
    if (!ctor) return;
    if (!msg || !*msg) msg = ek_last_error();
    if (!msg || !*msg) msg = ek_status_name(status);
    if (!msg) msg = "unknown error";
    /* as bytes: the message may name a file whose path is not ASCII (NewStringUTF wants modified UTF-8) */
    jsize n = (jsize)strlen(msg);
    jbyteArray jmsg = (*env)->NewByteArray(env, n);
    if (!jmsg) return;
    (*env)->SetByteArrayRegion(env, jmsg, 0, n, (const jbyte *)msg);
    jobject exc = (*env)->NewObject(env, cls, ctor, (jint)status, jmsg);
    if (exc) (*env)->Throw(env, (jthrowable)exc);
}

/* A NUL-terminated copy of a byte[] (UTF-8 from the Java side); NULL with an exception pending. */
static char *cstr(JNIEnv *env, jbyteArray bytes) {
    if (!bytes) {
        throw_status(env, EK_ERR_INVALID, "null string");
        return NULL;
    }
    jsize n = (*env)->GetArrayLength(env, bytes);
    char *s = malloc((size_t)n + 1);
    if (!s) {
        throw_status(env, EK_ERR_NOMEM, "out of memory");
        return NULL;
    }
    (*env)->GetByteArrayRegion(env, bytes, 0, n, (jbyte *)s);
    s[n] = 0;
    return s;
}

JNIEXPORT jint JNICALL Java_dev_edgekit_EdgekitModel_nativeAbiVersion(JNIEnv *env, jclass cls) {
    (void)env, (void)cls;
    return ek_abi_version();
}

JNIEXPORT jlong JNICALL Java_dev_edgekit_EdgekitModel_nativeLoad(JNIEnv *env, jclass cls, jbyteArray path) {
    (void)cls;
    if (ek_abi_version() != EK_ABI_VERSION) {
        throw_status(env, EK_ERR_UNSUPPORTED, "libedgekit ABI version differs from the one the JNI glue was built for");
        return 0;
    }
    char *p = cstr(env, path);
    if (!p) return 0;
    ek_model *m = NULL;
    ek_status st = ek_model_load(p, NULL, &m);
    free(p);
    if (st != EK_OK) {
        throw_status(env, st, NULL);
        return 0;
    }
    return handle(m);
}

JNIEXPORT void JNICALL Java_dev_edgekit_EdgekitModel_nativeFree(JNIEnv *env, jclass cls, jlong model) {
    (void)env, (void)cls;
    ek_model_free(ptr(model));
}

/* info as a String[] of key=value lines would need parsing; the few fields an app wants go in an int[]:
 * n_vocab, n_ctx_train, n_embd, n_layer, n_head, n_head_kv, n_ff, bos, eos, eot, add_bos. */
JNIEXPORT jintArray JNICALL Java_dev_edgekit_EdgekitModel_nativeInfo(JNIEnv *env, jclass cls, jlong model) {
    (void)cls;
    ek_model_info info;
    ek_status st = ek_model_get_info(ptr(model), &info);
    if (st != EK_OK) {
        throw_status(env, st, NULL);
        return NULL;
    }
    jint v[11] = {info.n_vocab, info.n_ctx_train, info.n_embd, info.n_layer, info.n_head, info.n_head_kv,
                  info.n_ff,    info.bos,         info.eos,    info.eot,     info.add_bos};
    jintArray out = (*env)->NewIntArray(env, 11);
    if (out) (*env)->SetIntArrayRegion(env, out, 0, 11, v);
    return out;
}

/* A metadata value's UTF-8 bytes, or null if the key is absent. */
JNIEXPORT jbyteArray JNICALL Java_dev_edgekit_EdgekitModel_nativeMeta(JNIEnv *env, jclass cls, jlong model,
                                                                      jbyteArray key) {
    (void)cls;
    char *k = cstr(env, key);
    if (!k) return NULL;
    const char *v = ek_model_meta(ptr(model), k);
    free(k);
    if (!v) return NULL;
    jsize n = (jsize)strlen(v);
    jbyteArray out = (*env)->NewByteArray(env, n);
    if (out) (*env)->SetByteArrayRegion(env, out, 0, n, (const jbyte *)v);
    return out;
}

JNIEXPORT jlong JNICALL Java_dev_edgekit_EdgekitSession_nativeNew(JNIEnv *env, jclass cls, jlong model, jint n_ctx,
                                                                  jint n_threads, jint n_threads_batch, jint n_batch,
                                                                  jboolean kv_f32) {
    (void)cls;
    ek_session_params p = {.n_ctx = n_ctx, .n_threads = n_threads, .n_threads_batch = n_threads_batch,
                           .n_batch = n_batch, .kv_f32 = kv_f32 ? 1 : 0};
    ek_session *s = NULL;
    ek_status st = ek_session_new(ptr(model), &p, &s);
    if (st != EK_OK) {
        throw_status(env, st, NULL);
        return 0;
    }
    return handle(s);
}

JNIEXPORT void JNICALL Java_dev_edgekit_EdgekitSession_nativeFree(JNIEnv *env, jclass cls, jlong session) {
    (void)env, (void)cls;
    ek_session_free(ptr(session));
}

JNIEXPORT void JNICALL Java_dev_edgekit_EdgekitSession_nativeAbort(JNIEnv *env, jclass cls, jlong session) {
    (void)env, (void)cls;
    ek_abort(ptr(session));
}

/* stats: d = {load, prefill, decode, first token} ms, n = {prefill, decode, reused tokens, peak RSS bytes} */
JNIEXPORT void JNICALL Java_dev_edgekit_EdgekitSession_nativeStats(JNIEnv *env, jclass cls, jlong session,
                                                                   jdoubleArray d, jlongArray n) {
    (void)cls;
    ek_stats s;
    ek_status st = ek_session_stats(ptr(session), &s);
    if (st != EK_OK) {
        throw_status(env, st, NULL);
        return;
    }
    jdouble dv[4] = {s.load_ms, s.prefill_ms, s.decode_ms, s.first_token_ms};
    jlong nv[4] = {s.n_prefill, s.n_decode, s.n_reused, s.peak_rss_bytes};
    (*env)->SetDoubleArrayRegion(env, d, 0, 4, dv);
    (*env)->SetLongArrayRegion(env, n, 0, 4, nv);
}

/* The streaming callback: each piece (whole UTF-8 characters) goes to sink.piece(byte[]) on the calling
 * thread; a Java exception or a true return stops the generation. */
typedef struct sink {
    JNIEnv *env;
    jobject obj;
    jmethodID piece;
} sink;

static int on_piece(const char *piece, size_t len, void *user) {
    sink *k = user;
    JNIEnv *env = k->env;
    if ((*env)->ExceptionCheck(env)) return 1; /* no JNI calls with an exception pending */
    if (!k->obj || len == 0) return 0;
    jbyteArray b = (*env)->NewByteArray(env, (jsize)len);
    if (!b) return 1; /* OutOfMemoryError pending */
    (*env)->SetByteArrayRegion(env, b, 0, (jsize)len, (const jbyte *)piece);
    jboolean stop = (*env)->CallBooleanMethod(env, k->obj, k->piece, b);
    (*env)->DeleteLocalRef(env, b); /* one per piece: a long generation would fill the local reference table */
    return (*env)->ExceptionCheck(env) || stop;
}

static int sink_init(JNIEnv *env, jobject obj, sink *k) {
    k->env = env;
    k->obj = obj;
    k->piece = NULL;
    if (!obj) return 1;
    jclass cls = (*env)->GetObjectClass(env, obj);
    k->piece = (*env)->GetMethodID(env, cls, "piece", "([B)Z");
    (*env)->DeleteLocalRef(env, cls);
    return k->piece != NULL;
}

static ek_sampling sampling(jfloat temperature, jint top_k, jfloat top_p, jfloat min_p, jfloat repeat_penalty,
                            jint repeat_last_n, jlong seed, jint max_tokens, jboolean ignore_eos) {
    return (ek_sampling){.temperature = temperature, .top_k = top_k, .top_p = top_p, .min_p = min_p,
                         .repeat_penalty = repeat_penalty, .repeat_last_n = repeat_last_n,
                         .seed = (uint64_t)seed, .max_tokens = max_tokens, .ignore_eos = ignore_eos ? 1 : 0};
}

/* Returns the ek_status (>= 0); an error (< 0) is thrown instead. */
JNIEXPORT jint JNICALL Java_dev_edgekit_EdgekitSession_nativeGenerate(
    JNIEnv *env, jclass cls, jlong session, jbyteArray prompt, jfloat temperature, jint top_k, jfloat top_p,
    jfloat min_p, jfloat repeat_penalty, jint repeat_last_n, jlong seed, jint max_tokens, jboolean ignore_eos,
    jobject obj) {
    (void)cls;
    sink k;
    if (!sink_init(env, obj, &k)) return EK_ERR_INVALID;
    char *p = cstr(env, prompt);
    if (!p) return EK_ERR_INVALID;
    ek_sampling s = sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, max_tokens,
                             ignore_eos);
    ek_status st = ek_generate(ptr(session), p, &s, on_piece, &k);
    free(p);
    if (st < 0) throw_status(env, st, NULL);
    return st;
}

/* roles and contents: UTF-8 byte[] each, the same length. */
JNIEXPORT jint JNICALL Java_dev_edgekit_EdgekitSession_nativeChat(
    JNIEnv *env, jclass cls, jlong session, jobjectArray roles, jobjectArray contents, jfloat temperature,
    jint top_k, jfloat top_p, jfloat min_p, jfloat repeat_penalty, jint repeat_last_n, jlong seed, jint max_tokens,
    jboolean ignore_eos, jobject obj) {
    (void)cls;
    sink k;
    if (!sink_init(env, obj, &k)) return EK_ERR_INVALID;
    jsize n = (*env)->GetArrayLength(env, roles);
    if (n != (*env)->GetArrayLength(env, contents)) {
        throw_status(env, EK_ERR_INVALID, "roles and contents differ in length");
        return EK_ERR_INVALID;
    }
    ek_message *msgs = calloc(n > 0 ? (size_t)n : 1, sizeof *msgs);
    char **strs = calloc(2 * (size_t)n + 1, sizeof *strs);
    ek_status st = EK_ERR_NOMEM;
    if (!msgs || !strs) {
        throw_status(env, st, "out of memory");
        goto done;
    }
    for (jsize i = 0; i < n; i++) {
        for (int j = 0; j < 2; j++) {
            jobject b = (*env)->GetObjectArrayElement(env, j ? contents : roles, i);
            strs[2 * i + j] = cstr(env, b);
            (*env)->DeleteLocalRef(env, b);
            if (!strs[2 * i + j]) {
                st = EK_ERR_INVALID;
                goto done;
            }
        }
        msgs[i] = (ek_message){.role = strs[2 * i], .content = strs[2 * i + 1]};
    }
    ek_sampling s = sampling(temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, seed, max_tokens,
                             ignore_eos);
    st = ek_chat(ptr(session), msgs, (size_t)n, &s, on_piece, &k);
    if (st < 0) throw_status(env, st, NULL);
done:
    if (strs)
        for (jsize i = 0; i < 2 * n; i++) free(strs[i]);
    free(strs);
    free(msgs);
    return st;
}
