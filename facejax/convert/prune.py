"""Students cut from their teacher: the same net at a fraction of the width (and, for dlib, fewer blocks),
initialised with the teacher's most-used channels instead of at random.

  variables, report = prune_dlib(teacher_variables, width=0.32, images=x, blocks=(1, 2, 2, 2, 1))
  # x: dlib-preprocessed chips; blocks: residual blocks kept per stage (dlib has 3, 4, 3, 3, 1)
  prune_dlib(teacher_variables, 1.0, x, (1, 2, 2, 2, 1), channels=(8, 24, 48, 96))  # channels per stream
  variables, report = prune_mobilenet(teacher_variables, teacher, student, x)  # two FaceNet(MobileNet)s

dlib's face ResNet (configs/real_faces.py's student). Each stage keeps its first block (it changes width and
resolution) and its strongest others, by the |gamma| of their last BatchNorm (how much they add to the stream); a
dropped stride-1 block leaves the stream as it was. Channels are kept per group, by how strongly the layers after
them read them (the L1 norm of the consuming kernels' input slices, scaled by the producing BatchNorm's |gamma|
inside a block):
- a residual stream (the stem and every block of a stage add into the same channels) keeps one channel set. Where
  a stage widens, dlib's add_prev zero-extends the pooled shortcut into the first channels, so the wider stream
  keeps the narrower one's channels first (in order), then its own best: the shortcut stays exactly a shortcut;
- each block's inner channels (conv1 -> bn1 -> conv2) are chosen on their own;
- the 128-d embedding keeps every output; its dense layer keeps the rows of the last stream's channels.
The converted teacher's BatchNorms are dlib's folded affines (mean 0, var + eps = 1). Trained as they are, batch
statistics would rescale every channel, so the cut net's BatchNorms are re-expressed on `images`
(`recalibrate_batchnorm`): each gets that batch's mean m and variance v of its input as running statistics,
gamma * sqrt(v + eps) as scale and beta + gamma * m as bias. On that batch, training mode then computes what the
cut net computes in eval mode, and eval mode computes it on average.

MobileNetV2 / EfficientNet-Lite (configs/real_transfer.py's student, cut from the fine-tuned ImageNet teacher):
every block is kept; the student has the teacher's blocks (expansion, kernel, stride, shortcuts) at its own width.
A residual stream (the blocks of a stage that add their input) keeps one channel set, by the L1 norm of every
kernel that reads it (the next expansions, the head conv); each block's expanded channels by |gamma| of the
depthwise BatchNorm times how strongly the projection reads them; the head's channels by |gamma| of its
BatchNorm times how strongly the embedding reads them. The embedding and classifier keep every output. The
teacher's BatchNorms are trained ones, so they keep their affine and get fresh running statistics
(`renormalise_batchnorm`): in training mode on `images`, each channel is normalised as the teacher learnt to, and
each BatchNorm's statistics are that batch's.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from facejax.convert.plan import flatten, unflatten
from facejax.models import dlib_resnet as dr
from facejax.models.mobilenet import MobileNet


@dataclasses.dataclass
class PruneReport:
  teacher_params: int
  student_params: int
  kept: dict  # group -> (kept, of); 'blocks' -> (kept, [teacher block indices])
  stage_channels: list  # per stage: the teacher channels its output holds (distillation hints compare these)

  @property
  def channels(self) -> list[int]:
    """Channels kept per residual stream (dlib_resnet.stream_groups)."""
    return [a for k, (a, _) in self.kept.items() if k.startswith('stream')]

  def summary(self) -> str:
    groups = ', '.join(f'{k} {a}/{b}' for k, (a, b) in self.kept.items() if k.startswith('stream'))
    n, blocks = self.kept['blocks']
    return (f'dlib ResNet cut to channels {"/".join(map(str, self.channels))}: {self.student_params:,} of '
            f'{self.teacher_params:,} parameters '
            f'({self.teacher_params / self.student_params:.1f}x fewer); streams kept: {groups}; residual blocks '
            f'kept: {n} of {len(dr.block_strides())} ({", ".join(map(str, blocks))})')


@dataclasses.dataclass
class MobileNetPruneReport(PruneReport):
  """teacher_params / student_params: the embedding networks' (no identity classifier), as the reports count."""
  arch: str = 'MobileNet'
  head: int = 0

  def summary(self) -> str:
    streams = '/'.join(str(a) for k, (a, _) in self.kept.items() if k.startswith('stream'))
    return (f'{self.arch} cut to streams {streams} and head {self.head}: {self.student_params:,} of '
            f'{self.teacher_params:,} parameters ({self.teacher_params / self.student_params:.1f}x fewer)')


def _l1_in(kernel: np.ndarray) -> np.ndarray:
  """[kh, kw, in, out] (or [in, out]) -> [in]: how strongly the layer reads each input channel."""
  k = np.abs(kernel)
  return k.reshape(-1, k.shape[-2], k.shape[-1]).sum(axis=(0, 2))


def _top(score: np.ndarray, n: int) -> np.ndarray:
  """The indices of the `n` highest scores, in index order."""
  return np.sort(np.argsort(-score, kind='stable')[:n]).astype(int)


def _misfit(student: nn.Module, variables: dict, image_shape) -> tuple[str, list] | None:
  """(collection, differing paths) where a cut's `variables` do not fit the tree `student` (a FaceNet) initialises
  for `image_shape` inputs (the paths are empty when only shapes differ), or None."""
  expected = jax.eval_shape(lambda: student.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)),
                                                 method='forward'))
  for col in expected:
    got, want = flatten(dict(variables[col])), flatten(dict(expected[col]))
    if set(got) != set(want) or any(got[p].shape != want[p].shape for p in want):
      return col, sorted(set(got) ^ set(want))[:5]
  return None


def select_blocks(params: dict, blocks, stages=dr.DLIB_STAGES) -> list[int]:
  """-> the teacher blocks a student with `blocks[s]` blocks in stage s keeps, in order: each stage's first block
  (it changes the width and resolution) and its strongest others, by how much they add to the stream
  (|gamma| of their last BatchNorm). Dropped blocks are stride-1 residual blocks: the stream goes on without them."""
  b = params['backbone']
  kept, i = [], 0
  for (_, n, _), want in zip(stages, dr.with_blocks(stages, blocks)):
    want = want[1]
    if want > n:
      raise ValueError(f'blocks={tuple(blocks)}: a stage of {n} blocks cannot keep {want}')
    rest = sorted(range(i + 1, i + n), key=lambda j: -float(np.abs(np.asarray(b[f'block{j}']['bn2']['scale'])).sum()))
    kept += [i] + sorted(rest[:want - 1])
    i += n
  return kept


def select_channels(params: dict, counts, kept_blocks=None, stages=dr.DLIB_STAGES) -> dict[str, np.ndarray]:
  """Teacher params (a FaceNet(DlibResNet) 'params' tree) and the channels to keep per residual stream
  (`dr.stream_channels`) -> kept teacher channel indices per group: 'stream<g>' for each residual stream and
  'block<i>' for the inner channels of each kept teacher block i (`kept_blocks`, default all), as many as its
  output stream keeps."""
  b = params['backbone']
  groups, widths = dr.stream_groups(stages)
  kept_blocks = range(len(groups)) if kept_blocks is None else kept_blocks
  readers = [np.zeros(w) for w in widths]  # stream channel importance: every kernel that reads the stream
  for i in kept_blocks:
    src = groups[i - 1] if i else 0  # block i reads the stream its predecessor (or the stem) wrote
    readers[src] += _l1_in(np.asarray(b[f'block{i}']['conv1']['kernel']))
  readers[groups[-1]] += _l1_in(np.asarray(params['embedding']['dense']['kernel']))
  keep, prev = {}, np.zeros(0, int)
  for g, (w, n) in enumerate(zip(widths, counts)):
    if not len(prev) <= n <= w:
      raise ValueError(f'stream {g} would keep {n} channels: expected between the {len(prev)} its shortcut '
                       f'carries in and the teacher\'s {w}')
    score = readers[g].copy()
    score[prev] = -np.inf  # the shortcut's channels are kept first (below), so never chosen again here
    rest = np.argsort(-score, kind='stable')[:n - len(prev)]
    keep[f'stream{g}'] = np.concatenate([prev, np.sort(rest)]).astype(int)
    prev = keep[f'stream{g}']
  for i in kept_blocks:
    blk = b[f'block{i}']
    score = np.abs(np.asarray(blk['bn1']['scale'])) * _l1_in(np.asarray(blk['conv2']['kernel']))
    keep[f'block{i}'] = _top(score, counts[groups[i]])
  return keep


def _cut(variables: dict, keep: dict, kept_blocks=None, stages=dr.DLIB_STAGES) -> dict:
  """Slices the teacher's tensors to the kept blocks and channels -> a FaceNet(DlibResNet(blocks=..., channels=...))
  variable tree (student block k is teacher block kept_blocks[k])."""
  groups, _ = dr.stream_groups(stages)
  kept_blocks = list(range(len(groups)) if kept_blocks is None else kept_blocks)
  ins, outs, source = {'conv0': np.arange(3)}, {'conv0': keep['stream0'], 'bn0': keep['stream0']}, {}
  for k, i in enumerate(kept_blocks):
    src = keep[f'stream{groups[i - 1]}'] if i else keep['stream0']
    ins[f'block{k}/conv1'], outs[f'block{k}/conv1'] = src, keep[f'block{i}']
    outs[f'block{k}/bn1'] = keep[f'block{i}']
    ins[f'block{k}/conv2'], outs[f'block{k}/conv2'] = keep[f'block{i}'], keep[f'stream{groups[i]}']
    outs[f'block{k}/bn2'] = keep[f'stream{groups[i]}']
    source[f'block{k}'] = f'block{i}'
  last = keep[f'stream{groups[-1]}']
  out = {}
  for col, tree in variables.items():
    teacher = flatten(dict(tree))
    student = {p: np.asarray(v)[last] if p == 'embedding/dense/kernel' else np.asarray(v)
               for p, v in teacher.items() if not p.startswith('backbone/')}
    for layer in outs:  # every student backbone layer, from its teacher layer
      block, _, sub = layer.rpartition('/')
      prefix = f'backbone/{source[block]}/{sub}/' if block else f'backbone/{layer}/'
      for path, v in teacher.items():
        if path.startswith(prefix):
          leaf = path[len(prefix):]
          student[f'backbone/{layer}/{leaf}'] = _slice(np.asarray(v), layer, leaf, ins, outs)
    out[col] = unflatten(student)
  return out


def _slice(v: np.ndarray, layer: str, leaf: str, ins: dict, outs: dict) -> np.ndarray:
  return v[:, :, ins[layer]][..., outs[layer]] if leaf == 'kernel' else v[outs[layer]]


# Each BatchNorm's input: the conv or dense layer beside it (dlib's, MobileNet's, the embedding head's).
PRODUCERS = {'bn': 'dense', 'bn0': 'conv0', 'bn1': 'conv1', 'bn2': 'conv2', 'stem_bn': 'stem_conv',
             'expand_bn': 'expand_conv', 'dw_bn': 'dw_conv', 'project_bn': 'project_conv', 'head_bn': 'head_conv'}


def _batchnorm_inputs(model: nn.Module, variables: dict, images, train: bool) -> dict[str, np.ndarray]:
  """{BatchNorm path: its input on `images`, [N * H * W, C] float64}, from one pass of `model` (a FaceNet) in
  training mode (each BatchNorm normalised by the batch) or eval mode (by its running statistics)."""
  is_linear = lambda mdl, _: isinstance(mdl, (nn.Conv, nn.Dense))
  _, state = model.apply(variables, jnp.asarray(images), train, method='forward', capture_intermediates=is_linear,
                         mutable=['intermediates', 'batch_stats'] if train else ['intermediates'])
  acts = {path.rsplit('/', 1)[0]: v[0] for path, v in  # 'backbone/conv0/__call__'
          flatten(jax.device_get(state['intermediates'])).items() if path.endswith('/__call__')}
  out = {}
  for path in [p for p in flatten(dict(variables['batch_stats'])) if p.endswith('/mean')]:
    parent, bn = path[:-len('/mean')].rsplit('/', 1)
    x = np.asarray(acts[f'{parent}/{PRODUCERS[bn]}'], np.float64)
    out[f'{parent}/{bn}'] = x.reshape(-1, x.shape[-1])
  return out


def recalibrate_batchnorm(model: nn.Module, variables: dict, images) -> dict:
  """Every BatchNorm of `model` (a FaceNet) re-expressed on `images` (see the module docstring): the same
  eval-mode function on that batch, with running statistics and affine parameters a training run can start from."""
  params, stats = flatten(dict(variables['params'])), flatten(dict(variables['batch_stats']))
  for bn, x in _batchnorm_inputs(model, variables, images, train=False).items():
    m, v = x.mean(axis=0), x.var(axis=0)
    gamma, beta = np.asarray(params[bn + '/scale'], np.float64), np.asarray(params[bn + '/bias'], np.float64)
    mean0, var0 = np.asarray(stats[bn + '/mean'], np.float64), np.asarray(stats[bn + '/var'], np.float64)
    gamma = gamma / np.sqrt(var0 + dr.BN_EPS)  # the affine the BatchNorm computes now: gamma * x + beta
    beta = beta - gamma * mean0
    params[bn + '/scale'] = (gamma * np.sqrt(v + dr.BN_EPS)).astype(np.float32)
    params[bn + '/bias'] = (beta + gamma * m).astype(np.float32)
    stats[bn + '/mean'], stats[bn + '/var'] = m.astype(np.float32), v.astype(np.float32)
  return {'params': unflatten(params), 'batch_stats': unflatten(stats)}


def renormalise_batchnorm(model: nn.Module, variables: dict, images) -> dict:
  """Every BatchNorm of `model` (a FaceNet) keeps its affine and takes as running statistics the mean and
  variance of its input on `images` in a training-mode pass (each layer normalised by the batch, in order): eval
  mode then computes on that batch what training mode computes."""
  stats = flatten(dict(variables['batch_stats']))
  for bn, x in _batchnorm_inputs(model, variables, images, train=True).items():
    stats[bn + '/mean'], stats[bn + '/var'] = x.mean(axis=0).astype(np.float32), x.var(axis=0).astype(np.float32)
  return {'params': variables['params'], 'batch_stats': unflatten(stats)}


def prune_dlib(teacher_variables: dict, width: float, images, blocks=None,
               channels=None) -> tuple[dict, PruneReport]:
  """Converted dlib teacher variables -> (variables of `build_dlib_model(width=width, blocks=blocks,
  channels=channels)`, report). `blocks`: residual blocks per stage (None: all of dlib's); `channels`: each
  residual stream's channels (None: dlib's scaled by `width`). `images`: `[N, 150, 150, 3]` dlib-preprocessed
  aligned chips (a few hundred) for the BatchNorm statistics."""
  from facejax.models.registry import count_params
  if not 0 < width <= 1:
    raise ValueError(f'width={width}: expected a fraction of the teacher width in (0, 1]')
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (dr.IMAGE_SIZE, dr.IMAGE_SIZE, 3) or len(images) < 2:
    raise ValueError(f'images: expected [N >= 2, {dr.IMAGE_SIZE}, {dr.IMAGE_SIZE}, 3] preprocessed chips, got '
                     f'{images.shape}')
  kept_blocks = select_blocks(teacher_variables['params'], blocks)
  counts = dr.stream_channels(width, channels)
  keep = select_channels(teacher_variables['params'], counts, kept_blocks)
  student = dr.build_dlib_model(width=width, blocks=None if blocks is None else tuple(blocks),
                                channels=None if channels is None else tuple(counts))
  variables = _cut(teacher_variables, keep, kept_blocks)
  misfit = _misfit(student, variables, (dr.IMAGE_SIZE, dr.IMAGE_SIZE, 3))
  if misfit:  # a bug here, not bad input
    raise AssertionError(f'{misfit[0]}: the cut tree does not match the {counts}-channel net: {misfit[1]} or shapes '
                         'differ')
  variables = recalibrate_batchnorm(student, variables, images)
  groups, widths = dr.stream_groups()
  kept = {k: (len(v), widths[int(k[6:])] if k.startswith('stream') else None) for k, v in keep.items()}
  last_blocks = np.cumsum([n for _, n, _ in dr.DLIB_STAGES]) - 1
  report = PruneReport(count_params(teacher_variables['params']), count_params(variables['params']),
                       dict(kept, blocks=(len(kept_blocks), kept_blocks)),
                       [keep[f'stream{groups[i]}'].tolist() for i in last_blocks])
  return variables, report


def mobilenet_streams(net: MobileNet) -> tuple[list[int], list[int], list[bool]]:
  """-> (the residual stream each block writes, each stream's width, whether each block adds its input). Stream 0
  is the stem's; a block that adds its input writes the stream it reads, any other starts a new one."""
  widths, groups, adds = [net.stem_head()[0]], [], []
  for _, c, _, s in net.block_specs():
    add = s == 1 and c == widths[groups[-1] if groups else 0]
    if not add:
      widths.append(c)
    groups.append(len(widths) - 1)
    adds.append(add)
  return groups, widths, adds


def select_mobilenet_channels(params: dict, teacher: MobileNet, student: MobileNet) -> dict[str, np.ndarray]:
  """Teacher params (a FaceNet(MobileNet) 'params' tree) -> kept teacher channel indices, as many as `student`
  has: 'stream<g>' per residual stream (`mobilenet_streams`), 'block<i>' for each expanding block's inner
  channels, 'head' for the head conv's."""
  t_specs, s_specs = teacher.block_specs(), student.block_specs()
  t_groups, t_widths, t_adds = mobilenet_streams(teacher)
  s_groups, s_widths, s_adds = mobilenet_streams(student)
  if [(t, k, s) for t, _, k, s in t_specs] != [(t, k, s) for t, _, k, s in s_specs]:
    raise ValueError(f'the student ({len(s_specs)} blocks) is no narrower copy of the teacher ({len(t_specs)} '
                     'blocks): a cut needs the same blocks (expansion, kernel, stride)')
  if t_adds != s_adds:
    raise ValueError(f'blocks {[i for i, (a, b) in enumerate(zip(t_adds, s_adds)) if a != b]} add their input in '
                     'one net and not in the other (their widths differ in the student): a cut needs the same '
                     'shortcuts')
  (_, t_head), (_, s_head) = teacher.stem_head(), student.stem_head()
  if any(s > t for s, t in zip(s_widths + [s_head], t_widths + [t_head])):
    raise ValueError(f'the student is wider than the teacher: streams {s_widths} and head {s_head} against '
                     f'{t_widths} and {t_head}')
  b = params['backbone']
  gamma = lambda block, bn: np.abs(np.asarray(b[block][bn]['scale']))
  readers = [np.zeros(w) for w in t_widths]  # stream channel importance: every kernel that reads the stream
  for i in range(len(t_specs)):
    src, blk = t_groups[i - 1] if i else 0, b[f'block{i}']
    if 'expand_conv' in blk:
      readers[src] += _l1_in(np.asarray(blk['expand_conv']['kernel']))
    else:  # no expansion: the depthwise conv works on the stream's own channels
      readers[src] += gamma(f'block{i}', 'dw_bn') * _l1_in(np.asarray(blk['project_conv']['kernel']))
  readers[t_groups[-1]] += _l1_in(np.asarray(b['head_conv']['kernel']))
  keep = {f'stream{g}': _top(score, n) for g, (score, n) in enumerate(zip(readers, s_widths))}
  for i, (t, _, _, _) in enumerate(s_specs):
    if 'expand_conv' in b[f'block{i}']:
      score = gamma(f'block{i}', 'dw_bn') * _l1_in(np.asarray(b[f'block{i}']['project_conv']['kernel']))
      keep[f'block{i}'] = _top(score, s_widths[s_groups[i - 1] if i else 0] * t)
  score = np.abs(np.asarray(b['head_bn']['scale'])) * _l1_in(np.asarray(params['embedding']['dense']['kernel']))
  keep['head'] = _top(score, s_head)
  return keep


def _cut_mobilenet(variables: dict, keep: dict, teacher: MobileNet) -> dict:
  """Slices the teacher's tensors to the kept channels -> the student's variable tree (same layer names)."""
  groups, _, _ = mobilenet_streams(teacher)
  stream = lambda g: keep[f'stream{g}']
  ins, outs = {'stem_conv': np.arange(3)}, {'stem_conv': stream(0), 'stem_bn': stream(0)}
  for i in range(len(groups)):
    src, dst = stream(groups[i - 1] if i else 0), stream(groups[i])
    hidden = keep.get(f'block{i}', src)
    ins[f'block{i}/expand_conv'], outs[f'block{i}/expand_conv'] = src, hidden
    outs[f'block{i}/expand_bn'] = outs[f'block{i}/dw_bn'] = hidden
    ins[f'block{i}/dw_conv'], outs[f'block{i}/dw_conv'] = np.arange(1), hidden  # depthwise: [k, k, 1, C]
    ins[f'block{i}/project_conv'], outs[f'block{i}/project_conv'] = hidden, dst
    outs[f'block{i}/project_bn'] = dst
  ins['head_conv'], outs['head_conv'], outs['head_bn'] = stream(groups[-1]), keep['head'], keep['head']
  out = {}
  for col, tree in variables.items():
    student = {}
    for path, v in flatten(dict(tree)).items():
      v = np.asarray(v)
      layer, _, leaf = path.rpartition('/')
      if path == 'embedding/dense/kernel':
        v = v[keep['head']]
      elif layer.startswith('backbone/'):
        layer = layer[len('backbone/'):]
        v = _slice(v, layer, leaf, ins, outs)
      student[path] = v
    out[col] = unflatten(student)
  return out


def prune_mobilenet(teacher_variables: dict, teacher: nn.Module, student: nn.Module,
                    images) -> tuple[dict, MobileNetPruneReport]:
  """A trained FaceNet(MobileNet) teacher's variables -> (variables of `student`, a narrower FaceNet(MobileNet)
  with the same blocks, report). `images`: `[N, S, S, 3]` chips preprocessed for both nets (a few hundred), for the
  BatchNorm statistics (`renormalise_batchnorm`)."""
  from facejax.models.registry import count_params
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or len(images) < 2:
    raise ValueError(f'images: expected [N >= 2, S, S, 3] preprocessed chips, got {images.shape}')
  for name, net in (('teacher', teacher), ('student', student)):
    if not isinstance(net.backbone, MobileNet):
      raise ValueError(f'the {name} is a {type(net.backbone).__name__}: prune_mobilenet cuts MobileNet backbones')
  keep = select_mobilenet_channels(teacher_variables['params'], teacher.backbone, student.backbone)
  variables = _cut_mobilenet(teacher_variables, keep, teacher.backbone)
  misfit = _misfit(student, variables, images.shape[1:])
  if misfit:
    raise ValueError(f'{misfit[0]}: the cut does not fit the student: {misfit[1]} or shapes differ (the classifiers '
                     'need the same number of classes)')
  variables = renormalise_batchnorm(student, variables, images)
  _, t_widths, _ = mobilenet_streams(teacher.backbone)
  of = {**{f'stream{g}': w for g, w in enumerate(t_widths)}, 'head': teacher.backbone.stem_head()[1]}
  b = teacher_variables['params']['backbone']
  kept = {k: (len(v), of[k] if k in of else len(b[k]['dw_bn']['scale'])) for k, v in keep.items()}
  embedding_net = lambda tree: count_params({k: v for k, v in tree.items() if k != 'classifier'})
  return variables, MobileNetPruneReport(embedding_net(teacher_variables['params']), embedding_net(variables['params']),
                                         kept, [], type(teacher.backbone).__name__, len(keep['head']))
