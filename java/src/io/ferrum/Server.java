package io.ferrum;

/**
 * An in-process Ferrum server (over the C API, {@code libferrum.so}, through the JNI shim
 * {@code libferrum_jni.so}). It opens no socket. Close it to stop it and free it.
 *
 * <p>The shim is loaded from the system property {@code ferrum.jni.library} (a full path) if
 * set, else with {@code System.loadLibrary("ferrum_jni")} ({@code java.library.path}).
 */
public final class Server implements AutoCloseable {
    /** Load every model at start, never change. */
    public static final int CONTROL_NONE = 0;
    /** Rescan the repository periodically. */
    public static final int CONTROL_POLL = 1;
    /** Load and unload only through {@link #loadModel} and {@link #unloadModel}. */
    public static final int CONTROL_EXPLICIT = 2;

    static {
        String path = System.getProperty("ferrum.jni.library");
        if (path != null) {
            System.load(path);
        } else {
            System.loadLibrary("ferrum_jni");
        }
    }

    private long handle;

    /**
     * Starts a server on a model repository; returns once its start-up models are loaded.
     *
     * @param repository model repository folder
     * @param backendDirectory folder of backend libraries, or null for the default
     * @param controlMode one of the CONTROL_* constants
     * @param startupModels models to load at start in explicit mode (may be empty)
     */
    public Server(String repository, String backendDirectory, int controlMode,
            String... startupModels) {
        handle = create(repository, backendDirectory, controlMode, startupModels);
    }

    private long handle() {
        if (handle == 0) throw new IllegalStateException("the server is closed");
        return handle;
    }

    /** Whether the server is ready for inference. */
    public boolean isReady() {
        return isReady(handle());
    }

    /** Whether a model is ready (version -1: any). */
    public boolean modelIsReady(String model, long version) {
        return modelIsReady(handle(), model, version);
    }

    /** Loads a model (explicit mode). */
    public void loadModel(String model) {
        loadModel(handle(), model);
    }

    /** Unloads a model (explicit mode). */
    public void unloadModel(String model) {
        unloadModel(handle(), model);
    }

    /** A model's metadata as JSON. */
    public String modelMetadata(String model) {
        return modelMetadata(handle(), model);
    }

    /** A model's statistics as JSON ({@code {"model_stats":[...]}}). */
    public String modelStatistics(String model) {
        return modelStatistics(handle(), model);
    }

    /** Runs an inference of a model that is not decoupled; returns its outputs. */
    public Tensor[] infer(String model, Tensor... inputs) {
        return infer(handle(), model, inputs, false)[0];
    }

    /** Runs an inference and returns every response (several for a decoupled model). */
    public Tensor[][] inferStream(String model, Tensor... inputs) {
        return infer(handle(), model, inputs, true);
    }

    /** Stops the server and frees it. */
    @Override
    public void close() {
        if (handle != 0) {
            long h = handle;
            handle = 0;
            delete(h);
        }
    }

    private static native long create(String repository, String backendDirectory,
            int controlMode, String[] startupModels);

    private static native void delete(long server);

    private static native boolean isReady(long server);

    private static native boolean modelIsReady(long server, String model, long version);

    private static native void loadModel(long server, String model);

    private static native void unloadModel(long server, String model);

    private static native String modelMetadata(long server, String model);

    private static native String modelStatistics(long server, String model);

    private static native Tensor[][] infer(long server, String model, Tensor[] inputs,
            boolean stream);
}
