"""facejax.markdown: the one table writer of every report."""
import pytest

from facejax import markdown


def test_table_aligns_columns_and_refuses_ragged_rows():
  assert markdown.table(['model', 'ms'], [['a', 1.5], ['b', '-']], 'lr') == (
      '| model | ms |\n|---|---:|\n| a | 1.5 |\n| b | - |')
  assert markdown.table(['x'], [], 'l') == '| x |\n|---|'
  with pytest.raises(ValueError, match=r"align='l': expected one of l/r per column \(2 columns\)"):
    markdown.table(['model', 'ms'], [], 'l')
  with pytest.raises(ValueError, match=r"a row of 1 cells for 2 columns: \['a'\]"):
    markdown.table(['model', 'ms'], [['a']], 'lr')
