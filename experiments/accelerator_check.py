"""One run that says whether the step is right and fast on this device.

  python -m experiments.accelerator_check --out=DIR [--smoke] [--deadline-min=9]

Meant for a machine with a GPU or TPU that is lent for minutes: it runs
the parts below in order of what they tell, writes each measurement as it
is made to ``DIR/accelerator_check.jsonl`` (one JSON object a line; a
killed run keeps what it measured) and at the end ``DIR/accelerator_check.md``
(a table a part). Every part is measured, or recorded as skipped with the
reason (past the deadline, a package missing) or as failed with the error.

Parts, in the order they run:

* ``environment``: versions, the device, its peak FLOP/s.
* ``step_parity``: ``tests/step_parity_test.py``'s cases (KD, MHKD with
  frozen and online teacher heads, the folded teacher) with the PyTorch
  step on this device too; max loss-term and parameter differences after
  three SGD steps, against the test's tolerances. TF32 is off in both.
* ``step_benchmark``: ``benchmark_step`` for KD, MHKD ``light`` and
  ``dih``, in bfloat16 then float32, each JAX step with the teacher's
  BatchNorms as they are and folded (``config.teacher.fold_batchnorm``),
  and PyTorch's step: latency and pipelined times, TFLOP/s, MFU, memory.
  The bfloat16 half runs first; the float32 half runs after the other
  parts, so a tight deadline cuts what matters least.
* ``students``: N = 4 students in one step, ``students_loop`` ``unroll``
  against ``vmap``, shared data (the teacher once per batch): each step's
  per-student cost relative to one student.
* ``real_loop``: ``train_and_evaluate`` itself for 2 epochs of MHKD
  ``dih`` in bfloat16 on ``synthetic_cifar100`` (no files, no TFDS): its
  steady steps/s against the pipelined benchmark of the same step, and
  the functions XLA compiled after the first step (none should be) and
  more than once.
* ``profile``: a ``jax.profiler`` trace of one step and of a few
  pipelined ones: kernels per step, how many run under 5 us, and the
  device's busy fraction. On a CPU there is no device timeline: the
  trace's host-side op events are counted and the busy fraction skipped.
  The traces are removed once summarised, unless ``--keep-traces`` (then
  in ``DIR/profile``, for TensorBoard or Perfetto).

``--smoke`` runs every part at CPU size (resnet8 -> resnet8, batch 8, a
few steps, two of the parity cases, jax's cheap compiles); tests/accelerator_check_test.py runs it
so that this script cannot rot. Its figures mean nothing.

The check imports jax, flax, optax, orbax, numpy, tensorboard, torch
(optional) and the project. What it imports beyond those is recorded at
the end of the environment part: TensorFlow, TFDS, clu and grain should
not be among them, and every part runs without them (a part that could
not import would be skipped, naming the module).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import gzip
import json
import logging
import os
import statistics
import sys
import shutil
import tempfile
import time
import traceback

from experiments import benchmark_step

PARTS = ('environment', 'step_parity', 'step_benchmark', 'students',
         'real_loop', 'profile')
# Modules that an accelerator image may lack; none should be imported.
HEAVY_MODULES = ('tensorflow', 'tensorflow_datasets', 'clu', 'grain')
JSONL = 'accelerator_check.jsonl'
MARKDOWN = 'accelerator_check.md'


def _parse_args(argv):
  p = argparse.ArgumentParser(
    prog='python -m experiments.accelerator_check', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--out', required=True, help='directory for the results')
  p.add_argument('--smoke', action='store_true',
                 help='every part at CPU size: tiny models, a few steps')
  p.add_argument(
    '--keep-traces', action='store_true',
    help='keep the profile part\'s traces in DIR/profile (TensorBoard or '
    'Perfetto reads them); by default they are summarised and removed',
  )
  p.add_argument(
    '--deadline-min', type=float, default=9.0,
    help='minutes after the start past which the remaining parts (and '
    'benchmark cases) are skipped, each recorded with the reason',
  )
  return p.parse_args(argv)


# --------------------------------------------------------------------------
# Sizes.


def sizes(smoke: bool) -> dict:
  """What each part runs: the real pair on an accelerator, a tiny one
  (and jax's cheap compiles) for --smoke."""
  if smoke:
    return dict(
      teacher='resnet8', student='resnet8', batch=8, num_classes=10,
      head_width=16, warmup=1, steps=2, pipeline_steps=1, block=2,
      # KD, and MHKD with online heads on a folded teacher: every path.
      parity_cases=('kd', 'mhkd_online_folded_teacher'),
      loop_train_examples=64, loop_eval_examples=32,
      loop_batch=16, loop_log_every=2, profile_steps=2,
    )
  return dict(
    teacher='resnet32x4', student='resnet8x4', batch=64, num_classes=100,
    head_width=None, warmup=10, steps=50, pipeline_steps=50, block=10,
    parity_cases=None, loop_train_examples=12_800, loop_eval_examples=2_000,
    loop_batch=64, loop_log_every=50, profile_steps=5,
  )


def bench_argv(size: dict, *extra: str) -> list[str]:
  """benchmark_step's command line for this size."""
  argv = [
    '--teacher', size['teacher'], '--student', size['student'],
    '--batch', str(size['batch']), '--num-classes', str(size['num_classes']),
    '--warmup', str(size['warmup']), '--steps', str(size['steps']),
    '--pipeline-steps', str(size['pipeline_steps']),
    '--block', str(size['block']),
    '--time-budget', str(size.get('time_budget', 0)),
  ]
  if size['head_width']:
    argv += ['--head-width', str(size['head_width'])]
  return argv + list(extra)


# --------------------------------------------------------------------------
# Records.


class Deadline:

  def __init__(self, minutes: float, clock=time.monotonic):
    self._clock = clock
    self.start = clock()
    self.minutes = minutes

  def elapsed(self) -> float:
    return self._clock() - self.start

  def passed(self) -> bool:
    return self.elapsed() > 60 * self.minutes

  def reason(self) -> str:
    return (f'past the --deadline-min={self.minutes:g} deadline '
            f'({self.elapsed():.0f} s after the start)')


class Recorder:
  """Appends each measurement to the JSON-lines file as it is made."""

  def __init__(self, out_dir: str, deadline: Deadline):
    os.makedirs(out_dir, exist_ok=True)
    self.out_dir, self.deadline = out_dir, deadline
    self.path = os.path.join(out_dir, JSONL)
    self.records: list[dict] = []
    open(self.path, 'w').close()

  def _write(self, record):
    record['elapsed_s'] = round(self.deadline.elapsed(), 2)
    self.records.append(record)
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, default=str) + '\n')
    status = record['status']
    what = f'{record["part"]}/{record["name"]}'
    detail = f': {record["reason"]}' if 'reason' in record else ''
    print(f'[accelerator_check {record["elapsed_s"]:7.1f} s] {what} '
          f'{status}{detail}', flush=True)

  def measured(self, part, name, **values):
    self._write({'part': part, 'name': name, 'status': 'measured', **values})

  def skipped(self, part, name, reason, **values):
    self._write({'part': part, 'name': name, 'status': 'skipped',
                 'reason': reason, **values})

  def failed(self, part, name, error: BaseException):
    tb = traceback.format_exception(type(error), error, error.__traceback__)
    self._write({'part': part, 'name': name, 'status': 'failed',
                 'reason': f'{type(error).__name__}: {error}',
                 'traceback': ''.join(tb[-6:])})

  def guard(self, part, name='-'):
    """Runs a block; a missing module becomes a skip, another error a
    failure, both recorded; the check goes on with the next part."""
    return _Guard(self, part, name)


class _Guard(contextlib.AbstractContextManager):

  def __init__(self, recorder, part, name):
    self.recorder, self.part, self.name = recorder, part, name

  def __exit__(self, exc_type, exc, tb):
    if exc is None:
      return False
    if isinstance(exc, ImportError):
      self.recorder.skipped(
        self.part, self.name,
        f'cannot import {exc.name or exc}: {exc} (this part needs it)',
      )
    elif isinstance(exc, Exception):
      self.recorder.failed(self.part, self.name, exc)
    else:
      return False  # KeyboardInterrupt, SystemExit: stop the check
    return True


# --------------------------------------------------------------------------
# Parts.


def part_environment(rec, size, threads, torch_version):
  env = benchmark_step.environment(threads, torch_version)
  for package in ('numpy', 'optax', 'orbax-checkpoint', 'ml_collections'):
    env[package] = benchmark_step._version(package)  # noqa: SLF001
  env['sizes'] = size
  rec.measured('environment', 'versions_and_device', **env)


def part_step_parity(rec, size, deadline):
  import torch

  from tests import step_parity_test as parity

  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  # Parity is of the arithmetic: float32 everywhere, no TF32 (JAX runs
  # these steps at 'highest' matmul precision).
  torch.backends.cudnn.allow_tf32 = False
  torch.backends.cuda.matmul.allow_tf32 = False
  for case in size['parity_cases'] or parity.CASES:
    if deadline.passed():
      rec.skipped('step_parity', case, deadline.reason())
      continue
    with rec.guard('step_parity', case):
      start = time.perf_counter()
      r = parity._run_case(case, torch_device=device)  # noqa: SLF001
      loss_diff = max(
        abs(float(jm[k]) - tm[k])
        for jm, tm in zip(r['j_metrics'], r['t_metrics']) for k in tm
      )
      param_diff = 0.0
      for role, t_module in r['torch_trained'].items():
        j_module = getattr(r['trained'], role)
        want = parity._flat(j_module, parity.nnx.Param)  # noqa: SLF001
        got = parity._torch_in_nnx_layout(  # noqa: SLF001
          t_module, j_module, parity.nnx.Param
        )
        param_diff = max(param_diff, max(
          parity._rel(got[k], want[k]) for k in want  # noqa: SLF001
        ))
      rec.measured(
        'step_parity', case, torch_device=device,
        max_loss_term_abs_diff=loss_diff,
        max_param_rel_diff=param_diff,
        loss_tol=parity.LOSS_TOL, param_rtol=parity.PARAM_RTOL,
        within_tolerance=bool(loss_diff <= parity.LOSS_TOL
                              and param_diff <= parity.PARAM_RTOL),
        seconds=time.perf_counter() - start,
      )


_BENCH_CASES = (('kd', None), ('mhkd', 'light'), ('mhkd', 'dih'))


def part_step_benchmark(rec, size, deadline, dtype, threads, use_torch):
  """One benchmark_step case per method: the JAX step unfolded and
  folded, and PyTorch's, alternating in one run."""
  for method, head in _BENCH_CASES:
    name = f'{method}{"/" + head if head else ""}/{dtype}'
    if deadline.passed():
      rec.skipped('step_benchmark', name, deadline.reason())
      continue
    with rec.guard('step_benchmark', name):
      args = benchmark_step._parse_args(bench_argv(  # noqa: SLF001
        size, '--method', method, '--head', head or 'light',
        '--dtype', dtype, '--no-fold-teacher', '--also-other-teacher-fold',
        '--torch' if use_torch else '--no-torch',
      ))
      results = benchmark_step.run_case(args, method, head, use_torch,
                                        threads)
      for r in results:
        rec.measured('step_benchmark', f'{name}/{r["framework"]}', **r)
      if not use_torch:
        rec.skipped('step_benchmark', f'{name}/torch',
                    'torch does not import here')


def part_students(rec, size, deadline):
  name = 'mhkd/dih/bfloat16/N=4'
  if deadline.passed():
    rec.skipped('students', name, deadline.reason())
    return
  with rec.guard('students', name):
    args = benchmark_step._parse_args(bench_argv(  # noqa: SLF001
      size, '--method', 'mhkd', '--head', 'dih', '--dtype', 'bfloat16',
      '--num-students', '4', '--students-data', 'shared',
      '--students-loop', 'unroll,vmap',
    ))
    for r in benchmark_step.run_students_case(args, 'mhkd', 'dih'):
      rec.measured('students', f'{name}/{r["loop"]}', **r)


class _CompileLog(logging.Handler):
  """Counts XLA compilations by function name, split at the end of the
  first train step: through jax.monitoring's compile-time event (a public
  hook), and jax's own "Compiling ... with global shapes" debug record
  for each one's argument shapes (which tell a function compiled again
  for new shapes from one compiled again for the same ones)."""

  _LOGGER = 'jax._src.interpreters.pxla'

  def __init__(self):
    super().__init__(logging.DEBUG)
    self.before, self.after = collections.Counter(), collections.Counter()
    self.signatures = collections.defaultdict(list)
    self.first_step_done = False

  def __call__(self, event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      name = str(kwargs.get('fun_name', '?'))
      (self.after if self.first_step_done else self.before)[name] += 1

  def emit(self, record):
    if str(record.msg).startswith('Compiling %s with global shapes'):
      name, avals = record.args[0], record.args[1]
      self.signatures[str(name)].append(str(avals)[:300])

  @contextlib.contextmanager
  def capture(self):
    import jax

    logger = logging.getLogger(self._LOGGER)
    saved = logger.level, logger.propagate
    # Debug records to this handler only, not to the terminal.
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(self)
    jax.monitoring.register_event_duration_secs_listener(self)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_duration_listener(self)
      logger.removeHandler(self)
      logger.setLevel(saved[0])
      logger.propagate = saved[1]

  def recompiled_after_first_step(self) -> dict:
    """name -> {'count', 'argument_shapes'} for each function compiled
    after the first train step that XLA compiled more than once in the
    run (setup's own repeats, such as initialisers, are not the loop's).
    'argument_shapes' counts the distinct ones: fewer than 'count' means
    compiled again for the same arguments or for new static ones (a
    broadcast's output shape, a power's exponent)."""
    counts = self.before + self.after
    return {
      name: {'count': counts[name],
             'argument_shapes': len(set(self.signatures.get(name, [])))}
      for name in self.after if counts[name] > 1
    }


class _TimedSteps:
  """Wraps steps.create_train_step so that the loop's train-step calls
  are time-stamped (they dispatch asynchronously; the loop's metric fetch
  every log interval keeps the timestamps within one interval of the
  device)."""

  def __init__(self, compile_log):
    self.times: list[float] = []
    self.compile_log = compile_log

  def wrap(self, create):
    def create_timed(*args, **kwargs):
      step = create(*args, **kwargs)

      def timed(*a, **k):
        out = step(*a, **k)
        self.times.append(time.perf_counter())
        self.compile_log.first_step_done = True
        return out

      return timed

    return create_timed


def steady_steps_per_s(times: list[float], window: int):
  """The median rate over consecutive windows of ``window`` steps after
  the first call (which includes the compile); eval and checkpoint
  windows are the outliers the median drops."""
  gaps = [b - a for a, b in zip(times, times[1:])]
  rates = [
    window / sum(gaps[i:i + window])
    for i in range(0, len(gaps) - window + 1, window)
    if sum(gaps[i:i + window]) > 0
  ]
  return statistics.median(rates) if rates else None


def real_loop_config(size, teacher_dir):
  from mhkd_jax.configs import default

  config = default.get_config()
  config.method = 'mhkd'
  config.model = size['student']
  config.teacher.model = size['teacher']
  config.teacher.init = teacher_dir
  config.mhkd.head = 'dih'
  config.mhkd.head_width = size['head_width']
  config.compute_dtype = 'bfloat16'
  config.data.name = 'synthetic_cifar100'
  config.data.num_train_examples = size['loop_train_examples']
  config.data.num_eval_examples = size['loop_eval_examples']
  config.batch_size = size['loop_batch']
  config.eval_batch_size = size['loop_batch']
  config.num_epochs = 2
  config.eval_every_epochs = 1
  config.log_every_steps = size['loop_log_every']
  config.num_devices = 1  # the benchmark's device count
  return config


def part_real_loop(rec, size, deadline, bench_records, cleanup):
  name = 'mhkd/dih/bfloat16/2_epochs'
  if deadline.passed():
    rec.skipped('real_loop', name, deadline.reason())
    return
  with rec.guard('real_loop', name):
    from flax import nnx

    from mhkd_jax import steps
    from mhkd_jax.data import synthetic
    from mhkd_jax.models import create_model, heads
    from mhkd_jax.run import checkpoints

    # The loop: on synthetic data it needs no TensorFlow, TFDS, clu or
    # grain (tests/imports_test.py); a part that still needed one would be
    # skipped by the guard, naming it.
    from mhkd_jax import train

    # Its checkpoints are not results: a temporary directory, removed.
    work = tempfile.mkdtemp(prefix='accelerator_check_loop_')
    cleanup.append(work)
    teacher_dir = os.path.join(work, 'teacher')

    model = create_model(size['teacher'], num_classes=synthetic.NUM_CLASSES,
                         rngs=nnx.Rngs(0))
    t_heads = heads.create_heads(
      'dih', model, None, num_classes=synthetic.NUM_CLASSES,
      input_shape=(1, *synthetic.IMAGE_SHAPE), width=size['head_width'],
      rngs=nnx.Rngs(1),
    )
    checkpoints.save_teacher(teacher_dir, model, t_heads,
                             model_name=size['teacher'],
                             num_classes=synthetic.NUM_CLASSES)
    config = real_loop_config(size, teacher_dir)
    compile_log = _CompileLog()
    timed = _TimedSteps(compile_log)
    original = steps.create_train_step
    steps.create_train_step = timed.wrap(original)
    start = time.perf_counter()
    try:
      with compile_log.capture():
        results = train.train_and_evaluate(config,
                                           os.path.join(work, 'run'))
    finally:
      steps.create_train_step = original
    seconds = time.perf_counter() - start
    steady = steady_steps_per_s(timed.times, config.log_every_steps)
    bench = next(
      (r for r in bench_records
       if r['name'] == 'mhkd/dih/bfloat16/jax' and r['status'] == 'measured'),
      None,
    )
    bench_rate = bench['steps_per_s'] if bench else None
    again = compile_log.recompiled_after_first_step()
    rec.measured(
      'real_loop', name, train_steps=len(timed.times), wall_s=seconds,
      steady_steps_per_s=steady,
      benchmark_pipelined_steps_per_s=bench_rate,
      loop_over_benchmark=(steady / bench_rate
                           if steady and bench_rate else None),
      final_train_loss=results.get('train', {}).get('loss'),
      final_eval_acc=results.get('final', {}).get('eval/acc'),
      compiles_before_first_step_end=dict(compile_log.before),
      compiles_after_first_step=dict(compile_log.after),
      recompiled_after_first_step={k: v['count'] for k, v in again.items()},
      recompiled_for_the_same_argument_shapes=sorted(
        k for k, v in again.items() if v['argument_shapes'] < v['count']
      ),
      recompiled_signatures={k: compile_log.signatures.get(k)
                             for k in again},
      no_recompiles_after_first_step=not again,
    )


def _trace_events(trace_dir):
  paths = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'),
                    recursive=True) or glob.glob(
    os.path.join(trace_dir, '**', '*.json.gz'), recursive=True)
  if not paths:
    return None
  with gzip.open(sorted(paths)[-1]) as f:
    trace = json.load(f)
  return trace['traceEvents'] if isinstance(trace, dict) else trace


def summarize_trace(events, steps: int) -> dict:
  """Kernels per step and busy fraction from a Chrome-format trace.

  Device kernels are the complete ('X') events of processes named
  '/device:...' on their stream lines ('Stream ...' on GPUs; 'XLA Ops' on
  TPUs; else every line of the device). Busy fraction: the union of the
  kernels' intervals over the span from the first kernel's start to the
  last one's end.
  """
  procs = {e['pid']: e.get('args', {}).get('name', '')
           for e in events if e.get('ph') == 'M'
           and e.get('name') == 'process_name'}
  threads = {(e['pid'], e.get('tid')): e.get('args', {}).get('name', '')
             for e in events if e.get('ph') == 'M'
             and e.get('name') == 'thread_name'}
  device_pids = {p for p, n in procs.items() if n.startswith('/device:')}
  complete = [e for e in events if e.get('ph') == 'X' and 'dur' in e]
  if not device_pids:
    # CPU: host threads only. XLA's own client threads carry the ops that
    # report themselves (library calls, not every fused loop).
    xla = [e for e in complete
           if threads.get((e['pid'], e.get('tid')), '').startswith('tf_XLA')
           and not e['name'].startswith(('ThreadpoolListener',
                                         'ThunkExecutor', 'end: '))]
    return {
      'device_timeline': False,
      'host_xla_op_events_per_step': len(xla) / steps,
      'host_xla_op_names': sorted(collections.Counter(
        e['name'] for e in xla).most_common(8)),
    }
  lines = {k: n for k, n in threads.items() if k[0] in device_pids}
  kernel_lines = ({k for k, n in lines.items() if 'stream' in n.lower()}
                  or {k for k, n in lines.items() if n == 'XLA Ops'}
                  or set(lines))
  kernels = sorted(
    (e for e in complete if (e['pid'], e.get('tid')) in kernel_lines),
    key=lambda e: e['ts'],
  )
  if not kernels:
    return {'device_timeline': True, 'kernels_per_step': 0,
            'lines': sorted(lines.values())}
  busy, end = 0.0, None
  for e in kernels:
    s, t = e['ts'], e['ts'] + e['dur']
    if end is None or s > end:
      busy += t - s
      end = t
    elif t > end:
      busy += t - end
      end = t
  span = end - kernels[0]['ts']
  durs = sorted(e['dur'] for e in kernels)
  return {
    'device_timeline': True,
    'kernel_lines': sorted(lines[k] for k in kernel_lines),
    'kernels_per_step': len(kernels) / steps,
    'kernels_under_5us_per_step': sum(d < 5 for d in durs) / steps,
    'median_kernel_us': statistics.median(durs),
    'kernel_us_per_step': sum(durs) / steps,
    'span_us_per_step': span / steps,
    'busy_fraction': busy / span if span else None,
  }


def part_profile(rec, size, deadline, trace_root):
  if deadline.passed():
    for name in ('latency_step', 'pipelined_steps'):
      rec.skipped('profile', name, deadline.reason())
    return
  with rec.guard('profile', 'mhkd/dih/bfloat16'):
    import jax

    args = benchmark_step._parse_args(bench_argv(  # noqa: SLF001
      size, '--method', 'mhkd', '--head', 'dih', '--dtype', 'bfloat16',
    ))
    bench = benchmark_step.JaxBench(args, 'mhkd', 'dih',
                                    max(args.batch * 16, 1024))
    for _ in range(max(args.warmup, 1)):
      bench.step()
    k = size['profile_steps']
    for name, steps, run in (
      ('latency_step', 1, bench.step),
      ('pipelined_steps', k,
       lambda: benchmark_step.time_pipelined(bench.dispatch, bench.sync, k)),
    ):
      trace_dir = os.path.join(trace_root, name)
      with jax.profiler.trace(trace_dir):
        wall = run()
      events = _trace_events(trace_dir)
      if events is None:
        rec.skipped('profile', name,
                    f'no Chrome-format trace under {trace_dir}')
        continue
      summary = summarize_trace(events, steps)
      if not summary['device_timeline']:
        rec.measured(
          'profile', name, steps=steps, wall_s_per_step=wall, **summary,
          busy_fraction=None,
          busy_fraction_reason='no device timeline on CPU: XLA:CPU runs '
          'on host threads, and its fused loops do not appear as events',
        )
      else:
        rec.measured('profile', name, steps=steps, wall_s_per_step=wall,
                     **summary)


def part_imports(rec):
  # A None entry is an import that was refused, not a module.
  present = sorted(m for m in HEAVY_MODULES
                   if sys.modules.get(m) is not None)
  rec.measured('environment', 'imported_heavy_modules', modules=present,
               none=not present)


# --------------------------------------------------------------------------
# The readable table.


def _fmt(v):
  if v is None:
    return 'n/a'
  if isinstance(v, bool):
    return 'yes' if v else 'no'
  if isinstance(v, float):
    if v == 0:
      return '0'
    if abs(v) >= 1e9:
      return f'{v:.3g}'
    return f'{v:.3g}' if abs(v) < 1e-2 or abs(v) >= 1e4 else f'{v:.4g}'
  if isinstance(v, dict):
    return ', '.join(f'{k}: {_fmt(x)}' for k, x in v.items()) or 'none'
  if isinstance(v, list):
    return ', '.join(map(str, v)) or 'none'
  return str(v).replace('|', '/')


# part -> the columns its table shows (the JSON lines have everything).
_COLUMNS = {
  'environment': ('device', 'device_count', 'peak_bf16_flops_per_s',
                  'peak_f32_flops_per_s', 'python', 'jax', 'jaxlib', 'flax',
                  'torch', 'torch_device', 'modules'),
  'step_parity': ('torch_device', 'max_loss_term_abs_diff',
                  'max_param_rel_diff', 'within_tolerance', 'seconds'),
  'step_benchmark': ('teacher_folded', 'median_s', 'pipelined_s_per_step',
                     'steps_per_s', 'flops_per_s', 'mfu',
                     'peak_device_memory_bytes', 'compile_s',
                     'ratio_jax_over_torch',
                     'ratio_jax_over_torch_pipelined'),
  'students': ('students', 'loop', 'timing', 'one_student_s',
               'pipelined_s_per_step', 'median_s', 'per_student_ratio',
               'compile_s'),
  'real_loop': ('train_steps', 'wall_s', 'steady_steps_per_s',
                'benchmark_pipelined_steps_per_s', 'loop_over_benchmark',
                'compiles_after_first_step', 'recompiled_after_first_step',
                'final_train_loss'),
  'profile': ('steps', 'wall_s_per_step', 'kernels_per_step',
              'kernels_under_5us_per_step', 'median_kernel_us',
              'busy_fraction', 'host_xla_op_events_per_step',
              'busy_fraction_reason'),
}


def write_markdown(records, path, header):
  lines = [f'# Accelerator check: {header}', '']
  lines.append(
    'One line of accelerator_check.jsonl a row (it has every field); '
    'times in seconds, rates per second, memory in bytes, mfu a fraction '
    'of the peak.'
  )
  for part in PARTS:
    rows = [r for r in records if r['part'] == part]
    lines += ['', f'## {part}', '']
    if not rows:
      lines.append('(no record: the check stopped before this part)')
      continue
    cols = [c for c in _COLUMNS[part] if any(c in r for r in rows)]
    lines.append('| name | status | ' + ' | '.join(cols) + ' | reason |')
    lines.append('|---|---|' + '---|' * len(cols) + '---|')
    for r in rows:
      cells = [_fmt(r.get(c)) if c in r else '' for c in cols]
      lines.append(f'| {r["name"]} | {r["status"]} | ' + ' | '.join(cells)
                   + f' | {_fmt(r.get("reason", ""))} |')
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


# --------------------------------------------------------------------------


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  deadline = Deadline(args.deadline_min)
  threads = benchmark_step.prepare_process()
  import jax

  if args.smoke:
    # Cheap compiles: the smoke run checks that every part runs.
    jax.config.update('jax_disable_most_optimizations', True)
  torch_version = benchmark_step.import_torch(None, threads)
  platform, kind = benchmark_step.device_summary()
  size = sizes(args.smoke)
  if platform == 'cpu' and not args.smoke:
    # The accelerator sizes take minutes a step here: each benchmark case
    # gets a time budget, and the deadline cuts the rest.
    size['time_budget'] = 60
    print('# no accelerator: the full check on a CPU runs until its '
          'deadline; --smoke is the CPU size.', flush=True)
  rec = Recorder(args.out, deadline)
  with rec.guard('environment', 'versions_and_device'):
    part_environment(rec, size, threads, torch_version)
  if torch_version is None:
    rec.skipped('step_parity', '-', 'torch does not import here')
  else:
    with rec.guard('step_parity', '-'):
      part_step_parity(rec, size, deadline)
  part_step_benchmark(rec, size, deadline, 'bfloat16', threads,
                      torch_version is not None)
  part_students(rec, size, deadline)
  cleanup = []
  try:
    part_real_loop(rec, size, deadline, rec.records, cleanup)
    if args.keep_traces:
      trace_root = os.path.join(args.out, 'profile')
    else:
      trace_root = tempfile.mkdtemp(prefix='accelerator_check_trace_')
      cleanup.append(trace_root)
    part_profile(rec, size, deadline, trace_root)
    part_step_benchmark(rec, size, deadline, 'float32', threads,
                        torch_version is not None)
    part_imports(rec)
  finally:
    for path in cleanup:
      shutil.rmtree(path, ignore_errors=True)
  header = (f'{platform}: {kind}, jax {jax.__version__}'
            f'{", smoke" if args.smoke else ""}, '
            f'{deadline.elapsed():.0f} s')
  write_markdown(rec.records, os.path.join(args.out, MARKDOWN), header)
  print(f'wrote {rec.path} and {os.path.join(args.out, MARKDOWN)}',
        flush=True)
  return rec.records


if __name__ == '__main__':
  main()
