"""Command line entry point.

  python -m mhkd_jax.main --config=configs/X.py[:arg] --workdir=DIR \
      [--config.key=value ...]

Re-running the same command resumes from the last checkpoint in DIR.
"""

import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
config_flags.DEFINE_config_file(
  'config', None, 'An ml_collections config file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietOrbax(std_logging.Filter):
  """Drops orbax's per-save INFO lines; its warnings and errors still show."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or (
      f'{os.sep}orbax{os.sep}' not in record.pathname
    )


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_QuietOrbax())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # TensorFlow only reads data: keep it off the accelerators JAX uses.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  quiet_library_logs()
  import jax  # noqa: PLC0415  (after flags: XLA_FLAGS may be set by users)

  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get(
    'MHKD_MULTIHOST'
  ):
    # Multi-host pod slices / GPU clusters: one process per host.
    jax.distributed.initialize()
  from mhkd_jax import train  # noqa: PLC0415

  logging.info(
    'JAX process %d/%d, %d local / %d global devices (%s).',
    jax.process_index(), jax.process_count(), jax.local_device_count(),
    jax.device_count(), jax.devices()[0].platform,
  )
  train.train_and_evaluate(flags.FLAGS.config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
