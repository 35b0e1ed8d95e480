package dev.edgekit;

/**
 * Sampling settings, with edgekit's (and llama.cpp's) defaults; the setters return this for chaining:
 * {@code new Sampling().temperature(0).maxTokens(64)}. A seed gives the same text as edgekit's Python sampler.
 */
public final class Sampling {
    float temperature = 0.8f;  // 0: greedy
    int topK = 40;             // 0: off
    float topP = 0.95f;        // 1: off
    float minP = 0.05f;        // 0: off
    float repeatPenalty = 1f;  // 1: off
    int repeatLastN = 64;
    long seed = 0;
    int maxTokens = 256;
    boolean ignoreEos = false;

    public Sampling temperature(float v) { check(v >= 0, "temperature must be >= 0"); temperature = v; return this; }
    public Sampling topK(int v) { check(v >= 0, "topK must be >= 0"); topK = v; return this; }
    public Sampling topP(float v) { check(v >= 0 && v <= 1, "topP must be in [0, 1]"); topP = v; return this; }
    public Sampling minP(float v) { check(v >= 0 && v <= 1, "minP must be in [0, 1]"); minP = v; return this; }
    public Sampling repeatPenalty(float v) { check(v > 0, "repeatPenalty must be > 0"); repeatPenalty = v; return this; }
    public Sampling repeatLastN(int v) { check(v > 0, "repeatLastN must be > 0"); repeatLastN = v; return this; }
    public Sampling seed(long v) { seed = v; return this; }
    public Sampling maxTokens(int v) { check(v > 0, "maxTokens must be > 0"); maxTokens = v; return this; }
    /** Never stop at end-of-sequence tokens (benchmarks). */
    public Sampling ignoreEos(boolean v) { ignoreEos = v; return this; }

    private static void check(boolean ok, String what) {
        if (!ok) throw new IllegalArgumentException(what);
    }
}
