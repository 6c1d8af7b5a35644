"""Markdown tables of training throughput records (`facejax.train.throughput.benchmark_training`, one JSON record per
run): every run (`summary_table`), and each on-device run beside the real input pipeline's (`paired_table`)."""
from __future__ import annotations

import json

from facejax import markdown
from facejax.inference.hardware import cpu_text
from facejax.train.config import TINY_FIELDS


def _kwargs_text(record: dict) -> str:
  """' key=v1/v2 ...' of a record's model kwargs ('' without): variants of one model stay apart in tables."""
  kwargs = record.get('model_kwargs') or {}
  show = lambda v: '/'.join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
  return ''.join(f' {k}={show(v)}' for k, v in sorted(kwargs.items()))


def summary_table(records: list[dict]) -> str:
  """Markdown: one row per measurement (task, model, data, batch, img/s, step ms, MFU, compile s, memory)."""
  def fmt(v, f='{:.1f}'):
    return '-' if v is None else f.format(v)

  head = ['name', 'task', 'model', 'data', 'batch', 'img/s', 'step ms', 'MFU', 'compile s', 'peak mem GiB',
          'loader img/s']
  cells = []
  for r in records:
    if 'error' in r:
      cells.append([r.get('name', '?'), f"failed: {r['error'][:80]}"] + [''] * 9)
      continue
    data = r['data'] if r['data'] == 'device' else (f"loader ({r.get('prefetch')}, {r.get('num_workers')}w, "
                                                      f"cache {r.get('cache')})")
    mem = r.get('memory', {}).get('peak_bytes_in_use')
    cells.append([r.get('name', ''), r['task'], f"{r['label']}@{r['image_size']}{_kwargs_text(r)}", data,
                  r['batch_size'],
                  fmt(r['img_per_s'], '{:.0f}'), fmt(r['step_ms_median'], '{:.2f}'),
                  fmt(None if r['mfu'] is None else 100 * r['mfu'], '{:.1f}%'),
                  f"{fmt(r['compile_s'])}{' (cache)' if r.get('compile_cache_hit') else ''}",
                  fmt(None if mem is None else mem / 2**30, '{:.1f}'), fmt(r.get('loader_img_per_s'), '{:.0f}')])
  lines = [markdown.table(head, cells, 'llllrrrrrrr')]
  if records:
    r = next((x for x in records if 'device_kind' in x), {})
    lines.append('')
    lines.append(f"{r.get('num_devices', '?')} x {r.get('device_kind', '?')} ({r.get('backend', '?')}), jax "
                 f"{r.get('jax_version', '?')}, peak {r.get('peak_tflops')} TFLOP/s bf16 per chip"
                 + (f'; host CPU {cpu_text(r)}' if r.get('cpu') else ''))
  return '\n'.join(lines)


def paired_table(records: list[dict]) -> str:
  """Markdown: on-device batch vs the real pipeline (thread prefetch, no cache), the augmentation on the host and
  on the device, for each task / model / batch / model kwargs / XLA flags measured on device, with the device
  run's MFU and compile time (first of each); the ratio is the faster pipeline's."""
  def key(r):
    return (r['task'], r['label'], r['image_size'], r['batch_size'], json.dumps(r.get('model_kwargs') or {}),
            r.get('xla_flags') or '')

  device, pipeline = {}, {}
  for r in records:
    if 'error' in r:
      continue
    if r['data'] == 'device':
      device.setdefault(key(r), r)
    elif r.get('prefetch') == 'thread' and r.get('cache') in (None, 'none'):
      pipeline.setdefault((key(r), r.get('augment_on') or 'host'), r)
  head = ['task', 'model', 'batch', 'img/s on-device batch', 'img/s pipeline, augment on host',
          'img/s pipeline, augment on device', 'pipeline / device', 'MFU', 'compile s']
  cells = []
  shown = [r for r in records if 'error' not in r]
  common = set.intersection(*(set((r.get('xla_flags') or '').split()) for r in shown)) if shown else set()
  for k, d in device.items():
    rates = [pipeline[(k, on)]['img_per_s'] if (k, on) in pipeline else None for on in ('host', 'device')]
    best = max((x for x in rates if x is not None), default=None)
    kwargs = ', '.join(f'{a}={b}' for a, b in json.loads(k[4]).items() if a not in TINY_FIELDS)
    flags = ' '.join(f for f in k[5].split() if f not in common)
    mfu = '-' if d['mfu'] is None else f"{100 * d['mfu']:.1f}%"
    cells.append([d['task'], f"{d['label']}@{d['image_size']}{f' ({kwargs})' if kwargs else ''}"
                             f"{f' [{flags}]' if flags else ''}", d['batch_size'], f"{d['img_per_s']:,.0f}"]
                 + ['-' if x is None else f'{x:,.0f}' for x in rates]
                 + ['-' if best is None else format(best / d['img_per_s'], '.2f'), mfu,
                    f"{d['compile_s']:.1f}{' (cache)' if d.get('compile_cache_hit') else ''}"])
  lines = [markdown.table(head, cells, 'llrrrrrrr')]
  if common:
    lines += ['', f"XLA_FLAGS of every run: {' '.join(sorted(common))}"]
  return '\n'.join(lines)
