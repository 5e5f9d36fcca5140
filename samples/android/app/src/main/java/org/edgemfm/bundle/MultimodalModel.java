package org.edgemfm.bundle;

import ai.onnxruntime.OnnxTensor;
import ai.onnxruntime.OnnxValue;
import ai.onnxruntime.OrtEnvironment;
import ai.onnxruntime.OrtException;
import ai.onnxruntime.OrtSession;
import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.FloatBuffer;
import java.nio.LongBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * An edgemfm bundle loaded into ONNX Runtime sessions, with the same greedy decode loop as the
 * Python runtime: tokenize the prompt template, embed the tokens, put the encoders' rows where the
 * image and audio placeholder tokens stand, prefill the text decoder in chunks of
 * streaming.prefill_chunk rows, then feed one token at a time with the cache the decoder returned,
 * bounded by the manifest's streaming settings (KvWindow). Loading checks the memory budget as the
 * Python runtime does (MemoryBudget), before any session exists and again once they are loaded.
 *
 * <p>No Android API is used here, so the host test runs this very class on a plain JVM.
 * Example:
 * <pre>
 * try (MultimodalModel m = MultimodalModel.load(new File("bundle"), 2, 2048 * MemoryBudget.MIB)) {
 *     int[] ids = m.generate("What is in the picture?", image, 32, (id, text) -> System.out.print(text));
 * }
 * </pre>
 */
public final class MultimodalModel implements AutoCloseable {
    /** Called for each generated token with the text it completes (may be empty mid-character). */
    public interface TokenListener {
        void onToken(int tokenId, String newText);
    }

    /** How fast the last answer came: the first token's latency (encoders and prefill), then the decode rate. */
    public static final class Timing {
        public final double firstTokenMs;
        public final double decodeTokensPerSecond; // NaN when only one token was generated

        Timing(long firstNanos, long decodeNanos, int decodedTokens) {
            firstTokenMs = firstNanos / 1e6;
            decodeTokensPerSecond = decodedTokens > 0 ? decodedTokens / (decodeNanos / 1e9) : Double.NaN;
        }
    }

    public final BundleManifest manifest;
    public final BpeTokenizer tokenizer;
    private final OrtEnvironment env;
    private final Map<String, OrtSession> sessions = new LinkedHashMap<>();
    private Timing lastTiming; // null until an answer has a token
    private MemoryBudget.Plan memory; // what the loaded bundle needs, checked against the budget
    private long lastEvicted; // cache entries the window dropped during the last answer

    private MultimodalModel(BundleManifest manifest, BpeTokenizer tokenizer, OrtEnvironment env) {
        this.manifest = manifest;
        this.tokenizer = tokenizer;
        this.env = env;
    }

    /**
     * Reads and verifies (size, sha256) a bundle directory and opens one session per component,
     * refusing (MemoryBudgetException) when `budgetBytes` cannot hold what the bundle needs.
     */
    public static MultimodalModel load(File dir, int threads, long budgetBytes) throws IOException, OrtException {
        BundleManifest manifest = BundleManifest.parse(readText(new File(dir, "manifest.json")));
        String what = "bundle '" + dir.getPath() + "'";
        MemoryBudget.check(MemoryBudget.estimate(manifest, MemoryBudget.residentBytes(), false), budgetBytes, what);
        verifyFiles(dir, manifest);
        BpeTokenizer tokenizer = BpeTokenizer.fromJson(readText(new File(dir, manifest.tokenizerFile)));
        OrtEnvironment env = OrtEnvironment.getEnvironment();
        MultimodalModel model = new MultimodalModel(manifest, tokenizer, env);
        try (OrtSession.SessionOptions options = new OrtSession.SessionOptions()) {
            options.setIntraOpNumThreads(threads);
            for (Map.Entry<String, BundleManifest.Component> e : manifest.components.entrySet()) {
                BundleManifest.Component c = e.getValue();
                if (!"onnx".equals(c.format)) {
                    throw new BundleException("component " + e.getKey() + " is " + c.format + "; this app runs onnx");
                }
                if (!"float32".equals(c.dtype)) {
                    throw new BundleException("component " + e.getKey() + " computes in " + c.dtype + "; this app feeds float32");
                }
                model.sessions.put(e.getKey(), env.createSession(new File(dir, c.file).getPath(), options));
            }
            // again with the sessions' real resident size in place of the estimate, as the Python runtime does
            model.memory = MemoryBudget.check(MemoryBudget.estimate(manifest, MemoryBudget.residentBytes(), true), budgetBytes, what);
        } catch (OrtException | RuntimeException ex) {
            model.close();
            throw ex;
        }
        return model;
    }

    /** What the loaded bundle needs (the process with its sessions, the KV cache at its bound, activations). */
    public MemoryBudget.Plan memory() {
        return memory;
    }

    /**
     * Greedy decoding; returns the generated token ids (EOS excluded). `image` and `audio` (mono
     * samples at the model's rate, from AudioPreprocessor.readWav or fromPcm16) may be null.
     */
    public int[] generate(String prompt, ImagePreprocessor.RgbImage image, float[] audio, int maxNewTokens,
            TokenListener listener) throws OrtException {
        long start = System.nanoTime();
        int[] ids = promptIds(prompt, image != null, audio != null);
        if (maxNewTokens <= 0) {
            return new int[0];
        }
        Map<Integer, float[][]> encoded = new HashMap<>();
        if (image != null) {
            encoded.put(manifest.media.get("image").tokenId, encodeImage(image));
        }
        if (audio != null) {
            encoded.put(manifest.media.get("audio").tokenId, encodeAudio(audio));
        }
        float[][] rows = merge(ids, embed(ids), encoded);
        emitted = "";
        long first = 0;
        List<Integer> out = new ArrayList<>();
        try (KvWindow cache = new KvWindow(env, manifest.decoder().kvCache, manifest.streaming)) {
            int next = prefill(cache, rows);
            while (!manifest.eosTokenIds.contains(next)) {
                out.add(next);
                first = first == 0 ? System.nanoTime() : first;
                if (listener != null) {
                    listener.onToken(next, newText(out));
                }
                if (out.size() >= maxNewTokens) {
                    break;
                }
                next = step(cache, embed(new int[] {next}));
            }
            lastEvicted = cache.evicted();
        }
        lastTiming = first == 0 ? null : new Timing(first - start, System.nanoTime() - first, out.size() - 1);
        int[] result = new int[out.size()];
        for (int k = 0; k < result.length; k++) {
            result[k] = out.get(k);
        }
        return result;
    }

    /** Cache entries the sliding window dropped during the last answer (0 while it fit in max_seq_len). */
    public long lastEvicted() {
        return lastEvicted;
    }

    /** The timing of the last generate call that produced a token, or null. */
    public Timing lastTiming() {
        return lastTiming;
    }

    /**
     * The token ids of the templated prompt with one placeholder token per item (the image's, then
     * the audio clip's), as the Python Pipeline.prompt_ids: a placeholder typed by the user is
     * refused, not taken as an item.
     */
    public int[] promptIds(String prompt, boolean withImage, boolean withAudio) {
        String[] kinds = {"image", "audio"};
        boolean[] given = {withImage, withAudio};
        StringBuilder media = new StringBuilder();
        for (int k = 0; k < kinds.length; k++) {
            if (given[k] && !manifest.media.containsKey(kinds[k])) {
                throw new BundleException("this bundle takes no " + kinds[k] + " input; it takes: text " + manifest.media.keySet());
            }
            media.append(given[k] ? manifest.media.get(kinds[k]).placeholder : "");
        }
        int[] ids = tokenizer.encode(promptText(prompt, media.toString()));
        if (ids.length > manifest.streaming.maxSeqLen) { // the window would slide over the prompt itself
            throw new BundleException("the prompt is " + ids.length + " tokens with the template; allowed: at most "
                    + manifest.streaming.maxSeqLen + ", the bundle's streaming.max_seq_len");
        }
        for (int k = 0; k < kinds.length; k++) {
            BundleManifest.Media m = manifest.media.get(kinds[k]);
            if (m == null) {
                continue;
            }
            int seen = 0;
            for (int id : ids) {
                seen += id == m.tokenId ? 1 : 0;
            }
            if (seen != (given[k] ? 1 : 0)) {
                throw new BundleException("the prompt must not contain the " + kinds[k] + " placeholder " + m.placeholder.trim());
            }
        }
        return ids;
    }

    /** Python's template.format(media=..., prompt=...): {media}, {prompt}, and {{ }} for braces. */
    String promptText(String prompt, String media) {
        String t = manifest.promptTemplate;
        StringBuilder b = new StringBuilder();
        int k = 0;
        while (k < t.length()) {
            if (t.startsWith("{media}", k)) {
                b.append(media);
                k += 7;
            } else if (t.startsWith("{prompt}", k)) {
                b.append(prompt);
                k += 8;
            } else if (t.startsWith("{{", k) || t.startsWith("}}", k)) {
                b.append(t.charAt(k));
                k += 2;
            } else if (t.charAt(k) == '{' || t.charAt(k) == '}') {
                throw new BundleException("prompt template " + t + ": only {media} and {prompt} may appear in braces");
            } else {
                b.append(t.charAt(k++));
            }
        }
        return b.toString();
    }

    private float[][] embed(int[] ids) throws OrtException {
        BundleManifest.Component c = manifest.component(manifest.embedding);
        long[] data = new long[ids.length];
        for (int k = 0; k < ids.length; k++) {
            data[k] = ids[k];
        }
        Map<String, OnnxTensor> in = new HashMap<>();
        in.put(c.inputs.get(0).name, OnnxTensor.createTensor(env, LongBuffer.wrap(data), new long[] {1, ids.length}));
        return runRows(manifest.embedding, in, c.outputs.get(0).name);
    }

    private float[][] encodeImage(ImagePreprocessor.RgbImage image) throws OrtException {
        BundleManifest.Media m = manifest.media.get("image");
        float[] pixels = ImagePreprocessor.run(image, manifest.image);
        int crop = manifest.image.crop;
        Map<String, OnnxTensor> in = new HashMap<>();
        in.put(m.input, OnnxTensor.createTensor(env, FloatBuffer.wrap(pixels), new long[] {1, 3, crop, crop}));
        return runRows(m.encoder, in, m.output);
    }

    private float[][] encodeAudio(float[] samples) throws OrtException {
        BundleManifest.Media m = manifest.media.get("audio");
        BundleManifest.AudioSpec spec = manifest.audio;
        if (spec == null) {
            throw new BundleException("the bundle's manifest has no preprocess.audio for its audio encoder");
        }
        float[] features = AudioPreprocessor.logMel(samples, spec);
        Map<String, OnnxTensor> in = new HashMap<>();
        long[] shape = {1, spec.nMels, features.length / spec.nMels};
        in.put(m.input, OnnxTensor.createTensor(env, FloatBuffer.wrap(features), shape));
        if (m.length != null) {
            long[] length = {AudioPreprocessor.validFrames(samples.length, spec)};
            in.put(m.length, OnnxTensor.createTensor(env, LongBuffer.wrap(length), new long[] {1}));
        }
        return runRows(m.encoder, in, m.output);
    }

    /** Runs a component and returns output `name` [1, n, hidden] as n rows; closes inputs and results. */
    private float[][] runRows(String component, Map<String, OnnxTensor> in, String name) throws OrtException {
        try (OrtSession.Result r = sessions.get(component).run(in)) {
            OnnxTensor t = (OnnxTensor) r.get(outputIndex(r, name));
            long[] shape = t.getInfo().getShape();
            int n = (int) shape[1];
            int hidden = (int) shape[2];
            FloatBuffer fb = t.getFloatBuffer();
            float[][] rows = new float[n][hidden];
            for (int k = 0; k < n; k++) {
                fb.get(rows[k]);
            }
            return rows;
        } finally {
            for (OnnxTensor t : in.values()) {
                t.close();
            }
        }
    }

    private static int outputIndex(OrtSession.Result r, String name) {
        int k = 0;
        for (Map.Entry<String, OnnxValue> e : r) {
            if (e.getKey().equals(name)) {
                return k;
            }
            k++;
        }
        throw new BundleException("no output " + name);
    }

    /** Each placeholder token's position becomes its encoder's rows, as LLaVA's processor + model do. */
    private static float[][] merge(int[] ids, float[][] rows, Map<Integer, float[][]> encoded) {
        List<float[]> merged = new ArrayList<>();
        for (int k = 0; k < ids.length; k++) {
            float[][] item = encoded.get(ids[k]);
            if (item == null) {
                merged.add(rows[k]);
            } else {
                for (float[] r : item) {
                    merged.add(r);
                }
            }
        }
        return merged.toArray(new float[0][]);
    }

    /** Feeds `rows` in chunks of streaming.prefill_chunk, as the Python Decoder.prefill; the last row's greedy token. */
    private int prefill(KvWindow cache, float[][] rows) throws OrtException {
        int chunk = manifest.streaming.prefillChunk;
        int next = -1;
        for (int at = 0; at < rows.length; at += chunk) {
            next = step(cache, Arrays.copyOfRange(rows, at, Math.min(rows.length, at + chunk)));
        }
        return next;
    }

    /** One decoder call on `rows` after the cache (slid first when they would not fit); the last row's greedy token. */
    private int step(KvWindow cache, float[][] rows) throws OrtException {
        int seq = rows.length;
        int hidden = rows[0].length;
        cache.makeRoom(seq);
        FloatBuffer embeds = FloatBuffer.allocate(seq * hidden);
        for (float[] row : rows) {
            embeds.put(row);
        }
        embeds.flip();
        long[] mask = cache.mask(seq);
        List<OnnxTensor> owned = new ArrayList<>();
        OrtSession.Result r;
        try {
            owned.add(OnnxTensor.createTensor(env, embeds, new long[] {1, seq, hidden}));
            owned.add(OnnxTensor.createTensor(env, LongBuffer.wrap(mask), new long[] {1, mask.length}));
            owned.add(OnnxTensor.createTensor(env, LongBuffer.wrap(cache.positions(seq)), new long[] {1, seq}));
            Map<String, OnnxTensor> in = new HashMap<>(cache.past());
            in.put("inputs_embeds", owned.get(0));
            in.put("attention_mask", owned.get(1));
            in.put("position_ids", owned.get(2));
            r = sessions.get(manifest.decoder).run(in);
        } finally {
            for (OnnxTensor t : owned) {
                t.close();
            }
        }
        int next;
        try {
            next = argmaxLastRow((OnnxTensor) r.get(outputIndex(r, manifest.decoder().outputs.get(0).name)));
        } catch (RuntimeException e) {
            r.close();
            throw e;
        }
        cache.advance(r, seq);
        return next;
    }

    /** Greedy choice over the last position's logits; the first maximum wins, as numpy's argmax. */
    static int argmaxLastRow(OnnxTensor logits) {
        long[] shape = logits.getInfo().getShape();
        int vocab = (int) shape[2];
        FloatBuffer fb = logits.getFloatBuffer();
        int base = (int) ((shape[1] - 1) * vocab);
        int best = 0;
        float bestValue = fb.get(base);
        for (int k = 1; k < vocab; k++) {
            float v = fb.get(base + k);
            if (v > bestValue) {
                bestValue = v;
                best = k;
            }
        }
        return best;
    }

    private String emitted = ""; // the answer's text already handed to the listener

    /**
     * The text the newest token adds, as the Python runtime's detokenize(): decode the whole
     * answer, and hold back while it ends in U+FFFD (a multi-byte character not yet complete).
     */
    private String newText(List<Integer> ids) {
        String text = tokenizer.decode(ids);
        if (text.endsWith("\ufffd") || text.length() <= emitted.length()) {
            return "";
        }
        String piece = text.substring(emitted.length());
        emitted = text;
        return piece;
    }

    static void verifyFiles(File dir, BundleManifest manifest) throws IOException {
        for (String name : manifest.fileNames()) {
            File f = new File(dir, name);
            long want = manifest.fileBytes.get(name);
            if (!f.isFile() || f.length() != want) {
                throw new BundleException(name + ": missing or " + f.length() + " bytes, the manifest says " + want);
            }
            String sha = sha256(f);
            if (!sha.equals(manifest.fileSha256.get(name))) {
                throw new BundleException(name + ": sha256 " + sha + " differs from the manifest's " + manifest.fileSha256.get(name));
            }
        }
    }

    static String sha256(File f) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException("every JVM and Android has SHA-256", e);
        }
        byte[] buf = new byte[1 << 16];
        try (InputStream in = new FileInputStream(f)) {
            for (int n; (n = in.read(buf)) > 0; ) {
                md.update(buf, 0, n);
            }
        }
        StringBuilder b = new StringBuilder();
        for (byte x : md.digest()) {
            b.append(String.format("%02x", x & 0xFF));
        }
        return b.toString();
    }

    static String readText(File f) throws IOException {
        byte[] data = new byte[(int) f.length()];
        try (InputStream in = new FileInputStream(f)) {
            int off = 0;
            for (int n; off < data.length && (n = in.read(data, off, data.length - off)) > 0; ) {
                off += n;
            }
        }
        return new String(data, StandardCharsets.UTF_8);
    }

    @Override
    public void close() {
        for (OrtSession s : sessions.values()) {
            try {
                s.close();
            } catch (OrtException e) {
                // closing releases native memory; a failure here leaves nothing for the caller to do
            }
        }
        sessions.clear();
    }
}
