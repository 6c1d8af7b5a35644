"""The paper end to end: pretrain (ImageNet stand-in) -> transfer (teacher) -> compress (student) -> Siamese ->
verification + CPU benchmark -> report. Every stage is a normal run in `<workdir>/<stage>`, so re-running the
pipeline resumes unfinished stages and skips finished ones."""
from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from facejax.evaluation.cli import evaluate_run
from facejax.evaluation.report import jsonable, plot_roc, results_markdown, summary_row
from facejax.evaluation.verification import compare
from facejax.inference.benchmark import benchmark_model
from facejax.train import checkpoint as ckpt
from facejax.train import train

STAGES = ('pretrain', 'teacher', 'student', 'siamese')
# Report name -> stage run directory.
REPORTED = {'teacher': 'teacher', 'student': 'student', 'student_siamese': 'siamese'}


def stage_configs(config: ml_collections.ConfigDict, workdir: str) -> dict[str, ml_collections.ConfigDict]:
  """Link the stages: teacher <- pretrain backbone (unless teacher.init.path is given), student <- distil the
  teacher, siamese <- all of the student.

  A given student.distill.teacher_workdir (e.g. one teacher shared by a sweep's variants) replaces the pretrain
  and teacher stages; siamese.total_steps=0 skips the Siamese stage (no student_siamese in the report).
  """
  stages = {s: ml_collections.ConfigDict(config[s]) for s in STAGES}
  run = lambda s: os.path.join(workdir, s)
  if stages['student'].distill.teacher_workdir:
    del stages['pretrain'], stages['teacher']
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
  """Run every stage, evaluate and benchmark teacher / student / student_siamese, write the report files."""
  os.makedirs(workdir, exist_ok=True)
  for name, stage in stage_configs(config, workdir).items():
    logging.info('stage %s -> %s', name, os.path.join(workdir, name))
    print(f'== stage {name}: {stage.task} {stage.model.name}, {stage.total_steps} steps', flush=True)
    train(stage, os.path.join(workdir, name))

  print('== evaluate + benchmark', flush=True)
  rows, results, runs = {}, {}, {}
  for name, run in reported_runs(config, workdir).items():
    evaluation = evaluate_run(config.eval, run)  # also calibrates run/threshold.json for launch.verify
    results[name] = evaluation['result']
    runs[name] = {'workdir': os.path.abspath(run),
                  'evaluation': os.path.abspath(os.path.join(evaluation['out_dir'], 'results.json'))}
    model, variables, info = ckpt.load_run(run)
    bench, batched = (benchmark_model(model, variables, batch_size=b, image_size=info['image_size'],
                                      warmup=config.benchmark.warmup, runs=config.benchmark.runs)
                      for b in (1, config.benchmark.batch_size))
    rows[name] = summary_row(results[name], params=bench['params'], gflops=bench['gflops'],
                             cpu_ms_b1=bench['ms_median'], cpu_ms_per_img_batched=batched['ms_per_image'],
                             threshold=results[name]['threshold'])
  protocol = evaluation['protocol']
  teacher, student = rows['teacher'], rows['student']
  report = {
      'models': rows,
      'compression': {'param_ratio': teacher['params'] / student['params'],
                      'gflops_ratio': teacher['gflops'] / student['gflops'],
                      'cpu_speedup': teacher['cpu_ms_b1'] / student['cpu_ms_b1'],
                      'cpu_speedup_batched': teacher['cpu_ms_per_img_batched'] / student['cpu_ms_per_img_batched']},
      'comparisons': {f'{a} vs teacher': compare(results[a], results['teacher'], a, 'teacher')
                      for a in ('student', 'student_siamese') if a in results},
      'protocol': dict(protocol, params='embedding network (no classifier)',
                       cpu_ms_b1=f'median of {config.benchmark.runs} AOT-compiled runs, batch 1, compile excluded',
                       cpu_ms_per_img_batched=f'the same at batch {config.benchmark.batch_size}, per image'),
      'runs': runs,  # where each row came from (a sweep finds fold accuracies and shared teachers here)
  }
  with open(os.path.join(workdir, 'results.json'), 'w') as f:
    json.dump(jsonable(report), f, indent=2)
  table = results_markdown(rows)
  c = report['compression']
  summary = (f'\nstudent: {c["param_ratio"]:.1f}x fewer parameters, {c["gflops_ratio"]:.1f}x fewer FLOPs, '
             f'{c["cpu_speedup"]:.1f}x faster on CPU at batch 1, {c["cpu_speedup_batched"]:.1f}x at batch '
             f'{config.benchmark.batch_size}\n'
             + ''.join(f'{k}: {v["summary"]}\n' for k, v in report['comparisons'].items()))
  with open(os.path.join(workdir, 'results.md'), 'w') as f:
    f.write(f'# facejax pipeline: {workdir}\n\n{table}{summary}')
  plot_roc(results, os.path.join(workdir, 'roc.png'))
  print(table + summary, flush=True)
  return report
