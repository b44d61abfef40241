"""Images/s of the input pipelines against what the train step consumes.

  python -m experiments.benchmark_input            # about two minutes
  python -m experiments.benchmark_input --no-step --images 512

Measured on this machine:

1. Per core (one process, one thread, no grain): the decode + augment of
   one example, for ImageNet's train transform (random-resized crop 224 +
   flip; with and without decoding JPEGs at a reduced scale), its eval
   transform (resize 256 + centre crop 224), and the CIFAR-style pad-crop
   of a 32x32 PNG. The JPEGs are synthetic, about ImageNet's mean size
   (500x375, ~100 KB; see ``fixtures.photo_like_jpeg``).
2. The real streaming pipeline end to end: the same JPEGs written as the
   ILSVRC2012 tars, prepared by TFDS's imagenet2012 builder as
   array_record, read by ``streaming.train_dataset`` through grain with 0
   (threads only) or more worker processes, local batches of 64.
3. The train step: KD, ResNet34 -> ResNet18 at 224x224, compiled as
   ``train_and_evaluate`` compiles it, on this machine's devices.

And on paper, what one host of a TPU slice consumes for the same step,
scaled from the published ResNet-50 throughput of the Flax ImageNet
example (README: TPU v3-8, 125,100 steps of batch 1024 in 4.4 h) by
the step's FLOPs and the chips' peak bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

# Flax examples/imagenet README, TPU v3-8 row: ResNet-50, 125,100 steps of
# batch 1024 in 4.4 h on one host (4 chips).
_V3_8_RESNET50_IMAGES_PER_S = 125_100 * 1024 / (4.4 * 3600)
# Forward GFLOPs per 224x224 image (torchvision / He et al.); a training
# step is about 3x the forward of the trained network.
_GFLOPS = {'resnet18': 1.82, 'resnet34': 3.67, 'resnet50': 4.11}
# Peak bf16 TFLOP/s per chip (Google Cloud TPU documentation) and chips per
# host of the usual slices.
_TPU = {'v3': (123, 4), 'v4': (275, 4), 'v5e': (197, 8)}


def paper_consumption() -> dict[str, float]:
  """Images/s one host consumes for KD ResNet34 -> ResNet18, per TPU."""
  resnet50_step = 3 * _GFLOPS['resnet50']
  kd_step = _GFLOPS['resnet34'] + 3 * _GFLOPS['resnet18']
  per_v3_host = _V3_8_RESNET50_IMAGES_PER_S * resnet50_step / kd_step
  v3_flops = _TPU['v3'][0] * _TPU['v3'][1]
  return {
    name: per_v3_host * flops * chips / v3_flops
    for name, (flops, chips) in _TPU.items()
  }


def _per_core(transform, records, rng_seed, seconds):
  """Examples/s of ``transform`` in this thread, cycling over records."""
  rng = np.random.default_rng(rng_seed)
  done, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    transform(records[done % len(records)], rng)
    done += 1
  return done / (time.perf_counter() - start)


def _png_32(seed):
  import io  # noqa: PLC0415

  from PIL import Image  # noqa: PLC0415

  pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3),
                                                np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='PNG')
  return out.getvalue()


def per_core_rows(args):
  from mhkd_jax.data import fixtures, streaming  # noqa: PLC0415

  jpegs = [fixtures.photo_like_jpeg(500, 375, i) for i in range(32)]
  mean_kb = statistics.mean(len(j) for j in jpegs) / 1024
  inception = streaming.ExampleTransform((224, 224, 3), crop='inception')
  exact = streaming.ExampleTransform((224, 224, 3), crop='inception',
                                     jpeg_draft=False)
  pad = streaming.ExampleTransform((32, 32, 3), crop='pad', padding=4)
  pngs = [_png_32(i) for i in range(32)]
  # The same photographs stored with the shorter side at 256 (as
  # resized-ImageNet pipelines store them): decoding is most of the cost.
  small = [fixtures.photo_like_jpeg(341, 256, i) for i in range(32)]
  cases = [
    ('ImageNet train: RRC 224 + flip, JPEG draft', inception, jpegs),
    ('ImageNet train: RRC 224 + flip, full decode', exact, jpegs),
    ('ImageNet eval: resize 256 + centre 224, draft',
     lambda r, _: inception(r, None), jpegs),
    ('ImageNet eval: resize 256 + centre 224, full',
     lambda r, _: exact(r, None), jpegs),
    ('ImageNet train, JPEGs stored at 341x256', inception, small),
    ('CIFAR-style: 32x32 PNG, pad-crop 4 + flip', pad, pngs),
  ]
  # Interleaved rounds, median: other users of a shared machine then
  # disturb every case alike (and the first round warms the caches).
  rates = {name: [] for name, _, _ in cases}
  for _ in range(args.rounds):
    for name, transform, records in cases:
      rates[name].append(
        _per_core(transform, records, 0, args.seconds / args.rounds))
  return mean_kb, [(name, statistics.median(r)) for name, r in rates.items()]


def pipeline_rows(args):
  """End-to-end grain pipeline over a prepared array_record ImageNet."""
  from mhkd_jax.data import datasets, fixtures, streaming  # noqa: PLC0415

  root = tempfile.mkdtemp(prefix='benchmark_input_')
  manual, data_dir = os.path.join(root, 'manual'), os.path.join(root, 'tfds')
  os.makedirs(manual)
  per_synset = args.images // 2
  fixtures.write_imagenet_tars(
    manual, ('n01440764', 'n01443537'), [(500, 375)] * per_synset, 8
  )
  start = time.perf_counter()
  datasets.prepare('imagenet2012', data_dir, manual_dir=manual)
  print(f'(prepared {2 * per_synset} JPEGs as array_record in '
        f'{time.perf_counter() - start:.0f} s)')
  info = datasets.dataset_info('imagenet2012')
  source = streaming.open_source(info, 'train', data_dir)
  transform = streaming.ExampleTransform(info.image_shape, crop='inception')
  batch = args.batch
  rows = []
  for workers, threads in args.configs:
    dataset = streaming.train_dataset(
      source, transform, batch_size=batch, rows=np.arange(batch),
      seeds=(0, 1),
    )
    iterator = streaming.iterate(dataset, num_workers=workers,
                                 num_threads=threads, prefetch=2)
    try:
      next(iterator)  # start-up (worker processes) is not timed
      done, start = 0, time.perf_counter()
      while time.perf_counter() - start < args.seconds:
        next(iterator)
        done += batch
      rate = done / (time.perf_counter() - start)
    finally:
      iterator.close()
    rows.append((f'grain, {workers} workers x {threads} threads', rate))
  return rows


def step_rate(args):
  """Images/s of the KD ResNet34 -> ResNet18 train step at 224x224."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from mhkd_jax import (  # noqa: PLC0415
    distill,
    parallel,
    steps,
    train_state,  # noqa: PLC0415
  )
  from mhkd_jax.configs import imagenet_resnet34_resnet18  # noqa: PLC0415
  from mhkd_jax.data.input_pipeline import Batch  # noqa: PLC0415
  from mhkd_jax.distill.base import DataSpec, Teacher  # noqa: PLC0415
  from mhkd_jax.models import create_model  # noqa: PLC0415

  config = imagenet_resnet34_resnet18.get_config('kd')
  config.batch_size = b = args.step_batch
  method = distill.create_method(config)
  data = DataSpec(1000, (224, 224, 3), 1_281_167, 1_281_167 // b)
  teacher = Teacher(create_model('imagenet_resnet34', num_classes=1000,
                                 rngs=nnx.Rngs(1)), None,
                    name='imagenet_resnet34')
  mesh = parallel.create_mesh()
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=data, mesh=mesh)
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=data, compiler_options=steps.compiler_options(mesh))
  sharding = parallel.data_sharded(mesh)
  batch = jax.device_put(Batch(
    jnp.asarray(np.random.default_rng(0).normal(size=(b, 224, 224, 3)),
                jnp.float32),
    jnp.zeros((b,), jnp.int32), jnp.arange(b, dtype=jnp.int32)), sharding)
  start = time.perf_counter()
  state, _ = train_step(state, batch, t_state)
  jax.block_until_ready(state)
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    state, metrics = train_step(state, batch, t_state)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return b / statistics.median(times), compile_s, jax.devices()[0]


def _parse_args(argv=None):
  p = argparse.ArgumentParser(
    prog='python -m experiments.benchmark_input', description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--seconds', type=float, default=6.0,
                 help='timed seconds per measurement')
  p.add_argument('--rounds', type=int, default=3,
                 help='interleaved rounds of the per-core measurements')
  p.add_argument('--images', type=int, default=128,
                 help='JPEGs of the end-to-end data set')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--workers', default='0x1,0x2,2x1',
                 help='end-to-end cases, WORKERSxTHREADS, comma-separated')
  p.add_argument('--step', action=argparse.BooleanOptionalAction,
                 default=True, help='also time the train step')
  p.add_argument('--step-batch', type=int, default=8)
  p.add_argument('--steps', type=int, default=3)
  args = p.parse_args(argv)
  args.configs = [tuple(int(v) for v in c.split('x'))
                  for c in args.workers.split(',')]
  return args


def main(argv=None):
  args = _parse_args(argv)
  cores = len(os.sched_getaffinity(0))
  print(f'{cores} CPU cores available to this process.')
  mean_kb, rows = per_core_rows(args)
  print(f'\nPer core (one thread), synthetic 500x375 JPEGs of {mean_kb:.0f} '
        'KB:\n')
  print('| transform | images/s per core |\n|---|---:|')
  for name, rate in rows:
    print(f'| {name} | {rate:,.0f} |')
  per_core = rows[0][1]

  print(f'\nEnd to end (array_record -> grain -> uint8 batches of '
        f'{args.batch}), this machine ({cores} cores):\n')
  print('| pipeline | images/s |\n|---|---:|')
  for name, rate in pipeline_rows(args):
    print(f'| {name} | {rate:,.0f} |')

  if args.step:
    rate, compile_s, device = step_rate(args)
    print(f'\nTrain step KD ResNet34 -> ResNet18, 224x224, batch '
          f'{args.step_batch} on {device.platform} ({device.device_kind}): '
          f'{rate:,.1f} images/s (compile {compile_s:.0f} s); the input '
          f'path here gives {per_core * cores / rate:,.0f}x that.')

  print('\nOn paper, one host, KD ResNet34 -> ResNet18 (scaled from the '
        'Flax ImageNet README\'s ResNet-50 on TPU v3-8 by step FLOPs and '
        'peak bf16 FLOP/s):\n')
  print('| host | images/s consumed | cores for 1.5x (train, draft) |\n'
        '|---|---:|---:|')
  for name, rate in paper_consumption().items():
    chips = _TPU[name][1]
    print(f'| TPU {name}, {chips} chips | {rate:,.0f} | '
          f'{1.5 * rate / per_core:,.0f} |')


if __name__ == '__main__':
  main()
