package dev.edgekit;

import java.nio.charset.StandardCharsets;
import java.util.List;

/**
 * One conversation on an {@link EdgekitModel}: its KV cache (a following call reuses the prompt prefix it
 * shares with the previous one), sampler and stats. One generation at a time per session (calls from other
 * threads wait); {@link #abort()} may be called from any thread. Sessions of one model run in parallel.
 */
public final class EdgekitSession implements AutoCloseable {
    /** Outcomes of a generation besides the text (lastStatus()). */
    public static final int OK = 0, ABORTED = 1, CONTEXT_FULL = 2;

    /** Session settings; 0 takes the runtime's default. */
    public static final class Params {
        int nCtx, nThreads, nThreadsBatch, nBatch;
        boolean kvF32;

        /** KV-cache positions (default: min(4096, the model's training context)). */
        public Params nCtx(int v) { nCtx = v; return this; }
        /** Decode threads (default: the physical cores, at most 8). */
        public Params threads(int v) { nThreads = v; return this; }
        /** Prefill threads (default: threads). */
        public Params batchThreads(int v) { nThreadsBatch = v; return this; }
        /** Most prompt tokens per forward pass (default 512). */
        public Params batch(int v) { nBatch = v; return this; }
        /** An F32 KV cache instead of F16 (exact comparisons; twice the memory). */
        public Params kvF32(boolean v) { kvF32 = v; return this; }
    }

    private final EdgekitModel model;
    private final Object handleLock = new Object();  // guards handle against abort() racing close()
    private long handle;
    private volatile int lastStatus = OK;

    EdgekitSession(EdgekitModel model, long handle) {
        this.model = model;
        this.handle = handle;
    }

    /** Continue a prompt (special tokens such as bos added as the model asks); the generated text. */
    public synchronized String generate(String prompt, Sampling sampling, PieceListener listener) {
        Sampling s = sampling != null ? sampling : new Sampling();
        Sink sink = new Sink(listener);
        lastStatus = nativeGenerate(handle(), utf8(prompt), s.temperature, s.topK, s.topP, s.minP,
                s.repeatPenalty, s.repeatLastN, s.seed, s.maxTokens, s.ignoreEos, sink);
        return sink.text.toString();
    }

    public String generate(String prompt, Sampling sampling) {
        return generate(prompt, sampling, null);
    }

    /** Answer a conversation with the model's chat template (the assistant's reply, streamed to listener). */
    public synchronized String chat(List<Message> messages, Sampling sampling, PieceListener listener) {
        Sampling s = sampling != null ? sampling : new Sampling();
        byte[][] roles = new byte[messages.size()][], contents = new byte[messages.size()][];
        for (int i = 0; i < roles.length; i++) {
            roles[i] = utf8(messages.get(i).role);
            contents[i] = utf8(messages.get(i).content);
        }
        Sink sink = new Sink(listener);
        lastStatus = nativeChat(handle(), roles, contents, s.temperature, s.topK, s.topP, s.minP,
                s.repeatPenalty, s.repeatLastN, s.seed, s.maxTokens, s.ignoreEos, sink);
        return sink.text.toString();
    }

    public String chat(List<Message> messages, Sampling sampling) {
        return chat(messages, sampling, null);
    }

    /** How the last generation ended: OK (stop token, maxTokens or the listener), ABORTED or CONTEXT_FULL. */
    public int lastStatus() {
        return lastStatus;
    }

    /** Stats of the last generation (and the model's load time). */
    public synchronized Stats stats() {
        double[] d = new double[4];
        long[] n = new long[4];
        nativeStats(handle(), d, n);
        return new Stats(d, n);
    }

    /**
     * Stop the running generation at the next token (it returns the text so far, lastStatus() ABORTED); from any
     * thread. With none running, the next call stops before its first batch. No-op on a closed session.
     */
    public void abort() {
        synchronized (handleLock) {
            if (handle != 0) nativeAbort(handle);
        }
    }

    /** Aborts a running generation, waits for it, frees the KV cache. Calling it again does nothing. */
    @Override
    public void close() {
        abort();
        synchronized (this) {  // after the generation returned
            synchronized (handleLock) {
                if (handle == 0) return;
                nativeFree(handle);
                handle = 0;
            }
        }
        model.forget(this);
    }

    private long handle() {
        if (handle == 0) throw new IllegalStateException("session is closed");
        return handle;
    }

    private static byte[] utf8(String s) {
        if (s == null) throw new NullPointerException("text must not be null");
        if (s.indexOf('\0') >= 0) throw new IllegalArgumentException("text contains a NUL character");
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** Called by the JNI glue with each piece's UTF-8 bytes (whole characters, so each decodes alone). */
    private static final class Sink {
        final PieceListener listener;
        final StringBuilder text = new StringBuilder();

        Sink(PieceListener listener) {
            this.listener = listener;
        }

        boolean piece(byte[] bytes) {
            String s = new String(bytes, StandardCharsets.UTF_8);
            text.append(s);
            return listener != null && listener.onPiece(s);
        }
    }

    static native long nativeNew(long model, int nCtx, int nThreads, int nThreadsBatch, int nBatch, boolean kvF32);
    private static native void nativeFree(long session);
    private static native void nativeAbort(long session);
    private static native void nativeStats(long session, double[] d, long[] n);
    private static native int nativeGenerate(long session, byte[] prompt, float temperature, int topK, float topP,
            float minP, float repeatPenalty, int repeatLastN, long seed, int maxTokens, boolean ignoreEos, Sink sink);
    private static native int nativeChat(long session, byte[][] roles, byte[][] contents, float temperature,
            int topK, float topP, float minP, float repeatPenalty, int repeatLastN, long seed, int maxTokens,
            boolean ignoreEos, Sink sink);
}
