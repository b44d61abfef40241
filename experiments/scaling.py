r"""Weak scaling on paper: per-step time of resnet32x4 -> resnet8x4 MHKD
against the number of TPU chips, at a fixed batch per chip.

  python -m experiments.scaling                   # the README table (4 min)
  python -m experiments.scaling --per-device 8,32,128 --mfu 0.3

Method. The real train step (``train_state.create_train_state`` +
``step.create_train_step``, the ``mhkd`` run of
``configs/cifar100_resnet32x4_resnet8x4.py``: frozen resnet32x4 with
frozen 'dih' heads, resnet8x4 student with its heads, SGD) is compiled for
an 8-device CPU mesh, batch split over the devices, for each batch per
device. From the compiled program:

* compute: XLA's cost analysis of the partitioned (per-device) program,
  in FLOPs per device per step;
* communication: every all-reduce in the compiled HLO, with the bytes it
  reduces (the gradient, BatchNorm's global-batch statistics, metrics);
  XLA's combiner has already merged what it merges.

A step on N chips then takes, with no overlap of compute and
communication (pessimistic; XLA on TPU overlaps the gradient reduction
with the backward pass in part):

  t(N) = FLOPs / (peak * MFU)
         + sum over all-reduces of [alpha + 2 (N-1)/N * bytes / B_ar]

with peak the chip's bf16 peak (TPU v4: 275 TFLOP/s, v5e: 197 TFLOP/s;
cloud.google.com/tpu/docs/v4 and /v5e), B_ar the all-reduce bandwidth per
chip (the pod's published all-reduce bandwidth over its chips: v4 1.1 PB/s
/ 4096 = 269 GB/s, v5e 51.2 TB/s / 256 = 200 GB/s), alpha a per-collective
latency (assumed 10 us: ICI hops plus launch) and MFU the fraction of peak
the step's convolutions reach (assumed 0.25: CIFAR ResNets have small
channel counts and 8x8 maps, far from the MXU's 128x128 tiles). The
compute term does not depend on N at a fixed batch per chip; weak-scaling
efficiency is t(1) / t(N). The FLOPs and bytes are measured; peak and
bandwidth are published; MFU and alpha are assumptions (flags), and the
table says which.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

NUM_CPU_DEVICES = 8
# Published: bf16 peak per chip, all-reduce bandwidth per chip (pod
# all-reduce bandwidth / pod chips), in FLOP/s and bytes/s.
CHIPS = {
  'v4': {'peak': 275e12, 'allreduce_bw': 1.1e15 / 4096},
  'v5e': {'peak': 197e12, 'allreduce_bw': 51.2e12 / 256},
}
_DTYPE_BYTES = {'f32': 4, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4,
                'pred': 1, 's8': 1, 'u8': 1, 'f64': 8, 's64': 8, 'u64': 8}
_ALL_REDUCE = re.compile(r'=\s*(.*?)\s+all-reduce(?:-start)?\(')
_ARRAY = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')


def all_reduces(hlo_text: str) -> list[int]:
  """Bytes of each all-reduce in an HLO module's text (tuples summed)."""
  sizes = []
  for line in hlo_text.splitlines():
    match = _ALL_REDUCE.search(line)
    if not match:
      continue
    total = 0
    for dtype, dims in _ARRAY.findall(match.group(1)):
      n = 1
      for d in filter(None, dims.split(',')):
        n *= int(d)
      total += n * _DTYPE_BYTES[dtype]
    sizes.append(total)
  return sizes


def step_time(flops: float, reduces: list[int], num_chips: int, chip: dict,
              mfu: float, alpha: float) -> tuple[float, float]:
  """(compute seconds, communication seconds) of one step on N chips."""
  compute = flops / (chip['peak'] * mfu)
  if num_chips == 1:
    return compute, 0.0
  ring = 2 * (num_chips - 1) / num_chips
  comm = sum(alpha + ring * b / chip['allreduce_bw'] for b in reduces)
  return compute, comm


def compile_step(per_device: int):
  """(FLOPs per device, all-reduce bytes, student+heads parameters) of
  the MHKD step on the 8-device CPU mesh."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mhkd_jax import (  # noqa: PLC0415
    distill,
    parallel,
    steps,  # noqa: PLC0415
    train_state,  # noqa: PLC0415
  )
  from mhkd_jax.configs import (  # noqa: PLC0415
    cifar100_resnet32x4_resnet8x4 as pair,
  )
  from mhkd_jax.data import input_pipeline  # noqa: PLC0415
  from mhkd_jax.distill.base import DataSpec, Teacher  # noqa: PLC0415
  from mhkd_jax.models import (
    create_model,  # noqa: PLC0415
    heads,  # noqa: PLC0415
  )

  config = pair.get_config('mhkd')
  batch = per_device * NUM_CPU_DEVICES
  config.batch_size = batch
  num_classes, num_examples = 100, 50_000
  data = DataSpec(num_classes=num_classes, example_shape=(32, 32, 3),
                  num_train_examples=num_examples,
                  steps_per_epoch=num_examples // batch)
  method = distill.create_method(config)
  t_model = create_model('resnet32x4', num_classes=num_classes,
                         rngs=nnx.Rngs(1))
  t_heads = heads.create_heads(
    config.mhkd.head, t_model, None, num_classes=num_classes,
    input_shape=data.input_shape, width=config.mhkd.head_width or None,
    rngs=nnx.Rngs(2),
  )
  teacher = Teacher(t_model, t_heads, name='resnet32x4')
  mesh = parallel.create_mesh(NUM_CPU_DEVICES)
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=data, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=data, compiler_options=steps.compiler_options(mesh),
  )
  sharded = parallel.data_sharded(mesh)
  example = input_pipeline.Batch(
    images=jax.device_put(jnp.zeros((batch, 32, 32, 3), jnp.float32),
                          sharded),
    labels=jax.device_put(jnp.zeros((batch,), jnp.int32), sharded),
    indices=jax.device_put(jnp.arange(batch, dtype=jnp.int32), sharded),
  )
  compiled = train_step.lower(state, example, t_state).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
  return float(cost['flops']), all_reduces(compiled.as_text()), params


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
    prog='python -m experiments.scaling', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--per-device', default='8,16,32,64,128')
  p.add_argument('--chips', default='1,4,8,16,32,64,256')
  p.add_argument('--mfu', type=float, default=0.25)
  p.add_argument('--alpha-us', type=float, default=10.0)
  args = p.parse_args(argv)
  if 'jax' in sys.modules:
    raise SystemExit('Run as a program: XLA_FLAGS must be set before jax.')
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + f' --xla_force_host_platform_device_count={NUM_CPU_DEVICES}'
  )
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  per_device = [int(x) for x in args.per_device.split(',')]
  chips = [int(x) for x in args.chips.split(',')]
  alpha = args.alpha_us * 1e-6
  measured = {}
  for b in per_device:
    flops, reduces, params = compile_step(b)
    measured[b] = (flops, reduces)
    print(f'batch/device {b}: {flops / 1e9:.2f} GFLOP/device/step, '
          f'{len(reduces)} all-reduces, {sum(reduces) / 1e6:.2f} MB '
          f'(trained parameters: {params:,} = {params * 4 / 1e6:.2f} MB '
          'f32)', flush=True)
  print(f'\nAssumed: MFU {args.mfu}, {args.alpha_us:g} us per collective; '
        'published peak and all-reduce bandwidth (see the docstring).\n')
  for name, chip in CHIPS.items():
    print(f'TPU {name}: step time in ms (weak-scaling efficiency)')
    print('| batch/chip | ' + ' | '.join(f'{n} chips' for n in chips) + ' |')
    print('|---|' + '---|' * len(chips))
    for b in per_device:
      flops, reduces = measured[b]
      base = sum(step_time(flops, reduces, 1, chip, args.mfu, alpha))
      cells = []
      for n in chips:
        t = sum(step_time(flops, reduces, n, chip, args.mfu, alpha))
        cells.append(f'{t * 1e3:.2f} ({base / t:.0%})')
      print(f'| {b} | ' + ' | '.join(cells) + ' |')
    print()


if __name__ == '__main__':
  main()
