"""Markdown tables: the one writer behind every report's table (each report formats its own cells)."""
from __future__ import annotations

from typing import Sequence


def row(cells: Sequence) -> str:
  return '| ' + ' | '.join(map(str, cells)) + ' |'


def table(head: Sequence[str], rows: Sequence[Sequence], align: str) -> str:
  """Column titles, rows of cells and one 'l' (text) or 'r' (numbers) per column -> the table's lines joined by
  newlines (no trailing newline)."""
  if len(align) != len(head) or set(align) - set('lr'):
    raise ValueError(f'align={align!r}: expected one of l/r per column ({len(head)} columns)')
  for cells in rows:
    if len(cells) != len(head):
      raise ValueError(f'a row of {len(cells)} cells for {len(head)} columns: {list(cells)}')
  rule = '|' + ''.join('---:|' if a == 'r' else '---|' for a in align)
  return '\n'.join([row(head), rule] + [row(cells) for cells in rows])
