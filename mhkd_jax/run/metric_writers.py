"""Where a run's metrics go: the log, and TensorBoard event files.

TensorBoard reads event files: records of ``Event`` protocol buffers. The
``tensorboard`` package has the protocol buffers and the record format in
pure Python, so neither TensorFlow nor clu is needed here: an accelerator
image with jax and tensorboard logs every metric. Scalars are written as
``simple_value`` summaries, which every TensorBoard reader (the
dashboards, ``EventAccumulator``) shows as scalars.

Without the ``tensorboard`` package the metrics still reach the log,
and one line of the log says why there is no event file.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from absl import logging

from mhkd_jax.run import paths


class MetricWriter(Protocol):

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    ...

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    ...

  def flush(self) -> None:
    ...

  def close(self) -> None:
    ...


class LoggingWriter:
  """Every scalar to the INFO log, one line per write: ``[step] k=v, ...``."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = ', '.join(
      f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}'
      for k, v in sorted(scalars.items())
    )
    logging.info('[%d] %s', step, values)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters] %s', dict(hparams))

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


class SummaryWriter:
  """Scalars and hyperparameters into an event file in ``logdir``.

  Each write is one record, flushed at once (a write comes once per log
  interval, so this costs nothing), so TensorBoard shows a running run
  and a killed one keeps what it wrote. The file is opened here rather
  than by tensorboard's ``EventFileWriter``, which opens it through
  TensorFlow's file system whenever TensorFlow is installed: importing
  TensorFlow costs seconds, and a GPU build of it can claim accelerator
  memory.
  """

  def __init__(self, logdir: str):
    # Imported here: tensorboard is what this class needs, and a missing
    # one is the caller's to handle (``create_default_writer``).
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
    from tensorboard.summary.writer import record_writer  # noqa: PLC0415

    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    paths.makedirs(logdir)
    # The name TensorBoard looks for; host and pid keep runs that share a
    # logdir apart.
    self.path = paths.join(logdir, (
      f'events.out.tfevents.{int(time.time()):010d}.'
      f'{socket.gethostname()}.{os.getpid()}'
    ))
    self._records = record_writer.RecordWriter(paths.open_binary(self.path))
    self._add(event_pb2.Event(wall_time=time.time(),
                              file_version='brain.Event:2'))

  def _add(self, event) -> None:
    self._records.write(event.SerializeToString())
    self._records.flush()

  def _add_summary(self, step: int, summary) -> None:
    self._add(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                    summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    value = self._summary_pb2.Summary.Value
    self._add_summary(step, self._summary_pb2.Summary(value=[
      value(tag=k, simple_value=float(np.asarray(v)))
      for k, v in sorted(scalars.items())
    ]))

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    # TensorBoard's HParams dashboard reads this summary (pure Python too).
    from tensorboard.plugins.hparams import summary_v2  # noqa: PLC0415

    self._add_summary(0, summary_v2.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


class MultiWriter:
  """Writes to each writer in turn."""

  def __init__(self, writers: Sequence[MetricWriter]):
    self.writers = list(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    for w in self.writers:
      w.write_hparams(hparams)

  def flush(self) -> None:
    for w in self.writers:
      w.flush()

  def close(self) -> None:
    for w in self.writers:
      w.close()


def create_default_writer(logdir: str | None, *,
                          just_logging: bool = False) -> MultiWriter:
  """The log, and an event file in ``logdir`` unless ``just_logging``
  (processes other than 0 of a multi-process run: one event file per
  run) or ``logdir`` is None.

  Without the ``tensorboard`` package the metrics go to the log only, and
  the log says so once.
  """
  writers: list[MetricWriter] = [LoggingWriter()]
  if just_logging or logdir is None:
    return MultiWriter(writers)
  try:
    writers.append(SummaryWriter(logdir))
  except ImportError as e:
    logging.warning(
      'No TensorBoard event file in %s (%s): the metrics go to the log '
      'only. `pip install tensorboard` writes them for TensorBoard too.',
      logdir, e,
    )
  return MultiWriter(writers)
