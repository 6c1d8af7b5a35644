// What oneDNN itself offers on this CPU for the convolutions facejax sends it (docs/cpu_inference.md): for each
// ResNet-50 3x3 / 1x1 shape at batch 1, float32, bf16 and int8, the median us per `execute` + `wait` with facejax's NHWC
// activations, with the layout left to oneDNN (`any`), in 16-channel blocks (nChw16c) and with Winograd, plus
// what a chain of tiny convs costs per call when each is waited for and when all are queued and waited for once, and
// VGG-16's fc6 (25088 -> 4096) as a matmul at batch 1 and 8, with the kernel as given ([K, N]) or reordered.
// Prints one JSON object per line. Build and run against the `[onednn]` extra (make venv):
//
//   P=$PWD/.venv
//   g++ -O2 -std=c++17 bench/onednn_probe.cc -I$P/include -L$P/lib -ldnnl -Wl,--disable-new-dtags,-rpath,$P/lib
//   OCL_ICD_FILENAMES=$P/lib/libintelocl.so DPCPP_CPU_NUM_CUS=1 ./a.out
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;
using Args = std::unordered_map<int, dnnl::memory>;

static double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Write every buffer (inputs 1s, the rest 0s): pages never written all read as one shared zero page.
static void Touch(Args& args) {
  for (auto& [arg, memory] : args)
    std::memset(memory.get_data_handle(), arg == DNNL_ARG_SRC || arg == DNNL_ARG_WEIGHTS ? 1 : 0,
                memory.get_desc().get_size());
}

struct Conv {
  dnnl::convolution_forward prim;
  Args args;
  std::string impl;
};

// A same-padded stride-1 k x k conv [1, h, h, c] -> [1, h, h, f] with bias and ReLU (s8: s8 x s8 with per-channel
// kernel scales, float32 out, as facejax's int8 calls); false if oneDNN has no kernel.
static bool Make(dnnl::engine& eng, int h, int c, int f, int k, dt d, tag layout, dnnl::algorithm alg, Conv* out) {
  dnnl::memory::desc src({1, c, h, h}, d, layout), dst({1, f, h, h}, d == dt::s8 ? dt::f32 : d, layout),
      w({f, c, k, k}, d, tag::any), b({f}, dt::f32, tag::a);
  dnnl::post_ops ops;
  ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.f, 0.f);
  dnnl::primitive_attr attr;
  attr.set_post_ops(ops);
  if (d == dt::s8) attr.set_scales_mask(DNNL_ARG_WEIGHTS, 1);
  try {
    dnnl::convolution_forward::primitive_desc pd(eng, dnnl::prop_kind::forward_inference, alg, src, w, b, dst,
                                                 {1, 1}, {k / 2, k / 2}, {k / 2, k / 2}, attr);
    out->prim = dnnl::convolution_forward(pd);
    out->impl = pd.impl_info_str();
    out->args = {{DNNL_ARG_SRC, dnnl::memory(pd.src_desc(), eng)}, {DNNL_ARG_WEIGHTS, dnnl::memory(pd.weights_desc(), eng)},
                 {DNNL_ARG_BIAS, dnnl::memory(b, eng)}, {DNNL_ARG_DST, dnnl::memory(pd.dst_desc(), eng)}};
    if (d == dt::s8) out->args[DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS] = dnnl::memory({{f}, dt::f32, tag::a}, eng);
    Touch(out->args);
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

// Median us of `calls` execute + wait, after 5 untimed.
static double MedianUs(const dnnl::primitive& prim, const Args& args, dnnl::stream& st, int calls) {
  std::vector<double> t;
  for (int i = 0; i < calls + 5; ++i) {
    const double t0 = Now();
    prim.execute(st, args);
    st.wait();
    if (i >= 5) t.push_back((Now() - t0) * 1e6);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int main() {
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream st(eng);
  const int shapes[][4] = {{56, 64, 64, 3}, {28, 128, 128, 3}, {14, 256, 256, 3}, {7, 512, 512, 3},
                           {56, 64, 256, 1}, {14, 256, 1024, 1}, {14, 1024, 256, 1}, {7, 512, 2048, 1}};
  for (dt d : {dt::f32, dt::bf16, dt::s8})
    for (const auto& s : shapes) {
      const double gflop = 2.0 * s[0] * s[0] * s[1] * s[2] * s[3] * s[3] / 1e9;
      const struct { const char* name; tag layout; dnnl::algorithm alg; } ways[] = {
          {"nhwc", tag::nhwc, dnnl::algorithm::convolution_direct},
          {"any", tag::any, dnnl::algorithm::convolution_direct},
          {"nChw16c", tag::nChw16c, dnnl::algorithm::convolution_direct},
          {"winograd", tag::any, dnnl::algorithm::convolution_winograd}};
      for (const auto& way : ways) {
        Conv conv;
        const bool ok = Make(eng, s[0], s[1], s[2], s[3], d, way.layout, way.alg, &conv);
        const double us = ok ? MedianUs(conv.prim, conv.args, st, 30) : 0;
        std::printf("{\"dtype\": \"%s\", \"conv\": \"%dx%dx%d->%d k%d\", \"way\": \"%s\", \"impl\": \"%s\", "
                    "\"us\": %.0f, \"gflops_per_s\": %.0f}\n", d == dt::f32 ? "float32" : d == dt::bf16 ? "bfloat16" : "int8", s[0], s[0],
                    s[1], s[2], s[3], way.name, ok ? conv.impl.c_str() : "unsupported", us, ok ? gflop / us * 1e6 : 0);
      }
    }
  for (int m : {1, 8})
    for (dt d : {dt::f32, dt::bf16})
      for (tag layout : {tag::ab, tag::any}) {
        const int k = 25088, n = 4096;
        dnnl::memory::desc a({m, k}, d, tag::ab), w({k, n}, d, layout), c({m, n}, dt::f32, tag::ab);
        dnnl::matmul::primitive_desc pd(eng, a, w, c);
        dnnl::matmul mm(pd);
        Args args{{DNNL_ARG_SRC, dnnl::memory(a, eng)}, {DNNL_ARG_WEIGHTS, dnnl::memory(pd.weights_desc(), eng)},
                  {DNNL_ARG_DST, dnnl::memory(c, eng)}};
        Touch(args);
        std::printf("{\"dtype\": \"%s\", \"matmul\": \"%dx%d x %dx%d\", \"kernel\": \"%s\", \"impl\": \"%s\", "
                    "\"us\": %.0f}\n", d == dt::f32 ? "float32" : "bfloat16", m, k, k, n,
                    layout == tag::ab ? "as given" : "reordered", pd.impl_info_str(), MedianUs(mm, args, st, 20));
      }
  // A chain of 200 tiny convs (4x4x8, 1x1): waited for one by one, then queued and waited for once.
  Conv tiny;
  Make(eng, 4, 8, 8, 1, dt::f32, tag::nhwc, dnnl::algorithm::convolution_direct, &tiny);
  for (int queued = 0; queued < 2; ++queued) {
    const int n = 200;
    MedianUs(tiny.prim, tiny.args, st, 20);
    const double t0 = Now();
    for (int i = 0; i < n; ++i) {
      tiny.prim.execute(st, tiny.args);
      if (!queued) st.wait();
    }
    st.wait();
    std::printf("{\"chain\": \"%s\", \"us_per_conv\": %.1f}\n", queued ? "queued, one wait" : "a wait each",
                (Now() - t0) / n * 1e6);
  }
}
