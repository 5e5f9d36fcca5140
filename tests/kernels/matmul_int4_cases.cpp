// edgemfm's int4 and int8 kernels (runtimes/kernels/matmul_int4.cpp) on cases written by the test, for running one
// build of them where Python cannot load it (tests/test_matmul_int4_kernel.py: an aarch64 build under qemu).
// argv[1] holds cases, each int64 bits, M, K, N, G, n, then float32 a [M, K], uint8 records
// [ceil(N/16), ceil(K/G), 16 G bits / 8 + 64] and int64 ids [n]; argv[2] gets each case's float32 y [M, N] and
// gathered rows [n, K].

#include <cstdint>
#include <cstdio>
#include <vector>

extern "C" void edgemfm_matmul_int4(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K,
                                    int64_t N, int64_t G, float* y);
extern "C" void edgemfm_gather_int4(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G,
                                    float* out);
extern "C" void edgemfm_matmul_int8(const float* a, const uint8_t* weights, const float* bias, int64_t M, int64_t K,
                                    int64_t N, int64_t G, float* y);
extern "C" void edgemfm_gather_int8(const int64_t* ids, int64_t n, const uint8_t* weights, int64_t K, int64_t G,
                                    float* out);

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* in = std::fopen(argv[1], "rb");
  FILE* out = std::fopen(argv[2], "wb");
  if (!in || !out) return 3;
  int64_t dims[6];
  while (std::fread(dims, sizeof(int64_t), 6, in) == 6) {
    const int64_t bits = dims[0], M = dims[1], K = dims[2], N = dims[3], G = dims[4], n = dims[5];
    if (bits != 4 && bits != 8) return 5;
    std::vector<float> a(M * K), y(M * N), rows(n * K);
    std::vector<uint8_t> records((N + 15) / 16 * ((K + G - 1) / G) * (16 * G * bits / 8 + 64));
    std::vector<int64_t> ids(n);
    if (std::fread(a.data(), 4, a.size(), in) != a.size()) return 4;
    if (std::fread(records.data(), 1, records.size(), in) != records.size()) return 4;
    if (std::fread(ids.data(), 8, ids.size(), in) != ids.size()) return 4;
    (bits == 8 ? edgemfm_matmul_int8 : edgemfm_matmul_int4)(a.data(), records.data(), nullptr, M, K, N, G, y.data());
    (bits == 8 ? edgemfm_gather_int8 : edgemfm_gather_int4)(ids.data(), n, records.data(), K, G, rows.data());
    std::fwrite(y.data(), 4, y.size(), out);
    std::fwrite(rows.data(), 4, rows.size(), out);
  }
  std::fclose(out);
  return 0;
}
