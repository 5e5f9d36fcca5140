package org.edgemfm.bundle;

import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The parts of an edgemfm bundle's manifest.json that the Java runtime reads (the Python
 * reference is sdk/manifest.py). Like the Python runtime, it never parses file names: every
 * file, tensor name and token id comes from here.
 *
 * <p>Example: {@code BundleManifest m = BundleManifest.parse(text); m.decoder().kvCache.layers}
 */
public final class BundleManifest {
    // the version sdk/manifest.py writes; version 1 differs only in the report, which this app does not read
    public static final int SCHEMA_VERSION = 2;
    public static final String KIND = "edgemfm-bundle";

    public static final class TensorSpec {
        public final String name;
        public final String dtype; // numpy dtype name: float32, int64 ...
        public final List<Object> shape; // Long for fixed axes, String for named dynamic axes

        TensorSpec(Map<String, Object> m) {
            name = str(m, "name");
            dtype = str(m, "dtype");
            shape = list(m, "shape");
        }
    }

    public static final class KvCache {
        public final int layers;
        public final int kvHeads;
        public final int headDim;
        public final String past; // "past.{layer}.{kind}", kind in key/value
        public final String present;

        KvCache(Map<String, Object> m) {
            layers = integer(m, "layers");
            kvHeads = integer(m, "kv_heads");
            headDim = integer(m, "head_dim");
            past = str(m, "past");
            present = str(m, "present");
        }

        public String pastName(int layer, String kind) {
            return past.replace("{layer}", Integer.toString(layer)).replace("{kind}", kind);
        }

        public String presentName(int layer, String kind) {
            return present.replace("{layer}", Integer.toString(layer)).replace("{kind}", kind);
        }
    }

    public static final class Component {
        public final String file;
        public final String format;
        public final String dtype;
        public final List<TensorSpec> inputs = new ArrayList<>();
        public final List<TensorSpec> outputs = new ArrayList<>();
        public final KvCache kvCache; // null for components without a cache
        public final long weightBytes; // initializer bytes as stored: what the session maps
        public final long peakActivationBytes; // largest live activation at the example shapes (the exporter measured it)

        Component(Map<String, Object> m) {
            file = str(m, "file");
            format = str(m, "format");
            dtype = str(m, "dtype");
            weightBytes = (long) number(m, "weight_bytes");
            peakActivationBytes = (long) number(m, "peak_activation_bytes");
            for (Object o : list(m, "inputs")) {
                inputs.add(new TensorSpec(asMap(o, "inputs[]")));
            }
            for (Object o : list(m, "outputs")) {
                outputs.add(new TensorSpec(asMap(o, "outputs[]")));
            }
            Object kv = m.get("kv_cache");
            kvCache = kv == null ? null : new KvCache(asMap(kv, "kv_cache"));
        }

        public TensorSpec output(String name) {
            for (TensorSpec t : outputs) {
                if (t.name.equals(name)) {
                    return t;
                }
            }
            throw new BundleException(file + " has no output " + name);
        }

        public TensorSpec input(String name) {
            for (TensorSpec t : inputs) {
                if (t.name.equals(name)) {
                    return t;
                }
            }
            throw new BundleException(file + " has no input " + name);
        }
    }

    public static final class Media {
        public final String placeholder; // text standing for one item in the prompt template
        public final int tokenId; // its positions receive the encoder's output rows
        public final String encoder;
        public final String input;
        public final String output;
        public final String length; // encoder input fed the item's unpadded length, or null

        Media(Map<String, Object> m) {
            placeholder = str(m, "placeholder");
            tokenId = integer(m, "token_id");
            encoder = str(m, "encoder");
            input = str(m, "input");
            output = str(m, "output");
            length = m.get("length") == null ? null : str(m, "length");
        }
    }

    /** preprocess.audio: Whisper-style log-mel settings (sdk/manifest.py's AudioPreprocess). */
    public static final class AudioSpec {
        public final int samplingRate; // Hz; clips at other rates are resampled to it
        public final int nFft;
        public final int hopLength;
        public final int nMels;
        public final int nSamples; // clips are zero-padded or cut to this many samples
        public final double minFrequency; // Hz, the mel filters' span
        public final double maxFrequency;

        AudioSpec(Map<String, Object> m) {
            samplingRate = integer(m, "sampling_rate");
            nFft = integer(m, "n_fft");
            hopLength = integer(m, "hop_length");
            nMels = integer(m, "n_mels");
            nSamples = integer(m, "n_samples");
            minFrequency = m.containsKey("min_frequency") ? number(m, "min_frequency") : 0.0;
            maxFrequency = m.containsKey("max_frequency") ? number(m, "max_frequency") : 8000.0;
        }
    }

    public static final class ImageSpec {
        public final int size; // shortest edge after resize
        public final int crop; // centre crop, square
        public final String resample; // bicubic, bilinear, nearest
        public final float rescale;
        public final float[] mean;
        public final float[] std;

        ImageSpec(Map<String, Object> m) {
            size = integer(m, "size");
            crop = integer(m, "crop");
            resample = str(m, "resample");
            rescale = (float) number(m, "rescale");
            mean = floats(list(m, "mean"));
            std = floats(list(m, "std"));
        }
    }

    /** streaming: the KV cache's bound and how prompts are fed (sdk/manifest.py's StreamingSettings). */
    public static final class Streaming {
        public final int maxSeqLen; // cache entries kept; beyond it the window slides
        public final int sinkTokens; // first entries the window always keeps (StreamingLLM's attention sinks)
        public final int prefillChunk; // prompt rows fed per decoder call

        Streaming(Map<String, Object> m) {
            maxSeqLen = integer(m, "max_seq_len");
            sinkTokens = integer(m, "sink_tokens");
            prefillChunk = integer(m, "prefill_chunk");
            // the Python runtime's _check_streaming: a chunk must fit beside the sinks in the window
            if (sinkTokens < 0 || sinkTokens >= maxSeqLen || prefillChunk <= 0 || prefillChunk > maxSeqLen - sinkTokens) {
                throw new BundleException("streaming settings prefill_chunk=" + prefillChunk + ", max_seq_len=" + maxSeqLen
                        + ", sink_tokens=" + sinkTokens + " are not allowed; allowed: 0 <= sink_tokens < max_seq_len"
                        + " and 0 < prefill_chunk <= max_seq_len - sink_tokens");
            }
        }
    }

    public final String modelId;
    public final String profile;
    public final Map<String, Component> components = new LinkedHashMap<>();
    public final Map<String, String> fileSha256 = new LinkedHashMap<>();
    public final Map<String, Long> fileBytes = new LinkedHashMap<>();
    public final String tokenizerFile;
    public final Integer bosTokenId; // null when the model has none
    public final List<Integer> eosTokenIds = new ArrayList<>();
    public final String promptTemplate; // with {media} and {prompt}
    public final Map<String, Media> media = new LinkedHashMap<>();
    public final ImageSpec image; // null when the bundle takes no images
    public final AudioSpec audio; // null when the bundle takes no audio
    public final int maxNewTokens;
    public final String embedding; // component names
    public final String decoder;
    public final String precision; // the recipe's number formats in rule order: "int8", "int4 + fp32" ...
    public final Streaming streaming;
    // every decoder layer's attention fused into one ORT op (report.parity): its scores cost half the memory
    public final boolean fusedAttention;

    private BundleManifest(Map<String, Object> m) {
        Object kind = m.get("kind");
        if (!KIND.equals(kind)) {
            throw new BundleException("not an edgemfm bundle manifest (kind must be " + KIND + ", got " + kind + ")");
        }
        Object version = m.get("schema_version");
        if (!(version instanceof Long) || (Long) version < 1 || (Long) version > SCHEMA_VERSION) {
            throw new BundleException("schema version " + version + " is not supported; this app reads versions 1 to " + SCHEMA_VERSION);
        }
        modelId = str(m, "model_id");
        profile = str(m, "profile");
        for (Map.Entry<String, Object> e : asMap(m.get("components"), "components").entrySet()) {
            components.put(e.getKey(), new Component(asMap(e.getValue(), e.getKey())));
        }
        for (Map.Entry<String, Object> e : asMap(m.get("files"), "files").entrySet()) {
            Map<String, Object> f = asMap(e.getValue(), e.getKey());
            fileSha256.put(e.getKey(), str(f, "sha256"));
            fileBytes.put(e.getKey(), (long) number(f, "bytes"));
        }
        Map<String, Object> tok = asMap(m.get("tokenizer"), "tokenizer");
        tokenizerFile = str(tok, "file");
        Object bos = tok.get("bos_token_id");
        bosTokenId = bos == null ? null : ((Long) bos).intValue();
        for (Object o : list(tok, "eos_token_ids")) {
            eosTokenIds.add(((Long) o).intValue());
        }
        Map<String, Object> prompt = asMap(m.get("prompt"), "prompt");
        promptTemplate = str(prompt, "template");
        Object mediaMap = prompt.get("media");
        if (mediaMap != null) {
            for (Map.Entry<String, Object> e : asMap(mediaMap, "prompt.media").entrySet()) {
                media.put(e.getKey(), new Media(asMap(e.getValue(), e.getKey())));
            }
        }
        Map<String, Object> pre = asMap(m.get("preprocess"), "preprocess");
        image = pre.get("image") == null ? null : new ImageSpec(asMap(pre.get("image"), "preprocess.image"));
        audio = pre.get("audio") == null ? null : new AudioSpec(asMap(pre.get("audio"), "preprocess.audio"));
        Map<String, Object> gen = asMap(m.get("generation"), "generation");
        maxNewTokens = integer(gen, "max_new_tokens");
        embedding = str(gen, "embedding");
        decoder = str(gen, "decoder");
        precision = precision(asMap(m.get("recipe"), "recipe"));
        streaming = new Streaming(asMap(m.get("streaming"), "streaming"));
        component(embedding);
        if (component(decoder).kvCache == null) {
            throw new BundleException("component " + decoder + " has no kv_cache; the decode loop needs one");
        }
        fusedAttention = fusedAttention(m.get("report"), decoder, component(decoder).kvCache.layers);
    }

    /** budget.py's fused_attention: MultiHeadAttention + GroupQueryAttention ops at least one per layer. */
    private static boolean fusedAttention(Object report, String decoder, int layers) {
        Object parity = report instanceof Map ? asMap(report, "report").get("parity") : null;
        Object entry = parity instanceof Map ? asMap(parity, "report.parity").get(decoder) : null;
        Object fusion = entry instanceof Map ? asMap(entry, "report.parity." + decoder).get("fusion") : null;
        Object ops = fusion instanceof Map ? asMap(fusion, "fusion").get("fused_ops") : null;
        if (!(ops instanceof Map)) {
            return false;
        }
        Map<String, Object> fused = asMap(ops, "fused_ops");
        long n = 0;
        for (String op : new String[] {"MultiHeadAttention", "GroupQueryAttention"}) {
            n += fused.get(op) instanceof Long ? (Long) fused.get(op) : 0;
        }
        return n >= layers;
    }

    public static BundleManifest parse(String json) {
        try {
            return new BundleManifest(Json.parseObject(json));
        } catch (IllegalArgumentException | ClassCastException e) {
            throw new BundleException("manifest.json: " + e.getMessage());
        }
    }

    public Component component(String name) {
        Component c = components.get(name);
        if (c == null) {
            throw new BundleException("no component " + name + "; the bundle has " + components.keySet());
        }
        return c;
    }

    public Component decoder() {
        return component(decoder);
    }

    /** The bundle's size on disk: the sum of its files' bytes. */
    public long totalBytes() {
        long sum = 0;
        for (long b : fileBytes.values()) {
            sum += b;
        }
        return sum;
    }

    /** A rule's spec is null (kept float) or names its bits: 4 and 8 are integer formats, 16 is fp16. */
    private static String precision(Map<String, Object> recipe) {
        StringBuilder labels = new StringBuilder();
        for (Object o : list(recipe, "rules")) {
            Object spec = asMap(o, "recipe.rules[]").get("spec");
            int bits = spec == null ? 32 : integer(asMap(spec, "spec"), "bits");
            String label = bits == 16 ? "fp16" : bits == 32 ? "fp32" : "int" + bits;
            if (!(" + " + labels + " + ").contains(" + " + label + " + ")) {
                labels.append(labels.length() == 0 ? "" : " + ").append(label);
            }
        }
        return labels.length() == 0 ? "fp32" : labels.toString();
    }

    public List<String> fileNames() {
        return Collections.unmodifiableList(new ArrayList<>(fileSha256.keySet()));
    }

    static Map<String, Object> asMap(Object o, String where) {
        if (!(o instanceof Map)) {
            throw new BundleException("manifest.json: " + where + " must be an object");
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> m = (Map<String, Object>) o;
        return m;
    }

    static String str(Map<String, Object> m, String key) {
        Object o = m.get(key);
        if (!(o instanceof String)) {
            throw new BundleException("manifest.json: " + key + " must be a string, got " + o);
        }
        return (String) o;
    }

    static List<Object> list(Map<String, Object> m, String key) {
        Object o = m.get(key);
        if (!(o instanceof List)) {
            throw new BundleException("manifest.json: " + key + " must be a list, got " + o);
        }
        @SuppressWarnings("unchecked")
        List<Object> l = (List<Object>) o;
        return l;
    }

    static double number(Map<String, Object> m, String key) {
        Object o = m.get(key);
        if (!(o instanceof Number)) {
            throw new BundleException("manifest.json: " + key + " must be a number, got " + o);
        }
        return ((Number) o).doubleValue();
    }

    static int integer(Map<String, Object> m, String key) {
        Object o = m.get(key);
        if (!(o instanceof Long)) {
            throw new BundleException("manifest.json: " + key + " must be an integer, got " + o);
        }
        return ((Long) o).intValue();
    }

    static float[] floats(List<Object> l) {
        float[] f = new float[l.size()];
        for (int k = 0; k < f.length; k++) {
            f[k] = ((Number) l.get(k)).floatValue();
        }
        return f;
    }
}
