package org.edgemfm.host;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;
import org.edgemfm.bundle.BpeTokenizer;
import org.edgemfm.bundle.Json;

/**
 * Encodes and decodes texts with the app's tokenizer, for comparison with Hugging Face tokenizers.
 *
 * <pre>
 * java -cp CLASSES org.edgemfm.host.TokenizeCheck tokenizer.json texts.json
 * </pre>
 * texts.json holds a JSON list of strings; the output is one JSON line per text:
 * {"ids": [...], "decoded": "..."}.
 */
public final class TokenizeCheck {
    private TokenizeCheck() {}

    public static void main(String[] args) throws Exception {
        if (args.length != 2) {
            System.err.println("usage: TokenizeCheck tokenizer.json texts.json");
            System.exit(2);
        }
        BpeTokenizer tok = BpeTokenizer.fromJson(read(args[0]));
        for (Object text : (List<?>) Json.parse(read(args[1]))) {
            int[] ids = tok.encode((String) text);
            List<Integer> list = new ArrayList<>();
            StringBuilder b = new StringBuilder("{\"ids\": [");
            for (int k = 0; k < ids.length; k++) {
                b.append(k == 0 ? "" : ", ").append(ids[k]);
                list.add(ids[k]);
            }
            System.out.println(b.append("], \"decoded\": ").append(HostRun.quote(tok.decode(list))).append('}'));
        }
    }

    private static String read(String path) throws java.io.IOException {
        return new String(Files.readAllBytes(new File(path).toPath()), StandardCharsets.UTF_8);
    }
}
