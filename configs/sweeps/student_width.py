"""How small can the student get? Student width multipliers from teacher size (1.75: ~0.95x the teacher's params)
down to 0.25 (~42x fewer), each distilled from one shared teacher, then continued with the Siamese stage: every
variant reports the student without (`student`) and with (`student_siamese`) the Siamese stage.

  python -m launch.sweep --config=configs/sweeps/student_width.py --workdir=runs/student_width

Params of the 48x48 demo nets (embedding network; teacher vgg_small 939K):
  width 1.75 ~ teacher size, 1.0 299K (3.1x fewer), 0.75 172K (5.5x), 0.5 79K (11.8x, the demo student, baseline),
  0.375 47K (20.2x), 0.25 22K (42x).
"""
from __future__ import annotations

from configs.sweeps import pipeline_base, sweep, width

WIDTHS = (1.75, 1.0, 0.75, 0.5, 0.375, 0.25)


def get_config(arg: str | None = None):
  if arg == 'pipeline':
    return pipeline_base()
  if arg:
    raise ValueError(f"configs/sweeps/student_width.py arg {arg!r}: expected '' or 'pipeline'")
  variants = [{'name': f'w{w}', 'overrides': width(w)} for w in WIDTHS]
  return sweep(pipeline_base(), 'configs/sweeps/student_width.py:pipeline', variants, baseline='w0.5',
               shared_teacher='w0.5')
