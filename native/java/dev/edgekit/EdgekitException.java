package dev.edgekit;

import java.nio.charset.StandardCharsets;

/** A failed libedgekit call: the C runtime's message (ek_last_error) and its ek_status code. */
public class EdgekitException extends RuntimeException {
    public static final int INVALID = -1, IO = -2, FORMAT = -3, UNSUPPORTED = -4, NOMEM = -5, BUFFER = -6;

    private static final long serialVersionUID = 1L;
    private final int status;

    public EdgekitException(int status, String message) {
        super(message);
        this.status = status;
    }

    /** Called from the JNI glue: the message as UTF-8 bytes (it may hold a non-ASCII path). */
    EdgekitException(int status, byte[] message) {
        this(status, new String(message, StandardCharsets.UTF_8));
    }

    /** The ek_status: INVALID, IO, FORMAT, UNSUPPORTED, NOMEM or BUFFER. */
    public int status() {
        return status;
    }
}
