// huginn::packed_linear: y = x @ W^T for a few rows of x (decoding), fp32, CPU.
//
// W (N, K) is packed once per `generate` into column blocks of 32: packed[b, k, j] = W[32 b + j, k]
// (N padded to a multiple of 32 with zeros), so each block is one contiguous stream and every
// weight is read once per call for up to 8 rows. Each (row group, block) keeps 2 x 8 vector
// accumulators in registers; the block's stream is prefetched ahead, which is what makes the
// difference at batch 8 (the products are too small for the CPU's own prefetcher to keep up).
// Built at first use with -march=native (see packed_linear.py); GCC/Clang vector extensions keep
// it free of intrinsics, so AVX2 or NEON machines get 2 or 4 narrower vectors per `v16`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

namespace {

typedef float v16 __attribute__((vector_size(64)));
constexpr int64_t kBlock = 32;      // columns per block: two v16
constexpr int64_t kRows = 8;        // rows per pass over the weights
constexpr int64_t kPrefetch = 64;   // k steps ahead (8 KiB): measured best of 8 / 24 / 64 at batch 8

inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof r); return r; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }

// y[0:MR, 0:valid] = x[0:MR, :] @ block, block (K, 32) contiguous
template <int MR>
void block_product(const float* x, int64_t K, const float* w, float* y, int64_t ldy, int64_t valid) {
  v16 lo[MR], hi[MR];
  for (int m = 0; m < MR; ++m) lo[m] = hi[m] = v16{};
  for (int64_t k = 0; k < K; ++k) {
    const float* wk = w + k * kBlock;
    __builtin_prefetch(wk + kPrefetch * kBlock);
    __builtin_prefetch(wk + kPrefetch * kBlock + 16);
    const v16 w0 = load(wk), w1 = load(wk + 16);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m) {
      const float xv = x[m * K + k];
      lo[m] += xv * w0;
      hi[m] += xv * w1;
    }
  }
  for (int m = 0; m < MR; ++m) {
    if (valid == kBlock) {
      store(y + m * ldy, lo[m]);
      store(y + m * ldy + 16, hi[m]);
    } else {  // the last, zero-padded block: only its real columns are written
      float tmp[kBlock];
      store(tmp, lo[m]);
      store(tmp + 16, hi[m]);
      std::memcpy(y + m * ldy, tmp, valid * sizeof(float));
    }
  }
}

template <int MR>
void rows_product(const float* x, int64_t K, const float* packed, int64_t N, float* y) {
  const int64_t blocks = (N + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      block_product<MR>(x, K, packed + b * K * kBlock, y + b * kBlock, N, std::min(kBlock, N - b * kBlock));
  });
}

using RowsFn = void (*)(const float*, int64_t, const float*, int64_t, float*);
constexpr RowsFn kRowsFns[kRows] = {rows_product<1>, rows_product<2>, rows_product<3>, rows_product<4>,
                                    rows_product<5>, rows_product<6>, rows_product<7>, rows_product<8>};

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && packed.scalar_type() == at::kFloat, "packed_linear: fp32 only");
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), "packed_linear: CPU tensors only");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == kBlock && packed.is_contiguous(),
              "packed_linear: packed weight must be (blocks, K, 32) contiguous");
  const int64_t K = x.size(-1);
  TORCH_CHECK(K > 0, "packed_linear: empty input rows");
  TORCH_CHECK(packed.size(1) == K && packed.size(0) * kBlock >= n && packed.size(0) * kBlock < n + kBlock,
              "packed_linear: packed weight does not match the input width or the output size");
  // a contiguous input (what the decoding graphs pass) is read in place: no reshaped copy, no view
  const at::Tensor x2 = x.is_contiguous() ? x : x.contiguous();
  const int64_t M = x2.numel() / K;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  at::Tensor y = at::empty(shape, x.options());
  const float* xp = x2.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int64_t rows = std::min(kRows, M - m0);
    kRowsFns[rows - 1](xp + m0 * K, K, packed.data_ptr<float>(), n, yp + m0 * n);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY(huginn, m) { m.def("packed_linear(Tensor x, Tensor packed, int n) -> Tensor"); }

TORCH_LIBRARY_IMPL(huginn, CPU, m) { m.impl("packed_linear", &packed_linear); }
