package dev.edgekit;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashSet;
import java.util.Set;

/**
 * A GGUF model loaded by libedgekit (memory-mapped, weights never copied): read-only, shared by any number of
 * {@link EdgekitSession}s, which hold the KV caches. close() closes the sessions still open, then unmaps.
 *
 * <pre>{@code
 * try (EdgekitModel model = EdgekitModel.load("/data/.../model.gguf");
 *      EdgekitSession chat = model.newSession(new EdgekitSession.Params().nCtx(2048))) {
 *     chat.chat(Collections.singletonList(Message.user("Hello!")), new Sampling().temperature(0.7f).seed(1), piece -> {
 *         System.out.print(piece);
 *         return false;  // true stops
 *     });
 * }
 * }</pre>
 *
 * The native library is {@code libedgekit_jni} (next to {@code libedgekit}); the system property
 * {@code edgekit.jni.library} may name its full path instead.
 */
public final class EdgekitModel implements AutoCloseable {
    static {
        String path = System.getProperty("edgekit.jni.library");
        if (path != null && !path.isEmpty()) System.load(path);
        else System.loadLibrary("edgekit_jni");
    }

    private long handle;
    private boolean closing;  // no new sessions once close() has begun
    private final String path;
    private final Set<EdgekitSession> sessions = new LinkedHashSet<>();

    private EdgekitModel(long handle, String path) {
        this.handle = handle;
        this.path = path;
    }

    /** Map and check a GGUF file; throws EdgekitException with the runtime's message if it cannot be used. */
    public static EdgekitModel load(String path) {
        if (path == null) throw new NullPointerException("path");
        return new EdgekitModel(nativeLoad(path.getBytes(StandardCharsets.UTF_8)), path);
    }

    /** A new session (KV cache, sampler state, stats) on this model. */
    public synchronized EdgekitSession newSession(EdgekitSession.Params params) {
        EdgekitSession.Params p = params != null ? params : new EdgekitSession.Params();
        EdgekitSession s = new EdgekitSession(this, nativeNew(handle(), p));
        sessions.add(s);
        return s;
    }

    public EdgekitSession newSession() {
        return newSession(null);
    }

    /** A metadata value as text (numbers formatted, arrays as "[n items]"), or null if absent. */
    public synchronized String meta(String key) {
        byte[] v = nativeMeta(handle(), key.getBytes(StandardCharsets.UTF_8));
        return v == null ? null : new String(v, StandardCharsets.UTF_8);
    }

    /** Vocabulary size, training context, embedding width and layers: {n_vocab, n_ctx_train, n_embd, n_layer}. */
    public synchronized int[] shape() {
        int[] v = nativeInfo(handle());
        return new int[] {v[0], v[1], v[2], v[3]};
    }

    public String path() {
        return path;
    }

    /** Closes every session still open on the model, then unmaps it. Calling it again does nothing. */
    @Override
    public void close() {
        ArrayList<EdgekitSession> open;
        synchronized (this) {
            closing = true;
            open = new ArrayList<>(sessions);
        }
        for (EdgekitSession s : open) s.close();  // waits for a running generation (aborted first)
        synchronized (this) {
            if (handle != 0) nativeFree(handle);
            handle = 0;
        }
    }

    synchronized void forget(EdgekitSession s) {
        sessions.remove(s);
    }

    private long handle() {
        if (handle == 0 || closing) throw new IllegalStateException("model is closed");
        return handle;
    }

    private static long nativeNew(long model, EdgekitSession.Params p) {
        return EdgekitSession.nativeNew(model, p.nCtx, p.nThreads, p.nThreadsBatch, p.nBatch, p.kvF32);
    }

    static native int nativeAbiVersion();
    private static native long nativeLoad(byte[] path);
    private static native void nativeFree(long model);
    private static native int[] nativeInfo(long model);
    private static native byte[] nativeMeta(long model, byte[] key);
}
