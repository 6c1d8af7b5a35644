"""The paper end to end: pretrain (ImageNet stand-in) -> transfer (teacher) -> compress (student) -> Siamese ->
verification + CPU benchmark -> report. Every stage is a normal run in `<workdir>/<stage>`, so re-running the
pipeline resumes unfinished stages and skips finished ones.

With a `real` section (configs/real_faces.py) the teacher is a converted face model (dlib's ResNet) and the data
are real photos, prepared first (`prepare_real_faces`): identity folders and LFW's photos outside View 2 aligned
once, the teacher evaluated on LFW View 2 beside dlib's own pipeline, the identity-leakage check, then the
prepared ArrayRecord sets the student (embedding mimic, cached teacher) and the Siamese stage train on."""
from __future__ import annotations

import copy
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from facejax.data.faces import chip_files, link_tree, unpaired_lfw_people
from facejax.evaluation.evaluator import evaluate_run
from facejax.evaluation.leakage import leakage_text
from facejax.evaluation.report import plot_roc, results_markdown, summary_row
from facejax.evaluation.verification import compare
from facejax.inference.benchmark import benchmark_model
from facejax.inference.hardware import cpu_info, cpu_text
from facejax.lineage import judge_leakage, prepare_faces, stage_plan
from facejax.runs import jsonable, load_run
from facejax.train import train

STAGES = ('pretrain', 'teacher', 'student', 'siamese', 'finetune')
# Report name -> stage run directory.
REPORTED = {'teacher': 'teacher', 'student': 'student', 'student_siamese': 'siamese',
            'teacher_finetuned': 'finetune'}


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """Link the stages: teacher <- pretrain backbone (unless teacher.init.path is given), student <- distil the
  teacher, siamese <- all of the student, finetune (configs/real_faces.py's optional transfer step) <- all of the
  teacher.

  A given student.distill.teacher_workdir (e.g. one teacher shared by a sweep's variants) replaces the pretrain
  and teacher stages; siamese.total_steps=0 skips the Siamese stage (no student_siamese in the report), as
  finetune.total_steps=0 (the default) skips the finetune stage.
  """
  stages = {s: ml_collections.ConfigDict(config[s]) for s in STAGES if s in config}
  run = lambda s: os.path.join(workdir, s)
  if stages['student'].distill.teacher_workdir:
    for s in ('pretrain', 'teacher'):
      stages.pop(s, None)
  elif stages['teacher'].init.path:
    del stages['pretrain']  # real pretrained weights given: no stand-in pretraining
  else:
    stages['teacher'].init.path = run('pretrain')
  stages['student'].distill.teacher_workdir = stages['student'].distill.teacher_workdir or run('teacher')
  if stages['siamese'].total_steps:
    stages['siamese'].init.path = stages['siamese'].init.path or run('student')
  else:
    del stages['siamese']
  if 'finetune' in stages:
    if stages['finetune'].total_steps:
      stages['finetune'].init.path = stages['finetune'].init.path or stages['student'].distill.teacher_workdir
    else:
      del stages['finetune']
  return stages


def reported_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Report name -> the run directory it is evaluated from (the teacher may live outside `workdir`)."""
  runs = {name: os.path.join(workdir, stage) for name, stage in REPORTED.items()}
  runs['teacher'] = config.student.distill.teacher_workdir or runs['teacher']
  if not config.siamese.total_steps:
    del runs['student_siamese']
  if not config.get('finetune', {}).get('total_steps'):
    del runs['teacher_finetuned']
  return runs


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Run every stage, evaluate and benchmark teacher / student / student_siamese, write the report files."""
  os.makedirs(workdir, exist_ok=True)
  timings, real, faces = {}, None, None
  if 'faces' in config:  # a lineage whose stages name their own inits, teachers and data (facejax.lineage)
    config = faces_eval_config(config, workdir)
    faces = prepare_faces(config.faces, workdir, config.eval, timings)
    stages = stage_plan(config, workdir, faces)
  else:
    if 'real' in config:
      real = prepare_real_faces(config, workdir, timings)
      config = real['config']
    stages = stage_configs(config, workdir)
  for name, stage in stages.items():
    logging.info('stage %s -> %s', name, os.path.join(workdir, name))
    print(f'== stage {name}: {stage.task} {stage.model.name}, {stage.total_steps} steps', flush=True)
    t0 = time.perf_counter()
    train(stage, os.path.join(workdir, name))
    timings[f'train {name}'] = time.perf_counter() - t0

  print('== evaluate + benchmark', flush=True)
  rows, results, runs, holdout = {}, {}, {}, {}
  if faces:
    reported = {name: os.path.join(workdir, stage) for name, stage in config.report.items() if stage in stages}
    reported.update({'dlib': faces['judge']} if faces['judge'] else {})
  else:
    reported = reported_runs(config, workdir)
  for name, run in reported.items():
    t0 = time.perf_counter()
    evaluation = (real or faces or {}).get('evaluations', {}).get(name) or evaluate_run(config.eval, run)
    results[name] = evaluation['result']
    if faces and faces['holdout']:
      holdout[name] = evaluate_run(holdout_eval_config(config.eval, faces['holdout']), run)['result']
    runs[name] = {'workdir': os.path.abspath(run),
                  'evaluation': os.path.abspath(os.path.join(evaluation['out_dir'], 'results.json'))}
    model, variables, info = load_run(run)
    bench, batched = (benchmark_model(model, variables, batch_size=b, image_size=info['image_size'],
                                      warmup=config.benchmark.warmup, runs=config.benchmark.runs)
                      for b in (1, config.benchmark.batch_size))
    rows[name] = summary_row(results[name], params=bench['params'], gflops=bench['gflops'],
                             cpu_ms_b1=bench['ms_median'], cpu_ms_per_img_batched=batched['ms_per_image'],
                             threshold=results[name]['threshold'])
    timings[f'evaluate + benchmark {name}'] = time.perf_counter() - t0
  protocol = evaluation['protocol']
  if real:
    # dlib's own C++ net: the teacher's architecture and weights, timed as dlib runs it (one thread).
    rows['dlib_native'] = dict(real['dlib_row'], params=rows['teacher']['params'], gflops=rows['teacher']['gflops'])
    results['dlib_native'] = real['dlib_result']
  report = {
      'models': rows,
      'compression': compression(rows),
      'comparisons': comparisons(results, config.get('comparisons', COMPARISONS)),
      'protocol': dict(protocol, params='embedding network (no classifier)',
                       cpu_ms_b1=f'median of {config.benchmark.runs} AOT-compiled runs, batch 1, compile excluded',
                       cpu_ms_per_img_batched=f'the same at batch {config.benchmark.batch_size}, per image'),
      'runs': runs,  # where each row came from (a sweep finds fold accuracies and shared teachers here)
      'timings_s': timings,
      'host': host_info(),  # what the CPU timings and wall times were measured on
  }
  if real:
    report['leakage'], report['data'] = real['leakage'], real['data']
  if faces:
    report['leakage'] = faces['leakage']
    counts = ('aligned', 'no_face', 'unreadable', 'source')
    report['data'] = {'sets': faces['sets'],
                      'aligned': {k: {c: v[c] for c in counts} for k, v in faces['aligned'].items()}}
  if holdout:  # the second yardstick: identities held out of every training set, in LFW's protocol
    report['holdout'] = {
        'pairs': {k: faces['holdout'][k] for k in ('lfw_dir', 'pairs', 'num_folds', 'pairs_per_half', 'photos')},
        'models': {name: summary_row(r, threshold=r['threshold']) for name, r in holdout.items()},
        'comparisons': comparisons(holdout, config.get('comparisons', COMPARISONS))}
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(jsonable(report), f, indent=2)
  table = results_markdown(rows)
  c = report['compression']
  summary = ((f'\nstudent: {c["param_ratio"]:.1f}x fewer parameters, {c["gflops_ratio"]:.1f}x fewer FLOPs, '
              f'{c["cpu_speedup"]:.1f}x faster on CPU at batch 1, {c["cpu_speedup_batched"]:.1f}x at batch '
              f'{config.benchmark.batch_size}\n' if c else '\n')
             + ''.join(f'{k}: {v["summary"]}\n' for k, v in report['comparisons'].items()))
  if real:
    summary += '\n' + leakage_text(real['leakage']) + '\n' + real_data_text(real['data'], protocol)
  if faces and faces['leakage']:
    summary += '\n' + leakage_text(faces['leakage']) + '\n'
  if holdout:
    summary += (f"\nHeld-out identities ({len(faces['holdout']['identities'])} people, "
                f"{faces['holdout']['num_folds']} folds of {2 * faces['holdout']['pairs_per_half']} pairs):\n"
                + results_markdown(report['holdout']['models'])
                + ''.join(f'{k}: {v["summary"]}\n' for k, v in report['holdout']['comparisons'].items()))
  summary += '\nwall time (s): ' + ', '.join(f'{k} {v:.0f}' for k, v in timings.items()) + '\n'
  summary += host_text(report['host']) + '\n'
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# facejax pipeline: {workdir}\n\n{table}{summary}')
  plot_roc(results, os.path.join(workdir, 'roc.png'))
  print(table + summary, flush=True)
  return report


COMPARISONS = (('student', 'teacher'), ('student_siamese', 'teacher'), ('student_siamese', 'student'),
               ('teacher_finetuned', 'teacher'), ('teacher', 'dlib_native'))


def compression(rows: dict) -> dict | None:
  """The student against the teacher: parameter, FLOP and CPU-time ratios (None without both rows)."""
  if 'teacher' not in rows or 'student' not in rows:
    return None
  teacher, student = rows['teacher'], rows['student']
  return {'param_ratio': teacher['params'] / student['params'], 'gflops_ratio': teacher['gflops'] / student['gflops'],
          'cpu_speedup': teacher['cpu_ms_b1'] / student['cpu_ms_b1'],
          'cpu_speedup_batched': teacher['cpu_ms_per_img_batched'] / student['cpu_ms_per_img_batched']}


def comparisons(results: dict, pairs) -> dict:
  """Paired per-fold comparisons of the (a, b) in `pairs` that both have results."""
  return {f'{a} vs {b}': compare(results[a], results[b], a, b) for a, b in pairs if a in results and b in results}


def faces_eval_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A `faces` lineage's config with config.eval pointed at its LFW View 2 and a cache under `workdir`."""
  config = copy.deepcopy(config)  # ConfigDict(x) would share x's sections
  with config.unlocked():
    config.eval.data.lfw_dir = config.faces.lfw_dir
    config.eval.data.pairs = config.faces.pairs or os.path.join(config.faces.lfw_dir, 'pairs.txt')
    config.eval.cache_dir = config.eval.cache_dir or os.path.join(workdir, 'cache')
  return config


def holdout_eval_config(eval_config: ml_collections.ConfigDict, holdout: dict) -> ml_collections.ConfigDict:
  """The LFW evaluation config on the held-out pairs instead (results in RUN/eval/holdout/, no calibration)."""
  c = copy.deepcopy(eval_config)
  c.data.lfw_dir, c.data.pairs, c.name, c.calibrate = holdout['lfw_dir'], holdout['pairs'], 'holdout', False
  return c


def host_info() -> dict:
  """{'cpu', 'cpu_flags', 'cpu_count', 'jax', 'backend', 'date'}: timings differ by CPU kind, so they travel
  with it."""
  return {**cpu_info(), 'cpu_count': os.cpu_count(), 'jax': jax.__version__, 'backend': jax.default_backend(),
          'date': time.strftime('%Y-%m-%d')}


def host_text(host: dict) -> str:
  return (f"measured on: {cpu_text(host)}, {host['cpu_count']} cores, jax {host['jax']} ({host['backend']}), "
          f"{host['date']}")


# ---- Real faces (configs/real_faces.py). ----

def prepare_real_faces(config: ml_collections.ConfigDict, workdir: str, timings: dict) -> dict:
  """The data side of the real-faces pipeline (every step resumable: done markers, caches, skip-if-present):
  convert the teacher, align the identity photos (and LFW's unpaired people), evaluate the teacher on LFW View 2
  with dlib's own pipeline as reference, check identity leakage by face, prepare the training sets.
  -> {'config' (stages pointed at the prepared sets), 'evaluations', 'dlib_row', 'dlib_result', 'leakage',
  'data'}."""
  from facejax.convert.dlib import convert_dlib, default_dat_path
  from facejax.data.folders import align_once, prepare_folders

  r = config.real
  for flag, path in (('lfw_dir', r.lfw_dir), ('identities_dir', r.identities_dir)):
    if not os.path.isdir(path):
      raise FileNotFoundError(f'config.real.{flag}={path}: no such folder (expected <folder>/<person>/<image>; '
                              f'set --config.real.{flag}=DIR or FACEJAX_DATA)')
  pairs_path = r.pairs or os.path.join(r.lfw_dir, 'pairs.txt')
  data_dir = r.data_dir or os.path.join(workdir, 'data')
  config = ml_collections.ConfigDict(config)
  with config.unlocked():
    config.eval.data.lfw_dir, config.eval.data.pairs = r.lfw_dir, pairs_path
    config.eval.cache_dir = config.eval.cache_dir or os.path.join(workdir, 'cache')
  teacher_dir = config.student.distill.teacher_workdir or os.path.join(workdir, 'teacher')

  t0 = time.perf_counter()
  if not os.path.isfile(os.path.join(teacher_dir, 'model.json')):
    print(f'== convert dlib -> {teacher_dir}', flush=True)
    convert_dlib(r.teacher_dat or default_dat_path(), teacher_dir)
  timings['convert teacher'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  print('== align identity photos and LFW people outside View 2', flush=True)
  align = dict(detector=r.detector, upsample=r.upsample)
  aligned = {'identities': align_once(r.identities_dir, os.path.join(data_dir, 'aligned', 'identities'), **align)}
  if r.add_lfw_unpaired:
    unpaired = os.path.join(data_dir, 'lfw_unpaired_photos')
    unpaired_lfw_people(r.lfw_dir, pairs_path, unpaired)
    aligned['lfw_unpaired'] = align_once(unpaired, os.path.join(data_dir, 'aligned', 'lfw_unpaired'), **align)
  timings['align training photos'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  print('== evaluate the teacher on LFW View 2, with dlib\'s own pipeline as reference', flush=True)
  teacher_eval_config = ml_collections.ConfigDict(config.eval)
  teacher_eval_config.reference = 'dlib'
  teacher_eval = evaluate_run(teacher_eval_config, teacher_dir)
  ref = teacher_eval['reference']
  dlib_result = ref['results']['dlib native, raw']
  timings['evaluate teacher + dlib native'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  print('== identity leakage check', flush=True)
  paths, ids = chip_files(aligned['identities']['chips'])
  leakage = judge_leakage(teacher_dir, teacher_eval, paths, ids, r.leakage, config.eval.batch_size,
                          os.path.join(workdir, 'leakage.json'))
  exclude = {f'identities/{s["train"]}' for s in leakage['suspects']} if r.leakage.drop else set()
  if len(exclude) == leakage['train_identities']:
    raise ValueError(f'the leakage check flags all {len(exclude)} training identities (threshold '
                     f'{leakage["threshold"]:.4f}); lower config.real.leakage.threshold or far, or set '
                     f'config.real.leakage.drop=False')
  timings['leakage check'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  print('== prepare the training sets', flush=True)
  sources = {k: v['chips'] for k, v in aligned.items()}
  jittered = r.get('jittered', 0)
  trees = {'mimic': link_tree(sources, os.path.join(data_dir, 'trees', 'mimic'), exclude, mirror=r.mirror,
                             jittered=jittered),
           'identities': link_tree({'identities': sources['identities']},
                                    os.path.join(data_dir, 'trees', 'identities'), exclude)}
  tag = f'{len(exclude)}x'  # a changed exclusion list (or set of views) prepares new sets, not stale ones
  views = ('' if r.mirror else '_nomirror') + (f'_jitter{jittered}' if jittered else '')
  names = {}
  for name, min_images in (('mimic', 1), ('identities', 2)):
    names[name] = f'{name}_{tag}' + (views if name == 'mimic' else '')
    prepare_folders(os.path.join(data_dir, 'trees', name), data_dir, name=names[name], val_fraction=0.0,
                    min_images=min_images)
  timings['prepare training sets'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  student_init = None
  if r.student_init:
    student_init = _prune_student(config.student, teacher_dir, os.path.join(data_dir, 'trees', 'mimic'),
                                  os.path.join(workdir, 'student_init'))
  timings['cut the student from the teacher'] = time.perf_counter() - t0

  with config.unlocked():
    if student_init:
      config.student.init.path, config.student.init.mode = student_init['path'], 'all'
    config.student.distill.teacher_workdir = teacher_dir
    if config.siamese.siamese.mimic_weight:  # the Siamese stage keeps mimicking the teacher as an anchor
      config.siamese.distill.teacher_workdir = teacher_dir
    config.student.data.kwargs = ml_collections.ConfigDict(dict(data_dir=data_dir, name=names['mimic'],
                                                                split='train'))
    for stage in ('siamese', 'finetune'):
      if stage in config:
        config[stage].data.kwargs = ml_collections.ConfigDict(dict(data_dir=data_dir, name=names['identities'],
                                                                   split='train'))

  dlib_row = summary_row(dlib_result, cpu_ms_b1=_dlib_ms_per_chip(), threshold=dlib_result['threshold'],
                         fixed_threshold_accuracy=ref['dlib_fixed_threshold']['accuracy'])
  data = {'student_init': student_init,
          'aligned': {k: {c: v[c] for c in ('aligned', 'no_face', 'unreadable', 'source')} for k, v in aligned.items()},
          'trees': trees, 'prepared': names, 'data_dir': os.path.abspath(data_dir),
          'lfw_no_face': teacher_eval['protocol'].get('no_face'),
          'lfw_align_images_per_s': teacher_eval['protocol'].get('align_images_per_s'),
          'dlib_images_per_s': teacher_eval['protocol'].get('dlib_images_per_s'),
          'reference': dict(ref['rows']),
          'dlib_fixed_threshold': ref['dlib_fixed_threshold'],
          'reference_comparison': {k: v['summary'] for k, v in ref['comparison'].items()}}
  return {'config': config, 'evaluations': {'teacher': teacher_eval}, 'dlib_row': dlib_row,
          'dlib_result': dlib_result, 'leakage': leakage, 'data': data}


def _prune_student(stage: ml_collections.ConfigDict, teacher_dir: str, chips_root: str, out: str,
                   calibration_images: int = 256) -> dict:
  """The student's initial weights, cut from the dlib teacher (facejax.convert.prune) with its BatchNorms
  re-expressed on `calibration_images` chips spread over `chips_root`, as converted weights in `out` (kept: a
  resumed run reuses them). -> {'path', 'summary', ...}."""
  from facejax.convert.prune import prune_dlib
  from facejax.inference.embedder import read_image
  from facejax.models import dlib_resnet as dr
  from facejax.runs import CONVERTED_METADATA, load_converted, restore_variables, save_converted
  m = stage.model
  if (m.name, m.image_size, m.preprocessing, m.embed_dim) != ('dlib_resnet', dr.IMAGE_SIZE, 'dlib', dr.DESCRIPTOR_DIM):
    raise ValueError(f"config.real.student_init='prune' cuts the student from dlib's net: it needs "
                     f"config.student.model name='dlib_resnet', image_size={dr.IMAGE_SIZE}, preprocessing='dlib', "
                     f'embed_dim={dr.DESCRIPTOR_DIM}; got {m.name!r}, {m.image_size}, {m.preprocessing!r}, '
                     f"{m.embed_dim} (or set config.real.student_init='' for a random init)")
  width = float(m.kwargs.get('width', 1.0))
  blocks = m.kwargs.get('blocks')
  blocks = None if blocks is None else [int(b) for b in blocks]
  channels = m.kwargs.get('channels')
  channels = None if channels is None else [int(c) for c in channels]
  if os.path.isfile(os.path.join(out, CONVERTED_METADATA)):
    meta = load_converted(out)[2]
    if (meta.get('width'), meta.get('blocks'), meta.get('channels'), meta.get('teacher')) == \
        (width, blocks, channels, os.path.abspath(teacher_dir)) and 'stage_channels' in meta:
      return _init_summary(out, meta)  # (older cuts did not record the channels distillation hints compare)
  print(f'== cut the student from the teacher (width {width}, channels {channels or "scaled"}, blocks '
        f'{blocks or "all"}) -> {out}', flush=True)
  paths, _ = chip_files(chips_root)
  step = max(1, len(paths) // calibration_images)
  chips = np.stack([read_image(p) for p in paths[::step][:calibration_images]])  # aligned 150 px chips
  variables, report = prune_dlib(restore_variables(teacher_dir), width,
                                 np.asarray(dr.dlib_preprocessing().apply(chips)), blocks, channels)
  meta = {'arch': 'dlib_resnet', 'source': 'prune', 'teacher': os.path.abspath(teacher_dir), 'width': width,
          'blocks': blocks, 'channels': channels, 'summary': report.summary(), 'calibration_images': len(chips),
          'kept': report.kept, 'params': report.student_params, 'stage_channels': report.stage_channels}
  save_converted(out, variables, jsonable(meta), overwrite=True)
  print(report.summary(), flush=True)
  return _init_summary(out, meta)


def _init_summary(path: str, meta: dict) -> dict:
  return {'path': path, 'channels': meta.get('channels'),
          **{k: meta[k] for k in ('width', 'blocks', 'summary', 'calibration_images')}}


def _dlib_ms_per_chip(runs: int = 20) -> float:
  """dlib's own compute_face_descriptor, ms per aligned chip at batch 1 (median of `runs` calls, one thread)."""
  from facejax.data.align import CHIP_SIZE, dlib_descriptors
  rng = np.random.default_rng(0)
  chip = rng.integers(0, 256, (1, CHIP_SIZE, CHIP_SIZE, 3), dtype=np.uint8)
  dlib_descriptors(chip)  # loads the net
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    dlib_descriptors(chip)
    times.append(time.perf_counter() - t0)
  return float(np.median(times) * 1e3)


def real_data_text(data: dict, protocol: dict) -> str:
  """results.md's notes on the real data: alignment counts, the dlib reference, speeds."""
  lines = ['Data: ' + '; '.join(f'{k}: {v["aligned"]} photos aligned, {v["no_face"]} without a face (skipped), '
                                 f'{v["unreadable"]} unreadable' for k, v in data['aligned'].items()),
           'Training sets: ' + '; '.join(f'{k}: {v["identities"]} identities, {v["images"]} images'
                                         for k, v in data['trees'].items()),
           *([f'Student init: {data["student_init"]["summary"]}'] if data.get('student_init') else []),
           f'LFW View 2: {protocol.get("no_face")} photos without a detected face kept as '
           f'{protocol.get("no_face_fallback")}; alignment {data["lfw_align_images_per_s"]:.1f} img/s, '
           f'dlib native {data["dlib_images_per_s"]:.1f} img/s',
           f'dlib native at its fixed 0.6: {100 * data["dlib_fixed_threshold"]["accuracy"]:.2f} +- '
           f'{100 * data["dlib_fixed_threshold"]["accuracy_std"]:.2f} %',
           'Reference (same chips, same folds):', results_markdown(data['reference'])]
  lines += [f'{k}: {v}' for k, v in data['reference_comparison'].items()]
  return '\n'.join(lines) + '\n'
