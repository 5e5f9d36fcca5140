package org.edgemfm.bundle;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Whisper-style log-mel features from the manifest's preprocess.audio, as runtimes/audio.py
 * computes them: WAV bytes or 16-bit PCM -> mono float samples -> Kaiser-windowed sinc resampling
 * to the model's rate -> zero-pad or cut to the window -> STFT (periodic Hann, centred, reflect
 * padding) -> power -> Slaney mel filters -> log10 -> 8-decade floor -> (x + 4) / 4.
 *
 * <p>Everything is computed in double, as numpy does, so the features agree with Python's to
 * float32 rounding. The DFT is direct (n_fft = 400 is no power of two): a 30 s window costs
 * about 0.5 G multiply-adds, a fraction of the encoder's own work.
 *
 * <p>Example: {@code float[] mel = AudioPreprocessor.logMel(AudioPreprocessor.readWav(bytes, spec), spec);}
 */
public final class AudioPreprocessor {
    private static final int RESAMPLE_TAPS = 32; // = _RESAMPLE_TAPS in runtimes/audio.py
    private static final double KAISER_BETA = 8.6;

    private AudioPreprocessor() {}

    /** Mono float samples at the model's rate from a WAV file's bytes (PCM 8/16/24/32-bit or float 32/64). */
    public static float[] readWav(byte[] data, BundleManifest.AudioSpec spec) {
        if (spec == null) {
            throw new BundleException("this bundle takes no audio (its manifest has no preprocess.audio)");
        }
        ByteBuffer b = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        if (data.length < 12 || b.getInt(0) != 0x46464952 || b.getInt(8) != 0x45564157) { // "RIFF", "WAVE"
            throw new BundleException("not a WAV file; allowed: RIFF/WAVE with PCM or float samples");
        }
        int fmt = -1;
        int dataAt = -1;
        int dataLen = 0;
        for (int pos = 12; pos + 8 <= data.length; ) {
            int tag = b.getInt(pos);
            int size = b.getInt(pos + 4);
            if (tag == 0x20746d66 && fmt < 0) { // "fmt "
                fmt = pos + 8;
            } else if (tag == 0x61746164 && dataAt < 0) { // "data"
                dataAt = pos + 8;
                dataLen = Math.min(size, data.length - dataAt);
            }
            pos += 8 + size + (size & 1);
        }
        if (fmt < 0 || dataAt < 0) {
            throw new BundleException("a WAV file without a fmt or data chunk");
        }
        int tag = b.getShort(fmt) & 0xFFFF;
        int channels = b.getShort(fmt + 2) & 0xFFFF;
        int rate = b.getInt(fmt + 4);
        int bits = b.getShort(fmt + 14) & 0xFFFF;
        if (tag == 0xFFFE) {
            tag = b.getShort(fmt + 24) & 0xFFFF; // the extensible header's sub-format starts with the plain tag
        }
        int width = bits / 8;
        boolean pcm = tag == 1 && bits % 8 == 0 && width >= 1 && width <= 4;
        boolean flt = tag == 3 && (bits == 32 || bits == 64);
        if (!(pcm || flt) || channels == 0 || rate <= 0) {
            throw new BundleException(bits + "-bit samples of format tag " + tag + "; allowed: PCM 8/16/24/32-bit, float 32/64-bit");
        }
        int frames = dataLen / (width * channels);
        float[] mono = new float[frames];
        for (int f = 0; f < frames; f++) {
            float sum = 0f;
            for (int c = 0; c < channels; c++) {
                sum += sample(b, dataAt + (f * channels + c) * width, width, flt);
            }
            mono[f] = sum / channels;
        }
        if ((double) frames / rate > (double) spec.nSamples / spec.samplingRate) {
            throw new BundleException("the clip lasts " + frames / rate + " s; this model takes at most "
                    + spec.nSamples / spec.samplingRate + " s");
        }
        return resample(mono, rate, spec.samplingRate);
    }

    private static float sample(ByteBuffer b, int at, int width, boolean flt) {
        if (flt) {
            return width == 4 ? b.getFloat(at) : (float) b.getDouble(at);
        }
        switch (width) {
            case 1: return ((b.get(at) & 0xFF) - 128f) / 128f; // 8-bit PCM is unsigned
            case 2: return b.getShort(at) / 32768f;
            case 3: return (((b.get(at) & 0xFF) | (b.get(at + 1) & 0xFF) << 8 | b.get(at + 2) << 16)) / 8388608f;
            default: return (float) (b.getInt(at) / 2147483648.0);
        }
    }

    /** 16-bit PCM from AudioRecord, already at the model's rate, as float samples in [-1, 1]. */
    public static float[] fromPcm16(short[] pcm, int count) {
        float[] out = new float[count];
        for (int k = 0; k < count; k++) {
            out[k] = pcm[k] / 32768f;
        }
        return out;
    }

    /** runtimes/audio.py's resample(): polyphase Kaiser-windowed sinc, cut-off at the lower Nyquist frequency. */
    public static float[] resample(float[] x, int fromRate, int toRate) {
        if (fromRate == toRate) {
            return x;
        }
        int g = gcd(fromRate, toRate);
        int up = toRate / g;
        int down = fromRate / g;
        double cutoff = Math.min(1.0, (double) up / down);
        int half = (int) Math.ceil(RESAMPLE_TAPS / cutoff);
        double[][] coef = new double[up][2 * half];
        int[] first = new int[up];
        double norm = besselI0(KAISER_BETA);
        for (int r = 0; r < up; r++) {
            first[r] = (int) ((long) r * down / up) + 1;
            double frac = (double) ((long) r * down % up) / up;
            for (int j = 0; j < 2 * half; j++) {
                double t = frac - (j - half + 1);
                double w = besselI0(KAISER_BETA * Math.sqrt(Math.max(0.0, 1.0 - (t / half) * (t / half)))) / norm;
                coef[r][j] = cutoff * sinc(cutoff * t) * w;
            }
        }
        int nOut = (int) (((long) x.length * up + down - 1) / down);
        float[] out = new float[nOut];
        for (int k = 0; k < nOut; k++) {
            int block = k / up;
            int r = k % up;
            int start = block * down + first[r] - half; // index into x of the filter's first tap
            double acc = 0;
            for (int j = 0; j < 2 * half; j++) {
                int i = start + j;
                if (i >= 0 && i < x.length) {
                    acc += x[i] * coef[r][j];
                }
            }
            out[k] = (float) acc;
        }
        return out;
    }

    /** Features [n_mels][frames] flattened row-major, for an encoder input [1, n_mels, frames]. */
    public static float[] logMel(float[] samples, BundleManifest.AudioSpec spec) {
        int n = spec.nSamples;
        int nfft = spec.nFft;
        int half = nfft / 2;
        double[] x = new double[n + nfft]; // zero-padded to the window, then reflect-padded by half each side
        for (int k = 0; k < Math.min(samples.length, n); k++) {
            x[half + k] = samples[k];
        }
        for (int k = 0; k < half; k++) {
            x[half - 1 - k] = x[half + 1 + k];
            x[half + n + k] = x[half + n - 2 - k];
        }
        int frames = n / spec.hopLength; // 1 + n / hop frames, less the last one Whisper drops
        int bins = nfft / 2 + 1;
        double[] cos = new double[nfft];
        double[] sin = new double[nfft];
        double[] window = new double[nfft];
        for (int k = 0; k < nfft; k++) {
            cos[k] = Math.cos(2 * Math.PI * k / nfft);
            sin[k] = Math.sin(2 * Math.PI * k / nfft);
            window[k] = 0.5 - 0.5 * cos[k]; // periodic Hann, as torch.hann_window
        }
        double[][] filters = melFilters(spec);
        double[] mel = new double[spec.nMels * frames];
        double[] frame = new double[nfft];
        double[] power = new double[bins];
        double top = Double.NEGATIVE_INFINITY;
        for (int t = 0; t < frames; t++) {
            for (int k = 0; k < nfft; k++) {
                frame[k] = x[t * spec.hopLength + k] * window[k];
            }
            for (int f = 0; f < bins; f++) {
                double re = 0;
                double im = 0;
                for (int k = 0, idx = 0; k < nfft; k++, idx = (idx + f) % nfft) {
                    re += frame[k] * cos[idx];
                    im -= frame[k] * sin[idx];
                }
                power[f] = re * re + im * im;
            }
            for (int m = 0; m < spec.nMels; m++) {
                double acc = 0;
                for (int f = 0; f < bins; f++) {
                    acc += filters[f][m] * power[f];
                }
                double v = Math.log10(Math.max(acc, 1e-10));
                mel[m * frames + t] = v;
                top = Math.max(top, v);
            }
        }
        float[] out = new float[mel.length];
        for (int k = 0; k < mel.length; k++) {
            out[k] = (float) ((Math.max(mel[k], top - 8.0) + 4.0) / 4.0);
        }
        return out;
    }

    /** Frames holding real audio, as log_mel's second result (the feature extractor's attention mask). */
    public static int validFrames(int samples, BundleManifest.AudioSpec spec) {
        int n = Math.min(samples, spec.nSamples);
        return Math.min(spec.nSamples / spec.hopLength, (n + spec.hopLength - 1) / spec.hopLength);
    }

    /** Slaney-normalized triangular filters [n_fft / 2 + 1][n_mels], as mel_filters() in runtimes/audio.py. */
    static double[][] melFilters(BundleManifest.AudioSpec spec) {
        int bins = spec.nFft / 2 + 1;
        double lo = hertzToMel(spec.minFrequency);
        double hi = hertzToMel(spec.maxFrequency);
        double[] centres = new double[spec.nMels + 2];
        for (int k = 0; k < centres.length; k++) {
            centres[k] = melToHertz(lo + k * (hi - lo) / (centres.length - 1));
        }
        double[][] filters = new double[bins][spec.nMels];
        for (int f = 0; f < bins; f++) {
            double freq = (double) f * (spec.samplingRate / 2) / (bins - 1);
            for (int m = 0; m < spec.nMels; m++) {
                double down = (freq - centres[m]) / (centres[m + 1] - centres[m]);
                double up = (centres[m + 2] - freq) / (centres[m + 2] - centres[m + 1]);
                filters[f][m] = Math.max(0.0, Math.min(down, up)) * 2.0 / (centres[m + 2] - centres[m]);
            }
        }
        return filters;
    }

    private static double hertzToMel(double f) {
        return f >= 1000.0 ? 15.0 + Math.log(f / 1000.0) * 27.0 / Math.log(6.4) : 3.0 * f / 200.0;
    }

    private static double melToHertz(double m) {
        return m >= 15.0 ? 1000.0 * Math.exp(Math.log(6.4) * (m - 15.0) / 27.0) : 200.0 * m / 3.0;
    }

    private static double sinc(double x) {
        return x == 0 ? 1.0 : Math.sin(Math.PI * x) / (Math.PI * x);
    }

    /** The modified Bessel function I0 by its power series, converged to double precision for the window's range. */
    private static double besselI0(double x) {
        double term = 1.0;
        double sum = 1.0;
        for (int k = 1; k < 60 && term > 1e-17 * sum; k++) {
            term *= (x / (2 * k)) * (x / (2 * k));
            sum += term;
        }
        return sum;
    }

    private static int gcd(int a, int b) {
        return b == 0 ? a : gcd(b, a % b);
    }
}
