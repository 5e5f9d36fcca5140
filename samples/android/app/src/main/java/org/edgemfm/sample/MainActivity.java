package org.edgemfm.sample;

import android.Manifest;
import android.app.Activity;
import android.app.ActivityManager;
import android.content.ActivityNotFoundException;
import android.content.Intent;
import android.content.pm.PackageManager;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Bundle;
import android.os.SystemClock;
import android.view.View;
import android.widget.Button;
import android.widget.EditText;
import android.widget.ImageView;
import android.widget.TextView;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import org.edgemfm.bundle.AudioPreprocessor;
import org.edgemfm.bundle.BundleManifest;
import org.edgemfm.bundle.ImagePreprocessor;
import org.edgemfm.bundle.MemoryBudget;
import org.edgemfm.bundle.MultimodalModel;

/**
 * The sample's one screen: pick an image (gallery or camera) and/or a clip (record from the
 * microphone, or pick a WAV), type a prompt, and watch the answer stream in, then the bundle's
 * precision and size with the first-token latency and decode speed. All model work runs on one
 * background thread; the UI thread only shows results.
 */
public class MainActivity extends Activity {
    private static final int PICK_IMAGE = 1;
    private static final int TAKE_PHOTO = 2;
    private static final int PICK_WAV = 3;
    private static final int ASK_MICROPHONE = 4;

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private MultimodalModel model;
    private Bitmap image;
    private float[] clip; // mono samples at the model's rate, or null
    private Microphone mic; // while recording
    private TextView status;
    private TextView answer;
    private ImageView imageView;
    private EditText prompt;
    private Button run;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        status = (TextView) findViewById(R.id.status);
        answer = (TextView) findViewById(R.id.answer);
        imageView = (ImageView) findViewById(R.id.image);
        prompt = (EditText) findViewById(R.id.prompt);
        run = (Button) findViewById(R.id.run);
        View.OnClickListener clicks = new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                int id = v.getId();
                if (id == R.id.gallery) {
                    pickImage();
                } else if (id == R.id.camera) {
                    takePhoto();
                } else if (id == R.id.clear) {
                    showImage(null);
                    setClip(null, null);
                } else if (id == R.id.record) {
                    record();
                } else if (id == R.id.wav) {
                    pickWav();
                } else if (id == R.id.run) {
                    answer();
                }
            }
        };
        for (int id : new int[] {R.id.gallery, R.id.camera, R.id.clear, R.id.record, R.id.wav, R.id.run}) {
            findViewById(id).setOnClickListener(clicks);
        }
        worker.execute(new Runnable() {
            @Override
            public void run() {
                loadModel();
            }
        });
    }

    private void loadModel() {
        long start = SystemClock.elapsedRealtime();
        try {
            File dir = BundleAssets.install(getAssets(), getFilesDir());
            int threads = Math.max(1, Math.min(4, Runtime.getRuntime().availableProcessors()));
            model = MultimodalModel.load(dir, threads, memoryBudget());
            long ms = SystemClock.elapsedRealtime() - start;
            show(String.format(Locale.US, "%s, loaded in %d ms, needs %.0f MiB (KV cache of %d tokens)",
                    describe(model.manifest), ms, model.memory().total() / 1048576.0, model.manifest.streaming.maxSeqLen), true);
        } catch (Exception e) {
            show("Cannot load the bundle: " + e.getMessage(), false);
        }
    }

    /**
     * The memory budget: what this process holds now plus what the system can still give before
     * its low-memory killer acts (ActivityManager's availMem less its threshold).
     */
    private long memoryBudget() {
        ActivityManager.MemoryInfo info = new ActivityManager.MemoryInfo();
        ((ActivityManager) getSystemService(ACTIVITY_SERVICE)).getMemoryInfo(info);
        return MemoryBudget.residentBytes() + info.availMem - info.threshold;
    }

    /** Sets the status line and the Answer button from the worker thread. */
    private void show(final String text, final boolean canRun) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                status.setText(text);
                run.setEnabled(canRun);
            }
        });
    }

    private void pickImage() {
        Intent i = new Intent(Intent.ACTION_GET_CONTENT).setType("image/*").addCategory(Intent.CATEGORY_OPENABLE);
        startActivityForResult(Intent.createChooser(i, getString(R.string.pick_gallery)), PICK_IMAGE);
    }

    /** The camera app's preview-sized photo ("data" extra): no file provider or camera permission needed. */
    private void takePhoto() {
        try {
            startActivityForResult(new Intent("android.media.action.IMAGE_CAPTURE"), TAKE_PHOTO);
        } catch (ActivityNotFoundException e) {
            status.setText("No camera app on this device");
        }
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        super.onActivityResult(requestCode, resultCode, data);
        if (resultCode != RESULT_OK || data == null) {
            return;
        }
        if (requestCode == TAKE_PHOTO && data.getExtras() != null) {
            showImage((Bitmap) data.getExtras().get("data"));
        } else if (requestCode == PICK_WAV && data.getData() != null) {
            readWav(data.getData());
        } else if (requestCode == PICK_IMAGE && data.getData() != null) {
            try {
                showImage(decode(data.getData()));
            } catch (IOException e) {
                status.setText("Cannot read the image: " + e.getMessage());
            }
        }
    }

    /** Decodes at full size unless the image is huge; then by a power of two, keeping >= 2x the model's input. */
    private Bitmap decode(Uri uri) throws IOException {
        BitmapFactory.Options bounds = new BitmapFactory.Options();
        bounds.inJustDecodeBounds = true;
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            BitmapFactory.decodeStream(in, null, bounds);
        }
        int need = model != null && model.manifest.image != null ? 2 * model.manifest.image.size : 448;
        int sample = 1;
        while (Math.min(bounds.outWidth, bounds.outHeight) / (2 * sample) >= need
                && (long) bounds.outWidth * bounds.outHeight / ((long) sample * sample) > 16_000_000L) {
            sample *= 2;
        }
        BitmapFactory.Options opts = new BitmapFactory.Options();
        opts.inSampleSize = sample;
        opts.inPreferredConfig = Bitmap.Config.ARGB_8888;
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            Bitmap b = BitmapFactory.decodeStream(in, null, opts);
            if (b == null) {
                throw new IOException("not an image this phone can decode");
            }
            return b;
        }
    }

    private void showImage(Bitmap b) {
        image = b;
        imageView.setImageBitmap(b);
    }

    private void answer() {
        final String text = prompt.getText().toString();
        final ImagePreprocessor.RgbImage rgb = image == null ? null : toRgb(image);
        final float[] audio = clip;
        run.setEnabled(false);
        answer.setText("");
        worker.execute(new Runnable() {
            @Override
            public void run() {
                generate(text, rgb, audio);
            }
        });
    }

    /** On the worker thread: streams each new piece of text to the answer view. */
    private void generate(String text, ImagePreprocessor.RgbImage rgb, float[] audio) {
        try {
            int[] ids = model.generate(text, rgb, audio, model.manifest.maxNewTokens, new MultimodalModel.TokenListener() {
                @Override
                public void onToken(int id, final String piece) {
                    runOnUiThread(new Runnable() {
                        @Override
                        public void run() {
                            answer.append(piece);
                        }
                    });
                }
            });
            MultimodalModel.Timing t = model.lastTiming();
            String speed = t == null ? "no answer" : String.format(Locale.US, "first token %.0f ms, decode %.1f tokens/s",
                    t.firstTokenMs, t.decodeTokensPerSecond);
            show(describe(model.manifest) + "\n" + ids.length + " tokens: " + speed, true);
        } catch (Exception e) {
            show("Generation failed: " + e.getMessage(), true);
        }
    }

    /** The bundle's precision and size, as the status line shows them. */
    private static String describe(BundleManifest m) {
        return String.format(Locale.US, "%s (%s, %s, %.1f MiB)", m.modelId, m.profile, m.precision,
                m.totalBytes() / 1048576.0);
    }

    /** Record / Stop: asks for the microphone once, then records the model's window at most. */
    private void record() {
        if (model == null || model.manifest.audio == null) {
            status.setText("This bundle takes no audio");
            return;
        }
        if (mic != null) {
            try {
                setClip(mic.stop(), "recorded");
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
            mic = null;
            return;
        }
        if (checkSelfPermission(Manifest.permission.RECORD_AUDIO) != PackageManager.PERMISSION_GRANTED) {
            requestPermissions(new String[] {Manifest.permission.RECORD_AUDIO}, ASK_MICROPHONE);
            return;
        }
        try {
            mic = Microphone.start(model.manifest.audio.samplingRate, model.manifest.audio.nSamples);
            ((Button) findViewById(R.id.record)).setText(R.string.stop);
            status.setText("Recording… press Stop");
        } catch (IllegalStateException e) {
            status.setText("Cannot record: " + e.getMessage());
        }
    }

    @Override
    public void onRequestPermissionsResult(int requestCode, String[] permissions, int[] results) {
        if (requestCode == ASK_MICROPHONE && results.length == 1 && results[0] == PackageManager.PERMISSION_GRANTED) {
            record();
        } else if (requestCode == ASK_MICROPHONE) {
            status.setText("Recording needs the microphone permission");
        }
    }

    private void pickWav() {
        Intent i = new Intent(Intent.ACTION_GET_CONTENT).setType("audio/*").addCategory(Intent.CATEGORY_OPENABLE);
        startActivityForResult(Intent.createChooser(i, getString(R.string.pick_wav)), PICK_WAV);
    }

    private void readWav(Uri uri) {
        if (model == null || model.manifest.audio == null) {
            status.setText("This bundle takes no audio");
            return;
        }
        try (InputStream in = getContentResolver().openInputStream(uri)) {
            ByteArrayOutputStream bytes = new ByteArrayOutputStream();
            byte[] buf = new byte[1 << 16];
            for (int n; (n = in.read(buf)) > 0; ) {
                bytes.write(buf, 0, n);
            }
            setClip(AudioPreprocessor.readWav(bytes.toByteArray(), model.manifest.audio), "from the WAV file");
        } catch (IOException | RuntimeException e) {
            status.setText("Cannot read the WAV file: " + e.getMessage());
        }
    }

    private void setClip(float[] samples, String how) {
        clip = samples;
        ((Button) findViewById(R.id.record)).setText(R.string.record);
        if (samples != null) {
            float seconds = (float) samples.length / model.manifest.audio.samplingRate;
            status.setText(String.format(Locale.US, "Clip of %.1f s %s", seconds, how));
        }
    }

    private static ImagePreprocessor.RgbImage toRgb(Bitmap b) {
        int[] argb = new int[b.getWidth() * b.getHeight()];
        b.getPixels(argb, 0, b.getWidth(), 0, 0, b.getWidth(), b.getHeight());
        return new ImagePreprocessor.RgbImage(b.getWidth(), b.getHeight(), argb);
    }

    @Override
    protected void onDestroy() {
        final MultimodalModel m = model;
        if (m != null) {
            worker.execute(new Runnable() { // after any answer in progress
                @Override
                public void run() {
                    m.close();
                }
            });
        }
        worker.shutdown();
        super.onDestroy();
    }
}
