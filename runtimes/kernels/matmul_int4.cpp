// int4 and int8 weights for ONNX Runtime graphs: edgemfm.int4's MatMulInt4 and MatMulInt8 (a projection) and
// GatherInt4 and GatherInt8 (a tied head's table read as the token embedding). quantizers/native_int4.py packs a
// MatMulNBits node's weights into this layout, with `matmul_int4_reference` and `gather_int4_reference`: the
// same arithmetic in numpy, for either width.
//
// Weights W [N, K] (N output columns, K inputs), quantized per column in blocks of G inputs, stored as uint8
// [ceil(N/16), ceil(K/G), 16 G bits / 8 + 64] (zeros past N and K): per tile of 16 columns and block, one record,
//   4 bits (G a multiple of 8): G/8 groups of 64 bytes: byte 4 c + j of group g holds column c's inputs 8 g + j
//                           (low nibble) and 8 g + 4 + j (high nibble), j < 4
//   8 bits (G a multiple of 4): G/4 groups of 64 bytes: byte 4 c + j of group g holds column c's input 4 g + j
//     (either way one 64-byte vector is 16 columns' share of a dot product, with no horizontal sums: vpdpbusd, sdot)
//   16 float16 scales s, then 16 float16 offsets m = -s * zero_point:  W[n, k] = s q + m, q in 0 .. 2^bits - 1
// Activations a [M, K] are rounded to int8 per row and block, as MatMulNBits' accuracy_level 4 does:
//   amax = max |a|    q8 = rint(a * (127 / amax))    sa = amax / 127    (0 where amax is 0)
//   y[n] = bias[n] + sum_b ( s[n,b] * (sa_b * (q . q8)_b) + m[n,b] * (sa_b * sum(q8)_b) )
// The dot products are exact int32 sums (at most 255 * 127 * G); only the block sums are float. Where an
// instruction takes signed weights only (sdot; AVX2's vpmaddubsw, which would saturate on 255 * 127 * 2), the
// int8 path feeds it q - 128 and adds 128 sum(q8) to the block's integer dot product: the same sum.
//
// A decode step reads each weight byte once: M = 1 is a stream through the records, prefetched 16 KiB ahead.
// Up to 8 rows (4 without AVX-512) share each loaded vector (a speculative verify, a prefill), and a tile's
// records stay in cache while every row passes. Tiles are shared out over ONNX Runtime's intra-op threads
// (KernelContext_ParallelFor).
//
// Vector paths: x86 with AVX2 (vpdpbusd where the CPU has AVX-VNNI or AVX512-VNNI, 64-byte vectors with
// AVX-512; else vpmaddubsw) and ARM with the dot-product extension (sdot). Other CPUs run the plain loops.
// runtimes/native.py builds this file on the machine that runs it; tests/test_matmul_int4_kernel.py checks every
// path against the references, the ARM ones under qemu.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)
#include <arm_neon.h>
#define EDGEMFM_NEON 1
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define EDGEMFM_AVX2 1
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define EDGEMFM_AVX512 1
#endif
#endif

#ifndef EDGEMFM_NO_ONNXRUNTIME
#include "onnxruntime_op.h"
#endif

namespace {

constexpr int64_t TILE = 16;      // columns per record
constexpr int64_t AHEAD = 16384;  // bytes prefetched ahead of the record being read (measured best of 2-32 KiB)

template <int BITS>
constexpr int64_t packed_bytes(int64_t G) {  // a record's integers: 16 columns' G inputs
  return TILE * G * BITS / 8;
}

template <int BITS>
constexpr int64_t record_bytes(int64_t G) {  // the integers, then 16 float16 scales and 16 offsets
  return packed_bytes<BITS>(G) + 4 * TILE;
}

// Column c's integer q for input k of a record's block.
template <int BITS>
int32_t weight(const uint8_t* record, int64_t c, int64_t k) {
  if constexpr (BITS == 8) {
    return record[(k / 4) * 64 + 4 * c + k % 4];
  } else {
    const uint8_t byte = record[(k / 8) * 64 + 4 * c + k % 4];
    return k % 8 < 4 ? byte & 15 : byte >> 4;
  }
}

inline int32_t four(const int8_t* p) {  // 4 int8 activations as one lane's word (memcpy: no aliasing cast)
  int32_t word;
  std::memcpy(&word, p, 4);
  return word;
}

float half_to_float(uint16_t h) {  // IEEE binary16, subnormals included
  const uint32_t sign = uint32_t(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {
      float x = std::ldexp(float(mantissa), -24);
      std::memcpy(&bits, &x, 4);
      bits |= sign;
    }
  } else if (exponent == 31) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

// Rows of activations rounded to int8 per block, with each block's sum(q8), sa and sa * sum(q8).
struct Rows {
  std::vector<int8_t> q8;    // [M, stride]: ceil(K/G) G, zeros past K
  std::vector<int32_t> sum;  // [M, K/G]
  std::vector<float> scale;  // [M, K/G]
  std::vector<float> shift;  // [M, K/G]
};

// a [M, K] as rows of ceil(K/G) G, the inputs past K zero.
void quantize(const float* a, int64_t M, int64_t K, int64_t G, Rows& rows) {
  const int64_t blocks = (K + G - 1) / G, stride = blocks * G;
  rows.q8.assign(M * stride, 0);
  rows.sum.resize(M * blocks);
  rows.scale.resize(M * blocks);
  rows.shift.resize(M * blocks);
  for (int64_t r = 0; r < M; ++r) {
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = a + r * K + b * G;
      int8_t* q = rows.q8.data() + r * stride + b * G;
      const int64_t n = std::min(G, K - b * G);
      float amax = 0.0f;
      for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(x[k]));
      const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
      int32_t sum = 0;
      for (int64_t k = 0; k < n; ++k) {
        q[k] = int8_t(std::nearbyint(x[k] * inverse));
        sum += q[k];
      }
      const float sa = amax / 127.0f;
      rows.sum[r * blocks + b] = sum;
      rows.scale[r * blocks + b] = sa;
      rows.shift[r * blocks + b] = sa * float(sum);
    }
  }
}

// One tile's 16 columns for R rows (r0 .. r0 + R), plain loops.
template <int BITS, int R>
void tile_plain(const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
                float (*out)[TILE]) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < TILE; ++c) out[r][c] = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* record = records + b * record_bytes<BITS>(G);
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + packed_bytes<BITS>(G));
    for (int r = 0; r < R; ++r) {
      const int8_t* q8 = rows.q8.data() + (r0 + r) * stride + b * G;
      const float sa = rows.scale[(r0 + r) * blocks + b], shift = rows.shift[(r0 + r) * blocks + b];
      for (int c = 0; c < TILE; ++c) {
        int32_t dot = 0;
        for (int64_t k = 0; k < G; ++k) dot += weight<BITS>(record, c, k) * q8[k];
        out[r][c] += half_to_float(halves[c]) * (sa * float(dot)) + half_to_float(halves[TILE + c]) * shift;
      }
    }
  }
}

// One tile's 16 columns for R rows, on a vector type below: each loaded group of weights serves every row.
template <class V, int BITS, int R>
void tile_vector(const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
                 float (*out)[TILE]);

#if defined(EDGEMFM_AVX2) || defined(EDGEMFM_NEON)

#if defined(EDGEMFM_AVX512)
struct Zmm {  // one vector: the tile's 16 columns
  static constexpr int PARTS = 1, ROWS = 8;  // rows per pass: 8 accumulators and 8 dot products in 32 registers
  using I = __m512i;
  using F = __m512;
  static I zero() { return _mm512_setzero_si512(); }
  static void nibbles(const uint8_t* group, int part, I& low, I& high) {
    const I v = _mm512_loadu_si512(group + 64 * part), mask = _mm512_set1_epi8(15);
    low = _mm512_and_si512(v, mask);
    high = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
  }
  static constexpr int32_t LIFT = 0;  // int8 weights go in as they are stored, q
  static I bytes(const uint8_t* group, int part) { return _mm512_loadu_si512(group + 64 * part); }
  static I dot(I acc, I weights, int32_t four) { return _mm512_dpbusd_epi32(acc, weights, _mm512_set1_epi32(four)); }
  static I dot8(I acc, I weights, int32_t four) { return dot(acc, weights, four); }
  static I plus(I x, int32_t n) { return _mm512_add_epi32(x, _mm512_set1_epi32(n)); }
  static F halves(const uint16_t* h, int part) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + 16 * part)));
  }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F to_float(I x) { return _mm512_cvtepi32_ps(x); }
  static F set(float x) { return _mm512_set1_ps(x); }
  static F fzero() { return _mm512_setzero_ps(); }
  static void store(float* out, int part, F x) { _mm512_storeu_ps(out + 16 * part, x); }
};
#endif

#if defined(EDGEMFM_AVX2)
struct Ymm {  // two vectors of 8 columns
  static constexpr int PARTS = 2, ROWS = 4;
  using I = __m256i;
  using F = __m256;
  static I zero() { return _mm256_setzero_si256(); }
  static I load(const uint8_t* group, int part) {
    return _mm256_loadu_si256(reinterpret_cast<const I*>(group + 32 * part));
  }
  static void nibbles(const uint8_t* group, int part, I& low, I& high) {
    const I v = load(group, part), mask = _mm256_set1_epi8(15);
    low = _mm256_and_si256(v, mask);
    high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  }
#if defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__))
  static constexpr int32_t LIFT = 0;  // int8 weights go in as they are stored, q
  static I bytes(const uint8_t* group, int part) { return load(group, part); }
  static I dot(I acc, I weights, int32_t four) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, weights, _mm256_set1_epi32(four));
#else
    return _mm256_dpbusd_epi32(acc, weights, _mm256_set1_epi32(four));
#endif
  }
  static I dot8(I acc, I weights, int32_t four) { return dot(acc, weights, four); }
#else
  static constexpr int32_t LIFT = 128;  // int8 weights go in as q - 128: vpmaddubsw would saturate on q
  static I bytes(const uint8_t* group, int part) { return _mm256_xor_si256(load(group, part), _mm256_set1_epi8(-128)); }
  static I dot(I acc, I weights, int32_t four) {  // 15 * 127 * 2 fits int16: vpmaddubsw cannot saturate here
    const I pairs = _mm256_maddubs_epi16(weights, _mm256_set1_epi32(four));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
  static I dot8(I acc, I weights, int32_t four) {  // |q - 128| (0 .. 128) by a with q - 128's sign: 2 * 128 * 127 fits
    const I signed_a = _mm256_sign_epi8(_mm256_set1_epi32(four), weights);  // |a| <= 127: negating cannot overflow
    const I pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(weights), signed_a);
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
  }
#endif
  static I plus(I x, int32_t n) { return _mm256_add_epi32(x, _mm256_set1_epi32(n)); }
  static F halves(const uint16_t* h, int part) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + 8 * part)));
  }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F to_float(I x) { return _mm256_cvtepi32_ps(x); }
  static F set(float x) { return _mm256_set1_ps(x); }
  static F fzero() { return _mm256_setzero_ps(); }
  static void store(float* out, int part, F x) { _mm256_storeu_ps(out + 8 * part, x); }
};
#endif

#if defined(EDGEMFM_NEON)
struct Neon {  // four vectors of 4 columns
  static constexpr int PARTS = 4, ROWS = 4;
  using I = int32x4_t;
  using F = float32x4_t;
  static I zero() { return vdupq_n_s32(0); }
  static void nibbles(const uint8_t* group, int part, I& low, I& high) {
    const uint8x16_t v = vld1q_u8(group + 16 * part);
    low = vreinterpretq_s32_u8(vandq_u8(v, vdupq_n_u8(15)));
    high = vreinterpretq_s32_u8(vshrq_n_u8(v, 4));
  }
  static constexpr int32_t LIFT = 128;  // sdot is signed by signed: int8 weights go in as q - 128
  static I bytes(const uint8_t* group, int part) {
    return vreinterpretq_s32_u8(veorq_u8(vld1q_u8(group + 16 * part), vdupq_n_u8(0x80)));
  }
  static I dot(I acc, I weights, int32_t four) {
    return vdotq_s32(acc, vreinterpretq_s8_s32(weights), vreinterpretq_s8_s32(vdupq_n_s32(four)));
  }
  static I dot8(I acc, I weights, int32_t four) { return dot(acc, weights, four); }
  static I plus(I x, int32_t n) { return vaddq_s32(x, vdupq_n_s32(n)); }
  static F halves(const uint16_t* h, int part) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h + 4 * part)));
  }
  static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F to_float(I x) { return vcvtq_f32_s32(x); }
  static F set(float x) { return vdupq_n_f32(x); }
  static F fzero() { return vdupq_n_f32(0.0f); }
  static void store(float* out, int part, F x) { vst1q_f32(out + 4 * part, x); }
};
#endif

template <class V, int BITS, int R>
void tile_vector(const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
                 float (*out)[TILE]) {
  typename V::F acc[R][V::PARTS];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < V::PARTS; ++p) acc[r][p] = V::fzero();
  const int8_t* q8[R];
  for (int r = 0; r < R; ++r) q8[r] = rows.q8.data() + (r0 + r) * stride;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* record = records + b * record_bytes<BITS>(G);
    for (int64_t line = 0; line < record_bytes<BITS>(G); line += 64) __builtin_prefetch(record + AHEAD + line);
    typename V::I dots[R][V::PARTS];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < V::PARTS; ++p) dots[r][p] = V::zero();
    for (int64_t g = 0; g < G * BITS / 32; ++g) {
      for (int p = 0; p < V::PARTS; ++p) {
        if constexpr (BITS == 8) {
          const typename V::I bytes = V::bytes(record + 64 * g, p);
          for (int r = 0; r < R; ++r) dots[r][p] = V::dot8(dots[r][p], bytes, four(q8[r] + b * G + 4 * g));
        } else {
          typename V::I low, high;
          V::nibbles(record + 64 * g, p, low, high);
          for (int r = 0; r < R; ++r) {
            const int8_t* eight = q8[r] + b * G + 8 * g;  // 8g .. 8g + 3 meet the low nibbles, the rest the high
            dots[r][p] = V::dot(V::dot(dots[r][p], low, four(eight)), high, four(eight + 4));
          }
        }
      }
    }
    if constexpr (BITS == 8 && V::LIFT != 0) {  // the weights went in as q - LIFT: q . q8 = that + LIFT sum(q8)
      for (int r = 0; r < R; ++r) {
        const int32_t lift = V::LIFT * rows.sum[(r0 + r) * blocks + b];
        for (int p = 0; p < V::PARTS; ++p) dots[r][p] = V::plus(dots[r][p], lift);
      }
    }
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + packed_bytes<BITS>(G));
    for (int p = 0; p < V::PARTS; ++p) {
      const typename V::F s = V::halves(halves, p), m = V::halves(halves + TILE, p);
      for (int r = 0; r < R; ++r) {
        const int64_t at = (r0 + r) * blocks + b;
        acc[r][p] = V::fma(s, V::mul(V::to_float(dots[r][p]), V::set(rows.scale[at])), acc[r][p]);
        acc[r][p] = V::fma(m, V::set(rows.shift[at]), acc[r][p]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < V::PARTS; ++p) V::store(out[r], p, acc[r][p]);
}

#endif  // a vector path

struct Plain {
  static constexpr int ROWS = 4;
};

#if defined(EDGEMFM_AVX512)
using Best = Zmm;
#elif defined(EDGEMFM_AVX2)
using Best = Ymm;
#elif defined(EDGEMFM_NEON)
using Best = Neon;
#else
using Best = Plain;
#endif

// One pass of n rows (1 .. V::ROWS) over a tile.
template <class V, int BITS, int R = V::ROWS>
void pass(int64_t n, const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
          float (*out)[TILE]) {
  if constexpr (R > 1) {
    if (n < R) return pass<V, BITS, R - 1>(n, records, blocks, G, rows, stride, r0, out);
  }
  if constexpr (std::is_same_v<V, Plain>) {
    tile_plain<BITS, R>(records, blocks, G, rows, stride, r0, out);
  } else {
    tile_vector<V, BITS, R>(records, blocks, G, rows, stride, r0, out);
  }
}

// Tiles first .. last for every row: the rows of a pass share each record while it is in cache.
template <int BITS>
void tiles(const uint8_t* weights, const float* bias, const Rows& rows, int64_t M, int64_t K, int64_t N,
           int64_t G, int64_t first, int64_t last, float* y) {
  const int64_t blocks = (K + G - 1) / G, stride = blocks * G;
  float out[Best::ROWS][TILE];
  for (int64_t t = first; t < last; ++t) {
    const uint8_t* records = weights + t * blocks * record_bytes<BITS>(G);
    const int64_t columns = std::min(TILE, N - t * TILE);
    for (int64_t r0 = 0; r0 < M; r0 += Best::ROWS) {
      const int64_t n = std::min<int64_t>(Best::ROWS, M - r0);
      pass<Best, BITS>(n, records, blocks, G, rows, stride, r0, out);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < columns; ++c)
          y[(r0 + r) * N + t * TILE + c] = out[r][c] + (bias ? bias[t * TILE + c] : 0.0f);
    }
  }
}

template <int BITS>
void matmul_rows(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K, int64_t N,
                 int64_t G, float* y) {
  Rows rows;
  quantize(a, M, K, G, rows);
  tiles<BITS>(weights, bias, rows, M, K, N, G, 0, (N + TILE - 1) / TILE, y);
}

template <int BITS>
void gather_rows(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G, float* out) {
  const int64_t blocks = (K + G - 1) / G;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = ids[i] / TILE, c = ids[i] % TILE;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* record = weights + (t * blocks + b) * record_bytes<BITS>(G);
      const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + packed_bytes<BITS>(G));
      const float s = half_to_float(halves[c]), m = half_to_float(halves[TILE + c]);
      for (int64_t k = 0; k < std::min(G, K - b * G); ++k)
        out[i * K + b * G + k] = s * float(weight<BITS>(record, c, k)) + m;
    }
  }
}

}  // namespace

extern "C" {

// y [M, N] = a [M, K] times the packed weights (layout above), plus bias [N] where not null; one thread.
void edgemfm_matmul_int4(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K,
                         int64_t N, int64_t G, float* y) {
  matmul_rows<4>(a, weights, bias, M, K, N, G, y);
}

void edgemfm_matmul_int8(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K,
                         int64_t N, int64_t G, float* y) {
  matmul_rows<8>(a, weights, bias, M, K, N, G, y);
}

// out [n, K] = rows ids [n] of the packed weights' [N, K] table (a column of the head is a token's row).
void edgemfm_gather_int4(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G, float* out) {
  gather_rows<4>(ids, n, weights, K, G, out);
}

void edgemfm_gather_int8(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G, float* out) {
  gather_rows<8>(ids, n, weights, K, G, out);
}

}  // extern "C"

#ifndef EDGEMFM_NO_ONNXRUNTIME

// ONNX Runtime's custom-op glue: domain "edgemfm.int4", ops MatMulInt4 and MatMulInt8 (A, W, bias?) and GatherInt4
// and GatherInt8 (ids, W), each with attributes K, N and block_size.
namespace {

using namespace edgemfm_ort;

template <int BITS>
struct Names {  // the ops' names, for their refusals
  static constexpr const char* MATMUL = BITS == 8 ? "edgemfm.MatMulInt8" : "edgemfm.MatMulInt4";
  static constexpr const char* GATHER = BITS == 8 ? "edgemfm.GatherInt8" : "edgemfm.GatherInt4";
};

OrtStatusPtr refuse(const char* op, const char* why) { return fail((std::string(op) + ": " + why).c_str()); }

template <int BITS>
struct Sizes {
  int64_t K = 0, N = 0, G = 0;
  int64_t records() const { return (N + TILE - 1) / TILE * ((K + G - 1) / G) * record_bytes<BITS>(G); }
};

template <int BITS>
void* create(const OrtKernelInfo* info, OrtStatusPtr* status) {
  Sizes<BITS> k;
  for (auto [name, value] : {std::pair{"K", &k.K}, {"N", &k.N}, {"block_size", &k.G}})
    if ((*status = api->KernelInfoGetAttribute_int64(info, name, value))) return nullptr;
  if (k.G < 32 / BITS || k.G % (32 / BITS) || k.K < 1 || k.N < 1) {  // a 64-byte group: 8 int4 or 4 int8 inputs
    *status = fail(BITS == 8 ? "edgemfm int8: block_size must be a multiple of 4, K and N positive"
                             : "edgemfm int4: block_size must be a multiple of 8, K and N positive");
    return nullptr;
  }
  return new Sizes<BITS>(k);
}

struct Job {
  // tiles<BITS> of the op's width
  void (*tiles)(const uint8_t*, const float*, const Rows&, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                float*);
  const uint8_t* weights;
  const float* bias;
  const Rows* rows;
  int64_t M, K, N, G, per_task;
  float* y;
};

void run_tiles(void* data, size_t task) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t tiles_total = (job.N + TILE - 1) / TILE, first = int64_t(task) * job.per_task;
  job.tiles(job.weights, job.bias, *job.rows, job.M, job.K, job.N, job.G, first,
            std::min(tiles_total, first + job.per_task), job.y);
}

template <int BITS>
OrtStatusPtr matmul(void* state, OrtKernelContext* context) {
  const Sizes<BITS>& k = *static_cast<Sizes<BITS>*>(state);
  const char* op = Names<BITS>::MATMUL;
  const OrtValue *a, *w, *b;
  const float *a_data, *bias;
  const uint8_t* w_data;
  EDGEMFM_TRY(input(context, 0, &a, &a_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  EDGEMFM_TRY(input(context, 2, &b, &bias));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.records()) return refuse(op, "the weights' size does not match K, N and block_size");
  if (b) {
    EDGEMFM_TRY(shape_of(b, dims, count));
    if (count != k.N) return refuse(op, "the bias is not N long");
  }
  EDGEMFM_TRY(shape_of(a, dims, count));
  if (dims.empty() || dims.back() != k.K) return refuse(op, "the input's last dimension is not K");
  const int64_t M = count / k.K;
  dims.back() = k.N;
  float* y = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &y));
  if (M == 0) return nullptr;
  Rows rows;
  quantize(a_data, M, k.K, k.G, rows);
  const int64_t tiles_total = (k.N + TILE - 1) / TILE, per_task = std::max<int64_t>(1, (tiles_total + 63) / 64);
  Job job{tiles<BITS>, w_data, bias, &rows, M, k.K, k.N, k.G, per_task, y};
  return api->KernelContext_ParallelFor(context, run_tiles, size_t((tiles_total + per_task - 1) / per_task), 0,
                                        &job);
}

template <int BITS>
OrtStatusPtr gather(void* state, OrtKernelContext* context) {
  const Sizes<BITS>& k = *static_cast<Sizes<BITS>*>(state);
  const char* op = Names<BITS>::GATHER;
  const OrtValue *ids, *w;
  const int64_t* id_data;
  const uint8_t* w_data;
  EDGEMFM_TRY(input(context, 0, &ids, &id_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.records()) return refuse(op, "the weights' size does not match K, N and block_size");
  EDGEMFM_TRY(shape_of(ids, dims, count));
  for (int64_t i = 0; i < count; ++i)
    if (id_data[i] < 0 || id_data[i] >= k.N) return refuse(op, "a token id is outside the table");
  dims.push_back(k.K);
  float* out = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &out));
  gather_rows<BITS>(id_data, count, w_data, k.K, k.G, out);
  return nullptr;
}

template <int BITS>
void destroy(void* state) {
  delete static_cast<Sizes<BITS>*>(state);
}

constexpr auto FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, UINT8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
               INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
const Description MATMUL4{"MatMulInt4", {FLOAT, UINT8, FLOAT}, {FLOAT}, {false, false, true},
                          create<4>,    matmul<4>,             destroy<4>};
const Description GATHER4{"GatherInt4", {INT64, UINT8}, {FLOAT}, {false, false}, create<4>, gather<4>, destroy<4>};
const Description MATMUL8{"MatMulInt8", {FLOAT, UINT8, FLOAT}, {FLOAT}, {false, false, true},
                          create<8>,    matmul<8>,             destroy<8>};
const Description GATHER8{"GatherInt8", {INT64, UINT8}, {FLOAT}, {false, false}, create<8>, gather<8>, destroy<8>};
Op matmul4_op(&MATMUL4), gather4_op(&GATHER4), matmul8_op(&MATMUL8), gather8_op(&GATHER8);

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  return edgemfm_ort::register_ops(options, base, "edgemfm.int4", {&matmul4_op, &gather4_op, &matmul8_op, &gather8_op});
}

#endif  // EDGEMFM_NO_ONNXRUNTIME
