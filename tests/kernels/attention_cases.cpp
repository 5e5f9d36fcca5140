// edgemfm's attention kernel (runtimes/kernels/attention.cpp) on cases written by the test, for running one build
// of it where Python cannot load it (tests/test_attention_kernel.py: an aarch64 build under qemu). argv[1] holds
// cases, each int64 S, N, KV, d, present, total, table (cos/sin rows), then float32 packed [S, (N + 2 KV) d],
// keys and values [KV, present, d] (the past's rows in place), cos and sin [table, d/2], int32 seqlens_k and int64
// position_ids [S]; argv[2] gets each case's float32 output [S, N d], keys and values.

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

extern "C" void edgemfm_attention(const float* packed, const int32_t* seqlens, const float* cos_cache,
                                  const float* sin_cache, const int64_t* positions, const float* bias, int64_t bias_b,
                                  int64_t bias_n, int64_t B, int64_t S, int64_t N, int64_t KV, int64_t d,
                                  int64_t present, int64_t total, float scale, float* keys, float* values, float* out);

template <class T>
bool read(FILE* in, std::vector<T>& v, size_t n) {
  v.resize(n);
  return std::fread(v.data(), sizeof(T), n, in) == n;
}

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 3;
  int64_t c[7];
  while (std::fread(c, sizeof(int64_t), 7, in) == 7) {
    const int64_t S = c[0], N = c[1], KV = c[2], d = c[3], present = c[4], total = c[5], table = c[6];
    std::vector<float> packed, keys, values, cos, sin, result(S * N * d);
    std::vector<int32_t> seqlens;
    std::vector<int64_t> positions;
    if (!read(in, packed, S * (N + 2 * KV) * d) || !read(in, keys, KV * present * d) ||
        !read(in, values, KV * present * d) || !read(in, cos, table * d / 2) || !read(in, sin, table * d / 2) ||
        !read(in, seqlens, 1) || !read(in, positions, S))
      return 4;
    edgemfm_attention(packed.data(), seqlens.data(), cos.data(), sin.data(), positions.data(), nullptr, 0, 0, 1, S, N,
                      KV, d, present, total, 1.0f / std::sqrt(float(d)), keys.data(), values.data(), result.data());
    std::fwrite(result.data(), 4, result.size(), out);
    std::fwrite(keys.data(), 4, keys.size(), out);
    std::fwrite(values.data(), 4, values.size(), out);
  }
  std::fclose(out);
  return 0;
}
