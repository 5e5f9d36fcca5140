// A decoder's int8 KV cache for ExecuTorch programs: its write (edgemfm::cache_int8) and its attention
// (edgemfm::sdpa_int8). exporters/llm_ops.py holds both ops' arithmetic in PyTorch (cache_int8_reference,
// sdpa_int8_reference): what the exporter traces, and what the program is checked against.
//
// One layer's cache (kv heads; capacity S, a multiple of 8; head_dim d, a multiple of 4):
//   keys    int8 [kv, S/8, d/4, 8, 4]  per head, blocks of 8 positions. In a block, 4 dims of each of the 8
//                                      positions lie side by side: one 32-byte vector is the 8 positions'
//                                      share of a dot product over those 4 dims (no horizontal sums).
//   values  int8 [kv, S/4, d, 4]       per head, blocks of 4 positions, each dim's 4 positions side by side:
//                                      one vector is 8 dims of 4 positions, summed over them by vpdpbusd.
//   scales float32 [kv, S] and zeros int8 [kv, S]: per head and position, a row is (q - zero) * scale.
//
// Write: a row x of head_dim floats, asymmetric int8 (as XNNPACK's per-token quantization):
//   scale = max((max(x, 0) - min(x, 0)) / 255, FLT_EPSILON)     zero = clamp(round(-128 - min(x, 0) / scale))
//   q = clamp(round(x / scale) + zero, -128, 127)               rounding half to even throughout
// Attend: row i of the query attends to positions 0 .. start_pos + i; query head h reads KV head h / group.
//   q8 = clamp(round(q * (127 / max|q|)), -127, 127)
//   s[t] = (q8 . k[t] - zk[t] * sum(q8)) * sk[t] * (scale * max|q| / 127)          exact int32 dot product
//   e[t] = exp(s[t] - max s)    w[t] = e[t] * sv[t]    w14[t] = round(w[t] * (16383 / max w))
//   out = (sum_t w14[t] * v[t] - sum_t w14[t] * zv[t]) * (max w / 16383 / sum e)  exact integer sums
// w14 splits into two 7-bit halves (w14 = 128 hi + lo), so each half times an int8 value fits vpmaddubsw
// without saturating on CPUs without VNNI, and both paths compute the same.
//
// Vector paths: x86 with AVX2 (vpdpbusd where the CPU has AVX-VNNI or AVX512-VNNI, 64-byte vectors with
// AVX-512) and ARM with the dot-product extension (sdot: Cortex-A76 and later, a Pi 5, a Jetson Orin, phones).
// Other CPUs (a Pi 4's Cortex-A72) run the plain loops. runtimes/native.py builds this file on the machine
// that runs it, for its CPU; tests/test_int8_cache_kernel.py checks every path against the references, the
// ARM ones under qemu.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define EDGEMFM_NEON 1  // sdot: 4 int8 products summed per lane (Cortex-A76 and later: Pi 5, Jetson Orin, phones)
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGEMFM_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EDGEMFM_AVX512 1  // two key groups, or 16 value dims, per instruction
#endif
#if defined(__AVXVNNI__)
#define EDGEMFM_DPBUSD(acc, u8, s8) _mm256_dpbusd_avx_epi32(acc, u8, s8)
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define EDGEMFM_DPBUSD(acc, u8, s8) _mm256_dpbusd_epi32(acc, u8, s8)
#endif
#endif

#ifndef EDGEMFM_NO_EXECUTORCH
#define ET_USE_THREADPOOL 1  // parallel_for on ExecuTorch's threadpool (libexecutorch_threadpool)
#include <executorch/runtime/kernel/thread_parallel_interface.h>
#define EDGEMFM_THREADPOOL 1
#endif

#if defined(EDGEMFM_AVX2) || defined(EDGEMFM_NEON)
#define EDGEMFM_VECTOR 1  // scores<R>, mix<R>, row_max and exponentiate below have a vector body
#endif

namespace {

constexpr int64_t KEYS = 8;    // positions per key block
constexpr int64_t VALUES = 4;  // positions per value block

inline int64_t key_byte(int64_t capacity, int64_t d, int64_t head, int64_t t, int64_t j) {
  return ((head * (capacity / KEYS) + t / KEYS) * (d / 4) + j / 4) * 32 + (t % KEYS) * 4 + j % 4;
}

inline int64_t value_byte(int64_t capacity, int64_t d, int64_t head, int64_t t, int64_t j) {
  return ((head * (capacity / VALUES) + t / VALUES) * d + j) * VALUES + t % VALUES;
}

// The query rows of one KV head, rounded to int8, and per row what the scores need.
struct Rows {
  int64_t n = 0;
  std::vector<int8_t> q8;       // [n, d]
  std::vector<uint8_t> qu;      // [n, d] q8 + 128: the unsigned side of vpdpbusd
#ifdef EDGEMFM_AVX512
  std::vector<int32_t> pairs;   // [n, d / 8, 16] qu's 4 bytes of group 2p in lanes 0-7, of 2p + 1 in lanes 8-15
#endif
  std::vector<float> scale;     // the attention's scale x max|q| / 127
  std::vector<int32_t> sum;     // sum(q8)
  std::vector<int64_t> end;     // the row attends to positions 0 .. end - 1

  void round(const float* q, int64_t seq, int64_t heads, int64_t group, int64_t head, int64_t d, int64_t start,
             float attention_scale) {
    n = seq * group;
    q8.resize(n * d);
    qu.resize(n * d);
#ifdef EDGEMFM_AVX512
    pairs.resize(n * (d / 8) * 16);
#endif
    scale.resize(n);
    sum.resize(n);
    end.resize(n);
    for (int64_t i = 0; i < seq; ++i) {
      for (int64_t g = 0; g < group; ++g) {
        const int64_t r = i * group + g;
        const float* x = q + (i * heads + head * group + g) * d;
        float amax = 0.0f;
        for (int64_t j = 0; j < d; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t total = 0;
        for (int64_t j = 0; j < d; ++j) {
          const int8_t v = static_cast<int8_t>(std::clamp(std::nearbyint(x[j] * inverse), -127.0f, 127.0f));
          q8[r * d + j] = v;
          qu[r * d + j] = static_cast<uint8_t>(v + 128);
          total += v;
        }
#ifdef EDGEMFM_AVX512
        for (int64_t p = 0; p < d / 8; ++p)
          for (int lane = 0; lane < 16; ++lane)
            std::memcpy(&pairs[(r * (d / 8) + p) * 16 + lane], &qu[r * d + 8 * p + (lane < 8 ? 0 : 4)], 4);
#endif
        scale[r] = attention_scale * (amax > 0.0f ? amax / 127.0f : 1.0f);
        sum[r] = total;
        end[r] = start + i + 1;
      }
    }
  }
};

// Per row: the scores (then e, then w) over the positions, the weights' 7-bit halves, and the row's constants.
struct Weights {
  int64_t width = 0;            // positions per row in `s`, a multiple of 8
  std::vector<float> s;         // [n, width]
  std::vector<uint8_t> hi, lo;  // [n, width] w14 = 128 hi + lo; 0 past the row's end
  std::vector<float> scale;     // max w / 16383 / sum e
  std::vector<float> shift;     // sum_t w14[t] * zv[t]
};

int32_t dot(const int8_t* keys, int64_t capacity, int64_t d, int64_t head, int64_t t, const int8_t* q8) {
  int32_t total = 0;
  for (int64_t j = 0; j < d; ++j) total += int32_t(keys[key_byte(capacity, d, head, t, j)]) * q8[j];
  return total;
}

#ifdef EDGEMFM_AVX2
// exp(x) for x <= 0 (a softmax's shifted scores), Cephes' polynomial: relative error ~1e-7.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline __m256i broadcast4(const void* bytes) {  // 4 bytes, repeated over the vector
  int32_t x;
  std::memcpy(&x, bytes, sizeof x);
  return _mm256_set1_epi32(x);
}

// Scores of `R` rows from r0 against the 8 positions of key block `b`, into w.s; also fetches the values of
// those positions into L2 for `mix` (a decode step streams the cache from memory: the weights read between
// two layers push it out of the caches, and this overlaps that wait with the scores' arithmetic).
template <int R>
void scores(const Rows& rows, int64_t r0, const int8_t* keys, const float* ks, const int8_t* kz,
            const int8_t* values, int64_t capacity, int64_t d, int64_t head, int64_t b, Weights& w) {
  const int8_t* block = keys + (head * (capacity / KEYS) + b) * (d / 4) * 32;
  const int8_t* next = values + (head * (capacity / VALUES) + b * 2) * d * VALUES;
  for (int64_t line = 0; line < KEYS * d; line += 64) _mm_prefetch(reinterpret_cast<const char*>(next + line), _MM_HINT_T1);
  __m256i acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
#ifdef EDGEMFM_DPBUSD
  __m256i sums = _mm256_setzero_si256();  // sum(k) per position: the query goes in as q8 + 128 (unsigned)
  int64_t g = 0;
#ifdef EDGEMFM_AVX512
  __m512i wide[R], wide_sums = _mm512_setzero_si512();
  for (int r = 0; r < R; ++r) wide[r] = _mm512_setzero_si512();
  for (; g + 2 <= d / 4; g += 2) {
    const __m512i k = _mm512_loadu_si512(block + g * 32);
    wide_sums = _mm512_dpbusd_epi32(wide_sums, _mm512_set1_epi8(1), k);
    for (int r = 0; r < R; ++r)
      wide[r] = _mm512_dpbusd_epi32(wide[r], _mm512_loadu_si512(&rows.pairs[((r0 + r) * (d / 8) + g / 2) * 16]), k);
  }
  const auto fold = [](__m512i x) { return _mm256_add_epi32(_mm512_castsi512_si256(x), _mm512_extracti64x4_epi64(x, 1)); };
  sums = fold(wide_sums);
  for (int r = 0; r < R; ++r) acc[r] = fold(wide[r]);
#endif
  for (; g < d / 4; ++g) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + g * 32));
    sums = EDGEMFM_DPBUSD(sums, _mm256_set1_epi8(1), k);
    for (int r = 0; r < R; ++r) {
      acc[r] = EDGEMFM_DPBUSD(acc[r], broadcast4(rows.qu.data() + (r0 + r) * d + g * 4), k);
    }
  }
  for (int r = 0; r < R; ++r) acc[r] = _mm256_sub_epi32(acc[r], _mm256_slli_epi32(sums, 7));
#else
  for (int64_t g = 0; g < d / 4; ++g) {
    const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + g * 32));
    const __m256i magnitude = _mm256_abs_epi8(k);  // |-128| reads as 128 unsigned; |q8| <= 127: no saturation
    for (int r = 0; r < R; ++r) {
      const __m256i q = _mm256_sign_epi8(broadcast4(rows.q8.data() + (r0 + r) * d + g * 4), k);
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, q), _mm256_set1_epi16(1)));
    }
  }
#endif
  const __m256 scale = _mm256_loadu_ps(ks + b * KEYS);
  const __m256 zero = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(kz + b * KEYS))));
  for (int r = 0; r < R; ++r) {
    const __m256 exact = _mm256_fnmadd_ps(zero, _mm256_set1_ps(float(rows.sum[r0 + r])), _mm256_cvtepi32_ps(acc[r]));
    _mm256_storeu_ps(w.s.data() + (r0 + r) * w.width + b * KEYS,
                     _mm256_mul_ps(_mm256_mul_ps(exact, scale), _mm256_set1_ps(rows.scale[r0 + r])));
  }
}

// mix's vectors on x86: 8 dims of a value block's 4 positions to a 32-byte vector; the 7-bit weight halves as
// the unsigned side of vpdpbusd, or of vpmaddubsw without VNNI (|pair| <= 2 x 127 x 128: no saturation)
struct Ymm {
  using Acc = __m256i;
  using Bytes = __m256i;
  static constexpr int DIMS = 8, VECTORS = 2;
  static Acc zero() { return _mm256_setzero_si256(); }
  static Bytes load(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Bytes repeat(const uint8_t* p) { return broadcast4(p); }
  static Acc dot(Acc acc, Bytes weights, Bytes v) {
#ifdef EDGEMFM_DPBUSD
    return EDGEMFM_DPBUSD(acc, weights, v);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(weights, v), _mm256_set1_epi16(1)));
#endif
  }
  static void add(float* total, Acc hi, Acc lo) {  // total[0 .. DIMS) += 128 hi + lo
    alignas(32) float x[DIMS];
    _mm256_store_ps(x, _mm256_fmadd_ps(_mm256_cvtepi32_ps(hi), _mm256_set1_ps(128.0f), _mm256_cvtepi32_ps(lo)));
    for (int j = 0; j < DIMS; ++j) total[j] += x[j];
  }
};

#ifdef EDGEMFM_AVX512
struct Zmm {  // 16 dims to a 64-byte vector
  using Acc = __m512i;
  using Bytes = __m512i;
  static constexpr int DIMS = 16, VECTORS = 2;
  static Acc zero() { return _mm512_setzero_si512(); }
  static Bytes load(const int8_t* p) { return _mm512_loadu_si512(p); }
  static Bytes repeat(const uint8_t* p) {
    int32_t x;
    std::memcpy(&x, p, sizeof x);
    return _mm512_set1_epi32(x);
  }
  static Acc dot(Acc acc, Bytes weights, Bytes v) { return _mm512_dpbusd_epi32(acc, weights, v); }
  static void add(float* total, Acc hi, Acc lo) {
    alignas(64) float x[DIMS];
    _mm512_store_ps(x, _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), _mm512_set1_ps(128.0f), _mm512_cvtepi32_ps(lo)));
    for (int j = 0; j < DIMS; ++j) total[j] += x[j];
  }
};
#endif
#endif

#ifdef EDGEMFM_NEON
// exp(x) for x <= 0, the same polynomial as the AVX2 one.
inline float32x4_t exp_ps(float32x4_t x) {
  x = vmaxq_f32(x, vdupq_n_f32(-87.0f));
  const float32x4_t n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
  p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
  p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
  p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
  p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

inline int8x16_t repeat4(const void* bytes) {  // 4 bytes, repeated over the vector
  int32_t x;
  std::memcpy(&x, bytes, sizeof x);
  return vreinterpretq_s8_s32(vdupq_n_s32(x));
}

// scores<R> on NEON: a key group's 32 bytes are two vectors of 4 positions; sdot takes int8 on both sides.
template <int R>
void scores(const Rows& rows, int64_t r0, const int8_t* keys, const float* ks, const int8_t* kz,
            const int8_t* values, int64_t capacity, int64_t d, int64_t head, int64_t b, Weights& w) {
  const int8_t* block = keys + (head * (capacity / KEYS) + b) * (d / 4) * 32;
  const int8_t* next = values + (head * (capacity / VALUES) + b * 2) * d * VALUES;
  for (int64_t line = 0; line < KEYS * d; line += 64) __builtin_prefetch(next + line, 0, 2);
  int32x4_t first[R], second[R];  // positions 0-3 and 4-7 of the block
  for (int r = 0; r < R; ++r) first[r] = second[r] = vdupq_n_s32(0);
  for (int64_t g = 0; g < d / 4; ++g) {
    const int8x16_t k0 = vld1q_s8(block + g * 32), k1 = vld1q_s8(block + g * 32 + 16);
    for (int r = 0; r < R; ++r) {
      const int8x16_t q = repeat4(rows.q8.data() + (r0 + r) * d + g * 4);
      first[r] = vdotq_s32(first[r], k0, q);
      second[r] = vdotq_s32(second[r], k1, q);
    }
  }
  const int16x8_t zeros = vmovl_s8(vld1_s8(kz + b * KEYS));
  const float32x4_t zero0 = vcvtq_f32_s32(vmovl_s16(vget_low_s16(zeros)));
  const float32x4_t zero1 = vcvtq_f32_s32(vmovl_s16(vget_high_s16(zeros)));
  const float32x4_t scale0 = vld1q_f32(ks + b * KEYS), scale1 = vld1q_f32(ks + b * KEYS + 4);
  for (int r = 0; r < R; ++r) {
    const float32x4_t sum = vdupq_n_f32(float(rows.sum[r0 + r])), row = vdupq_n_f32(rows.scale[r0 + r]);
    float* out = w.s.data() + (r0 + r) * w.width + b * KEYS;
    vst1q_f32(out, vmulq_f32(vmulq_f32(vfmsq_f32(vcvtq_f32_s32(first[r]), zero0, sum), scale0), row));
    vst1q_f32(out + 4, vmulq_f32(vmulq_f32(vfmsq_f32(vcvtq_f32_s32(second[r]), zero1, sum), scale1), row));
  }
}

// mix's vectors on NEON: 4 dims of a value block's 4 positions to a vector; the weights' 7-bit halves fit int8,
// so sdot takes them as they are
struct Neon {
  using Acc = int32x4_t;
  using Bytes = int8x16_t;
  static constexpr int DIMS = 4, VECTORS = 4;
  static Acc zero() { return vdupq_n_s32(0); }
  static Bytes load(const int8_t* p) { return vld1q_s8(p); }
  static Bytes repeat(const uint8_t* p) { return repeat4(p); }
  static Acc dot(Acc acc, Bytes weights, Bytes v) { return vdotq_s32(acc, v, weights); }
  static void add(float* total, Acc hi, Acc lo) {
    float x[DIMS];
    vst1q_f32(x, vfmaq_f32(vcvtq_f32_s32(lo), vcvtq_f32_s32(hi), vdupq_n_f32(128.0f)));
    for (int j = 0; j < DIMS; ++j) total[j] += x[j];
  }
};
#endif

#ifdef EDGEMFM_VECTOR
// out[r][c ..] = sum over value blocks of w14[r][t] * v[t][c ..] for `R` rows from r0, on `L`'s vectors
// (VECTORS x DIMS dims a call). int32 in registers: each block adds at most 4 x 127 x 128 per lane, so 16,384
// blocks fit before they move to float.
template <int R, class L>
void mix(const Weights& w, int64_t r0, const int8_t* values, int64_t capacity, int64_t d, int64_t head,
         int64_t blocks, int64_t c, float* out) {
  constexpr int N = L::VECTORS, D = L::DIMS;
  float total[R][N * D] = {};
  for (int64_t first = 0; first < blocks; first += 16384) {
    typename L::Acc hi[R][N], lo[R][N];
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < N; ++i) hi[r][i] = lo[r][i] = L::zero();
    const int64_t last = std::min(blocks, first + 16384);
    for (int64_t b = first; b < last; ++b) {
      const int8_t* block = values + ((head * (capacity / VALUES) + b) * d + c) * VALUES;
      typename L::Bytes v[N];
      for (int i = 0; i < N; ++i) v[i] = L::load(block + i * D * VALUES);
      for (int r = 0; r < R; ++r) {
        const typename L::Bytes h = L::repeat(w.hi.data() + (r0 + r) * w.width + b * VALUES);
        const typename L::Bytes l = L::repeat(w.lo.data() + (r0 + r) * w.width + b * VALUES);
        for (int i = 0; i < N; ++i) {
          hi[r][i] = L::dot(hi[r][i], h, v[i]);
          lo[r][i] = L::dot(lo[r][i], l, v[i]);
        }
      }
    }
    for (int r = 0; r < R; ++r)
      for (int i = 0; i < N; ++i) L::add(total[r] + i * D, hi[r][i], lo[r][i]);
  }
  for (int r = 0; r < R; ++r) std::copy_n(total[r], N * D, out + (r0 + r) * d + c);
}

// Every row's mix over dims c, c + step, ... while a whole call fits in d; returns the first dim left.
template <class L>
int64_t mix_rows(const Weights& w, int64_t n, const int8_t* values, int64_t capacity, int64_t d, int64_t head,
                 int64_t blocks, int64_t c, float* out) {
  for (; c + L::VECTORS * L::DIMS <= d; c += L::VECTORS * L::DIMS) {
    int64_t r0 = 0;
    for (; r0 + 3 <= n; r0 += 3) mix<3, L>(w, r0, values, capacity, d, head, blocks, c, out);
    for (; r0 < n; ++r0) mix<1, L>(w, r0, values, capacity, d, head, blocks, c, out);
  }
  return c;
}
#endif

// Every row's scores, from key block 0 up to its last.
void all_scores(const Rows& rows, const int8_t* keys, const float* ks, const int8_t* kz, const int8_t* values,
                int64_t capacity, int64_t d, int64_t head, Weights& w) {
  const int64_t n = rows.n;
  ks += head * capacity;  // this head's scales and zero points by position
  kz += head * capacity;
  int64_t r0 = 0;
#ifdef EDGEMFM_VECTOR
  for (int64_t b = 0; b * KEYS < w.width; ++b) {
    for (r0 = 0; r0 + 4 <= n; r0 += 4) scores<4>(rows, r0, keys, ks, kz, values, capacity, d, head, b, w);
    switch (n - r0) {
      case 3: scores<3>(rows, r0, keys, ks, kz, values, capacity, d, head, b, w); break;
      case 2: scores<2>(rows, r0, keys, ks, kz, values, capacity, d, head, b, w); break;
      case 1: scores<1>(rows, r0, keys, ks, kz, values, capacity, d, head, b, w); break;
    }
  }
  r0 = n;
#else
  (void)values;  // fetched ahead only by the vector path
#endif
  for (int64_t r = 0; r < n; ++r)
    for (int64_t t = r < r0 ? w.width : 0; t < w.width; ++t) {
      const float exact = float(dot(keys, capacity, d, head, t, rows.q8.data() + r * d)) - float(kz[t]) * float(rows.sum[r]);
      w.s[r * w.width + t] = exact * ks[t] * rows.scale[r];
    }
}

// The largest of s[0 .. end).
float row_max(const float* s, int64_t end) {
  float top = -INFINITY;
  int64_t t = 0;
#if defined(EDGEMFM_AVX2)
  alignas(32) float lanes[8];
  __m256 top8 = _mm256_set1_ps(-INFINITY);
  for (; t + 8 <= end; t += 8) top8 = _mm256_max_ps(top8, _mm256_loadu_ps(s + t));
  _mm256_store_ps(lanes, top8);
  for (float x : lanes) top = std::max(top, x);
#elif defined(EDGEMFM_NEON)
  float32x4_t top4 = vdupq_n_f32(-INFINITY);
  for (; t + 4 <= end; t += 4) top4 = vmaxq_f32(top4, vld1q_f32(s + t));
  top = vmaxvq_f32(top4);
#endif
  for (; t < end; ++t) top = std::max(top, s[t]);
  return top;
}

// s[t] = exp(s[t] - top) * scales[t] for t < end; adds the exponentials to `total` and keeps the largest s[t].
void exponentiate(float* s, const float* scales, int64_t end, float top, float& total, float& largest) {
  int64_t t = 0;
#if defined(EDGEMFM_AVX2)
  alignas(32) float lanes[8];
  __m256 total8 = _mm256_setzero_ps(), largest8 = _mm256_setzero_ps();
  for (; t + 8 <= end; t += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(s + t), _mm256_set1_ps(top)));
    const __m256 x = _mm256_mul_ps(e, _mm256_loadu_ps(scales + t));
    total8 = _mm256_add_ps(total8, e);
    largest8 = _mm256_max_ps(largest8, x);
    _mm256_storeu_ps(s + t, x);
  }
  _mm256_store_ps(lanes, total8);
  for (float x : lanes) total += x;
  _mm256_store_ps(lanes, largest8);
  for (float x : lanes) largest = std::max(largest, x);
#elif defined(EDGEMFM_NEON)
  float32x4_t total4 = vdupq_n_f32(0.0f), largest4 = vdupq_n_f32(0.0f);
  for (; t + 4 <= end; t += 4) {
    const float32x4_t e = exp_ps(vsubq_f32(vld1q_f32(s + t), vdupq_n_f32(top)));
    const float32x4_t x = vmulq_f32(e, vld1q_f32(scales + t));
    total4 = vaddq_f32(total4, e);
    largest4 = vmaxq_f32(largest4, x);
    vst1q_f32(s + t, x);
  }
  total += vaddvq_f32(total4);
  largest = std::max(largest, vmaxvq_f32(largest4));
#endif
  for (; t < end; ++t) {
    const float e = std::exp(s[t] - top);
    total += e;
    s[t] = e * scales[t];
    largest = std::max(largest, s[t]);
  }
}

// Each row's softmax over its positions, its weights' halves and its constants.
void softmax(const Rows& rows, const float* vs, const int8_t* vz, int64_t capacity, int64_t head, Weights& w) {
  const float* scales = vs + head * capacity;
  const int8_t* zeros = vz + head * capacity;
  for (int64_t r = 0; r < rows.n; ++r) {
    float* s = w.s.data() + r * w.width;
    const int64_t end = rows.end[r];
    const float top = row_max(s, end);
    float total = 0.0f, largest = 0.0f;
    exponentiate(s, scales, end, top, total, largest);
    const float inverse = largest > 0.0f ? 16383.0f / largest : 0.0f;
    uint8_t* hi = w.hi.data() + r * w.width;
    uint8_t* lo = w.lo.data() + r * w.width;
    int64_t shift = 0;
    for (int64_t t = 0; t < end; ++t) {
      const int32_t x = int32_t(std::nearbyint(s[t] * inverse));
      hi[t] = uint8_t(x >> 7);
      lo[t] = uint8_t(x & 127);
      shift += int64_t(x) * zeros[t];
    }
    w.scale[r] = largest / 16383.0f / total;
    w.shift[r] = float(shift);
  }
}

// One KV head's rows of the attention (the work of one task).
void attend(const float* query, int64_t seq, int64_t heads, int64_t d, const int8_t* keys, const float* ks,
            const int8_t* kz, const int8_t* values, const float* vs, const int8_t* vz, int64_t kv, int64_t capacity,
            int64_t start, float scale, int64_t head, float* out) {
  thread_local Rows rows;
  thread_local Weights w;
  thread_local std::vector<float> mixed;
  const int64_t group = heads / kv, width = start + seq;
  w.width = (width + KEYS - 1) / KEYS * KEYS;
  rows.round(query, seq, heads, group, head, d, start, scale);
  const int64_t n = rows.n;
  w.s.assign(n * w.width, 0.0f);
  w.hi.assign(n * w.width, 0);
  w.lo.assign(n * w.width, 0);
  w.scale.resize(n);
  w.shift.resize(n);
  all_scores(rows, keys, ks, kz, values, capacity, d, head, w);
  softmax(rows, vs, vz, capacity, head, w);
  mixed.assign(n * d, 0.0f);
  int64_t c = 0;
#ifdef EDGEMFM_VECTOR
  const int64_t blocks = (width + VALUES - 1) / VALUES;
#ifdef EDGEMFM_AVX512
  c = mix_rows<Zmm>(w, n, values, capacity, d, head, blocks, c, mixed.data());
#endif
#ifdef EDGEMFM_AVX2
  c = mix_rows<Ymm>(w, n, values, capacity, d, head, blocks, c, mixed.data());
#else
  c = mix_rows<Neon>(w, n, values, capacity, d, head, blocks, c, mixed.data());
#endif
#endif
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t j = c; j < d; ++j) {
      int64_t total = 0;
      for (int64_t t = 0; t < rows.end[r]; ++t) {
        const int32_t weight = 128 * w.hi[r * w.width + t] + w.lo[r * w.width + t];
        total += int64_t(weight) * values[value_byte(capacity, d, head, t, j)];
      }
      mixed[r * d + j] = float(total);
    }
    for (int64_t j = 0; j < d; ++j) {
      const int64_t i = r / group, g = r % group;
      out[(i * heads + head * group + g) * d + j] = (mixed[r * d + j] - w.shift[r]) * w.scale[r];
    }
  }
}

}  // namespace

// The write on raw buffers: value [seq, kv, d] float32 rows into positions start .. start + seq - 1.
extern "C" void edgemfm_cache_int8(const float* value, int64_t seq, int64_t kv, int64_t d, int64_t capacity,
                                   int64_t start, bool keys, int8_t* cache, float* scales, int8_t* zeros) {
  for (int64_t i = 0; i < seq; ++i) {
    for (int64_t h = 0; h < kv; ++h) {
      const float* x = value + (i * kv + h) * d;
      float low = 0.0f, high = 0.0f;
      for (int64_t j = 0; j < d; ++j) {
        low = std::min(low, x[j]);
        high = std::max(high, x[j]);
      }
      const float scale = std::max((high - low) / 255.0f, FLT_EPSILON);
      const float zero = std::clamp(std::nearbyint(-128.0f - low / scale), -128.0f, 127.0f);
      const int64_t t = start + i;
      for (int64_t j = 0; j < d; ++j) {
        const float q = std::clamp(std::nearbyint(x[j] / scale) + zero, -128.0f, 127.0f);
        cache[keys ? key_byte(capacity, d, h, t, j) : value_byte(capacity, d, h, t, j)] = static_cast<int8_t>(q);
      }
      scales[h * capacity + t] = scale;
      zeros[h * capacity + t] = static_cast<int8_t>(zero);
    }
  }
}

// The attention on raw buffers: query [seq, heads, d] float32, out the same.
// The attention on raw buffers: query [seq, heads, d] float32, out the same. With ExecuTorch, the KV heads are
// shared out over its threadpool (the one XNNPACK runs on, sized by the runtime's thread count): one head a task.
extern "C" void edgemfm_sdpa_int8(const float* query, int64_t seq, int64_t heads, int64_t d, const int8_t* keys,
                                  const float* ks, const int8_t* kz, const int8_t* values, const float* vs,
                                  const int8_t* vz, int64_t kv, int64_t capacity, int64_t start, float scale,
                                  float* out) {
  const auto heads_from = [&](int64_t first, int64_t last) {
    for (int64_t head = first; head < last; ++head)
      attend(query, seq, heads, d, keys, ks, kz, values, vs, vz, kv, capacity, start, scale, head, out);
  };
#ifdef EDGEMFM_THREADPOOL
  if (!executorch::extension::parallel_for(0, kv, 1, heads_from)) heads_from(0, kv);  // false: it ran none
#else
  heads_from(0, kv);
#endif
}

#ifndef EDGEMFM_NO_EXECUTORCH
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/operator_registry.h>

namespace {
using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Kernel;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::Span;

// keys [kv, S/8, d/4, 8, 4] or values [kv, S/4, d, 4] int8, with their scales [kv, S] float32 and zeros [kv, S] int8
bool cache_shapes(const Tensor& cache, const Tensor& scales, const Tensor& zeros, bool keys) {
  if (keys ? !(cache.dim() == 5 && cache.size(3) == 8 && cache.size(4) == 4) : !(cache.dim() == 4 && cache.size(3) == 4))
    return false;
  const int64_t capacity = cache.size(1) * (keys ? 8 : 4);
  return cache.scalar_type() == ScalarType::Char && scales.scalar_type() == ScalarType::Float &&
         zeros.scalar_type() == ScalarType::Char && scales.dim() == 2 && zeros.dim() == 2 &&
         scales.size(0) == cache.size(0) && scales.size(1) == capacity && zeros.size(0) == cache.size(0) &&
         zeros.size(1) == capacity;
}

// edgemfm::cache_int8.out(Tensor value, Tensor(a!) cache, Tensor(b!) scales, Tensor(c!) zeros, SymInt start_pos,
//     bool keys, *, Tensor(d!) out) -> Tensor(d!)
void cache_int8_out(KernelRuntimeContext& context, Span<EValue*> stack) {
  const Tensor& value = stack[0]->toTensor();
  Tensor& cache = stack[1]->toTensor();
  Tensor& scales = stack[2]->toTensor();
  Tensor& zeros = stack[3]->toTensor();
  const int64_t start = stack[4]->toInt();
  const bool keys = stack[5]->toBool();
  ET_KERNEL_CHECK_MSG(context, cache_shapes(cache, scales, zeros, keys), InvalidArgument, ,
                      "edgemfm::cache_int8: a cache of another layout");
  const int64_t capacity = scales.size(1), kv = scales.size(0), d = keys ? cache.size(2) * 4 : cache.size(2);
  ET_KERNEL_CHECK_MSG(context,
                      value.scalar_type() == ScalarType::Float && value.dim() == 4 && value.size(2) == kv &&
                          value.size(3) == d && start >= 0 && start + value.size(1) <= capacity,
                      InvalidArgument, , "edgemfm::cache_int8: rows that do not fit the cache");
  edgemfm_cache_int8(value.const_data_ptr<float>(), value.size(1), kv, d, capacity, start, keys,
                     cache.mutable_data_ptr<int8_t>(), scales.mutable_data_ptr<float>(), zeros.mutable_data_ptr<int8_t>());
  *stack[7] = *stack[6];
}

// edgemfm::sdpa_int8.out(Tensor query, Tensor keys, Tensor key_scales, Tensor key_zeros, Tensor values,
//     Tensor value_scales, Tensor value_zeros, SymInt start_pos, float scale, *, Tensor(a!) out) -> Tensor(a!)
void sdpa_int8_out(KernelRuntimeContext& context, Span<EValue*> stack) {
  const Tensor& q = stack[0]->toTensor();
  const Tensor& keys = stack[1]->toTensor();
  const Tensor& ks = stack[2]->toTensor();
  const Tensor& kz = stack[3]->toTensor();
  const Tensor& values = stack[4]->toTensor();
  const Tensor& vs = stack[5]->toTensor();
  const Tensor& vz = stack[6]->toTensor();
  const int64_t start = stack[7]->toInt();
  const double scale = stack[8]->toDouble();
  Tensor& out = stack[9]->toTensor();
  ET_KERNEL_CHECK_MSG(context,
                      cache_shapes(keys, ks, kz, true) && cache_shapes(values, vs, vz, false) &&
                          values.size(0) == keys.size(0) && vs.size(1) == ks.size(1),
                      InvalidArgument, , "edgemfm::sdpa_int8: a cache of another layout");
  const int64_t kv = keys.size(0), capacity = ks.size(1), d = keys.size(2) * 4;
  ET_KERNEL_CHECK_MSG(context,
                      q.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float && q.dim() == 4 &&
                          q.size(3) == d && values.size(2) == d && q.size(2) % kv == 0 && start >= 0 &&
                          start + q.size(1) <= capacity,
                      InvalidArgument, , "edgemfm::sdpa_int8: a query that does not fit the cache");
  // the planned output is the largest the program allows: sized to this call's query
  ET_KERNEL_CHECK_MSG(context, executorch::runtime::resize_tensor(out, q.sizes()) == Error::Ok, InvalidArgument, ,
                      "edgemfm::sdpa_int8: the output cannot take the query's shape");
  edgemfm_sdpa_int8(q.const_data_ptr<float>(), q.size(1), q.size(2), d, keys.const_data_ptr<int8_t>(),
                    ks.const_data_ptr<float>(), kz.const_data_ptr<int8_t>(), values.const_data_ptr<int8_t>(),
                    vs.const_data_ptr<float>(), vz.const_data_ptr<int8_t>(), kv, capacity, start, float(scale),
                    out.mutable_data_ptr<float>());
  *stack[10] = *stack[9];
}

const Kernel kernels[] = {Kernel("edgemfm::cache_int8.out", cache_int8_out),
                          Kernel("edgemfm::sdpa_int8.out", sdpa_int8_out)};
const auto registered = executorch::runtime::register_kernels(Span<const Kernel>(kernels, 2));
}  // namespace
#endif
