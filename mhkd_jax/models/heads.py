"""Auxiliary classifiers that MHKD attaches to intermediate stages.

A head maps one stage's feature map (NHWC) to class logits, so a teacher
stage and a student stage with different widths can be compared through
their class distributions, with no regressor between them.

Kinds:
  'dih':    the third-party reading of MHKD (docs/methods.md): conv3x3 (pad 0,
            no bias)-BN-ReLU-conv3x3 (pad 0)-BN-ReLU-GAP-FC-ReLU-FC, width 256.
            On a 64x32x32 stage it costs 595 MMACs per image.
  'light':  a cheaper variant: the first conv has stride 2 (pad 1), so both
            convs run at a quarter of the positions, and the hidden FC is
            dropped; width 128 by default. 57 MMACs on a 64x32x32 stage.
  'linear': global average pool + one FC: a linear probe of the stage.
"""

import dataclasses

import jax
from flax import nnx

from mhkd_jax.models import features, layers
from mhkd_jax.run import errors

HEAD_KINDS = ('dih', 'light', 'linear')
DEFAULT_WIDTH = {'dih': 256, 'light': 128, 'linear': 0}


class DihHead(nnx.Module):
  """Two unpadded 3x3 convs, global pool, a hidden FC, the classifier."""

  def __init__(self, in_channels, width, num_classes, *, rngs):
    self.conv1 = layers.conv(in_channels, width, 3, rngs=rngs)
    self.bn1 = layers.batch_norm(width, rngs=rngs)
    self.conv2 = layers.conv(width, width, 3, rngs=rngs)
    self.bn2 = layers.batch_norm(width, rngs=rngs)
    self.fc1 = layers.linear(width, width, rngs=rngs)
    self.fc2 = layers.linear(width, num_classes, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    x = nnx.relu(self.bn2(self.conv2(x), use_running_average=not train))
    x = layers.global_avg_pool(x)
    return self.fc2(nnx.relu(self.fc1(x)))


class LightHead(nnx.Module):
  """A strided conv, a conv, global pool, the classifier."""

  def __init__(self, in_channels, width, num_classes, *, rngs):
    self.conv1 = layers.conv(
      in_channels, width, 3, stride=2, padding=1, rngs=rngs
    )
    self.bn1 = layers.batch_norm(width, rngs=rngs)
    self.conv2 = layers.conv(width, width, 3, padding=1, rngs=rngs)
    self.bn2 = layers.batch_norm(width, rngs=rngs)
    self.fc = layers.linear(width, num_classes, rngs=rngs)

  def __call__(self, x, *, train: bool):
    x = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train))
    x = nnx.relu(self.bn2(self.conv2(x), use_running_average=not train))
    return self.fc(layers.global_avg_pool(x))


class LinearHead(nnx.Module):
  """Global average pool and a linear classifier."""

  def __init__(self, in_channels, width, num_classes, *, rngs):
    del width
    self.fc = layers.linear(in_channels, num_classes, rngs=rngs)

  def __call__(self, x, *, train: bool):
    del train
    return self.fc(layers.global_avg_pool(x))


_HEAD_CLASSES = {'dih': DihHead, 'light': LightHead, 'linear': LinearHead}


@dataclasses.dataclass(frozen=True)
class HeadsSpec:
  """What a set of heads is: saved with a teacher so it can be rebuilt."""

  kind: str
  stages: tuple[str, ...]
  width: int

  def to_json(self) -> dict:
    return {'kind': self.kind, 'stages': list(self.stages), 'width': self.width}

  @classmethod
  def from_json(cls, d: dict) -> 'HeadsSpec':
    return cls(d['kind'], tuple(d['stages']), int(d['width']))


class AuxHeads(nnx.Module):
  """One head per tapped stage of one network."""

  def __init__(
    self,
    spec: HeadsSpec,
    in_channels: dict[str, int],
    num_classes: int,
    *,
    rngs: nnx.Rngs,
  ):
    self.spec = spec
    cls = _HEAD_CLASSES[spec.kind]
    self.heads = nnx.Dict(
      {
        stage: cls(in_channels[stage], spec.width, num_classes, rngs=rngs)
        for stage in spec.stages
      }
    )

  def __call__(
    self, feats: dict[str, jax.Array], *, train: bool
  ) -> dict[str, jax.Array]:
    return {
      stage: self.heads[stage](feats[stage], train=train)
      for stage in self.spec.stages
    }


def create_heads(
  kind: str,
  model: nnx.Module,
  stages: tuple[str, ...] | None,
  *,
  num_classes: int,
  input_shape: tuple[int, ...],
  rngs: nnx.Rngs,
  width: int | None = None,
) -> AuxHeads:
  """Builds heads for ``model``'s stages, reading channels from the model.

  Args:
    kind: one of HEAD_KINDS.
    model: the backbone whose stage features the heads will read.
    stages: stage names to tap; None taps every stage but the last (the
      last stage already feeds the model's own classifier).
    num_classes: classes of the heads' outputs.
    input_shape: an NHWC input shape, used to trace feature shapes.
    rngs: initialisation randomness.
    width: channel width of the head (None: the kind's default).
  """
  if kind not in _HEAD_CLASSES:
    raise errors.ConfigError(
      f'Unknown head kind {kind!r}; valid kinds: {", ".join(HEAD_KINDS)}.'
    )
  shapes = features.feature_shapes(model, input_shape)
  available = features.stage_names(shapes)
  if stages is None:
    stages = available[:-1]
  stages = tuple(stages)
  missing = [s for s in stages if s not in available]
  if missing or not stages:
    raise errors.ConfigError(
      f'Cannot attach heads to stages {stages}: {type(model).__name__} '
      f'has stages {available}.'
    )
  width = DEFAULT_WIDTH[kind] if width is None else width
  spec = HeadsSpec(kind, stages, width)
  in_channels = {s: shapes[s][-1] for s in stages}
  return AuxHeads(spec, in_channels, num_classes, rngs=rngs)
