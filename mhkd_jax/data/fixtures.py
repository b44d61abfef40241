"""Small stand-ins for licence-gated downloads, in their original layouts.

Tests and ``experiments/benchmark_input.py`` prepare these with the real
TFDS builders, so the builders and the streaming pipeline run end to end on
machines that can download nothing.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence

import numpy as np
from PIL import Image


def photo_like_jpeg(width: int, height: int, seed: int,
                    quality: int = 90) -> bytes:
  """A JPEG with smooth gradients plus texture noise.

  Pure noise would compress (and decode) like no photograph does; a pure
  gradient too easily. The mix gives ImageNet-like file sizes (about
  100 KB at 500x375) and a recognisable centre for crop tests.
  """
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  base = np.stack([x * 255.0 / width, y * 255.0 / height,
                   np.full(x.shape, rng.uniform(0, 255))], -1)
  noise = rng.normal(0, 12, base.shape)
  image = np.clip(base + noise, 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(image).save(out, format='JPEG', quality=quality)
  return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_imagenet_tars(
  directory: str,
  synsets: Sequence[str],
  train_sizes: Sequence[tuple[int, int]],
  num_val: int,
  quality: int = 90,
) -> None:
  """Writes ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar.

  The train tar holds one tar per synset (``n01440764.tar``) of
  ``<synset>_<i>.JPEG``, one per entry of ``train_sizes``; the validation
  tar holds ``ILSVRC2012_val_%08d.JPEG``, which TFDS labels from its
  packaged validation_labels.txt by sorted name.
  """
  path = os.path.join(directory, 'ILSVRC2012_img_train.tar')
  with tarfile.open(path, 'w') as train:
    for s, synset in enumerate(synsets):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode='w') as t:
        for i, (w, h) in enumerate(train_sizes):
          _add(t, f'{synset}_{i}.JPEG',
               photo_like_jpeg(w, h, 1000 * s + i, quality))
      _add(train, f'{synset}.tar', inner.getvalue())
  path = os.path.join(directory, 'ILSVRC2012_img_val.tar')
  with tarfile.open(path, 'w') as val:
    for i in range(num_val):
      w, h = train_sizes[i % len(train_sizes)]
      _add(val, f'ILSVRC2012_val_{i + 1:08d}.JPEG',
           photo_like_jpeg(w, h, 10**6 + i, quality))
