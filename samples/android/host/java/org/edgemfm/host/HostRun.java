package org.edgemfm.host;

import java.awt.image.BufferedImage;
import java.io.DataOutputStream;
import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import javax.imageio.ImageIO;
import org.edgemfm.bundle.AudioPreprocessor;
import org.edgemfm.bundle.BundleException;
import org.edgemfm.bundle.ImagePreprocessor;
import org.edgemfm.bundle.MemoryBudget;
import org.edgemfm.bundle.MultimodalModel;

/**
 * Runs the app's decode loop (org.edgemfm.bundle, the classes packed into the APK) on a plain JVM
 * and prints one JSON line: {"tokens": [...], "text": "...", "pieces": [...], "evicted": N, "plan": {...}}
 * ("plan": MemoryBudget's estimate before loading, with no process bytes: weights, kv_cache, activations).
 * A bundle the budget cannot hold, or another bundle error, is one line on stderr and exit status 2.
 *
 * <pre>
 * java -Donnxruntime.native.path=LIBDIR -cp CLASSES org.edgemfm.host.HostRun \
 *     --bundle DIR [--image FILE.png] [--prompt TEXT] [--max-new-tokens N] [--threads N]
 *     [--pixels OUT.f32]    # also write the pre-processed image (float32, little-endian, CHW)
 *     [--audio FILE.wav] [--features OUT.f32]   # a clip; also write its log-mel [n_mels, frames]
 *     [--memory-budget MB]   # default: this machine's MemAvailable plus what the process holds
 * </pre>
 * The image is decoded with ImageIO into the same packed ARGB pixels the app takes from
 * Android's Bitmap.getPixels.
 */
public final class HostRun {
    private HostRun() {}

    public static void main(String[] args) throws Exception {
        String bundle = null;
        String image = null;
        String prompt = "What is in this picture?";
        String pixels = null;
        String audio = null;
        String features = null;
        Integer maxNew = null;
        int threads = 1;
        long budget = MemoryBudget.residentBytes() + memAvailable();
        for (int k = 0; k < args.length; k += 2) {
            if (k + 1 >= args.length) {
                usage("missing a value after " + args[k]);
            }
            String v = args[k + 1];
            switch (args[k]) {
                case "--bundle": bundle = v; break;
                case "--image": image = v; break;
                case "--prompt": prompt = v; break;
                case "--pixels": pixels = v; break;
                case "--audio": audio = v; break;
                case "--features": features = v; break;
                case "--max-new-tokens": maxNew = Integer.parseInt(v); break;
                case "--threads": threads = Integer.parseInt(v); break;
                case "--memory-budget": budget = (long) (Double.parseDouble(v) * MemoryBudget.MIB); break;
                default: usage("unknown option " + args[k]);
            }
        }
        if (bundle == null) {
            usage("--bundle is required");
        }
        ImagePreprocessor.RgbImage rgb = image == null ? null : read(new File(image));
        final List<String> pieces = new ArrayList<>();
        try (MultimodalModel model = MultimodalModel.load(new File(bundle), threads, budget)) {
            if (pixels != null && rgb != null) {
                writeFloats(new File(pixels), ImagePreprocessor.run(rgb, model.manifest.image));
            }
            float[] clip = null;
            if (audio != null) {
                clip = AudioPreprocessor.readWav(Files.readAllBytes(new File(audio).toPath()), model.manifest.audio);
            }
            if (features != null && clip != null) {
                writeFloats(new File(features), AudioPreprocessor.logMel(clip, model.manifest.audio));
            }
            int limit = maxNew != null ? maxNew : model.manifest.maxNewTokens;
            int[] ids = model.generate(prompt, rgb, clip, limit, new MultimodalModel.TokenListener() {
                @Override
                public void onToken(int id, String piece) {
                    pieces.add(piece);
                }
            });
            List<Integer> list = new ArrayList<>();
            StringBuilder out = new StringBuilder("{\"tokens\": [");
            for (int k = 0; k < ids.length; k++) {
                out.append(k == 0 ? "" : ", ").append(ids[k]);
                list.add(ids[k]);
            }
            out.append("], \"text\": ").append(quote(model.tokenizer.decode(list))).append(", \"pieces\": [");
            for (int k = 0; k < pieces.size(); k++) {
                out.append(k == 0 ? "" : ", ").append(quote(pieces.get(k)));
            }
            out.append("], \"prompt_ids\": [");
            int[] promptIds = model.tokenizer.encode(prompt);
            for (int k = 0; k < promptIds.length; k++) {
                out.append(k == 0 ? "" : ", ").append(promptIds[k]);
            }
            out.append("], \"evicted\": ").append(model.lastEvicted());
            out.append(", \"plan\": ").append(planJson(MemoryBudget.estimate(model.manifest, 0, false)));
            MultimodalModel.Timing t = model.lastTiming();
            if (t != null) { // what the app's status line shows
                out.append(", \"first_token_ms\": ").append(t.firstTokenMs);
                out.append(", \"decode_tokens_per_s\": ").append(Double.isNaN(t.decodeTokensPerSecond) ? "null" : t.decodeTokensPerSecond);
            }
            System.out.println(out.append("}"));
        } catch (BundleException e) { // a user's mistake or a budget too small: one line, as `edgemfm run` prints it
            System.err.println("HostRun: " + e.getMessage());
            System.exit(2);
        }
    }

    private static String planJson(MemoryBudget.Plan p) {
        StringBuilder b = new StringBuilder("{\"weights\": ").append(p.weights).append(", \"kv_cache\": ").append(p.kvCache);
        b.append(", \"activations\": {");
        String sep = "";
        for (Map.Entry<String, Long> e : p.activations.entrySet()) {
            b.append(sep).append(quote(e.getKey())).append(": ").append(e.getValue());
            sep = ", ";
        }
        return b.append("}}").toString();
    }

    /** MemAvailable from /proc/meminfo: what Linux can still give without swapping (0 where unknown). */
    private static long memAvailable() throws IOException {
        File info = new File("/proc/meminfo");
        if (!info.isFile()) {
            return 0;
        }
        for (String line : Files.readAllLines(info.toPath())) {
            if (line.startsWith("MemAvailable:")) {
                return Long.parseLong(line.split("\\s+")[1]) * 1024;
            }
        }
        return 0;
    }

    private static void usage(String why) {
        System.err.println("HostRun: " + why + "\nusage: HostRun --bundle DIR [--image FILE] [--prompt TEXT]"
                + " [--max-new-tokens N] [--threads N] [--pixels OUT.f32] [--audio FILE.wav] [--features OUT.f32]"
                + " [--memory-budget MB]");
        System.exit(2);
    }

    private static ImagePreprocessor.RgbImage read(File f) throws IOException {
        BufferedImage img = ImageIO.read(f);
        if (img == null) {
            throw new IOException(f + ": not an image ImageIO can read");
        }
        int w = img.getWidth();
        int h = img.getHeight();
        return new ImagePreprocessor.RgbImage(w, h, img.getRGB(0, 0, w, h, null, 0, w));
    }

    private static void writeFloats(File f, float[] data) throws IOException {
        try (DataOutputStream out = new DataOutputStream(new FileOutputStream(f))) {
            for (float v : data) {
                out.writeInt(Integer.reverseBytes(Float.floatToRawIntBits(v)));
            }
        }
    }

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (int k = 0; k < s.length(); k++) {
            char c = s.charAt(k);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20 || c > 0x7E) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

}
