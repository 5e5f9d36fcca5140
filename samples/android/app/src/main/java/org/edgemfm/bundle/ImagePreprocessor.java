package org.edgemfm.bundle;

/**
 * CLIP-style image pre-processing from the manifest's preprocess.image: resize the shortest edge
 * to {@code size}, centre-crop {@code crop} x {@code crop}, rescale, normalize, CHW float32.
 *
 * <p>The resize reproduces Pillow's 8-bit two-pass convolution resampling (fixed-point
 * coefficients, horizontal pass first, each pass rounded and clipped to 0..255), which the
 * Python runtime uses, so the same pixels give the same tensor on the phone and on the host.
 * Android's Bitmap scaling is a different filter and would shift the vision tokens.
 *
 * <p>Example: {@code float[] chw = ImagePreprocessor.run(RgbImage.of(w, h, argb), manifest.image);}
 */
public final class ImagePreprocessor {
    private static final int PRECISION_BITS = 32 - 8 - 2; // Pillow's fixed-point precision for 8-bit images

    /** Pixels as packed 0xAARRGGBB ints, row-major (Android's Bitmap.getPixels and Java's BufferedImage.getRGB layout). */
    public static final class RgbImage {
        public final int width;
        public final int height;
        public final int[] argb;

        public RgbImage(int width, int height, int[] argb) {
            if (argb.length != width * height) {
                throw new IllegalArgumentException("argb holds " + argb.length + " pixels, not " + width + "x" + height);
            }
            this.width = width;
            this.height = height;
            this.argb = argb;
        }
    }

    private ImagePreprocessor() {}

    /** The pixel_values tensor [3, crop, crop] in channel-major order. */
    public static float[] run(RgbImage image, BundleManifest.ImageSpec spec) {
        int w = image.width;
        int h = image.height;
        int newW;
        int newH;
        if (w <= h) {
            newW = spec.size;
            newH = (int) ((long) spec.size * h / w);
        } else {
            newH = spec.size;
            newW = (int) ((long) spec.size * w / h);
        }
        int[][] rgb = planes(image);
        if (newW != w || newH != h) {
            rgb = resize(rgb, w, h, newW, newH, spec.resample);
        }
        int top = (newH - spec.crop) / 2;
        int left = (newW - spec.crop) / 2;
        if (top < 0 || left < 0) {
            throw new BundleException("crop " + spec.crop + " is larger than the resized image " + newW + "x" + newH);
        }
        int c = spec.crop;
        float[] out = new float[3 * c * c];
        for (int ch = 0; ch < 3; ch++) {
            for (int y = 0; y < c; y++) {
                for (int x = 0; x < c; x++) {
                    float v = rgb[ch][(y + top) * newW + (x + left)] * spec.rescale;
                    out[(ch * c + y) * c + x] = (v - spec.mean[ch]) / spec.std[ch];
                }
            }
        }
        return out;
    }

    private static int[][] planes(RgbImage image) {
        int n = image.argb.length;
        int[][] p = new int[3][n];
        for (int k = 0; k < n; k++) {
            int v = image.argb[k];
            p[0][k] = (v >> 16) & 0xFF;
            p[1][k] = (v >> 8) & 0xFF;
            p[2][k] = v & 0xFF;
        }
        return p;
    }

    static int[][] resize(int[][] rgb, int w, int h, int newW, int newH, String resample) {
        if ("nearest".equals(resample)) {
            return nearest(rgb, w, h, newW, newH);
        }
        double support;
        if ("bicubic".equals(resample)) {
            support = 2.0;
        } else if ("bilinear".equals(resample)) {
            support = 1.0;
        } else {
            throw new BundleException("resample " + resample + " is not supported; supported: bicubic, bilinear, nearest");
        }
        int[][] out = rgb;
        int curW = w;
        if (newW != w) {
            Coeffs cx = new Coeffs(w, newW, support, resample);
            out = pass(out, curW, h, cx, true);
            curW = newW;
        }
        if (newH != h) {
            Coeffs cy = new Coeffs(h, newH, support, resample);
            out = pass(out, curW, h, cy, false);
        }
        return out;
    }

    /** Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis. */
    private static final class Coeffs {
        final int ksize;
        final int[] bounds; // per output index: first input index, count
        final int[] k; // fixed-point weights, ksize per output index

        Coeffs(int inSize, int outSize, double filterSupport, String resample) {
            double scale = (double) inSize / outSize;
            double filterscale = Math.max(scale, 1.0);
            double support = filterSupport * filterscale;
            ksize = (int) Math.ceil(support) * 2 + 1;
            bounds = new int[outSize * 2];
            k = new int[outSize * ksize];
            double[] w = new double[ksize];
            for (int xx = 0; xx < outSize; xx++) {
                double center = (xx + 0.5) * scale;
                double ss = 1.0 / filterscale;
                int xmin = Math.max((int) (center - support + 0.5), 0);
                int xmax = Math.min((int) (center + support + 0.5), inSize) - xmin;
                double ww = 0.0;
                for (int x = 0; x < xmax; x++) {
                    w[x] = filter(resample, (x + xmin - center + 0.5) * ss);
                    ww += w[x];
                }
                for (int x = 0; x < xmax; x++) {
                    double v = ww != 0.0 ? w[x] / ww : w[x];
                    k[xx * ksize + x] = (int) (v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
                }
                bounds[xx * 2] = xmin;
                bounds[xx * 2 + 1] = xmax;
            }
        }
    }

    private static double filter(String resample, double x) {
        x = Math.abs(x);
        if ("bilinear".equals(resample)) {
            return x < 1.0 ? 1.0 - x : 0.0;
        }
        final double a = -0.5; // Pillow's bicubic
        if (x < 1.0) {
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
        }
        if (x < 2.0) {
            return (((x - 5) * x + 8) * x - 4) * a;
        }
        return 0.0;
    }

    private static int clip8(int v) {
        if (v >= (1 << PRECISION_BITS << 8)) {
            return 255;
        }
        if (v <= 0) {
            return 0;
        }
        return v >> PRECISION_BITS;
    }

    /** One convolution pass, horizontal (along x) or vertical (along y), per channel. */
    private static int[][] pass(int[][] in, int w, int h, Coeffs c, boolean horizontal) {
        int outW = horizontal ? c.bounds.length / 2 : w;
        int outH = horizontal ? h : c.bounds.length / 2;
        int[][] out = new int[3][outW * outH];
        for (int ch = 0; ch < 3; ch++) {
            int[] src = in[ch];
            int[] dst = out[ch];
            for (int y = 0; y < outH; y++) {
                for (int x = 0; x < outW; x++) {
                    int o = horizontal ? x : y;
                    int min = c.bounds[o * 2];
                    int n = c.bounds[o * 2 + 1];
                    int ss = 1 << (PRECISION_BITS - 1);
                    for (int t = 0; t < n; t++) {
                        int px = horizontal ? src[y * w + min + t] : src[(min + t) * w + x];
                        ss += px * c.k[o * c.ksize + t];
                    }
                    dst[y * outW + x] = clip8(ss);
                }
            }
        }
        return out;
    }

    /** Pillow's NEAREST resize: source pixel floor((x + 0.5) * in / out). */
    private static int[][] nearest(int[][] rgb, int w, int h, int newW, int newH) {
        int[][] out = new int[3][newW * newH];
        for (int y = 0; y < newH; y++) {
            int sy = Math.min((int) ((y + 0.5) * h / newH), h - 1);
            for (int x = 0; x < newW; x++) {
                int sx = Math.min((int) ((x + 0.5) * w / newW), w - 1);
                for (int ch = 0; ch < 3; ch++) {
                    out[ch][y * newW + x] = rgb[ch][sy * w + sx];
                }
            }
        }
        return out;
    }
}
