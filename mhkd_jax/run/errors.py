"""The project's own errors: each message says what was wrong and the fix.

Every error a user can cause or repair (a config value, a data set that is
not prepared, a teacher checkpoint that does not fit, a diverged run, a
damaged or foreign workdir, a full disk) is a ``UserError``. The command
line prints such an error's message alone; a traceback would only bury it
(``--verbosity=1`` shows it). Anything else is a bug and keeps its
traceback.
"""


class UserError(Exception):
  """An error whose message tells the user what to fix."""


class ConfigError(UserError, ValueError):
  """A config value is unknown, of the wrong kind or impossible."""


class WorkdirError(UserError):
  """The workdir holds another run, or checkpoints that cannot be used."""


class CheckpointSaveError(UserError, OSError):
  """Writing a checkpoint failed (a full disk, a lost mount); the last good
  checkpoint is still there."""
