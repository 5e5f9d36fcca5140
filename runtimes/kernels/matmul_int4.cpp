// int4 weights for ONNX Runtime graphs: edgemfm.int4's MatMulInt4 (a projection) and GatherInt4 (a tied
// head's table read as the token embedding). quantizers/native_int4.py packs a MatMulNBits node's weights into
// this layout, with `matmul_int4_reference` and `gather_int4_reference`: the same arithmetic in numpy.
//
// Weights W [N, K] (N output columns, K inputs), quantized per column in blocks of G inputs (G a multiple of
// 8), stored as uint8 [ceil(N/16), ceil(K/G), 8 G + 64] (zeros past N and K): per tile of 16 columns and
// block, one record,
//   G/8 groups of 64 bytes: byte 4 c + j of group g holds column c's inputs 8 g + j (low nibble) and
//                           8 g + 4 + j (high nibble), j < 4: one 64-byte vector is 16 columns' share of a
//                           dot product over 8 inputs, with no horizontal sums (vpdpbusd, sdot)
//   16 float16 scales s, then 16 float16 offsets m = -s * zero_point:  W[n, k] = s q + m, q in 0 .. 15
// Activations a [M, K] are rounded to int8 per row and block, as MatMulNBits' accuracy_level 4 does:
//   amax = max |a|    q8 = rint(a * (127 / amax))    sa = amax / 127    (0 where amax is 0)
//   y[n] = bias[n] + sum_b ( s[n,b] * (sa_b * (q . q8)_b) + m[n,b] * (sa_b * sum(q8)_b) )
// The dot products are exact int32 sums (at most 15 * 127 * G); only the block sums are float.
//
// A decode step reads each weight byte once: M = 1 is a stream through the records, prefetched 16 KiB ahead.
// Up to 8 rows (4 without AVX-512) share each loaded vector (a speculative verify, a prefill), and a tile's
// records stay in cache while every row passes. Tiles are shared out over ONNX Runtime's intra-op threads
// (KernelContext_ParallelFor).
//
// Vector paths: x86 with AVX2 (vpdpbusd where the CPU has AVX-VNNI or AVX512-VNNI, 64-byte vectors with
// AVX-512) and ARM with the dot-product extension (sdot). Other CPUs run the plain loops. runtimes/native.py
// builds this file on the machine that runs it; tests/test_matmul_int4_kernel.py checks every path against
// the references, the ARM ones under qemu.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
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

inline int64_t record_bytes(int64_t G) { return 8 * G + 64; }

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

// Rows of activations rounded to int8 per block, with each block's sa and sa * sum(q8).
struct Rows {
  std::vector<int8_t> q8;    // [M, stride]: ceil(K/G) G, zeros past K
  std::vector<float> scale;  // [M, K/G]
  std::vector<float> shift;  // [M, K/G]
};

// a [M, K] as rows of ceil(K/G) G, the inputs past K zero.
void quantize(const float* a, int64_t M, int64_t K, int64_t G, Rows& rows) {
  const int64_t blocks = (K + G - 1) / G, stride = blocks * G;
  rows.q8.assign(M * stride, 0);
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
      rows.scale[r * blocks + b] = sa;
      rows.shift[r * blocks + b] = sa * float(sum);
    }
  }
}

// One tile's 16 columns for R rows (r0 .. r0 + R), plain loops.
template <int R>
void tile_plain(const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
                float (*out)[TILE]) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < TILE; ++c) out[r][c] = 0.0f;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* record = records + b * record_bytes(G);
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + 8 * G);
    for (int r = 0; r < R; ++r) {
      const int8_t* q8 = rows.q8.data() + (r0 + r) * stride + b * G;
      const float sa = rows.scale[(r0 + r) * blocks + b], shift = rows.shift[(r0 + r) * blocks + b];
      for (int c = 0; c < TILE; ++c) {
        int32_t dot = 0;
        for (int64_t g = 0; g < G / 8; ++g)
          for (int j = 0; j < 4; ++j) {
            const uint8_t byte = record[g * 64 + 4 * c + j];
            dot += int32_t(byte & 15) * q8[8 * g + j] + int32_t(byte >> 4) * q8[8 * g + 4 + j];
          }
        out[r][c] += half_to_float(halves[c]) * (sa * float(dot)) + half_to_float(halves[TILE + c]) * shift;
      }
    }
  }
}

// One tile's 16 columns for R rows, on a vector type below: each loaded group of weights serves every row.
template <class V, int R>
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
  static I dot(I acc, I weights, int32_t four) { return _mm512_dpbusd_epi32(acc, weights, _mm512_set1_epi32(four)); }
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
  static void nibbles(const uint8_t* group, int part, I& low, I& high) {
    const I v = _mm256_loadu_si256(reinterpret_cast<const I*>(group + 32 * part)), mask = _mm256_set1_epi8(15);
    low = _mm256_and_si256(v, mask);
    high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
  }
  static I dot(I acc, I weights, int32_t four) {
    const I a = _mm256_set1_epi32(four);
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, weights, a);
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, weights, a);
#else  // 15 * 127 * 2 fits int16: vpmaddubsw cannot saturate here
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(weights, a), _mm256_set1_epi16(1)));
#endif
  }
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
  static I dot(I acc, I weights, int32_t four) {
    return vdotq_s32(acc, vreinterpretq_s8_s32(weights), vreinterpretq_s8_s32(vdupq_n_s32(four)));
  }
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

template <class V, int R>
void tile_vector(const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
                 float (*out)[TILE]) {
  typename V::F acc[R][V::PARTS];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < V::PARTS; ++p) acc[r][p] = V::fzero();
  const int8_t* q8[R];
  for (int r = 0; r < R; ++r) q8[r] = rows.q8.data() + (r0 + r) * stride;
  for (int64_t b = 0; b < blocks; ++b) {
    const uint8_t* record = records + b * record_bytes(G);
    for (int64_t line = 0; line < record_bytes(G); line += 64) __builtin_prefetch(record + AHEAD + line);
    typename V::I dots[R][V::PARTS];
    for (int r = 0; r < R; ++r)
      for (int p = 0; p < V::PARTS; ++p) dots[r][p] = V::zero();
    for (int64_t g = 0; g < G / 8; ++g) {
      for (int p = 0; p < V::PARTS; ++p) {
        typename V::I low, high;
        V::nibbles(record + 64 * g, p, low, high);
        for (int r = 0; r < R; ++r) {
          const int8_t* eight = q8[r] + b * G + 8 * g;  // inputs 8g .. 8g + 3 meet the low nibbles, the rest the high
          dots[r][p] = V::dot(V::dot(dots[r][p], low, four(eight)), high, four(eight + 4));
        }
      }
    }
    const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + 8 * G);
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
template <class V, int R = V::ROWS>
void pass(int64_t n, const uint8_t* records, int64_t blocks, int64_t G, const Rows& rows, int64_t stride, int64_t r0,
          float (*out)[TILE]) {
  if constexpr (R > 1) {
    if (n < R) return pass<V, R - 1>(n, records, blocks, G, rows, stride, r0, out);
  }
  if constexpr (std::is_same_v<V, Plain>) {
    tile_plain<R>(records, blocks, G, rows, stride, r0, out);
  } else {
    tile_vector<V, R>(records, blocks, G, rows, stride, r0, out);
  }
}

// Tiles first .. last for every row: the rows of a pass share each record while it is in cache.
void tiles(const uint8_t* weights, const float* bias, const Rows& rows, int64_t M, int64_t K, int64_t N,
           int64_t G, int64_t first, int64_t last, float* y) {
  const int64_t blocks = (K + G - 1) / G, stride = blocks * G;
  float out[Best::ROWS][TILE];
  for (int64_t t = first; t < last; ++t) {
    const uint8_t* records = weights + t * blocks * record_bytes(G);
    const int64_t columns = std::min(TILE, N - t * TILE);
    for (int64_t r0 = 0; r0 < M; r0 += Best::ROWS) {
      const int64_t n = std::min<int64_t>(Best::ROWS, M - r0);
      pass<Best>(n, records, blocks, G, rows, stride, r0, out);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < columns; ++c)
          y[(r0 + r) * N + t * TILE + c] = out[r][c] + (bias ? bias[t * TILE + c] : 0.0f);
    }
  }
}

}  // namespace

extern "C" {

// y [M, N] = a [M, K] times the packed weights (layout above), plus bias [N] where not null; one thread.
void edgemfm_matmul_int4(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K,
                         int64_t N, int64_t G, float* y) {
  Rows rows;
  quantize(a, M, K, G, rows);
  tiles(weights, bias, rows, M, K, N, G, 0, (N + TILE - 1) / TILE, y);
}

// out [n, K] = rows ids [n] of the packed weights' [N, K] table (a column of the head is a token's row).
void edgemfm_gather_int4(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G, float* out) {
  const int64_t blocks = (K + G - 1) / G;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = ids[i] / TILE, c = ids[i] % TILE;
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t* record = weights + (t * blocks + b) * record_bytes(G);
      const uint16_t* halves = reinterpret_cast<const uint16_t*>(record + 8 * G);
      const float s = half_to_float(halves[c]), m = half_to_float(halves[TILE + c]);
      for (int64_t k = 0; k < std::min(G, K - b * G); ++k) {
        const uint8_t byte = record[(k / 8) * 64 + 4 * c + k % 4];
        out[i * K + b * G + k] = s * float(k % 8 < 4 ? byte & 15 : byte >> 4) + m;
      }
    }
  }
}

}  // extern "C"

#ifndef EDGEMFM_NO_ONNXRUNTIME

// ONNX Runtime's custom-op glue: domain "edgemfm.int4", ops MatMulInt4 (A, W, bias?) and GatherInt4 (ids, W), each
// with attributes K, N and block_size.
namespace {

using namespace edgemfm_ort;

struct Sizes {
  int64_t K = 0, N = 0, G = 0;
  int64_t records() const { return (N + TILE - 1) / TILE * ((K + G - 1) / G) * record_bytes(G); }
};

void* create(const OrtKernelInfo* info, OrtStatusPtr* status) {
  Sizes k;
  for (auto [name, value] : {std::pair{"K", &k.K}, {"N", &k.N}, {"block_size", &k.G}})
    if ((*status = api->KernelInfoGetAttribute_int64(info, name, value))) return nullptr;
  if (k.G < 8 || k.G % 8 || k.K < 1 || k.N < 1) {
    *status = fail("edgemfm int4: block_size must be a multiple of 8, K and N positive");
    return nullptr;
  }
  return new Sizes(k);
}

struct Job {
  const uint8_t* weights;
  const float* bias;
  const Rows* rows;
  int64_t M, K, N, G, per_task;
  float* y;
};

void run_tiles(void* data, size_t task) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t tiles_total = (job.N + TILE - 1) / TILE, first = int64_t(task) * job.per_task;
  tiles(job.weights, job.bias, *job.rows, job.M, job.K, job.N, job.G, first,
        std::min(tiles_total, first + job.per_task), job.y);
}

OrtStatusPtr matmul(void* state, OrtKernelContext* context) {
  const Sizes& k = *static_cast<Sizes*>(state);
  const OrtValue *a, *w, *b;
  const float *a_data, *bias;
  const uint8_t* w_data;
  EDGEMFM_TRY(input(context, 0, &a, &a_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  EDGEMFM_TRY(input(context, 2, &b, &bias));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.records()) return fail("edgemfm.MatMulInt4: the weights' size does not match K, N and block_size");
  if (b) {
    EDGEMFM_TRY(shape_of(b, dims, count));
    if (count != k.N) return fail("edgemfm.MatMulInt4: the bias is not N long");
  }
  EDGEMFM_TRY(shape_of(a, dims, count));
  if (dims.empty() || dims.back() != k.K) return fail("edgemfm.MatMulInt4: the input's last dimension is not K");
  const int64_t M = count / k.K;
  dims.back() = k.N;
  float* y = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &y));
  if (M == 0) return nullptr;
  Rows rows;
  quantize(a_data, M, k.K, k.G, rows);
  const int64_t tiles_total = (k.N + TILE - 1) / TILE, per_task = std::max<int64_t>(1, (tiles_total + 63) / 64);
  Job job{w_data, bias, &rows, M, k.K, k.N, k.G, per_task, y};
  return api->KernelContext_ParallelFor(context, run_tiles, size_t((tiles_total + per_task - 1) / per_task), 0,
                                        &job);
}

OrtStatusPtr gather(void* state, OrtKernelContext* context) {
  const Sizes& k = *static_cast<Sizes*>(state);
  const OrtValue *ids, *w;
  const int64_t* id_data;
  const uint8_t* w_data;
  EDGEMFM_TRY(input(context, 0, &ids, &id_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.records()) return fail("edgemfm.GatherInt4: the weights' size does not match K, N and block_size");
  EDGEMFM_TRY(shape_of(ids, dims, count));
  for (int64_t i = 0; i < count; ++i)
    if (id_data[i] < 0 || id_data[i] >= k.N) return fail("edgemfm.GatherInt4: a token id is outside the table");
  dims.push_back(k.K);
  float* out = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &out));
  edgemfm_gather_int4(id_data, count, w_data, k.K, k.G, out);
  return nullptr;
}

void destroy(void* state) { delete static_cast<Sizes*>(state); }

constexpr auto FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, UINT8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
               INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
const Description MATMUL{"MatMulInt4", {FLOAT, UINT8, FLOAT}, {FLOAT}, {false, false, true}, create, matmul, destroy};
const Description GATHER{"GatherInt4", {INT64, UINT8}, {FLOAT}, {false, false}, create, gather, destroy};
Op matmul_op(&MATMUL), gather_op(&GATHER);

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  return edgemfm_ort::register_ops(options, base, "edgemfm.int4", {&matmul_op, &gather_op});
}

#endif  // EDGEMFM_NO_ONNXRUNTIME
