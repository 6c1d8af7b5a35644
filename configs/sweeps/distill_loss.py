"""Which distillation signal helps the demo student (width 0.5, from one shared teacher)? All variants keep the
same student, steps and Siamese stage; only the student stage's loss changes:

  both     embedding mimic (L2, weight 1) + soft targets (KL at T=4, weight 0.5) + hard labels (0.5): the demo recipe
  embed    embedding mimic + hard labels
  soft     soft targets + hard labels
  none     hard labels only (weight 1): no distillation, the student trained like the teacher

  python -m launch.sweep --config=configs/sweeps/distill_loss.py --workdir=runs/distill_loss
"""
from __future__ import annotations

from configs.sweeps import pipeline_base, sweep

LOSSES = {
    'both': dict(embed_weight=1.0, soft_weight=0.5, hard_weight=0.5),
    'embed': dict(embed_weight=1.0, soft_weight=0.0, hard_weight=0.5),
    'soft': dict(embed_weight=0.0, soft_weight=0.5, hard_weight=0.5),
    'none': dict(embed_weight=0.0, soft_weight=0.0, hard_weight=1.0),
}


def get_config(arg: str | None = None):
  if arg == 'pipeline':
    return pipeline_base()
  if arg:
    raise ValueError(f"configs/sweeps/distill_loss.py arg {arg!r}: expected '' or 'pipeline'")
  variants = [{'name': name, 'overrides': {f'student.distill.{k}': v for k, v in weights.items()}}
              for name, weights in LOSSES.items()]
  return sweep(pipeline_base(), 'configs/sweeps/distill_loss.py:pipeline', variants, baseline='both',
               shared_teacher='both')
