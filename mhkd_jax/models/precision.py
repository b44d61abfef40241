"""Mixed precision: the one rule for which dtype each layer computes in.

``config.compute_dtype`` (float32 or bfloat16) is the dtype of the
activations between layers. Parameters, optimizer state, gradients and
checkpoints stay float32 whatever it is. ``set_compute_dtype`` applies
this rule to every layer of a module (student, heads, a method's
regressors, the teacher):

* convolutions (``nnx.Conv``, ``layers.TransposedConv``) compute in the
  compute dtype: they are nearly all the FLOPs. Their float32 kernels are
  cast on the way in, and the gradient flows back through the cast into
  float32;
* linears compute in float32: they are the classifiers (the logits feed
  softmaxes) and the embeddings whose outputs feed losses, and they are a
  negligible share of the FLOPs. Their bf16 inputs are cast up;
* BatchNorm computes its batch statistics and normalises in float32, in
  training and in eval mode (``layers.BatchNorm``), and hands the next
  layer its input's dtype.

The losses cast everything they are given to float32 (``losses``), so
every loss and every feature statistic (Gram matrices, distances,
attention maps) is float32 too; only the activations are bf16.

The frozen teacher never trains, so its convolution weights are stored in
the compute dtype once, when it is placed (``frozen_weights``), instead of
being cast in every step.

The ``dtype`` attribute is static: it becomes part of the graphdef the
step is compiled for, and saved states are identical whatever the compute
dtype.
"""

import jax.numpy as jnp
from flax import nnx

from mhkd_jax.models import layers
from mhkd_jax.run import platform

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The rule: layers that compute in the compute dtype, and layers that
# compute in float32 whatever it is.
IN_COMPUTE_DTYPE = (nnx.Conv, nnx.ConvTranspose, layers.TransposedConv)
IN_FLOAT32 = (nnx.Linear, nnx.BatchNorm)


def compute_dtype(name: str):
  """The jnp dtype for ``config.compute_dtype`` (one of COMPUTE_DTYPES or
  'auto', checked by ``run.validation``; 'auto' is this platform's
  default, ``run.platform``)."""
  return COMPUTE_DTYPES[platform.choice('compute_dtype', name)]


def layer_dtype(layer: nnx.Module, dtype):
  """The dtype ``layer`` computes in when the run's compute dtype is
  ``dtype``; None for a module that is not a layer with a dtype."""
  if isinstance(layer, IN_COMPUTE_DTYPE):
    return dtype
  if isinstance(layer, IN_FLOAT32):
    return jnp.float32
  if hasattr(layer, 'dtype') and hasattr(layer, 'param_dtype'):
    raise TypeError(
      f'{type(layer).__name__} has a compute dtype and no precision rule: '
      'add its class to IN_COMPUTE_DTYPE or IN_FLOAT32 in '
      'mhkd_jax/models/precision.py.'
    )
  return None


def set_compute_dtype(module: nnx.Module | None, dtype) -> None:
  """Applies the rule to every layer of ``module`` for compute ``dtype``.

  Parameters keep their dtype. ``None`` modules (an absent teacher or
  head set) are skipped so callers can pass optional parts as they are.
  """
  if module is None:
    return
  for _, m in nnx.iter_graph(module):
    if isinstance(m, nnx.Module):
      layer = layer_dtype(m, dtype)
      if layer is not None:
        m.dtype = layer


def frozen_weights(module: nnx.Module) -> None:
  """Stores the weights of ``module``'s convolutions in the dtype they
  compute in (after ``set_compute_dtype``), in place.

  For a frozen network only (the teacher): it is never differentiated, so
  the cast that a trained layer does in every step can be done once. The
  float32 layers (linears, BatchNorm) keep float32 weights, so a float32
  run changes nothing.
  """
  for _, m in nnx.iter_graph(module):
    if not isinstance(m, IN_COMPUTE_DTYPE) or m.dtype is None:
      continue
    for name in ('kernel', 'bias'):
      weight = getattr(m, name, None)
      if isinstance(weight, nnx.Param) and weight[...].dtype != m.dtype:
        setattr(m, name, nnx.Param(weight[...].astype(m.dtype)))
