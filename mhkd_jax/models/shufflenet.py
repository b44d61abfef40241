"""RepDistiller's ShuffleNets (``models/ShuffleNetv1.py``, ``ShuffleNetv2.py``).

Both have a 1x1 stem without stride or max-pool, three stages that halve
the map (32 -> 16 -> 8 -> 4) and a global average pool. No explicit init
in RepDistiller: convs and the linear layer keep PyTorch's defaults.

Sown features: ``stem`` (relu(bn1(conv1))), ``stage1``..``stage3`` (stage
outputs after the final ReLU/shuffle), ``pooled``. Attribute names mirror
the state_dict (``layer1.0.conv1``, ``linear``); parameter-free modules
(ShuffleBlock, the AvgPool shortcut) have no attribute.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from mhkd_jax.models import layers

_default = layers.torch_default_kernel


def _conv(*args, **kwargs) -> nnx.Conv:
  """A conv with PyTorch's default init (ShuffleNets define none)."""
  return layers.conv(*args, kernel_init=_default, **kwargs)


class ShuffleV1Bottleneck(nnx.Module):
  """Grouped 1x1, shuffle, depthwise 3x3, grouped 1x1; add or concat."""

  def __init__(
    self,
    in_planes: int,
    out_planes: int,
    stride: int,
    groups: int,
    *,
    rngs: nnx.Rngs,
  ):
    mid = out_planes // 4
    # The first block sees the 24-channel stem: its conv1 is not grouped
    # (and its shuffle is then the identity); conv3 stays grouped.
    self.g1 = 1 if in_planes == 24 else groups
    self.stride = stride
    self.conv1 = _conv(in_planes, mid, 1, groups=self.g1, rngs=rngs)
    self.bn1 = layers.batch_norm(mid, rngs=rngs)
    self.conv2 = _conv(
      mid, mid, 3, stride=stride, padding=1, groups=mid, rngs=rngs
    )
    self.bn2 = layers.batch_norm(mid, rngs=rngs)
    self.conv3 = _conv(mid, out_planes, 1, groups=groups, rngs=rngs)
    self.bn3 = layers.batch_norm(out_planes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.with_preactivation(x, train=train)[0]

  def with_preactivation(self, x: jax.Array, *, train: bool):
    """``(relu(pre), pre)``: the output and the sum (or concatenation)
    before its ReLU."""
    frozen = not train
    out = nnx.relu(self.bn1(self.conv1(x), use_running_average=frozen))
    out = layers.channel_shuffle(out, self.g1)
    out = nnx.relu(self.bn2(self.conv2(out), use_running_average=frozen))
    out = self.bn3(self.conv3(out), use_running_average=frozen)
    if self.stride == 2:
      # AvgPool2d(3, 2, padding=1) counts the zero padding.
      pre = jnp.concatenate([out, layers.avg_pool(x, 3, 2, 1)], axis=-1)
    else:
      pre = out + x
    return nnx.relu(pre), pre


class ShuffleNetV1(nnx.Module):
  """ShuffleNet v1 for 32x32 inputs."""

  # RepDistiller's get_feat_modules(): everything but linear.
  FEAT_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')

  def __init__(
    self,
    out_planes: tuple[int, int, int],
    num_blocks: tuple[int, int, int],
    groups: int,
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    self.conv1 = _conv(3, 24, 1, rngs=rngs)
    self.bn1 = layers.batch_norm(24, rngs=rngs)
    in_planes = 24
    stages = []
    for planes, n in zip(out_planes, num_blocks):
      blocks = []
      for i in range(n):
        # The stride-2 first block concatenates its input: it only has to
        # produce the missing channels.
        cat_planes = in_planes if i == 0 else 0
        blocks.append(
          ShuffleV1Bottleneck(
            in_planes,
            planes - cat_planes,
            2 if i == 0 else 1,
            groups,
            rngs=rngs,
          )
        )
        in_planes = planes
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3 = stages
    self.linear = layers.linear(in_planes, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.conv1(x)
    x = nnx.relu(self.bn1(x, use_running_average=not train))
    self.sow(nnx.Intermediate, 'stem', x)
    x = layers.run_stages(
      self, (self.layer1, self.layer2, self.layer3), x, train=train
    )
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.linear(x)


class ShuffleV2DownBlock(nnx.Module):
  """Two stride-2 branches concatenated, then shuffled."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs):
    mid = out_channels // 2
    # Left: dw3x3/2-bn, pw-bn-relu.
    self.conv1 = _conv(
      in_channels,
      in_channels,
      3,
      stride=2,
      padding=1,
      groups=in_channels,
      rngs=rngs,
    )
    self.bn1 = layers.batch_norm(in_channels, rngs=rngs)
    self.conv2 = _conv(in_channels, mid, 1, rngs=rngs)
    self.bn2 = layers.batch_norm(mid, rngs=rngs)
    # Right: pw-bn-relu, dw3x3/2-bn, pw-bn-relu.
    self.conv3 = _conv(in_channels, mid, 1, rngs=rngs)
    self.bn3 = layers.batch_norm(mid, rngs=rngs)
    self.conv4 = _conv(mid, mid, 3, stride=2, padding=1, groups=mid, rngs=rngs)
    self.bn4 = layers.batch_norm(mid, rngs=rngs)
    self.conv5 = _conv(mid, mid, 1, rngs=rngs)
    self.bn5 = layers.batch_norm(mid, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    f = not train
    left = self.bn1(self.conv1(x), use_running_average=f)
    left = nnx.relu(self.bn2(self.conv2(left), use_running_average=f))
    right = nnx.relu(self.bn3(self.conv3(x), use_running_average=f))
    right = self.bn4(self.conv4(right), use_running_average=f)
    right = nnx.relu(self.bn5(self.conv5(right), use_running_average=f))
    out = jnp.concatenate([left, right], axis=-1)
    return layers.channel_shuffle(out, 2)


class ShuffleV2BasicBlock(nnx.Module):
  """Split channels in half, transform the second half, concat, shuffle."""

  def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
    c = in_channels // 2
    self.conv1 = _conv(c, c, 1, rngs=rngs)
    self.bn1 = layers.batch_norm(c, rngs=rngs)
    self.conv2 = _conv(c, c, 3, padding=1, groups=c, rngs=rngs)
    self.bn2 = layers.batch_norm(c, rngs=rngs)
    self.conv3 = _conv(c, c, 1, rngs=rngs)
    self.bn3 = layers.batch_norm(c, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return self.with_preactivation(x, train=train)[0]

  def with_preactivation(self, x: jax.Array, *, train: bool):
    """``(output, pre)``. As in RepDistiller, ``pre`` is the concatenation
    of the untouched half and the transformed half before its ReLU, taken
    before the channel shuffle."""
    f = not train
    c = x.shape[-1] // 2
    x1, x2 = x[..., :c], x[..., c:]
    out = nnx.relu(self.bn1(self.conv1(x2), use_running_average=f))
    out = self.bn2(self.conv2(out), use_running_average=f)
    pre = self.bn3(self.conv3(out), use_running_average=f)
    out = jnp.concatenate([x1, nnx.relu(pre)], axis=-1)
    return layers.channel_shuffle(out, 2), jnp.concatenate([x1, pre], -1)


class ShuffleNetV2(nnx.Module):
  """ShuffleNet v2 for 32x32 inputs."""

  # RepDistiller's get_feat_modules(): the final conv2/bn2 are not among
  # them.
  FEAT_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3')

  def __init__(
    self,
    out_channels: tuple[int, int, int, int],
    num_blocks: tuple[int, int, int],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    self.conv1 = _conv(3, 24, 1, rngs=rngs)
    self.bn1 = layers.batch_norm(24, rngs=rngs)
    in_channels = 24
    stages = []
    for channels, n in zip(out_channels[:3], num_blocks):
      blocks = [ShuffleV2DownBlock(in_channels, channels, rngs=rngs)]
      blocks += [ShuffleV2BasicBlock(channels, rngs=rngs) for _ in range(n)]
      stages.append(nnx.List(blocks))
      in_channels = channels
    self.layer1, self.layer2, self.layer3 = stages
    self.conv2 = _conv(in_channels, out_channels[3], 1, rngs=rngs)
    self.bn2 = layers.batch_norm(out_channels[3], rngs=rngs)
    self.linear = layers.linear(out_channels[3], num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    frozen = not train
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=frozen))
    self.sow(nnx.Intermediate, 'stem', x)
    x = layers.run_stages(
      self, (self.layer1, self.layer2, self.layer3), x, train=train
    )
    x = nnx.relu(self.bn2(self.conv2(x), use_running_average=frozen))
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.linear(x)


def shuffle_v1(*, num_classes: int, rngs: nnx.Rngs) -> ShuffleNetV1:
  """RepDistiller's ``ShuffleV1``: groups 3, widths 240/480/960."""
  return ShuffleNetV1(
    (240, 480, 960), (4, 8, 4), 3, num_classes=num_classes, rngs=rngs
  )


def shuffle_v2(*, num_classes: int, rngs: nnx.Rngs) -> ShuffleNetV2:
  """RepDistiller's ``ShuffleV2`` (net_size 1)."""
  return ShuffleNetV2(
    (116, 232, 464, 1024), (3, 7, 3), num_classes=num_classes, rngs=rngs
  )


MODELS = {'ShuffleV1': shuffle_v1, 'ShuffleV2': shuffle_v2}
