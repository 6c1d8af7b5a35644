"""Inference: jitted embedders, AOT benchmarks, inference-only rewrites and serialized exports.

Import cost matters here: `load_exported` must work in a process that never imports `facejax.models`, so
this package imports its submodules lazily.

The measured CPU levers behind the optimized path are in docs/cpu_inference.md.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    'make_embed_fn': 'embed', 'embed_images': 'embed', 'resize_center_crop': 'embed',
    'benchmark': 'benchmark', 'benchmark_model': 'benchmark',
    'optimize_for_inference': 'optimize', 'fold_batch_norm': 'optimize.fold',
    'export_embedder': 'export', 'save_exported': 'export', 'load_exported': 'export',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'facejax.inference.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module facejax.inference has no attribute {name!r}')
