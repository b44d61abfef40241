"""RepDistiller's CIFAR VGGs with BatchNorm (``models/vgg.py``, ``*_bn``).

Five conv blocks (3x3 convs with bias, BN, ReLU), no hidden FC layers.
Each block is an ``nn.Sequential`` whose last ReLU RepDistiller runs in
``forward`` instead, so the block's parameter indices go 0, 1, 3, 4, ...:
the port keeps ``None`` placeholders for the ReLUs (see
``layers.run_sequential``), and paths read ``block0.0``, ``block0.1``,
``block0.3``... as in the state_dict. ``pool3`` runs only on 64-pixel
inputs, so on CIFAR ``stage3`` and ``stage4`` are both 512x4x4.

Sown features: ``stem`` (relu(block0)), ``stage1``..``stage4``
(relu(block1..4)), ``preact1``..``preact4`` (block1..4 before the ReLU),
``pooled`` (512-d).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mhkd_jax.models import layers

_CFG = {
  'A': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  'B': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  'D': (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
  ),
  'E': (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
  ),
  'S': ((64,), (128,), (256,), (512,), (512,)),
}


def _conv(in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
  """3x3 conv, bias=True; RepDistiller zeroes the bias after init."""
  layer = layers.conv(
    in_channels, out_channels, 3, padding=1, bias=True, rngs=rngs
  )
  layer.bias[...] = jnp.zeros_like(layer.bias[...])
  return layer


def _make_block(
  widths: tuple[int, ...], in_channels: int, *, rngs: nnx.Rngs
) -> nnx.List:
  """[conv, bn, relu] per width, minus the trailing relu."""
  seq = []
  for width in widths:
    seq += [
      _conv(in_channels, width, rngs=rngs),
      layers.batch_norm(width, rngs=rngs),
      None,
    ]
    in_channels = width
  return nnx.List(seq[:-1])


class VGG(nnx.Module):
  """VGG-BN for CIFAR: five blocks, global average pool, one linear."""

  # RepDistiller's get_feat_modules() (its pools hold no parameters).
  FEAT_MODULES = ('block0', 'block1', 'block2', 'block3', 'block4')

  def __init__(
    self,
    cfg: tuple[tuple[int, ...], ...],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    in_channels = (3,) + tuple(widths[-1] for widths in cfg[:-1])
    self.block0, self.block1, self.block2, self.block3, self.block4 = (
      _make_block(widths, c, rngs=rngs) for widths, c in zip(cfg, in_channels)
    )
    self.classifier = layers.linear_zero_bias(
      cfg[-1][-1], num_classes, kernel_init=layers.normal_001, rngs=rngs
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    h = x.shape[1]
    x = nnx.relu(layers.run_sequential(self.block0, x, train=train))
    self.sow(nnx.Intermediate, 'stem', x)
    blocks = (self.block1, self.block2, self.block3, self.block4)
    for i, block in enumerate(blocks):
      # pool0..pool2 always run; pool3 (before block4) only for h == 64.
      if i < 3 or h == 64:
        x = layers.max_pool(x, 2, 2)
      # A block ends on its last BatchNorm (or conv): RepDistiller's
      # pre-activation of the stage, which AB distils.
      x = layers.run_sequential(block, x, train=train)
      self.sow(nnx.Intermediate, f'preact{i + 1}', x)
      x = nnx.relu(x)
      self.sow(nnx.Intermediate, f'stage{i + 1}', x)
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.classifier(x)

  def bn_before_relu(self) -> tuple[nnx.BatchNorm, ...]:
    """Per stage, the BatchNorm that ends block k and gives ``preact<k>``
    (mdistiller's ``get_bn_before_relu``)."""
    return tuple(b[-1] for b in (self.block1, self.block2, self.block3,
                                 self.block4))


def _factory(cfg_name: str):
  def create(*, num_classes: int, rngs: nnx.Rngs) -> VGG:
    return VGG(_CFG[cfg_name], num_classes=num_classes, rngs=rngs)

  return create


MODELS = {
  'vgg8': _factory('S'),
  'vgg11': _factory('A'),
  'vgg13': _factory('B'),
  'vgg16': _factory('D'),
  'vgg19': _factory('E'),
}
