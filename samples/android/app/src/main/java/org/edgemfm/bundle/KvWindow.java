package org.edgemfm.bundle;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.nio.FloatBuffer;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * The decoder's KV cache between calls, bounded as the Python runtime's (runtimes/kvcache.py): the
 * decoder's present.* tensors go straight back in as past.* at the next call, and are sliced only
 * when a stream outgrows max_seq_len. Then the window slides, keeping the first sink_tokens entries
 * (StreamingLLM's attention sinks) and the most recent ones. Keys are cached after the rotary
 * embedding, so kept entries keep their positions; new tokens take the next absolute position, and
 * the attention mask covers exactly the kept entries.
 *
 * <p>Example: {@code window.makeRoom(rows); Result r = decoder.run(inputs with window.past(), mask(rows), positions(rows)); window.advance(r, rows)}
 */
final class KvWindow implements AutoCloseable {
    private final OrtEnvironment env;
    private final BundleManifest.KvCache layout;
    private final int maxLen;
    private final int sinks;
    private int length; // entries held
    private long position; // absolute position of the next token
    private long evicted; // entries the window dropped so far
    private Map<String, OnnxTensor> past = new HashMap<>();
    private OrtSession.Result owner; // the decoder result whose present.* tensors are `past`; null: made here

    KvWindow(OrtEnvironment env, BundleManifest.KvCache layout, BundleManifest.Streaming streaming) throws OrtException {
        this.env = env;
        this.layout = layout;
        this.maxLen = streaming.maxSeqLen;
        this.sinks = streaming.sinkTokens;
        try {
            for (int layer = 0; layer < layout.layers; layer++) {
                for (String kind : new String[] {"key", "value"}) {
                    past.put(layout.pastName(layer, kind), tensor(new float[0], 0));
                }
            }
        } catch (OrtException | RuntimeException e) {
            close();
            throw e;
        }
    }

    /** The past.* inputs of the next call. */
    Map<String, OnnxTensor> past() {
        return past;
    }

    /** The attention mask of the next `seq` rows: ones over the kept entries and the new rows. */
    long[] mask(int seq) {
        long[] mask = new long[length + seq];
        Arrays.fill(mask, 1L);
        return mask;
    }

    /** The absolute positions of the next `seq` rows. */
    long[] positions(int seq) {
        long[] positions = new long[seq];
        for (int k = 0; k < seq; k++) {
            positions[k] = position + k;
        }
        return positions;
    }

    long evicted() {
        return evicted;
    }

    /** Slides the window so `incoming` more entries fit in max_seq_len, keeping the sink entries. */
    void makeRoom(int incoming) throws OrtException {
        if (length + incoming <= maxLen) {
            return;
        }
        int recent = maxLen - sinks - incoming; // >= 0: Streaming checks the prefill chunk against it
        int tail = length - recent;
        Map<String, OnnxTensor> kept = new HashMap<>();
        try {
            for (Map.Entry<String, OnnxTensor> e : past.entrySet()) {
                kept.put(e.getKey(), slice(e.getValue(), tail));
            }
        } catch (OrtException | RuntimeException e) {
            closeAll(kept);
            throw e;
        }
        release();
        past = kept;
        evicted += tail - sinks;
        length = sinks + recent;
    }

    /** Takes the decoder's grown cache (its present.* outputs, owned by `r`) after it consumed `seq` rows. */
    void advance(OrtSession.Result r, int seq) {
        Map<String, OnnxValue> byName = new HashMap<>();
        for (Map.Entry<String, OnnxValue> e : r) {
            byName.put(e.getKey(), e.getValue());
        }
        Map<String, OnnxTensor> next = new HashMap<>();
        for (int layer = 0; layer < layout.layers; layer++) {
            for (String kind : new String[] {"key", "value"}) {
                OnnxValue v = byName.get(layout.presentName(layer, kind));
                if (v == null) {
                    r.close();
                    throw new BundleException("the decoder returned no " + layout.presentName(layer, kind));
                }
                next.put(layout.pastName(layer, kind), (OnnxTensor) v);
            }
        }
        release();
        past = next;
        owner = r;
        length += seq;
        position += seq;
    }

    /** Entries [0, sinks) and [tail, length) of a [1, kv_heads, length, head_dim] tensor, as a new tensor. */
    private OnnxTensor slice(OnnxTensor t, int tail) throws OrtException {
        int heads = layout.kvHeads;
        int dim = layout.headDim;
        int kept = sinks + length - tail;
        float[] all = new float[heads * length * dim];
        t.getFloatBuffer().get(all);
        float[] out = new float[heads * kept * dim];
        for (int h = 0; h < heads; h++) {
            System.arraycopy(all, h * length * dim, out, h * kept * dim, sinks * dim);
            System.arraycopy(all, (h * length + tail) * dim, out, (h * kept + sinks) * dim, (length - tail) * dim);
        }
        return tensor(out, kept);
    }

    private OnnxTensor tensor(float[] data, int entries) throws OrtException {
        long[] shape = {1, layout.kvHeads, entries, layout.headDim};
        return OnnxTensor.createTensor(env, FloatBuffer.wrap(data), shape);
    }

    /** Frees the tensors of `past`: the Result that owns them, or the ones made here. */
    private void release() {
        if (owner != null) {
            owner.close();
            owner = null;
        } else {
            closeAll(past);
        }
    }

    private static void closeAll(Map<String, OnnxTensor> tensors) {
        for (OnnxTensor t : tensors.values()) {
            t.close();
        }
    }

    @Override
    public void close() {
        release();
        past = new HashMap<>();
    }
}
