"""The one place that collects the features the models sow.

Models call ``self.sow(nnx.Intermediate, name, x)`` for ``stem``,
``stage1``..``stageN``, ``pooled`` and ``preact1``..``preactN`` (each
stage's pre-activation, RepDistiller's ``preact=True`` features); sowing outside ``nnx.capture`` is
deprecated since flax 0.12.6, so every forward that needs features goes
through ``forward_with_features``. Sown values come back as 1-tuples:
they are unwrapped here, once.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def forward_with_features(
  model: nnx.Module, x: jax.Array, *, train: bool
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Runs ``model`` and returns ``(logits, {'stem': .., 'stage1': .., ..})``."""
  logits, captured = nnx.capture(
    lambda m, inputs: m(inputs, train=train), nnx.Intermediate
  )(model, x)
  feats = {}
  for name, value in captured.items():
    value = value.get_value() if hasattr(value, 'get_value') else value
    if isinstance(value, tuple):
      if len(value) != 1:
        raise ValueError(
          f'Feature {name!r} was sown {len(value)} times in one forward; '
          'each feature name must be sown exactly once.'
        )
      value = value[0]
    feats[name] = value
  return logits, feats


def stage_names(feats: dict[str, jax.Array]) -> tuple[str, ...]:
  """The model's stage feature names in order: ('stage1', 'stage2', ...)."""
  names = [k for k in feats if k.startswith('stage')]
  return tuple(sorted(names, key=lambda k: int(k[len('stage') :])))


def bn_before_relu(model: nnx.Module) -> dict[str, nnx.BatchNorm]:
  """``'preact<k>'`` -> the BatchNorm whose output (plus a residual, for
  ResNets) is that pre-activation: OFD's margins come from its scale and
  shift. A model family declares them with a ``bn_before_relu()`` method.
  """
  if not hasattr(model, 'bn_before_relu'):
    raise ValueError(
      f'{type(model).__name__} does not say which BatchNorm precedes each '
      "stage's ReLU (as in mdistiller, MobileNetV2 and ShuffleNets are not "
      'OFD teachers); use a ResNet, WRN or VGG teacher.'
    )
  return {f'preact{i + 1}': bn
          for i, bn in enumerate(model.bn_before_relu())}


def feature_shapes(
  model: nnx.Module, input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
  """Shapes of every sown feature for a given input shape, without compute.

  Heads read their input channel counts from here, so configs never type
  channel numbers.
  """

  def run(m):
    _, feats = forward_with_features(
      m, jnp.zeros(input_shape, jnp.float32), train=False
    )
    return feats

  shapes = nnx.eval_shape(run, model)
  return {k: tuple(v.shape) for k, v in shapes.items()}
