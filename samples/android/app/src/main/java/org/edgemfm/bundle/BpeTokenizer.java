package org.edgemfm.bundle;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * A byte-level BPE tokenizer read from a Hugging Face tokenizers file (tokenizer.json): the
 * GPT-2 family used by the default model and by SmolLM2. Encoding splits out added tokens,
 * normalizes, pre-tokenizes (ByteLevel, Split, Digits, Sequence), runs BPE merges by rank and
 * applies the TemplateProcessing post-processor; decoding maps byte characters back to UTF-8.
 *
 * <p>Why our own: the tokenizers library has no Java build for Android or for the JVM in the
 * registries this project reaches. Anything in a file that this class does not implement is
 * refused with the supported values, never ignored. Example:
 * {@code BpeTokenizer t = BpeTokenizer.fromJson(text); int[] ids = t.encode("USER: hi");}
 */
public final class BpeTokenizer {
    /** \s as the tokenizers regex engine reads it: Unicode White_Space, spelled out for Android's ICU. */
    private static final String WS = "[\\t\\n\\x0B\\f\\r\\x{85}\\p{Z}]";
    private static final Pattern GPT2 = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + WS.substring(1, WS.length() - 1)
                    + "\\p{L}\\p{N}]+|" + WS + "+(?!" + "[^" + WS.substring(1, WS.length() - 1) + "])|" + WS + "+");
    private static final char[] BYTE_TO_CHAR = new char[256];
    private static final Map<Character, Integer> CHAR_TO_BYTE = new HashMap<>();

    static {
        // GPT-2's reversible map from bytes to printable characters.
        int n = 0;
        for (int b = 0; b < 256; b++) {
            boolean printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            BYTE_TO_CHAR[b] = printable ? (char) b : (char) (256 + n++);
            CHAR_TO_BYTE.put(BYTE_TO_CHAR[b], b);
        }
    }

    private static final class AddedToken {
        final int id;
        final String content;
        final boolean special;
        final boolean lstrip;
        final boolean rstrip;
        final boolean singleWord;

        AddedToken(Map<String, Object> m) {
            id = ((Long) m.get("id")).intValue();
            content = (String) m.get("content");
            special = Boolean.TRUE.equals(m.get("special"));
            lstrip = Boolean.TRUE.equals(m.get("lstrip"));
            rstrip = Boolean.TRUE.equals(m.get("rstrip"));
            singleWord = Boolean.TRUE.equals(m.get("single_word"));
        }
    }

    private final Map<String, Integer> vocab = new HashMap<>();
    private final Map<Integer, String> idToToken = new HashMap<>();
    private final Map<String, Integer> mergeRank = new HashMap<>(); // "left right" -> rank
    private final List<AddedToken> added = new ArrayList<>();
    private final Map<Integer, AddedToken> addedById = new HashMap<>();
    private final List<Map<String, Object>> normalizers = new ArrayList<>();
    private final List<Map<String, Object>> preTokenizers = new ArrayList<>();
    private final List<Integer> prefixIds = new ArrayList<>(); // from TemplateProcessing "single"
    private final List<Integer> suffixIds = new ArrayList<>();
    private final boolean ignoreMerges;
    private final Integer unkId;

    private BpeTokenizer(Map<String, Object> root) {
        Map<String, Object> model = BundleManifest.asMap(root.get("model"), "tokenizer model");
        require("model.type", model.get("type"), "BPE");
        for (String unsupported : new String[] {"continuing_subword_prefix", "end_of_word_suffix", "dropout"}) {
            Object value = model.get(unsupported);
            if (value != null && !"".equals(value)) { // SmolLM2's tokenizer.json writes "" for the affixes: no affix
                throw new BundleException("tokenizer: model." + unsupported + " is not supported (must be null or empty)");
            }
        }
        if (Boolean.TRUE.equals(model.get("byte_fallback"))) {
            throw new BundleException("tokenizer: byte_fallback BPE is not supported; only byte-level BPE");
        }
        ignoreMerges = Boolean.TRUE.equals(model.get("ignore_merges"));
        for (Map.Entry<String, Object> e : BundleManifest.asMap(model.get("vocab"), "vocab").entrySet()) {
            int id = ((Long) e.getValue()).intValue();
            vocab.put(e.getKey(), id);
            idToToken.put(id, e.getKey());
        }
        List<Object> merges = BundleManifest.list(model, "merges");
        for (int r = 0; r < merges.size(); r++) {
            Object m = merges.get(r);
            String key = m instanceof String ? (String) m : ((List<?>) m).get(0) + " " + ((List<?>) m).get(1);
            if (!mergeRank.containsKey(key)) {
                mergeRank.put(key, r);
            }
        }
        Object unk = model.get("unk_token");
        unkId = unk == null ? null : vocab.get((String) unk);
        Object addedList = root.get("added_tokens");
        if (addedList != null) {
            for (Object o : (List<?>) addedList) {
                AddedToken t = new AddedToken(BundleManifest.asMap(o, "added_tokens[]"));
                added.add(t);
                addedById.put(t.id, t);
                idToToken.put(t.id, t.content);
            }
        }
        flatten(root.get("normalizer"), "normalizers", normalizers);
        flatten(root.get("pre_tokenizer"), "pretokenizers", preTokenizers);
        readPostProcessor(root.get("post_processor"));
        checkDecoder(root.get("decoder"));
    }

    public static BpeTokenizer fromJson(String text) {
        try {
            return new BpeTokenizer(Json.parseObject(text));
        } catch (IllegalArgumentException | ClassCastException e) {
            throw new BundleException("tokenizer.json: " + e.getMessage(), e);
        }
    }

    private static void require(String what, Object got, String... allowed) {
        for (String a : allowed) {
            if (a.equals(got)) {
                return;
            }
        }
        throw new BundleException("tokenizer: " + what + " " + got + " is not supported; supported: " + java.util.Arrays.toString(allowed));
    }

    /** Appends a component, or the members of a Sequence, to `out`. */
    private static void flatten(Object node, String seqKey, List<Map<String, Object>> out) {
        if (node == null) {
            return;
        }
        Map<String, Object> m = BundleManifest.asMap(node, seqKey);
        if ("Sequence".equals(m.get("type"))) {
            for (Object o : BundleManifest.list(m, seqKey)) {
                flatten(o, seqKey, out);
            }
        } else {
            out.add(m);
        }
    }

    private void readPostProcessor(Object node) {
        List<Map<String, Object>> steps = new ArrayList<>();
        flatten(node, "processors", steps);
        for (Map<String, Object> p : steps) {
            require("post_processor", p.get("type"), "TemplateProcessing", "ByteLevel");
            if (!"TemplateProcessing".equals(p.get("type"))) {
                continue; // ByteLevel post-processing only trims offsets; ids are unchanged
            }
            Map<String, Object> specials = BundleManifest.asMap(p.get("special_tokens"), "special_tokens");
            List<Integer> target = prefixIds;
            for (Object item : BundleManifest.list(p, "single")) {
                Map<String, Object> it = BundleManifest.asMap(item, "single[]");
                if (it.containsKey("Sequence")) {
                    target = suffixIds;
                    continue;
                }
                String id = (String) BundleManifest.asMap(it.get("SpecialToken"), "SpecialToken").get("id");
                for (Object x : BundleManifest.list(BundleManifest.asMap(specials.get(id), id), "ids")) {
                    target.add(((Long) x).intValue());
                }
            }
        }
    }

    private static void checkDecoder(Object node) {
        List<Map<String, Object>> steps = new ArrayList<>();
        flatten(node, "decoders", steps);
        for (Map<String, Object> d : steps) {
            require("decoder", d.get("type"), "ByteLevel");
        }
    }

    /** Token ids of `text`, with the special tokens the post-processor adds (as tokenizers' encode()). */
    public int[] encode(String text) {
        List<Integer> ids = new ArrayList<>(prefixIds);
        int start = 0;
        while (start <= text.length()) {
            int[] hit = findAdded(text, start); // {matchStart, matchEnd, index}
            int end = hit == null ? text.length() : hit[0];
            if (end > start) {
                encodeChunk(text.substring(start, end), ids);
            }
            if (hit == null) {
                break;
            }
            ids.add(added.get(hit[2]).id);
            start = hit[1];
        }
        ids.addAll(suffixIds);
        int[] out = new int[ids.size()];
        for (int k = 0; k < out.length; k++) {
            out[k] = ids.get(k);
        }
        return out;
    }

    /** The leftmost, then longest, added token in text[from:], widened by its lstrip/rstrip. */
    private int[] findAdded(String text, int from) {
        for (int pos = from; pos < text.length(); pos++) {
            int best = -1;
            for (int k = 0; k < added.size(); k++) {
                AddedToken t = added.get(k);
                if (!t.content.isEmpty() && text.startsWith(t.content, pos)
                        && (best < 0 || t.content.length() > added.get(best).content.length())
                        && (!t.singleWord || isWordBoundary(text, pos, pos + t.content.length()))) {
                    best = k;
                }
            }
            if (best >= 0) {
                AddedToken t = added.get(best);
                int s = pos;
                int e = pos + t.content.length();
                while (t.lstrip && s > from && Character.isWhitespace(text.charAt(s - 1))) {
                    s--;
                }
                while (t.rstrip && e < text.length() && Character.isWhitespace(text.charAt(e))) {
                    e++;
                }
                return new int[] {s, e, best};
            }
        }
        return null;
    }

    private static boolean isWordBoundary(String text, int s, int e) {
        boolean before = s == 0 || !Character.isLetterOrDigit(text.charAt(s - 1));
        boolean after = e == text.length() || !Character.isLetterOrDigit(text.charAt(e));
        return before && after;
    }

    private void encodeChunk(String chunk, List<Integer> ids) {
        for (String piece : preTokenize(normalize(chunk))) {
            bpe(piece, ids);
        }
    }

    private String normalize(String s) {
        for (Map<String, Object> n : normalizers) {
            Object type = n.get("type");
            require("normalizer", type, "NFC", "NFKC");
            s = Normalizer.normalize(s, "NFC".equals(type) ? Normalizer.Form.NFC : Normalizer.Form.NFKC);
        }
        return s;
    }

    private List<String> preTokenize(String text) {
        List<String> pieces = new ArrayList<>();
        pieces.add(text);
        boolean byteLevel = false;
        for (Map<String, Object> p : preTokenizers) {
            Object type = p.get("type");
            require("pre_tokenizer", type, "ByteLevel", "Split", "Digits");
            List<String> next = new ArrayList<>();
            for (String piece : pieces) {
                if ("ByteLevel".equals(type)) {
                    byteLevel = true;
                    if (Boolean.TRUE.equals(p.get("add_prefix_space")) && !piece.startsWith(" ")) {
                        piece = " " + piece;
                    }
                    if (Boolean.FALSE.equals(p.get("use_regex"))) {
                        next.add(toByteChars(piece));
                    } else {
                        for (String s : split(piece, GPT2, "Isolated")) {
                            next.add(toByteChars(s));
                        }
                    }
                } else if ("Split".equals(type)) {
                    next.addAll(split(piece, splitPattern(p), (String) p.get("behavior")));
                } else {
                    boolean single = Boolean.TRUE.equals(p.get("individual_digits"));
                    next.addAll(split(piece, Pattern.compile(single ? "\\p{Nd}" : "\\p{Nd}+"), "Isolated"));
                }
            }
            pieces = next;
        }
        if (!byteLevel) {
            throw new BundleException("tokenizer: no ByteLevel pre-tokenizer; only byte-level BPE is supported");
        }
        return pieces;
    }

    private static Pattern splitPattern(Map<String, Object> p) {
        if (Boolean.TRUE.equals(p.get("invert"))) {
            throw new BundleException("tokenizer: Split with invert=true is not supported");
        }
        Map<String, Object> pat = BundleManifest.asMap(p.get("pattern"), "Split.pattern");
        if (pat.containsKey("String")) {
            return Pattern.compile(Pattern.quote((String) pat.get("String")));
        }
        return Pattern.compile(unicodeWhitespace((String) pat.get("Regex")));
    }

    /** Rewrites \s and \S to Unicode White_Space, inside and outside character classes. */
    static String unicodeWhitespace(String regex) {
        String inner = WS.substring(1, WS.length() - 1);
        StringBuilder b = new StringBuilder();
        boolean inClass = false;
        for (int k = 0; k < regex.length(); k++) {
            char c = regex.charAt(k);
            if (c == '\\' && k + 1 < regex.length()) {
                char n = regex.charAt(++k);
                if (n == 's') {
                    b.append(inClass ? inner : WS);
                } else if (n == 'S' && !inClass) {
                    b.append("[^").append(inner).append(']');
                } else {
                    b.append(c).append(n);
                }
                continue;
            }
            if (c == '[') {
                inClass = true;
            } else if (c == ']') {
                inClass = false;
            }
            b.append(c);
        }
        return b.toString();
    }

    /** tokenizers' split with a delimiter behavior: Isolated, Removed, MergedWithPrevious, MergedWithNext. */
    static List<String> split(String s, Pattern pattern, String behavior) {
        require("Split behavior", behavior, "Isolated", "Removed", "MergedWithPrevious", "MergedWithNext");
        List<String> out = new ArrayList<>();
        Matcher m = pattern.matcher(s);
        int last = 0;
        String carry = "";
        while (m.find()) {
            if (m.end() == m.start()) {
                continue;
            }
            String gap = s.substring(last, m.start());
            String match = m.group();
            switch (behavior) {
                case "Isolated":
                    addNonEmpty(out, gap);
                    out.add(match);
                    break;
                case "Removed":
                    addNonEmpty(out, gap);
                    break;
                case "MergedWithPrevious":
                    addNonEmpty(out, gap + match);
                    break;
                default: // MergedWithNext
                    addNonEmpty(out, carry + gap);
                    carry = match;
                    break;
            }
            last = m.end();
        }
        addNonEmpty(out, carry + s.substring(last));
        return out;
    }

    private static void addNonEmpty(List<String> out, String s) {
        if (!s.isEmpty()) {
            out.add(s);
        }
    }

    private static String toByteChars(String s) {
        byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
        StringBuilder b = new StringBuilder(bytes.length);
        for (byte x : bytes) {
            b.append(BYTE_TO_CHAR[x & 0xFF]);
        }
        return b.toString();
    }

    /** BPE on one pre-token: merge the lowest-ranked adjacent pair (leftmost first) until none is left. */
    private void bpe(String word, List<Integer> ids) {
        if (ignoreMerges && vocab.containsKey(word)) {
            ids.add(vocab.get(word));
            return;
        }
        List<String> parts = new ArrayList<>();
        for (int k = 0; k < word.length(); ) {
            int cp = word.codePointAt(k);
            parts.add(new String(Character.toChars(cp)));
            k += Character.charCount(cp);
        }
        while (parts.size() > 1) {
            int bestRank = Integer.MAX_VALUE;
            int bestAt = -1;
            for (int k = 0; k + 1 < parts.size(); k++) {
                Integer r = mergeRank.get(parts.get(k) + " " + parts.get(k + 1));
                if (r != null && r < bestRank) {
                    bestRank = r;
                    bestAt = k;
                }
            }
            if (bestAt < 0) {
                break;
            }
            parts.set(bestAt, parts.get(bestAt) + parts.remove(bestAt + 1));
        }
        for (String p : parts) {
            Integer id = vocab.get(p);
            if (id == null) {
                if (unkId == null) {
                    throw new BundleException("tokenizer: symbol " + p + " is not in the vocabulary and there is no unk_token");
                }
                id = unkId;
            }
            ids.add(id);
        }
    }

    /** The UTF-8 bytes of `ids` with special tokens skipped (tokenizers' decode, skip_special_tokens). */
    public byte[] decodeBytes(List<Integer> ids) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int id : ids) {
            AddedToken a = addedById.get(id);
            if (a != null && a.special) {
                continue;
            }
            String t = idToToken.get(id);
            if (t == null) {
                continue;
            }
            byte[] raw = tokenBytes(t);
            out.write(raw, 0, raw.length);
        }
        return out.toByteArray();
    }

    public String decode(List<Integer> ids) {
        return utf8Lossy(decodeBytes(ids));
    }

    /**
     * UTF-8 with each maximal invalid subsequence replaced by one U+FFFD (the WHATWG decoder,
     * as Rust's from_utf8_lossy in tokenizers). Spelled out so the phone and the JVM agree:
     * their built-in decoders are not specified to replace the same way.
     */
    static String utf8Lossy(byte[] bytes) {
        StringBuilder out = new StringBuilder(bytes.length);
        int needed = 0;
        int seen = 0;
        int cp = 0;
        int lower = 0x80;
        int upper = 0xBF;
        for (int k = 0; k < bytes.length; k++) {
            int b = bytes[k] & 0xFF;
            if (needed == 0) {
                if (b <= 0x7F) {
                    out.append((char) b);
                } else if (b >= 0xC2 && b <= 0xDF) {
                    needed = 1;
                    cp = b & 0x1F;
                } else if (b >= 0xE0 && b <= 0xEF) {
                    lower = b == 0xE0 ? 0xA0 : 0x80;
                    upper = b == 0xED ? 0x9F : 0xBF;
                    needed = 2;
                    cp = b & 0x0F;
                } else if (b >= 0xF0 && b <= 0xF4) {
                    lower = b == 0xF0 ? 0x90 : 0x80;
                    upper = b == 0xF4 ? 0x8F : 0xBF;
                    needed = 3;
                    cp = b & 0x07;
                } else {
                    out.append('\ufffd');
                }
                continue;
            }
            if (b < lower || b > upper) {
                needed = 0;
                seen = 0;
                lower = 0x80;
                upper = 0xBF;
                out.append('\ufffd');
                k--; // this byte starts afresh
                continue;
            }
            lower = 0x80;
            upper = 0xBF;
            cp = (cp << 6) | (b & 0x3F);
            if (++seen == needed) {
                out.appendCodePoint(cp);
                needed = 0;
                seen = 0;
            }
        }
        if (needed != 0) {
            out.append('\ufffd');
        }
        return out.toString();
    }

    /** A token's bytes: byte characters mapped back, or its UTF-8 text when it holds other characters. */
    private static byte[] tokenBytes(String t) {
        byte[] b = new byte[t.length()];
        for (int k = 0; k < t.length(); k++) {
            Integer v = CHAR_TO_BYTE.get(t.charAt(k));
            if (v == null) {
                return t.getBytes(StandardCharsets.UTF_8);
            }
            b[k] = (byte) (int) v;
        }
        return b;
    }

    public int vocabSize() {
        return idToToken.size();
    }
}
