package org.edgemfm.sample;

import android.media.AudioFormat;
import android.media.AudioRecord;
import android.media.MediaRecorder;
import org.edgemfm.bundle.AudioPreprocessor;

/**
 * Records mono 16-bit PCM from the microphone at the model's sampling rate (16 kHz for Whisper
 * encoders), on its own thread, until stop() or the model's window is full. The caller holds the
 * RECORD_AUDIO permission.
 *
 * <p>Example: {@code Microphone mic = Microphone.start(16000, 32000); ... float[] clip = mic.stop();}
 */
final class Microphone {
    private final AudioRecord record;
    private final short[] pcm;
    private final Thread reader;
    private volatile boolean running = true;
    private int count;

    private Microphone(AudioRecord record, int maxSamples) {
        this.record = record;
        this.pcm = new short[maxSamples];
        this.reader = new Thread(new Runnable() {
            @Override
            public void run() {
                read();
            }
        }, "microphone");
    }

    /** Starts recording at `rate` Hz; at most `maxSamples` samples are kept (the model's window). */
    static Microphone start(int rate, int maxSamples) {
        int min = AudioRecord.getMinBufferSize(rate, AudioFormat.CHANNEL_IN_MONO, AudioFormat.ENCODING_PCM_16BIT);
        if (min <= 0) {
            throw new IllegalStateException("this phone cannot record " + rate + " Hz mono 16-bit PCM");
        }
        AudioRecord record = new AudioRecord(MediaRecorder.AudioSource.MIC, rate, AudioFormat.CHANNEL_IN_MONO,
                AudioFormat.ENCODING_PCM_16BIT, Math.max(min, rate / 5 * 2)); // >= 200 ms of buffering
        if (record.getState() != AudioRecord.STATE_INITIALIZED) {
            record.release();
            throw new IllegalStateException("the microphone is busy or not allowed");
        }
        Microphone mic = new Microphone(record, maxSamples);
        record.startRecording();
        mic.reader.start();
        return mic;
    }

    private void read() {
        while (running && count < pcm.length) {
            int n = record.read(pcm, count, Math.min(1024, pcm.length - count));
            if (n <= 0) {
                break;
            }
            count += n;
        }
    }

    /** Stops and returns the samples in [-1, 1]; the microphone is released. */
    float[] stop() throws InterruptedException {
        running = false;
        reader.join();
        record.stop();
        record.release();
        return AudioPreprocessor.fromPcm16(pcm, count);
    }
}
