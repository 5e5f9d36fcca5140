package org.edgemfm.sample;

import android.content.res.AssetManager;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.util.Arrays;
import org.edgemfm.bundle.BundleManifest;

/**
 * Copies the bundle packed in the APK's assets/bundle/ to app storage, because ONNX Runtime opens
 * a model by path (memory-mapping external data) and assets are not files. The copy is skipped when
 * the stored manifest.json is byte-for-byte the packed one (same files, same sha256s); an app
 * update with another bundle copies again. MultimodalModel.load() then checks every sha256.
 */
final class BundleAssets {
    static final String ASSET_DIR = "bundle"; // where ci/put_bundle.sh and `--target-app` put it

    private BundleAssets() {}

    static File install(AssetManager assets, File filesDir) throws IOException {
        File dir = new File(filesDir, ASSET_DIR);
        if (!dir.isDirectory() && !dir.mkdirs()) {
            throw new IOException("cannot create " + dir);
        }
        byte[] packed = readAll(assets.open(ASSET_DIR + "/manifest.json"));
        File stored = new File(dir, "manifest.json");
        if (stored.isFile() && Arrays.equals(packed, readAll(new FileInputStream(stored)))) {
            return dir;
        }
        if (stored.exists() && !stored.delete()) {
            throw new IOException("cannot replace " + stored);
        }
        BundleManifest manifest = BundleManifest.parse(new String(packed, "UTF-8"));
        for (String name : manifest.fileNames()) {
            copy(assets, ASSET_DIR + "/" + name, new File(dir, name));
        }
        // The manifest goes last: a copy cut short leaves no manifest that claims the files are there.
        copy(assets, ASSET_DIR + "/manifest.json", new File(dir, "manifest.json"));
        return dir;
    }

    /** Writes to a temporary name first, then renames, so a half-written file never looks complete. */
    private static void copy(AssetManager assets, String asset, File target) throws IOException {
        File parent = target.getParentFile();
        if (!parent.isDirectory() && !parent.mkdirs()) {
            throw new IOException("cannot create " + parent);
        }
        File tmp = new File(target.getPath() + ".part");
        byte[] buf = new byte[1 << 16];
        try (InputStream in = assets.open(asset); OutputStream out = new FileOutputStream(tmp)) {
            for (int n; (n = in.read(buf)) > 0; ) {
                out.write(buf, 0, n);
            }
        }
        if (!tmp.renameTo(target)) {
            throw new IOException("cannot rename " + tmp + " to " + target);
        }
    }

    private static byte[] readAll(InputStream in) throws IOException {
        try (InputStream s = in) {
            java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
            byte[] buf = new byte[1 << 14];
            for (int n; (n = s.read(buf)) > 0; ) {
                out.write(buf, 0, n);
            }
            return out.toByteArray();
        }
    }
}
