"""Stopping on preemption at a step every process agrees on.

A scheduler preempts a job with SIGTERM, usually on one host first. If
each process acted on its own signal, one could enter the collective
checkpoint save while the others kept stepping, and the job would hang.

* With ``jax.distributed`` initialised (multi-host pods, GPU clusters),
  JAX's preemption sync manager catches SIGTERM itself, spreads the notice
  through the coordination service and picks the same step on every
  process: ``multihost_utils.reached_preemption_sync_point(step)``, called
  at every step, turns True there. No Python handler is installed (it
  would replace the one the sync manager relies on).
* In a single process, a SIGTERM handler sets this run's flag, and the run
  stops after the step in flight.

A ``PreemptionWatcher`` belongs to one run: its flag starts False and the
previous SIGTERM handler is restored when the run ends, so a later run in
the same process (the demo trains five) is not stopped by an old signal.
"""

from __future__ import annotations

import signal

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatcher:
  """``with PreemptionWatcher() as watcher: ... watcher.should_stop(step)``."""

  def __init__(self):
    self._requested = False
    self._previous_handler = None
    self._distributed = False

  def __enter__(self) -> PreemptionWatcher:
    self._requested = False
    self._distributed = jax.distributed.is_initialized()
    if not self._distributed:
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if not self._distributed:
      signal.signal(signal.SIGTERM, self._previous_handler)
    self._requested = False

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._requested = True
    logging.warning('SIGTERM: saving a checkpoint and stopping at this step.')

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after ``step`` (call at every step)."""
    if self._distributed:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._requested
