// PyTorch's conv2d (NHWC activations, HWIO weights, symmetric zero padding)
// through oneDNN on the CPU, as XLA FFI handlers: forward pass, input
// gradient and weight gradient, float32 or bfloat16 (every operand and the
// result of a call in the same type). Built and registered by onednn.py.
//
// Primitives are created once per shape and cached (creation costs far more
// than a call). The weights take the layout oneDNN chooses (format "any":
// plain HWIO sends it to a slower im2col path) with a reorder from/to HWIO.
// Scratchpads are per call: XLA runs independent custom calls at the same
// time, and a library-managed scratchpad is shared between them.
//
// Two more handlers compute the float32 3x3, stride 1, padding 1 forward
// pass and weight gradient by Winograd's F(2x2, 3x3) algorithm: 16
// multiplications per 2x2 output tile instead of 36, the channel mixing as
// one batched oneDNN matrix product per chunk of tiles, the transforms as
// vectorised loops.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// batch, height, width, input channels, output channels, kernel size,
// stride, padding, data type: everything a primitive depends on.
using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                       memory::data_type>;

// oneDNN's data type for an XLA buffer type; undef for the unsupported ones.
memory::data_type DataTypeOf(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F32: return memory::data_type::f32;
    case ffi::DataType::BF16: return memory::data_type::bf16;
    default: return memory::data_type::undef;
  }
}

// The memory descriptors and window of one convolution, as every primitive
// for a key takes them: NHWC activations, weights in the layout oneDNN
// picks (format "any").
struct Geometry {
  memory::desc src, dst, weights_any, hwio;
  memory::dims strides, padding, padding_r;
  dnnl::primitive_attr attr;
};

Geometry GeometryFor(const Key& key) {
  auto [b, h, w, c, d, k, stride, pad, type] = key;
  int64_t ho = (h + 2 * pad - k) / stride + 1, wo = (w + 2 * pad - k) / stride + 1;
  using tag = memory::format_tag;
  Geometry g{memory::desc({b, c, h, w}, type, tag::nhwc),
             memory::desc({b, d, ho, wo}, type, tag::nhwc),
             memory::desc({d, c, k, k}, type, tag::any),
             memory::desc({d, c, k, k}, type, tag::hwio),
             {stride, stride},
             {pad, pad},
             // The right padding that makes the output exactly ho x wo
             // (onednn.py crops rows that no window reaches, so it is never
             // negative).
             {(ho - 1) * stride + k - h - pad, (wo - 1) * stride + k - w - pad},
             {}};
  g.attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return g;
}

dnnl::convolution_forward::primitive_desc ForwardDesc(const Geometry& g,
                                                      dnnl::prop_kind prop) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), prop, dnnl::algorithm::convolution_direct, g.src, g.weights_any, g.dst,
      g.strides, g.padding, g.padding_r, g.attr);
}

struct WeightGrad {
  dnnl::convolution_backward_weights primitive;
  dnnl::reorder to_hwio;
  memory::desc diff_weights_md, hwio_md, scratchpad_md;
  bool needs_reorder;
};

WeightGrad& WeightGradFor(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<WeightGrad>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  Geometry g = GeometryFor(key);
  auto backward = dnnl::convolution_backward_weights::primitive_desc(
      Engine(), dnnl::algorithm::convolution_direct, g.src, g.weights_any, g.dst, g.strides,
      g.padding, g.padding_r, ForwardDesc(g, dnnl::prop_kind::forward_training), g.attr);
  auto entry = std::make_unique<WeightGrad>();
  entry->primitive = dnnl::convolution_backward_weights(backward);
  entry->diff_weights_md = backward.diff_weights_desc();
  entry->hwio_md = g.hwio;
  entry->needs_reorder = entry->diff_weights_md != entry->hwio_md;
  entry->scratchpad_md = backward.scratchpad_desc();
  if (entry->needs_reorder) {
    auto reorder_pd = dnnl::reorder::primitive_desc(Engine(), entry->diff_weights_md, Engine(),
                                                    entry->hwio_md);
    entry->to_hwio = dnnl::reorder(reorder_pd);
  }
  return *cache.emplace(key, std::move(entry)).first->second;
}

// The data type of a call's operands and result, undef where they differ
// or are not float32/bfloat16.
memory::data_type CommonType(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b,
                             const ffi::AnyBuffer& out) {
  if (a.element_type() != b.element_type() || a.element_type() != out.element_type())
    return memory::data_type::undef;
  return DataTypeOf(a.element_type());
}

ffi::Error ConvWeightGradImpl(ffi::AnyBuffer x, ffi::AnyBuffer dy,
                              ffi::Result<ffi::AnyBuffer> dk, int64_t stride,
                              int64_t padding) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), dkd = dk->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || dkd.size() != 4)
    return ffi::Error::InvalidArgument("conv weight gradient: rank-4 operands expected");
  auto type = CommonType(x, dy, *dk);
  if (type == memory::data_type::undef)
    return ffi::Error::InvalidArgument("conv weight gradient: float32 or bfloat16 expected");
  Key key{xd[0], xd[1], xd[2], xd[3], dyd[3], dkd[0], stride, padding, type};
  WeightGrad& grad = WeightGradFor(key);
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  auto [b, h, w, c, d, k, s, p, dt] = key;
  int64_t ho = dyd[1], wo = dyd[2];
  using tag = memory::format_tag;
  memory src({{b, c, h, w}, dt, tag::nhwc}, engine, x.untyped_data());
  memory diff_dst({{b, d, ho, wo}, dt, tag::nhwc}, engine, dy.untyped_data());
  memory hwio(grad.hwio_md, engine, dk->untyped_data());
  std::vector<uint8_t> scratch(grad.scratchpad_md.get_size());
  memory scratchpad(grad.scratchpad_md, engine, scratch.data());
  if (grad.needs_reorder) {
    memory blocked(grad.diff_weights_md, engine);
    grad.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                    {DNNL_ARG_DIFF_WEIGHTS, blocked},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad}});
    grad.to_hwio.execute(stream, blocked, hwio);
  } else {
    grad.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_DIFF_DST, diff_dst},
                                    {DNNL_ARG_DIFF_WEIGHTS, hwio},
                                    {DNNL_ARG_SCRATCHPAD, scratchpad}});
  }
  stream.wait();
  return ffi::Error::Success();
}


// Input gradient and forward pass: the weights come as HWIO and are
// reordered into the layout the primitive chose (small: kernels only).
struct DataPass {
  dnnl::primitive primitive;
  dnnl::reorder from_hwio;
  memory::desc weights_md, hwio_md, scratchpad_md;
  bool needs_reorder;
};

// kind 0: forward (x, w) -> y; kind 1: input gradient (dy, w) -> dx.
DataPass& DataPassFor(int kind, const Key& key) {
  static std::mutex mutex;
  static std::map<std::pair<int, Key>, std::unique_ptr<DataPass>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find({kind, key});
  if (it != cache.end()) return *it->second;
  Geometry g = GeometryFor(key);
  auto forward = ForwardDesc(g, kind == 0 ? dnnl::prop_kind::forward_inference
                                          : dnnl::prop_kind::forward_training);
  auto entry = std::make_unique<DataPass>();
  if (kind == 0) {
    entry->primitive = dnnl::convolution_forward(forward);
    entry->weights_md = forward.weights_desc();
    entry->scratchpad_md = forward.scratchpad_desc();
  } else {
    auto backward = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, g.src, g.weights_any, g.dst, g.strides,
        g.padding, g.padding_r, forward, g.attr);
    entry->primitive = dnnl::convolution_backward_data(backward);
    entry->weights_md = backward.weights_desc();
    entry->scratchpad_md = backward.scratchpad_desc();
  }
  entry->hwio_md = g.hwio;
  entry->needs_reorder = entry->weights_md != entry->hwio_md;
  if (entry->needs_reorder) {
    entry->from_hwio = dnnl::reorder(
        dnnl::reorder::primitive_desc(Engine(), entry->hwio_md, Engine(), entry->weights_md));
  }
  return *cache.emplace(std::make_pair(kind, key), std::move(entry)).first->second;
}

ffi::Error DataPassImpl(int kind, ffi::AnyBuffer in, ffi::AnyBuffer weights,
                        ffi::Result<ffi::AnyBuffer> out, int64_t stride, int64_t padding) {
  auto ind = in.dimensions(), wd = weights.dimensions(), outd = out->dimensions();
  if (ind.size() != 4 || wd.size() != 4 || outd.size() != 4)
    return ffi::Error::InvalidArgument("convolution: rank-4 operands expected");
  auto type = CommonType(in, weights, *out);
  if (type == memory::data_type::undef)
    return ffi::Error::InvalidArgument("convolution: float32 or bfloat16 operands expected");
  // x is the forward's input, dy its output: the operand or the result.
  auto xd = kind == 0 ? ind : outd;
  auto dyd = kind == 0 ? outd : ind;
  Key key{xd[0], xd[1], xd[2], xd[3], dyd[3], wd[0], stride, padding, type};
  DataPass& pass = DataPassFor(kind, key);
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  using tag = memory::format_tag;
  memory src({{xd[0], xd[3], xd[1], xd[2]}, type, tag::nhwc}, engine,
             kind == 0 ? in.untyped_data() : out->untyped_data());
  memory dst({{dyd[0], dyd[3], dyd[1], dyd[2]}, type, tag::nhwc}, engine,
             kind == 0 ? out->untyped_data() : in.untyped_data());
  memory hwio(pass.hwio_md, engine, weights.untyped_data());
  memory primitive_weights = hwio;
  if (pass.needs_reorder) {
    primitive_weights = memory(pass.weights_md, engine);
    pass.from_hwio.execute(stream, hwio, primitive_weights);
  }
  std::vector<uint8_t> scratch(pass.scratchpad_md.get_size());
  memory scratchpad(pass.scratchpad_md, engine, scratch.data());
  if (kind == 0) {
    pass.primitive.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, primitive_weights},
                                    {DNNL_ARG_DST, dst}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  } else {
    pass.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dst},
                                    {DNNL_ARG_WEIGHTS, primitive_weights},
                                    {DNNL_ARG_DIFF_SRC, src}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
  }
  stream.wait();
  return ffi::Error::Success();
}

ffi::Error ConvForwardImpl(ffi::AnyBuffer x, ffi::AnyBuffer w,
                           ffi::Result<ffi::AnyBuffer> y, int64_t stride, int64_t padding) {
  return DataPassImpl(0, x, w, y, stride, padding);
}

ffi::Error ConvInputGradImpl(ffi::AnyBuffer dy, ffi::AnyBuffer w,
                             ffi::Result<ffi::AnyBuffer> dx, int64_t stride, int64_t padding) {
  return DataPassImpl(1, dy, w, dx, stride, padding);
}

// Every handler: two operands, one result (one data type), stride, padding.
auto ConvBinding() {
  return ffi::Ffi::Bind()
      .Arg<ffi::AnyBuffer>()
      .Arg<ffi::AnyBuffer>()
      .Ret<ffi::AnyBuffer>()
      .Attr<int64_t>("stride")
      .Attr<int64_t>("padding");
}


// --- Winograd F(2x2, 3x3), float32 -------------------------------------------
//
// y = A^T [(G g G^T) . (B^T d B)] A for every 4x4 input patch d (stride 2)
// and 2x2 output tile, with Lavin & Gray's matrices
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1],
//   A^T = [1 1 1 0; 0 1 -1 -1].
// The 16 products of each tile, summed over input channels, are 16 matrix
// products (tiles x C) (C x D). Tiles are processed in chunks so that the
// transformed input and products stay within kChunkBytes whatever the
// image size.

constexpr int64_t kChunkBytes = int64_t{48} << 20;

// U[k][c][d] = (G g G^T)[k] for the HWIO kernel g (cd = C * D); with
// `turned`, for g turned by 180 degrees (the input gradient's kernel, whose
// channel swap the matrix product reads as a transpose).
__attribute__((target_clones("avx512f", "avx2", "default")))
void WinogradWeights(const float* g, float* u, int64_t cd, bool turned) {
  // Tap (row, column) of the kernel the transform reads: g's own, or turned.
  int64_t tap[3][3];
  for (int a = 0; a < 3; ++a)
    for (int b = 0; b < 3; ++b) tap[a][b] = (turned ? (2 - a) * 3 + (2 - b) : a * 3 + b) * cd;
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < cd; ++i) {
    float q[4][3];
    for (int j = 0; j < 3; ++j) {
      const float g0 = g[tap[0][j] + i], g1 = g[tap[1][j] + i], g2 = g[tap[2][j] + i];
      q[0][j] = g0;
      q[1][j] = 0.5f * (g0 + g1 + g2);
      q[2][j] = 0.5f * (g0 - g1 + g2);
      q[3][j] = g2;
    }
    for (int a = 0; a < 4; ++a) {
      u[(a * 4 + 0) * cd + i] = q[a][0];
      u[(a * 4 + 1) * cd + i] = 0.5f * (q[a][0] + q[a][1] + q[a][2]);
      u[(a * 4 + 2) * cd + i] = 0.5f * (q[a][0] - q[a][1] + q[a][2]);
      u[(a * 4 + 3) * cd + i] = q[a][2];
    }
  }
}

struct TileGrid {
  int64_t n, h, w, th, tw;  // batch, image size, tiles per column and row
  // Tile t's batch index and top-left output pixel.
  void Locate(int64_t t, int64_t* b, int64_t* y, int64_t* x) const {
    *b = t / (th * tw);
    const int64_t r = t % (th * tw);
    *y = 2 * (r / tw);
    *x = 2 * (r % tw);
  }
};

// V[k][t - t0][c] = (B^T d B)[k] for tiles t0 <= t < t1 of the NHWC input x;
// pixels outside the image (the zero padding) read `zeros`.
__attribute__((target_clones("avx512f", "avx2", "default")))
void WinogradInput(const float* x, float* v, const float* zeros, const TileGrid& grid,
                   int64_t c, int64_t t0, int64_t t1) {
  const int64_t tiles = t1 - t0;
#pragma omp parallel for schedule(static)
  for (int64_t t = t0; t < t1; ++t) {
    int64_t b, y0, x0;
    grid.Locate(t, &b, &y0, &x0);
    const float* p[4][4];
    for (int a = 0; a < 4; ++a)
      for (int e = 0; e < 4; ++e) {
        const int64_t y = y0 + a - 1, xx = x0 + e - 1;
        p[a][e] = (y >= 0 && y < grid.h && xx >= 0 && xx < grid.w)
                      ? x + ((b * grid.h + y) * grid.w + xx) * c : zeros;
      }
    float* out[16];
    for (int k = 0; k < 16; ++k) out[k] = v + (k * tiles + (t - t0)) * c;
#pragma omp simd
    for (int64_t ch = 0; ch < c; ++ch) {
      float d[4][4], e[4][4];
      for (int a = 0; a < 4; ++a)
        for (int f = 0; f < 4; ++f) d[a][f] = p[a][f][ch];
      for (int f = 0; f < 4; ++f) {
        e[0][f] = d[0][f] - d[2][f];
        e[1][f] = d[1][f] + d[2][f];
        e[2][f] = d[2][f] - d[1][f];
        e[3][f] = d[1][f] - d[3][f];
      }
      for (int a = 0; a < 4; ++a) {
        out[a * 4 + 0][ch] = e[a][0] - e[a][2];
        out[a * 4 + 1][ch] = e[a][1] + e[a][2];
        out[a * 4 + 2][ch] = e[a][2] - e[a][1];
        out[a * 4 + 3][ch] = e[a][1] - e[a][3];
      }
    }
  }
}

// The NHWC output pixels of tiles t0 <= t < t1 from their products
// M[k][t - t0][d]; pixels past the image's bottom or right edge (odd sizes)
// go to `sink`.
__attribute__((target_clones("avx512f", "avx2", "default")))
void WinogradOutput(const float* m, float* y, float* sink, const TileGrid& grid, int64_t d,
                    int64_t t0, int64_t t1) {
  const int64_t tiles = t1 - t0;
#pragma omp parallel for schedule(static)
  for (int64_t t = t0; t < t1; ++t) {
    int64_t b, y0, x0;
    grid.Locate(t, &b, &y0, &x0);
    float* q[2][2];
    for (int a = 0; a < 2; ++a)
      for (int e = 0; e < 2; ++e)
        q[a][e] = (y0 + a < grid.h && x0 + e < grid.w)
                      ? y + ((b * grid.h + y0 + a) * grid.w + x0 + e) * d : sink;
    const float* in[16];
    for (int k = 0; k < 16; ++k) in[k] = m + (k * tiles + (t - t0)) * d;
#pragma omp simd
    for (int64_t ch = 0; ch < d; ++ch) {
      float s[2][4];
      for (int f = 0; f < 4; ++f) {
        s[0][f] = in[f][ch] + in[4 + f][ch] + in[8 + f][ch];
        s[1][f] = in[4 + f][ch] - in[8 + f][ch] - in[12 + f][ch];
      }
      for (int a = 0; a < 2; ++a) {
        q[a][0][ch] = s[a][0] + s[a][1] + s[a][2];
        q[a][1][ch] = s[a][1] - s[a][2] - s[a][3];
      }
    }
  }
}

// Weight gradient: with M = V U per tile and y = A^T M A, the gradient of U
// is sum over tiles of V^T (A dy A^T), and that of the kernel G^T dU G.

// dM[k][t - t0][d] = (A dy A^T)[k] for the 2x2 output tiles of dy (NHWC);
// pixels past the image's edge read `zeros`.
__attribute__((target_clones("avx512f", "avx2", "default")))
void WinogradOutputGrad(const float* dy, float* dm, const float* zeros, const TileGrid& grid,
                        int64_t d, int64_t t0, int64_t t1) {
  const int64_t tiles = t1 - t0;
#pragma omp parallel for schedule(static)
  for (int64_t t = t0; t < t1; ++t) {
    int64_t b, y0, x0;
    grid.Locate(t, &b, &y0, &x0);
    const float* z[2][2];
    for (int a = 0; a < 2; ++a)
      for (int e = 0; e < 2; ++e)
        z[a][e] = (y0 + a < grid.h && x0 + e < grid.w)
                      ? dy + ((b * grid.h + y0 + a) * grid.w + x0 + e) * d : zeros;
    float* out[16];
    for (int k = 0; k < 16; ++k) out[k] = dm + (k * tiles + (t - t0)) * d;
#pragma omp simd
    for (int64_t ch = 0; ch < d; ++ch) {
      float e[4][2];
      for (int f = 0; f < 2; ++f) {
        e[0][f] = z[0][f][ch];
        e[1][f] = z[0][f][ch] + z[1][f][ch];
        e[2][f] = z[0][f][ch] - z[1][f][ch];
        e[3][f] = -z[1][f][ch];
      }
      for (int a = 0; a < 4; ++a) {
        out[a * 4 + 0][ch] = e[a][0];
        out[a * 4 + 1][ch] = e[a][0] + e[a][1];
        out[a * 4 + 2][ch] = e[a][0] - e[a][1];
        out[a * 4 + 3][ch] = -e[a][1];
      }
    }
  }
}

// The HWIO kernel gradient G^T dU G from dU[k][c][d] (cd = C * D).
__attribute__((target_clones("avx512f", "avx2", "default")))
void WinogradWeightsGrad(const float* du, float* dg, int64_t cd) {
#pragma omp parallel for simd schedule(static)
  for (int64_t i = 0; i < cd; ++i) {
    float r[3][4];
    for (int v = 0; v < 4; ++v) {
      const float u0 = du[v * cd + i], u1 = du[(4 + v) * cd + i], u2 = du[(8 + v) * cd + i],
                  u3 = du[(12 + v) * cd + i];
      r[0][v] = u0 + 0.5f * (u1 + u2);
      r[1][v] = 0.5f * (u1 - u2);
      r[2][v] = 0.5f * (u1 + u2) + u3;
    }
    for (int a = 0; a < 3; ++a) {
      dg[(a * 3 + 0) * cd + i] = r[a][0] + 0.5f * (r[a][1] + r[a][2]);
      dg[(a * 3 + 1) * cd + i] = 0.5f * (r[a][1] - r[a][2]);
      dg[(a * 3 + 2) * cd + i] = 0.5f * (r[a][1] + r[a][2]) + r[a][3];
    }
  }
}

// 16 matrix products (m x k) x (k x n) of one chunk, each operand stored
// row-major or (`*_transposed`) as its transpose; with `accumulate` they add
// to the result (a sum post-op). Forward: (tiles x C) x (C x D); the input
// gradient reads its transformed kernel transposed; weight gradient:
// (C x tiles) x (tiles x D) with V read transposed, summed over chunks.
struct BatchedProduct {
  dnnl::matmul primitive;
  memory::desc a, b, c, scratchpad_md;

  void Run(dnnl::stream& stream, float* a_data, float* b_data, float* c_data) {
    dnnl::engine& engine = Engine();
    std::vector<uint8_t> scratch(scratchpad_md.get_size());
    primitive.execute(stream, {{DNNL_ARG_SRC, memory(a, engine, a_data)},
                               {DNNL_ARG_WEIGHTS, memory(b, engine, b_data)},
                               {DNNL_ARG_DST, memory(c, engine, c_data)},
                               {DNNL_ARG_SCRATCHPAD, memory(scratchpad_md, engine, scratch.data())}});
    stream.wait();
  }
};

memory::desc BatchOfMatrices(int64_t rows, int64_t columns, bool transposed) {
  return memory::desc({16, rows, columns}, memory::data_type::f32,
                      transposed ? memory::dims{rows * columns, 1, rows}
                                 : memory::dims{rows * columns, columns, 1});
}

BatchedProduct& BatchedProductFor(int64_t m, int64_t k, int64_t n, bool a_transposed,
                                  bool b_transposed, bool accumulate) {
  static std::mutex mutex;
  static std::map<std::tuple<int64_t, int64_t, int64_t, bool, bool, bool>,
                  std::unique_ptr<BatchedProduct>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_tuple(m, k, n, a_transposed, b_transposed, accumulate);
  auto it = cache.find(key);
  if (it != cache.end()) return *it->second;
  auto entry = std::make_unique<BatchedProduct>();
  entry->a = BatchOfMatrices(m, k, a_transposed);
  entry->b = BatchOfMatrices(k, n, b_transposed);
  entry->c = BatchOfMatrices(m, n, false);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (accumulate) {
    dnnl::post_ops ops;
    ops.append_sum(1.0f);
    attr.set_post_ops(ops);
  }
  auto pd = dnnl::matmul::primitive_desc(Engine(), entry->a, entry->b, entry->c, attr);
  entry->primitive = dnnl::matmul(pd);
  entry->scratchpad_md = pd.scratchpad_desc();
  return *cache.emplace(key, std::move(entry)).first->second;
}

// Tiles per chunk: the transformed input and products of a C -> D
// convolution within kChunkBytes.
int64_t ChunkTiles(int64_t tiles, int64_t c, int64_t d) {
  return std::max<int64_t>(
      1, std::min<int64_t>(tiles, kChunkBytes / (16 * (c + d) * int64_t{sizeof(float)})));
}

// Work buffers handed from call to call (fresh allocations of this size
// would page-fault on every call); a call takes buffers of its own, so calls
// that XLA runs at the same time never share one.
struct Buffer {
  std::unique_ptr<float[]> data;
  size_t size = 0;
};

class BufferPool {
 public:
  Buffer Take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    // The smallest free buffer that is large enough.
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->size >= size && (best == free_.end() || it->size < best->size)) best = it;
    if (best == free_.end()) return Buffer{std::unique_ptr<float[]>(new float[size]), size};
    Buffer buffer = std::move(*best);
    free_.erase(best);
    return buffer;
  }
  void Give(Buffer buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(buffer));
  }

 private:
  std::mutex mutex_;
  std::vector<Buffer> free_;
};

BufferPool& Pool() {
  static BufferPool pool;
  return pool;
}

// y = x * kernel (3x3 HWIO, C -> D), or with `turned` = 1 the input
// gradient's convolution x * turned(kernel) of a C x D kernel (x has D
// channels, y has C).
ffi::Error WinogradForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                               ffi::ResultBuffer<ffi::F32> y, int64_t turned) {
  auto xd = x.dimensions(), kd = kernel.dimensions(), yd = y->dimensions();
  const int64_t k_in = turned ? 3 : 2, k_out = turned ? 2 : 3;
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4 || kd[0] != 3 || kd[1] != 3 ||
      kd[k_in] != xd[3] || yd[0] != xd[0] || yd[1] != xd[1] || yd[2] != xd[2] ||
      yd[3] != kd[k_out])
    return ffi::Error::InvalidArgument(
        "Winograd convolution: NHWC input, 3x3 HWIO kernel and same-size output expected");
  const int64_t c = xd[3], d = yd[3];
  const TileGrid grid{xd[0], xd[1], xd[2], (xd[1] + 1) / 2, (xd[2] + 1) / 2};
  const int64_t tiles = grid.n * grid.th * grid.tw;
  const int64_t chunk = ChunkTiles(tiles, c, d);
  Buffer u = Pool().Take(16 * c * d), v = Pool().Take(16 * chunk * c),
         m = Pool().Take(16 * chunk * d);
  std::vector<float> zeros(c, 0.0f), sink(d);
  WinogradWeights(kernel.typed_data(), u.data.get(), c * d, turned != 0);
  dnnl::stream stream(Engine());
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t t1 = std::min(tiles, t0 + chunk);
    WinogradInput(x.typed_data(), v.data.get(), zeros.data(), grid, c, t0, t1);
    BatchedProductFor(t1 - t0, c, d, false, turned != 0, false)
        .Run(stream, v.data.get(), u.data.get(), m.data.get());
    WinogradOutput(m.data.get(), y->typed_data(), sink.data(), grid, d, t0, t1);
  }
  Pool().Give(std::move(u));
  Pool().Give(std::move(v));
  Pool().Give(std::move(m));
  return ffi::Error::Success();
}

ffi::Error WinogradWeightGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                                  ffi::ResultBuffer<ffi::F32> dk) {
  auto xd = x.dimensions(), dyd = dy.dimensions(), kd = dk->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || kd.size() != 4 || kd[0] != 3 || kd[1] != 3 ||
      kd[2] != xd[3] || dyd[0] != xd[0] || dyd[1] != xd[1] || dyd[2] != xd[2] ||
      dyd[3] != kd[3])
    return ffi::Error::InvalidArgument(
        "Winograd weight gradient: NHWC input and output gradient of one size, 3x3 HWIO "
        "kernel gradient expected");
  const int64_t c = xd[3], d = kd[3];
  const TileGrid grid{xd[0], xd[1], xd[2], (xd[1] + 1) / 2, (xd[2] + 1) / 2};
  const int64_t tiles = grid.n * grid.th * grid.tw;
  const int64_t chunk = ChunkTiles(tiles, c, d);
  Buffer du = Pool().Take(16 * c * d), v = Pool().Take(16 * chunk * c),
         dm = Pool().Take(16 * chunk * d);
  std::vector<float> zeros(std::max(c, d), 0.0f);
  dnnl::stream stream(Engine());
  for (int64_t t0 = 0; t0 < tiles; t0 += chunk) {
    const int64_t t1 = std::min(tiles, t0 + chunk);
    WinogradInput(x.typed_data(), v.data.get(), zeros.data(), grid, c, t0, t1);
    WinogradOutputGrad(dy.typed_data(), dm.data.get(), zeros.data(), grid, d, t0, t1);
    BatchedProductFor(c, t1 - t0, d, true, false, t0 > 0)
        .Run(stream, v.data.get(), dm.data.get(), du.data.get());
  }
  WinogradWeightsGrad(du.data.get(), dk->typed_data(), c * d);
  Pool().Give(std::move(du));
  Pool().Give(std::move(v));
  Pool().Give(std::move(dm));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvWeightGrad, ConvWeightGradImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvForward, ConvForwardImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvInputGrad, ConvInputGradImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthWinogradForward, WinogradForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("turned"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthWinogradWeightGrad, WinogradWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
