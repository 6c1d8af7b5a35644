"""What a real-faces lineage prepares before its stages, and how its stages name what they start from, learn from
and read (configs/real_transfer.py).

`prepare_faces(config.faces, workdir)` aligns the identity folders once (dlib 5-point chips), holds some
identities out as a pair set in LFW's format (the second yardstick beside LFW View 2, and the place to choose
settings), checks the rest for identities that are LFW View 2 people (a named judge model), and prepares the
training set from what is left. It returns what it prepared and changes no config.

`stage_plan(config, workdir, prepared)` then gives each stage of `config.stages` its concrete paths. A stage
names them in its own config:
  init.path, distill.teacher_workdir   'stage:NAME' (that stage's run), 'imagenet:ARCH' (the ImageNet weights a
                                       pip package ships, converted once: facejax.convert), 'dlib' (dlib's face
                                       ResNet, converted once), or a path
  data.kwargs.name                     'prepared:SET' (a set `prepare_faces` built; data_dir is filled in)
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time

import ml_collections

from facejax.runs import jsonable

REF_STAGE, REF_IMAGENET, REF_DLIB, REF_PREPARED = 'stage:', 'imagenet:', 'dlib', 'prepared:'


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
      stage.init.path = resolve(stage.init.path, workdir)
      stage.distill.teacher_workdir = resolve(stage.distill.teacher_workdir, workdir)
      name_ref = stage.data.kwargs.get('name', '')
      if name_ref.startswith(REF_PREPARED):
        key = name_ref[len(REF_PREPARED):]
        if key not in prepared['sets']:
          raise ValueError(f'config.{name}.data.kwargs.name={name_ref!r}: expected one of '
                           f'{[REF_PREPARED + k for k in prepared["sets"]]}')
        stage.data.kwargs.name, stage.data.kwargs.data_dir = prepared['sets'][key]['name'], prepared['data_dir']
    plan[name] = stage
  return plan


def _check_dirs(faces: ml_collections.ConfigDict) -> None:
  folders = {'lfw_dir': faces.lfw_dir, **{f'identities.{k}': v for k, v in faces.identities.items()}}
  for flag, path in folders.items():
    if not os.path.isdir(path):
      raise FileNotFoundError(f'config.faces.{flag}={path}: no such folder (expected <folder>/<person>/<image>; '
                              f'set --config.faces.{flag}=DIR or FACEJAX_DATA)')


def prepare_faces(faces: ml_collections.ConfigDict, workdir: str, eval_config: ml_collections.ConfigDict,
                  timings: dict) -> dict:
  """Held-out pairs, aligned chips, the leakage check and the training set (module docstring); every step is
  kept and reused by a resumed run. `eval_config`: configs/lfw_eval.py's, pointed at LFW View 2 (the judge's
  evaluation gives the View 2 people's embeddings). -> {'data_dir', 'sets': {'identities': identity_set record},
  'holdout' (holdout_pairs record or None), 'aligned', 'leakage' (or None), 'judge' (run dir or None),
  'evaluations': {'dlib': the judge's LFW evaluation}}."""
  from facejax.data.faces import identity_set
  from facejax.data.folders import align_once
  from facejax.data.pairs import holdout_pairs
  _check_dirs(faces)
  data_dir = faces.data_dir or os.path.join(workdir, 'data')
  t0 = time.perf_counter()
  holdout = None
  if faces.holdout.identities:
    source = faces.holdout.source
    if source not in faces.identities:
      raise ValueError(f'config.faces.holdout.source={source!r}: expected one of {sorted(faces.identities)}')
    holdout = holdout_pairs(faces.identities[source], os.path.join(data_dir, 'holdout'),
                            num_identities=faces.holdout.identities, num_folds=faces.holdout.folds,
                            seed=faces.holdout.seed, prefix=source)
  print('== align the identity photos', flush=True)
  aligned = {k: align_once(v, os.path.join(data_dir, 'aligned', k), detector=faces.detector,
                           upsample=faces.upsample) for k, v in faces.identities.items()}
  timings['align training photos'] = time.perf_counter() - t0
  exclude = {f'{faces.holdout.source}/{i}' for i in (holdout or {}).get('identities', [])}
  sources = {k: v['chips'] for k, v in aligned.items()}
  leakage, judge, evaluations = None, None, {}
  if faces.leakage.judge:
    t0 = time.perf_counter()
    judge = resolve(faces.leakage.judge, workdir)
    evaluations['dlib'], leakage = _leakage(judge, sources, exclude, faces.leakage, eval_config, workdir,
                                              data_dir)
    if faces.leakage.drop:
      exclude |= {s['train'] for s in leakage['suspects']}
    timings['leakage check'] = time.perf_counter() - t0
  t0 = time.perf_counter()
  print('== prepare the training set', flush=True)
  sets = {'identities': identity_set(sources, data_dir, 'identities', exclude=exclude,
                                     max_identities=faces.max_identities, seed=faces.seed)}
  timings['prepare training set'] = time.perf_counter() - t0
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
  embed_fn, size = load_embedder(judge)
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
             eval_config: ml_collections.ConfigDict, workdir: str, data_dir: str) -> tuple[dict, dict]:
  """The judge on LFW View 2 (its evaluation) and the training identities it finds among View 2's people (the
  check is kept under `data_dir/leakage/` and written to `workdir/leakage.json`)."""
  from facejax.data.faces import chip_files
  from facejax.evaluation.evaluator import evaluate_run
  print(f'== identity leakage check (judge: {judge})', flush=True)
  evaluation = evaluate_run(eval_config, judge)
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
