"""The demo's students under variants, over seeds: what do bf16 compute and
the expensive 'dih' heads change?

  python -m experiments.demo_variants --workdir=/tmp/demo_variants \
      --seeds=0,1,2,3 --variants=float32,bfloat16,dih

Uses the demo's configs (configs/demo.py): one teacher and its fitted heads
(trained once, in float32, by the demo's own runs), then for every variant
and seed the student runs:

  float32   ce, kd, mhkd as in `make demo` ('light' heads, width 32)
  bfloat16  the same three with config.compute_dtype='bfloat16' (student,
            heads and the frozen teacher compute in bf16; parameters,
            statistics and losses stay float32)
  dih       mhkd with 'dih' heads at their default width on both networks
            (teacher 'dih' heads fitted once by a fit_teacher_heads run)

Each run lives in WORKDIR/<variant>/<method>_seed<k> and is reused when
re-run. Prints a markdown table (mean +- std of the last-epoch test
accuracy over seeds, the per-seed values, mean wall seconds per run) and
writes it to --out (and the per-run figures as JSON lines next to it).
"""

import argparse
import json
import os
import statistics
import sys

# The variants: the methods each runs, and what it changes in the config.
VARIANTS = {
  'float32': ('ce', 'kd', 'mhkd'),
  'bfloat16': ('ce', 'kd', 'mhkd'),
  'dih': ('mhkd',),
}


def _parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--seeds', default='0,1,2,3')
  p.add_argument('--variants', default=','.join(VARIANTS))
  p.add_argument(
    '--out', default='',
    help='markdown table path (default: WORKDIR/demo_variants.md)',
  )
  return p.parse_args(argv)


def variant_config(variant: str, method: str, seed: int, workdir: str):
  """The demo config of one student run under ``variant``."""
  from mhkd_jax.tools import demo

  # The demo's own config, teachers read from this study's workdir.
  config = demo.demo_configs(workdir)[method]
  config.seed = seed
  # Named in every variant: the default ('auto') is bf16 on accelerators.
  config.compute_dtype = 'float32'
  if variant == 'bfloat16':
    config.compute_dtype = 'bfloat16'
  elif variant == 'dih':
    config.mhkd.head = 'dih'
    config.mhkd.head_width = None
    config.teacher.init = os.path.join(workdir, 'fit_teacher_heads_dih')
  elif variant != 'float32':
    raise SystemExit(
      f'Unknown variant {variant!r}; valid: {", ".join(VARIANTS)}.'
    )
  return config


def _teacher_runs(workdir: str, variants) -> dict:
  """The demo's teacher runs (and dih teacher heads if a variant needs)."""
  from mhkd_jax.tools import demo

  configs = demo.demo_configs(workdir)
  runs = {'teacher': configs['teacher'],
          'fit_teacher_heads': configs['fit_teacher_heads']}
  if 'dih' in variants:
    dih = demo.demo_configs(workdir)['fit_teacher_heads']
    dih.fit_teacher_heads.head = 'dih'
    dih.fit_teacher_heads.head_width = None
    runs['fit_teacher_heads_dih'] = dih
  return runs


def _fmt(values):
  pct = [100 * v for v in values]
  if len(pct) == 1:
    return f'{pct[0]:.1f}'
  return f'{statistics.mean(pct):.1f} +- {statistics.stdev(pct):.1f}'


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from mhkd_jax.tools import demo

  workdir = os.path.abspath(args.workdir)
  seeds = [int(s) for s in args.seeds.split(',') if s]
  variants = [v for v in args.variants.split(',') if v]
  for v in variants:
    if v not in VARIANTS:
      raise SystemExit(f'Unknown variant {v!r}; valid: {", ".join(VARIANTS)}.')
  for run, config in _teacher_runs(workdir, variants).items():
    results, wall, _ = demo.run_one(run, config, os.path.join(workdir, run))
    print(f'# {run} ({wall:.0f} s): {json.dumps(results["final"])}',
          flush=True)

  records = []
  for variant in variants:
    for method in VARIANTS[variant]:
      for seed in seeds:
        config = variant_config(variant, method, seed, workdir)
        run_dir = os.path.join(workdir, variant, f'{method}_seed{seed}')
        results, wall, _ = demo.run_one(method, config, run_dir)
        final = results['final']
        record = {
          'variant': variant, 'method': method, 'seed': seed,
          'acc': final['eval/acc'], 'wall_s': wall,
          'agree_top1': final.get('eval/agree_top1'),
          'heads': {k: v for k, v in final.items()
                    if k.startswith('eval/acc/')},
        }
        records.append(record)
        print(json.dumps(record), flush=True)

  lines = [
    '| variant | method | test acc % (mean +- std) | per seed | '
    'wall s / run |',
    '|---|---|--:|---|--:|',
  ]
  for variant in variants:
    for method in VARIANTS[variant]:
      rs = [r for r in records
            if r['variant'] == variant and r['method'] == method]
      lines.append(
        f'| {variant} | {method} | {_fmt([r["acc"] for r in rs])} | '
        + ', '.join(f'{100 * r["acc"]:.1f}' for r in rs)
        + f' | {statistics.mean(r["wall_s"] for r in rs):.0f} |'
      )
  table = '\n'.join(lines)
  print(table)
  out = args.out or os.path.join(workdir, 'demo_variants.md')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    f.write(f'Seeds {seeds}; `python -m experiments.demo_variants '
            f'--seeds={args.seeds} --variants={args.variants}`\n\n'
            + table + '\n')
  with open(os.path.splitext(out)[0] + '.jsonl', 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  main()
