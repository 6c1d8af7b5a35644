"""Looking inside the compiled training step, for `throughput.benchmark_training(profile_dir=..., hlo_out=...)`:
a jax.profiler trace (`*.xplane.pb`) summarised per kernel, per HLO op and per op kind (`trace_summary`), and the
step's HLO text written out (`write_text`)."""
from __future__ import annotations

import os

import jax


def write_text(path: str, text: str) -> int:
  """Writes `text` to `path` (gzip-compressed when it ends in .gz), making its folder; -> bytes written."""
  import gzip
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  data = text.encode()
  with (gzip.open(path, 'wb') if path.endswith('.gz') else open(path, 'wb')) as f:
    f.write(data)
  return os.path.getsize(path)


def _union_ns(intervals: list[tuple[float, float]]) -> float:
  """Total length of the union of [start, end) intervals (kernels on concurrent streams count once)."""
  total, end = 0.0, -float('inf')
  for s, e in sorted(intervals):
    if e > end:
      total += e - max(s, end)
      end = e
  return total


def _top(totals: dict, counts: dict, steps: int, n: int) -> list[dict]:
  """The n largest of `totals` (ns over `steps`), each with its share of the summed op time."""
  rows = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
  total = sum(totals.values())
  return [{'name': k[:160], 'ms_per_step': round(v / steps / 1e6, 3), 'calls_per_step': round(counts[k] / steps, 2),
           'frac': round(v / total, 4) if total else None} for k, v in rows]


# Lines a profiler derives from the kernels (xprof's names): listed with their busy time, not counted again.
DERIVED_LINES = frozenset({'XLA Ops', 'XLA Modules', 'Async XLA Ops', 'Steps', 'Framework Ops', 'Framework Name Scope',
                           'Source code', 'XLA TraceMe'})


def trace_summary(xplane_path: str, *, steps: int, wall_s: float, top: int = 30) -> dict:
  """What the device did during `steps` profiled steps, from a jax.profiler trace (`*.xplane.pb`): device busy
  time per step (the union of all its kernels) against the wall time per step, and the summed op time per kernel,
  per HLO op (the `hlo_op` each kernel ran for) and per HLO op kind (the op name without its '.N' suffix), largest
  first, with each one's share of the summed time ('frac'; concurrent kernels make the sum exceed the busy time).

  Device ops are the events on '/device:*' planes (GPU/TPU); without any (CPU) the events tagged with an
  `hlo_op` on the host planes stand in. A busy time well under the wall time means the device waits on the host
  (dispatch, input); a busy time near it means the kernels themselves are the cost."""
  import re
  data = jax.profiler.ProfileData.from_file(xplane_path)
  events, lines = [], []
  device_planes = [p for p in data.planes if p.name.startswith('/device:')]
  for plane in device_planes or list(data.planes):
    for line in plane.lines:
      busy, line_events = [], []
      for e in line.events:
        stats = dict(e.stats)
        if not device_planes and 'hlo_op' not in stats:
          continue
        line_events.append((e.name, float(e.start_ns), float(e.duration_ns), str(stats.get('hlo_op', ''))))
        busy.append((float(e.start_ns), float(e.start_ns) + float(e.duration_ns)))
      if busy:
        lines.append({'plane': plane.name, 'line': line.name, 'events': len(busy),
                      'busy_ms_per_step': round(_union_ns(busy) / steps / 1e6, 3)})
      if line.name not in DERIVED_LINES:  # the same time again, regrouped by the profiler
        events += line_events
  busy_ns = _union_ns([(s, s + d) for _, s, d, _ in events])
  by_kernel, by_op, by_kind, n_kernel, n_op, n_kind = {}, {}, {}, {}, {}, {}
  for name, _, dur, op in events:
    kind = re.sub(r'\.\d+$', '', op) if op else '(no hlo_op)'
    for totals, counts, key in ((by_kernel, n_kernel, name), (by_op, n_op, op or '(no hlo_op)'),
                                (by_kind, n_kind, kind)):
      totals[key] = totals.get(key, 0.0) + dur
      counts[key] = counts.get(key, 0) + 1
  wall_ms = wall_s / steps * 1e3
  busy_ms = busy_ns / steps / 1e6
  return {
      'trace_file': xplane_path,
      'steps': steps,
      'wall_ms_per_step': round(wall_ms, 3),
      'device_busy_ms_per_step': round(busy_ms, 3),
      'device_busy_frac': round(busy_ms / wall_ms, 4) if wall_ms else None,
      'op_ms_per_step': round(sum(d for _, _, d, _ in events) / steps / 1e6, 3),
      'device_planes': [p.name for p in device_planes],
      'events_per_step': round(len(events) / steps, 1),
      'lines': lines,
      'by_op_kind': _top(by_kind, n_kind, steps, top),
      'by_hlo_op': _top(by_op, n_op, steps, top),
      'by_kernel': _top(by_kernel, n_kernel, steps, top),
  }


def latest_xplane(log_dir: str) -> str:
  """The newest `*.xplane.pb` jax.profiler wrote under `log_dir`."""
  import glob
  files = glob.glob(os.path.join(log_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
  if not files:
    raise FileNotFoundError(f'{log_dir}: no plugins/profile/*/*.xplane.pb after the trace')
  return max(files, key=os.path.getmtime)
