"""What a real-faces lineage prepares before its stages, how its stages name what they start from, learn from and
read, and the reference rows it reports beside them (configs/real_transfer.py, configs/real_faces.py).

`prepare_faces(config.faces, workdir)` aligns the identity folders once (dlib 5-point chips), holds some
identities out as a pair set in LFW's format (the second yardstick beside LFW View 2, and the place to choose
settings), checks the rest for identities that are LFW View 2 people (a named judge model), and prepares the
training sets from what is left: `identities` (labelled, >= 2 chips each) and, with a `faces.mimic` section,
`mimic` (every chip, label-free photos included, with mirrored / jittered views). It returns what it prepared and
changes no config.

`stage_plan(config, workdir, prepared)` then gives each stage of `config.stages` its concrete paths. A stage
names them in its own config:
  init.path, distill.teacher_workdir   'stage:NAME' (that stage's run), 'imagenet:ARCH' (the ImageNet weights a
                                       pip package ships, converted once: facejax.convert), 'dlib' (dlib's face
                                       ResNet, converted once), or a path
  init.path only                       'prune:TEACHER': the stage's model cut from TEACHER (a reference above:
                                       dlib's net, or a MobileNet / EfficientNet-Lite stage such as
                                       'prune:stage:teacher'; facejax.convert.prune), calibrated on the stage's
                                       set, by cut_init when the stage is about to train
  data.kwargs.name                     'prepared:SET' (a set `prepare_faces` built; data_dir is filled in)
config.report names each reported model's run: a stage of config.stages (left out when that stage does not train)
or a reference; config.references adds rows from a reference evaluator (REFERENCES: 'dlib', dlib's own pipeline).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import ml_collections

from facejax.runs import jsonable

REF_STAGE, REF_IMAGENET, REF_DLIB, REF_PRUNE, REF_PREPARED = 'stage:', 'imagenet:', 'dlib', 'prune:', 'prepared:'


def converted_weights(ref: str, workdir: str) -> str:
  """'imagenet:ARCH' or 'dlib' -> the converted run directory under `workdir/weights/`, converted once."""
  from facejax.runs import CONVERTED_METADATA
  if ref == REF_DLIB:
    out = os.path.join(workdir, 'weights', 'dlib')
    if not os.path.isfile(os.path.join(out, 'model.json')):
      from facejax.convert.dlib import convert_dlib, default_dat_path
      print(f'== convert dlib -> {out}', flush=True)
      convert_dlib(default_dat_path(), out)
    return out
  arch = ref[len(REF_IMAGENET):]
  out = os.path.join(workdir, 'weights', arch)
  if not os.path.isfile(os.path.join(out, CONVERTED_METADATA)):
    from facejax.convert import convert_to_checkpoint
    print(f'== convert the ImageNet weights of {arch} -> {out}', flush=True)
    convert_to_checkpoint('torchvision', arch, None, out, overwrite=True)
  return out


def resolve(ref: str, workdir: str) -> str:
  """A stage's init.path or teacher reference -> a directory ('' stays '': random init, no teacher)."""
  if ref.startswith(REF_STAGE):
    return os.path.join(workdir, ref[len(REF_STAGE):])
  if ref.startswith(REF_IMAGENET) or ref == REF_DLIB:
    return converted_weights(ref, workdir)
  return ref


def stage_plan(config: ml_collections.ConfigDict, workdir: str, prepared: dict) -> dict[str, ml_collections.ConfigDict]:
  """config.stages, in order -> {name: its training config with every reference resolved}. A stage with
  total_steps 0 is left out (and so are its reports)."""
  plan = {}
  for name in config.stages:
    stage = copy.deepcopy(config[name])  # ConfigDict(x) would share x's sections
    if not stage.total_steps:
      continue
    with stage.unlocked():
      stage.distill.teacher_workdir = resolve(stage.distill.teacher_workdir, workdir)
      name_ref = stage.data.kwargs.get('name', '')
      chosen = None
      if name_ref.startswith(REF_PREPARED):
        key = name_ref[len(REF_PREPARED):]
        if key not in prepared['sets']:
          raise ValueError(f'config.{name}.data.kwargs.name={name_ref!r}: expected one of '
                           f'{[REF_PREPARED + k for k in prepared["sets"]]}')
        chosen = prepared['sets'][key]
        stage.data.kwargs.name, stage.data.kwargs.data_dir = chosen['name'], prepared['data_dir']
      if stage.init.path.startswith(REF_PRUNE):
        if chosen is None:
          raise ValueError(f'config.{name}.init.path={stage.init.path!r} calibrates the cut on the stage\'s '
                           f"prepared set: expected config.{name}.data.kwargs.name='prepared:SET'")
        stage.init.path = os.path.join(workdir, f'{name}_init')  # cut there by cut_init, before the stage trains
      else:
        stage.init.path = resolve(stage.init.path, workdir)
    plan[name] = stage
  return plan


def report_runs(config: ml_collections.ConfigDict, workdir: str, plan: dict) -> dict[str, str]:
  """config.report -> {report name: run directory}: a stage that trains (in `plan`), or a reference (`resolve`). A
  stage section that does not train (not in config.stages, or 0 steps) has no row."""
  return {name: os.path.join(workdir, ref) if ref in plan else resolve(ref, workdir)
          for name, ref in config.report.items() if ref in plan or ref not in config}


def cut_init(name: str, config: ml_collections.ConfigDict, plan: dict, workdir: str, prepared: dict) -> None:
  """Before stage `name` of `plan` (stage_plan's) trains: a 'prune:TEACHER' init (config.<name>.init.path) is cut
  into the plan's init.path, calibrated on the stage's prepared set. TEACHER may be an earlier stage
  ('prune:stage:teacher'), trained by now. Anything else is left as it is."""
  ref = config[name].init.path
  if not ref.startswith(REF_PRUNE):
    return
  tree = prepared['sets'][config[name].data.kwargs.name[len(REF_PREPARED):]]['tree']
  pruned_init(plan[name].model, resolve(ref[len(REF_PRUNE):], workdir), tree, plan[name].init.path, f'config.{name}',
              backbone_only=plan[name].init.mode == 'backbone')


def pruned_init(model: ml_collections.ConfigDict, teacher: str, chips_root: str, out: str, where: str,
                calibration_images: int = 256, backbone_only: bool = False) -> str:
  """A stage's initial weights cut from the teacher run `teacher` (facejax.convert.prune: dlib's net, or a
  MobileNet / EfficientNet-Lite run) to the stage's `model` (channels / blocks / width / head in model.kwargs), its
  BatchNorms calibrated on `calibration_images` chips spread over `chips_root`, saved as converted weights in `out`
  (kept: a resumed run reuses them) -> `out`. `backbone_only` (init.mode 'backbone': the stage takes the cut's
  backbone and new heads): the stage's embed_dim may differ from the teacher's, e.g. to mimic another teacher."""
  import numpy as np
  from facejax.convert.prune import prune_dlib, prune_mobilenet
  from facejax.data.faces import chip_files
  from facejax.inference.embedder import read_image
  from facejax.models import PREPROCESSING
  from facejax.models import dlib_resnet as dr
  from facejax.runs import build_from_info, read_model_info, restore_variables, save_converted
  from facejax.train.tasks import model_input
  info = read_model_info(teacher)
  kwargs = json.loads(json.dumps(jsonable(model.kwargs.to_dict())))  # as the metadata stores it
  pre = PREPROCESSING.get(model.preprocessing) if isinstance(model.preprocessing, str) else None
  embed_dim = info['embed_dim'] if backbone_only else model.embed_dim  # the cut keeps the teacher's embedding
  if info['name'] == 'dlib_resnet':
    if (model.name, model.image_size, model.preprocessing, embed_dim) != (
        'dlib_resnet', dr.IMAGE_SIZE, 'dlib', dr.DESCRIPTOR_DIM):
      raise ValueError(f"{where}.init.path='prune:...' cuts the stage's model from dlib's net: it needs "
                       f"{where}.model name='dlib_resnet', image_size={dr.IMAGE_SIZE}, preprocessing='dlib', "
                       f'embed_dim={dr.DESCRIPTOR_DIM} (any with {where}.init.mode=\'backbone\'); got '
                       f"{model.name!r}, {model.image_size}, {model.preprocessing!r}, {model.embed_dim} (or set "
                       f"{where}.init.path='' for a random init)")
  else:
    t_model, t_pre, _ = build_from_info(info)
    if (model.name, pre, embed_dim) != (info['name'], t_pre, info['embed_dim']):
      raise ValueError(f"{where}.init.path='prune:...' cuts the stage's model from {teacher}: it needs "
                       f"{where}.model name={info['name']!r}, the teacher's preprocessing and embed_dim="
                       f"{info['embed_dim']} (any with {where}.init.mode='backbone'); got {model.name!r}, "
                       f"{model.preprocessing!r}, {model.embed_dim} (or set {where}.init.path='' for a random init)")
  spec = {'kwargs': kwargs, 'teacher': os.path.abspath(teacher)}
  meta = cut_metadata(out)
  if meta and {k: meta.get(k) for k in spec} == spec:
    return out
  print(f'== cut {where} from {teacher} ({kwargs}) -> {out}', flush=True)
  paths, _ = chip_files(chips_root)
  step = max(1, len(paths) // calibration_images)
  chips = np.stack([read_image(p) for p in paths[::step][:calibration_images]])  # aligned 150 px chips
  if info['name'] == 'dlib_resnet':
    blocks, channels = ([int(v) for v in kwargs[k]] if kwargs.get(k) is not None else None
                        for k in ('blocks', 'channels'))
    variables, report = prune_dlib(restore_variables(teacher), float(kwargs.get('width', 1.0)),
                                   np.asarray(pre.apply(chips)), blocks, channels)
  else:
    s_model, _, _ = build_from_info(dict(info, kwargs=kwargs))
    variables, report = prune_mobilenet(restore_variables(teacher), t_model, s_model,
                                        np.asarray(model_input(chips, pre, model.image_size)))
  meta = {'arch': model.name, 'source': 'prune', **spec, 'summary': report.summary(),
          'calibration_images': len(chips), 'kept': report.kept, 'params': report.student_params,
          'stage_channels': report.stage_channels}
  save_converted(out, variables, jsonable(meta), overwrite=True)
  print(report.summary(), flush=True)
  return out


def cut_metadata(path: str) -> dict | None:
  """The metadata of weights `pruned_init` cut into `path` (None for anything else: a run, other converted weights,
  no folder), read without the weights."""
  from facejax.runs import CONVERTED_METADATA
  meta_path = os.path.join(path, CONVERTED_METADATA) if path else ''
  if not os.path.isfile(meta_path):
    return None
  with open(meta_path) as f:
    meta = json.load(f)
  return meta if meta.get('source') == 'prune' else None


def cut_inits(plan: dict) -> dict:
  """{stage: what its init cut kept ('summary', 'kwargs': the stage's model.kwargs, 'calibration_images', 'params')}
  for the stages of `plan` (stage_plan's) that start from a cut ('prune:...')."""
  cuts = {name: cut_metadata(stage.init.path) for name, stage in plan.items()}
  keys = ('summary', 'kwargs', 'calibration_images', 'params')
  return {name: {'path': plan[name].init.path, **{k: m.get(k) for k in keys}} for name, m in cuts.items() if m}


def _folder(path: str) -> str:
  return os.path.basename(os.path.normpath(path))


def _check_dirs(faces: ml_collections.ConfigDict) -> None:
  folders = {'lfw_dir': faces.lfw_dir, **{f'identities.{k}': v for k, v in faces.identities.items()},
             **{f'mimic.folders[{i}]': f for i, f in enumerate(faces.mimic.folders if 'mimic' in faces else ())}}
  for flag, path in folders.items():
    if not os.path.isdir(path):
      raise FileNotFoundError(f'config.faces.{flag}={path}: no such folder (expected <folder>/<person>/<image>; '
                              f'set --config.faces.{flag}=DIR or FACEJAX_DATA)')


def prepare_faces(faces: ml_collections.ConfigDict, workdir: str, eval_config: ml_collections.ConfigDict,
                  timings: dict, evaluated: dict | None = None) -> dict:
  """Held-out pairs, aligned chips, the leakage check and the training sets (module docstring); every step is
  kept and reused by a resumed run. `eval_config`: configs/lfw_eval.py's, pointed at LFW View 2 (the judge's
  evaluation gives the View 2 people's embeddings); `evaluated`: run dir -> an evaluation already made with
  `eval_config` (a reference's), which the judge reuses instead of evaluating again.

  faces.holdout.source names a key of faces.identities or a folder no training set reads; the held-out identities
  train nowhere: every training folder's identity of the same name is left out (a larger copy of the same data,
  such as more of CelebA passed as a mimic folder, holds them under the same names). faces.mimic (optional):
  label-free photos for the `mimic` set, `folders` (each <folder>/<any>/<photo>, leakage-checked like the
  identities) and, with `lfw_unpaired`, LFW's people in no pair of View 2 (so no check); `mirror` / `jittered`:
  the views of every chip it holds (facejax.data.faces.link_tree).
  -> {'data_dir', 'sets': {set name: identity_set record}, 'holdout' (holdout_pairs record or None), 'aligned',
  'leakage' (or None), 'judge' (run dir or None), 'evaluations': {the judge's run dir: its LFW evaluation}}."""
  from facejax.data.faces import identity_set, unpaired_lfw_people
  from facejax.data.folders import align_once
  from facejax.data.pairs import holdout_pairs
  _check_dirs(faces)
  data_dir = faces.data_dir or os.path.join(workdir, 'data')
  t0 = time.perf_counter()
  holdout, exclude = None, set()
  if faces.holdout.identities:
    source = faces.holdout.source
    folder = faces.identities.get(source, source)
    if not os.path.isdir(folder):
      raise ValueError(f'config.faces.holdout.source={source!r}: expected one of {sorted(faces.identities)} or a '
                       'folder of <identity>/<photo>')
    holdout = holdout_pairs(folder, os.path.join(data_dir, 'holdout'), num_identities=faces.holdout.identities,
                            num_folds=faces.holdout.folds, seed=faces.holdout.seed,
                            prefix=source if source in faces.identities else _folder(folder))
  label_free = {}
  if 'mimic' in faces:
    label_free = {_folder(f): f for f in faces.mimic.folders}
    if faces.mimic.lfw_unpaired:
      label_free['lfw_unpaired'] = os.path.join(data_dir, 'lfw_unpaired_photos')
      unpaired_lfw_people(faces.lfw_dir, eval_config.data.pairs, label_free['lfw_unpaired'])
  training = {**faces.identities, **label_free}  # every folder a training set reads
  if holdout:
    exclude = {f'{k}/{i}' for k in training for i in holdout['identities']}
  print('== align the training photos', flush=True)
  aligned = {k: align_once(v, os.path.join(data_dir, 'aligned', k), detector=faces.detector,
                           upsample=faces.upsample) for k, v in training.items()}
  timings['align training photos'] = time.perf_counter() - t0
  chips = {k: v['chips'] for k, v in aligned.items()}
  labelled = {k: chips[k] for k in faces.identities}
  leakage, judge, evaluations = None, None, {}
  if faces.leakage.judge:
    t0 = time.perf_counter()
    judge = resolve(faces.leakage.judge, workdir)
    checked = {k: v for k, v in chips.items() if k != 'lfw_unpaired'}  # those are no View 2 people by definition
    evaluations[judge], leakage = _leakage(judge, checked, exclude, faces.leakage, eval_config, workdir, data_dir,
                                           (evaluated or {}).get(judge))
    if faces.leakage.drop:
      exclude |= {s['train'] for s in leakage['suspects']}
    timings['leakage check'] = time.perf_counter() - t0
  t0 = time.perf_counter()
  print('== prepare the training sets', flush=True)
  sets = {'identities': identity_set(labelled, data_dir, 'identities', exclude=exclude,
                                     max_identities=faces.max_identities, seed=faces.seed)}
  if 'mimic' in faces:
    sets['mimic'] = identity_set(chips, data_dir, 'mimic', exclude=exclude, min_images=1,
                                 mirror=faces.mimic.mirror, jittered=faces.mimic.jittered)
  timings['prepare training sets'] = time.perf_counter() - t0
  return {'data_dir': os.path.abspath(data_dir), 'sets': sets, 'holdout': holdout, 'aligned': aligned,
          'leakage': leakage, 'judge': judge, 'evaluations': evaluations}


def judge_leakage(judge: str, evaluation: dict, paths: list[str], ids: list[str], cfg: ml_collections.ConfigDict,
                  batch_size: int, out: str) -> dict:
  """The training identities (`ids`, one per chip in `paths`) that the face model `judge` finds among the people
  of `evaluation` (its own LFW View 2 evaluation, `evaluate_run`), at cfg.threshold or one calibrated at cfg.far
  (`cfg`: a `leakage` config section) -> the check, also written to the JSON file `out` and printed."""
  from facejax.evaluation.leakage import identity_threshold, leakage_check, leakage_text
  from facejax.inference.embed import embed_images
  from facejax.inference.embedder import load_embedder, read_image
  from facejax.inference.optimize import onednn_options
  embed_fn, size = load_embedder(judge, optimize=onednn_options())
  train_emb = embed_images(embed_fn, [read_image(p) for p in paths], size, batch_size=batch_size)
  people = [n.replace('\\', '/').split('/')[0] for n in evaluation['names']]
  calibration = None if cfg.threshold else identity_threshold(evaluation['embeddings'], people, cfg.far)
  check = leakage_check(train_emb, ids, evaluation['embeddings'], people, cfg.threshold or calibration['threshold'])
  check.update(calibration=calibration, dropped=bool(cfg.drop), judge=os.path.abspath(judge))
  with open(out, 'w') as f:
    json.dump(jsonable(check), f, indent=2)
  print(leakage_text(check), flush=True)
  return check


def _leakage(judge: str, sources: dict, exclude: set, cfg: ml_collections.ConfigDict,
             eval_config: ml_collections.ConfigDict, workdir: str, data_dir: str, evaluation: dict | None = None
             ) -> tuple[dict, dict]:
  """The judge on LFW View 2 (its evaluation: `evaluation` when given) and the training identities it finds among
  View 2's people (the check is kept under `data_dir/leakage/` and written to `workdir/leakage.json`)."""
  from facejax.data.faces import chip_files
  from facejax.evaluation.evaluator import evaluate_run
  print(f'== identity leakage check (judge: {judge})', flush=True)
  evaluation = evaluation or evaluate_run(eval_config, judge)
  paths, ids = [], []
  for prefix, root in sources.items():
    files, names = chip_files(root)
    keep = [k for k, n in enumerate(names) if f'{prefix}/{n}' not in exclude]
    paths += [files[k] for k in keep]
    ids += [f'{prefix}/{names[k]}' for k in keep]
  # The check depends on the judge, the chips and its settings only: kept beside the prepared data, so a resumed
  # run or another run on the same data (a data-efficiency point) reuses it instead of embedding every chip again.
  converted = cfg.judge == REF_DLIB or cfg.judge.startswith(REF_IMAGENET)  # the same weights in every workdir
  key = {'judge': cfg.judge if converted else os.path.abspath(judge), 'chips': [os.path.abspath(p) for p in paths],
         'ids': ids, 'threshold': cfg.threshold, 'far': cfg.far, 'drop': bool(cfg.drop),
         'pairs': os.path.abspath(eval_config.data.pairs)}
  cached = os.path.join(data_dir, 'leakage', hashlib.sha1(json.dumps(key).encode()).hexdigest()[:12] + '.json')
  if os.path.isfile(cached):
    print(f'== leakage check reused from {cached}', flush=True)
  else:
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    judge_leakage(judge, evaluation, paths, ids, cfg, eval_config.batch_size, cached)
  with open(cached) as f:
    check = json.load(f)
  with open(os.path.join(workdir, 'leakage.json'), 'w') as f:
    json.dump(check, f, indent=2)
  return evaluation, check


def dlib_native(eval_config: ml_collections.ConfigDict, workdir: str) -> dict:
  """dlib's own pipeline (its HOG detector, 5-point predictor, compute_face_descriptor and raw euclidean distance)
  on the pair set of `eval_config`, on the same chips and folds as dlib's net converted ('dlib'), which is
  evaluated beside it -> {'run': the converted net (its architecture: the row's params and FLOPs), 'evaluation':
  that net's evaluation, 'result': dlib native's (verification.evaluate), 'row': its extra fields (cpu_ms_b1,
  as dlib runs it), 'text': results.md's section}."""
  from facejax.evaluation.evaluator import evaluate_run, reference_text
  run = resolve(REF_DLIB, workdir)
  c = copy.deepcopy(eval_config)
  c.reference = 'dlib'
  evaluation = evaluate_run(c, run)
  ref = evaluation['reference']
  return {'run': run, 'evaluation': evaluation, 'result': ref['results']['dlib native, raw'],
          'row': {'cpu_ms_b1': _dlib_ms_per_chip(),
                  'fixed_threshold_accuracy': ref['dlib_fixed_threshold']['accuracy']},
          'text': reference_text(ref)}


def _dlib_ms_per_chip(runs: int = 20) -> float:
  """dlib's own compute_face_descriptor, ms per aligned chip at batch 1 (median of `runs` calls, one thread)."""
  import numpy as np
  from facejax.data.align import CHIP_SIZE, dlib_descriptors
  from facejax.inference.benchmark_dlib import median_ms
  chip = np.random.default_rng(0).integers(0, 256, (1, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
  dlib_descriptors(chip)  # loads the net
  return median_ms(lambda: dlib_descriptors(chip), runs)


# config.references: report name -> one of these, each (eval_config, workdir) -> {'run', 'evaluation', 'result',
# 'row', 'text'} as `dlib_native`.
REFERENCES = {'dlib': dlib_native}
