"""The paper end to end: pretrain (ImageNet stand-in) -> transfer (teacher) -> compress (student) -> Siamese ->
verification + CPU benchmark -> report. Every stage is a normal run in `<workdir>/<stage>`, so re-running the
pipeline resumes unfinished stages and skips finished ones.

With a `faces` section (configs/real_transfer.py, configs/real_faces.py: a real-faces lineage) the data are real
photos prepared first (facejax.lineage.prepare_faces), the stages are config.stages, each naming its own init,
teacher and data (facejax.lineage.stage_plan), the reported models are config.report plus the reference rows of
config.references (e.g. dlib's own pipeline), and every model is also reported on the held-out identities' pairs.
"""
from __future__ import annotations

import copy
import json
import os
import time

import jax
import ml_collections
from absl import logging

from facejax.evaluation.evaluator import evaluate_run
from facejax.evaluation.leakage import leakage_text
from facejax.evaluation.report import plot_roc, results_markdown, summary_row
from facejax.evaluation.verification import compare
from facejax.inference.benchmark import benchmark_model
from facejax.inference.embed import flip_mode
from facejax.inference.hardware import cpu_info, cpu_text
from facejax.lineage import REFERENCES, cut_init, cut_inits, prepare_faces, report_runs, stage_plan
from facejax.runs import jsonable, load_run
from facejax.train import train

STAGES = ('pretrain', 'teacher', 'student', 'siamese')  # a config without `faces` (configs/demo.py)
# Report name -> stage run directory.
REPORTED = {'teacher': 'teacher', 'student': 'student', 'student_siamese': 'siamese'}


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """Link the stages of a config without `faces`: teacher <- pretrain backbone (unless teacher.init.path is
  given), student <- distil the teacher, siamese <- all of the student.

  A given student.distill.teacher_workdir (e.g. one teacher shared by a sweep's variants) replaces the pretrain
  and teacher stages; siamese.total_steps=0 skips the Siamese stage (no student_siamese in the report).
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
  return stages


def reported_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Report name -> the run directory it is evaluated from (the teacher may live outside `workdir`)."""
  runs = {name: os.path.join(workdir, stage) for name, stage in REPORTED.items()}
  runs['teacher'] = config.student.distill.teacher_workdir or runs['teacher']
  if not config.siamese.total_steps:
    del runs['student_siamese']
  return runs


def run_pipeline(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Run every stage, evaluate and benchmark every reported model, write the report files."""
  os.makedirs(workdir, exist_ok=True)
  timings, faces, references, lfw_references = {}, None, {}, {}
  if 'faces' in config:  # a lineage whose stages name their own inits, teachers and data (facejax.lineage)
    config = faces_eval_config(config, workdir)
    references = dict(config.get('references', {}))
    for name, kind in references.items():  # on LFW first: a leakage judge that is a reference's run reuses it
      if kind not in REFERENCES:
        raise ValueError(f'config.references.{name}={kind!r}: expected one of {sorted(REFERENCES)}')
      t0 = time.perf_counter()
      print(f'== reference {name}: {kind} on LFW View 2', flush=True)
      lfw_references[name] = REFERENCES[kind](config.eval, workdir)
      timings[f'evaluate {name} (lfw)'] = time.perf_counter() - t0
    faces = prepare_faces(config.faces, workdir, config.eval, timings,
                          evaluated={r['run']: r['evaluation'] for r in lfw_references.values()})
    stages = stage_plan(config, workdir, faces)
    reported = report_runs(config, workdir, stages)
  else:
    stages = stage_configs(config, workdir)
    reported = reported_runs(config, workdir)
  for name, stage in stages.items():
    logging.info('stage %s -> %s', name, os.path.join(workdir, name))
    print(f'== stage {name}: {stage.task} {stage.model.name}, {stage.total_steps} steps', flush=True)
    t0 = time.perf_counter()
    if faces:
      cut_init(name, config, stages, workdir, faces)  # a student cut from its teacher, trained by now
    train(stage, os.path.join(workdir, name))
    timings[f'train {name}'] = time.perf_counter() - t0

  print('== evaluate + benchmark', flush=True)
  # Every model on each yardstick: LFW View 2 and, where the lineage holds identities out, their pairs.
  yardsticks = {'lfw': config.eval}
  if faces and faces['holdout']:
    yardsticks['holdout'] = holdout_eval_config(config.eval, faces['holdout'])
  # (yardstick, run) -> an evaluation already made (the leakage judge's, a reference's run)
  known = {('lfw', run): e for run, e in (faces['evaluations'] if faces else {}).items()}
  results, rows, runs, benches, texts = {y: {} for y in yardsticks}, {}, {}, {}, []
  for y, eval_config in yardsticks.items():
    for name, kind in references.items():  # a reference evaluator, beside the run it evaluates too
      t0 = time.perf_counter()
      ref = lfw_references[name] if y == 'lfw' else REFERENCES[kind](eval_config, workdir)
      known[(y, ref['run'])], results[y][name] = ref['evaluation'], ref['result']
      if y == 'lfw':
        arch = bench_row(ref['run'], config.benchmark, benches)  # its net's size; its own CPU time in ref['row']
        rows[name] = summary_row(ref['result'], params=arch['params'], gflops=arch['gflops'],
                                 threshold=ref['result']['threshold'], **ref['row'])
        runs[name] = {'workdir': os.path.abspath(ref['run']), 'reference': kind,
                      'evaluation': os.path.abspath(os.path.join(ref['evaluation']['out_dir'], 'results.json'))}
        texts.append(ref['text'])
      timings[f'benchmark {name}' if y == 'lfw' else f'evaluate {name} ({y})'] = time.perf_counter() - t0
    for name, run in reported.items():
      t0 = time.perf_counter()
      evaluation = known.get((y, run)) or evaluate_run(eval_config, run)
      results[y][name] = evaluation['result']
      if y == 'lfw':
        protocol = evaluation['protocol']
        runs[name] = {'workdir': os.path.abspath(run),
                      'evaluation': os.path.abspath(os.path.join(evaluation['out_dir'], 'results.json'))}
        rows[name] = summary_row(results[y][name], **bench_row(run, config.benchmark, benches),
                                 threshold=results[y][name]['threshold'])
      timings[f'evaluate + benchmark {name}' if y == 'lfw' else f'evaluate {name} ({y})'] = time.perf_counter() - t0
  rows = {name: rows[name] for name in (*reported, *references)}  # the trained models first
  pairs = config.get('comparisons', COMPARISONS)
  report = {
      'models': rows,
      'compression': compression(rows),
      'comparisons': comparisons(results['lfw'], pairs),
      'protocol': dict(protocol, params='embedding network (no classifier)',
                       cpu_ms_b1=f'median of {config.benchmark.runs} AOT-compiled runs, batch 1, compile excluded',
                       cpu_ms_per_img_batched=f'the same at batch {config.benchmark.batch_size}, per image'),
      'runs': runs,  # where each row came from (a sweep finds fold accuracies and shared teachers here)
      'timings_s': timings,
      'host': host_info(),  # what the CPU timings and wall times were measured on
  }
  if faces:
    report['leakage'] = faces['leakage']
    counts = ('aligned', 'no_face', 'unreadable', 'source')
    report['data'] = {'sets': faces['sets'],
                      'aligned': {k: {c: v[c] for c in counts} for k, v in faces['aligned'].items()},
                      'inits': cut_inits(stages)}  # the stages cut from a teacher: what each cut kept
  if 'holdout' in results:  # the second yardstick: identities held out of every training set, in LFW's protocol
    report['holdout'] = {
        'pairs': {k: faces['holdout'][k] for k in ('lfw_dir', 'pairs', 'num_folds', 'pairs_per_half', 'photos')},
        'models': {name: summary_row(results['holdout'][name], threshold=results['holdout'][name]['threshold'])
                   for name in rows},
        'comparisons': comparisons(results['holdout'], pairs)}
  if config.get('keep_better') and 'holdout' in results:
    report['kept'] = keep_better(results['holdout'], tuple(config.keep_better), runs, workdir)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(jsonable(report), f, indent=2)
  table = results_markdown(rows)
  c = report['compression']
  summary = ((f'\nstudent: {c["param_ratio"]:.1f}x fewer parameters, {c["gflops_ratio"]:.1f}x fewer FLOPs, '
              f'{c["cpu_speedup"]:.1f}x faster on CPU at batch 1, {c["cpu_speedup_batched"]:.1f}x at batch '
              f'{config.benchmark.batch_size}\n' if c else '\n')
             + ''.join(f'{k}: {v["summary"]}\n' for k, v in report['comparisons'].items()))
  if faces and faces['leakage']:
    summary += '\n' + leakage_text(faces['leakage']) + '\n'
  if faces:
    summary += ''.join(f'\n{name} init, cut from its teacher: {cut["summary"]}\n'
                       for name, cut in report['data']['inits'].items())
  summary += ''.join(texts)
  if report.get('kept'):
    summary += f"\n{report['kept']['summary']}\n"
  if 'holdout' in report:
    h = faces['holdout']
    summary += (f"\nHeld-out identities ({len(h['identities'])} people, {h['num_folds']} folds of "
                f"{2 * h['pairs_per_half']} pairs):\n" + results_markdown(report['holdout']['models'])
                + ''.join(f'{k}: {v["summary"]}\n' for k, v in report['holdout']['comparisons'].items()))
  summary += '\nwall time (s): ' + ', '.join(f'{k} {v:.0f}' for k, v in timings.items()) + '\n'
  summary += host_text(report['host']) + '\n'
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# facejax pipeline: {workdir}\n\n{table}{summary}')
  plot_roc(results['lfw'], os.path.join(workdir, 'roc.png'))
  print(table + summary, flush=True)
  return report


def bench_row(run: str, bench: ml_collections.ConfigDict, benches: dict) -> dict:
  """A run's params, GFLOPs and CPU times at batch 1 and config.benchmark.batch_size, measured once per run
  (`benches`: run -> row, shared by the rows of one pipeline)."""
  if run not in benches:
    model, variables, info = load_run(run)
    one, batched = (benchmark_model(model, variables, batch_size=b, image_size=info['image_size'],
                                    warmup=bench.warmup, runs=bench.runs) for b in (1, bench.batch_size))
    benches[run] = {'params': one['params'], 'gflops': one['gflops'], 'cpu_ms_b1': one['ms_median'],
                    'cpu_ms_per_img_batched': batched['ms_per_image']}
  return benches[run]


COMPARISONS = (('student', 'teacher'), ('student_siamese', 'teacher'), ('student_siamese', 'student'))


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


def keep_better(holdout: dict, names: tuple, runs: dict, workdir: str) -> dict | None:
  """The better of the models `names` (e.g. the student and its Siamese continuation) by accuracy on the held-out
  pairs, never on LFW View 2 (the test set); the earlier name wins a tie. `<workdir>/kept` links to its run, the one
  to embed and verify with. -> {'kept', 'run', 'holdout_accuracy': {name: accuracy}, 'summary'} (None when a model
  has no result)."""
  if any(n not in holdout for n in names):
    return None
  accuracy = {n: holdout[n]['accuracy'] for n in names}
  kept = max(names, key=lambda n: (accuracy[n], -names.index(n)))
  link = os.path.join(workdir, 'kept')
  if os.path.lexists(link) and not os.path.islink(link):
    raise FileExistsError(f'{link}: expected the link to the kept model (config.keep_better), found a file or folder: '
                          'move it away')
  if os.path.islink(link):
    os.remove(link)
  os.symlink(os.path.relpath(runs[kept]['workdir'], workdir), link)
  others = ', '.join(f"{n}'s {100 * accuracy[n]:.2f}" for n in names if n != kept)
  return {'kept': kept, 'run': runs[kept]['workdir'], 'holdout_accuracy': accuracy,
          'summary': f'kept: {kept} ({100 * accuracy[kept]:.2f} % on the held-out pairs, against {others}), linked '
                     f'as {link}'}


def faces_eval_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """A `faces` lineage's config with config.eval pointed at its LFW View 2 and a cache under `workdir`."""
  if config.get('references') and flip_mode(config.eval.get('flip')):
    raise ValueError(
        f'config.eval.flip={config.eval.flip!r}: the reference rows ({", ".join(config.references)}) are single-view '
        'descriptors, compared fold by fold with every model, so the pipeline evaluates single views; after it, '
        'evaluate a run with flip TTA: python -m launch.evaluate --config=configs/lfw_eval.py:lfw --workdir=RUN '
        '--config.data.lfw_dir=DATA/lfw --config.flip=sum --config.name=lfw_flip')
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
