"""RepDistiller's CIFAR ResNets (``models/resnet.py``): resnet8..110, x4.

Post-activation BasicBlocks, ``depth = 6n + 2``. Sown features follow
RepDistiller's ``forward(x, is_feat=True)``: ``stem`` (after conv1-bn-relu),
``stage1``..``stage3`` (block outputs, after the final ReLU) and ``pooled``;
``preact1``..``preact3`` are the stages' last sums before that ReLU.
"""

import jax
from flax import nnx

from mhkd_jax.models import layers


class BasicBlock(nnx.Module):
  """conv3x3-bn-relu-conv3x3-bn, + shortcut, relu."""

  def __init__(self, inplanes: int, planes: int, stride: int, *, rngs):
    self.conv1 = layers.conv(
      inplanes, planes, 3, stride=stride, padding=1, rngs=rngs
    )
    self.bn1 = layers.batch_norm(planes, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, rngs=rngs)
    self.bn2 = layers.batch_norm(planes, rngs=rngs)
    if stride != 1 or inplanes != planes:
      self.downsample = nnx.List(
        [
          layers.conv(inplanes, planes, 1, stride=stride, rngs=rngs),
          layers.batch_norm(planes, rngs=rngs),
        ]
      )
    else:
      self.downsample = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.with_preactivation(x, train=train)[0]

  def with_preactivation(self, x: jax.Array, *, train: bool):
    """``(relu(pre), pre)``: the output and the sum before its ReLU
    (RepDistiller's ``preact``, which AB distils)."""
    frozen = not train
    out = self.conv1(x)
    out = nnx.relu(self.bn1(out, use_running_average=frozen))
    out = self.bn2(self.conv2(out), use_running_average=frozen)
    if self.downsample is not None:
      conv, bn = self.downsample
      x = bn(conv(x), use_running_average=frozen)
    pre = out + x
    return nnx.relu(pre), pre


class CifarResNet(nnx.Module):
  """ResNet for 32x32 inputs with three stages."""

  # RepDistiller's get_feat_modules(): everything but fc.
  FEAT_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')

  def __init__(
    self,
    depth: int,
    num_filters: tuple[int, int, int, int],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    if (depth - 2) % 6:
      raise ValueError(f'depth must be 6n+2, got {depth}')
    n = (depth - 2) // 6
    self.conv1 = layers.conv(3, num_filters[0], 3, padding=1, rngs=rngs)
    self.bn1 = layers.batch_norm(num_filters[0], rngs=rngs)
    inplanes = num_filters[0]
    stages = []
    for i, planes in enumerate(num_filters[1:]):
      blocks = []
      for b in range(n):
        stride = 2 if (i > 0 and b == 0) else 1
        blocks.append(BasicBlock(inplanes, planes, stride, rngs=rngs))
        inplanes = planes
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.fc = layers.linear(inplanes, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.conv1(x)
    x = nnx.relu(self.bn1(x, use_running_average=not train))
    self.sow(nnx.Intermediate, 'stem', x)
    x = layers.run_stages(
      self, (self.layer1, self.layer2, self.layer3), x, train=train
    )
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.fc(x)

  def bn_before_relu(self) -> tuple[nnx.BatchNorm, ...]:
    """Per stage, the BatchNorm behind ``preact<k>``: the last block's
    bn2 (mdistiller's ``get_bn_before_relu``)."""
    return tuple(stage[-1].bn2 for stage in (self.layer1, self.layer2,
                                             self.layer3))


def _factory(depth, filters):
  def create(*, num_classes: int, rngs: nnx.Rngs) -> CifarResNet:
    return CifarResNet(depth, filters, num_classes=num_classes, rngs=rngs)

  return create


_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)
MODELS = {
  'resnet8': _factory(8, _PLAIN),
  'resnet14': _factory(14, _PLAIN),
  'resnet20': _factory(20, _PLAIN),
  'resnet32': _factory(32, _PLAIN),
  'resnet44': _factory(44, _PLAIN),
  'resnet56': _factory(56, _PLAIN),
  'resnet110': _factory(110, _PLAIN),
  'resnet8x4': _factory(8, _X4),
  'resnet32x4': _factory(32, _X4),
}
