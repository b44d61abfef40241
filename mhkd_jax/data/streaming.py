"""The streaming input: grain over TFDS array_record sources, per process.

For data sets too large to keep on the accelerators (ImageNet: 1.28M
JPEGs), every process reads only its rows of each global batch from a
random-access TFDS data source, decodes and augments them in grain worker
processes, and the batch becomes one global array through
``jax.make_array_from_process_local_data``. Normalisation runs on the
device, so uint8 crosses the host-device link (4x less than float32).

Why grain over tf.data: grain's ``MapDataset`` is random access, so batch
k can be computed directly from k without replaying a stream; it needs no
TensorFlow at training time; it shards per process by plain indexing; and
``mp_prefetch`` runs the Python decode/augment in worker processes.

Position and resume: as in the other inputs, batch k is a pure function
of (the run's data key, k). The epoch order is grain's index shuffle with a
seed drawn from the data key (a different permutation per epoch, computed
per index, so nothing of size N is materialised); each example's
augmentation comes from a generator seeded with (data key, step, row of
the global batch). Nothing but the step needs saving, so a restarted run
sees exactly the batches of an uninterrupted one, the result does not
depend on the number of processes or workers, and grain's own iterator
state is not needed in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import flags, logging
from PIL import Image

from mhkd_jax import parallel
from mhkd_jax.data import augment, datasets
from mhkd_jax.run import errors

try:
  # Only `config.data.pipeline='stream'` imports this module.
  import grain
except ImportError as e:
  raise datasets.MissingExtraError(
    f"The streaming input (config.data.pipeline='stream') needs grain, "
    f"which is not installed ({e}). Install it with `pip install "
    f"'.[stream]'`, or use data.pipeline='device' or 'host'."
  ) from e

# grain's MapDataset needs a length; training is endless in practice.
_ENDLESS = 2**40
# Attempts at a valid random-resized crop before the central fallback
# (torchvision's RandomResizedCrop).
_CROP_ATTEMPTS = 10


# --------------------------------------------------------------------------
# Per-example decoding and augmentation (runs in worker processes).


def random_resized_crop_box(
  rng: np.random.Generator,
  width: int,
  height: int,
  scale: tuple[float, float] = (0.08, 1.0),
  ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop region: (left, top, width, height).

  The area fraction is uniform in ``scale`` and the aspect ratio
  log-uniform in ``ratio``; after ``_CROP_ATTEMPTS`` misses it falls back to
  the largest central crop whose ratio is within ``ratio``, as torchvision
  does, so the recipe matches the PyTorch ImageNet baselines.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(_CROP_ATTEMPTS):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(
  width: int, height: int, fraction: float
) -> tuple[int, int, int, int]:
  """The central square that Resize(s) + CenterCrop(fraction * s) keeps.

  Resizing the shorter side to s and cropping ``fraction * s`` keeps a
  square of ``fraction * min(width, height)`` original pixels; resampling
  that square once gives the same view without the intermediate image.
  """
  side = int(round(fraction * min(width, height)))
  return (width - side) // 2, (height - side) // 2, side, side


def _resample(
  image: Image.Image, box: tuple[int, int, int, int], size: tuple[int, int],
  draft: bool,
) -> np.ndarray:
  """Crops ``box`` (left, top, w, h) and resizes it to ``size`` (h, w).

  With ``draft``, a JPEG is decoded at the smallest 1/2, 1/4 or 1/8 scale
  that still leaves the crop at least ``size``: the DCT-domain reduction
  is most of the decoding cost of a large photo, and the downscale that
  follows is antialiased anyway.
  """
  left, top, w, h = box
  out_h, out_w = size
  if draft and image.format == 'JPEG':
    factor = min(w / out_w, h / out_h)
    if factor >= 2:
      full_w, full_h = image.size
      image.draft('RGB', (math.ceil(full_w / factor),
                          math.ceil(full_h / factor)))
      sx, sy = image.size[0] / full_w, image.size[1] / full_h
      left, top, w, h = left * sx, top * sy, w * sx, h * sy
  image = image.convert('RGB')
  out = image.resize((out_w, out_h), Image.BILINEAR,
                     box=(left, top, left + w, top + h))
  return np.asarray(out, np.uint8)


@dataclasses.dataclass(frozen=True)
class ExampleTransform:
  """Encoded image -> uint8 [H, W, C] model input, before normalisation.

  Attributes:
    image_shape: the output (height, width, channels).
    crop: 'pad' (CIFAR: zero-pad by ``padding``, random crop back, as on
      the device) or 'inception' (ImageNet: random-resized crop at
      train, resize + centre crop of ``eval_fraction`` at eval).
    padding: the 'pad' crop's padding.
    flip: random horizontal flip at train.
    eval_fraction: the 'inception' eval crop (224 / 256).
    jpeg_draft: decode training JPEGs at a reduced scale where the crop
      allows (the random-resized crop is resampled anyway).
    jpeg_draft_eval: the same for evaluation; off by default, so the
      reported accuracy is on full decodes, as torchvision's.
  """

  image_shape: tuple[int, int, int]
  crop: str = 'pad'
  padding: int = 4
  flip: bool = True
  eval_fraction: float = 0.875
  jpeg_draft: bool = True
  jpeg_draft_eval: bool = False

  def __call__(
    self, encoded: bytes, rng: np.random.Generator | None
  ) -> np.ndarray:
    """Train transform with ``rng``; eval transform with None."""
    image = Image.open(io.BytesIO(encoded))
    if self.crop == 'inception':
      out = self._inception(image, rng)
    else:
      out = self._pad_crop(image, rng)
    if rng is not None and self.flip and rng.random() < 0.5:
      out = out[:, ::-1]
    return np.ascontiguousarray(out)

  def _inception(self, image, rng):
    width, height = image.size
    if rng is None:
      box = center_crop_box(width, height, self.eval_fraction)
      draft = self.jpeg_draft_eval
    else:
      box = random_resized_crop_box(rng, width, height)
      draft = self.jpeg_draft
    return _resample(image, box, self.image_shape[:2], draft)

  def _pad_crop(self, image, rng):
    if image.mode not in ('L', 'RGB'):
      image = image.convert('RGB')  # palette, CMYK, alpha
    array = np.asarray(image, np.uint8)
    if array.ndim == 2:
      array = array[..., None]
    # Same padding / channel tiling as the whole-split loader.
    array = datasets._to_image_shape(array[None], self.image_shape)[0]
    if rng is None or self.padding == 0:
      return array
    p = self.padding
    padded = np.pad(array, ((p, p), (p, p), (0, 0)))
    dy, dx = rng.integers(0, 2 * p + 1, size=2)
    h, w = array.shape[:2]
    return padded[dy:dy + h, dx:dx + w]


def example_transform(data_config, info: datasets.DatasetInfo):
  flip = data_config.random_flip
  return ExampleTransform(
    image_shape=info.image_shape,
    crop=info.train_crop,
    padding=data_config.crop_padding,
    flip=info.random_flip if flip is None else flip,
    eval_fraction=info.eval_crop_fraction,
    jpeg_draft=data_config.jpeg_draft,
    jpeg_draft_eval=data_config.jpeg_draft_eval,
  )


# --------------------------------------------------------------------------
# Which records make batch k, and reading them (pure; picklable).


def process_rows(
  process_index: int, process_count: int, batch_size: int
) -> np.ndarray:
  """Rows of a global batch that process i of n reads on a 1-D data mesh.

  The mesh's devices are ordered by process, so each process holds one
  contiguous block; ``parallel.process_rows`` gives the same rows from the
  actual sharding. This form lets tests play several processes in one.
  """
  if batch_size % process_count:
    raise errors.ConfigError(
      f'batch size {batch_size} is not divisible by {process_count} '
      'processes.'
    )
  local = batch_size // process_count
  return np.arange(process_index * local, (process_index + 1) * local)


def order_seed(rng: jax.Array) -> tuple[int, int]:
  """(shuffle seed, augmentation seed) from the run's data key."""
  order_key, augment_key = jax.random.split(rng)
  bits = [jax.random.bits(k, (), np.uint32) for k in (order_key, augment_key)]
  return tuple(int(b) for b in jax.device_get(bits))


@dataclasses.dataclass(frozen=True)
class _TrainBatchReader:
  """Step -> this process's rows of global batch ``step`` (host numpy)."""

  source: Sequence
  order: grain.MapDataset  # epoch-major position -> record index
  transform: ExampleTransform
  rows: np.ndarray
  batch_size: int
  num_examples: int
  steps_per_epoch: int
  augment_seed: int

  def positions(self, step: int) -> np.ndarray:
    """Record indices of this process's rows of batch ``step``."""
    epoch, position = divmod(step, self.steps_per_epoch)
    start = epoch * self.num_examples + position * self.batch_size
    return np.asarray([self.order[start + r] for r in self.rows], np.int64)

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    indices = self.positions(step)
    records = self.source.__getitems__(indices.tolist())
    images = []
    for row, record in zip(self.rows, records, strict=True):
      rng = np.random.default_rng([self.augment_seed, step, int(row)])
      images.append(self.transform(record['image'], rng))
    return {
      'images': np.stack(images),
      'labels': np.asarray([r['label'] for r in records], np.int32),
      'indices': indices.astype(np.int32),
    }


@dataclasses.dataclass(frozen=True)
class _EvalBatchReader:
  """Batch i -> this process's rows of padded eval batch i, with a mask."""

  source: Sequence
  transform: ExampleTransform
  rows: np.ndarray
  batch_size: int
  num_examples: int

  def __call__(self, batch: int) -> dict[str, np.ndarray]:
    indices = batch * self.batch_size + self.rows
    mask = indices < self.num_examples
    real = indices[mask]
    records = self.source.__getitems__(real.tolist()) if len(real) else []
    images = np.zeros((len(indices),) + self.transform.image_shape, np.uint8)
    labels = np.zeros((len(indices),), np.int32)
    for slot, record in zip(np.flatnonzero(mask), records, strict=True):
      images[slot] = self.transform(record['image'], None)
      labels[slot] = record['label']
    return {
      'images': images, 'labels': labels,
      'indices': indices.astype(np.int32), 'mask': mask,
    }


def train_dataset(
  source: Sequence,
  transform: ExampleTransform,
  *,
  batch_size: int,
  rows: np.ndarray,
  seeds: tuple[int, int],
  start_step: int = 0,
  num_examples: int | None = None,
) -> grain.MapDataset:
  """Element j: this process's rows of global batch ``start_step + j``.

  Args:
    source: a random-access source of {'image': encoded, 'label': int}.
    transform: decoding and augmentation of one example.
    batch_size: the global batch size.
    rows: the rows of each global batch this process reads.
    seeds: (shuffle seed, augmentation seed), see ``order_seed``.
    start_step: the first step (resume).
    num_examples: use the first this many records (None: all).
  """
  n = len(source) if num_examples is None else num_examples
  steps_per_epoch = n // batch_size
  if steps_per_epoch == 0:
    raise errors.ConfigError(
      f'config.batch_size={batch_size} is larger than the {n} training '
      'examples.'
    )
  order = grain.MapDataset.range(n).shuffle(seed=seeds[0]).repeat(None)
  reader = _TrainBatchReader(
    source=source, order=order, transform=transform,
    rows=np.asarray(rows), batch_size=batch_size, num_examples=n,
    steps_per_epoch=steps_per_epoch, augment_seed=seeds[1],
  )
  return grain.MapDataset.range(start_step, _ENDLESS).map(reader)


def eval_dataset(
  source: Sequence,
  transform: ExampleTransform,
  *,
  batch_size: int,
  rows: np.ndarray,
  num_examples: int | None = None,
) -> grain.MapDataset:
  """Element i: this process's rows of eval batch i, padding masked."""
  n = len(source) if num_examples is None else num_examples
  reader = _EvalBatchReader(
    source=source, transform=transform, rows=np.asarray(rows),
    batch_size=batch_size, num_examples=n,
  )
  return grain.MapDataset.range(math.ceil(n / batch_size)).map(reader)


def iterate(
  dataset: grain.MapDataset, *, num_workers: int, num_threads: int,
  prefetch: int,
) -> grain.DatasetIterator:
  """An iterator over ``dataset``: threads, then worker processes.

  Each worker process computes whole batches (worker w: elements w, w+W,
  ...) and grain returns them in order, so the batches do not depend on
  the number of workers.
  """
  ds = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
  )
  if num_workers > 0:
    if not flags.FLAGS.is_parsed():
      # grain's workers read its absl flags; outside an absl app (tests,
      # notebooks) nothing parsed them, so take their defaults.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=prefetch
    ))
  return iter(ds)


def _loader_options(data) -> dict:
  """``iterate``'s settings from ``config.data``."""
  return dict(num_workers=data.num_workers, num_threads=data.num_threads,
              prefetch=data.prefetch_batches)


def _iterate_and_close(dataset: grain.MapDataset, options: dict):
  """Yields ``dataset``'s batches; when the consumer stops (or the
  generator is closed) the iterator is closed, ending its worker
  processes."""
  iterator = iterate(dataset, **options)
  try:
    yield from iterator
  finally:
    close = getattr(iterator, 'close', None)
    if close is not None:
      close()


# --------------------------------------------------------------------------
# Opening a prepared source.


def open_source(
  info: datasets.DatasetInfo, split: str, data_dir: str | None
) -> Sequence:
  """The array_record data source of a split, images left encoded.

  Raises:
    DatasetNotPreparedError: not prepared in ``data_dir``, or prepared in
      a format that has no random access (tfrecord); the message gives the
      command that prepares it.
  """
  tfds = datasets.import_tfds()
  builder = datasets.create_builder(info.name, data_dir)
  command = datasets.prepare_command(
    info.name, data_dir, file_format='array_record'
  )
  if not builder.is_prepared():
    raise datasets.DatasetNotPreparedError(
      f'Data set {info.name!r} is not prepared in {builder.data_dir_root}. '
      f'The streaming pipeline reads array_record; prepare it once with:\n'
      f'  {command}'
    )
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise datasets.DatasetNotPreparedError(
      f'Data set {info.name!r} in {builder.data_dir} is prepared as '
      f'{builder.info.file_format.value}, which the streaming pipeline '
      'cannot read at random; use another config.data.pipeline, or '
      f'prepare it as array_record in another data_dir:\n  {command}'
    )
  if split not in builder.info.splits:
    raise errors.ConfigError(
      f'{info.name} has no split {split!r}; it has '
      f'{", ".join(builder.info.splits)}.'
    )
  return builder.as_data_source(
    split=split, decoders={'image': tfds.decode.SkipDecoding()}
  )


def _checked_size(name, split, source, requested):
  datasets._check_num_examples(name, split, requested, len(source))
  return len(source) if requested is None else requested


# --------------------------------------------------------------------------
# The inputs.


class _Device:
  """Host-local uint8 rows -> a normalised global ``Batch``."""

  def __init__(self, info, batch_size, mesh):
    self._sharding = parallel.data_sharded(mesh)
    self._batch_size = batch_size
    self._normalize = jax.jit(
      lambda images, *rest: _normalized_batch(info, images, *rest),
      out_shardings=self._sharding,
    )

  def __call__(self, local: dict[str, np.ndarray]):
    keys = ('images', 'labels', 'indices', 'mask')
    arrays = [
      parallel.global_batch(local[k], self._sharding, self._batch_size)
      for k in keys if k in local
    ]
    return self._normalize(*arrays)


def _normalized_batch(info, images, labels, indices, mask=None):
  """The device half of the pipeline: uint8 in, normalised out."""
  from mhkd_jax.data import input_pipeline  # noqa: PLC0415 (inputs imports us)

  return input_pipeline.Batch(
    augment.normalize(images, info.mean, info.std), labels, indices, mask
  )


class StreamingInput:
  """Train batches streamed from an array_record source, per process."""

  def __init__(self, config, info: datasets.DatasetInfo, mesh, *,
               source: Sequence | None = None):
    data = config.data
    self._source = source if source is not None else open_source(
      info, data.train_split, data.data_dir
    )
    self.num_examples = _checked_size(
      info.name, data.train_split, self._source, data.num_train_examples
    )
    self.batch_size = config.batch_size
    self.steps_per_epoch = self.num_examples // self.batch_size
    if self.steps_per_epoch == 0:
      raise errors.ConfigError(
        f'config.batch_size={self.batch_size} is larger than the '
        f'{self.num_examples} training examples.'
      )
    self.example_shape = tuple(info.image_shape)
    # Reading every label would mean reading every record: not offered.
    self.labels_by_index = None
    self._transform = example_transform(data, info)
    self._options = _loader_options(data)
    self._rows = parallel.process_rows(
      parallel.data_sharded(mesh), self.batch_size
    )
    self._device = _Device(info, self.batch_size, mesh)

  def local_batches(self, start_step, rng):
    """This process's host batches (numpy), from ``start_step`` on."""
    dataset = train_dataset(
      self._source, self._transform, batch_size=self.batch_size,
      rows=self._rows, seeds=order_seed(rng), start_step=start_step,
      num_examples=self.num_examples,
    )
    yield from _iterate_and_close(dataset, self._options)

  def batches(self, start_step, rng):
    logging.info('Streaming %d train examples, %s workers from step %d.',
                 self.num_examples, self._options['num_workers'], start_step)
    for local in self.local_batches(start_step, rng):
      yield self._device(local)


class StreamingEvalInput:
  """The eval split streamed once per evaluation, padded and masked."""

  def __init__(self, config, info, mesh, *, source=None):
    data = config.data
    self._source = source if source is not None else open_source(
      info, data.eval_split, data.data_dir
    )
    self.num_examples = _checked_size(
      info.name, data.eval_split, self._source, data.num_eval_examples
    )
    batch_size = config.eval_batch_size
    self.num_batches = math.ceil(self.num_examples / batch_size)
    self._dataset = eval_dataset(
      self._source, example_transform(data, info), batch_size=batch_size,
      rows=parallel.process_rows(parallel.data_sharded(mesh), batch_size),
      num_examples=self.num_examples,
    )
    self._options = _loader_options(data)
    self._device = _Device(info, batch_size, mesh)

  def local_batches(self) -> Iterator[dict[str, np.ndarray]]:
    yield from _iterate_and_close(self._dataset, self._options)

  def batches(self):
    for local in self.local_batches():
      yield self._device(local)


def create_inputs(config, mesh):
  """(train, eval, info) of the streaming pipeline."""
  info = datasets.dataset_info(config.data.name)
  return (StreamingInput(config, info, mesh),
          StreamingEvalInput(config, info, mesh), info)
