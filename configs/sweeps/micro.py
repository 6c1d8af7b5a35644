"""Two-variant micro sweep for tests (seconds per stage): the demo's micro pipeline at student width 0.5 (trains
the shared teacher, baseline) and 0.25 without the Siamese stage. ':with_failure' adds a variant that crashes.

  python -m launch.sweep --config=configs/sweeps/micro.py --workdir=/tmp/micro_sweep
"""
from __future__ import annotations

from configs.sweeps import pipeline_base, sweep, width


def get_config(arg: str | None = None):
  if arg == 'pipeline':
    return pipeline_base('micro')
  variants = [{'name': 'w0.5', 'overrides': width(0.5)},
              {'name': 'w0.25', 'overrides': {**width(0.25), 'siamese.total_steps': 0}}]
  if arg == 'with_failure':  # valid config, fails at run time: the sweep must record it and go on
    variants.append({'name': 'broken', 'overrides': {'student.model.name': 'no_such_model'}})
  elif arg:
    raise ValueError(f"configs/sweeps/micro.py arg {arg!r}: expected '', 'pipeline' or 'with_failure'")
  return sweep(pipeline_base('micro'), 'configs/sweeps/micro.py:pipeline', variants, baseline='w0.5',
               shared_teacher='w0.5')
