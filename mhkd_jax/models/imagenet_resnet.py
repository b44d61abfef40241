"""torchvision-layout ImageNet ResNet18/34 (the ImageNet KD pair).

7x7 stride-2 stem (padding 3), max-pool 3/2/1, four stages of
BasicBlocks, global average pool, ``fc``. Names follow torchvision's
state_dict (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0``/``.1``, ``fc``) so its checkpoints import by
path. Init as torchvision: kaiming-normal fan_out convs, BN 1/0, PyTorch's
default linear.

Sown features (mdistiller's ImageNet convention, post-ReLU): ``stem``
(relu(bn1(conv1)), before the max-pool, 112x112 for 224 inputs),
``stage1``..``stage4`` (layer outputs), ``pooled`` (512-d).
"""

import jax
from flax import nnx

from mhkd_jax.models import layers

# The block is the CIFAR ResNet's: torchvision's BasicBlock has the same
# layers and names.
from mhkd_jax.models.resnet import BasicBlock


class ImageNetResNet(nnx.Module):
  """ResNet with BasicBlocks for 224x224 inputs."""

  # torchvision's ResNet has no get_feat_modules(); as RepDistiller's
  # ResNets: everything but fc.
  FEAT_MODULES = ('conv1', 'bn1', 'layer1', 'layer2', 'layer3', 'layer4')

  def __init__(
    self,
    num_blocks: tuple[int, int, int, int],
    *,
    num_classes: int,
    rngs: nnx.Rngs,
  ):
    self.conv1 = layers.conv(3, 64, 7, stride=2, padding=3, rngs=rngs)
    self.bn1 = layers.batch_norm(64, rngs=rngs)
    inplanes = 64
    stages = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      blocks = []
      for b in range(n):
        stride = 2 if (i > 0 and b == 0) else 1
        blocks.append(BasicBlock(inplanes, planes, stride, rngs=rngs))
        inplanes = planes
      stages.append(nnx.List(blocks))
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = layers.linear(inplanes, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.conv1(x)
    x = nnx.relu(self.bn1(x, use_running_average=not train))
    self.sow(nnx.Intermediate, 'stem', x)
    x = layers.max_pool(x, 3, 2, 1)
    stages = (self.layer1, self.layer2, self.layer3, self.layer4)
    x = layers.run_stages(self, stages, x, train=train)
    # AdaptiveAvgPool2d((1, 1)).
    x = layers.global_avg_pool(x)
    self.sow(nnx.Intermediate, 'pooled', x)
    return self.fc(x)


def _factory(num_blocks):
  def create(*, num_classes: int, rngs: nnx.Rngs) -> ImageNetResNet:
    return ImageNetResNet(num_blocks, num_classes=num_classes, rngs=rngs)

  return create


MODELS = {
  'imagenet_resnet18': _factory((2, 2, 2, 2)),
  'imagenet_resnet34': _factory((3, 4, 6, 3)),
}
