"""The progress line: in place on a terminal, plain lines elsewhere."""

import io

import pytest

from mhkd_jax.run import progress


class _Terminal(io.StringIO):
  def isatty(self):
    return True


@pytest.fixture
def settings():
  saved = dict(progress._SETTINGS)  # pylint: disable=protected-access
  yield progress.configure
  progress.configure(**saved)


def test_plain_lines_off_a_terminal(settings):
  settings(plain_interval_s=0.0)
  stream = io.StringIO()
  bar = progress.Progress('kd', total=8, initial=0, steps_per_epoch=4,
                          stream=stream)
  bar.update(1)
  bar.update(5, loss=2.25)
  bar.note(progress.eval_summary(2, {'eval/acc': 0.5, 'eval/loss': 1.5}))
  bar.close()
  lines = stream.getvalue().splitlines()
  assert lines[0].startswith('kd: step 1/8 (epoch 1/2), ')
  assert lines[1].startswith('kd: step 5/8 (epoch 2/2, loss 2.2500), ')
  assert 'steps/s, ETA ' in lines[1]
  assert lines[2] == 'kd: epoch 2: acc 50.0%, loss 1.5000'
  assert len(lines) == 3


def test_plain_lines_are_throttled_and_the_last_step_always_shows(settings):
  settings(plain_interval_s=3600.0)
  stream = io.StringIO()
  bar = progress.Progress('ce', total=8, initial=2, steps_per_epoch=4,
                          stream=stream)
  for step in range(3, 9):
    bar.update(step)
  assert stream.getvalue().splitlines() == [
    line for line in stream.getvalue().splitlines() if 'step 8/8' in line
  ]
  assert len(stream.getvalue().splitlines()) == 1


def test_a_terminal_gets_one_bar_updated_in_place(settings):
  settings(evals=False)
  stream = _Terminal()
  bar = progress.Progress('mhkd', total=8, initial=0, steps_per_epoch=4,
                          stream=stream)
  for step in range(1, 9):
    bar.update(step, loss=1.0)
  bar.note('epoch 2: acc 10.0%')  # evals off: not shown
  bar.close()
  out = stream.getvalue()
  assert '\r' in out and 'mhkd' in out and '8/8' in out
  assert 'epoch=2/2' in out and 'loss=1.0000' in out
  assert 'acc 10.0%' not in out


def test_unknown_setting_is_refused():
  with pytest.raises(TypeError, match='colour'):
    progress.configure(colour=True)
