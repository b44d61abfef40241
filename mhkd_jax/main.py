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

from mhkd_jax.run import cli, paths

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory.')
config_flags.DEFINE_config_file(
  'config', None, 'An ml_collections config file.', lock_config=True
)
flags.mark_flags_as_required(['config', 'workdir'])

LOG_FILE = 'log.txt'


def _initialize_distributed(jax) -> None:
  """Joins a multi-process job when the environment asks for one.

  On a Cloud TPU slice and under SLURM, ``jax.distributed.initialize()``
  finds the coordinator, the number of processes and this process's index
  by itself (``MHKD_MULTIHOST=1`` asks for it). Elsewhere (several
  processes on one machine, a hand-made cluster) they come from
  ``JAX_COORDINATOR_ADDRESS`` (read by JAX), ``JAX_NUM_PROCESSES`` and
  ``JAX_PROCESS_ID``, the names JAX gives the arguments.
  """
  env = os.environ
  if not (env.get('JAX_COORDINATOR_ADDRESS') or env.get('MHKD_MULTIHOST')):
    return
  kwargs = {}
  if env.get('JAX_NUM_PROCESSES'):
    kwargs['num_processes'] = int(env['JAX_NUM_PROCESSES'])
  if env.get('JAX_PROCESS_ID'):
    kwargs['process_id'] = int(env['JAX_PROCESS_ID'])
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  cli.quiet_logs()
  import jax  # noqa: PLC0415  (after flags: XLA_FLAGS may be set by users)

  _initialize_distributed(jax)
  from mhkd_jax import train  # noqa: PLC0415

  config, workdir = flags.FLAGS.config, _WORKDIR.value
  # train_and_evaluate checks the config before it creates the workdir; the
  # log file waits for the workdir, so a config that cannot run leaves none.
  cli.log_to_file(paths.join(paths.absolute(workdir), LOG_FILE))
  logging.info(
    'JAX process %d/%d, %d local / %d global devices (%s).',
    jax.process_index(), jax.process_count(), jax.local_device_count(),
    jax.device_count(), jax.devices()[0].platform,
  )
  cli.run(train.train_and_evaluate, config, workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
