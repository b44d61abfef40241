"""Times the project's compiled train step against the PyTorch baseline,
on the device this process has: a GPU or TPU where jax has one (and a CUDA
GPU for PyTorch where torch has one), else the CPU.

  python -m experiments.benchmark_step            # what `make bench` runs
  python -m experiments.benchmark_step --method mhkd --head light \\
      --steps 20 --no-torch

The JAX step is the real one, built as ``train_and_evaluate`` builds it
(``train_state.create_train_state``, ``data.input_pipeline.DeviceResidentInput``
and ``steps.create_train_step``): the input's program takes the batch from
the resident split, crops, flips and normalises it; the train step runs
the frozen teacher, student + heads + loss under one ``value_and_grad``
and SGD. The PyTorch step is ``tests/torch_reference/train_step.py``
(RepDistiller semantics) on a batch that is already normalised (its data
loading is not timed, while the JAX input's gather and augmentation are);
on a CUDA GPU its models and batch live on the GPU, in channels-last
memory, with ``cudnn.benchmark`` on and ``torch.autocast('cuda')`` for
bfloat16.

Two timings per side:

* latency: each step is waited for (``block_until_ready``;
  ``torch.cuda.synchronize``) before the next starts. Both sides run in
  one process, in alternating blocks of steps after a warm-up, so that
  load drifts on a shared machine hit both; only the ratio of one run is
  meaningful there.
* pipelined: ``--pipeline-steps`` k steps are dispatched and waited for
  once, as a training loop runs them: steps/s = k / elapsed. On an
  accelerator this hides the host's dispatch behind the device's work;
  on the CPU the step runs on the host's own threads and the figure
  equals the latency one, so it is off there unless asked for.

Both frameworks get the same CPU threads: the process is pinned to
``--threads`` cores (default: every core this process may use), which
sizes XLA's CPU thread pool, and ``torch.set_num_threads`` gets the same
number.

Reported per measurement: median step time with min/max and the
interquartile range, images/s, step FLOPs (XLA's cost analysis of the
compiled step; for PyTorch ``torch.utils.flop_counter``), TFLOP/s and MFU
(achieved FLOP/s over the device's peak for the compute dtype, from
``PEAK_FLOPS``; 'n/a' where no peak is known, as on CPUs), memory (peak
device memory on accelerators: jax ``memory_stats``, torch
``max_memory_allocated``; on CPU XLA's buffer assignment of the step
(arguments + outputs + temporaries) and the process's peak RSS, which
covers both frameworks).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform as platform_module
import resource
import statistics
import sys
import re
import time

# --------------------------------------------------------------------------
# Device peaks, MFU and the two timings. Pure functions of their arguments,
# so that tests/benchmark_step_test.py checks them with fakes.

# Dense (no sparsity) peak FLOP/s of one chip, from the vendors' data
# sheets: (pattern on jax's or torch's device kind, bfloat16, float32).
# float32 on NVIDIA GPUs is the TF32 tensor-core peak: convolutions in
# float32 run as TF32 there by default in both frameworks (XLA's default
# precision; torch's cudnn.allow_tf32). TPUs publish no float32 peak (a
# float32 matmul there is several bf16 passes): None, printed 'n/a'. The
# first pattern that matches wins, so variants come before their family.
PEAK_FLOPS = (
  (r'h100.*pcie', 756e12, 378e12),
  (r'h100.*nvl', 835e12, 418e12),
  (r'h100', 989e12, 495e12),  # SXM
  (r'h200.*nvl', 835e12, 418e12),
  (r'h200', 989e12, 495e12),  # SXM
  (r'a100', 312e12, 156e12),
  (r'\bl4\b', 121e12, 60e12),
  (r'tpu v4', 275e12, None),
  (r'tpu v5 ?(lite|e)', 197e12, None),  # jax calls v5e 'TPU v5 lite'
  (r'tpu v5', 459e12, None),  # v5p
  (r'tpu v6 ?(lite|e)', 918e12, None),  # v6e (Trillium)
)


def peak_flops(device_kind: str, dtype: str, table=PEAK_FLOPS):
  """The device's peak FLOP/s for ``dtype``, or None if unknown (CPUs,
  devices not in the table)."""
  kind = device_kind.lower()
  for pattern, bf16, f32 in table:
    if re.search(pattern, kind):
      return bf16 if dtype == 'bfloat16' else f32
  return None


def flops_per_s(step_flops, seconds_per_step):
  if not step_flops or not seconds_per_step:
    return None
  return step_flops / seconds_per_step


def model_flops_utilization(step_flops, seconds_per_step, peak):
  """Achieved FLOP/s over the peak (a fraction), or None without a peak.

  ``step_flops`` is XLA's count for the compiled step (the PyTorch side:
  torch's flop counter), so this is the hardware's utilisation by the
  program XLA built, recomputation included.
  """
  rate = flops_per_s(step_flops, seconds_per_step)
  if rate is None or not peak:
    return None
  return rate / peak


def time_latency(step, n: int) -> list[float]:
  """``n`` calls of ``step``, which waits for its own result and returns
  its seconds."""
  return [step() for _ in range(n)]


def time_pipelined(dispatch, sync, k: int) -> float:
  """Seconds per step of ``k`` dispatches waited for once at the end."""
  start = time.perf_counter()
  for _ in range(k):
    dispatch()
  sync()
  return (time.perf_counter() - start) / k


def _parse_args(argv):
  p = argparse.ArgumentParser(
    prog='python -m experiments.benchmark_step',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--teacher', default='resnet32x4')
  p.add_argument('--student', default='resnet8x4')
  p.add_argument(
    '--method', default='kd,mhkd',
    help='comma-separated: kd, mhkd (default: both)',
  )
  p.add_argument(
    '--head', default='dih,light',
    help="MHKD head kinds, comma-separated (default: 'dih,light')",
  )
  p.add_argument(
    '--teacher-heads', default='pretrain',
    help="MHKD teacher heads: frozen ('pretrain') or trained ('online')",
  )
  p.add_argument('--head-width', type=int, default=None)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--num-classes', type=int, default=100)
  p.add_argument(
    '--steps', type=int, default=None,
    help='timed latency steps/side (default: 10 on CPU, 100 on an '
    'accelerator)',
  )
  p.add_argument(
    '--warmup', type=int, default=None,
    help='untimed steps/side (default: 2 on CPU, 10 on an accelerator, '
    "where cudnn.benchmark tunes PyTorch's first steps)",
  )
  p.add_argument(
    '--pipeline-steps', type=int, default=None,
    help='steps per pipelined measurement, dispatched and waited for once '
    '(3 measurements per side); 0 = latency only (default: 0 on CPU, 50 '
    'on an accelerator)',
  )
  p.add_argument(
    '--time-budget', type=float, default=75.0,
    help='seconds of timed steps per case (all sides together); fewer '
    'than --steps (at least 4) are timed when the warm-up says they would '
    'not fit; 0 = no limit',
  )
  p.add_argument(
    '--block', type=int, default=4,
    help='steps per block; JAX and PyTorch blocks alternate',
  )
  p.add_argument(
    '--dtype', default='float32', choices=('float32', 'bfloat16'),
    help='bfloat16: JAX computes convs/linears/BN in bf16 (f32 params); '
    'PyTorch runs under torch.autocast. On CPUs without AVX512-BF16 the '
    'PyTorch bf16 step is far slower than its f32 step '
    '(docs/performance.md).',
  )
  p.add_argument(
    '--fold-teacher', action=argparse.BooleanOptionalAction, default=None,
    help="config.teacher.fold_batchnorm of the JAX step (default: the "
    "config's); the PyTorch teacher is never folded",
  )
  p.add_argument(
    '--torch', action=argparse.BooleanOptionalAction, default=None,
    help='time the PyTorch step too (default: if torch imports)',
  )
  p.add_argument(
    '--threads', type=int, default=None,
    help='CPU threads for both frameworks (default: all usable cores)',
  )
  p.add_argument(
    '--xla-flags', default='',
    help='extra XLA_FLAGS for this run (set before jax is imported)',
  )
  p.add_argument(
    '--xla-default-cpu-libraries', action='store_true',
    help='compile the JAX step without mhkd_jax.steps.CPU_COMPILER_OPTIONS',
  )
  p.add_argument(
    '--also-xla-defaults', action='store_true',
    help='also time the JAX step compiled with XLA defaults (before/after)',
  )
  p.add_argument(
    '--also-fused-input', action='store_true',
    help='also time the input program and the train step fused into one '
    'jitted program (the design before the input seam)',
  )
  p.add_argument(
    '--also-bfloat16', action='store_true',
    help='also time the JAX step with config.compute_dtype=bfloat16 '
    '(speed-up of mixed precision over --dtype on this device)',
  )
  p.add_argument(
    '--also-other-teacher-fold', action='store_true',
    help='also time the JAX step with config.teacher.fold_batchnorm '
    "flipped (the teacher's BatchNorms folded into its convolutions, or "
    'not): the speed-up of folding in one run',
  )
  p.add_argument(
    '--profile', default='',
    help='write a jax.profiler trace of 2 JAX steps to this directory',
  )
  p.add_argument(
    '--num-students', default='',
    help='comma-separated N (e.g. 1,2,4,8): time the N-student step '
    '(config.num_students) against the one-student step in one run and '
    'print per_student_ratio = N-student step / N / one-student step',
  )
  p.add_argument(
    '--students-data', default='shared',
    help="with --num-students, comma-separated: 'shared' and/or "
    "'independent' (config.students_share_data)",
  )
  p.add_argument(
    '--students-loop', default='unroll',
    help='config.students_loop of the N-student step, comma-separated: '
    "'unroll' and/or 'vmap' (each N-student step timed with each)",
  )
  p.add_argument('--out', default='', help='append results as JSON lines')
  return p.parse_args(argv)


def _pin_threads(threads):
  """Pins the process to ``threads`` cores before jax starts its pool."""
  usable = sorted(os.sched_getaffinity(0))
  threads = threads or len(usable)
  if threads > len(usable):
    raise SystemExit(
      f'--threads={threads}, but this process may use {len(usable)} cores.'
    )
  if threads < len(usable):
    os.sched_setaffinity(0, usable[:threads])
  return threads


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      info = f.read()
  except OSError:
    return platform_module.processor() or 'unknown'
  name = next(
    (l.split(':', 1)[1].strip() for l in info.splitlines()
     if l.startswith('model name')), 'unknown',
  )
  flags = next(
    (l.split(':', 1)[1].split() for l in info.splitlines()
     if l.startswith('flags')), [],
  )
  isa = 'AVX-512' if 'avx512f' in flags else (
    'AVX2 (no AVX-512)' if 'avx2' in flags else 'no AVX2'
  )
  return f'{name}, {isa}'


# --------------------------------------------------------------------------
# JAX side.


def _jax_config(args, method, head):
  from mhkd_jax.configs import default

  config = default.get_config()
  config.method = method
  config.model = args.student
  config.teacher.model = args.teacher
  config.batch_size = args.batch
  if head is not None:
    config.mhkd.head = head
    config.mhkd.head_width = args.head_width
    config.mhkd.teacher_head_mode = args.teacher_heads
  return config


class JaxBench:
  """The project's input and train step, compiled, on a synthetic split.

  ``xla_defaults``: compile without ``steps.compiler_options`` (XLA's own
  CPU library choices). ``fused_input``: one jitted program for the
  input's gather/augment and the train step instead of two.
  """

  def __init__(self, args, method_name, head, num_examples,
               xla_defaults=False, dtype=None, fused_input=False,
               num_students=1, share_data=True, fold_teacher=None,
               students_loop=None):
    import jax
    import numpy as np
    from flax import nnx

    from mhkd_jax import distill, parallel, steps, students, train_state
    from mhkd_jax.data import datasets, input_pipeline
    from mhkd_jax.distill.base import DataSpec, Teacher
    from mhkd_jax.distill.mhkd import TEACHER_HEAD_MODES
    from mhkd_jax.models import create_model, fold, heads

    if args.teacher_heads not in TEACHER_HEAD_MODES:
      raise SystemExit(f'--teacher-heads={args.teacher_heads!r}; valid: '
                       f'{", ".join(TEACHER_HEAD_MODES)}.')
    self.jax = jax
    config = _jax_config(args, method_name, head)
    # The training option config.compute_dtype, as a run would set it.
    self.dtype = config.compute_dtype = dtype or args.dtype
    config.num_students = self.num_students = num_students
    config.students_share_data = self.share_data = share_data
    config.students_loop = self.students_loop = (
      students_loop or args.students_loop.split(',')[0]
    )
    if fold_teacher is None:
      fold_teacher = getattr(args, 'fold_teacher', None)
    if fold_teacher is not None:
      config.teacher.fold_batchnorm = fold_teacher
    self.fold_teacher = config.teacher.fold_batchnorm
    self._students = students
    method = distill.create_method(config)
    data = DataSpec(
      num_classes=args.num_classes, example_shape=(32, 32, 3),
      num_train_examples=num_examples,
      steps_per_epoch=num_examples // args.batch,
    )
    t_model = create_model(
      args.teacher, num_classes=args.num_classes, rngs=nnx.Rngs(1)
    )
    t_heads = None
    if method_name == 'mhkd' and args.teacher_heads == 'pretrain':
      t_heads = heads.create_heads(
        head, t_model, None, num_classes=args.num_classes,
        input_shape=data.input_shape, width=args.head_width,
        rngs=nnx.Rngs(2),
      )
    teacher = Teacher(t_model, t_heads, name=args.teacher)
    mesh = parallel.create_mesh(1)
    self.state, graphdef, tx = train_state.create_train_state(
      config, method, teacher=teacher, data=data, mesh=mesh
    )
    if self.fold_teacher:  # what train.py's steps run
      teacher = fold.folded_teacher(teacher, data.input_shape)
    t_graphdef, self.t_state = train_state.place_teacher(
      teacher, config, mesh
    )
    self.num_params = sum(x.size for x in jax.tree.leaves(self.state.params))
    self.compiler_options = (
      None if xla_defaults else steps.compiler_options(mesh)
    )
    def create_step(compiler_options):
      return steps.create_train_step(
        method=method, graphdef=graphdef, teacher_graphdef=t_graphdef,
        tx=tx, data=data, compiler_options=compiler_options,
        num_students=num_students, share_data=share_data,
        students_loop=self.students_loop,
      )

    train_step = create_step(self.compiler_options)
    rng = np.random.default_rng(0)
    split = datasets.ArraySplit(
      rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8),
      rng.integers(0, args.num_classes, (num_examples,)).astype(np.int32),
    )
    cifar = datasets.dataset_info('cifar100')
    preprocessing = input_pipeline.Preprocessing(
      mean=cifar.mean, std=cifar.std, crop_padding=4, random_flip=True
    )
    self.input = input_pipeline.DeviceResidentInput(
      split, preprocessing, batch_size=args.batch, mesh=mesh
    )
    self.fused_input = fused_input
    if fused_input:
      # Nested jits may not carry compiler options; the outer one does.
      gather, separate_step = self.input.gather, create_step(None)

      def fused(state, t_state, images, labels, order, position, rng):
        batch = gather(images, labels, order, position, rng)
        return separate_step(state, batch, t_state)

      train_step = jax.jit(fused, donate_argnums=0,
                           compiler_options=self.compiler_options)
      self.args_iter = self._fused_args()
    else:
      self.args_iter = self._separate_args()
    start = time.perf_counter()
    lowered = train_step.lower(*next(self.args_iter))
    self.trace_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.flops = float(cost.get('flops', float('nan'))) if cost else None
    mem = self.compiled.memory_analysis()
    self.xla_buffers = None
    if mem is not None:
      self.xla_buffers = (
        mem.argument_size_in_bytes + mem.output_size_in_bytes
        + mem.temp_size_in_bytes - mem.alias_size_in_bytes
      )

  def _separate_args(self):
    if self.num_students == 1:
      batches = self.input.batches(0, self.jax.random.key(0))
    else:
      batches = self._students.train_batches(
        self.input, self.state, 0, self.num_students, self.share_data
      )
    for batch in batches:
      yield self.state, batch, self.t_state

  def _fused_args(self):
    # What DeviceResidentInput.batches feeds its gather program.
    jnp = self.jax.numpy
    for order, position, key in self.input._keyed_positions(  # noqa: SLF001
      0, self.jax.random.key(0)
    ):
      yield (self.state, self.t_state, self.input.images, self.input.labels,
             order, jnp.int32(position), key)

  def dispatch(self) -> None:
    """Enqueues the input's program and the step; returns at once."""
    self.state, self._metrics = self.compiled(*next(self.args_iter))

  def sync(self) -> None:
    self.jax.block_until_ready((self.state, self._metrics))

  def step(self) -> float:
    start = time.perf_counter()
    self.dispatch()
    self.sync()
    elapsed = time.perf_counter() - start
    self.last_loss = float(self.jax.numpy.mean(self._metrics['loss']))
    return elapsed

  def peak_device_memory(self):
    stats = self.jax.devices()[0].memory_stats()
    if stats and 'peak_bytes_in_use' in stats:
      return stats['peak_bytes_in_use']
    return None


# --------------------------------------------------------------------------
# PyTorch side.


class TorchBench:
  """RepDistiller-style PyTorch step on a fixed, normalised batch.

  On a CUDA GPU (when torch sees one) the models and the batch live there,
  in channels-last memory (NHWC, what cuDNN's tensor-core convolutions
  read without transposes), with ``cudnn.benchmark`` choosing each
  convolution's algorithm on the first steps (the warm-up), and
  bfloat16 under ``torch.autocast('cuda')``. On the CPU: contiguous NCHW
  and ``torch.autocast('cpu')``, as the PyTorch code bases run there.
  """

  def __init__(self, args, method_name, head):
    import torch

    from tests.torch_reference import heads as torch_heads
    from tests.torch_reference import models as torch_models
    from tests.torch_reference import train_step

    self.torch = torch
    self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    self.cuda = self.device.type == 'cuda'
    self.device_kind = (
      torch.cuda.get_device_name(self.device) if self.cuda else 'cpu'
    )
    self.dtype = args.dtype
    config = _jax_config(args, method_name, head)
    torch.manual_seed(0)
    teacher = torch_models.create_torch_model(args.teacher, args.num_classes)
    student = torch_models.create_torch_model(args.student, args.num_classes)
    s_heads = t_heads = None
    if method_name == 'mhkd':
      # Built on the CPU: the heads size themselves from a forward pass.
      s_heads = torch_heads.create_heads(
        head, student, None, num_classes=args.num_classes,
        width=args.head_width,
      )
      t_heads = torch_heads.create_heads(
        head, teacher, None, num_classes=args.num_classes,
        width=args.head_width,
      )
    memory_format = (
      torch.channels_last if self.cuda else torch.contiguous_format
    )
    for m in (teacher, student, s_heads, t_heads):
      if m is not None:
        m.to(self.device, memory_format=memory_format)
    if self.cuda:
      torch.backends.cudnn.benchmark = True
      torch.cuda.reset_peak_memory_stats(self.device)
    # The optimizer is built over the parameters where they now live.
    self.step_fn = train_step.create_step_from_config(
      config, student=student, teacher=teacher, student_heads=s_heads,
      teacher_heads=t_heads,
    )
    self.autocast = args.dtype == 'bfloat16'
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g)
    self.x = x.to(self.device, memory_format=memory_format)
    self.y = torch.randint(
      0, args.num_classes, (args.batch,), generator=g
    ).to(self.device)
    self.num_params = sum(
      p.numel() for m in self.step_fn.trainable_modules()
      for p in m.parameters()
    )
    self.flops = None
    self._out = None

  def _run(self):
    if self.autocast:
      with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16):
        return self.step_fn(self.x, self.y)
    return self.step_fn(self.x, self.y)

  def count_flops(self):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
      self._run()
    self.flops = float(counter.get_total_flops())

  def dispatch(self) -> None:
    """Runs one step's Python; on CUDA the kernels are only enqueued."""
    self._out = self._run()

  def sync(self) -> None:
    if self.cuda:
      self.torch.cuda.synchronize(self.device)

  def step(self) -> float:
    start = time.perf_counter()
    self.dispatch()
    self.sync()
    elapsed = time.perf_counter() - start
    self.last_loss = float(self._out['loss'])
    return elapsed

  def peak_device_memory(self):
    if not self.cuda:
      return None
    return self.torch.cuda.max_memory_allocated(self.device)


# --------------------------------------------------------------------------
# Timing and reporting.


def _summary(times):
  times = sorted(times)
  q = statistics.quantiles(times, n=4) if len(times) > 1 else times * 3
  return {
    'median_s': statistics.median(times),
    'min_s': times[0],
    'max_s': times[-1],
    'iqr_s': q[2] - q[0],
    'n': len(times),
  }


def _alternate(benches, warmup, steps, block, budget):
  """Warm-up, then alternating blocks; returns name -> list of seconds."""
  last = {}
  for _ in range(max(warmup, 1)):
    for name, bench in benches.items():
      last[name] = bench.step()
  if budget:
    fit = max(4, int(budget / sum(last.values())))
    if fit < steps:
      print(f'# {fit} timed steps per side instead of {steps}: '
            f'--time-budget={budget:g} s', flush=True)
      steps = fit
  times = {name: [] for name in benches}
  while any(len(t) < steps for t in times.values()):
    for name, bench in benches.items():
      times[name] += time_latency(
        bench.step, min(block, steps - len(times[name]))
      )
  return times


def _pipelined(benches, k, rounds=3):
  """name -> median seconds per step of ``rounds`` pipelined runs of
  ``k`` steps, the sides alternating."""
  if not k:
    return {}
  per_step = {name: [] for name in benches}
  for _ in range(rounds):
    for name, bench in benches.items():
      per_step[name].append(time_pipelined(bench.dispatch, bench.sync, k))
  return {name: statistics.median(t) for name, t in per_step.items()}


def _fmt_bytes(n):
  if n is None:
    return 'n/a'
  return f'{n / 2**20:.0f} MiB'


def _fmt_flops(f):
  return 'n/a' if not f else f'{f / 1e9:.1f}'


def _fmt_mfu(mfu):
  return 'n/a' if mfu is None else f'{100 * mfu:.1f}%'


def device_summary():
  """(platform, device kind) of jax's first device."""
  import jax

  device = jax.devices()[0]
  return device.platform, str(device.device_kind)


def device_peak(dtype, platform=None, kind=None):
  """The peak FLOP/s of jax's device for ``dtype``; None on CPUs, whose
  peak depends on clocks and vector units that no table here holds."""
  if platform is None:
    platform, kind = device_summary()
  if platform == 'cpu':
    return None
  return peak_flops(kind, dtype)


def resolve_defaults(args):
  """Fills the options whose default depends on the device (after jax
  can be imported: after ``_pin_threads`` and XLA_FLAGS)."""
  platform, _ = device_summary()
  accelerator = platform != 'cpu'
  if args.steps is None:
    args.steps = 100 if accelerator else 10
  if args.warmup is None:
    args.warmup = 10 if accelerator else 2
  if args.pipeline_steps is None:
    args.pipeline_steps = 50 if accelerator else 0
  return args


def _result(args, case, name, bench, s, pipelined_s, threads, platform,
            kind):
  """One measurement as a flat dict (what --out writes)."""
  dtype = getattr(bench, 'dtype', args.dtype)
  if name == 'torch':  # torch may see a GPU where jax does not
    peak = peak_flops(bench.device_kind, dtype) if bench.cuda else None
  else:
    peak = device_peak(dtype, platform, kind)
  # The throughput figure: pipelined where measured, else latency.
  seconds = pipelined_s or s['median_s']
  r = {
    'case': case, 'framework': name, 'teacher': args.teacher,
    'student': args.student, 'batch': args.batch, 'dtype': dtype,
    'threads': threads, **s,
    'pipelined_s_per_step': pipelined_s,
    'pipelined_steps': args.pipeline_steps if pipelined_s else 0,
    'steps_per_s': 1 / seconds,
    'images_per_s': args.batch / seconds,
    'step_flops': bench.flops,
    'flops_per_s': flops_per_s(bench.flops, seconds),
    'peak_flops_per_s': peak,
    'mfu': model_flops_utilization(bench.flops, seconds, peak),
    'trainable_params': bench.num_params,
    'last_loss': bench.last_loss,
    'peak_device_memory_bytes': bench.peak_device_memory(),
  }
  if name.startswith('jax'):
    r.update(
      device=kind, platform=platform, compile_s=bench.compile_s,
      trace_s=bench.trace_s, xla_buffers_bytes=bench.xla_buffers,
      xla_flags=os.environ.get('XLA_FLAGS', ''),
      compiler_options=bench.compiler_options,
      teacher_folded=bench.fold_teacher,
    )
  else:
    r.update(device=str(bench.device), teacher_folded=False)
  return r


def _print_result(label, r):
  if r.get('peak_device_memory_bytes') is not None:
    mem = f'peak {_fmt_bytes(r["peak_device_memory_bytes"])}'
  elif r['framework'].startswith('jax'):
    mem = f'XLA buffers {_fmt_bytes(r["xla_buffers_bytes"])}'
  else:
    mem = 'see RSS'
  compile_part = (
    f'compile {r["compile_s"]:.1f} s (trace {r["trace_s"]:.1f} s) | '
    if r['framework'].startswith('jax') else ''
  )
  pipelined = (
    f' | pipelined {r["pipelined_s_per_step"] * 1e3:.2f} ms/step '
    f'({r["steps_per_s"]:.1f} steps/s, k={r["pipelined_steps"]})'
    if r['pipelined_s_per_step'] else ''
  )
  rate = ('n/a' if not r['flops_per_s']
          else f'{r["flops_per_s"] / 1e12:.3f}')
  print(
    f'{label:44s} {r["framework"]:16s} | median {r["median_s"] * 1e3:7.1f} ms'
    f' (min {r["min_s"] * 1e3:.1f}, max {r["max_s"] * 1e3:.1f}, IQR '
    f'{r["iqr_s"] * 1e3:.1f}; n={r["n"]}){pipelined} | '
    f'{r["images_per_s"]:6.1f} img/s | {_fmt_flops(r["step_flops"])} '
    f'GFLOP/step, {rate} TFLOP/s, MFU {_fmt_mfu(r["mfu"])} | '
    f'{compile_part}{mem}',
    flush=True,
  )


def run_case(args, method_name, head, use_torch, torch_threads):
  """Times one step (KD or MHKD with one head kind) in every variant asked
  for; prints a line each and the ratios; returns the measurements."""
  import jax

  case = f'{method_name}' + (
    f'/{head}/{args.teacher_heads}' if method_name == 'mhkd' else ''
  )
  label = (
    f'{case} {args.teacher}->{args.student} b{args.batch} {args.dtype}'
  )
  num_examples = max(args.batch * 16, 1024)
  jb = JaxBench(
    args, method_name, head, num_examples,
    xla_defaults=args.xla_default_cpu_libraries,
  )
  benches = {'jax': jb}
  if args.also_xla_defaults:
    benches['jax-xla-defaults'] = JaxBench(
      args, method_name, head, num_examples, xla_defaults=True
    )
  if args.also_fused_input:
    benches['jax-fused-input'] = JaxBench(
      args, method_name, head, num_examples,
      xla_defaults=args.xla_default_cpu_libraries, fused_input=True,
    )
  if args.also_bfloat16:
    benches['jax-bfloat16'] = JaxBench(
      args, method_name, head, num_examples,
      xla_defaults=args.xla_default_cpu_libraries, dtype='bfloat16',
    )
  if args.also_other_teacher_fold:
    other = not jb.fold_teacher
    benches[f'jax-teacher-{"" if other else "un"}folded'] = JaxBench(
      args, method_name, head, num_examples,
      xla_defaults=args.xla_default_cpu_libraries, fold_teacher=other,
    )
  if use_torch:
    tb = TorchBench(args, method_name, head)
    tb.count_flops()
    benches['torch'] = tb
  if args.profile:
    jb.step()
    jax.profiler.start_trace(os.path.join(args.profile, case.replace('/', '_')))
    for _ in range(2):
      jb.step()
    jax.profiler.stop_trace()
  times = _alternate(
    benches, args.warmup, args.steps, args.block, args.time_budget
  )
  pipelined = _pipelined(benches, args.pipeline_steps)
  platform, kind = device_summary()
  results = [
    _result(args, case, name, bench, _summary(times[name]),
            pipelined.get(name), torch_threads, platform, kind)
    for name, bench in benches.items()
  ]
  for r in results:
    _print_result(label, r)
  by_name = {r['framework']: r for r in results}
  if 'torch' in by_name:
    torch_r = by_name['torch']
    for name, r in by_name.items():
      if name.startswith('jax'):
        ratio = r['median_s'] / torch_r['median_s']
        r['ratio_jax_over_torch'] = ratio
        print(f'{label:44s} ratio {name}/PyTorch step time = {ratio:.2f}',
              flush=True)
        if r['pipelined_s_per_step'] and torch_r['pipelined_s_per_step']:
          ratio = (r['pipelined_s_per_step']
                   / torch_r['pipelined_s_per_step'])
          r['ratio_jax_over_torch_pipelined'] = ratio
          print(f'{label:44s} ratio {name}/PyTorch pipelined step time = '
                f'{ratio:.2f}', flush=True)
  if 'jax-xla-defaults' in by_name:
    speedup = by_name['jax-xla-defaults']['median_s'] / by_name['jax'][
      'median_s']
    print(f'{label:44s} speed-up of CPU_COMPILER_OPTIONS = {speedup:.2f}x',
          flush=True)
  if 'jax-fused-input' in by_name:
    speedup = by_name['jax']['median_s'] / by_name['jax-fused-input'][
      'median_s']
    print(f'{label:44s} speed-up of fusing input and step = {speedup:.2f}x',
          flush=True)
  for other, folded, unfolded in (
    ('jax-teacher-folded', 'jax-teacher-folded', 'jax'),
    ('jax-teacher-unfolded', 'jax', 'jax-teacher-unfolded'),
  ):
    if other in by_name:
      speedup = by_name[unfolded]['median_s'] / by_name[folded]['median_s']
      print(f'{label:44s} speed-up of folding the teacher BatchNorms = '
            f'{speedup:.2f}x', flush=True)
  if 'jax-bfloat16' in by_name:
    speedup = by_name['jax']['median_s'] / by_name['jax-bfloat16'][
      'median_s']
    print(f'{label:44s} speed-up of bfloat16 compute = {speedup:.2f}x',
          flush=True)
  return results


def run_students_case(args, method_name, head):
  """The N-student steps against the one-student step, alternating in one
  run; one line per N, data mode and students loop with ``students=N`` and
  ``per_student_ratio=R`` (N-student step / N / one-student step: 1 means
  no saving, 1/N a free extra student). On an accelerator the ratio is of
  the pipelined step times, the throughput a training loop sees."""
  case = f'{method_name}' + (
    f'/{head}/{args.teacher_heads}' if method_name == 'mhkd' else ''
  )
  label = f'{case} {args.teacher}->{args.student} b{args.batch}'
  num_examples = max(args.batch * 16, 1024)
  counts = [int(n) for n in args.num_students.split(',') if n]
  modes = [m for m in args.students_data.split(',') if m]
  loops = [m for m in args.students_loop.split(',') if m]
  for loop in loops:
    if loop not in ('unroll', 'vmap'):
      raise SystemExit(f'--students-loop {loop!r}: valid loops are unroll, '
                       'vmap.')
  one_key = (1, 'shared', '-')
  benches = {one_key: JaxBench(args, method_name, head, num_examples)}
  for n in counts:
    for mode in modes:
      for loop in loops:
        if n > 1:
          benches[(n, mode, loop)] = JaxBench(
            args, method_name, head, num_examples, num_students=n,
            share_data=mode == 'shared', students_loop=loop,
          )
  times = _alternate(benches, args.warmup, args.steps, args.block,
                     args.time_budget)
  pipelined = _pipelined(benches, args.pipeline_steps)

  def seconds(key):
    return pipelined.get(key) or statistics.median(times[key])

  one = seconds(one_key)
  results = []
  for key, bench in benches.items():
    n, mode, loop = key
    if n not in counts:
      continue
    for m in (modes if n == 1 else [mode]):
      t = seconds(key)
      ratio = t / n / one
      timing = 'pipelined' if key in pipelined else 'latency'
      print(
        f'{label} students={n} data={m} loop={loop} '
        f'step={t * 1e3:.2f}ms per_student={t / n * 1e3:.2f}ms '
        f'per_student_ratio={ratio:.3f} ({timing}) '
        f'xla_buffers={_fmt_bytes(bench.xla_buffers)} '
        f'compile={bench.compile_s:.1f}s', flush=True,
      )
      results.append({
        'case': case, 'students': n, 'data': m, 'loop': loop,
        'dtype': bench.dtype, **_summary(times[key]),
        'pipelined_s_per_step': pipelined.get(key), 'timing': timing,
        'one_student_s': one, 'per_student_ratio': ratio,
        'xla_buffers_bytes': bench.xla_buffers,
        'compile_s': bench.compile_s,
      })
  return results


def prepare_process(threads=None, xla_flags=''):
  """What must happen before jax is imported: the CPU threads, XLA_FLAGS,
  and the share of GPU memory jax takes. Returns the thread count."""
  threads = _pin_threads(threads)
  if xla_flags:
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' ' + xla_flags
    ).strip()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  # jax takes 75% of a GPU's memory at start by default; PyTorch runs on
  # the same GPU in this process and needs some of it.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.5')
  return threads


def import_torch(wanted, threads):
  """torch's version if it is to be used (``wanted`` True or None and it
  imports), else None."""
  if wanted is False:
    return None
  try:
    import torch
  except ImportError:
    if wanted:
      raise SystemExit('--torch was asked for, but torch does not import.')
    return None
  torch.set_num_threads(threads)
  return torch.__version__


def environment(threads, torch_version, xla_default_cpu_libraries=False):
  """The run's header: host, device, its peaks, versions, compiler flags."""
  import jax

  from mhkd_jax import parallel, steps

  platform, kind = device_summary()
  torch_device = None
  if torch_version is not None:
    import torch

    torch_device = (f'cuda: {torch.cuda.get_device_name()}'
                    if torch.cuda.is_available() else 'cpu')
  return {
    'date': datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    'host_cpu': _cpu_model(),
    'device': f'{platform}: {kind}',
    'device_count': jax.device_count(),
    'peak_bf16_flops_per_s': device_peak('bfloat16', platform, kind),
    'peak_f32_flops_per_s': device_peak('float32', platform, kind),
    'threads': threads,
    'python': platform_module.python_version(),
    'jax': jax.__version__,
    'jaxlib': _version('jaxlib'),
    'flax': _version('flax'),
    'torch': torch_version,
    'torch_device': torch_device,
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'step_compiler_options': (
      None if xla_default_cpu_libraries
      else steps.compiler_options(parallel.create_mesh(1))
    ),
  }


def _version(package):
  from importlib import metadata

  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _fmt_peak(p):
  return 'n/a' if p is None else f'{p / 1e12:.0f} TFLOP/s'


def main(argv=None):
  args = _parse_args(sys.argv[1:] if argv is None else argv)
  threads = prepare_process(args.threads, args.xla_flags)
  torch_version = import_torch(args.torch, threads)
  use_torch = torch_version is not None
  resolve_defaults(args)
  methods = [m for m in args.method.split(',') if m]
  head_kinds = [h for h in args.head.split(',') if h]
  cases = []
  for m in methods:
    if m == 'kd':
      cases.append(('kd', None))
    elif m == 'mhkd':
      cases += [('mhkd', h) for h in head_kinds]
    else:
      raise SystemExit(f'--method {m!r}: valid methods are kd, mhkd.')

  header = environment(threads, torch_version,
                       args.xla_default_cpu_libraries)
  print(
    f'# {header["date"]} | {header["host_cpu"]} | {header["device"]} '
    f'(peak bf16 {_fmt_peak(header["peak_bf16_flops_per_s"])}, f32 '
    f'{_fmt_peak(header["peak_f32_flops_per_s"])}) | '
    f'{threads} threads for JAX (process pinned to {threads} cores) and '
    f'for PyTorch (torch.set_num_threads({threads})) | jax {header["jax"]}'
    f', torch {torch_version or "absent"}'
    f'{" on " + header["torch_device"] if use_torch else ""} | XLA_FLAGS='
    f'{header["xla_flags"]!r} | JAX step compiler_options='
    f'{header["step_compiler_options"] or "XLA defaults"}',
    flush=True,
  )
  if header['device'].startswith('cpu') and (
    header['torch_device'] or ''
  ).startswith('cuda'):
    print('# jax sees no GPU while PyTorch does: this venv has the CPU '
          'jaxlib; `make bench-gpu` installs the CUDA one.', flush=True)
  pipelined = (
    f'; then 3 x {args.pipeline_steps} pipelined steps per side'
    if args.pipeline_steps else '; no pipelined timing (--pipeline-steps)'
  )
  print(
    f'# {args.warmup} warm-up + {args.steps} timed steps per side, '
    f'alternating blocks of {args.block}{pipelined}; PyTorch times exclude '
    'data loading, JAX times include the batch gather and augmentation.',
    flush=True,
  )
  all_results = []
  for method_name, head in cases:
    if args.num_students:
      all_results += run_students_case(args, method_name, head)
    else:
      all_results += run_case(args, method_name, head, use_torch, threads)
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  print(f'# peak RSS of this process (both frameworks): {_fmt_bytes(rss)}')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'a') as f:
      for r in all_results:
        f.write(json.dumps({**header, **r, 'peak_rss_bytes': rss}) + '\n')
  return all_results


if __name__ == '__main__':
  main()
