"""PyTorch reference models with RepDistiller's parameter names.

These are independent PyTorch implementations of every model in
``tests/testdata/repdistiller_models.json`` (and of torchvision's ImageNet
ResNet-18/34 layout), written from the architecture notes. They exist for
two reasons: the parity tests need a PyTorch reference whose ``state_dict``
is exactly what RepDistiller saves (so ``mhkd_jax.interop`` is tested on the
real key names and layouts), and the PyTorch speed baseline needs the same
networks the JAX port runs.

Every model takes NCHW images and has ``forward(x, is_feat=False,
preact=False)``; with ``is_feat=True`` it returns ``(feats, logits)`` where
``feats`` is RepDistiller's list: the stem output, one tensor per stage,
and the pooled vector fed to the classifier. With ``preact=True`` the stage
tensors are RepDistiller's pre-activations (what AB distils): the last
block's output before its final ReLU, the BatchNorm that follows a WRN
group (applied again, as RepDistiller does), a VGG block before its ReLU;
MobileNetV2 ignores the flag, as RepDistiller's does. Submodules are registered in RepDistiller's
order, because ``state_dict`` order follows registration order and the JSON
spec lists keys in that order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor
Output = Tensor | tuple[list[Tensor], Tensor]


def _conv(
  cin: int,
  cout: int,
  k: int,
  stride: int = 1,
  padding: int = 0,
  groups: int = 1,
  bias: bool = False,
) -> nn.Conv2d:
  return nn.Conv2d(
    cin, cout, k, stride=stride, padding=padding, groups=groups, bias=bias
  )


def _channel_shuffle(x: Tensor, groups: int) -> Tensor:
  """ShuffleNet's shuffle: output channel j*g + i is input i*(C/g) + j."""
  n, c, h, w = x.shape
  x = x.view(n, groups, c // groups, h, w).transpose(1, 2)
  return x.reshape(n, c, h, w)


def _init_kaiming(model: nn.Module) -> None:
  """RepDistiller resnet/resnetv2 and torchvision: He fan-out convs.

  Linear layers keep PyTorch's default initialisation, as in the sources.
  """
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)


def _init_normal_fan_out(model: nn.Module, linear_std: float | None) -> None:
  """RepDistiller wrn/vgg/mobilenetv2: conv ~ N(0, sqrt(2 / (k*k*out))).

  Args:
    model: the network to initialise in place.
    linear_std: std of the classifier weight (VGG and MobileNetV2 use
      0.01); ``None`` keeps PyTorch's default weight (WRN). Linear biases
      are zero in all three.
  """
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
      nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
      if m.bias is not None:
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.ones_(m.weight)
      nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
      if linear_std is not None:
        nn.init.normal_(m.weight, 0.0, linear_std)
      nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------
# ResNets with BasicBlock/Bottleneck (CIFAR resnet.py, resnetv2.py,
# torchvision).


class BasicBlock(nn.Module):
  """Post-activation basic block: relu(bn2(conv2(relu(bn1(conv1 x)))) + sc).

  ``shortcut_name`` is the attribute the projection lives under:
  ``downsample`` in RepDistiller's resnet.py and torchvision, ``shortcut``
  in resnetv2.py (where an identity shortcut is an empty Sequential, which
  contributes no state_dict keys either).
  """

  expansion = 1

  def __init__(
    self, cin: int, planes: int, stride: int, shortcut_name: str
  ) -> None:
    super().__init__()
    self.conv1 = _conv(cin, planes, 3, stride, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut_name = shortcut_name
    setattr(self, shortcut_name, _projection(cin, planes, stride))

  def forward(self, x: Tensor) -> Tensor:
    return self.forward_preact(x)[0]

  def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    sc = getattr(self, self.shortcut_name)
    pre = out + (x if sc is None else sc(x))
    return F.relu(pre), pre


class Bottleneck(nn.Module):
  """resnetv2 bottleneck: 1x1 -> 3x3 (stride) -> 1x1 (x4), post-activation."""

  expansion = 4

  def __init__(
    self, cin: int, planes: int, stride: int, shortcut_name: str
  ) -> None:
    super().__init__()
    cout = planes * self.expansion
    self.conv1 = _conv(cin, planes, 1)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = _conv(planes, planes, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = _conv(planes, cout, 1)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut_name = shortcut_name
    setattr(self, shortcut_name, _projection(cin, cout, stride))

  def forward(self, x: Tensor) -> Tensor:
    return self.forward_preact(x)[0]

  def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    sc = getattr(self, self.shortcut_name)
    pre = out + (x if sc is None else sc(x))
    return F.relu(pre), pre


def _run_stage(stage: nn.Sequential, x: Tensor) -> tuple[Tensor, Tensor]:
  """``(output, pre-activation)``: RepDistiller's ``is_last`` block returns
  its output before the final ReLU beside the output."""
  *blocks, last = stage
  for block in blocks:
    x = block(x)
  return last.forward_preact(x)


def _projection(cin: int, cout: int, stride: int) -> nn.Sequential | None:
  if stride == 1 and cin == cout:
    return None
  return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


def _res_stage(
  block: type[BasicBlock] | type[Bottleneck],
  cin: int,
  planes: int,
  n: int,
  stride: int,
  shortcut_name: str,
) -> tuple[nn.Sequential, int]:
  blocks = []
  for i in range(n):
    blocks.append(block(cin, planes, stride if i == 0 else 1, shortcut_name))
    cin = planes * block.expansion
  return nn.Sequential(*blocks), cin


class CifarResNet(nn.Module):
  """RepDistiller ``resnet.py``: depth 6n+2, three stages, AvgPool(8)."""

  def __init__(
    self, depth: int, filters: Sequence[int], num_classes: int
  ) -> None:
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f'depth must be 6n+2, got {depth}')
    n = (depth - 2) // 6
    self.conv1 = _conv(3, filters[0], 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(filters[0])
    cin = filters[0]
    stages = []
    for i, planes in enumerate(filters[1:]):
      stage, cin = _res_stage(
        BasicBlock, cin, planes, n, 1 if i == 0 else 2, 'downsample'
      )
      stages.append(stage)
    self.layer1, self.layer2, self.layer3 = stages
    self.fc = nn.Linear(cin, num_classes)
    _init_kaiming(self)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    for layer in (self.layer1, self.layer2, self.layer3):
      x, pre = _run_stage(layer, x)
      feats.append(pre if preact else x)
    x = F.avg_pool2d(x, 8).flatten(1)
    feats.append(x)
    logits = self.fc(x)
    return (feats, logits) if is_feat else logits


class ResNetV2(nn.Module):
  """RepDistiller ``resnetv2.py`` (CIFAR ResNet18/34/50): 3x3 stem, 4 stages.

  The classifier is named ``linear`` and shortcuts ``shortcut``.
  """

  def __init__(
    self,
    block: type[BasicBlock] | type[Bottleneck],
    num_blocks: Sequence[int],
    num_classes: int,
  ) -> None:
    super().__init__()
    self.conv1 = _conv(3, 64, 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    stages = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      stage, cin = _res_stage(
        block, cin, planes, n, 1 if i == 0 else 2, 'shortcut'
      )
      stages.append(stage)
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.linear = nn.Linear(cin, num_classes)
    _init_kaiming(self)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      x, pre = _run_stage(layer, x)
      feats.append(pre if preact else x)
    x = x.mean((2, 3))
    feats.append(x)
    logits = self.linear(x)
    return (feats, logits) if is_feat else logits


class ImageNetResNet(nn.Module):
  """torchvision's ResNet-18/34 layout: 7x7/2 stem, 3x3/2 max-pool, fc.

  Features (as the JAX port sows them): the stem relu(bn1(conv1)) before
  the max-pool (112x112 on 224 inputs), the four stage outputs and the
  pooled vector.
  """

  def __init__(self, num_blocks: Sequence[int], num_classes: int) -> None:
    super().__init__()
    self.conv1 = _conv(3, 64, 7, 2, 3)
    self.bn1 = nn.BatchNorm2d(64)
    cin = 64
    stages = []
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks)):
      stage, cin = _res_stage(
        BasicBlock, cin, planes, n, 1 if i == 0 else 2, 'downsample'
      )
      stages.append(stage)
    self.layer1, self.layer2, self.layer3, self.layer4 = stages
    self.fc = nn.Linear(cin, num_classes)
    _init_kaiming(self)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    x = F.max_pool2d(x, 3, 2, 1)
    for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
      x, pre = _run_stage(layer, x)
      feats.append(pre if preact else x)
    x = x.mean((2, 3))
    feats.append(x)
    logits = self.fc(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# Wide ResNet (wrn.py).


class WideBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut.

  Where the channel count changes, the 1x1 ``convShortcut`` reads the
  pre-activated input relu(bn1(x)), not x; otherwise the identity adds x.
  """

  def __init__(self, cin: int, cout: int, stride: int) -> None:
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv1 = _conv(cin, cout, 3, stride, 1)
    self.bn2 = nn.BatchNorm2d(cout)
    self.conv2 = _conv(cout, cout, 3, 1, 1)
    self.equal = cin == cout
    self.convShortcut = None if self.equal else _conv(cin, cout, 1, stride)

  def forward(self, x: Tensor) -> Tensor:
    act = F.relu(self.bn1(x))
    out = F.relu(self.bn2(self.conv1(act)))
    out = self.conv2(out)
    return out + (x if self.equal else self.convShortcut(act))


class WideGroup(nn.Module):
  """``NetworkBlock``: holds its blocks under ``layer`` (the key prefix)."""

  def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
    super().__init__()
    self.layer = nn.Sequential(
      *[
        WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
        for i in range(n)
      ]
    )

  def forward(self, x: Tensor) -> Tensor:
    return self.layer(x)


class WideResNet(nn.Module):
  """WRN-depth-k, depth 6n+4; f3 is block3's output before the last BN."""

  def __init__(self, depth: int, widen: int, num_classes: int) -> None:
    super().__init__()
    if (depth - 4) % 6:
      raise ValueError(f'depth must be 6n+4, got {depth}')
    n = (depth - 4) // 6
    ch = (16, 16 * widen, 32 * widen, 64 * widen)
    self.conv1 = _conv(3, ch[0], 3, 1, 1)
    self.block1 = WideGroup(n, ch[0], ch[1], 1)
    self.block2 = WideGroup(n, ch[1], ch[2], 2)
    self.block3 = WideGroup(n, ch[2], ch[3], 2)
    self.bn1 = nn.BatchNorm2d(ch[3])
    self.fc = nn.Linear(ch[3], num_classes)
    _init_normal_fan_out(self, linear_std=None)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = self.conv1(x)
    feats = [x]
    for group in (self.block1, self.block2, self.block3):
      x = group(x)
      feats.append(x)
    if preact:
      # RepDistiller: the BatchNorm that follows each group, applied again.
      feats[1] = self.block2.layer[0].bn1(feats[1])
      feats[2] = self.block3.layer[0].bn1(feats[2])
      feats[3] = self.bn1(feats[3])
    x = F.avg_pool2d(F.relu(self.bn1(x)), 8).flatten(1)
    feats.append(x)
    logits = self.fc(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# VGG with BatchNorm (vgg.py).

_VGG_CFGS = {
  'vgg8': ((64,), (128,), (256,), (512,), (512,)),
  'vgg11': ((64,), (128,), (256, 256), (512, 512), (512, 512)),
  'vgg13': ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
  'vgg16': (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
  ),
  'vgg19': (
    (64, 64),
    (128, 128),
    (256, 256, 256, 256),
    (512, 512, 512, 512),
    (512, 512, 512, 512),
  ),
}


def _vgg_block(cin: int, widths: Sequence[int]) -> nn.Sequential:
  """conv(bias)-BN-ReLU repeated, without the last ReLU (run in forward).

  The ReLU modules occupy Sequential indices, so parameters sit at 0, 1,
  3, 4, ... exactly as in RepDistiller's state_dict.
  """
  mods: list[nn.Module] = []
  for w in widths:
    mods += [_conv(cin, w, 3, 1, 1, bias=True), nn.BatchNorm2d(w), nn.ReLU()]
    cin = w
  return nn.Sequential(*mods[:-1])


class VGG(nn.Module):
  """Five conv blocks, max-pools between, global average pool, one FC.

  ``pool3`` only runs for 64-pixel inputs (RepDistiller's ``h == 64``), so
  on CIFAR block3 and block4 both run at 4x4.
  """

  def __init__(
    self, cfg: Sequence[Sequence[int]], num_classes: int
  ) -> None:
    super().__init__()
    cin = 3
    for i, widths in enumerate(cfg):
      setattr(self, f'block{i}', _vgg_block(cin, widths))
      cin = widths[-1]
    self.classifier = nn.Linear(512, num_classes)
    _init_normal_fan_out(self, linear_std=0.01)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    h = x.shape[2]
    feats = []
    for i in range(5):
      if i in (1, 2, 3) or (i == 4 and h == 64):
        x = F.max_pool2d(x, 2, 2)
      pre = getattr(self, f'block{i}')(x)
      x = F.relu(pre)
      feats.append(pre if preact and i > 0 else x)
    x = x.mean((2, 3))
    feats.append(x)
    logits = self.classifier(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# MobileNetV2 (mobilenetv2.py, ``mobile_half``).


class InvertedResidual(nn.Module):
  """1x1 expand - 3x3 depthwise - 1x1 linear; residual when shapes match.

  The expansion conv is kept even for t = 1; ``conv`` indices 2 and 5 are
  the ReLUs.
  """

  def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
    super().__init__()
    mid = cin * t
    self.use_res = stride == 1 and cin == cout
    self.conv = nn.Sequential(
      _conv(cin, mid, 1),
      nn.BatchNorm2d(mid),
      nn.ReLU(),
      _conv(mid, mid, 3, stride, 1, groups=mid),
      nn.BatchNorm2d(mid),
      nn.ReLU(),
      _conv(mid, cout, 1),
      nn.BatchNorm2d(cout),
    )

  def forward(self, x: Tensor) -> Tensor:
    out = self.conv(x)
    return x + out if self.use_res else out


class MobileNetV2(nn.Module):
  """RepDistiller's MobileNetV2 for 32x32 inputs (stride-2 stem).

  ``last_channel`` stays 1280 for width < 1. Features are the outputs of
  blocks 1, 2, 4 and 6, which end in a linear BN (no ReLU).
  """

  # (expansion, channels, blocks, first stride); None: the model's t.
  _SETTING = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
  )

  def __init__(
    self, t: int, width: float, num_classes: int, input_size: int = 32
  ) -> None:
    super().__init__()
    cin = int(32 * width)
    self.conv1 = nn.Sequential(
      _conv(3, cin, 3, 2, 1), nn.BatchNorm2d(cin), nn.ReLU()
    )
    self.blocks = nn.ModuleList()
    for ti, c, n, s in self._SETTING:
      cout = int(c * width)
      seq = []
      expand = t if ti is None else ti
      for i in range(n):
        seq.append(InvertedResidual(cin, cout, s if i == 0 else 1, expand))
        cin = cout
      self.blocks.append(nn.Sequential(*seq))
    last = int(1280 * width) if width > 1.0 else 1280
    self.conv2 = nn.Sequential(
      _conv(cin, last, 1), nn.BatchNorm2d(last), nn.ReLU()
    )
    self.classifier = nn.Sequential(nn.Linear(last, num_classes))
    self.pool = input_size // 16
    _init_normal_fan_out(self, linear_std=0.01)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    del preact  # RepDistiller's MobileNetV2 ignores it too.
    x = self.conv1(x)
    feats = [x]
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i in (1, 2, 4, 6):
        feats.append(x)
    x = self.conv2(x)
    x = F.avg_pool2d(x, self.pool, ceil_mode=True).flatten(1)
    feats.append(x)
    logits = self.classifier(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# ShuffleNet V1 (ShuffleNetv1.py).


class ShuffleV1Block(nn.Module):
  """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1, add or concat.

  The first block after the 24-channel stem uses groups=1 in ``conv1``
  (so its shuffle is the identity) but keeps ``conv3`` grouped. Stride-2
  blocks concatenate an AvgPool2d(3, 2, padding=1) shortcut that counts
  the zero padding.
  """

  def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
    super().__init__()
    mid = cout // 4
    self.g1 = 1 if cin == 24 else groups
    self.stride = stride
    self.conv1 = _conv(cin, mid, 1, groups=self.g1)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = _conv(mid, mid, 3, stride, 1, groups=mid)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = _conv(mid, cout, 1, groups=groups)
    self.bn3 = nn.BatchNorm2d(cout)

  def forward(self, x: Tensor) -> Tensor:
    return self.forward_preact(x)[0]

  def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
    out = F.relu(self.bn1(self.conv1(x)))
    out = _channel_shuffle(out, self.g1)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.stride == 2:
      res = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
      pre = torch.cat([out, res], 1)
    else:
      pre = out + x
    return F.relu(pre), pre


class ShuffleNetV1(nn.Module):
  """1x1 stem (no stride, no max-pool), three stages, AvgPool(4), linear."""

  def __init__(
    self,
    out_planes: Sequence[int],
    num_blocks: Sequence[int],
    groups: int,
    num_classes: int,
  ) -> None:
    super().__init__()
    self.conv1 = _conv(3, 24, 1)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for s, (cout, n) in enumerate(zip(out_planes, num_blocks)):
      blocks = []
      for i in range(n):
        # The stride-2 block's branch makes cout - cin channels; the
        # concatenated shortcut supplies the other cin.
        branch = cout - cin if i == 0 else cout
        blocks.append(ShuffleV1Block(cin, branch, 2 if i == 0 else 1, groups))
        cin = cout
      setattr(self, f'layer{s + 1}', nn.Sequential(*blocks))
    self.linear = nn.Linear(cin, num_classes)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    for layer in (self.layer1, self.layer2, self.layer3):
      x, pre = _run_stage(layer, x)
      feats.append(pre if preact else x)
    x = F.avg_pool2d(x, 4).flatten(1)
    feats.append(x)
    logits = self.linear(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# ShuffleNet V2 (ShuffleNetv2.py, net_size 1).


class ShuffleV2Block(nn.Module):
  """Split in halves; the second goes 1x1-dw3x3-1x1; concat; shuffle(2)."""

  def __init__(self, channels: int) -> None:
    super().__init__()
    c = channels // 2
    self.conv1 = _conv(c, c, 1)
    self.bn1 = nn.BatchNorm2d(c)
    self.conv2 = _conv(c, c, 3, 1, 1, groups=c)
    self.bn2 = nn.BatchNorm2d(c)
    self.conv3 = _conv(c, c, 1)
    self.bn3 = nn.BatchNorm2d(c)

  def forward(self, x: Tensor) -> Tensor:
    return self.forward_preact(x)[0]

  def forward_preact(self, x: Tensor) -> tuple[Tensor, Tensor]:
    c = x.shape[1] // 2
    x1, x2 = x[:, :c], x[:, c:]
    out = F.relu(self.bn1(self.conv1(x2)))
    out = self.bn2(self.conv2(out))
    pre = self.bn3(self.conv3(out))
    out = _channel_shuffle(torch.cat([x1, F.relu(pre)], 1), 2)
    # RepDistiller returns the unshuffled concatenation as preact.
    return out, torch.cat([x1, pre], 1)


class ShuffleV2Down(nn.Module):
  """Stride-2 unit: both branches see the full input, concat, shuffle(2).

  Left: dw3x3/2-BN (no ReLU) - 1x1-BN-ReLU. Right: 1x1-BN-ReLU - dw3x3/2-BN
  - 1x1-BN-ReLU.
  """

  def __init__(self, cin: int, cout: int) -> None:
    super().__init__()
    mid = cout // 2
    self.conv1 = _conv(cin, cin, 3, 2, 1, groups=cin)
    self.bn1 = nn.BatchNorm2d(cin)
    self.conv2 = _conv(cin, mid, 1)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = _conv(cin, mid, 1)
    self.bn3 = nn.BatchNorm2d(mid)
    self.conv4 = _conv(mid, mid, 3, 2, 1, groups=mid)
    self.bn4 = nn.BatchNorm2d(mid)
    self.conv5 = _conv(mid, mid, 1)
    self.bn5 = nn.BatchNorm2d(mid)

  def forward(self, x: Tensor) -> Tensor:
    left = self.bn1(self.conv1(x))
    left = F.relu(self.bn2(self.conv2(left)))
    right = F.relu(self.bn3(self.conv3(x)))
    right = self.bn4(self.conv4(right))
    right = F.relu(self.bn5(self.conv5(right)))
    return _channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
  """1x1 stem, stages (down + 3/7/3 basic), 1x1 conv to 1024, AvgPool(4)."""

  def __init__(
    self,
    out_channels: Sequence[int],
    num_blocks: Sequence[int],
    num_classes: int,
  ) -> None:
    super().__init__()
    self.conv1 = _conv(3, 24, 1)
    self.bn1 = nn.BatchNorm2d(24)
    cin = 24
    for s in range(3):
      cout = out_channels[s]
      blocks: list[nn.Module] = [ShuffleV2Down(cin, cout)]
      blocks += [ShuffleV2Block(cout) for _ in range(num_blocks[s])]
      setattr(self, f'layer{s + 1}', nn.Sequential(*blocks))
      cin = cout
    self.conv2 = _conv(cin, out_channels[3], 1)
    self.bn2 = nn.BatchNorm2d(out_channels[3])
    self.linear = nn.Linear(out_channels[3], num_classes)

  def forward(
    self, x: Tensor, is_feat: bool = False, preact: bool = False
  ) -> Output:
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    for layer in (self.layer1, self.layer2, self.layer3):
      x, pre = _run_stage(layer, x)
      feats.append(pre if preact else x)
    x = F.relu(self.bn2(self.conv2(x)))
    x = F.avg_pool2d(x, 4).flatten(1)
    feats.append(x)
    logits = self.linear(x)
    return (feats, logits) if is_feat else logits


# --------------------------------------------------------------------------
# Registry.

_PLAIN = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)

_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
  **{
    f'resnet{d}': (lambda d: lambda nc: CifarResNet(d, _PLAIN, nc))(d)
    for d in (8, 14, 20, 32, 44, 56, 110)
  },
  'resnet8x4': lambda nc: CifarResNet(8, _X4, nc),
  'resnet32x4': lambda nc: CifarResNet(32, _X4, nc),
  'ResNet18': lambda nc: ResNetV2(BasicBlock, (2, 2, 2, 2), nc),
  'ResNet34': lambda nc: ResNetV2(BasicBlock, (3, 4, 6, 3), nc),
  'ResNet50': lambda nc: ResNetV2(Bottleneck, (3, 4, 6, 3), nc),
  'wrn_16_1': lambda nc: WideResNet(16, 1, nc),
  'wrn_16_2': lambda nc: WideResNet(16, 2, nc),
  'wrn_40_1': lambda nc: WideResNet(40, 1, nc),
  'wrn_40_2': lambda nc: WideResNet(40, 2, nc),
  **{
    name: (lambda cfg: lambda nc: VGG(cfg, nc))(cfg)
    for name, cfg in _VGG_CFGS.items()
  },
  'MobileNetV2': lambda nc: MobileNetV2(6, 0.5, nc),
  'ShuffleV1': lambda nc: ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, nc),
  'ShuffleV2': lambda nc: ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), nc),
  'imagenet_resnet18': lambda nc: ImageNetResNet((2, 2, 2, 2), nc),
  'imagenet_resnet34': lambda nc: ImageNetResNet((3, 4, 6, 3), nc),
}

MODEL_NAMES = tuple(_FACTORIES)


def create_torch_model(name: str, num_classes: int = 100) -> nn.Module:
  """Builds a PyTorch model by its RepDistiller (or imagenet_*) name."""
  if name not in _FACTORIES:
    raise ValueError(
      f'Unknown model {name!r}. Valid names: {", ".join(MODEL_NAMES)}.'
    )
  return _FACTORIES[name](num_classes)
