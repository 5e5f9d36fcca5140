// A decoder's attention over its KV cache for ONNX Runtime graphs: edgemfm.attention's Attention, in place of the
// GroupQueryAttention the fusions wrote (exporters/native_attention.py rewrites it): the same inputs, attributes and
// outputs, for the form they take (q, k and v packed in one input, the rotary inside, no window, no softcap, a float
// cache). tests/test_attention_kernel.py holds it to ONNX Runtime's GroupQueryAttention on the same inputs.
//
// Inputs: packed [B, S, (N + 2 KV) d] (q heads, then k, then v), past_key and past_value [B, KV, P, d],
// seqlens_k [B] int32 (each row's last key index), total_sequence_length int32, cos_cache and sin_cache
// [positions, d/2], position_ids [B, S] int64, attention_bias [1 or B, 1 or N, S, total] (optional).
// Outputs: [B, S, N d] and present_key, present_value [B, KV, max(P, total), d]. Bound to the past's own
// buffers (the runtime's in-place cache), the present is the past: each call's S keys and values are written at
// rows seqlens_k + 1 - S .. seqlens_k, nothing else moves. Given other buffers, the past's rows are copied first.
//
//   q', k' = rotate-half rotary at position_ids (cos/sin rows)       scale = 1 / sqrt(d) unless given
//   query row s of head h attends to keys 0 .. seqlens_k + 1 - S + s of KV head h / (N / KV):
//   out = softmax(scale q'.k' + bias) . v                             float32 throughout
//
// Keys are scored 8 at a time (8 independent sums reduced together) and the values summed in registers for the
// common head sizes. The exp is a polynomial on 8-float vectors. The vectors are GCC's vector extensions, so one
// source compiles to AVX, SSE or NEON, whichever the build targets. The KV heads are shared out over ONNX
// Runtime's intra-op threads.
// runtimes/native.py builds this file on the machine that runs it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifndef EDGEMFM_NO_ONNXRUNTIME
#include "onnxruntime_op.h"
#endif

namespace {

typedef float f8 __attribute__((vector_size(32)));
typedef int32_t i8v __attribute__((vector_size(32)));

inline f8 load8(const float* p) {
  f8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void store8(float* p, f8 v) { std::memcpy(p, &v, sizeof(v)); }

inline float sum8(f8 v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

inline f8 splat(float x) { return f8{x, x, x, x, x, x, x, x}; }

// The 8 sums of 8 vectors, as one vector: a pairwise tree of shuffles (12) and adds (7), not 8 horizontal sums.
inline f8 sums8(const f8* a) {
  auto pairs = [](f8 x, f8 y) {
    return __builtin_shufflevector(x, y, 0, 8, 2, 10, 4, 12, 6, 14) +
           __builtin_shufflevector(x, y, 1, 9, 3, 11, 5, 13, 7, 15);
  };
  auto quads = [](f8 x, f8 y) {
    return __builtin_shufflevector(x, y, 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(x, y, 2, 3, 10, 11, 6, 7, 14, 15);
  };
  const f8 low = quads(pairs(a[0], a[1]), pairs(a[2], a[3])), high = quads(pairs(a[4], a[5]), pairs(a[6], a[7]));
  return __builtin_shufflevector(low, high, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(low, high, 4, 5, 6, 7, 12, 13, 14, 15);
}

// e^x for x <= 0 (softmax's shifted scores): 2^k e^r with k = floor(x log2(e) + 1/2), |r| <= ln(2)/2, and
// Cephes' degree-7 polynomial for e^r (relative error under 2e-7); under -87 it is 0.
f8 exp8(f8 x) {
  const i8v dead = x < splat(-87.0f);
  x = dead ? splat(-87.0f) : x;
  const f8 t = x * splat(1.44269504088896341f) + splat(0.5f);
  i8v k = __builtin_convertvector(t, i8v);                // rounds toward zero
  k = __builtin_convertvector(k, f8) > t ? k - 1 : k;     // floor
  const f8 kf = __builtin_convertvector(k, f8);
  const f8 r = x - kf * splat(0.693145751953125f) - kf * splat(1.428606765330187e-06f);  // ln 2, split
  f8 p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  const i8v bits = (k + 127) << 23;
  f8 power;
  std::memcpy(&power, &bits, sizeof(power));
  return dead ? splat(0.0f) : p * power;
}

struct Shape {
  int64_t B, S, N, KV, d, P, total, present;  // present: the present buffers' rows
  float scale;
  int64_t bias_b, bias_n;  // the bias's batch and head extents (1 or B, 1 or N); 0: no bias
};

// Rotate-half rotary of one head's row at `position` (pairs i, i + d/2).
void rotate(const float* x, const float* cos, const float* sin, int64_t d, float* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    out[i + half] = x[i + half] * cos[i] + x[i] * sin[i];
  }
}

// One query row of one head over n keys: scores = scale q.k + bias, softmax, the weighted sum of the values.
// D, the head size, is a template argument where it is a common one (the loops then live in registers), or 0:
// the size `d` at run time.
template <int D>
void attend_row(const float* q, const float* K, const float* V, int64_t n, int64_t d, float scale, const float* bias,
                float* scores, float* out) {
  constexpr int64_t C = D / 8;
  const int64_t chunks = D ? C : d / 8;
  f8 qv[D ? C : 1];
  if constexpr (D > 0)
    for (int64_t c = 0; c < C; ++c) qv[c] = load8(q + 8 * c);
  int64_t t = 0;
  for (; t + 8 <= n; t += 8) {  // 8 keys at a time: 8 independent sums, reduced together
    f8 acc[8];
    for (int k = 0; k < 8; ++k) acc[k] = splat(0.0f);
    for (int64_t c = 0; c < chunks; ++c) {
      const f8 qc = D ? qv[D ? c : 0] : load8(q + 8 * c);
      for (int k = 0; k < 8; ++k) acc[k] += qc * load8(K + (t + k) * d + 8 * c);
    }
    store8(scores + t, sums8(acc) * splat(scale) + (bias ? load8(bias + t) : splat(0.0f)));
  }
  for (; t < n; ++t) {
    f8 acc = splat(0.0f);
    for (int64_t c = 0; c < chunks; ++c) acc += (D ? qv[D ? c : 0] : load8(q + 8 * c)) * load8(K + t * d + 8 * c);
    scores[t] = sum8(acc) * scale + (bias ? bias[t] : 0.0f);
  }
  f8 highs = splat(-std::numeric_limits<float>::infinity());  // the max and the sum kept as vectors: no chain
  for (t = 0; t + 8 <= n; t += 8) {                            // of scalar steps through every key
    const f8 x = load8(scores + t);
    highs = x > highs ? x : highs;
  }
  float top = std::max(std::max(std::max(highs[0], highs[1]), std::max(highs[2], highs[3])),
                       std::max(std::max(highs[4], highs[5]), std::max(highs[6], highs[7])));
  for (int64_t u = t; u < n; ++u) top = std::max(top, scores[u]);
  if (top == -std::numeric_limits<float>::infinity()) top = 0.0f;  // every key masked: zeros, no NaN
  f8 sums = splat(0.0f);
  for (t = 0; t + 8 <= n; t += 8) {
    const f8 e = exp8(load8(scores + t) - splat(top));
    store8(scores + t, e);
    sums += e;
  }
  float total = sum8(sums);
  for (; t < n; ++t) total += (scores[t] = std::exp(scores[t] - top));
  const float inverse = total > 0.0f ? 1.0f / total : 0.0f;
  if constexpr (D > 0) {
    f8 acc[C];
    for (int64_t c = 0; c < C; ++c) acc[c] = splat(0.0f);
    for (int64_t u = 0; u < n; ++u) {
      const f8 w = splat(scores[u]);
      for (int64_t c = 0; c < C; ++c) acc[c] += w * load8(V + u * D + 8 * c);
    }
    for (int64_t c = 0; c < C; ++c) store8(out + 8 * c, acc[c] * splat(inverse));
  } else {
    std::fill(out, out + d, 0.0f);
    for (int64_t u = 0; u < n; ++u) {
      const f8 w = splat(scores[u] * inverse);
      for (int64_t c = 0; c < chunks; ++c) store8(out + 8 * c, load8(out + 8 * c) + w * load8(V + u * d + 8 * c));
    }
  }
}

using Row = void (*)(const float*, const float*, const float*, int64_t, int64_t, float, const float*, float*, float*);

Row row_for(int64_t d) {
  switch (d) {
    case 32: return attend_row<32>;
    case 64: return attend_row<64>;
    case 80: return attend_row<80>;
    case 96: return attend_row<96>;
    case 128: return attend_row<128>;
    default: return attend_row<0>;
  }
}

// One batch row and KV head: its new keys and values written, then its query heads' S rows attended.
void head(const Shape& s, int64_t b, int64_t g, const float* packed, const int32_t* seqlens, const float* cos_cache,
          const float* sin_cache, const int64_t* positions, const float* bias, float* keys, float* values,
          float* out) {
  const int64_t d = s.d, group = s.N / s.KV, width = (s.N + 2 * s.KV) * d;
  const int64_t past = int64_t(seqlens[b]) + 1 - s.S;
  float* K = keys + (b * s.KV + g) * s.present * d;
  float* V = values + (b * s.KV + g) * s.present * d;
  for (int64_t i = 0; i < s.S; ++i) {
    const float* row = packed + (b * s.S + i) * width;
    const int64_t position = positions[b * s.S + i];
    const float *c = cos_cache + position * (d / 2), *n = sin_cache + position * (d / 2);
    rotate(row + (s.N + g) * d, c, n, d, K + (past + i) * d);
    std::memcpy(V + (past + i) * d, row + (s.N + s.KV + g) * d, d * sizeof(float));
  }
  const Row attend = row_for(d);
  std::vector<float> q(d), scores(past + s.S);
  for (int64_t i = 0; i < s.S; ++i) {
    const float* row = packed + (b * s.S + i) * width;
    const int64_t position = positions[b * s.S + i], seen = past + i + 1;
    const float *c = cos_cache + position * (d / 2), *n = sin_cache + position * (d / 2);
    for (int64_t h = g * group; h < (g + 1) * group; ++h) {
      rotate(row + h * d, c, n, d, q.data());
      const float* add = nullptr;
      if (bias) {
        const int64_t bb = s.bias_b == 1 ? 0 : b, bn = s.bias_n == 1 ? 0 : h;
        add = bias + ((bb * s.bias_n + bn) * s.S + i) * s.total;
      }
      attend(q.data(), K, V, seen, d, s.scale, add, scores.data(), out + ((b * s.S + i) * s.N + h) * d);
    }
  }
}

}  // namespace

extern "C" {

// The op on raw buffers (keys and values: the present buffers, the past's rows already in them); one thread.
void edgemfm_attention(const float* packed, const int32_t* seqlens, const float* cos_cache, const float* sin_cache,
                       const int64_t* positions, const float* bias, int64_t bias_b, int64_t bias_n, int64_t B,
                       int64_t S, int64_t N, int64_t KV, int64_t d, int64_t present, int64_t total, float scale,
                       float* keys, float* values, float* out) {
  const Shape s{B, S, N, KV, d, present, total, present, scale, bias ? bias_b : 0, bias ? bias_n : 0};
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < KV; ++g) head(s, b, g, packed, seqlens, cos_cache, sin_cache, positions, bias, keys,
                                          values, out);
}

}  // extern "C"

#ifndef EDGEMFM_NO_ONNXRUNTIME

// ONNX Runtime's custom-op glue: domain "edgemfm.attention", op Attention: GroupQueryAttention's inputs and
// outputs, with attributes num_heads, kv_num_heads and scale (optional).
namespace {

using namespace edgemfm_ort;

struct Heads {
  int64_t N = 0, KV = 0;
  float scale = 0.0f;  // 0: 1 / sqrt(d)
};

void* create(const OrtKernelInfo* info, OrtStatusPtr* status) {
  Heads h;
  if ((*status = api->KernelInfoGetAttribute_int64(info, "num_heads", &h.N))) return nullptr;
  if ((*status = api->KernelInfoGetAttribute_int64(info, "kv_num_heads", &h.KV))) return nullptr;
  if (OrtStatusPtr absent = api->KernelInfoGetAttribute_float(info, "scale", &h.scale)) {
    api->ReleaseStatus(absent);
    h.scale = 0.0f;
  }
  if (h.N < 1 || h.KV < 1 || h.N % h.KV) {
    *status = fail("edgemfm.Attention: num_heads must be a positive multiple of kv_num_heads");
    return nullptr;
  }
  return new Heads(h);
}

struct Job {
  const Shape* s;
  const float *packed, *cos, *sin, *bias;
  const int32_t* seqlens;
  const int64_t* positions;
  float *keys, *values, *out;
};

void run_head(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  head(*j.s, int64_t(task) / j.s->KV, int64_t(task) % j.s->KV, j.packed, j.seqlens, j.cos, j.sin, j.positions,
       j.bias, j.keys, j.values, j.out);
}

OrtStatusPtr attend(void* state, OrtKernelContext* context) {
  const Heads& h = *static_cast<Heads*>(state);
  const OrtValue *packed, *key, *value, *past_k, *past_v, *seqlens, *total, *cos, *sin, *positions, *bias;
  const float *packed_data, *unused, *past_k_data, *past_v_data, *cos_data, *sin_data, *bias_data;
  const int32_t *seqlens_data, *total_data;
  const int64_t* position_data;
  EDGEMFM_TRY(input(context, 0, &packed, &packed_data));
  EDGEMFM_TRY(input(context, 1, &key, &unused));
  EDGEMFM_TRY(input(context, 2, &value, &unused));
  EDGEMFM_TRY(input(context, 3, &past_k, &past_k_data));
  EDGEMFM_TRY(input(context, 4, &past_v, &past_v_data));
  EDGEMFM_TRY(input(context, 5, &seqlens, &seqlens_data));
  EDGEMFM_TRY(input(context, 6, &total, &total_data));
  EDGEMFM_TRY(input(context, 7, &cos, &cos_data));
  EDGEMFM_TRY(input(context, 8, &sin, &sin_data));
  EDGEMFM_TRY(input(context, 9, &positions, &position_data));
  EDGEMFM_TRY(input(context, 10, &bias, &bias_data));
  if (key || value) return fail("edgemfm.Attention: q, k and v come packed in the first input");
  std::vector<int64_t> dims, past_dims, table_dims, bias_dims;
  int64_t count = 0, past_count = 0, table = 0, rows = 0;
  EDGEMFM_TRY(shape_of(packed, dims, count));
  EDGEMFM_TRY(shape_of(past_k, past_dims, past_count));
  EDGEMFM_TRY(shape_of(cos, table_dims, table));
  EDGEMFM_TRY(shape_of(seqlens, bias_dims, rows));
  if (dims.size() != 3 || dims[2] % (h.N + 2 * h.KV) || past_dims.size() != 4)
    return fail("edgemfm.Attention: the packed input is not [B, S, (N + 2 KV) d] or the past not [B, KV, P, d]");
  Shape s{dims[0], dims[1], h.N, h.KV, dims[2] / (h.N + 2 * h.KV), past_dims[2], *total_data, 0, h.scale, 0, 0};
  s.present = std::max(s.P, s.total);
  if (s.d % 8 || past_dims[0] != s.B || past_dims[1] != s.KV || past_dims[3] != s.d || rows != s.B ||
      table_dims.size() != 2 || table_dims[1] * 2 != s.d)
    return fail("edgemfm.Attention: the past, seqlens_k or cos/sin shapes do not match the packed input's heads");
  for (int64_t b = 0; b < s.B; ++b) {
    const int64_t last = seqlens_data[b];
    if (last + 1 - s.S < 0 || last >= s.present || last >= s.total)
      return fail("edgemfm.Attention: seqlens_k is outside the cache");
    for (int64_t i = 0; i < s.S; ++i)
      if (position_data[b * s.S + i] < 0 || position_data[b * s.S + i] >= table_dims[0])
        return fail("edgemfm.Attention: a position is outside the cos/sin table");
  }
  if (bias) {
    EDGEMFM_TRY(shape_of(bias, bias_dims, count));
    const bool batch = bias_dims.size() == 4 && (bias_dims[0] == 1 || bias_dims[0] == s.B);
    if (!batch || (bias_dims[1] != 1 && bias_dims[1] != s.N) || bias_dims[2] != s.S || bias_dims[3] != s.total)
      return fail("edgemfm.Attention: the attention bias is not [1 or B, 1 or N, S, total]");
    s.bias_b = bias_dims[0];
    s.bias_n = bias_dims[1];
  }
  s.scale = h.scale > 0.0f ? h.scale : 1.0f / std::sqrt(float(s.d));
  float *out, *keys, *values;
  EDGEMFM_TRY(output(context, 0, {s.B, s.S, s.N * s.d}, &out));
  EDGEMFM_TRY(output(context, 1, {s.B, s.KV, s.present, s.d}, &keys));
  EDGEMFM_TRY(output(context, 2, {s.B, s.KV, s.present, s.d}, &values));
  if (keys != past_k_data || values != past_v_data) {  // not the in-place cache: the past's rows first
    for (int64_t bg = 0; bg < s.B * s.KV; ++bg) {
      std::memcpy(keys + bg * s.present * s.d, past_k_data + bg * s.P * s.d, s.P * s.d * sizeof(float));
      std::memcpy(values + bg * s.present * s.d, past_v_data + bg * s.P * s.d, s.P * s.d * sizeof(float));
    }
  }
  Job job{&s, packed_data, cos_data, sin_data, bias_data, seqlens_data, position_data, keys, values, out};
  return api->KernelContext_ParallelFor(context, run_head, size_t(s.B * s.KV), 0, &job);
}

void destroy(void* state) { delete static_cast<Heads*>(state); }

constexpr auto FLOAT = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INT32 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
               INT64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
const Description ATTENTION{
    "Attention",
    {FLOAT, FLOAT, FLOAT, FLOAT, FLOAT, INT32, INT32, FLOAT, FLOAT, INT64, FLOAT},
    {FLOAT, FLOAT, FLOAT},
    {false, true, true, false, false, false, false, false, false, false, true},
    create,
    attend,
    destroy};
Op attention_op(&ATTENTION);

}  // namespace

extern "C" OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
  return edgemfm_ort::register_ops(options, base, "edgemfm.attention", {&attention_op});
}

#endif  // EDGEMFM_NO_ONNXRUNTIME
