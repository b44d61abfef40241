"""PyTorch auxiliary heads with the same structure and names as the JAX ones.

The PyTorch counterparts of ``mhkd_jax/models/heads.py``. Every submodule carries
the attribute name of its NNX counterpart (``heads.<stage>.conv1``,
``.bn1``, ``.fc``...), so ``AuxHeads.state_dict()`` maps onto the NNX
``AuxHeads`` state by path alone, through the same importer that ports the
backbones (``mhkd_jax.interop.repdistiller.state_dict_to_nnx_state``).

Kinds (see ``mhkd_jax/models/heads.py`` for why each exists):
  'dih':    conv3x3 (pad 0, no bias)-BN-ReLU-conv3x3 (pad 0)-BN-ReLU-GAP-
            FC-ReLU-FC, width 256.
  'light':  conv3x3/2 (pad 1)-BN-ReLU-conv3x3 (pad 1)-BN-ReLU-GAP-FC, width
            128.
  'linear': GAP-FC.
Convolutions use He fan-out init (as the JAX heads), linear layers
PyTorch's default init; the parity tests port weights, so only the
structure has to match.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

HEAD_KINDS = ('dih', 'light', 'linear')
DEFAULT_WIDTH = {'dih': 256, 'light': 128, 'linear': 0}


def _conv3x3(cin: int, cout: int, stride: int, padding: int) -> nn.Conv2d:
  conv = nn.Conv2d(cin, cout, 3, stride=stride, padding=padding, bias=False)
  nn.init.kaiming_normal_(conv.weight, mode='fan_out', nonlinearity='relu')
  return conv


def _gap(x: torch.Tensor) -> torch.Tensor:
  return x.mean((2, 3))


class DihHead(nn.Module):
  """Two unpadded 3x3 convs, global pool, a hidden FC, the classifier."""

  def __init__(self, in_channels: int, width: int, num_classes: int):
    super().__init__()
    self.conv1 = _conv3x3(in_channels, width, 1, 0)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv3x3(width, width, 1, 0)
    self.bn2 = nn.BatchNorm2d(width)
    self.fc1 = nn.Linear(width, width)
    self.fc2 = nn.Linear(width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.fc2(F.relu(self.fc1(_gap(x))))


class LightHead(nn.Module):
  """A strided conv, a conv, global pool, the classifier."""

  def __init__(self, in_channels: int, width: int, num_classes: int):
    super().__init__()
    self.conv1 = _conv3x3(in_channels, width, 2, 1)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = _conv3x3(width, width, 1, 1)
    self.bn2 = nn.BatchNorm2d(width)
    self.fc = nn.Linear(width, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.fc(_gap(x))


class LinearHead(nn.Module):
  """Global average pool and a linear classifier."""

  def __init__(self, in_channels: int, width: int, num_classes: int):
    super().__init__()
    del width
    self.fc = nn.Linear(in_channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc(_gap(x))


_HEAD_CLASSES = {'dih': DihHead, 'light': LightHead, 'linear': LinearHead}


class AuxHeads(nn.Module):
  """One head per tapped stage: ``heads`` is a ModuleDict keyed by stage.

  ``forward`` takes a ``{'stage1': NCHW tensor, ...}`` dict and returns
  ``{'stage1': logits, ...}`` in ``stages`` order.
  """

  def __init__(
    self,
    kind: str,
    in_channels: Mapping[str, int],
    num_classes: int,
    *,
    stages: Sequence[str],
    width: int | None = None,
  ):
    super().__init__()
    if kind not in _HEAD_CLASSES:
      raise ValueError(
        f'Unknown head kind {kind!r}; valid kinds: {", ".join(HEAD_KINDS)}.'
      )
    self.kind = kind
    self.stages = tuple(stages)
    self.width = DEFAULT_WIDTH[kind] if width is None else width
    cls = _HEAD_CLASSES[kind]
    self.heads = nn.ModuleDict(
      {s: cls(in_channels[s], self.width, num_classes) for s in self.stages}
    )

  def forward(
    self, feats: Mapping[str, torch.Tensor]
  ) -> dict[str, torch.Tensor]:
    return {s: self.heads[s](feats[s]) for s in self.stages}


def stage_features(feats: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
  """RepDistiller's ``is_feat`` list -> ``{'stage1': .., 'stageN': ..}``.

  The list is ``[stem, stage1, ..., stageN, pooled]``, the same tensors
  the JAX models sow under those names.
  """
  return {f'stage{i}': f for i, f in enumerate(feats[1:-1], start=1)}


def create_heads(
  kind: str,
  model: nn.Module,
  stages: Sequence[str] | None,
  *,
  num_classes: int,
  width: int | None = None,
  input_size: int = 32,
) -> AuxHeads:
  """Heads for ``model``'s stages; channel counts are read by a forward.

  Args:
    kind: one of HEAD_KINDS.
    model: a RepDistiller-style model (``forward(x, is_feat=True)``).
    stages: stage names; None taps every stage but the last (as in JAX).
    num_classes: classes of the heads' outputs.
    width: head width (None: the kind's default).
    input_size: the square input size used to trace channel counts.
  """
  was_training = model.training
  model.eval()
  with torch.no_grad():
    feats, _ = model(torch.zeros(1, 3, input_size, input_size), is_feat=True)
  model.train(was_training)
  shapes = stage_features(feats)
  available = tuple(shapes)
  if stages is None:
    stages = available[:-1]
  missing = [s for s in stages if s not in shapes]
  if missing or not stages:
    raise ValueError(
      f'Cannot attach heads to stages {tuple(stages)}: '
      f'{type(model).__name__} has stages {available}.'
    )
  in_channels = {s: shapes[s].shape[1] for s in stages}
  return AuxHeads(
    kind, in_channels, num_classes, stages=stages, width=width
  )
