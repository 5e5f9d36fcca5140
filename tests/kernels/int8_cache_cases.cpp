// edgemfm's int8 cache kernels (runtimes/kernels/int8_cache.cpp) on fixed pseudo-random cases, for comparing
// one build of them with another (tests/test_int8_cache_kernel.py: an aarch64 build run under qemu against
// this machine's). Writes every cache buffer to argv[1] (to compare byte for byte) and every attention output
// to argv[2] (float32, to compare within float rounding).

#include <cstdint>
#include <cstdio>
#include <vector>

extern "C" void edgemfm_cache_int8(const float* value, int64_t seq, int64_t kv, int64_t d, int64_t capacity,
                                   int64_t start, bool keys, int8_t* cache, float* scales, int8_t* zeros);
extern "C" void edgemfm_sdpa_int8(const float* query, int64_t seq, int64_t heads, int64_t d, const int8_t* keys,
                                  const float* ks, const int8_t* kz, const int8_t* values, const float* vs,
                                  const int8_t* vz, int64_t kv, int64_t capacity, int64_t start, float scale,
                                  float* out);

namespace {
uint64_t state = 0x9E3779B97F4A7C15ull;

float uniform() {  // xorshift64*: the same numbers on every machine, in [-1, 1)
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  return float((state * 0x2545F4914F6CDD1Dull) >> 40) / float(1 << 23) - 1.0f;
}

struct Case {
  int64_t seq, heads, kv, d, capacity, start;
};
}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  FILE* caches = std::fopen(argv[1], "wb");
  FILE* outputs = std::fopen(argv[2], "wb");
  const Case cases[] = {{1, 9, 3, 64, 2048, 1023}, {1, 9, 3, 64, 104, 63}, {7, 4, 2, 32, 64, 10},
                        {5, 8, 8, 80, 40, 3},      {1, 4, 1, 96, 304, 298}, {16, 9, 3, 64, 512, 100},
                        {9, 6, 2, 20, 24, 0}};
  for (const Case& c : cases) {
    std::vector<int8_t> keys(c.kv * c.capacity * c.d), values(keys.size()), kz(c.kv * c.capacity, 0),
        vz(kz.size(), 0);
    std::vector<float> ks(kz.size(), 1.0f), vs(kz.size(), 1.0f);
    const int64_t filled = c.start + c.seq;
    for (int64_t first = 0; first < filled; first += 7) {
      const int64_t n = filled - first < 7 ? filled - first : 7;
      for (int kind = 0; kind < 2; ++kind) {
        std::vector<float> rows(n * c.kv * c.d);
        for (int64_t r = 0; r < n * c.kv; ++r) {
          const float spread = 2.0f * (uniform() + 1.0f), shift = uniform();
          for (int64_t j = 0; j < c.d; ++j) rows[r * c.d + j] = spread * uniform() + shift;
        }
        if (kind == 0)
          edgemfm_cache_int8(rows.data(), n, c.kv, c.d, c.capacity, first, true, keys.data(), ks.data(), kz.data());
        else
          edgemfm_cache_int8(rows.data(), n, c.kv, c.d, c.capacity, first, false, values.data(), vs.data(), vz.data());
      }
    }
    std::vector<float> query(c.seq * c.heads * c.d), out(query.size());
    for (float& x : query) x = 3.0f * uniform();
    edgemfm_sdpa_int8(query.data(), c.seq, c.heads, c.d, keys.data(), ks.data(), kz.data(), values.data(), vs.data(),
                      vz.data(), c.kv, c.capacity, c.start, 0.125f, out.data());
    std::fwrite(keys.data(), 1, keys.size(), caches);
    std::fwrite(values.data(), 1, values.size(), caches);
    std::fwrite(ks.data(), sizeof(float), ks.size(), caches);
    std::fwrite(vs.data(), sizeof(float), vs.size(), caches);
    std::fwrite(kz.data(), 1, kz.size(), caches);
    std::fwrite(vz.data(), 1, vz.size(), caches);
    std::fwrite(out.data(), sizeof(float), out.size(), outputs);
  }
  std::fclose(caches);
  std::fclose(outputs);
  return 0;
}
