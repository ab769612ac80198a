package io.ferrum;

/** An error from the Ferrum C API: its code ({@code FERRUM_ERROR_*}) and message. */
public final class FerrumException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    /** Error code, as {@code FERRUM_Error_Code} (for example 2: NOT_FOUND). */
    public final int code;

    /** An error with this code and message (called by the JNI shim). */
    public FerrumException(int code, String message) {
        super(message);
        this.code = code;
    }
}
