// The small-row matmul of decode and verification passes: y (M, N) = x (M, K) @ W^T (+ b) for M <= a few dozen.
//
// Why: a target pass over k + 1 <= 17 tokens multiplies a handful of rows by every weight matrix. The library
// GEMMs re-stream the weights per block of rows or fall back to scalar code for so few rows, so a 9-token pass
// cost ~2x a 1-token one on 2 CPU cores although both are bound by streaming the weights from memory. Here every
// weight is read from memory once per call and applied to all M rows while it sits in a register: the pass stays
// memory-bound, and T(9) is close to T(1).
//
// Layout: W (N, K) is prepacked once into panels of 16 output rows, transposed so that a panel is contiguous over
// the input dimension: packed (ceil(N / 16), K, 16), packed[p, k, j] = W[16 p + j, k] (zero past N). A tile's
// "sub-panel" is the whole 16-wide panel for AVX-512 (one zmm) and AVX2 (two ymm), half of it (8 floats, k-stride
// 16) for the portable loop.
//
// Exactness: every output y[m, n] is one fused multiply-add chain over k = 0 .. K-1 in order, whatever M, the
// number of threads, the sub-panels computed together or the instruction set. So a row's result never depends
// on the other rows of the call (a 9-token verification pass computes each token's projections exactly as a
// 1-token pass would), and the AVX-512, AVX2 and portable paths agree bit for bit. Against the library GEMM (which
// sums in blocks) results differ only by float rounding.
//
// Registers: a tile keeps M x P accumulators (M rows, P panels at once), P weight vectors and one broadcast of x:
// M x P + P + 1 <= 32 zmm (AVX-512), twice the accumulators and weights in 16 ymm (AVX2: at most 6 rows a tile). P > 1 for small M gives the FMA units independent
// chains to overlap their latency (one row alone would wait 4 cycles per FMA); rows beyond a tile's budget go
// in further tiles over the same sub-panels, which are then read from cache, not memory.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/contiguous.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PARD_X86 1
#endif

namespace {

constexpr int64_t PANEL = 16;  // output rows per packed panel
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 16
#endif
enum Isa : int64_t { PORTABLE = 0, AVX2 = 1, AVX512 = 2 };

int64_t best_isa() {
#ifdef PARD_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
#endif
  return PORTABLE;
}

// Where sub-panel s of width `width` starts in the packed weights: its panel, then its offset inside the panel.
inline const float* sub_panel(const float* packed, int64_t K, int64_t width, int64_t s) {
  const int64_t first = s * width;
  return packed + (first / PANEL) * K * PANEL + first % PANEL;
}

// One call of a tile: rows [0, M) of the activations, stored transposed (xt[k * ldx + m]: a k-step's M values
// share one or two cache lines, where M rows of x would touch M lines, and for K = 1536 map onto 2 L1 sets),
// sub-panels s0 .. s0 + P, results into y (row stride ldy, column 0 = the first output of sub-panel s0), plus
// bias[0 .. P * width) when given.
struct Tile {
  const float* xt;
  int64_t ldx;
  int64_t K;
  const float* packed;
  int64_t s0;
  float* y;
  int64_t ldy;
  const float* bias;
};

#ifdef PARD_X86
template <int M, int P>
__attribute__((target("avx512f"))) void tile_avx512(const Tile& t) {
  const float* w[P];
  for (int p = 0; p < P; ++p) w[p] = sub_panel(t.packed, t.K, 16, t.s0 + p);
  __m512 acc[M][P];
#pragma GCC unroll 32
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[m][p] = _mm512_setzero_ps();
  for (int64_t k = 0; k < t.K; ++k) {
    __m512 wv[P];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(w[p] + (k + PREFETCH_AHEAD) * PANEL), _MM_HINT_T0);
      wv[p] = _mm512_loadu_ps(w[p] + k * PANEL);
    }
#pragma GCC unroll 32
    for (int m = 0; m < M; ++m) {
      const __m512 xb = _mm512_set1_ps(t.xt[k * t.ldx + m]);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) acc[m][p] = _mm512_fmadd_ps(xb, wv[p], acc[m][p]);
    }
  }
  for (int m = 0; m < M; ++m)
    for (int p = 0; p < P; ++p) {
      __m512 out = acc[m][p];
      if (t.bias) out = _mm512_add_ps(out, _mm512_loadu_ps(t.bias + p * 16));
      _mm512_storeu_ps(t.y + m * t.ldy + p * 16, out);
    }
}

template <int M, int P>
__attribute__((target("avx2,fma"))) void tile_avx2(const Tile& t) {
  // A whole 16-wide panel per sub-panel, as two 8-wide halves: each 64-byte line of weights is used at once.
  const float* w[P];
  for (int p = 0; p < P; ++p) w[p] = sub_panel(t.packed, t.K, 16, t.s0 + p);
  __m256 acc[M][P][2];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) acc[m][p][0] = acc[m][p][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < t.K; ++k) {
    __m256 wv[P][2];
#pragma GCC unroll 8
    for (int p = 0; p < P; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(w[p] + (k + PREFETCH_AHEAD) * PANEL), _MM_HINT_T0);
      wv[p][0] = _mm256_loadu_ps(w[p] + k * PANEL);
      wv[p][1] = _mm256_loadu_ps(w[p] + k * PANEL + 8);
    }
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const __m256 xb = _mm256_set1_ps(t.xt[k * t.ldx + m]);
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) {
        acc[m][p][0] = _mm256_fmadd_ps(xb, wv[p][0], acc[m][p][0]);
        acc[m][p][1] = _mm256_fmadd_ps(xb, wv[p][1], acc[m][p][1]);
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int p = 0; p < P; ++p)
      for (int h = 0; h < 2; ++h) {
        __m256 out = acc[m][p][h];
        if (t.bias) out = _mm256_add_ps(out, _mm256_loadu_ps(t.bias + p * 16 + h * 8));
        _mm256_storeu_ps(t.y + m * t.ldy + p * 16 + h * 8, out);
      }
}
#endif

// The portable path (any CPU): the same chains, one 8-wide sub-panel at a time, any M.
void tile_portable(const Tile& t, int64_t M) {
  const float* w = sub_panel(t.packed, t.K, 8, t.s0);
  for (int64_t m = 0; m < M; ++m) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t k = 0; k < t.K; ++k) {
      const float xv = t.xt[k * t.ldx + m];
      for (int j = 0; j < 8; ++j) acc[j] = std::fma(xv, w[k * PANEL + j], acc[j]);
    }
    for (int j = 0; j < 8; ++j) t.y[m * t.ldy + j] = t.bias ? acc[j] + t.bias[j] : acc[j];
  }
}

using TileFn = void (*)(const Tile&);

// Per instruction set: the vector width, the most rows a tile takes, and how many sub-panels a tile of M rows
// computes at once (P: as many as the registers hold, at most 8), plus the tile functions by M (and P or 1).
struct Kernel {
  int64_t width;
  int64_t max_tile_rows;
  int64_t (*panels_for)(int64_t rows);
  TileFn (*wide)(int64_t rows);    // P = panels_for(rows)
  TileFn (*narrow)(int64_t rows);  // P = 1
};

#ifdef PARD_X86
constexpr int64_t p512(int64_t m) { return std::min<int64_t>(8, 31 / (m + 1)); }  // M*P + P + 1 <= 32
constexpr int64_t p256(int64_t m) { return std::min<int64_t>(8, 15 / (2 * m + 2)); }  // 2MP + 2P + 1 <= 16

template <int M>
TileFn wide512() { return &tile_avx512<M, p512(M)>; }
template <int M>
TileFn narrow512() { return &tile_avx512<M, 1>; }
template <int M>
TileFn wide256() { return &tile_avx2<M, p256(M)>; }
template <int M>
TileFn narrow256() { return &tile_avx2<M, 1>; }

template <TileFn (*... Fs)()>
TileFn pick(int64_t rows) {
  static const TileFn table[] = {Fs()...};
  return table[rows - 1];
}

#define PARD_ROWS_1_24(F) F<1>, F<2>, F<3>, F<4>, F<5>, F<6>, F<7>, F<8>, F<9>, F<10>, F<11>, F<12>, F<13>, \
    F<14>, F<15>, F<16>, F<17>, F<18>, F<19>, F<20>, F<21>, F<22>, F<23>, F<24>
#define PARD_ROWS_1_6(F) F<1>, F<2>, F<3>, F<4>, F<5>, F<6>

const Kernel KERNEL_AVX512{16, 24, &p512, &pick<PARD_ROWS_1_24(wide512)>, &pick<PARD_ROWS_1_24(narrow512)>};
const Kernel KERNEL_AVX2{16, 6, &p256, &pick<PARD_ROWS_1_6(wide256)>, &pick<PARD_ROWS_1_6(narrow256)>};
#endif

// Sub-panels [begin, end) for all M rows: groups of P sub-panels (the last ones one at a time), and within a group
// the rows in tiles of at most max_tile_rows (a group's weights are then read from memory by the first tile
// only). Outputs past N (the zero padding of the last panel) go to a scratch row block, not to y.
void run_range(const at::Tensor& xt, const at::Tensor& packed, const float* bias, at::Tensor& y, int64_t isa,
               int64_t begin, int64_t end) {
  const int64_t K = xt.size(0), M = xt.size(1), N = y.size(1);
  const float* xp = xt.data_ptr<float>();
  const float* wp = packed.data_ptr<float>();
  float* yp = y.data_ptr<float>();
#ifdef PARD_X86
  const Kernel* kernel = isa == AVX512 ? &KERNEL_AVX512 : isa == AVX2 ? &KERNEL_AVX2 : nullptr;
#else
  const Kernel* kernel = nullptr;
#endif
  const int64_t width = kernel ? kernel->width : 8;
  const int64_t tile_rows = kernel ? kernel->max_tile_rows : M;
  const int64_t group = kernel ? kernel->panels_for(std::min(M, tile_rows)) : 1;
  std::vector<float> scratch;
  for (int64_t s = begin; s < end;) {
    const int64_t count = end - s >= group ? group : 1;
    const int64_t n0 = s * width;
    const bool spills = n0 + count * width > N;  // the zero-padded tail of the last panel
    if (spills) scratch.assign(static_cast<size_t>(M * count * width), 0.0f);
    for (int64_t m0 = 0; m0 < M; m0 += tile_rows) {
      const int64_t rows = std::min(tile_rows, M - m0);
      Tile t{xp + m0, M, K, wp, s, spills ? scratch.data() + m0 * count * width : yp + m0 * N + n0,
             spills ? count * width : N, bias ? bias + n0 : nullptr};
      if (!kernel) {
        tile_portable(t, rows);
      } else if (count > 1) {  // a group of P > 1 sub-panels: only when one tile holds all M rows
        kernel->wide(rows)(t);
      } else {
        kernel->narrow(rows)(t);
      }
    }
    if (spills)
      for (int64_t m = 0; m < M; ++m)
        std::memcpy(yp + m * N + n0, scratch.data() + m * count * width,
                    sizeof(float) * static_cast<size_t>(std::max<int64_t>(0, N - n0)));
    s += count;
  }
}

at::Tensor small_rows_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                             int64_t out_features, int64_t isa) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "small_rows_linear: x must be a contiguous 2-D float32 CPU tensor");
  TORCH_CHECK(packed.dim() == 3 && packed.size(2) == PANEL && packed.size(1) == x.size(1) &&
                  packed.scalar_type() == at::kFloat && packed.is_contiguous(),
              "small_rows_linear: packed must be (ceil(N/16), K, 16) float32 with K = x.size(1)");
  TORCH_CHECK(out_features <= packed.size(0) * PANEL, "small_rows_linear: out_features exceeds the packed panels");
  if (isa < 0) isa = best_isa();
  TORCH_CHECK(isa <= best_isa(), "small_rows_linear: this CPU cannot run instruction set ", isa);
  const float* bias_ptr = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == packed.size(0) * PANEL,
                "small_rows_linear: bias must be float32, zero-padded to the packed width");
    bias_ptr = bias->data_ptr<float>();
  }
  at::Tensor y = at::empty({x.size(0), out_features}, x.options());
  if (x.size(0) == 0 || out_features == 0) return y;
  const at::Tensor xt = x.t().contiguous();  // (K, M): a few dozen KB, once per call
  const int64_t width = isa == PORTABLE ? 8 : PANEL;  // what a tile's sub-panel holds (run_range agrees)
  const int64_t sub_panels = (out_features + width - 1) / width;
  // Each thread takes a contiguous run of sub-panels (even shares, so 2 threads on a 36-panel matrix get 18 each).
  const int64_t grain = (sub_panels + at::get_num_threads() - 1) / at::get_num_threads();
  at::parallel_for(0, sub_panels, grain, [&](int64_t begin, int64_t end) {
    run_range(xt, packed, bias_ptr, y, isa, begin, end);
  });
  return y;
}

int64_t cpu_isa() { return best_isa(); }

}  // namespace

TORCH_LIBRARY(pard, m) {
  m.def("small_rows_linear(Tensor x, Tensor packed, Tensor? bias, int out_features, int isa) -> Tensor");
  m.def("cpu_isa() -> int");
}

TORCH_LIBRARY_IMPL(pard, CPU, m) { m.impl("small_rows_linear", &small_rows_linear); }

TORCH_LIBRARY_IMPL(pard, CatchAll, m) { m.impl("cpu_isa", &cpu_isa); }
