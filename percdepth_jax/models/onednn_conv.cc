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
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
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

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvWeightGrad, ConvWeightGradImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvForward, ConvForwardImpl, ConvBinding());
XLA_FFI_DEFINE_HANDLER_SYMBOL(PercdepthConvInputGrad, ConvInputGradImpl, ConvBinding());
