"""A sweep: the product of config axes, one workdir per run under one root.

  python -m mhkd_jax.tools.sweep --config=configs/demo.py:kd --root=sweeps/demo \
      --grid='method=ce,kd,mhkd;seed=0,1' [--mode=run|scripts] \
      [--config.num_students=3]

``--grid`` lists axes separated by ';'. An axis is ``key=v1,v2,...`` over
one config key, or ``key1+key2=a1+a2,b1+b2`` over keys that vary together
(a teacher-student pair: ``model+teacher.model+teacher.init=...``). Every
combination is one run in ``ROOT/<axis values>``; ``ROOT/sweep.json``
lists them, so that ``python -m mhkd_jax.tools.results ROOT`` shows a run that
never started as missing instead of leaving it out.

``--mode=run`` trains the runs one after another in this process; re-running
the command resumes an interrupted run from its checkpoint and skips every
finished one (``results.json`` present). ``--mode=scripts`` writes
``ROOT/launch/<run>.sh`` per run (a ``python -m mhkd_jax.main`` command
with the run's overrides) for a cluster scheduler or a TPU VM, and runs
nothing. Each run records its config in its ``config.json``.
"""

from __future__ import annotations

import itertools
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mhkd_jax.run import errors, paths, records

MANIFEST = 'sweep.json'
LAUNCH_DIR = 'launch'

_ROOT = flags.DEFINE_string('root', None, 'Directory of the runs.')
_GRID = flags.DEFINE_string('grid', '', "Axes, 'key=a,b;k1+k2=a1+a2,b1+b2'.")
_MODE = flags.DEFINE_enum('mode', 'run', ['run', 'scripts'],
                          'Train here, or write launch scripts.')
config_flags.DEFINE_config_file('config', None, 'Base config file.',
                                lock_config=True)


def parse_grid(grid: str) -> list[list[dict[str, str]]]:
  """Axes as lists of ``{key: raw value}`` (one dict per point)."""
  axes = []
  for axis in filter(None, (a.strip() for a in grid.split(';'))):
    keys, sep, values = axis.partition('=')
    keys = keys.strip().split('+')
    if not sep or not values:
      raise errors.ConfigError(f'--grid axis {axis!r}: write key=v1,v2.')
    points = []
    for value in values.split(','):
      parts = value.strip().split('+')
      if len(parts) != len(keys):
        raise errors.ConfigError(
          f'--grid axis {axis!r}: {value!r} has {len(parts)} parts for '
          f'{len(keys)} keys {"+".join(keys)}.'
        )
      points.append(dict(zip(keys, parts)))
    axes.append(points)
  return axes


def _name(point: dict[str, str]) -> str:
  """A directory name for one axis point: its first key's value (a path
  value by its last component)."""
  key, value = next(iter(point.items()))
  value = os.path.basename(value.rstrip('/')) or value
  return f'{key.split(".")[-1]}={value}'.replace(os.sep, '_')


def expand(grid: str) -> list[tuple[str, dict[str, str]]]:
  """``[(relative workdir, {key: raw value})]``: the grid's product."""
  runs = []
  for combo in itertools.product(*parse_grid(grid)):
    overrides = {k: v for point in combo for k, v in point.items()}
    runs.append((os.path.join(*map(_name, combo)) if combo else 'run',
                 overrides))
  return runs


def _typed(config, key: str, raw: str):
  """``raw`` parsed as the type of ``config.<key>``."""
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise errors.ConfigError(f'--grid: config has no key {key!r}.')
  current = node[leaf]
  if isinstance(current, bool):
    return raw.lower() in ('1', 'true', 'yes')
  if isinstance(current, int):
    return int(raw)
  if isinstance(current, float):
    return float(raw)
  return raw


def apply(config, overrides: dict[str, str]):
  """A copy of ``config`` with the run's overrides."""
  config = config.copy_and_resolve_references()
  for key, raw in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = _typed(config, key, raw)
  return config


def launch_script(argv_config: str, workdir: str, overrides: dict,
                  extra_flags: list[str]) -> str:
  """A shell script that trains one run with ``mhkd_jax.main``."""
  args = [f'--config={argv_config}', f'--workdir={workdir}', *extra_flags]
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  lines = ['python -m mhkd_jax.main \\'] + [
    f'  {shlex.quote(a)} \\' for a in args
  ]
  lines[-1] = lines[-1][:-2]
  return '#!/bin/sh\n# One run of a sweep (mhkd_jax.tools.sweep).\nset -e\n' + (
    '\n'.join(lines) + '\n'
  )


def _config_flags(argv: list[str]) -> tuple[str, list[str]]:
  """The --config file argument and the --config.* overrides given."""
  config_arg, extra = None, []
  for arg in argv:
    if arg.startswith('--config='):
      config_arg = arg.split('=', 1)[1]
    elif arg.startswith('--config.'):
      extra.append(arg)
  return config_arg, extra


def _summary(config) -> dict:
  """What the results table needs of a run that has not started."""
  return {
    'method': config.method, 'model': config.model, 'seed': config.seed,
    'num_students': config.num_students,
    'teacher': {'model': config.teacher.model},
    'data': {'name': config.data.name},
  }


def run_sweep(config, root: str, grid: str, mode: str,
              argv: list[str] | None = None) -> list[dict]:
  """Runs (or writes the scripts of) every run of the grid; returns the
  manifest's entries."""
  root = paths.absolute(root)  # launch scripts name absolute workdirs
  runs = expand(grid)
  configs = [apply(config, o) for _, o in runs]  # every value checked first
  paths.makedirs(root)
  entries = [{'workdir': rel, 'overrides': o, 'config': _summary(c)}
             for (rel, o), c in zip(runs, configs)]
  records.write_json(paths.join(root, MANIFEST),
                         {'grid': grid, 'runs': entries})
  config_arg, extra = _config_flags(argv or [])
  for (rel, overrides), run_config in zip(runs, configs):
    workdir = paths.join(root, rel)
    if mode == 'scripts':
      path = paths.join(root, LAUNCH_DIR, rel.replace(os.sep, '__') + '.sh')
      script = launch_script(config_arg, workdir, overrides, extra)
      paths.makedirs(paths.join(root, LAUNCH_DIR))
      paths.write_atomic(path, lambda f, script=script: f.write(script))
      if not paths.is_remote(path):
        os.chmod(path, 0o755)
      continue
    if paths.exists(paths.join(workdir, records.RESULTS)):
      logging.info('%s: finished, skipped.', rel)
      continue
    from mhkd_jax import train  # noqa: PLC0415  (imports jax)

    logging.info('%s: %s', rel, overrides)
    result = train.train_and_evaluate(run_config, workdir)
    if result.get('preempted'):
      break
  return entries


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _ROOT.value:
    raise app.UsageError('--root is required.')
  from mhkd_jax.run import cli  # noqa: PLC0415

  cli.run(run_sweep, flags.FLAGS.config, _ROOT.value, _GRID.value,
          _MODE.value, sys.argv[1:])


if __name__ == '__main__':
  app.run(main)
