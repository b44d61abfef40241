"""What a person watching a run sees: one progress line, one line per eval.

On a terminal the line updates in place (tqdm: step, epoch, loss, steps/s,
ETA); when stderr is not a terminal (a log file, CI) it is printed as a
plain line at most every ``plain_interval_s`` seconds. Evaluations print
one line each. Only process 0 shows anything. Everything else (library
INFO logs, every metric) goes to TensorBoard and the run's log file.

``configure`` adjusts this per program: the demo, which trains five runs
in a row, keeps each run's bar transient and prints its own line per run.
"""

from __future__ import annotations

import sys
import time

import jax
import tqdm

_SETTINGS = {
  # Seconds between plain progress lines off a terminal (None: none).
  'plain_interval_s': 30.0,
  # Print a line per evaluation.
  'evals': True,
  # Keep the finished bar on screen.
  'leave': True,
}


def configure(**settings) -> None:
  """Changes ``plain_interval_s``, ``evals`` or ``leave`` (see above)."""
  unknown = set(settings) - set(_SETTINGS)
  if unknown:
    raise TypeError(f'Unknown progress settings: {sorted(unknown)}.')
  _SETTINGS.update(settings)


def _format_eta(seconds: float) -> str:
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f'{hours}:{minutes:02d}:{secs:02d}'
  return f'{minutes}:{secs:02d}'


class Progress:
  """The progress of one training run (a phase)."""

  def __init__(self, description: str, *, total: int, initial: int,
               steps_per_epoch: int, stream=None):
    self._stream = stream or sys.stderr
    self._shown = jax.process_index() == 0
    self._tty = self._shown and self._stream.isatty()
    self._description, self._total = description, total
    self._steps_per_epoch = steps_per_epoch
    self._start, self._initial = time.monotonic(), initial
    self._last_line = self._start
    self._bar = None
    if self._tty:
      self._bar = tqdm.tqdm(
        total=total, initial=initial, desc=description, unit='step',
        file=self._stream, dynamic_ncols=True, leave=_SETTINGS['leave'],
      )

  def update(self, step: int, loss: float | None = None) -> None:
    """After ``step`` steps (1-based), with the latest mean loss if any."""
    epoch = -(-step // self._steps_per_epoch)
    epochs = -(-self._total // self._steps_per_epoch)
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      postfix = {'epoch': f'{epoch}/{epochs}'}
      if loss is not None:
        postfix['loss'] = f'{loss:.4f}'
      self._bar.set_postfix(postfix, refresh=False)
      return
    interval = _SETTINGS['plain_interval_s']
    now = time.monotonic()
    if not self._shown or interval is None or (
      now - self._last_line < interval and step != self._total
    ):
      return
    self._last_line = now
    rate = (step - self._initial) / max(now - self._start, 1e-9)
    eta = (self._total - step) / rate if rate > 0 else 0.0
    loss_text = '' if loss is None else f', loss {loss:.4f}'
    self._print(
      f'{self._description}: step {step}/{self._total} (epoch '
      f'{epoch}/{epochs}{loss_text}), {rate:.2f} steps/s, ETA '
      f'{_format_eta(eta)}'
    )

  def note(self, line: str) -> None:
    """A line of its own (an evaluation), above a terminal's bar."""
    if self._shown and _SETTINGS['evals']:
      self._print(f'{self._description}: {line}')

  def _print(self, line: str) -> None:
    if self._bar is not None:
      self._bar.write(line, file=self._stream)
    else:
      print(line, file=self._stream, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def eval_summary(epoch: int, metrics: dict[str, float]) -> str:
  """'epoch 5: acc 88.1%, teacher_acc 95.8%, agree_top1 95.7%, ...'."""
  parts = [
    f'{k[len("eval/"):]} {100 * v:.1f}%' for k, v in metrics.items()
    if k != 'eval/loss'
  ]
  if 'eval/loss' in metrics:
    parts.append(f'loss {metrics["eval/loss"]:.4f}')
  return f'epoch {epoch}: ' + ', '.join(parts)
