"""RepDistiller's CIFAR ResNet18/34/50 (``models/resnetv2.py``).

A 3x3 stride-1 stem without max-pool, four stages (64..512 planes, maps
32 -> 16 -> 8 -> 4), global average pool and a classifier named
``linear``. Where the shape changes the shortcut is ``shortcut.0`` (1x1
conv) + ``shortcut.1`` (BN), as in the state_dict. Only ResNet50 is in
RepDistiller's ``model_dict``; ResNet18/34 are registered here too.

Sown features: ``stem`` (relu(bn1(conv1))), ``stage1``..``stage4`` (stage
outputs after the final ReLU), ``pooled``.
"""

import jax
from flax import nnx

from mhkd_jax.models import layers


def _shortcut(in_planes: int, planes: int, stride: int, *, rngs):
  """1x1 conv + BN when the shape changes, else None (identity)."""
  if stride == 1 and in_planes == planes:
    return None
  return nnx.List(
    [
      layers.conv(in_planes, planes, 1, stride=stride, rngs=rngs),
      layers.batch_norm(planes, rngs=rngs),
    ]
  )


def _apply_shortcut(shortcut, x: jax.Array, *, train: bool) -> jax.Array:
  if shortcut is None:
    return x
  return layers.run_sequential(shortcut, x, train=train)


class BasicBlock(nnx.Module):
  """conv3x3-bn-relu-conv3x3-bn, + shortcut, relu."""

  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int, *, rngs):
    self.conv1 = layers.conv(
      in_planes, planes, 3, stride=stride, padding=1, rngs=rngs
    )
    self.bn1 = layers.batch_norm(planes, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, rngs=rngs)
    self.bn2 = layers.batch_norm(planes, rngs=rngs)
    self.shortcut = _shortcut(in_planes, planes, stride, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.with_preactivation(x, train=train)[0]

  def with_preactivation(self, x: jax.Array, *, train: bool):
    """``(relu(pre), pre)``: the output and the sum before its ReLU."""
    f = not train
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=f))
    out = self.bn2(self.conv2(out), use_running_average=f)
    pre = out + _apply_shortcut(self.shortcut, x, train=train)
    return nnx.relu(pre), pre


class Bottleneck(nnx.Module):
  """1x1-bn-relu, 3x3(stride)-bn-relu, 1x1 (x4)-bn, + shortcut, relu."""

  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int, *, rngs):
    out_planes = self.expansion * planes
    self.conv1 = layers.conv(in_planes, planes, 1, rngs=rngs)
    self.bn1 = layers.batch_norm(planes, rngs=rngs)
    self.conv2 = layers.conv(
      planes, planes, 3, stride=stride, padding=1, rngs=rngs
    )
    self.bn2 = layers.batch_norm(planes, rngs=rngs)
    self.conv3 = layers.conv(planes, out_planes, 1, rngs=rngs)
    self.bn3 = layers.batch_norm(out_planes, rngs=rngs)
    self.shortcut = _shortcut(in_planes, out_planes, stride, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.with_preactivation(x, train=train)[0]

  def with_preactivation(self, x: jax.Array, *, train: bool):
    """``(relu(pre), pre)``: the output and the sum before its ReLU."""
    f = not train
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=f))
    out = nnx.relu(self.bn2(self.conv2(out), use_running_average=f))
    out = self.bn3(self.conv3(out), use_running_average=f)
    pre = out + _apply_shortcut(self.shortcut, x, train=train)
    return nnx.relu(pre), pre


class ResNetV2(nnx.Module):
  """Four-stage ResNet for 32x32 inputs."""

  # RepDistiller's get_feat_modules(): everything but linear.
  FEAT_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4')

  def __init__(
    self,
    block: type[BasicBlock] | type[Bottleneck],
    num_blocks: tuple[int, int, int, int],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    self.conv1 = layers.conv(3, 64, 3, padding=1, rngs=rngs)
    self.bn1 = layers.batch_norm(64, rngs=rngs)
    in_planes = 64
    stages = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      blocks = []
      for b in range(n):
        stride = 2 if (i > 0 and b == 0) else 1
        blocks.append(block(in_planes, planes, stride, rngs=rngs))
        in_planes = planes * block.expansion
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.linear = layers.linear(in_planes, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.conv1(x)
    x = nnx.relu(self.bn1(x, use_running_average=not train))
    self.sow(nnx.Intermediate, 'stem', x)
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    x = layers.run_stages(self, stages, x, train=train)
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.linear(x)

  def bn_before_relu(self) -> tuple[nnx.BatchNorm, ...]:
    """Per stage, the BatchNorm behind ``preact<k>``: the last block's
    last BatchNorm, bn3 (bottleneck) or bn2 (mdistiller's
    ``get_bn_before_relu``)."""
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    return tuple(s[-1].bn3 if hasattr(s[-1], 'bn3') else s[-1].bn2
                 for s in stages)


def _factory(block, num_blocks):
  def create(*, num_classes: int, rngs: nnx.Rngs) -> ResNetV2:
    return ResNetV2(block, num_blocks, num_classes=num_classes, rngs=rngs)

  return create


MODELS = {
  'ResNet18': _factory(BasicBlock, (2, 2, 2, 2)),
  'ResNet34': _factory(BasicBlock, (3, 4, 6, 3)),
  'ResNet50': _factory(Bottleneck, (3, 4, 6, 3)),
}
