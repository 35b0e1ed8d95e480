package dev.edgekit;

/** One chat message: role "system", "user" or "assistant", and its text. */
public final class Message {
    public final String role;
    public final String content;

    public Message(String role, String content) {
        if (role == null || content == null) throw new NullPointerException("role and content must not be null");
        this.role = role;
        this.content = content;
    }

    public static Message system(String content) { return new Message("system", content); }
    public static Message user(String content) { return new Message("user", content); }
    public static Message assistant(String content) { return new Message("assistant", content); }
}
