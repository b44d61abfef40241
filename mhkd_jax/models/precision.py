"""Mixed precision: the dtype that convolutions, linears and BatchNorm
compute in, apart from the dtype of the parameters.

Flax layers carry a computation ``dtype`` next to ``param_dtype``. Setting
the first to bfloat16 on every conv, linear and BatchNorm of the student,
its heads and the teacher gives the usual GPU/TPU mixed-precision recipe
without touching any model code:

* parameters, optimizer state, gradients and checkpoints stay float32
  (layers cast their float32 kernels to bf16 on the way in, and the
  gradient flows back through that cast into float32);
* BatchNorm statistics are computed in float32 (Flax promotes them) and its
  running averages stay float32;
* the losses cast logits to float32 before the softmax (``losses.py``), so
  only the activations between layers are bf16.

The attribute is static, so it becomes part of the graphdef the step is
compiled for; saved states are identical whatever the compute dtype.
"""

import jax.numpy as jnp
from flax import nnx

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype for ``config.compute_dtype`` (one of COMPUTE_DTYPES,
  checked by ``run.validation``)."""
  return COMPUTE_DTYPES[name]


def set_compute_dtype(module: nnx.Module | None, dtype) -> None:
  """Makes every conv, linear and BatchNorm of ``module`` compute in dtype.

  Parameters keep their dtype. ``None`` modules (an absent teacher or
  head set) are skipped so callers can pass optional parts as they are.
  """
  if module is None:
    return
  for _, m in nnx.iter_graph(module):
    if isinstance(m, (nnx.Conv, nnx.Linear, nnx.BatchNorm)):
      m.dtype = dtype
