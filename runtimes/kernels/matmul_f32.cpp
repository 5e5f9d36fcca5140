// float32 weights for ONNX Runtime graphs: edgemfm.f32's MatMulF32 (a decoder's projection, or its tied head) and
// GatherF32 (a tied head's table read as the token embedding). exporters/native_matmul.py packs a MatMul's
// weights into this layout, with `matmul_f32_reference` and `gather_f32_reference`: the same products in numpy.
//
// Weights W [N, K] (N output columns, K inputs) stored as float32 [ceil(N/32), K, 32]: per tile of 32 columns,
// input k's 32 weights side by side (zeros past N).   y[m, n] = sum_k a[m, k] W[n, k]
//
// Why: a decode step is bound by memory, a speculative check of a few tokens should cost about one step. ONNX
// Runtime 1.32's MatMul (MLAS) reads the weights well for one row, but costs 1.7x that for 5 rows and 2x for 8
// (the demo's MLP weights, one thread, x86 with AVX-512; here 1.06x for 8). Here a tile streams by input, prefetched ahead, and up to 8
// rows (3 with AVX2 or NEON) share each loaded vector: each multiplies it by a broadcast of its own input. A
// prefill's passes of rows go over a tile while its K x 128 bytes are in cache. Tiles are shared out over ONNX
// Runtime's intra-op threads (KernelContext_ParallelFor).
//
// Vector paths: x86 with AVX-512 (two 16-float vectors a row) or AVX2 (four), ARM with NEON (eight); other CPUs
// run the plain loops. runtimes/native.py builds this file on the machine that runs it;
// tests/test_matmul_f32_kernel.py checks every path against the references, the ARM one under qemu.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#if defined(__ARM_NEON)
#include <arm_neon.h>
#define EDGEMFM_NEON 1
#endif
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define EDGEMFM_AVX2 1
#if defined(__AVX512F__)
#define EDGEMFM_AVX512 1
#endif
#endif

#ifndef EDGEMFM_NO_ONNXRUNTIME
#include "onnxruntime_op.h"
#endif

namespace {

constexpr int64_t TILE = 32;     // columns per tile
constexpr int64_t AHEAD = 4096;  // floats prefetched ahead of the input being read (16 KiB: measured best of 4-16)

// One tile's 32 columns for R rows (r0 .. r0 + R), plain loops.
template <int R>
void tile_plain(const float* tile, const float* a, int64_t K, float (*out)[TILE]) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < TILE; ++c) out[r][c] = 0.0f;
  for (int64_t k = 0; k < K; ++k)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < TILE; ++c) out[r][c] += a[r * K + k] * tile[k * TILE + c];
}

// One tile's 32 columns for R rows, on a vector type below: each loaded vector of weights serves every row.
template <class V, int R>
void tile_vector(const float* tile, const float* a, int64_t K, float (*out)[TILE]);

#if defined(EDGEMFM_AVX512)
struct Zmm {
  static constexpr int LANES = 16, ROWS = 8;  // 8 rows x 2 vectors: 16 accumulators of 32 registers
  using F = __m512;
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F set(float x) { return _mm512_set1_ps(x); }
  static F zero() { return _mm512_setzero_ps(); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(float* p, F x) { _mm512_storeu_ps(p, x); }
};
#endif

#if defined(EDGEMFM_AVX2)
struct Ymm {
  static constexpr int LANES = 8, ROWS = 3;  // 3 rows x 4 vectors: 12 accumulators of 16 registers
  using F = __m256;
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F set(float x) { return _mm256_set1_ps(x); }
  static F zero() { return _mm256_setzero_ps(); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(float* p, F x) { _mm256_storeu_ps(p, x); }
};
#endif

#if defined(EDGEMFM_NEON)
struct Neon {
  static constexpr int LANES = 4, ROWS = 3;  // 3 rows x 8 vectors: 24 accumulators of 32 registers
  using F = float32x4_t;
  static F load(const float* p) { return vld1q_f32(p); }
  static F set(float x) { return vdupq_n_f32(x); }
  static F zero() { return vdupq_n_f32(0.0f); }
  static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }
  static void store(float* p, F x) { vst1q_f32(p, x); }
};
#endif

template <class V, int R>
void tile_vector(const float* tile, const float* a, int64_t K, float (*out)[TILE]) {
  constexpr int PARTS = TILE / V::LANES;
  typename V::F acc[R][PARTS];
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < PARTS; ++p) acc[r][p] = V::zero();
  for (int64_t k = 0; k < K; ++k) {
    const float* w = tile + k * TILE;
    __builtin_prefetch(w + AHEAD);  // the two 64-byte lines of an input's weights (one of them alone: 12% slower)
    __builtin_prefetch(w + AHEAD + 16);
    typename V::F v[PARTS];
    for (int p = 0; p < PARTS; ++p) v[p] = V::load(w + p * V::LANES);
    for (int r = 0; r < R; ++r) {
      const typename V::F x = V::set(a[r * K + k]);
      for (int p = 0; p < PARTS; ++p) acc[r][p] = V::fma(x, v[p], acc[r][p]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int p = 0; p < PARTS; ++p) V::store(out[r] + p * V::LANES, acc[r][p]);
}

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
void pass(int64_t n, const float* tile, const float* a, int64_t K, float (*out)[TILE]) {
  if constexpr (R > 1) {
    if (n < R) return pass<V, R - 1>(n, tile, a, K, out);
  }
  if constexpr (std::is_same_v<V, Plain>) {
    tile_plain<R>(tile, a, K, out);
  } else {
    tile_vector<V, R>(tile, a, K, out);
  }
}

// Tiles first .. last for every row: the rows of a pass share each loaded vector, the passes a tile in cache. The
// first pass is a full one: its arithmetic hides under the tile's reading from memory, the later ones' does not
// (9 rows as 8 and 1 ran 30% faster than as 5 and 4).
void tiles(const float* weights, const float* a, int64_t M, int64_t K, int64_t N, int64_t first, int64_t last,
           float* y) {
  float out[Best::ROWS][TILE];
  for (int64_t t = first; t < last; ++t) {
    const float* tile = weights + t * K * TILE;
    const int64_t columns = std::min(TILE, N - t * TILE);
    for (int64_t r0 = 0; r0 < M; r0 += Best::ROWS) {
      const int64_t n = std::min<int64_t>(Best::ROWS, M - r0);
      pass<Best>(n, tile, a + r0 * K, K, out);
      for (int64_t r = 0; r < n; ++r) std::copy(out[r], out[r] + columns, y + (r0 + r) * N + t * TILE);
    }
  }
}

}  // namespace

extern "C" {

// y [M, N] = a [M, K] times the tiled weights (layout above); one thread.
void edgemfm_matmul_f32(const float* a, const float* weights, int64_t M, int64_t K, int64_t N, float* y) {
  tiles(weights, a, M, K, N, 0, (N + TILE - 1) / TILE, y);
}

// out [n, K] = rows ids [n] of the tiled weights' [N, K] table (a column of the head is a token's row).
void edgemfm_gather_f32(const int64_t* ids, int64_t n, const float* weights, int64_t K, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float* tile = weights + ids[i] / TILE * K * TILE + ids[i] % TILE;
    for (int64_t k = 0; k < K; ++k) out[i * K + k] = tile[k * TILE];
  }
}

}  // extern "C"

#ifndef EDGEMFM_NO_ONNXRUNTIME

// ONNX Runtime's custom-op glue: domain "edgemfm.f32", ops MatMulF32 (A, W) and GatherF32 (ids, W), each with
// attributes K and N.
namespace {

using namespace edgemfm_ort;

struct Sizes {
  int64_t K = 0, N = 0;
  int64_t floats() const { return (N + TILE - 1) / TILE * K * TILE; }
};

void* create(const OrtKernelInfo* info, OrtStatusPtr* status) {
  Sizes k;
  for (auto [name, value] : {std::pair{"K", &k.K}, {"N", &k.N}})
    if ((*status = api->KernelInfoGetAttribute_int64(info, name, value))) return nullptr;
  if (k.K < 1 || k.N < 1) {
    *status = fail("edgemfm f32: K and N must be positive");
    return nullptr;
  }
  return new Sizes(k);
}

struct Job {
  const float *weights, *a;
  int64_t M, K, N, per_task;
  float* y;
};

void run_tiles(void* data, size_t task) {
  const Job& job = *static_cast<const Job*>(data);
  const int64_t tiles_total = (job.N + TILE - 1) / TILE, first = int64_t(task) * job.per_task;
  tiles(job.weights, job.a, job.M, job.K, job.N, first, std::min(tiles_total, first + job.per_task), job.y);
}

OrtStatusPtr matmul(void* state, OrtKernelContext* context) {
  const Sizes& k = *static_cast<Sizes*>(state);
  const OrtValue *a, *w;
  const float *a_data, *w_data;
  EDGEMFM_TRY(input(context, 0, &a, &a_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.floats()) return fail("edgemfm.MatMulF32: the weights' size does not match K and N");
  EDGEMFM_TRY(shape_of(a, dims, count));
  if (dims.empty() || dims.back() != k.K) return fail("edgemfm.MatMulF32: the input's last dimension is not K");
  const int64_t M = count / k.K;
  dims.back() = k.N;
  float* y = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &y));
  if (M == 0) return nullptr;
  const int64_t tiles_total = (k.N + TILE - 1) / TILE, per_task = std::max<int64_t>(1, (tiles_total + 63) / 64);
  Job job{w_data, a_data, M, k.K, k.N, per_task, y};
  return api->KernelContext_ParallelFor(context, run_tiles, size_t((tiles_total + per_task - 1) / per_task), 0,
                                        &job);
}

OrtStatusPtr gather(void* state, OrtKernelContext* context) {
  const Sizes& k = *static_cast<Sizes*>(state);
  const OrtValue *ids, *w;
  const int64_t* id_data;
  const float* w_data;
  EDGEMFM_TRY(input(context, 0, &ids, &id_data));
  EDGEMFM_TRY(input(context, 1, &w, &w_data));
  std::vector<int64_t> dims;
  int64_t count = 0;
  EDGEMFM_TRY(shape_of(w, dims, count));
  if (count != k.floats()) return fail("edgemfm.GatherF32: the weights' size does not match K and N");
  EDGEMFM_TRY(shape_of(ids, dims, count));
  for (int64_t i = 0; i < count; ++i)
    if (id_data[i] < 0 || id_data[i] >= k.N) return fail("edgemfm.GatherF32: a token id is outside the table");
  dims.push_back(k.K);
  float* out = nullptr;
  EDGEMFM_TRY(output(context, 0, dims, &out));
  edgemfm_gather_f32(id_data, count, w_data, k.K, out);
  return nullptr;
}

void destroy(void* state) { delete static_cast<Sizes*>(state); }

constexpr auto FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
const Description MATMUL{"MatMulF32", {FLOAT, FLOAT}, {FLOAT}, {false, false}, create, matmul, destroy};
const Description GATHER{"GatherF32", {INT64, FLOAT}, {FLOAT}, {false, false}, create, gather, destroy};
Op matmul_op(&MATMUL), gather_op(&GATHER);

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  return edgemfm_ort::register_ops(options, base, "edgemfm.f32", {&matmul_op, &gather_op});
}

#endif  // EDGEMFM_NO_ONNXRUNTIME
