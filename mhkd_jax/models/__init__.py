"""Model registry: ``create_model(name, *, num_classes, rngs)``.

Names are RepDistiller's ``model_dict`` keys (plus ResNet18/34 of its
``resnetv2.py`` and the torchvision-layout ``imagenet_resnet18/34``).
Every model takes NHWC images
and ``train`` (BatchNorm batch statistics vs running averages), returns
logits, and sows ``stem``, ``stage1``..``stageN`` and ``pooled`` as
``nnx.Intermediate`` (collected by ``mhkd_jax.models.features``).
"""

import functools

from flax import nnx

from mhkd_jax.models import (
  imagenet_resnet,
  mobilenetv2,
  resnet,
  resnetv2,
  shufflenet,
  vgg,
  wrn,
)
from mhkd_jax.run import errors

_REGISTRY = {}
for _family in (
  resnet,
  wrn,
  vgg,
  mobilenetv2,
  shufflenet,
  resnetv2,
  imagenet_resnet,
):
  _REGISTRY.update(_family.MODELS)

MODEL_NAMES = tuple(sorted(_REGISTRY))


def create_model(name: str, *, num_classes: int, rngs: nnx.Rngs) -> nnx.Module:
  """Builds a model by its RepDistiller name."""
  if name not in _REGISTRY:
    raise errors.ConfigError(
      f'Unknown model {name!r}. Valid names: {", ".join(MODEL_NAMES)}.'
    )
  return _REGISTRY[name](num_classes=num_classes, rngs=rngs)


@functools.cache
def feature_modules(name: str) -> tuple[str, ...]:
  """The top-level attributes of model ``name`` that RepDistiller's
  ``get_feat_modules()`` returns: what its init phases (AB, FSP) train.
  The rest (the classifier, and WRN's final ``bn1``, MobileNetV2's
  ``conv2``, ShuffleV2's ``conv2``/``bn2``) is left untouched there."""
  model = nnx.eval_shape(
    lambda: create_model(name, num_classes=1, rngs=nnx.Rngs(0))
  )
  return type(model).FEAT_MODULES
