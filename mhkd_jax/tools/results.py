"""The results table of a root of runs, in the CRD paper's layout.

  python -m mhkd_jax.tools.results ROOT

Reads every ``results.json`` under ROOT (and ``ROOT/sweep.json``, the
runs a sweep planned) and writes:

* ``ROOT/results.md``: one table per data set, teacher-student pairs as
  columns and methods as rows; each cell the mean ± std top-1 (%) over
  every student and seed of that cell, at the last epoch and at the best
  epoch (both labelled, since papers differ in which they report), the
  number of runs, and the published number beside it where
  ``mhkd_jax/tools/published.py`` has one (its source, the epoch the
  source reports, and our mean at that epoch minus it). Runs that
  never started or have not finished are listed under the table: a cell is
  never silently made of fewer runs than were planned.
* ``ROOT/results.csv``: one row per student of every run (workdir, data,
  pair, method, seed, status, last and best accuracy).
* ``ROOT/curves_<data>_<pair>.png``: per pair, the eval accuracy against
  the epoch of each method (mean over its runs, std shaded).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import io
import os
import sys

import numpy as np

from mhkd_jax.run import paths, records

RESULTS_MD = 'results.md'
RESULTS_CSV = 'results.csv'


@dataclasses.dataclass
class Run:
  """One student of one run (a run of N students gives N)."""

  workdir: str
  data: str
  pair: str
  method: str
  seed: int | None
  status: str  # 'finished', 'unfinished' or 'missing'
  last_acc: float | None = None  # fraction
  best_acc: float | None = None
  curve: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def _pair(config: dict) -> str:
  teacher = config.get('teacher', {}).get('model') or ''
  model = config.get('model', '?')
  return f'{teacher}-{model}' if teacher else model


def _method(config: dict, method: str) -> str:
  """The row a run belongs to: its method, '+ls' if its logit
  standardization switch was on, '+dot' if it trained with DOT (the
  labels of tools/published.py; configs/distillation.py's run names)."""
  from mhkd_jax.configs import distillation  # noqa: PLC0415

  optimizer = config.get('optimizer', {}).get('name', 'sgd')
  section = config.get(method)
  if isinstance(section, dict) and section.get('logit_standardize'):
    method += '+ls'
  return distillation.run_label(method, optimizer)


def _history_curve(history, key):
  return [(h['epoch'], h[key]) for h in history if key in h]


def _finished(rel, config, results) -> list[Run]:
  data, pair = results['data'], _pair(config)
  method = _method(config, results['method'])
  if results.get('teacher') and not config.get('teacher', {}).get('model'):
    pair = f'{results["teacher"]}-{results["model"]}'
  history = results.get('history', [])
  if 'students' not in results:
    return [Run(rel, data, pair, method, results.get('seed'), 'finished',
                results['final'].get('eval/acc'), results['best_eval_acc'],
                _history_curve(history, 'eval/acc'))]
  return [
    Run(rel, data, pair, method, s['seed'], 'finished',
        s['final'].get('eval/acc'), s['best_eval_acc'],
        _history_curve(history, f'student{k}/eval/acc'))
    for k, s in enumerate(results['students'])
  ]


def _unfinished(rel, config, status) -> list[Run]:
  data = config.get('data', {}).get('name', '?')
  seed = config.get('seed')
  n = config.get('num_students', 1)
  return [
    Run(rel, data, _pair(config), _method(config, config.get('method', '?')),
        None if seed is None else seed + k, status)
    for k in range(n)
  ]


def collect(root: str) -> list[Run]:
  """Every student of every run under ``root``, finished or not, and the
  sweep's planned runs that have no directory yet (status 'missing')."""
  runs, seen = [], set()
  for rel, filenames in paths.walk(root):
    if records.CONFIG not in filenames:
      continue
    if os.path.basename(rel) == 'preliminary':
      continue
    seen.add(rel)
    dirpath = paths.join(root, rel)
    config = records.read_json(paths.join(dirpath, records.CONFIG))
    if records.RESULTS in filenames:
      results = records.read_json(
        paths.join(dirpath, records.RESULTS))
      if not results.get('preempted'):
        runs += _finished(rel, config, results)
        continue
    runs += _unfinished(rel, config, 'unfinished')
  manifest = paths.join(root, 'sweep.json')
  if paths.exists(manifest):
    for entry in records.read_json(manifest)['runs']:
      if entry['workdir'] not in seen:
        runs += _unfinished(entry['workdir'], entry['config'], 'missing')
  return runs


def _mean_std(values) -> str:
  values = [100 * v for v in values if v is not None]
  if not values:
    return '–'
  return f'{np.mean(values):.2f} ± {np.std(values):.2f}'


def published(data: str, pair: str, method: str):
  """The literature's record for a cell (``tools.published.lookup``): a
  ``Record`` with its number, source and epoch, or None."""
  from mhkd_jax.tools import published as published_lib  # noqa: PLC0415

  return published_lib.lookup(data, pair, method)


def _mean(values) -> float | None:
  values = [100 * v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _published_text(record, last: float | None, best: float | None) -> str:
  """'[published 76.32, mdistiller, best epoch; ours best -0.41]': the
  number, its source, the epoch the source reports, and our mean at that
  same epoch minus it (none where the source does not say which)."""
  text = f'[published {record.top1:.2f}, {record.source}'
  if record.epoch is None:
    return text + ', epoch not stated]'
  text += f', {record.epoch} epoch'
  ours = best if record.epoch == 'best' else last
  if ours is not None:
    text += f'; ours {record.epoch} {ours - record.top1:+.2f}'
  return text + ']'


def _cell(runs: list[Run], data, pair, method) -> str:
  done = [r for r in runs if r.status == 'finished']
  text = (f'last {_mean_std([r.last_acc for r in done])} · best '
          f'{_mean_std([r.best_acc for r in done])} (n={len(done)}')
  missing = len(runs) - len(done)
  text += f', {missing} not finished)' if missing else ')'
  record = published(data, pair, method)
  if record is None:
    return text
  # A best-epoch number is compared with our best-epoch mean, a last-epoch
  # one with our last: the label says which.
  return text + ' ' + _published_text(
    record, _mean([r.last_acc for r in done]),
    _mean([r.best_acc for r in done]))


def table(runs: list[Run]) -> str:
  """The markdown report: one table per data set, then the runs that are
  not finished."""
  lines = [
    '# Results', '',
    'Top-1 accuracy (%) on the eval split, mean ± std (population) over '
    'every student and seed of a cell; "last" is the last epoch, "best" '
    'the best epoch; n = finished runs (students). Published numbers in '
    'brackets (mhkd_jax/tools/published.py: each with its source and the '
    'epoch that source reports), with our mean at that epoch minus the '
    'published number ("ours best", "ours last").', '',
  ]
  by_data = collections.defaultdict(list)
  for r in runs:
    by_data[r.data].append(r)
  for data, data_runs in sorted(by_data.items()):
    pairs = sorted({r.pair for r in data_runs})
    methods = sorted({r.method for r in data_runs})
    lines += [f'## {data}', '',
              '| method | ' + ' | '.join(pairs) + ' |',
              '|---' * (len(pairs) + 1) + '|']
    for m in methods:
      cells = []
      for p in pairs:
        cell_runs = [r for r in data_runs if r.pair == p and r.method == m]
        cells.append(_cell(cell_runs, data, p, m) if cell_runs else '')
      lines.append(f'| {m} | ' + ' | '.join(cells) + ' |')
    lines.append('')
  pending = [r for r in runs if r.status != 'finished']
  if pending:
    lines += ['## Not finished', '']
    lines += [f'- {r.workdir} (seed {r.seed}): {r.status}' for r in pending]
    lines.append('')
  return '\n'.join(lines)


def write_csv(runs: list[Run], path: str) -> None:
  def write(f):
    w = csv.writer(f, lineterminator='\n')
    w.writerow(['workdir', 'data', 'pair', 'method', 'seed', 'status',
                'last_acc', 'best_acc'])
    for r in runs:
      w.writerow([r.workdir, r.data, r.pair, r.method, r.seed, r.status,
                  r.last_acc, r.best_acc])

  paths.write_atomic(path, write)


def plot_curves(runs: list[Run], root: str) -> list[str]:
  """One PNG per (data, pair): eval accuracy per epoch, per method."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  written = []
  cells = collections.defaultdict(list)
  for r in runs:
    if r.curve:
      cells[(r.data, r.pair)].append(r)
  for (data, pair), cell in sorted(cells.items()):
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r.method for r in cell}):
      curves = [dict(r.curve) for r in cell if r.method == method]
      epochs = sorted(set.intersection(*(set(c) for c in curves)))
      acc = 100 * np.array([[c[e] for e in epochs] for c in curves])
      mean, std = acc.mean(0), acc.std(0)
      ax.plot(epochs, mean, label=f'{method} (n={len(curves)})')
      ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel='epoch', ylabel='eval top-1 (%)', title=f'{data} {pair}')
    ax.legend()
    path = paths.join(root, f'curves_{data}_{pair}.png')
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=100, bbox_inches='tight')
    plt.close(fig)
    paths.write_bytes(path, png.getvalue())
    written.append(path)
  return written


def write_report(root: str) -> str:
  """Writes results.md, results.csv and the curves; returns the table."""
  runs = collect(root)
  text = table(runs)
  paths.write_atomic(paths.join(root, RESULTS_MD),
                     lambda f: f.write(text + '\n'))
  write_csv(runs, paths.join(root, RESULTS_CSV))
  plot_curves(runs, root)
  return text


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    raise SystemExit('usage: python -m mhkd_jax.tools.results ROOT')
  print(write_report(argv[0]))


if __name__ == '__main__':
  main()
