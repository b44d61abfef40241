"""Every distillation method on the demo's embedded digits, side by side.

  python -m experiments.demo_methods --workdir=/tmp/demo_methods \
      [--methods=ce,kd,fitnet,...] [--seeds=0]

The demo's teacher (resnet14 on 4,000 digits) and its fitted 'light'
heads are trained once (or reused from WORKDIR), then the demo's student
(resnet8, the first 256 digits, 30 epochs, batch 32) is trained with each
method at its default weights (RepDistiller's for the CRD benchmark's
methods, mdistiller's for DKD; CRD's memory has one row per digit, so
its 16,384 negatives are drawn with many repeats). Each run lives in
WORKDIR/<method>_seed<k> and is reused when re-run. Prints a markdown
table (last-epoch test accuracy, teacher-student agreement, wall time) and
writes it to WORKDIR/demo_methods.md.

What this small problem can show: that every method trains end to end in
the same trainer and how far each moves a student that sees little data
from the vanilla CE baseline. What it cannot: the ranking of the methods
on CIFAR-100, where the feature-matching methods were tuned.
"""

import argparse
import json
import os
import statistics
import sys

METHODS = ('ce', 'kd', 'fitnet', 'at', 'sp', 'cc', 'vid', 'rkd', 'pkt',
           'ab', 'ft', 'fsp', 'nst', 'crd', 'crd_kd', 'dkd', 'mhkd',
           'dist', 'ctkd', 'ofd', 'mlkd', 'reviewkd', 'kdsvd')


def _parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--methods', default=','.join(METHODS))
  p.add_argument('--seeds', default='0')
  return p.parse_args(argv)


def method_config(method: str, seed: int, workdir: str):
  """The demo's student config, distilled with ``method``."""
  from mhkd_jax.tools import demo  # noqa: PLC0415

  configs = demo.demo_configs(workdir)
  base = 'mhkd' if method == 'mhkd' else 'kd'
  config = configs['ce' if method == 'ce' else base]
  config.method = method
  config.seed = seed
  return config


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from mhkd_jax.tools import demo  # noqa: PLC0415

  workdir = os.path.abspath(args.workdir)
  methods = [m for m in args.methods.split(',') if m]
  seeds = [int(s) for s in args.seeds.split(',') if s]
  unknown = set(methods) - set(METHODS)
  if unknown:
    raise SystemExit(f'Unknown methods {sorted(unknown)}; valid: '
                     f'{", ".join(METHODS)}.')
  configs = demo.demo_configs(workdir)
  for run in ('teacher', 'fit_teacher_heads'):
    results, wall, _ = demo.run_one(run, configs[run],
                                    os.path.join(workdir, run))
    print(f'# {run} ({wall:.0f} s): {json.dumps(results["final"])}',
          flush=True)
  records = []
  for method in methods:
    for seed in seeds:
      config = method_config(method, seed, workdir)
      run_dir = os.path.join(workdir, f'{method}_seed{seed}')
      results, wall, _ = demo.run_one(method, config, run_dir)
      final = results['final']
      records.append({'method': method, 'seed': seed,
                      'acc': final['eval/acc'], 'wall_s': wall,
                      'agree_top1': final.get('eval/agree_top1')})
      print(json.dumps(records[-1]), flush=True)

  def pct(values):
    values = [100 * v for v in values if v is not None]
    if not values:
      return ''
    if len(values) == 1:
      return f'{values[0]:.1f}'
    return f'{statistics.mean(values):.1f} +- {statistics.stdev(values):.1f}'

  lines = ['| method | test acc % | agree top-1 % | wall s / run |',
           '|---|--:|--:|--:|']
  for method in methods:
    rs = [r for r in records if r['method'] == method]
    lines.append(
      f'| {method} | {pct([r["acc"] for r in rs])} | '
      f'{pct([r["agree_top1"] for r in rs])} | '
      f'{statistics.mean(r["wall_s"] for r in rs):.0f} |'
    )
  table = '\n'.join(lines)
  print(table)
  with open(os.path.join(workdir, 'demo_methods.md'), 'w') as f:
    f.write(f'Seeds {seeds}; `python -m experiments.demo_methods '
            f'--methods={args.methods} --seeds={args.seeds}`\n\n'
            + table + '\n')


if __name__ == '__main__':
  main()
