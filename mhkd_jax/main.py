"""Command line entry point.

  python -m mhkd_jax.main --config=configs/X.py[:arg] --workdir=DIR \
      [--config.key=value ...]

Re-running the same command resumes from the last checkpoint in DIR. The
terminal shows a progress line and one line per evaluation; every log line
goes to DIR/log.txt (``--verbosity=0`` shows them here too). A bad config
or input stops with one message (``--verbosity=1`` adds the traceback).
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from mhkd_jax import cli

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
config_flags.DEFINE_config_file(
  'config', None, 'An ml_collections config file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])

LOG_FILE = 'log.txt'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  import jax  # noqa: PLC0415  (after flags: XLA_FLAGS may be set by users)

  if os.environ.get('JAX_COORDINATOR_ADDRESS') or os.environ.get(
    'MHKD_MULTIHOST'
  ):
    # Multi-host pod slices / GPU clusters: one process per host.
    jax.distributed.initialize()
  from mhkd_jax import train, validation  # noqa: PLC0415

  config, workdir = flags.FLAGS.config, _WORKDIR.value
  # A config that cannot run stops here, before the workdir is touched.
  cli.run(validation.validate, config)
  cli.log_to_file(os.path.join(workdir, LOG_FILE))
  logging.info(
    'JAX process %d/%d, %d local / %d global devices (%s).',
    jax.process_index(), jax.process_count(), jax.local_device_count(),
    jax.device_count(), jax.devices()[0].platform,
  )
  cli.run(train.train_and_evaluate, config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
