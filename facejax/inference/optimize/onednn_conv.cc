// oneDNN 2-D convolution (plain, grouped or depthwise) and dense layer as XLA CPU custom calls (jax.ffi).
//
// facejax_onednn_conv: NHWC input, HWIO kernel (groups = input channels / the kernel's), float32 bias, an optional
// NHWC residual of the output's shape (added after the bias), NHWC output, optional ReLU (relu=1) or PReLU with one
// slope (relu=2, the slope a float32 operand after the residual) last. The input, kernel, residual and output are
// all float32 or all bfloat16 (bf16 products accumulated in float32, the sum rounded to bf16 once, after the
// post-ops). Or int8: x and kernel int8 (exact int32 sums), the bias [2, F] holding the bias and each output
// channel's dequantization scale (activation scale x kernel scale), the residual and output float32; not grouped.
// The residual add and the (P)ReLU run as oneDNN post-ops, in the convolution's epilogue.
//
// facejax_onednn_dense: x [M, K] times kernel [K, N] (both float32 or both bfloat16) plus a float32 bias [N], written
// as float32 [M, N] (bf16 products accumulated in float32): at batch 1 a matrix-vector product that streams the
// kernel once, in half the bytes when it is bf16.
//
// Built by `facejax.inference.optimize.onednn.build()` (make venv).
//
// Primitives are cached per problem (dtype, shapes, groups, strides, pads, ReLU, residual). oneDNN keeps the kernel
// in its own blocked layout: the reordered copy is cached per kernel buffer and problem, and checked against a
// fingerprint of the buffer (the bytes of 256 elements spread over it) on every call, so a new kernel at a reused
// address is reordered again. The cache is emptied when it holds kMaxKernels copies (weights passed as arguments,
// many checkpoints).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

using Key = std::vector<int64_t>;

struct Problem {
  dnnl::convolution_forward conv;
  dnnl::memory::desc src, kernel, blocked_kernel, bias, dst;  // the residual has dst's layout
};

struct DenseProblem {
  dnnl::matmul matmul;
  dnnl::memory::desc src, kernel, blocked_kernel, bias, dst;
};

struct BlockedKernel {
  dnnl::memory memory;
  std::vector<char> fingerprint;
};

constexpr size_t kMaxKernels = 4096;

std::vector<char> Fingerprint(const char* data, int64_t size, int64_t bytes) {  // size elements of bytes each
  const int64_t n = std::min<int64_t>(size, 256);
  std::vector<char> out(n * bytes);
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(&out[i * bytes], data + (n > 1 ? i * (size - 1) / (n - 1) : 0) * bytes, bytes);
  return out;
}

struct State {
  std::mutex mu;
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::map<Key, Problem> problems;
  std::map<Key, DenseProblem> dense;
  std::map<std::pair<Key, const void*>, BlockedKernel> kernels;
};

State& state() {
  static State* s = new State();  // never destroyed: XLA may run custom calls during interpreter exit
  return *s;
}

// The kernel in the primitive's own layout: `w` itself when that is its layout, else a reordered copy cached per
// problem and buffer address and checked against the buffer's fingerprint. The caller holds s.mu.
dnnl::memory Blocked(State& s, const Key& key, const dnnl::memory::desc& user, const dnnl::memory::desc& blocked,
                     ffi::AnyBuffer w, int64_t bytes) {
  void* kdata = w.untyped_data();
  dnnl::memory user_kernel(user, s.engine, kdata);
  if (blocked == user) return user_kernel;
  std::vector<char> print = Fingerprint(static_cast<const char*>(kdata), w.element_count(), bytes);
  if (s.kernels.size() >= kMaxKernels && !s.kernels.count({key, kdata})) s.kernels.clear();
  auto& cached = s.kernels[{key, kdata}];
  if (!cached.memory || cached.fingerprint != print) {
    cached.memory = dnnl::memory(blocked, s.engine);
    dnnl::reorder(user_kernel, cached.memory).execute(s.stream, user_kernel, cached.memory);
    cached.fingerprint = std::move(print);
  }
  return cached.memory;
}

ffi::Error Conv(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::RemainingArgs rest,
                ffi::Result<ffi::AnyBuffer> y, int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                int64_t relu) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  const ffi::DataType type = x.element_type();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || wd[2] < 1 || xd[3] % wd[2] != 0 ||
      wd[3] % (xd[3] / wd[2]) != 0 || relu < 0 || relu > 2 ||
      rest.size() > 1 + (relu == 2) || (relu == 2 && rest.empty()))
    return ffi::Error::InvalidArgument(
        "facejax_onednn_conv: expected x [B, H, W, C], kernel [kh, kw, C / groups, F] (F a multiple of groups), "
        "bias [F], optional residual [B, OH, OW, F], the PReLU slope last if relu=2, output [B, OH, OW, F]");
  // int8: x and kernel int8, output and residual float32, the float32 bias [2, F] = (bias, dequantization scale)
  const bool int8 = type == ffi::DataType::S8;
  const ffi::DataType out_type = int8 ? ffi::DataType::F32 : type;
  if ((type != ffi::DataType::F32 && type != ffi::DataType::BF16 && !int8) || w.element_type() != type ||
      y->element_type() != out_type || b.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(
        "facejax_onednn_conv: x, kernel and output must all be float32 or all bfloat16 (or x and kernel int8, the "
        "output float32), the bias float32");
  if (b.element_count() != (int8 ? 2 : 1) * wd[3] || (int8 && wd[2] != xd[3]))
    return ffi::Error::InvalidArgument(
        "facejax_onednn_conv: the bias must be [F] (int8: [2, F], the bias and each channel's dequantization "
        "scale; int8 convolutions are not grouped)");
  void* residual = nullptr;
  void* slope = nullptr;
  if (relu == 2) {
    auto a = rest.get<ffi::AnyBuffer>(rest.size() - 1);
    if (!a.has_value() || a->element_type() != ffi::DataType::F32 || a->element_count() != 1)
      return ffi::Error::InvalidArgument("facejax_onednn_conv: the PReLU slope must be one float32");
    slope = a->untyped_data();
  }
  if (rest.size() > (relu == 2)) {
    auto r = rest.get<ffi::AnyBuffer>(0);
    if (!r.has_value() || r->element_type() != out_type || r->element_count() != y->element_count())
      return ffi::Error::InvalidArgument("facejax_onednn_conv: the residual must have the output's dtype and shape");
    residual = r->untyped_data();
  }
  const bool bf16 = type == ffi::DataType::BF16;
  const dt data = int8 ? dt::s8 : bf16 ? dt::bf16 : dt::f32, out = int8 ? dt::f32 : data;
  const int64_t bytes = int8 ? 1 : bf16 ? 2 : 4;
  const int64_t n = xd[0], h = xd[1], wi = xd[2], c = xd[3], kh = wd[0], kw = wd[1], f = wd[3], g = c / wd[2];
  const int64_t oh = yd[1], ow = yd[2];
  const Key key{n, h, wi, c, kh, kw, f, g, oh, ow, sh, sw, pt, pb, pl, pr, relu, residual != nullptr, bytes};
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  try {
    auto it = s.problems.find(key);
    if (it == s.problems.end()) {
      dnnl::memory::desc src({n, c, h, wi}, data, tag::nhwc), dst({n, f, oh, ow}, out, tag::nhwc),
          bias({f}, dt::f32, tag::a);
      // Grouped (depthwise: C groups of one channel): oneDNN's [G, F/G, C/G, kh, kw] in the HWIO order of a
      // flax kernel [kh, kw, C/G, F] is hwigo.
      const dnnl::memory::dims wdims = g == 1 ? dnnl::memory::dims{f, c, kh, kw}
                                              : dnnl::memory::dims{g, f / g, c / g, kh, kw};
      dnnl::memory::desc kernel(wdims, data, g == 1 ? tag::hwio : tag::hwigo), any_kernel(wdims, data, tag::any);
      dnnl::post_ops ops;
      if (residual) ops.append_binary(dnnl::algorithm::binary_add, dst);
      if (relu == 1) ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      if (relu == 2) ops.append_prelu(0);  // one slope for every element
      dnnl::primitive_attr attr;
      attr.set_post_ops(ops);
      if (int8) attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1);  // per output channel, applied before the bias
      dnnl::convolution_forward::primitive_desc pd(
          s.engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src, any_kernel,
          bias, dst, {sh, sw}, {pt, pl}, {pb, pr}, attr);
      it = s.problems.emplace(key, Problem{dnnl::convolution_forward(pd), src, kernel, pd.weights_desc(), bias,
                                           dst}).first;
    }
    Problem& p = it->second;
    dnnl::memory kernel = Blocked(s, key, p.kernel, p.blocked_kernel, w, bytes);
    dnnl::memory src(p.src, s.engine, x.untyped_data()), bias(p.bias, s.engine, b.untyped_data()),
        dst(p.dst, s.engine, y->untyped_data());
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_BIAS, bias}, {DNNL_ARG_DST, dst}};
    if (residual) args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1] = dnnl::memory(p.dst, s.engine, residual);
    if (slope)
      args[DNNL_ARG_ATTR_MULTIPLE_POST_OP(residual ? 1 : 0) | DNNL_ARG_WEIGHTS] =
          dnnl::memory({{1}, dt::f32, tag::a}, s.engine, slope);
    if (int8)
      args[DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS] =
          dnnl::memory({{f}, dt::f32, tag::a}, s.engine, static_cast<float*>(b.untyped_data()) + f);
    p.conv.execute(s.stream, args);
    s.stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("facejax_onednn_conv: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Dense(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> y) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  const ffi::DataType type = x.element_type();
  if (xd.size() != 2 || wd.size() != 2 || yd.size() != 2 || wd[0] != xd[1] || b.element_count() != wd[1] ||
      yd[0] != xd[0] || yd[1] != wd[1])
    return ffi::Error::InvalidArgument(
        "facejax_onednn_dense: expected x [M, K], kernel [K, N], bias [N], output [M, N]");
  if ((type != ffi::DataType::F32 && type != ffi::DataType::BF16) || w.element_type() != type ||
      b.element_type() != ffi::DataType::F32 || y->element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(
        "facejax_onednn_dense: x and kernel must both be float32 or both bfloat16, the bias and output float32");
  const bool bf16 = type == ffi::DataType::BF16;
  const dt data = bf16 ? dt::bf16 : dt::f32;
  const int64_t m = xd[0], k = xd[1], n = wd[1];
  const Key key{-1, m, k, n, bf16};  // -1: never a convolution's key (those start with the batch size)
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  try {
    auto it = s.dense.find(key);
    if (it == s.dense.end()) {
      dnnl::memory::desc src({m, k}, data, tag::ab), kernel({k, n}, data, tag::ab),
          any_kernel({k, n}, data, tag::any), bias({1, n}, dt::f32, tag::ab), dst({m, n}, dt::f32, tag::ab);
      dnnl::matmul::primitive_desc pd(s.engine, src, any_kernel, bias, dst);
      it = s.dense.emplace(key, DenseProblem{dnnl::matmul(pd), src, kernel, pd.weights_desc(), bias, dst}).first;
    }
    DenseProblem& p = it->second;
    dnnl::memory kernel = Blocked(s, key, p.kernel, p.blocked_kernel, w, bf16 ? 2 : 4);
    p.matmul.execute(s.stream, {{DNNL_ARG_SRC, dnnl::memory(p.src, s.engine, x.untyped_data())},
                                {DNNL_ARG_WEIGHTS, kernel},
                                {DNNL_ARG_BIAS, dnnl::memory(p.bias, s.engine, b.untyped_data())},
                                {DNNL_ARG_DST, dnnl::memory(p.dst, s.engine, y->untyped_data())}});
    s.stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("facejax_onednn_dense: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FacejaxOnednnConv, Conv,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .RemainingArgs()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(FacejaxOnednnDense, Dense,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
