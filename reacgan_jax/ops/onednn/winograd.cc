// Winograd F(m x m, 3 x 3) tile transforms for float32 3x3 stride-1 convolutions (ops/winograd.py),
// as one XLA FFI custom call with four kinds; the products between them are XLA dots.
//
// Why: a direct 3x3 convolution spends 9 multiply-adds per output and input channel; Winograd's
// F(4x4, 3x3) spends 36 per 16 outputs (2.25), F(2x2, 3x3) 16 per 4 (4). On the CPU the float32
// direct convolutions of StyleGAN2's 512-channel blocks are oneDNN's at its peak (issue 28), so
// fewer multiplies is what is left. The transforms are memory-bound loops that XLA compiles into
// dozens of strided-slice fusions (slower than the products they save), hence this file.
//
// For an image x [N, H, W, C] (NHWC), padding (pad_top, pad_left) in front, and an output of
// tiles_h * m rows by tiles_w * m columns, tile t = (n * tiles_h + th) * tiles_w + tw reads the
// (m + 2)^2 window at rows th * m - pad_top + [0, m + 2) and columns tw * m - pad_left + ...
// (zeros outside x). With A = m + 2, P = A * A and T = N * tiles_h * tiles_w:
//   kind 0  input:        V [P, T, C]   = B^T d B per tile of x             (x -> V)
//   kind 1  its transpose: dx [N,H,W,C] = sum over tiles of B g B^T        (V-shaped -> x)
//   kind 2  output:       y [N, tiles_h*m, tiles_w*m, O] = A^T M A per tile  (M [P, T, O] -> y)
//   kind 3  its transpose: dM [P, T, O] = A dy A^T per tile                 (y-shaped -> M)
// with Lavin & Gray's matrices (ops/winograd.py holds the same ones and their definition).
// Every kind is linear and float32 in, float32 out; kind 1 accumulates the overlapping windows
// in a fixed order (per thread a fixed channel range), so results do not depend on threads.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <omp.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <int M>
struct Mats;

template <>
struct Mats<2> {
  static constexpr int A = 4;
  static constexpr float BT[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
  static constexpr float AT[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};
};

template <>
struct Mats<4> {
  static constexpr int A = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0},
                                     {0, 4, -4, -1, 1, 0}, {0, -2, -1, 2, 1, 0},
                                     {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0},
                                     {0, 1, -1, 2, -2, 0},
                                     {0, 1, 1, 4, 4, 0},
                                     {0, 1, -1, 8, -8, 1}};
};

constexpr int kLanes = 16;  // channels per inner step (one AVX-512 register of float32)

// out[r][j][v] = sum_k L[r][k] in[k][j][v] (MixRows) or out[i][r][v] = sum_k L[r][k]
// in[i][k][v]. L is R x K; the loops unroll so that zero coefficients drop out and +-1 ones
// are not multiplied (the products that remain are the exact ones of the definition).
// (Two loops, not one over accessor lambdas: that form compiled to input transforms 2.4x slower,
// session 20.)
template <int R, int K, int S, int NV>
inline void MixRows(const float (&L)[R][K], const float (&in)[K][S][NV], float (&out)[R][S][NV]) {
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int j = 0; j < S; ++j) {
      float acc[NV] = {};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const float c = L[r][k];
        if (c == 0.0f) continue;
        for (int v = 0; v < NV; ++v) acc[v] += c * in[k][j][v];
      }
      for (int v = 0; v < NV; ++v) out[r][j][v] = acc[v];
    }
  }
}

template <int R, int K, int S, int NV>
inline void MixCols(const float (&L)[R][K], const float (&in)[S][K][NV], float (&out)[S][R][NV]) {
#pragma GCC unroll 8
  for (int i = 0; i < S; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      float acc[NV] = {};
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k) {
        const float c = L[r][k];
        if (c == 0.0f) continue;
        for (int v = 0; v < NV; ++v) acc[v] += c * in[i][k][v];
      }
      for (int v = 0; v < NV; ++v) out[i][r][v] = acc[v];
    }
  }
}

// L t L^T for the K x K tile t: L along its rows, then along its columns.
template <int R, int K, int NV>
inline void MixBoth(const float (&L)[R][K], const float (&t)[K][K][NV], float (&out)[R][R][NV]) {
  float rows[R][K][NV];
  MixRows(L, t, rows);
  MixCols(L, rows, out);
}

// The transposed matrix as a constexpr array (for kinds 1 and 3).
template <int R, int K>
struct Transposed {
  float m[K][R];
  constexpr explicit Transposed(const float (&a)[R][K]) : m{} {
    for (int r = 0; r < R; ++r)
      for (int k = 0; k < K; ++k) m[k][r] = a[r][k];
  }
};

struct Geometry {
  int64_t n, h, w, c;       // the image (x, or dx)
  int64_t th, tw;           // tiles per column / row
  int64_t pad_top, pad_left;
  int64_t tiles() const { return n * th * tw; }
};

// Tile t's image, and the image row and column its window starts at (tile * m - padding).
struct Origin {
  int64_t n, y0, x0;
};

inline Origin Locate(const Geometry& g, int64_t t, int m) {
  const int64_t rem = t % (g.th * g.tw);
  return {t / (g.th * g.tw), (rem / g.tw) * m - g.pad_top, (rem % g.tw) * m - g.pad_left};
}

// Channel c0 of image pixel (y, x) of image n, and of tile position p of tile t.
inline int64_t Pixel(const Geometry& g, int64_t n, int64_t y, int64_t x, int64_t c0) {
  return ((n * g.h + y) * g.w + x) * g.c + c0;
}

inline int64_t Slab(const Geometry& g, int p, int64_t t, int64_t c0) {
  return p * g.tiles() * g.c + t * g.c + c0;
}

inline bool Inside(const Geometry& g, int64_t y, int64_t x) {
  return y >= 0 && y < g.h && x >= 0 && x < g.w;
}

// kind 0: V[p][t][c] = (B^T d B)[p] from x's window d (zeros outside x).
template <int M, int NV>
inline void InputTile(const Geometry& g, const float* x, float* v, int64_t t, int64_t c0) {
  constexpr int A = Mats<M>::A;
  const Origin o = Locate(g, t, M);
  float d[A][A][NV], e[A][A][NV];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) {
      if (Inside(g, o.y0 + i, o.x0 + j))
        std::memcpy(d[i][j], x + Pixel(g, o.n, o.y0 + i, o.x0 + j, c0), NV * sizeof(float));
      else
        std::memset(d[i][j], 0, NV * sizeof(float));
    }
  MixBoth(Mats<M>::BT, d, e);
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j)
      std::memcpy(v + Slab(g, i * A + j, t, c0), e[i][j], NV * sizeof(float));
}

// kind 1: accumulate B s B^T of tile t into dx inside the image (the caller owns channels
// [c0, c0 + NV) of dx alone).
template <int M, int NV>
inline void InputTileT(const Geometry& g, const float* v, float* dx, int64_t t, int64_t c0) {
  constexpr int A = Mats<M>::A;
  static constexpr Transposed<A, A> B(Mats<M>::BT);
  const Origin o = Locate(g, t, M);
  float s[A][A][NV], e[A][A][NV];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j)
      std::memcpy(s[i][j], v + Slab(g, i * A + j, t, c0), NV * sizeof(float));
  MixBoth(B.m, s, e);
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j) {
      if (!Inside(g, o.y0 + i, o.x0 + j)) continue;
      float* p = dx + Pixel(g, o.n, o.y0 + i, o.x0 + j, c0);
      for (int k = 0; k < NV; ++k) p[k] += e[i][j][k];
    }
}

// kind 2: y's m x m block of tile t = A^T s A (g describes y: h = th * m, w = tw * m, c = O).
template <int M, int NV>
inline void OutputTile(const Geometry& g, const float* mt, float* y, int64_t t, int64_t c0) {
  constexpr int A = Mats<M>::A;
  const Origin o = Locate(g, t, M);
  float s[A][A][NV], e[M][M][NV];
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j)
      std::memcpy(s[i][j], mt + Slab(g, i * A + j, t, c0), NV * sizeof(float));
  MixBoth(Mats<M>::AT, s, e);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < M; ++j)
      std::memcpy(y + Pixel(g, o.n, o.y0 + i, o.x0 + j, c0), e[i][j], NV * sizeof(float));
}

// kind 3: dM's tile t = A s A^T from dy's m x m block s.
template <int M, int NV>
inline void OutputTileT(const Geometry& g, const float* dy, float* dm, int64_t t, int64_t c0) {
  constexpr int A = Mats<M>::A;
  static constexpr Transposed<M, A> At(Mats<M>::AT);
  const Origin o = Locate(g, t, M);
  float s[M][M][NV], e[A][A][NV];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < M; ++j)
      std::memcpy(s[i][j], dy + Pixel(g, o.n, o.y0 + i, o.x0 + j, c0), NV * sizeof(float));
  MixBoth(At.m, s, e);
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < A; ++j)
      std::memcpy(dm + Slab(g, i * A + j, t, c0), e[i][j], NV * sizeof(float));
}

// Runs Tile<M, kLanes> over full lane groups and Tile<M, 1> over the remaining channels.
template <int M, template <int, int> class Tile>
struct Lanes {
  template <typename... Args>
  static void Run(const Geometry& g, int64_t t, int64_t c_lo, int64_t c_hi, Args... args) {
    int64_t c = c_lo;
    for (; c + kLanes <= c_hi; c += kLanes) Tile<M, kLanes>::Do(g, args..., t, c);
    for (; c < c_hi; ++c) Tile<M, 1>::Do(g, args..., t, c);
  }
};

template <int M, int NV> struct In { static void Do(const Geometry& g, const float* a, float* b, int64_t t, int64_t c) { InputTile<M, NV>(g, a, b, t, c); } };
template <int M, int NV> struct InT { static void Do(const Geometry& g, const float* a, float* b, int64_t t, int64_t c) { InputTileT<M, NV>(g, a, b, t, c); } };
template <int M, int NV> struct Out { static void Do(const Geometry& g, const float* a, float* b, int64_t t, int64_t c) { OutputTile<M, NV>(g, a, b, t, c); } };
template <int M, int NV> struct OutT { static void Do(const Geometry& g, const float* a, float* b, int64_t t, int64_t c) { OutputTileT<M, NV>(g, a, b, t, c); } };

// Channel range of thread i of n, in whole lane groups where possible.
inline void ChannelRange(int64_t c, int i, int n, int64_t* lo, int64_t* hi) {
  const int64_t groups = (c + kLanes - 1) / kLanes;
  *lo = std::min(c, groups * i / n * kLanes);
  *hi = std::min(c, groups * (i + 1) / n * kLanes);
}

template <int M>
void Transform(int64_t kind, const Geometry& g, const float* a, float* b) {
  if (kind == 1) {
    // Overlapping windows: each thread owns a channel range of dx and walks every tile in order.
#pragma omp parallel
    {
      int64_t lo, hi;
      ChannelRange(g.c, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
      for (int64_t p = 0; p < g.n * g.h * g.w; ++p)
        std::memset(b + p * g.c + lo, 0, (hi - lo) * sizeof(float));
      for (int64_t t = 0; t < g.tiles(); ++t) Lanes<M, InT>::Run(g, t, lo, hi, a, b);
    }
    return;
  }
  // Disjoint outputs per tile: tiles split over the threads.
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < g.tiles(); ++t) {
    if (kind == 0) Lanes<M, In>::Run(g, t, 0, g.c, a, b);
    else if (kind == 2) Lanes<M, Out>::Run(g, t, 0, g.c, a, b);
    else Lanes<M, OutT>::Run(g, t, 0, g.c, a, b);
  }
}

ffi::Error Winograd(ffi::Buffer<ffi::F32> src, ffi::ResultBuffer<ffi::F32> dst, int64_t kind,
                    int64_t m, int64_t tiles_h, int64_t tiles_w, int64_t pad_top,
                    int64_t pad_left) {
  if (m != 2 && m != 4) return ffi::Error::InvalidArgument("winograd: m must be 2 or 4");
  if (kind < 0 || kind > 3) return ffi::Error::InvalidArgument("winograd: kind must be 0..3");
  const bool image_in = kind == 0 || kind == 3;
  auto img = image_in ? src.dimensions() : dst->dimensions();
  auto tl = image_in ? dst->dimensions() : src.dimensions();
  if (img.size() != 4 || tl.size() != 3)
    return ffi::Error::InvalidArgument("winograd: expected a 4-D image and 3-D tiles");
  const int64_t a = m + 2;
  // Output tiles start at tile * m: the padding is the input's only.
  const bool input = kind < 2;
  Geometry g{img[0], img[1], img[2], img[3], tiles_h, tiles_w, input ? pad_top : 0,
             input ? pad_left : 0};
  if (tl[0] != a * a || tl[1] != g.tiles() || tl[2] != g.c)
    return ffi::Error::InvalidArgument("winograd: tile array shape does not match the image");
  if (kind >= 2 && (g.h != tiles_h * m || g.w != tiles_w * m))
    return ffi::Error::InvalidArgument("winograd: output image must be tiles * m in H and W");
  const float* in = src.typed_data();
  float* out = dst->typed_data();
  if (m == 2) Transform<2>(kind, g, in, out);
  else Transform<4>(kind, g, in, out);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganWinograd, Winograd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("kind")
                                  .Attr<int64_t>("m")
                                  .Attr<int64_t>("tiles_h")
                                  .Attr<int64_t>("tiles_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_left"));
