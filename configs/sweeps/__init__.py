"""Sweep configs (facejax.sweep): each `get_config(arg)` returns the sweep, and `get_config('pipeline')` the pipeline
config its variants start from (what the per-variant command lines load).

  python -m launch.sweep --config=configs/sweeps/<name>.py --workdir=runs/<name> [--print_commands]
"""
from __future__ import annotations

from typing import Sequence

import ml_collections

from configs import demo
from facejax.models.registry import MODELS

STUDENT_WIDTH = MODELS['student_vgg'].backbone.keywords['width']  # the demo student's multiplier


def pipeline_base(arg: str | None = None) -> ml_collections.ConfigDict:
  """configs/demo.py with the student width as an explicit field (student and Siamese stage), so a command line can
  override it: `--config.student.model.kwargs.width=0.25` needs the field to exist."""
  c = demo.get_config(arg)
  for stage in (c.student, c.siamese):
    stage.model.kwargs.width = STUDENT_WIDTH
  return c


def width(w: float) -> dict:
  """Overrides for a student width multiplier (the Siamese stage continues the same network)."""
  return {'student.model.kwargs.width': w, 'siamese.model.kwargs.width': w}


def sweep(base: ml_collections.ConfigDict, base_config: str, variants: Sequence[dict], baseline: str,
          shared_teacher: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.base = base
  c.base_config = base_config
  c.variants = list(variants)
  c.grid = []
  c.baseline = baseline
  c.shared_teacher = shared_teacher
  return c
