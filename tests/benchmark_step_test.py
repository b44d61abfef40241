"""The step benchmark's arithmetic and timings (experiments/benchmark_step.py)
with fakes: no model is compiled here."""

import pathlib
import queue
import sys
import threading
import time

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # `experiments` is not an installed package.
  sys.path.insert(0, str(_ROOT))

from experiments import benchmark_step as bs  # noqa: E402


@pytest.mark.parametrize('kind, dtype, want', [
  ('NVIDIA H100 80GB HBM3', 'bfloat16', 989e12),
  ('NVIDIA H100 80GB HBM3', 'float32', 495e12),
  ('NVIDIA H100 PCIe', 'bfloat16', 756e12),
  ('NVIDIA H100 NVL', 'bfloat16', 835e12),
  ('NVIDIA H200', 'bfloat16', 989e12),
  ('NVIDIA A100-SXM4-80GB', 'bfloat16', 312e12),
  ('NVIDIA L4', 'float32', 60e12),
  ('NVIDIA L40S', 'bfloat16', None),  # not an L4
  ('TPU v4', 'bfloat16', 275e12),
  ('TPU v5 lite', 'bfloat16', 197e12),
  ('TPU v5', 'bfloat16', 459e12),
  ('TPU v6 lite', 'bfloat16', 918e12),
  ('TPU v5 lite', 'float32', None),  # TPUs publish no f32 peak
  ('cpu', 'float32', None),
])
def test_peak_flops_by_device_kind(kind, dtype, want):
  assert bs.peak_flops(kind, dtype) == want


def test_no_peak_on_cpu_whatever_the_kind():
  assert bs.device_peak('bfloat16', 'cpu', 'NVIDIA H100') is None
  assert bs.device_peak('bfloat16', 'gpu', 'NVIDIA H100') == 989e12


def test_flop_rate_and_mfu_with_a_fake_peak():
  table = (('fakechip', 4e14, 1e14),)
  peak = bs.peak_flops('FakeChip 9000', 'bfloat16', table)
  assert peak == 4e14
  # 2 TFLOP per step in 10 ms: 200 TFLOP/s, half of the fake peak.
  assert bs.flops_per_s(2e12, 0.01) == pytest.approx(2e14)
  assert bs.model_flops_utilization(2e12, 0.01, peak) == pytest.approx(0.5)
  f32 = bs.peak_flops('FakeChip 9000', 'float32', table)
  assert bs.model_flops_utilization(2e12, 0.01, f32) == pytest.approx(2.0)
  assert bs.model_flops_utilization(2e12, 0.01, None) is None
  assert bs.model_flops_utilization(None, 0.01, peak) is None
  assert bs.flops_per_s(None, 0.01) is None


class FakeDevice:
  """A device that runs each dispatched step for ``work`` seconds on its
  own thread, while a dispatch costs the host ``overhead`` seconds:
  what jax and CUDA do, in miniature."""

  def __init__(self, work, overhead):
    self.work, self.overhead = work, overhead
    self.jobs = queue.Queue()
    self.syncs = 0
    threading.Thread(target=self._run, daemon=True).start()

  def _run(self):
    while True:
      self.jobs.get()
      time.sleep(self.work)
      self.jobs.task_done()

  def dispatch(self):
    time.sleep(self.overhead)
    self.jobs.put(None)

  def sync(self):
    self.syncs += 1
    self.jobs.join()

  def step(self):
    start = time.perf_counter()
    self.dispatch()
    self.sync()
    return time.perf_counter() - start


def test_latency_waits_each_step_and_pipelined_overlaps_host_and_device():
  device = FakeDevice(work=0.02, overhead=0.02)
  latency = bs.time_latency(device.step, 5)
  assert len(latency) == 5 and device.syncs == 5
  # Host then device, one after the other: at least 40 ms a step.
  assert min(latency) >= 0.04
  device.syncs = 0
  pipelined = bs.time_pipelined(device.dispatch, device.sync, 10)
  assert device.syncs == 1  # waited for once, at the end
  # The host's dispatch hides the device's work: ~22 ms a step (10
  # dispatches of 20 ms, then the last step's 20 ms), far below 40.
  assert 0.02 <= pipelined < 0.75 * min(latency)


def test_alternate_and_pipelined_time_every_side():
  devices = {'a': FakeDevice(0.005, 0.0), 'b': FakeDevice(0.01, 0.0)}
  times = bs._alternate(devices, warmup=1, steps=3, block=2, budget=0)
  assert {k: len(v) for k, v in times.items()} == {'a': 3, 'b': 3}
  assert min(times['b']) >= 0.01
  per_step = bs._pipelined(devices, 4, rounds=2)
  assert set(per_step) == {'a', 'b'}
  assert per_step['a'] >= 0.005 and per_step['b'] >= 0.01
  assert bs._pipelined(devices, 0) == {}


def test_device_dependent_defaults_on_this_cpu():
  args = bs._parse_args([])
  bs.resolve_defaults(args)
  # The CPU keeps the figures `make bench` always printed: latency only.
  assert (args.steps, args.warmup, args.pipeline_steps) == (10, 2, 0)
  args = bs._parse_args(['--steps', '3', '--pipeline-steps', '5'])
  bs.resolve_defaults(args)
  assert (args.steps, args.warmup, args.pipeline_steps) == (3, 2, 5)
