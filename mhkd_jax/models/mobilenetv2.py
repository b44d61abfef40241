"""RepDistiller's MobileNetV2 (``models/mobilenetv2.py``, ``mobile_half``).

Width 0.5 and expansion 6, but ``last_channel`` stays 1280; the t=1 block
keeps its 1x1 expansion conv and the stem conv has stride 2. Every
``nn.Sequential`` (``conv1``, ``blocks.i``, ``blocks.i.j.conv``, ``conv2``,
``classifier``) is an ``nnx.List``; the ReLU slots are ``None`` so that
parameter indices (``conv.0``, ``conv.1``, ``conv.3``, ...) match the
state_dict.

Sown features: ``stem`` (conv1 output, 16x16), ``stage1``..``stage4`` the
outputs of blocks 1, 2, 4 and 6 (pw-linear BN + residual, no ReLU: they go
negative), ``pooled`` (1280-d, after conv2 and the average pool).
"""

import jax
from flax import nnx

from mhkd_jax.models import layers

# t (expansion; None: the model's T), c (channels), n (blocks), s (stride
# of the first block).
_SETTING = (
  (1, 16, 1, 1),
  (None, 24, 2, 1),
  (None, 32, 3, 2),
  (None, 64, 4, 2),
  (None, 96, 3, 1),
  (None, 160, 3, 2),
  (None, 320, 1, 1),
)


class InvertedResidual(nnx.Module):
  """pw-bn-relu, dw3x3-bn-relu, pw-bn; residual when shapes agree."""

  def __init__(
    self, inp: int, oup: int, stride: int, expand: int, *, rngs: nnx.Rngs
  ):
    hidden = inp * expand
    self.use_res_connect = stride == 1 and inp == oup
    self.conv = nnx.List(
      [
        layers.conv(inp, hidden, 1, rngs=rngs),
        layers.batch_norm(hidden, rngs=rngs),
        None,
        layers.conv(
          hidden,
          hidden,
          3,
          stride=stride,
          padding=1,
          groups=hidden,
          rngs=rngs,
        ),
        layers.batch_norm(hidden, rngs=rngs),
        None,
        layers.conv(hidden, oup, 1, rngs=rngs),
        layers.batch_norm(oup, rngs=rngs),
      ]
    )

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    out = layers.run_sequential(self.conv, x, train=train)
    return x + out if self.use_res_connect else out


class MobileNetV2(nnx.Module):
  """MobileNetV2 for 32x32 inputs (stride-2 stem, 2x2 final map)."""

  # RepDistiller's get_feat_modules(): the final 1x1 conv2 is not among
  # them.
  FEAT_MODULES = ('conv1', 'blocks')

  def __init__(
    self,
    expansion: int,
    width_mult: float,
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    channels = int(32 * width_mult)
    self.conv1 = nnx.List(
      [
        layers.conv(3, channels, 3, stride=2, padding=1, rngs=rngs),
        layers.batch_norm(channels, rngs=rngs),
        None,
      ]
    )
    blocks = []
    for t, c, n, s in _SETTING:
      out = int(c * width_mult)
      stage = []
      for i in range(n):
        stage.append(
          InvertedResidual(
            channels,
            out,
            s if i == 0 else 1,
            expansion if t is None else t,
            rngs=rngs,
          )
        )
        channels = out
      blocks.append(nnx.List(stage))
    self.blocks = nnx.List(blocks)
    last = int(1280 * width_mult) if width_mult > 1.0 else 1280
    self.conv2 = nnx.List(
      [
        layers.conv(channels, last, 1, rngs=rngs),
        layers.batch_norm(last, rngs=rngs),
        None,
      ]
    )
    self.classifier = nnx.List(
      [
        layers.linear_zero_bias(
          last, num_classes, kernel_init=layers.normal_001, rngs=rngs
        )
      ]
    )

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = layers.run_sequential(self.conv1, x, train=train)
    self.sow(nnx.Intermediate, 'stem', x)
    taps = {1: 'stage1', 2: 'stage2', 4: 'stage3', 6: 'stage4'}
    for i, stage in enumerate(self.blocks):
      for block in stage:
        x = block(x, train=train)
      if i in taps:
        self.sow(nnx.Intermediate, taps[i], x)
        # The blocks end on a linear bottleneck (no ReLU), and
        # RepDistiller's forward ignores preact=True: the pre-activation
        # features are the stage outputs themselves.
        self.sow(nnx.Intermediate, taps[i].replace('stage', 'preact'), x)
    x = layers.run_sequential(self.conv2, x, train=train)
    # AvgPool2d(2, ceil_mode=True) on the 2x2 map of a 32x32 input.
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.classifier[0](x)


def mobile_half(*, num_classes: int, rngs: nnx.Rngs) -> MobileNetV2:
  """RepDistiller's ``mobile_half``: T=6, width 0.5."""
  return MobileNetV2(6, 0.5, num_classes=num_classes, rngs=rngs)


MODELS = {'MobileNetV2': mobile_half}
