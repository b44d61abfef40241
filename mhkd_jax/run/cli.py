"""What the command-line programs share: clean errors and quiet logs.

* ``parse_flags``: the flags parser for ``app.run``. A config key that does
  not exist, a value of the wrong type, a config file that fails (an
  unknown run name) each print one short message (for a key: the closest
  existing keys) and exit with status 2, before anything runs.
* ``run``: calls the program's body; a ``UserError`` (data not prepared,
  a teacher that does not fit, a diverged run, ...) prints its message
  alone and exits with status 1. ``--verbosity=1`` shows the traceback.
* ``quiet_logs``: library INFO logs (orbax, TFDS, JAX's backend probing)
  go to a log file, not to the terminal, unless ``--verbosity`` is given;
  warnings and errors still show.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import importlib.util
import io
import logging as std_logging
import os
import re
import sys
import tempfile

from absl import flags, logging
from etils import epath

from mhkd_jax import configs
from mhkd_jax.run import errors, paths

_CONFIG_FLAG = '--config'


def _error_exit(message: str, status: int) -> None:
  print(f'Error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def _verbose(argv) -> bool:
  try:
    return flags.FLAGS['verbosity'].present and flags.FLAGS.verbosity >= 1
  except flags.UnparsedFlagAccessError:
    return any(a.startswith(('--verbosity=1', '--verbosity=2', '-v=1',
                             '-v=2')) for a in argv)


def _load_config(spec: str):
  """The ConfigDict of ``--config=path[:arg]`` (to name a bad key)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _has_key(config, dotted: str) -> bool:
  node = config
  for part in dotted.split('.'):
    if not hasattr(node, 'keys') or part not in node.keys():
      return False
    node = node[part]
  return True


def _config_problem(argv) -> str | None:
  """Why the ``--config`` flags in ``argv`` cannot be parsed, if they
  cannot: the config file's own error, or each unknown key with the
  closest existing ones."""
  spec = next((a.split('=', 1)[1] for a in argv
               if a.startswith(_CONFIG_FLAG + '=')), None)
  if spec is None:
    return None
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      config = _load_config(spec)
  except FileNotFoundError:
    return f'--config={spec}: no such config file.'
  except Exception as e:  # pylint: disable=broad-except
    return f'--config={spec}: {e}'
  keys = list(configs.flatten(config))
  problems = []
  for arg in argv:
    if not arg.startswith(_CONFIG_FLAG + '.'):
      continue
    key = arg[len(_CONFIG_FLAG) + 1:].split('=', 1)[0]
    if not _has_key(config, key):
      close = difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
      hint = (f' Did you mean {" or ".join(close)}?' if close else
              ' Every key, with its default: mhkd_jax/configs/default.py.')
      problems.append(f'{arg}: config has no key {key!r}.{hint}')
  return '\n'.join(problems) or None


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s flags parser, with config errors as short messages."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError,
          ValueError) as e:
    if _verbose(argv):
      raise
    problem = _config_problem(argv)
    if problem is None:
      problem = str(e).strip().splitlines()[0]
    _error_exit(problem + '\nPass --helpfull to see every flag.', 2)


class _NotFromOrbax(std_logging.Filter):
  """Drops orbax's records: the faults it logs (a damaged checkpoint's
  metadata, a failed write) are the ones the package handles and reports
  in its own words, naming the step and the fix."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return f'{os.sep}orbax{os.sep}' not in record.pathname


def quiet_logs() -> None:
  """Keeps INFO logs (ours and the libraries') and orbax's errors off the
  terminal; other warnings and errors still show. ``--verbosity`` (any
  value) keeps absl's usual behaviour instead. ``log_to_file`` keeps
  everything."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # TensorFlow (TFDS decodes images with it) prints a line about its oneDNN
  # kernels on CPUs that have them, whatever the log level. They never run
  # the model here (JAX does); off, TensorFlow is quiet.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if not flags.FLAGS['verbosity'].present:
    handler = logging.get_absl_handler()
    handler.setLevel(std_logging.WARNING)
    handler.addFilter(_NotFromOrbax())
  # TFDS's bars too, when a run imports it (most need no TFDS at all).
  from mhkd_jax.data import datasets  # noqa: PLC0415

  datasets.disable_tfds_progress_bar()


def log_to_file(path: str) -> None:
  """Appends every log line, INFO included, to ``path`` (process 0), once
  the directory of ``path`` exists.

  Lines logged before then are held in memory and written first: a run
  creates its workdir only after its config and inputs are checked, so a
  run that stops before (an impossible value, a missing teacher) leaves no
  workdir behind. A bucket object cannot be appended to, so for a
  ``gs://`` workdir the lines go to a local copy (seeded with the log
  already there), which is copied over the bucket's when the program ends.
  """
  import jax  # noqa: PLC0415  (after flags: XLA_FLAGS may be set)

  if jax.process_index() != 0:
    return
  local = path
  if paths.is_remote(path):
    local = os.path.join(tempfile.gettempdir(), 'mhkd_jax_logs',
                         re.sub(r'[^A-Za-z0-9._-]', '_', path))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    if paths.exists(path):
      epath.Path(path).copy(local, overwrite=True)
    atexit.register(_copy_log, local, path)
  handler = _FileHandlerAfterDirectory(local, str(epath.Path(path).parent))
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(std_logging.INFO)
  std_logging.getLogger().addHandler(handler)


class _FileHandlerAfterDirectory(std_logging.FileHandler):
  """A file handler that holds its records until ``directory`` exists."""

  _MAX_HELD = 100_000

  def __init__(self, filename: str, directory: str):
    super().__init__(filename, delay=True)
    self._directory = directory
    self._held: list[std_logging.LogRecord] | None = []

  def emit(self, record: std_logging.LogRecord) -> None:
    if self._held is not None:
      if not paths.exists(self._directory):
        if len(self._held) < self._MAX_HELD:
          self._held.append(record)
        return
      held, self._held = self._held, None
      for earlier in held:
        super().emit(earlier)
    super().emit(record)


def _copy_log(local: str, remote: str) -> None:
  try:
    epath.Path(local).copy(remote, overwrite=True)
  except Exception as e:  # pylint: disable=broad-except
    print(f'The log {local} could not be copied to {remote}: {e}',
          file=sys.stderr)


def run(body, *args) -> None:
  """Runs ``body(*args)``; a ``UserError`` is its message alone."""
  try:
    body(*args)
  except errors.UserError as e:
    if flags.FLAGS.verbosity >= 1:
      raise
    logging.info('Stopped: %s: %s', type(e).__name__, e)
    _error_exit(f'{e}\n(--verbosity=1 shows the traceback.)', 1)
