"""Model registry: ``create_model(name, *, num_classes, rngs)``.

Names are RepDistiller's ``model_dict`` keys (plus ResNet18/34 of its
``resnetv2.py`` and the torchvision-layout ``imagenet_resnet18/34``).
Every model takes NHWC images
and ``train`` (BatchNorm batch statistics vs running averages), returns
logits, and sows ``stem``, ``stage1``..``stageN`` and ``pooled`` as
``nnx.Intermediate`` (collected by ``mhkd_jax.models.features``).
"""

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
