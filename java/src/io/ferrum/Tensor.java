package io.ferrum;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** A tensor: name, datatype name ("INT32"), shape and little-endian bytes. */
public final class Tensor {
    /** Tensor name. */
    public final String name;
    /** Datatype name, as the protocol spells it ("INT32", "FP32", "BYTES"...). */
    public final String datatype;
    /** Full shape. */
    public final long[] shape;
    /** Little-endian elements. */
    public final byte[] data;

    /** A tensor from its parts (the bytes are used as they are). */
    public Tensor(String name, String datatype, long[] shape, byte[] data) {
        this.name = name;
        this.datatype = datatype;
        this.shape = shape;
        this.data = data;
    }

    /** An INT32 tensor. */
    public static Tensor ofInts(String name, long[] shape, int[] values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : values) b.putInt(v);
        return new Tensor(name, "INT32", shape, b.array());
    }

    /** A UINT32 tensor (values taken as unsigned). */
    public static Tensor ofUInts(String name, long[] shape, int[] values) {
        Tensor t = ofInts(name, shape, values);
        return new Tensor(name, "UINT32", shape, t.data);
    }

    /** An FP32 tensor. */
    public static Tensor ofFloats(String name, long[] shape, float[] values) {
        ByteBuffer b = ByteBuffer.allocate(values.length * 4).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) b.putFloat(v);
        return new Tensor(name, "FP32", shape, b.array());
    }

    /** The elements as 32-bit integers (INT32, UINT32). */
    public int[] asInts() {
        ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        int[] out = new int[data.length / 4];
        for (int i = 0; i < out.length; i++) out[i] = b.getInt();
        return out;
    }

    /** The elements as 32-bit floats (FP32). */
    public float[] asFloats() {
        ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[data.length / 4];
        for (int i = 0; i < out.length; i++) out[i] = b.getFloat();
        return out;
    }

    /** The tensor of this name in a response, or null. */
    public static Tensor find(Tensor[] response, String name) {
        for (Tensor t : response) if (t.name.equals(name)) return t;
        return null;
    }
}
