"""Preemption: every process stops at the same step; a run's flag is its own."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

from mhkd_jax.run import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of a 2-process job: steps at its own speed (process 1 is
# twice as slow) until the watcher says stop, then prints that step.
_WORKER = textwrap.dedent('''
  import sys, time
  import jax
  port, pid = sys.argv[1], int(sys.argv[2])
  jax.distributed.initialize(f'localhost:{port}', 2, pid)
  from mhkd_jax.run import preemption
  with preemption.PreemptionWatcher() as watcher:
    for step in range(1, 3000):
      time.sleep(0.01 * (1 + pid))
      if step == 30:
        print('running', flush=True)
      if watcher.should_stop(step):
        print('stopped at', step, flush=True)
        break
  jax.distributed.shutdown()
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_sigterm_sets_only_this_runs_flag_and_restores_the_handler():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.should_stop(2)
  assert signal.getsignal(signal.SIGTERM) is previous
  # A later run in the same process starts unstopped.
  with preemption.PreemptionWatcher() as watcher:
    assert not watcher.should_stop(3)


def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step():
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             PYTHONPATH=REPO)
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _WORKER, str(port), str(i)], cwd=REPO, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    for i in range(2)
  ]
  try:
    # Wait until the slower process is stepping, then preempt it alone.
    assert procs[1].stdout.readline().strip() == 'running'
    procs[1].send_signal(signal.SIGTERM)
    outputs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-2000:]
  stops = [out.strip().splitlines()[-1] for out, _ in outputs]
  assert stops[0].startswith('stopped at '), outputs[0]
  # The same step on both, though process 0 had run twice as many steps
  # by the time the signal came.
  assert stops[0] == stops[1], stops
