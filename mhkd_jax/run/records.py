"""What a run keeps in its workdir besides checkpoints, written so that a
crash never leaves half a file.

* ``config.json``: the config the run started with. A re-run in the same
  workdir resumes that run, so a config that changes what the state is or
  means (model, method, heads, data, optimiser, seed...) is refused, naming
  each differing key with both values. Changes that only say how long to
  run, how often to log, evaluate or save, or where things are, are
  allowed and appended to ``config_changes.jsonl``.
* ``eval_history.json``, ``results.json``: written whole to a temporary
  file and renamed over the old one (an atomic replace on POSIX file
  systems), like ``config.json``.
"""

from __future__ import annotations

import datetime
import json

from mhkd_jax import configs
from mhkd_jax.run import errors, paths

CONFIG = 'config.json'
CONFIG_CHANGES = 'config_changes.jsonl'
HISTORY = 'eval_history.json'
RESULTS = 'results.json'

# Keys a resumed run may change: how long to train, how often to log,
# evaluate and save, how to batch evaluation, how many devices, and where
# the teacher and the data are. Anything else changes the experiment.
RESUMABLE_CHANGES = frozenset({
  'num_epochs', 'log_every_steps', 'eval_every_epochs', 'eval_batch_size',
  'checkpoint.every_steps', 'checkpoint.every_minutes',
  'checkpoint.max_to_keep', 'num_devices',
  'teacher.init', 'data.data_dir', 'students_loop',
  'teacher.fold_batchnorm', 'data.jpeg_draft_eval',
})

# Keys added after older runs recorded their config, with the value those
# runs had: a run recorded without them resumes, one with another value is
# refused (a different number of students is a different state).
ADDED_KEYS = {
  'num_students': 1,
  'students_share_data': True,
  'students_loop': 'unroll',
  'teacher.fold_batchnorm': False,
  'optimizer.name': 'sgd',
  'optimizer.dot_delta': 0.075,
  'kd.logit_standardize': False,
  'dkd.logit_standardize': False,
  'mhkd.logit_standardize': False,
  # CRD drew its negatives with replacement before 2026-12-03: such a run
  # resumes with --config.crd.negatives_with_replacement=True.
  'crd.negatives_with_replacement': True,
  'crd_kd.negatives_with_replacement': True,
  'data.jpeg_draft_eval': False,
  # Runs before 2026-12-03 saved by steps only.
  'checkpoint.every_minutes': 0.0,
}


def _is_writer() -> bool:
  """Process 0 writes the run's files (jax imported only when needed)."""
  import jax  # noqa: PLC0415

  return jax.process_index() == 0


def write_json(path: str, obj) -> None:
  """Writes ``obj`` as JSON to ``path`` atomically (temporary + rename)."""
  paths.write_atomic(path, lambda f: json.dump(obj, f, indent=2))


def read_json(path: str):
  """The JSON in ``path``; a damaged file is a ``WorkdirError`` naming it."""
  try:
    return json.loads(paths.read_text(path))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.WorkdirError(
      f'{path} is not valid JSON ({e}). It was not written by this '
      'version, or was damaged; move it away and re-run.'
    ) from None


def config_as_json(config) -> dict:
  """The config as plain JSON data (tuples become lists), without the
  sections of methods the run does not use: those come and go with the
  methods a version of the package has, and say nothing about the run."""
  from mhkd_jax import distill  # noqa: PLC0415  (methods import jax)

  d = json.loads(config.to_json_best_effort())
  used = set(distill.create_method(config).config_sections())
  for section in set(distill.method_config_sections()) - used:
    d.pop(section, None)
  return d


def config_changes(before: dict, now: dict) -> dict[str, list]:
  """``{dotted key: [before, now]}`` for every key that differs, leaving
  out sections ``before`` holds for methods ``now`` does not use (an older
  version recorded every method's section)."""
  before = configs.flatten({k: v for k, v in before.items()
                  if k in now or not isinstance(v, dict)})
  now = configs.flatten(now)
  before = {**{k: v for k, v in ADDED_KEYS.items() if k in now}, **before}
  return {
    key: [before.get(key), now.get(key)]
    for key in sorted(set(before) | set(now))
    if before.get(key) != now.get(key)
  }


def recorded_config(workdir: str) -> dict | None:
  """The ``config.json`` of the run in ``workdir``, or None if none."""
  path = paths.join(workdir, CONFIG)
  return read_json(path) if paths.exists(path) else None


def check_config(workdir: str, config) -> dict[str, list]:
  """Compares ``config`` with the run already in ``workdir``, if any.

  Returns:
    The allowed changes, ``{key: [before, now]}`` (empty for a new run).

  Raises:
    WorkdirError: the config differs in a key that changes the experiment.
  """
  path = paths.join(workdir, CONFIG)
  if not paths.exists(path):
    return {}
  changes = config_changes(read_json(path), config_as_json(config))
  refused = {k: v for k, v in changes.items() if k not in RESUMABLE_CHANGES}
  if refused:
    lines = [f'config.{k}: {old!r} there, {new!r} now'
             for k, (old, new) in refused.items()]
    raise errors.WorkdirError(
      f'{workdir} holds a run of another configuration, and resuming it '
      'would mix two experiments:\n  ' + '\n  '.join(lines[:10])
      + (f'\n  (+{len(lines) - 10} more)' if len(lines) > 10 else '')
      + '\nUse a fresh --workdir, or the same values to resume that run.'
    )
  return changes


def record_config(workdir: str, config, changes: dict, step: int) -> None:
  """Writes ``config.json`` for a new run; logs allowed changes."""
  if not _is_writer():
    return
  path = paths.join(workdir, CONFIG)
  if not paths.exists(path):
    write_json(path, config_as_json(config))
  if changes:
    record = {
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec='seconds'),
      'resumed_at_step': step,
      'changes': changes,
    }
    paths.append_line(paths.join(workdir, CONFIG_CHANGES), json.dumps(record))


def read_history(workdir: str, start_step: int) -> list[dict]:
  """Eval history up to ``start_step`` (kept across restarts)."""
  path = paths.join(workdir, HISTORY)
  if not paths.exists(path):
    return []
  return [h for h in read_json(path) if h['step'] <= start_step]


def write_history(workdir: str, history: list[dict]) -> None:
  if _is_writer():
    write_json(paths.join(workdir, HISTORY), history)


def write_results(workdir: str, results: dict) -> None:
  if _is_writer():
    write_json(paths.join(workdir, RESULTS), results)
