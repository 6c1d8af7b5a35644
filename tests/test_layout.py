"""The import direction and the module sizes of DESIGN.md, checked on the source: every `import` in facejax/ (module
level or inside a function: a lazy import is an edge too) is parsed with `ast`, never executed.

  data, models, losses (0) -> runs (1) -> inference, convert (2) -> evaluation (3) -> train (4)
    -> pipeline, sweep, sweep_report (5)

markdown (the tables every report writes) is a small helper at the bottom, in layer 0 with data, models and
losses: anything may use it, it uses nothing of facejax.

No edge points up this order, no modules import each other in a circle, and nothing in facejax/ imports launch/,
tests/, configs/ or bench/ (launch/ sits above everything; configs/ are read by path, never imported; bench/ holds
the PyTorch twins and the other frameworks' anchors of launch.compare_cpu), nor torch or keras (test-only references:
torch checkpoints are read by facejax.convert.torch_file).

Sizes: no module in facejax/ is over MAX_MODULE_LINES (one that grows past it does several things: split it by
what it does, as throughput -> throughput, throughput_input, throughput_report), and no launch/ script is over
MAX_LAUNCH_LINES (a script parses flags and calls one library function; its logic belongs in facejax/)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'facejax'

LAYERS = {
    'facejax.data': 0, 'facejax.models': 0, 'facejax.losses': 0,
    'facejax.markdown': 0,  # a small helper at the bottom: the markdown tables of every report
    'facejax.runs': 1,
    'facejax.inference': 2, 'facejax.convert': 2,
    'facejax.evaluation': 3,
    'facejax.train': 4,
    'facejax.pipeline': 5, 'facejax.lineage': 5, 'facejax.data_efficiency': 5, 'facejax.sweep': 5,
    'facejax.sweep_report': 5,
}
FORBIDDEN = ('launch', 'tests', 'configs', 'bench', 'torch', 'keras')  # top-level names facejax/ never imports
MAX_MODULE_LINES = 500
MAX_LAUNCH_LINES = 120
# Launch scripts over MAX_LAUNCH_LINES for now, each with its own cap: their logic is still to move into facejax/.
LAUNCH_LINES_ALLOWED = {
    'export.py': 150,  # --dtype=auto's candidates and the ONNX Runtime hand-over belong in facejax.inference.export
}


def module_files(root: str = ROOT) -> dict[str, str]:
  """facejax module name -> its file (a package is its __init__.py)."""
  out = {}
  for d, _, files in os.walk(os.path.join(root, PACKAGE)):
    for f in files:
      if f.endswith('.py'):
        parts = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
        if parts[-1] == '__init__':
          parts = parts[:-1]
        out['.'.join(parts)] = os.path.join(d, f)
  return out


def imports(name: str, path: str, modules: set[str]) -> list[tuple[str, int]]:
  """Every module `name` imports (anywhere in the file) -> [(imported module, line)]. `from a.b import c` is
  a.b.c when that is a module of the package, else a.b; relative imports are resolved against `name`."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  is_package = path.endswith('__init__.py')
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno) for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parent = name.split('.')[:len(name.split('.')) - node.level + is_package]
        base = '.'.join(parent + ([base] if base else []))
      for a in node.names:
        full = f'{base}.{a.name}'
        out.append((full if full in modules else base, node.lineno))
  return out


def layer(module: str) -> int | None:
  for prefix, level in LAYERS.items():
    if module == prefix or module.startswith(prefix + '.'):
      return level
  return None


def import_graph(root: str = ROOT) -> tuple[dict[str, dict[str, int]], list[str]]:
  """-> ({module: {imported facejax module: first line}}, forbidden imports as 'module:line imports X')."""
  files = module_files(root)
  graph, forbidden = {}, []
  for name, path in sorted(files.items()):
    graph[name] = {}
    for target, line in imports(name, path, set(files)):
      if target.split('.')[0] in FORBIDDEN:
        forbidden.append(f'{name}:{line} imports {target}')
      elif target in files and target != name:
        graph[name].setdefault(target, line)
  return graph, forbidden


def upward_edges(graph: dict[str, dict[str, int]]) -> list[str]:
  return [f'{a}:{line} (layer {layer(a)}) imports {b} (layer {layer(b)})'
          for a, targets in graph.items() for b, line in targets.items()
          if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)]


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan), each sorted."""
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, {}):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_every_module_has_a_layer():
  graph, _ = import_graph()
  assert len(graph) > 20  # the walk found the package
  unplaced = [m for m in graph if m != PACKAGE and layer(m) is None]
  assert not unplaced, f'modules outside the layer order of DESIGN.md (add them to LAYERS): {unplaced}'


def test_no_import_points_up_the_layers():
  graph, _ = import_graph()
  bad = upward_edges(graph)
  assert not bad, 'imports against the direction ' + ' -> '.join(LAYERS) + ':\n' + '\n'.join(bad)


def test_no_import_circles():
  graph, _ = import_graph()
  found = cycles(graph)
  detail = '\n'.join(' <-> '.join(c) + ': ' + ', '.join(f'{a} -> {b} (line {graph[a][b]})' for a in c
                                                        for b in graph[a] if b in c) for c in found)
  assert not found, f'modules that import each other in a circle:\n{detail}'


def package_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
  """Modules collapsed to their package under facejax/ (facejax.data.align -> facejax.data) -> {package:
  {imported package: 'the first module edge behind it'}}."""
  top = lambda m: '.'.join(m.split('.')[:2])
  out = {}
  for a, targets in graph.items():
    for b, line in targets.items():
      if top(a) != top(b):
        out.setdefault(top(a), {}).setdefault(top(b), f'{a}:{line} -> {b}')
  return out


def test_no_import_circles_between_packages():
  """Same-layer packages (data and models; inference and convert) may use each other, but never both ways."""
  packages = package_graph(import_graph()[0])
  found = cycles(packages)
  detail = '\n'.join(', '.join(packages[a][b] for a in c for b in packages[a] if b in c) for c in found)
  assert not found, f'packages that import each other in a circle:\n{detail}'


def test_facejax_imports_no_launch_tests_or_configs():
  _, forbidden = import_graph()
  assert not forbidden, '\n'.join(forbidden)


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
  """The checker itself: a function-level import is an edge, a relative import resolves, an upward edge, a circle
  and an import of launch/ are all reported."""
  pkg = tmp_path / PACKAGE
  for d in ('data', 'train'):
    (pkg / d).mkdir(parents=True)
    (pkg / d / '__init__.py').write_text('')
  (pkg / '__init__.py').write_text('')
  (pkg / 'data' / 'a.py').write_text('def f():\n  from facejax.train import loop\n')
  (pkg / 'data' / 'b.py').write_text('from . import c\n')
  (pkg / 'data' / 'c.py').write_text('import facejax.data.b\nimport launch.train\n')
  (pkg / 'train' / 'loop.py').write_text('from facejax.data import a\n')
  graph, forbidden = import_graph(str(tmp_path))
  assert graph['facejax.data.a'] == {'facejax.train.loop': 2}
  assert graph['facejax.data.b'] == {'facejax.data.c': 1}
  assert upward_edges(graph) == ['facejax.data.a:2 (layer 0) imports facejax.train.loop (layer 4)']
  assert cycles(graph) == [['facejax.data.a', 'facejax.train.loop'], ['facejax.data.b', 'facejax.data.c']]
  assert cycles(package_graph(graph)) == [['facejax.data', 'facejax.train']]
  assert forbidden == ['facejax.data.c:2 imports launch.train']


def line_count(path: str) -> int:
  with open(path, 'rb') as f:
    return sum(1 for _ in f)


def oversized(paths: list[str], limit: int, root: str = ROOT, allowed: dict[str, int] | None = None) -> list[str]:
  """'relative/path.py: N lines (at most M)' for each file over `limit` (or over its own cap in `allowed`, by file
  name), sorted by path."""
  allowed = allowed or {}
  out = []
  for path in sorted(paths):
    n, cap = line_count(path), allowed.get(os.path.basename(path), limit)
    if n > cap:
      out.append(f'{os.path.relpath(path, root)}: {n} lines (at most {cap})')
  return out


def launch_scripts(root: str = ROOT) -> list[str]:
  d = os.path.join(root, 'launch')
  return [os.path.join(d, f) for f in os.listdir(d) if f.endswith('.py') and f != '__init__.py']


def test_no_module_is_over_the_size_bound():
  big = oversized(list(module_files().values()), MAX_MODULE_LINES)
  assert not big, 'facejax/ modules over the size bound (split each by what it does):\n' + '\n'.join(big)


def test_launch_scripts_are_flags_plus_a_library_call():
  scripts = launch_scripts()
  assert len(scripts) > 10  # the walk found launch/
  big = oversized(scripts, MAX_LAUNCH_LINES, allowed=LAUNCH_LINES_ALLOWED)
  assert not big, ('launch/ scripts over the size bound (move their logic into a facejax/ function):\n'
                   + '\n'.join(big))
  stale = sorted(f for f in LAUNCH_LINES_ALLOWED if not os.path.exists(os.path.join(ROOT, 'launch', f))
                 or line_count(os.path.join(ROOT, 'launch', f)) <= MAX_LAUNCH_LINES)
  assert not stale, f'LAUNCH_LINES_ALLOWED: {stale} no longer need(s) an allowance: remove the entry'


def test_the_size_check_names_file_and_count(tmp_path):
  (tmp_path / 'launch').mkdir()
  for name, lines in (('small.py', 3), ('big.py', 5), ('known.py', 6)):
    (tmp_path / 'launch' / name).write_text('x = 1\n' * lines)
  scripts = launch_scripts(str(tmp_path))
  assert oversized(scripts, 4, str(tmp_path)) == ['launch/big.py: 5 lines (at most 4)',
                                                   'launch/known.py: 6 lines (at most 4)']
  assert oversized(scripts, 4, str(tmp_path), allowed={'known.py': 6}) == ['launch/big.py: 5 lines (at most 4)']
