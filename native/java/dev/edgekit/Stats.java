package dev.edgekit;

/** Timings and counts of a session's last generate/chat (ek_session_stats). */
public final class Stats {
    public final double loadMs, prefillMs, decodeMs, firstTokenMs;
    /** Prompt tokens prefilled, tokens decoded one by one, prompt tokens reused from the KV cache. */
    public final long prefillTokens, decodeTokens, reusedTokens;
    /** Of the whole process; 0 where the OS does not say. */
    public final long peakRssBytes;

    Stats(double[] d, long[] n) {
        loadMs = d[0];
        prefillMs = d[1];
        decodeMs = d[2];
        firstTokenMs = d[3];
        prefillTokens = n[0];
        decodeTokens = n[1];
        reusedTokens = n[2];
        peakRssBytes = n[3];
    }

    public double prefillTokensPerSecond() { return prefillMs > 0 ? prefillTokens * 1000.0 / prefillMs : 0; }
    public double decodeTokensPerSecond() { return decodeMs > 0 ? decodeTokens * 1000.0 / decodeMs : 0; }

    @Override
    public String toString() {
        return String.format("load %.1f ms, first token %.1f ms, prefill %d tok (%.1f tok/s, %d reused), "
                + "decode %d tok (%.1f tok/s), peak RSS %.1f MiB", loadMs, firstTokenMs, prefillTokens,
                prefillTokensPerSecond(), reusedTokens, decodeTokens, decodeTokensPerSecond(),
                peakRssBytes / 1048576.0);
    }
}
