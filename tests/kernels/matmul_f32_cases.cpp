// edgemfm's fp32 kernels (runtimes/kernels/matmul_f32.cpp) on cases written by the test, for running one build of
// them where Python cannot load it (tests/test_matmul_f32_kernel.py: an aarch64 build under qemu). argv[1] holds
// cases, each int64 M, K, N, n, then float32 a [M, K], float32 tiles [ceil(N/32), K, 32] and int64 ids [n];
// argv[2] gets each case's float32 y [M, N] and gathered rows [n, K].

#include <cstdint>
#include <cstdio>
#include <vector>

extern "C" void edgemfm_matmul_f32(const float* a, const float* weights, int64_t M, int64_t K, int64_t N, float* y);
extern "C" void edgemfm_gather_f32(const int64_t* ids, int64_t n, const float* weights, int64_t K, float* out);

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 3;
  int64_t dims[4];
  while (std::fread(dims, sizeof(int64_t), 4, in) == 4) {
    const int64_t M = dims[0], K = dims[1], N = dims[2], n = dims[3];
    std::vector<float> a(M * K), y(M * N), rows(n * K), tiles((N + 31) / 32 * K * 32);
    std::vector<int64_t> ids(n);
    if (std::fread(a.data(), 4, a.size(), in) != a.size()) return 4;
    if (std::fread(tiles.data(), 4, tiles.size(), in) != tiles.size()) return 4;
    if (std::fread(ids.data(), 8, ids.size(), in) != ids.size()) return 4;
    edgemfm_matmul_f32(a.data(), tiles.data(), M, K, N, y.data());
    edgemfm_gather_f32(ids.data(), n, tiles.data(), K, rows.data());
    std::fwrite(y.data(), 4, y.size(), out);
    std::fwrite(rows.data(), 4, rows.size(), out);
  }
  std::fclose(out);
  return 0;
}
