"""How small can the student get? Student width multipliers from teacher size down to 42x fewer params, each
distilled from one shared teacher and then continued with the Siamese stage: every variant reports the student
without (`student`) and with (`student_siamese`) the Siamese stage.

  python -m launch.sweep --config=configs/sweeps/student_width.py --workdir=runs/student_width

Width 1.0 is the teacher's conv stack (vgg_small: 16-128 channels) with global pooling instead of its 512-d fc
layer. Params of the 48x48 embedding networks (teacher 939K):
  w1.0 299K (3.1x fewer), w0.75 172K (5.5x), w0.5 79K (11.8x; the demo student, baseline), w0.375 47K (20.2x),
  w0.25 22K (42x).
"""
from __future__ import annotations

from configs.sweeps import pipeline_base, sweep, width

WIDTHS = (1.0, 0.75, 0.5, 0.375, 0.25)


def get_config(arg: str | None = None):
  if arg == 'pipeline':
    return pipeline_base()
  if arg:
    raise ValueError(f"configs/sweeps/student_width.py arg {arg!r}: expected '' or 'pipeline'")
  variants = [{'name': f'w{w}', 'overrides': width(w)} for w in WIDTHS]
  return sweep(pipeline_base(), 'configs/sweeps/student_width.py:pipeline', variants, baseline='w0.5',
               shared_teacher='w0.5')
