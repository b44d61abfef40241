"""What the loop runs every so many steps: callbacks and the steps/s report.

The loop calls each action after every step with the step just finished
(1-based); an action decides from the step, and from the time since it
last fired, whether to fire. Only what the loop uses is here: a callback
with an interval (log the train metrics, evaluate, checkpoint) and the
steps/s report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from absl import logging


class PeriodicAction:
  """Fires on multiples of ``every_steps``, on each step of ``on_steps``,
  and when ``every_secs`` have passed since it last fired (or since its
  first call)."""

  def __init__(self, *, every_steps: int | None = None,
               every_secs: float | None = None,
               on_steps: Iterable[int] = ()):
    self._every_steps = every_steps
    self._every_secs = every_secs
    self._on_steps = set(on_steps)
    # Where and when it last fired (at first: its first call).
    self._previous_step: int | None = None
    self._previous_time: float | None = None

  def _should_fire(self, step: int, t: float) -> bool:
    if self._every_steps and step % self._every_steps == 0:
      return True
    if (self._every_secs is not None
        and t - self._previous_time > self._every_secs):
      return True
    return step in self._on_steps

  def __call__(self, step: int, t: float | None = None, **kwargs) -> bool:
    """Fires if due; returns whether it did."""
    t = time.monotonic() if t is None else t
    if self._previous_step is None:
      self._previous_step, self._previous_time = step, t
    if not self._should_fire(step, t):
      return False
    self._fire(step, t, **kwargs)
    self._previous_step, self._previous_time = step, t
    return True

  def _fire(self, step: int, t: float, **kwargs) -> None:
    raise NotImplementedError


class PeriodicCallback(PeriodicAction):
  """Calls ``callback_fn(step=, t=, **kwargs)`` when due; the loop's
  keyword arguments (the train state) are passed through."""

  def __init__(self, *, callback_fn: Callable[..., Any],
               every_steps: int | None = None,
               every_secs: float | None = None,
               on_steps: Iterable[int] = ()):
    super().__init__(every_steps=every_steps, every_secs=every_secs,
                     on_steps=on_steps)
    self._callback_fn = callback_fn

  def _fire(self, step: int, t: float, **kwargs) -> None:
    self._callback_fn(step=step, t=t, **kwargs)


def _format_seconds(seconds: float) -> str:
  minutes, s = divmod(int(round(seconds)), 60)
  hours, m = divmod(minutes, 60)
  return f'{hours}h{m:02d}m' if hours else f'{m}m{s:02d}s'


class ReportProgress(PeriodicAction):
  """Every ``every_secs`` (and at the last step): steps/s since the last
  report, to the log (with the share done and the ETA) and as the
  ``steps_per_sec`` and ``uptime`` scalars.

  The rate is of steps dispatched, as the host sees them: with jax's
  asynchronous dispatch it runs ahead of the device by at most the queue
  the runtime allows, which over a minute is noise. The profiler, not
  this, is for precise step times.
  """

  def __init__(self, *, num_train_steps: int | None = None, writer=None,
               every_steps: int | None = None, every_secs: float = 60.0):
    on_steps = {num_train_steps} if num_train_steps else set()
    super().__init__(every_steps=every_steps, every_secs=every_secs,
                     on_steps=on_steps)
    self._num_train_steps = num_train_steps
    self._writer = writer
    self._t0 = time.monotonic()

  def _should_fire(self, step: int, t: float) -> bool:
    # No rate from a step to itself (the first call).
    return step != self._previous_step and super()._should_fire(step, t)

  def _fire(self, step: int, t: float, **kwargs) -> None:
    del kwargs
    rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    message = f'{rate:.1f} steps/s'
    if self._num_train_steps:
      eta = (self._num_train_steps - step) / rate
      message += (f', {100 * step / self._num_train_steps:.1f}% '
                  f'({step}/{self._num_train_steps}), '
                  f'ETA {_format_seconds(eta)}')
    logging.info('Progress: %s', message)
    if self._writer is not None:
      self._writer.write_scalars(step, {
        'steps_per_sec': rate, 'uptime': time.monotonic() - self._t0,
      })
