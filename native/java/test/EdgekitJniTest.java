import dev.edgekit.EdgekitException;
import dev.edgekit.EdgekitModel;
import dev.edgekit.EdgekitSession;
import dev.edgekit.Message;
import dev.edgekit.Sampling;
import dev.edgekit.Stats;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Checks dev.edgekit on a real GGUF (run by tests/test_jni.py): streaming, emoji, abort from another thread,
 * errors, concurrent sessions, close. Prints "key\thex(UTF-8 text)" lines that the Python side compares with
 * edgekit's own runtime; exits 1 with a message on the first failed check.
 * Args: model.gguf prompt emoji
 */
public final class EdgekitJniTest {
    static final EdgekitSession.Params PARAMS = new EdgekitSession.Params().nCtx(512).threads(1).kvF32(true);

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static String hex(String s) {
        StringBuilder b = new StringBuilder();
        for (byte x : s.getBytes(StandardCharsets.UTF_8)) b.append(String.format("%02x", x & 0xff));
        return b.toString();
    }

    static Sampling greedy(int n) {
        return new Sampling().temperature(0).maxTokens(n);
    }

    /** generate with a listener; checks that the pieces concatenate to the returned text. */
    static String streamed(EdgekitSession s, String prompt, Sampling sampling, List<String> pieces) {
        String text = s.generate(prompt, sampling, p -> { pieces.add(p); return false; });
        check(String.join("", pieces).equals(text), "streamed pieces concatenate to the whole text");
        return text;
    }

    public static void main(String[] args) throws Exception {
        String path = args[0], prompt = args[1], emoji = args[2];

        // A bad path: EdgekitException with the C message, naming the (non-ASCII) path.
        String bad = "/nonexistent/d\u00efr" + emoji + "/model.gguf";
        try {
            EdgekitModel.load(bad).close();
            check(false, "loading a missing file throws");
        } catch (EdgekitException e) {
            check(e.getMessage().contains(bad), "the message names the file: " + e.getMessage());
            check(e.status() == EdgekitException.IO, "status IO, got " + e.status());
            System.out.println("bad_path\t" + hex(e.getMessage()));
        }

        EdgekitModel model = EdgekitModel.load(path);
        check("llama".equals(model.meta("general.architecture")), "meta: " + model.meta("general.architecture"));
        check(model.meta("no.such.key") == null && model.shape()[0] > 500, "meta null, shape");
        EdgekitSession a = model.newSession(PARAMS), b = model.newSession(PARAMS);

        List<String> pieces = new ArrayList<>();
        String text = streamed(a, prompt, greedy(24), pieces);
        check(pieces.size() > 1, "several pieces streamed");
        System.out.println("generate\t" + hex(text));
        Stats st = a.stats();
        System.out.println("stats\t" + hex(st.toString()));
        check(st.loadMs > 0 && st.prefillMs > 0 && st.firstTokenMs > 0, "timings: " + st);
        check(st.prefillTokens > 0 && st.decodeTokens > 0 && st.peakRssBytes > 0, "counts: " + st);
        check(a.lastStatus() == EdgekitSession.OK, "status OK");

        String seeded = a.generate(prompt, new Sampling().temperature(0.9f).topK(20).topP(0.9f).minP(0.02f)
                .seed(7).maxTokens(24));
        System.out.println("seeded\t" + hex(seeded));
        String defaults = a.generate(prompt, new Sampling().seed(3).maxTokens(24));  // Java's defaults = C's
        System.out.println("defaults\t" + hex(defaults));
        String reply = a.chat(List.of(Message.user("Hello! How are you?")), greedy(24));
        System.out.println("chat\t" + hex(reply));

        // The emoji model: the prompt's emoji is followed by more of it, one UTF-8 byte per token.
        List<String> epieces = new ArrayList<>();
        String e = streamed(b, emoji, greedy(12).ignoreEos(true), epieces);
        System.out.println("emoji\t" + hex(e));
        check(e.equals(emoji.repeat(3)), "12 byte tokens make 3 emoji: " + e);
        for (String p : epieces) check(p.codePoints().allMatch(c -> c == emoji.codePointAt(0)), "whole emoji: " + p);

        // Two sessions at once, on two threads: each gives the text it gives alone.
        String[] got = new String[2];
        Thread t1 = new Thread(() -> got[0] = a.generate(prompt, greedy(24)));
        Thread t2 = new Thread(() -> got[1] = b.generate(emoji, greedy(12).ignoreEos(true)));
        t1.start();
        t2.start();
        t1.join();
        t2.join();
        check(text.equals(got[0]) && e.equals(got[1]), "concurrent sessions give their single-run text");

        // abort() from another thread stops a long generation; the session stays usable.
        CountDownLatch started = new CountDownLatch(1);
        AtomicInteger n = new AtomicInteger();
        Thread stopper = new Thread(() -> {
            try {
                started.await(30, TimeUnit.SECONDS);
            } catch (InterruptedException ignored) {
            }
            b.abort();
        });
        stopper.start();
        String partial = b.generate(emoji + emoji, new Sampling().temperature(0).maxTokens(400).ignoreEos(true),
                p -> {
                    n.incrementAndGet();
                    started.countDown();
                    try {
                        Thread.sleep(5);  // a slow consumer: 400 tokens would take 2 s
                    } catch (InterruptedException ignored) {
                    }
                    return false;
                });
        stopper.join();
        check(b.lastStatus() == EdgekitSession.ABORTED, "aborted, status " + b.lastStatus());
        check(n.get() < 20 && partial.length() < 40, "stopped early: " + n.get() + " pieces");
        System.out.println("aborted_after\t" + hex(Integer.toString(n.get())));
        check(b.generate(emoji, greedy(12).ignoreEos(true)).equals(e), "usable after abort");

        // The listener's true stops; its exception propagates.
        AtomicInteger k = new AtomicInteger();
        b.generate(emoji, greedy(40).ignoreEos(true), p -> k.incrementAndGet() == 2);
        check(k.get() == 2 && b.lastStatus() == EdgekitSession.OK, "listener stop after 2, got " + k.get());
        try {
            b.generate(emoji, greedy(40), p -> { throw new IllegalStateException("from the listener"); });
            check(false, "the listener's exception propagates");
        } catch (IllegalStateException x) {
            check(x.getMessage().equals("from the listener"), "the listener's own exception");
        }

        // close twice is fine; a closed session refuses; model.close() closes what is left.
        a.close();
        a.close();
        try {
            a.generate(prompt, greedy(4));
            check(false, "a closed session refuses");
        } catch (IllegalStateException x) {
            check(x.getMessage().contains("closed"), x.getMessage());
        }
        // model.close() while a session generates: the generation is aborted, the session closed, nothing freed early.
        CountDownLatch going = new CountDownLatch(1);
        int[] status = {-1};
        Thread gen = new Thread(() -> {
            b.generate(emoji, new Sampling().temperature(0).maxTokens(400).ignoreEos(true), p -> {
                going.countDown();
                try {
                    Thread.sleep(5);
                } catch (InterruptedException ignored) {
                }
                return false;
            });
            status[0] = b.lastStatus();
        });
        gen.start();
        check(going.await(30, TimeUnit.SECONDS), "generation started");
        model.close();
        gen.join();
        check(status[0] == EdgekitSession.ABORTED, "closing the model aborted the generation: " + status[0]);
        try {
            b.stats();
            check(false, "the model's close() closed its sessions");
        } catch (IllegalStateException x) {
            check(x.getMessage().contains("closed"), x.getMessage());
        }
        model.close();
        b.close();
        System.out.println("ok\t" + hex("all checks passed"));
    }
}
