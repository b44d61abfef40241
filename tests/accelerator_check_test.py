"""experiments/accelerator_check.py: its helpers, and its --smoke run."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `experiments` is not an installed package.
  sys.path.insert(0, str(_ROOT))

from experiments import accelerator_check as ac  # noqa: E402
from tests import refused_imports  # noqa: E402


def test_steady_rate_is_the_median_window_and_drops_the_stalls():
  # 10 ms steps; a 1 s compile before the first and an eval stall of
  # 0.5 s in the middle: the median window of 4 steps is 100 steps/s.
  times, t = [], 0.0
  for i in range(41):
    t += 1.0 if i == 0 else (0.51 if i == 22 else 0.01)
    times.append(t)
  assert ac.steady_steps_per_s(times, 4) == pytest.approx(100)
  assert ac.steady_steps_per_s(times[:3], 4) is None


def test_compile_log_names_what_compiles_again_after_the_first_step():
  import jax
  import numpy as np

  def ones(n):  # numpy: no jax op of its own to compile
    return np.ones(n, np.float32)

  log = ac._CompileLog()
  with log.capture():
    jax.jit(lambda x: x * 2)(ones(3))  # setup: before the first step
    log.first_step_done = True

    @jax.jit
    def f(x):
      return x * 3

    f(ones(5))
    f(ones(6))  # new shape: compiled again
    f(ones(6))  # cached: not compiled
  assert log.before['jit(<lambda>)'] == 1
  assert log.after['jit(f)'] == 2
  again = log.recompiled_after_first_step()
  assert again == {'jit(f)': {'count': 2, 'argument_shapes': 2}}
  assert log.signatures['jit(f)'] == ['(ShapedArray(float32[5]),)',
                                      '(ShapedArray(float32[6]),)']
  jax.jit(lambda x: x - 1)(ones(2))  # after capture: not counted
  assert sum(log.after.values()) == 2


def _meta(pid, tid, process, thread):
  return [
    {'ph': 'M', 'name': 'process_name', 'pid': pid,
     'args': {'name': process}},
    {'ph': 'M', 'name': 'thread_name', 'pid': pid, 'tid': tid,
     'args': {'name': thread}},
  ]


def test_trace_summary_counts_kernels_and_the_busy_union():
  events = _meta(1, 7, '/device:GPU:0', 'Stream #7(Compute)')
  events += _meta(1, 8, '/device:GPU:0', 'XLA Ops')  # derived line
  events += _meta(2, 1, '/host:CPU', 'python')
  kernel = {'ph': 'X', 'pid': 1, 'tid': 7}
  events += [
    {**kernel, 'name': 'k1', 'ts': 0, 'dur': 10},
    {**kernel, 'name': 'k2', 'ts': 5, 'dur': 10},  # overlaps k1: 0..15
    {**kernel, 'name': 'k3', 'ts': 30, 'dur': 2},  # 30..32, < 5 us
    {**kernel, 'name': 'k4', 'ts': 36, 'dur': 4},  # 36..40, < 5 us
    # Not kernels: the derived line and the host.
    {'ph': 'X', 'pid': 1, 'tid': 8, 'name': 'fusion', 'ts': 0, 'dur': 40},
    {'ph': 'X', 'pid': 2, 'tid': 1, 'name': 'PjitFunction', 'ts': 0,
     'dur': 99},
  ]
  s = ac.summarize_trace(events, steps=2)
  assert s['device_timeline'] and s['kernel_lines'] == ['Stream #7(Compute)']
  assert s['kernels_per_step'] == 2 and s['kernels_under_5us_per_step'] == 1
  # Busy 15 + 2 + 4 = 21 us of the 40 us from the first start to the end.
  assert s['busy_fraction'] == pytest.approx(21 / 40)
  assert s['span_us_per_step'] == 20 and s['kernel_us_per_step'] == 13


def test_trace_summary_on_cpu_says_there_is_no_device_timeline():
  events = _meta(1, 2, '/host:CPU', 'tf_XLAPjRtCpuClient/1')
  events += [{'ph': 'X', 'pid': 1, 'tid': 2, 'name': n, 'ts': 0, 'dur': 1}
             for n in ('ynn_fusion', 'ynn_fusion', 'ThreadpoolListener::X')]
  s = ac.summarize_trace(events, steps=1)
  assert not s['device_timeline']
  assert s['host_xla_op_events_per_step'] == 2


def test_deadline_and_guard_record_skips_and_failures(tmp_path):
  now = [0.0]
  deadline = ac.Deadline(1.0, clock=lambda: now[0])
  rec = ac.Recorder(str(tmp_path), deadline)
  with rec.guard('real_loop', 'a'):
    raise ImportError('no clu', name='clu')
  with rec.guard('profile', 'b'):
    raise ValueError('bad trace')
  assert not deadline.passed()
  now[0] = 61.0
  assert deadline.passed() and '61 s after the start' in deadline.reason()
  lines = [json.loads(x) for x in open(tmp_path / ac.JSONL)]
  assert [(r['part'], r['status']) for r in lines] == [
    ('real_loop', 'skipped'), ('profile', 'failed')]
  assert 'clu' in lines[0]['reason'] and 'bad trace' in lines[1]['reason']


def _check_outputs(out):
  records = [json.loads(x) for x in open(out / ac.JSONL)]
  by_part = {p: [r for r in records if r['part'] == p] for p in ac.PARTS}
  for part, rows in by_part.items():
    assert rows, f'no record of part {part}'
    for r in rows:
      assert r['status'] in ('measured', 'skipped'), r
      if r['status'] == 'skipped':
        assert r['reason'], r
  markdown = (out / ac.MARKDOWN).read_text()
  for part in ac.PARTS:
    assert f'## {part}\n' in markdown
  assert '| failed |' not in markdown
  return by_part


def _assert_every_part_measured(by_part):
  # On this CPU every part measures something (the profile without a
  # device timeline); nothing is skipped for want of a package.
  for part, rows in by_part.items():
    assert any(r['status'] == 'measured' for r in rows), part
  parity = [r for r in by_part['step_parity'] if r['status'] == 'measured']
  assert parity and all(r['within_tolerance'] for r in parity)
  bench = {r['name'] for r in by_part['step_benchmark']}
  for case in ('kd', 'mhkd/light', 'mhkd/dih'):
    for dtype in ('bfloat16', 'float32'):
      for side in ('jax', 'jax-teacher-folded', 'torch'):
        assert f'{case}/{dtype}/{side}' in bench
  loops = {r['loop'] for r in by_part['students']}
  assert loops == {'unroll', 'vmap'}
  loop = by_part['real_loop'][0]
  assert loop['status'] == 'measured', loop
  assert loop['train_steps'] == 8 and loop['steady_steps_per_s'] > 0
  # Whether the loop recompiles is the loop's business; here, that the
  # check sees its compiles: the eval step's first one follows step 1.
  assert 'jit(eval_step)' in loop['compiles_after_first_step']
  assert set(loop['recompiled_after_first_step']) <= set(
    loop['compiles_after_first_step'])
  # TensorFlow, TFDS, clu and grain: none imported, installed or not.
  (imported,) = [r for r in by_part['environment']
                 if r['name'] == 'imported_heavy_modules']
  assert imported['modules'] == []


@pytest.mark.slow
def test_smoke_run_writes_every_part(tmp_path):
  out = tmp_path / 'check'
  subprocess.run(
    [sys.executable, '-m', 'experiments.accelerator_check', '--smoke',
     f'--out={out}'],
    cwd=_ROOT, check=True, timeout=900,
    env={**os.environ, 'PYTHONPATH': str(_ROOT)},
  )
  _assert_every_part_measured(_check_outputs(out))


@pytest.mark.slow
def test_smoke_run_without_tensorflow_tfds_clu_grain(tmp_path):
  """As on an accelerator image without them: every part runs, the real
  loop included, as in the smoke run above."""
  assert refused_imports.HEAVY_MODULES == ac.HEAVY_MODULES
  env, report = refused_imports.environment(tmp_path)
  out = tmp_path / 'check'
  subprocess.run(
    [sys.executable, '-m', 'experiments.accelerator_check', '--smoke',
     f'--out={out}'],
    cwd=_ROOT, check=True, timeout=900, env=env,
  )
  _assert_every_part_measured(_check_outputs(out))
  assert refused_imports.read_report(report)['imported'] == []
