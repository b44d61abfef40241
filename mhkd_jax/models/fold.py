"""Folds a frozen network's BatchNorms into the convolutions before them.

A frozen teacher runs in eval mode, where BatchNorm is a fixed per-channel
affine map ``y = (x - mean) * s + beta`` with ``s = gamma / sqrt(var +
eps)``. When ``x`` is a convolution's output, ``conv(z, k) * s + b`` is
``conv(z, k * s) + b``: scaling the kernel and adding a bias once, when the
teacher is loaded, removes every BatchNorm pass after a convolution from
every step. The BatchNorm's output is then the convolution's output, so a
feature sown after a BatchNorm (a stage output, a pre-activation) keeps
its value. BatchNorms whose input is not a convolution's output (a
residual sum, a pre-activation block's input) are left as they are.

Which convolution feeds which BatchNorm is found by one eager forward on a
single example, recording each BatchNorm whose input is the very array a
convolution returned and that is not also sown as a feature (a stem
feature keeps its pre-BatchNorm value), so no model needs to declare its
pairs.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from mhkd_jax.models import features


class FoldedBatchNorm(nnx.Module):
  """What a folded BatchNorm becomes: the identity (its convolution now
  computes its output). Accepts BatchNorm's arguments."""

  def __call__(self, x, use_running_average=None, *, mask=None):
    del use_running_average, mask
    return x


@contextlib.contextmanager
def _recording_pairs(pairs: list, sown: set):
  conv_call, bn_call = nnx.Conv.__call__, nnx.BatchNorm.__call__
  sow = nnx.Module.sow
  made_by: dict[int, nnx.Conv] = {}

  def record_sow(self, variable_type, name, value, *args, **kwargs):
    sown.add(id(value))
    return sow(self, variable_type, name, value, *args, **kwargs)

  def conv(self, x, *args, **kwargs):
    y = conv_call(self, x, *args, **kwargs)
    made_by[id(y)] = (self, y)  # y kept alive: ids stay unique
    return y

  def bn(self, x, *args, **kwargs):
    source = made_by.get(id(x))
    if source is not None and source[1] is x:
      pairs.append((source[0], self, x))
    return bn_call(self, x, *args, **kwargs)

  nnx.Conv.__call__, nnx.BatchNorm.__call__ = conv, bn
  nnx.Module.sow = record_sow
  try:
    yield
  finally:
    nnx.Conv.__call__, nnx.BatchNorm.__call__ = conv_call, bn_call
    nnx.Module.sow = sow


def _fold_pair(conv: nnx.Conv, bn: nnx.BatchNorm) -> None:
  scale = bn.scale[...] if bn.scale is not None else 1.0
  offset = bn.bias[...] if bn.bias is not None else 0.0
  s = scale * jax.lax.rsqrt(bn.var[...] + bn.epsilon)
  bias = conv.bias[...] if conv.bias is not None else 0.0
  conv.kernel = nnx.Param(conv.kernel[...] * s)
  conv.bias = nnx.Param(
    jnp.broadcast_to((bias - bn.mean[...]) * s + offset, s.shape)
  )
  conv.use_bias = True


def _replace(model: nnx.Module, targets: set[int]) -> int:
  """Replaces every BatchNorm in ``targets`` (by id) with the identity."""
  replaced = 0
  for path, node in list(nnx.iter_graph(model)):
    if id(node) not in targets or not path:
      continue
    parent = model
    for key in path[:-1]:
      parent = parent[key] if isinstance(key, int) else getattr(parent, key)
    if isinstance(path[-1], int):
      parent[path[-1]] = FoldedBatchNorm()
    else:
      setattr(parent, path[-1], FoldedBatchNorm())
    replaced += 1
  return replaced


def folded_teacher(teacher, input_shape: tuple[int, ...]):
  """A copy of the teacher role (``distill.base.Teacher``) whose backbone
  is folded, for the compiled steps. The loaded teacher keeps its
  BatchNorms: methods read its modules at setup, and fit_teacher_heads
  exports it as a checkpoint that must load into the unfolded
  architecture. Its heads are not folded (they are small)."""
  copy = nnx.clone(teacher)
  fold_batchnorm(copy.model, input_shape)
  return copy


def fold_batchnorm(model: nnx.Module, input_shape: tuple[int, ...]) -> int:
  """Folds ``model``'s conv -> BatchNorm pairs in place, for eval mode
  only (the folded model cannot train). Returns how many were folded.

  ``input_shape``: one example's shape with a batch axis of 1, e.g.
  ``(1, 32, 32, 3)``.
  """
  pairs, sown = [], set()
  with _recording_pairs(pairs, sown):
    features.forward_with_features(
      model, jnp.zeros(input_shape, jnp.float32), train=False
    )
  # A convolution output that is also sown (a stem feature) must keep its
  # pre-BatchNorm value: that pair stays unfolded. So does a convolution
  # or BatchNorm met twice (shared modules).
  folded, convs = {}, set()
  for conv, bn, x in pairs:
    if id(x) in sown or id(bn) in folded or id(conv) in convs:
      continue
    folded[id(bn)] = (conv, bn)
    convs.add(id(conv))
  for conv, bn in folded.values():
    _fold_pair(conv, bn)
  return _replace(model, set(folded))
