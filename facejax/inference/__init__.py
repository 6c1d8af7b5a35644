"""Inference: jitted embedders, AOT benchmarks, inference-only rewrites and serialized exports.

Import cost matters here: `load_exported` must work in a process that never imports `facejax.models`, so
this package imports its submodules lazily.

CPU levers, as measured (2-vCPU Intel Xeon VMs, jax 0.10.2, ResNet-50 embedder b1 224 unless said; every comparison
from one process, variants interleaved. The VMs changed between sessions: the first ones had no AMX and were
shared (load 1.5-7, absolute numbers moved 2-5x); the latest is a quiet Sapphire Rapids with AMX (amx_bf16,
amx_int8), where ONNX Runtime float32 runs ResNet-50 at ~310 GFLOP/s, ~93% of the two cores' AVX-512 FMA peak):

- AMX / avx512_bf16 (latest VM). Matmul alone, 2 cores: float32 145-220 GFLOP/s; bf16 x bf16 -> f32
  (`preferred_element_type=float32`) 500-760; bf16 -> bf16 output 90-140 (slower than float32); int8 x int8
  -> int32 800-1,860. So the bf16 policy accumulates in float32. XLA CPU upcasts bf16 pads, slices and
  concatenations (and bf16 convolutions) to float32: gathering the im2col columns as uint16 bits keeps them 2
  bytes (ResNet-50 bf16 all-im2col 31 -> 25 ms; the copies had cost more than the AMX dots). Per conv layer
  (b1): bf16 im2col vs XLA float32 conv 0.6 vs 1.2 ms at 14x14x256, 5.2 vs 12.8 at 28x28x512, 6.8 vs 13.0 at
  56x56x256, 5.4 vs 7.8 at 112x112 64->128, but 28 vs 12 at 112x112x128 and 60 vs 12 at 224x224x64 (the copy
  no longer fits the caches), and 2.7 vs 1.7 on RGB inputs: hence the 16 MB im2col-matrix rule and the float32
  stems. A batch-1 dense layer is a matrix-vector product that XLA upcasts from bf16/int8, converting the
  kernel every call (VGG-16 fc6 113 ms vs 18 float32); stored transposed [F, K] it streams in 12 ms vs 35.
  Result: ResNet-50 b1 bf16 26.4 ms vs ONNX Runtime 26.3, int8 24.5; VGG-16 b1 bf16 91.7 vs 103.9.
  Static int8 activation scales (`calibration=`, max |input| over calibration faces) remove the per-example
  max-abs pass and let the quantise fuse: ResNet-50 b1 21.6 vs 25.5 ms dynamic (ORT 27.7), b8 20.0 vs 25.8
  ms/img; VGG-16 b1 69.3 vs 78.2. A mixed policy (int8 for k>1 convs, bf16 for 1x1) gained only at b8 (20.6
  vs 25.7 ms/img) and was not kept; nor were bf16 activations stored between layers (28.3 vs 26.4 ms: XLA
  upcasts the elementwise ops) or a [9, M, C] multi-contraction dot instead of the concatenated im2col (XLA
  transposes it back into a 2-D GEMM: 2.8 vs 1.6 ms).
  Verification accuracy of the exports (`launch.export --dtype=... [--calibration=256]` then `launch.evaluate`,
  synthetic pairs, 600 pairs, 10 folds), float32 / bf16 / int8 / int8 static: demo teacher 97.50 / 97.50 /
  97.50 / 97.33 %, student 95.50 / 95.83 / 95.67 / 95.83, student_siamese 96.33 / 96.33 / 95.83 / 96.50; dlib's
  converted face ResNet (real trained weights) 73.83 / 75.33 / 75.17 / 74.17, AUC 0.8340 / 0.8339 / 0.8356 /
  0.8270.
- BN folding (optimize.fold_batch_norm): needed for everything below; alone, native convs, constants:
  74 ms vs 84 ms for `jax.jit(model.apply)`.
- Weights as compile-time constants vs arguments: constants win (native convs 74 vs 95 ms; im2col 66 vs 73).
  Default `weights='const'`; export bakes them in anyway.
- Conv lowering. im2col-from-slices (one matmul over k*k concatenated shifted slices) beats XLA's native
  convolution only on small maps: 7x7x512 3.8 vs 5.6 ms, but 56x56x64 4.1 vs 1.8 ms and 224x224x64 250 vs 41
  ms (it copies the input 9x). Winograd F(2x2,3x3) wins on <=14x14 maps (7x7x512 1.7 vs 2.8 ms; b8 14x14x256
  5.0 vs 7.1 ms) and loses on large ones (224x224x64 60 vs 16 ms). `conv='auto'` (default) = native conv
  above 14x14, Winograd for 3x3/s1 at <=14x14, im2col matmul for the rest and for 1x1: ResNet-50 b1 on a
  quiet machine 44.7 ms vs 52.9 (all im2col), 62.2 (all native), 80.6 (plain).
- Dtypes on the earlier VMs without AMX: bf16 (bf16 outputs then) slower or equal (74 vs 66 ms; VGG-16 1.7x
  slower). int8 (per-channel weights, per-example dynamic activations, int8 x int8 -> int32 dots over im2col):
  2-2.6x faster than float32 (quiet: 25.8 vs 44.7 ms; loaded: 44.5 vs 76.5), embedding cosine to float32 >= 0.999
  on random weights (MobileFaceNet: 0.995). With conv='auto' int8 keeps float native convs on maps above
  112x112 (VGG-16's first block): all-im2col int8 there is slower than float (VGG-16 b1 403 vs 318 ms).
  ONNX Runtime's own dynamic int8 (ConvInteger) is 4x slower than its float32.
- XLA CPU options (per executable via `compiler_options`, see optimize.DEFAULT_COMPILER_OPTIONS):
  `xla_cpu_experimental_ynn_fusion_type=DOT,ELTWISE` (bias/ReLU/residual into the YNNPACK matmul fusion)
  helps when matmuls dominate (ResNet-50 im2col 100 vs 141 ms, 115 vs 143; one run even) and hurts when native
  convs dominate (VGG-16: XLA hands whole conv chains to YNNPACK as one fusion, 520 vs 239 ms thread time) and
  with int8 (quantise ops go to YNNPACK's slow path: 494 vs 46 ms): on only when im2col/Winograd FLOPs are the
  majority. When native convs dominate, `...=INDIVIDUAL_DOT` (YNNPACK gets single dots; convs, pools and the
  fc layers are not chained into one YNNPACK subgraph): VGG-16 b1 269 vs 345 ms, b8 1.9 vs 5.3 s per batch
  (the default chains conv5's pools and fc6/fc7 into one fusion that takes 3.6 s at b8; fc6 alone is 0.12 s).
  `lax.optimization_barrier` does not stop that fusion (XLA CPU strips barriers before fusing). `...=DOT,INDIVIDUAL_CONVOLUTION` (YNNPACK convs): 102-116 vs 141-146 ms for all-native, worse
  than 'auto'. `--xla_cpu_use_xnnpack`, `--xla_cpu_use_onednn`, `--xla_cpu_experimental_xnn_graph_fusion_mode`,
  `--xla_cpu_use_thunk_runtime=false`: no change on the matmuls (jax 0.10 already runs them in YNNPACK).
  glibc malloc thresholds (page faults of per-call temporaries): no change. Splitting VGG's fc6 matrix-vector
  product into column blocks: no change. Two-stage (row, column) im2col concatenation: no gain.
- Threads: XLA's pool and ONNX Runtime degrade gracefully when another process holds a core; PyTorch eager
  on 2 OpenMP threads collapses (2 s for a 100 ms net), so compare_cpu also reports it on one thread.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    'make_embed_fn': 'embed', 'embed_images': 'embed', 'resize_center_crop': 'embed',
    'benchmark': 'benchmark', 'benchmark_model': 'benchmark',
    'optimize_for_inference': 'optimize', 'fold_batch_norm': 'optimize',
    'export_embedder': 'export', 'save_exported': 'export', 'load_exported': 'export',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'facejax.inference.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module facejax.inference has no attribute {name!r}')
