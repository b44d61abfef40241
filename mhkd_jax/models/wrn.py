"""RepDistiller's Wide ResNets (``models/wrn.py``): wrn_16_1 .. wrn_40_2.

Pre-activation BasicBlocks (BN-ReLU-conv), ``depth = 6n + 4``, dropout 0.
Sown features follow RepDistiller's ``forward(x, is_feat=True)``: ``stem``
is the raw conv1 output (no BN/ReLU yet), ``stage1``..``stage3`` are the
raw outputs of block1..block3 (``stage3`` before the final BN-ReLU), and
``pooled`` the vector fed to ``fc``. ``preact1``..``preact3`` are
RepDistiller's ``preact=True`` features: the BatchNorm that follows each
group (the next group's first ``bn1``, then the final ``bn1``), before
its ReLU.

Attribute names mirror the PyTorch state_dict: ``block1.layer.0.bn1``,
``block2.layer.0.convShortcut``, ``bn1``, ``fc``.
"""

import jax
from flax import nnx

from mhkd_jax.models import layers


class BasicBlock(nnx.Module):
  """bn-relu-conv3x3-bn-relu-conv3x3 plus identity or 1x1 shortcut."""

  def __init__(
    self, in_planes: int, out_planes: int, stride: int, *, rngs: nnx.Rngs
  ):
    self.bn1 = layers.batch_norm(in_planes, rngs=rngs)
    self.conv1 = layers.conv(
      in_planes, out_planes, 3, stride=stride, padding=1, rngs=rngs
    )
    self.bn2 = layers.batch_norm(out_planes, rngs=rngs)
    self.conv2 = layers.conv(out_planes, out_planes, 3, padding=1, rngs=rngs)
    # RepDistiller keys the shortcut on channels only (never on stride).
    self.equal_in_out = in_planes == out_planes
    if self.equal_in_out:
      self.convShortcut = None
    else:
      self.convShortcut = layers.conv(
        in_planes, out_planes, 1, stride=stride, rngs=rngs
      )

  def __call__(
    self, x: jax.Array, *, train: bool, normalized: jax.Array | None = None
  ) -> jax.Array:
    """``normalized``: ``bn1(x)`` if the caller has computed it already
    (the network sows it as the previous group's pre-activation)."""
    frozen = not train
    if normalized is None:
      normalized = self.bn1(x, use_running_average=frozen)
    pre = nnx.relu(normalized)
    if not self.equal_in_out:
      # Where the width changes, the shortcut sees relu(bn1(x)), not x.
      x = pre
    out = self.conv1(pre)
    out = nnx.relu(self.bn2(out, use_running_average=frozen))
    out = self.conv2(out)
    shortcut = x if self.equal_in_out else self.convShortcut(x)
    return shortcut + out


class NetworkBlock(nnx.Module):
  """A group of blocks; the attribute ``layer`` mirrors the PyTorch key."""

  def __init__(
    self,
    num_layers: int,
    in_planes: int,
    out_planes: int,
    stride: int,
    *,
    rngs: nnx.Rngs,
  ):
    self.layer = nnx.List(
      [
        BasicBlock(
          in_planes if i == 0 else out_planes,
          out_planes,
          stride if i == 0 else 1,
          rngs=rngs,
        )
        for i in range(num_layers)
      ]
    )

  def __call__(
    self, x: jax.Array, *, train: bool, normalized: jax.Array | None = None
  ) -> jax.Array:
    """``normalized``: the first block's ``bn1(x)``, if already computed."""
    for i, block in enumerate(self.layer):
      x = block(x, train=train, normalized=normalized if i == 0 else None)
    return x


class WideResNet(nnx.Module):
  """WRN-depth-k for 32x32 inputs with three groups."""

  # RepDistiller's get_feat_modules(): the final bn1 is not among them.
  FEAT_MODULES = ('conv1', 'block1', 'block2', 'block3')

  def __init__(
    self,
    depth: int,
    widen_factor: int,
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    if (depth - 4) % 6:
      raise ValueError(f'depth must be 6n+4, got {depth}')
    n = (depth - 4) // 6
    channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    # normal(0, sqrt(2 / (k*k*out_channels))) is kaiming fan_out, the
    # default kernel_init of layers.conv.
    self.conv1 = layers.conv(3, channels[0], 3, padding=1, rngs=rngs)
    self.block1 = NetworkBlock(n, channels[0], channels[1], 1, rngs=rngs)
    self.block2 = NetworkBlock(n, channels[1], channels[2], 2, rngs=rngs)
    self.block3 = NetworkBlock(n, channels[2], channels[3], 2, rngs=rngs)
    self.bn1 = layers.batch_norm(channels[3], rngs=rngs)
    # RepDistiller zeroes the linear bias and keeps PyTorch's weight init.
    self.fc = layers.linear_zero_bias(channels[3], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    frozen = not train
    x = self.conv1(x)
    self.sow(nnx.Intermediate, 'stem', x)
    groups = (self.block1, self.block2, self.block3)
    # RepDistiller's pre-activation of group k is the BatchNorm that
    # follows it, before its ReLU: the next group's first bn1, and the
    # final bn1 after the last group. Each is computed once here and
    # handed on (RepDistiller's preact forward applies it a second time,
    # which in train mode also updates its running statistics twice).
    normalized = None
    for i, group in enumerate(groups):
      x = group(x, train=train, normalized=normalized)
      self.sow(nnx.Intermediate, f'stage{i + 1}', x)
      next_bn = groups[i + 1].layer[0].bn1 if i + 1 < len(groups) else self.bn1
      normalized = next_bn(x, use_running_average=frozen)
      self.sow(nnx.Intermediate, f'preact{i + 1}', normalized)
    x = nnx.relu(normalized)
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.fc(x)

  def bn_before_relu(self) -> tuple[nnx.BatchNorm, ...]:
    """Per group, the BatchNorm that gives ``preact<k>``: the next
    group's first bn1, then the final bn1 (mdistiller's
    ``get_bn_before_relu``)."""
    return (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)


def _factory(depth: int, widen_factor: int):
  def create(*, num_classes: int, rngs: nnx.Rngs) -> WideResNet:
    return WideResNet(depth, widen_factor, num_classes=num_classes, rngs=rngs)

  return create


MODELS = {
  'wrn_16_1': _factory(16, 1),
  'wrn_16_2': _factory(16, 2),
  'wrn_40_1': _factory(40, 1),
  'wrn_40_2': _factory(40, 2),
}
