"""The trainer's input seam: a ``Batch``, and the inputs that produce them.

The train step takes a ``Batch`` and never knows where it came from. An
input is anything with the ``TrainInput`` (or ``EvalInput``) interface:

* ``DeviceResidentInput``: the CIFAR-scale fast path. The whole split
  lives on the devices as uint8; one small jitted program per step takes
  the epoch permutation's slice, gathers, crops, flips and normalises on
  the device, its position and augmentation key derived there from the
  step, so nothing crosses from the host and no host pipeline can starve
  the step.
* ``HostFedInput``: the host holds the split and sends each process's rows
  of every batch (``jax.make_array_from_process_local_data``); crop, flip
  and normalisation then run on the device. It is the shape of a streaming
  pipeline (a host iterator feeding per-process shards), and it yields
  exactly the batches of the resident path.

A train input's position is the step: batch k is a pure function of
(the run's data key, k), so a resumed run draws exactly the batches an
uninterrupted one would have, and nothing beyond the train state needs
saving. The data key's halves give the epoch order (folded with the
epoch) and the augmentation (folded with the step).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from mhkd_jax import parallel
from mhkd_jax.data import augment, datasets
from mhkd_jax.distill import base
from mhkd_jax.run import errors

PIPELINES = ('device', 'host', 'stream')
# The pipelines that can give a batch MLKD's strong view (``Batch.extras``
# under STRONG_IMAGES); the streaming one cannot.
STRONG_VIEW_PIPELINES = ('device', 'host')
STRONG_IMAGES = base.STRONG_IMAGES
# The strong view's key is the batch's augmentation key folded with this:
# the weak view's draws stay exactly those of a one-view run.
_STRONG_VIEW_STREAM = 1


@dataclasses.dataclass
class Batch:
  """One global batch, sharded over the data axis.

  Attributes:
    images: float32 [B, H, W, C], augmented (train) and normalised.
    labels: int32 [B].
    indices: int32 [B], each example's row in its split (a CRD memory bank
      is indexed by it).
    mask: bool [B], False on padding rows (evaluation); None in training.
    extras: whatever else a pipeline provides, by name.
  """

  images: jax.Array
  labels: jax.Array
  indices: jax.Array
  mask: jax.Array | None = None
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


jax.tree_util.register_dataclass(
  Batch, data_fields=['images', 'labels', 'indices', 'mask', 'extras'],
  meta_fields=[],
)


class TrainInput(Protocol):
  """What the training loop asks of an input."""

  num_examples: int
  batch_size: int
  steps_per_epoch: int
  example_shape: tuple[int, int, int]
  # int [num_examples] on the host, or None if the input cannot say.
  labels_by_index: np.ndarray | None

  def batches(self, start_step: int, rng: jax.Array) -> Iterator[Batch]:
    """Batches ``start_step``, ``start_step + 1``, ... (endless)."""
    ...


class EvalInput(Protocol):
  """What evaluation asks of an input: the whole split, padded."""

  num_examples: int
  num_batches: int

  def batches(self) -> Iterator[Batch]:
    ...


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How raw uint8 images become model inputs."""

  mean: tuple[float, ...]
  std: tuple[float, ...]
  crop_padding: int
  random_flip: bool
  # Also make MLKD's strong view (``augment.strong_augment``) of each
  # training batch, in ``Batch.extras[STRONG_IMAGES]``.
  strong_view: bool = False

  @classmethod
  def from_config(cls, data_config, info: datasets.DatasetInfo,
                  strong_view: bool = False):
    flip = data_config.random_flip
    return cls(
      mean=info.mean, std=info.std, crop_padding=data_config.crop_padding,
      random_flip=info.random_flip if flip is None else flip,
      strong_view=strong_view,
    )

  def train_batch(self, rng, images, labels, indices) -> Batch:
    """The training batch of these uint8 images: the weak view (crop,
    flip, normalise) and, if asked for, the strong view in its extras."""
    extras = {}
    if self.strong_view:
      strong = augment.strong_augment(
        jax.random.fold_in(rng, _STRONG_VIEW_STREAM), images,
        padding=self.crop_padding, flip=self.random_flip,
      )
      extras[STRONG_IMAGES] = self.eval(strong)
    return Batch(self.train(rng, images), labels, indices, extras=extras)

  def train(self, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Random crop and flip (torchvision's recipe), then normalisation."""
    images = augment.random_crop_flip(
      rng, images, padding=self.crop_padding, flip=self.random_flip
    )
    return self.eval(images)

  def eval(self, images: jax.Array) -> jax.Array:
    return augment.normalize(images, self.mean, self.std)


def _epoch_order(order_key, epoch, num_examples):
  return augment.epoch_permutation(order_key, epoch, num_examples)


class _StepKeyed:
  """Shared bookkeeping: sizes, and the keys of batch k."""

  def __init__(self, split, preprocessing, batch_size, mesh):
    self.num_examples = len(split)
    self.batch_size = batch_size
    self.steps_per_epoch = self.num_examples // batch_size
    self.example_shape = tuple(split.images.shape[1:])
    self.labels_by_index = split.labels
    if self.steps_per_epoch == 0:
      raise errors.ConfigError(
        f'config.batch_size={batch_size} is larger than the '
        f'{self.num_examples} training examples.'
      )
    self.preprocessing = preprocessing
    self.mesh = mesh
    self._permutation = jax.jit(
      functools.partial(_epoch_order, num_examples=self.num_examples),
      out_shardings=parallel.replicated(mesh),
    )

  def _keyed_positions(self, start_step, rng):
    """(epoch order, position in the epoch, augmentation key) per step,
    computed on the host side step by step (an eager ``fold_in`` each).
    The inputs below derive the same values inside their one program per
    step (``_epoch_orders``, ``batch_key``); this is what the benchmark's
    fused-input variant feeds the step."""
    order_key, augment_key = jax.random.split(rng)
    order, order_epoch = None, -1
    for step in itertools.count(start_step):
      epoch, position = divmod(step, self.steps_per_epoch)
      if epoch != order_epoch:
        order, order_epoch = self._permutation(order_key, epoch), epoch
      yield order, position, jax.random.fold_in(augment_key, step)

  def _epoch_orders(self, start_step, rng):
    """(augmentation key, the epoch order of each step from
    ``start_step``): the order is drawn once per epoch, by its own
    program; everything else a batch needs comes from the step."""
    order_key, augment_key = jax.random.split(rng)
    order, order_epoch = None, -1
    for step in itertools.count(start_step):
      epoch = step // self.steps_per_epoch
      if epoch != order_epoch:
        order, order_epoch = self._permutation(order_key, epoch), epoch
      yield augment_key, order


def batch_key(augment_key: jax.Array, step: jax.Array) -> jax.Array:
  """The augmentation key of batch ``step`` (traced inside the input's
  program: no eager ``fold_in`` per step)."""
  return jax.random.fold_in(augment_key, step)


class DeviceResidentInput(_StepKeyed):
  """The whole split on every device; batches made on the device.

  Each batch is one program (``_batch_at``): from the step, a device
  scalar that the previous batch's program returned, it takes the
  position in the epoch and the augmentation key, then gathers, crops,
  flips and normalises. Nothing is computed eagerly and nothing crosses
  from the host per step, so on an accelerator the host only enqueues.
  """

  def __init__(self, split, preprocessing, *, batch_size, mesh):
    super().__init__(split, preprocessing, batch_size, mesh)
    self.images, self.labels = parallel.replicate(
      (split.images, split.labels), mesh
    )
    self._next = jax.jit(
      self._batch_at,
      out_shardings=(parallel.data_sharded(mesh), parallel.replicated(mesh)),
    )

  def _batch_at(self, images, labels, order, augment_key, step):
    """(batch ``step``, ``step + 1``) given the step's epoch order."""
    batch = self.gather(images, labels, order, step % self.steps_per_epoch,
                        batch_key(augment_key, step))
    return batch, step + 1

  def gather(self, images, labels, order, position, rng) -> Batch:
    """Batch ``position`` of an epoch ``order``, augmented (pure)."""
    idx = jax.lax.dynamic_slice_in_dim(
      order, position * self.batch_size, self.batch_size
    )
    # The batch is split over the 'data' axis from here on.
    idx = jax.lax.with_sharding_constraint(
      idx, parallel.data_sharded(self.mesh)
    )
    return self.preprocessing.train_batch(rng, images[idx], labels[idx],
                                          idx)

  def batches(self, start_step, rng):
    # The step lives on the device from here on: one transfer per run.
    step = parallel.replicate(np.int32(start_step), self.mesh)
    for augment_key, order in self._epoch_orders(start_step, rng):
      batch, step = self._next(self.images, self.labels, order, augment_key,
                               step)
      yield batch


class HostFedInput(_StepKeyed):
  """The split in host memory; each process sends its rows of a batch."""

  def __init__(self, split, preprocessing, *, batch_size, mesh):
    super().__init__(split, preprocessing, batch_size, mesh)
    self._split = split
    self._sharding = parallel.data_sharded(mesh)
    self._rows = parallel.process_rows(self._sharding, batch_size)
    self._augment = jax.jit(self._augment_batch,
                            out_shardings=self._sharding)

  def _augment_batch(self, augment_key, step, images, labels,
                     indices) -> Batch:
    return self.preprocessing.train_batch(batch_key(augment_key, step),
                                          images, labels, indices)

  def batches(self, start_step, rng):
    host_order, order_seen = None, None
    orders = self._epoch_orders(start_step, rng)
    for step, (augment_key, order) in zip(itertools.count(start_step),
                                          orders):
      if order is not order_seen:
        host_order, order_seen = np.asarray(jax.device_get(order)), order
      start = (step % self.steps_per_epoch) * self.batch_size
      rows = host_order[start:start + self.batch_size][self._rows]
      local = (self._split.images[rows], self._split.labels[rows], rows)
      images, labels, indices = (
        parallel.global_batch(x, self._sharding, self.batch_size)
        for x in local
      )
      # The step goes with the batch's own transfer.
      yield self._augment(augment_key, np.int32(step), images, labels,
                          indices)


def _padded(split: datasets.ArraySplit, batch_size: int):
  """(images, labels, indices, mask) padded to whole batches."""
  n = len(split)
  extra = math.ceil(n / batch_size) * batch_size - n
  images = np.concatenate(
    [split.images, np.zeros((extra,) + split.images.shape[1:], np.uint8)]
  )
  labels = np.concatenate([split.labels, np.zeros((extra,), np.int32)])
  indices = np.arange(n + extra, dtype=np.int32)
  mask = np.concatenate([np.ones((n,), bool), np.zeros((extra,), bool)])
  return images, labels, indices, mask


class DeviceResidentEvalInput:
  """The padded eval split on every device, sliced and normalised there."""

  def __init__(self, split, preprocessing, *, batch_size, mesh):
    self.num_examples = len(split)
    self.num_batches = math.ceil(self.num_examples / batch_size)
    self._arrays = parallel.replicate(_padded(split, batch_size), mesh)
    sharding = parallel.data_sharded(mesh)

    def take(arrays, index) -> Batch:
      images, labels, indices, mask = (
        jax.lax.with_sharding_constraint(
          jax.lax.dynamic_slice_in_dim(a, index * batch_size, batch_size),
          sharding,
        )
        for a in arrays
      )
      return Batch(preprocessing.eval(images), labels, indices, mask)

    self._take = jax.jit(take, out_shardings=sharding)

  def batches(self):
    for i in range(self.num_batches):
      yield self._take(self._arrays, jnp.int32(i))


class HostFedEvalInput:
  """The padded eval split on the host; each process sends its rows."""

  def __init__(self, split, preprocessing, *, batch_size, mesh):
    self.num_examples = len(split)
    self.num_batches = math.ceil(self.num_examples / batch_size)
    self._arrays = _padded(split, batch_size)
    self._batch_size = batch_size
    self._sharding = parallel.data_sharded(mesh)
    self._rows = parallel.process_rows(self._sharding, batch_size)
    self._normalize = jax.jit(
      lambda images, *rest: Batch(preprocessing.eval(images), *rest),
      out_shardings=self._sharding,
    )

  def batches(self):
    for i in range(self.num_batches):
      rows = i * self._batch_size + self._rows
      yield self._normalize(*(
        parallel.global_batch(a[rows], self._sharding, self._batch_size)
        for a in self._arrays
      ))


_TRAIN_INPUTS = {'device': DeviceResidentInput, 'host': HostFedInput}
_EVAL_INPUTS = {'device': DeviceResidentEvalInput, 'host': HostFedEvalInput}


def create_inputs(
  config, mesh: Mesh, *, strong_view: bool = False,
) -> tuple[TrainInput, EvalInput, datasets.DatasetInfo]:
  """The train and eval inputs that ``config.data`` describes.

  ``config.data.pipeline`` picks where batches are made: 'device' (the
  split resident on the devices), 'host' (host-fed, per process) or
  'stream' (``streaming.py``: read, decoded and augmented per process
  from an array_record source, for data sets that fit nowhere whole).
  ``strong_view``: training batches also carry MLKD's strong view
  (``Method.needs_strong_view``; the device and host pipelines only).
  """
  pipeline = config.data.pipeline  # a valid one (run.validation)
  if strong_view and pipeline not in STRONG_VIEW_PIPELINES:
    raise errors.ConfigError(
      f'config.method={config.method!r} trains on a weak and a strong '
      f'view of every image, which only data.pipeline='
      f'{" or ".join(map(repr, STRONG_VIEW_PIPELINES))} make (the strong '
      f'view is augmented on the device); data.pipeline={pipeline!r} '
      'gives one view. Use --config.data.pipeline=device for a data set '
      'that fits in memory.'
    )
  if pipeline == 'stream':
    from mhkd_jax.data import streaming  # noqa: PLC0415 (imports grain)

    return streaming.create_inputs(config, mesh)
  train_split, eval_split, info = datasets.load_datasets(config.data)
  preprocessing = Preprocessing.from_config(config.data, info,
                                           strong_view=strong_view)
  train_input = _TRAIN_INPUTS[pipeline](
    train_split, preprocessing, batch_size=config.batch_size, mesh=mesh
  )
  eval_input = _EVAL_INPUTS[pipeline](
    eval_split, preprocessing, batch_size=config.eval_batch_size, mesh=mesh
  )
  return train_input, eval_input, info
