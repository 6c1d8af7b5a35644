"""Reports from `verification.evaluate` results: a markdown results table, a ROC plot (JSON-ready dicts:
`facejax.runs.jsonable`)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from facejax import markdown

TABLE_KEYS = ('params', 'gflops', 'cpu_ms_b1', 'accuracy', 'accuracy_std', 'auc', 'eer', 'tar_at_far_1e-3')


def summary_row(result: dict, **extra) -> dict:
  """`evaluate` result -> the results.json row {accuracy, accuracy_std, auc, eer, tar_at_far_1e-3} + `extra`
  (e.g. params, gflops, cpu_ms_b1)."""
  tar = result.get('tar_at_far', {})
  row = {'accuracy': result['accuracy'], 'accuracy_std': result['accuracy_std'], 'auc': result['auc'],
         'eer': result['eer'], 'tar_at_far_1e-3': tar.get(1e-3)}
  row.update(extra)
  return row


def results_markdown(rows: Mapping[str, Mapping]) -> str:
  """{name: {params, gflops, cpu_ms_b1, accuracy, accuracy_std, auc, eer, tar_at_far_1e-3}} -> markdown table.

  Missing or None values print as '-'. Accuracy, EER and TAR are in percent; std is the fold std (ddof=0).
  """
  cells = []
  for name, row in rows.items():
    acc, std = row.get('accuracy'), row.get('accuracy_std')
    acc_text = _fmt(acc, lambda v: f'{100 * v:.2f}')
    if acc is not None and std is not None:
      acc_text += f' +- {100 * std:.2f}'
    cells.append([str(name), _fmt(row.get('params'), _count), _fmt(row.get('gflops'), lambda v: f'{v:.3g}'),
                  _fmt(row.get('cpu_ms_b1'), lambda v: f'{v:.2f}'), acc_text,
                  _fmt(row.get('auc'), lambda v: f'{v:.4f}'), _fmt(row.get('eer'), lambda v: f'{100 * v:.2f}'),
                  _fmt(row.get('tar_at_far_1e-3'), lambda v: f'{100 * v:.2f}')])
  head = ['model', 'params', 'GFLOPs', 'CPU ms/img', 'accuracy (%)', 'AUC', 'EER (%)', 'TAR@FAR=1e-3 (%)']
  return markdown.table(head, cells, 'lrrrrrrr') + '\n'


def plot_roc(results: Mapping[str, dict], path, title: str = 'ROC', min_far: float | None = None) -> None:
  """Writes a PNG of TAR vs FAR (log axis) for {name: evaluate result}, one curve per model, EER marked.

  The FAR axis starts at `min_far`, by default the smallest nonzero FAR any curve reaches (1 / #different pairs).
  """
  # Figure + Agg canvas directly: no pyplot global state, no backend switch for the caller.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  if not results:
    raise ValueError('results: expected at least one {name: evaluate result}, got none')
  fig = Figure(figsize=(6, 4.5), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  if min_far is None:
    positive = [np.min(r['roc']['fpr'][r['roc']['fpr'] > 0]) for r in results.values() if np.any(r['roc']['fpr'] > 0)]
    min_far = min(positive) if positive else 1e-4
  for name, r in results.items():
    fpr, tpr = np.asarray(r['roc']['fpr']), np.asarray(r['roc']['tpr'])
    # The ROC points already form the staircase (ties give diagonals), so join them directly.
    line, = ax.plot(np.maximum(fpr, min_far), tpr, linewidth=1.2,
                    label=f'{name} (AUC {r["auc"]:.4f}, EER {100 * r["eer"]:.2f}%)')
    ax.plot([max(r['eer'], min_far)], [1 - r['eer']], 'o', color=line.get_color(), markersize=5)
  far = np.logspace(np.log10(min_far), 0, 200)  # FAR = FRR is curved on a log axis
  ax.plot(far, 1 - far, ':', color='gray', linewidth=0.8, label='FAR = FRR')
  ax.set_xscale('log')
  ax.set_xlim(min_far, 1)
  ax.set_ylim(0, 1.005)
  ax.set_xlabel('false accept rate (FAR)')
  ax.set_ylabel('true accept rate (TAR)')
  ax.set_title(title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, format='png')


def _fmt(value, fmt) -> str:
  return '-' if value is None else fmt(value)


def _count(n) -> str:
  for scale, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
    if n >= scale:
      return f'{n / scale:.2f}{suffix}'
  return str(int(n))
