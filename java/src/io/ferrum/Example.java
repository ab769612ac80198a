package io.ferrum;

import java.util.Arrays;

/**
 * Runs Ferrum in-process from Java: {@code simple}, {@code onnx_mlp}, the decoupled
 * {@code repeat_int32}, and a load / unload in explicit mode. Exit status 0 when every check
 * passes. Arguments: [MODEL_REPOSITORY [BACKEND_DIRECTORY]].
 */
public final class Example {
    private Example() {}

    private static void check(boolean ok, String what) {
        if (!ok) {
            System.err.println("java example: FAILED: " + what);
            System.exit(1);
        }
    }

    /**
     * Listening TCP sockets this process holds (0 expected: the embedded server opens none):
     * the socket inodes among /proc/self/fd matched with LISTEN rows of /proc/self/net/tcp*.
     */
    private static int listeningSockets() throws java.io.IOException {
        java.util.Set<String> mine = new java.util.HashSet<>();
        try (java.nio.file.DirectoryStream<java.nio.file.Path> fds =
                java.nio.file.Files.newDirectoryStream(java.nio.file.Paths.get("/proc/self/fd"))) {
            for (java.nio.file.Path fd : fds) {
                try {
                    String target = java.nio.file.Files.readSymbolicLink(fd).toString();
                    if (target.startsWith("socket:[")) {
                        mine.add(target.substring(8, target.length() - 1));
                    }
                } catch (java.io.IOException gone) {
                    // The descriptor closed meanwhile.
                }
            }
        }
        int listening = 0;
        for (String table : new String[] {"/proc/self/net/tcp", "/proc/self/net/tcp6"}) {
            java.nio.file.Path path = java.nio.file.Paths.get(table);
            if (!java.nio.file.Files.exists(path)) continue;
            for (String line : java.nio.file.Files.readAllLines(path)) {
                String[] f = line.trim().split("\\s+");
                // sl local rem st ... inode (field 9); st 0A is LISTEN.
                if (f.length > 9 && f[3].equals("0A") && mine.contains(f[9])) listening++;
            }
        }
        return listening;
    }

    /** A weight of the example MLP: scale * sin(phase + 0.7 r + 1.3 c), rounded to float. */
    private static double weight(double scale, double phase, int r, int c) {
        return (float) (scale * Math.sin(phase + 0.7 * r + 1.3 * c));
    }

    /** onnx_mlp computed here: relu(x W1 + B1) W2 + B2. */
    private static double[] mlpReference(float[] x) {
        double[] h = new double[32];
        for (int c = 0; c < 32; c++) {
            double acc = weight(0.05, 0.2, 0, c);
            for (int r = 0; r < 16; r++) acc += x[r] * weight(0.25, 0.1, r, c);
            h[c] = Math.max(acc, 0.0);
        }
        double[] out = new double[4];
        for (int c = 0; c < 4; c++) {
            double acc = weight(0.05, 0.4, 0, c);
            for (int r = 0; r < 32; r++) acc += h[r] * weight(0.25, 0.3, r, c);
            out[c] = acc;
        }
        return out;
    }

    public static void main(String[] args) throws java.io.IOException {
        String repository = args.length > 0 ? args[0] : "model_repository";
        String backends = args.length > 1 ? args[1] : "target/debug/backends";
        try (Server server = new Server(repository, backends, Server.CONTROL_EXPLICIT,
                "simple", "onnx_mlp", "repeat_int32")) {
            check(server.isReady(), "server not ready");
            check(listeningSockets() == 0, "the embedded server listens on a socket");

            // simple: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.
            int[] a = new int[16];
            int[] b = new int[16];
            for (int i = 0; i < 16; i++) {
                a[i] = i;
                b[i] = 1;
            }
            long[] shape = {1, 16};
            Tensor[] out = server.infer("simple", Tensor.ofInts("INPUT0", shape, a),
                    Tensor.ofInts("INPUT1", shape, b));
            int[] sum = Tensor.find(out, "OUTPUT0").asInts();
            int[] diff = Tensor.find(out, "OUTPUT1").asInts();
            for (int i = 0; i < 16; i++) {
                check(sum[i] == i + 1 && diff[i] == i - 1, "simple at " + i);
            }
            System.out.println("simple: OUTPUT0 " + Arrays.toString(sum));

            // onnx_mlp: against the network's closed-form weights (scripts/make-onnx-models.py).
            float[] x = new float[16];
            for (int i = 0; i < 16; i++) x[i] = (i - 8) / 8.0f;
            Tensor[] mlp = server.infer("onnx_mlp", Tensor.ofFloats("INPUT0", new long[] {1, 16}, x));
            float[] y = Tensor.find(mlp, "OUTPUT0").asFloats();
            check(y.length == 4, "onnx_mlp output length " + y.length);
            double[] want = mlpReference(x);
            for (int c = 0; c < 4; c++) {
                check(Math.abs(y[c] - want[c]) <= 1e-4 + 1e-4 * Math.abs(want[c]),
                        "onnx_mlp output " + c + ": " + y[c] + " against " + want[c]);
            }
            System.out.println("onnx_mlp: " + Arrays.toString(y));

            // repeat_int32 (decoupled): one response per element.
            Tensor[][] responses = server.inferStream("repeat_int32",
                    Tensor.ofInts("IN", new long[] {3}, new int[] {10, 20, 30}),
                    Tensor.ofUInts("DELAY", new long[] {3}, new int[] {0, 0, 0}),
                    Tensor.ofUInts("WAIT", new long[] {1}, new int[] {0}));
            check(responses.length == 3, "repeat_int32 responses " + responses.length);
            for (int i = 0; i < 3; i++) {
                check(Tensor.find(responses[i], "OUT").asInts()[0] == 10 * (i + 1), "repeat " + i);
            }
            System.out.println("repeat_int32: " + responses.length + " responses");

            // Explicit mode: load, use, unload.
            server.loadModel("identity_fp32");
            check(server.modelIsReady("identity_fp32", -1), "identity_fp32 not ready");
            server.unloadModel("identity_fp32");
            check(!server.modelIsReady("identity_fp32", -1), "identity_fp32 still ready");

            // Errors are exceptions with the C API's code.
            try {
                server.infer("no_such_model", Tensor.ofInts("X", new long[] {1}, new int[] {1}));
                check(false, "no exception for a missing model");
            } catch (FerrumException e) {
                check(e.code == 2, "error code " + e.code + ": " + e.getMessage());
            }
            check(server.modelStatistics("simple").contains("\"inference_count\":1"),
                    "statistics " + server.modelStatistics("simple"));
        }
        System.out.println("java example: all checks passed");
    }
}
