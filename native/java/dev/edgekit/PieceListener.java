package dev.edgekit;

/** Receives generated text as it is produced, always in whole characters (an emoji is never split). */
@FunctionalInterface
public interface PieceListener {
    /** Called on the generating thread; return true to stop the generation. */
    boolean onPiece(String piece);
}
