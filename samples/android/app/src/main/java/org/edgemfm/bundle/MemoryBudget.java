package org.edgemfm.bundle;

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.IOException;
import java.util.LinkedHashMap;
import java.util.Locale;
import java.util.Map;

/**
 * The memory budget of the Python runtime (runtimes/budget.py), from the same manifest fields and
 * the same formulas: what a bundle needs to run is added up at load and refused, in one line, when
 * the budget cannot hold it.
 *
 * <pre>
 * needed = the process as it is (VmRSS, as Python reads it)
 *        + each component's weights + a session's fixed cost
 *        + the KV cache at its bound (streaming.max_seq_len), twice: the decoder returns a new
 *          cache while the old one is still an input
 *        + each component's largest activation (the decoder at one prefill chunk over the whole
 *          cache; an encoder at one item, plus one window's log-mel for the audio encoder)
 * </pre>
 * This loop keeps no encoder-output cache, so that term of the Python plan is 0 here.
 *
 * <p>Example: {@code MemoryBudget.check(MemoryBudget.estimate(m, MemoryBudget.residentBytes(), false), budget, "bundle 'b'")}
 */
public final class MemoryBudget {
    public static final long MIB = 1L << 20;
    // budget.py's SESSION_BYTES: resident memory one ORT CPU session adds beyond its weights, rounded up
    public static final long SESSION_BYTES = 8 * MIB;

    /** A bundle's needs, in bytes, by part (budget.py's MemoryPlan without the encoder cache). */
    public static final class Plan {
        public final long runtime; // the process before the sessions (or with them, once loaded)
        public final long weights; // 0 once loaded: then inside `runtime`
        public final long kvCache;
        public final Map<String, Long> activations; // component -> its largest activation

        Plan(long runtime, long weights, long kvCache, Map<String, Long> activations) {
            this.runtime = runtime;
            this.weights = weights;
            this.kvCache = kvCache;
            this.activations = activations;
        }

        public long total() {
            long sum = runtime + weights + kvCache;
            for (long a : activations.values()) {
                sum += a;
            }
            return sum;
        }

        String describe() {
            long acts = total() - runtime - weights - kvCache;
            String[] names = {"process", "weights", "KV cache", "activations"};
            long[] values = {runtime, weights, kvCache, acts};
            StringBuilder b = new StringBuilder();
            for (int k = 0; k < names.length; k++) {
                if (values[k] != 0) {
                    b.append(b.length() == 0 ? "" : ", ").append(names[k]).append(' ').append(mib(values[k]));
                }
            }
            return b.toString();
        }
    }

    private MemoryBudget() {}

    /** What running the bundle needs on top of `resident` bytes; `loaded`: the sessions exist (weights inside `resident`). */
    public static Plan estimate(BundleManifest m, long resident, boolean loaded) {
        BundleManifest.Component decoder = m.decoder();
        BundleManifest.Streaming s = m.streaming;
        Map<String, Long> activations = new LinkedHashMap<>();
        long weights = 0;
        for (Map.Entry<String, BundleManifest.Component> e : m.components.entrySet()) {
            BundleManifest.Component c = e.getValue();
            long bytes;
            if (e.getKey().equals(m.decoder)) {
                bytes = decoderActivationBytes(decoder, s.prefillChunk, s.maxSeqLen, m.fusedAttention);
            } else {
                bytes = c.peakActivationBytes;
                for (BundleManifest.TensorSpec t : c.inputs) {
                    bytes += tensorBytes(t);
                }
                for (BundleManifest.TensorSpec t : c.outputs) {
                    bytes += tensorBytes(t);
                }
            }
            activations.put(e.getKey(), bytes);
            weights += c.weightBytes + SESSION_BYTES;
        }
        BundleManifest.Media audio = m.media.get("audio");
        if (audio != null && m.audio != null) {
            activations.put(audio.encoder, activations.get(audio.encoder) + logMelWorkingBytes(m.audio));
        }
        return new Plan(resident, loaded ? 0 : weights, kvCacheBytes(decoder, s.maxSeqLen), activations);
    }

    /** `plan` when it fits in `budget` bytes; else the Python runtime's one-line refusal. */
    public static Plan check(Plan plan, long budget, String what) {
        long total = plan.total();
        if (total > budget) {
            throw new MemoryBudgetException(what + " needs " + total + " bytes (" + mib(total) + " MiB: " + plan.describe()
                    + ") but the memory budget allows " + budget + " bytes (" + mib(budget) + " MiB); allowed: --memory-budget "
                    + ((total + MIB - 1) / MIB) + " or more, or a smaller streaming.max_seq_len");
        }
        return plan;
    }

    /** Past + present at `maxLen` entries: layers x 2 (key, value) x heads x head_dim x length, twice. */
    public static long kvCacheBytes(BundleManifest.Component decoder, int maxLen) {
        BundleManifest.KvCache kv = decoder.kvCache;
        return 2L * kv.layers * 2 * kv.kvHeads * kv.headDim * maxLen * itemSize(decoder.dtype);
    }

    /** budget.py's decoder_activation_bytes: attention scores, logits and hidden rows of one chunk over a full cache. */
    static long decoderActivationBytes(BundleManifest.Component decoder, int chunk, int maxLen, boolean fused) {
        BundleManifest.KvCache kv = decoder.kvCache;
        long hidden = lastDim(decoder.input("inputs_embeds"));
        long vocab = lastDim(decoder.output("logits"));
        long heads = Math.max(hidden / kv.headDim, kv.kvHeads);
        long scores = fused ? 3 : 6;
        long estimate = (scores * heads * chunk * maxLen + chunk * vocab + 8L * chunk * hidden) * itemSize(decoder.dtype);
        return Math.max(estimate, decoder.peakActivationBytes);
    }

    /** runtimes/audio.py's log_mel_working_bytes: one window's log-mel, float64 throughout. */
    static long logMelWorkingBytes(BundleManifest.AudioSpec a) {
        long frames = 1 + a.nSamples / a.hopLength;
        long bins = a.nFft / 2 + 1;
        return 2L * 8 * (a.nSamples + a.nFft) + frames * (8L * a.nFft + 32 * bins);
    }

    /** The process's resident memory now: VmRSS from /proc/self/status (Linux and Android), else the JVM's heap in use. */
    public static long residentBytes() {
        // java.io, not java.nio.file: Android has Files only from API 26, the app runs from 24
        try (BufferedReader in = new BufferedReader(new FileReader("/proc/self/status"))) {
            for (String line; (line = in.readLine()) != null; ) {
                if (line.startsWith("VmRSS:")) {
                    return Long.parseLong(line.split("\\s+")[1]) * 1024;
                }
            }
        } catch (IOException | RuntimeException e) {
            // no procfs (not Linux): the JVM's own count is the best this process can say
        }
        Runtime r = Runtime.getRuntime();
        return r.totalMemory() - r.freeMemory();
    }

    private static long lastDim(BundleManifest.TensorSpec t) {
        return (Long) t.shape.get(t.shape.size() - 1);
    }

    /** A tensor's bytes with every named (dynamic) axis at 1, as budget.py's _tensor_bytes. */
    static long tensorBytes(BundleManifest.TensorSpec t) {
        long n = 1;
        for (Object d : t.shape) {
            n *= d instanceof Long ? (Long) d : 1;
        }
        return n * itemSize(t.dtype);
    }

    static int itemSize(String dtype) {
        switch (dtype) {
            case "float32": case "int32": return 4;
            case "float16": case "bfloat16": return 2;
            case "int64": return 8;
            case "int8": case "uint8": case "bool": return 1;
            default: throw new BundleException("dtype " + dtype + " is unknown; known: float32, float16, bfloat16, int64, int32, int8, uint8, bool");
        }
    }

    /** Python's f"{bytes / MiB:.1f}". */
    private static String mib(long bytes) {
        return String.format(Locale.ROOT, "%.1f", bytes / (double) MIB);
    }
}
