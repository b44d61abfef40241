"""Contrastive representation distillation (CRD; Tian et al., ICLR 2020),
as in RepDistiller: ``CE + 0.8 * CRD(pooled)``.

Both pooled features go through a trained linear embedding (128, l2-
normalised). Two memory banks hold a running embedding of every training
example (student side, teacher side; method state, updated in the step
with momentum 0.5 and saved in checkpoints). Each example is contrasted
with its own memory row and ``nce_k`` = 16,384 rows of other-class
examples through an NCE objective at temperature 0.07, in both directions.

Negatives are drawn as RepDistiller's ``CIFAR100InstanceSample`` does:
for each example, ``nce_k`` distinct examples of the other classes
(without replacement), or with replacement when its pool holds fewer than
``nce_k``. The difference from RepDistiller, on purpose: they are drawn in
the jitted step from the run's key (RepDistiller's data loader draws them
in NumPy), so the same seed gives other indices than PyTorch's; with no
labels available the pool is every example.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import layers
from mhkd_jax.run import errors


class Embed(nnx.Module):
  """CRD's embedding: flatten, linear, l2-normalise (no epsilon)."""

  def __init__(self, dim_in, dim_out, *, rngs):
    self.linear = layers.linear(dim_in, dim_out, rngs=rngs)

  def __call__(self, x):
    x = self.linear(x.reshape(x.shape[0], -1))
    return x / jnp.sqrt(jnp.sum(x**2, axis=1, keepdims=True))


def _memory(key, n, dim):
  """RepDistiller's initial memory: U(-stdv, stdv), stdv = 1/sqrt(dim/3)."""
  stdv = 1.0 / math.sqrt(dim / 3)
  return jax.random.uniform(key, (n, dim), jnp.float32, -stdv, stdv)


def _update_memory(memory, rows, v, momentum):
  """Momentum update of the batch's rows, renormalised (no epsilon)."""
  new = memory[rows] * momentum + jax.lax.stop_gradient(v) * (1 - momentum)
  new = new / jnp.sqrt(jnp.sum(new**2, axis=1, keepdims=True))
  return memory.at[rows].set(new)


@base.register
class ContrastiveRepresentationDistillation(common.WeightedDistillation):
  """NCE between student and teacher embeddings, with memory banks."""

  name = 'crd'
  BETA = 0.8
  TERM = 'crd/pooled'

  @classmethod
  def extra_config(cls):
    # negatives_with_replacement: always draw with replacement (about 15%
    # duplicates at 16,384 of 49,500; a cheap randint instead of a top-k
    # over the data set per example, ~0.5 s a CIFAR-100 step on 2 CPU
    # cores). False is RepDistiller's sampling.
    return {'feat_dim': 128, 'nce_k': 16384, 'nce_t': 0.07, 'nce_m': 0.5,
            'negatives_with_replacement': False}

  def validate_config(self, check):
    super().validate_config(check)
    check.number(f'{self.name}.feat_dim', minimum=1, integer=True)
    check.number(f'{self.name}.nce_k', minimum=1, integer=True)
    check.number(f'{self.name}.nce_t', minimum=0, strict=True)
    check.number(f'{self.name}.nce_m', minimum=0)

  def create_modules(self, student, teacher, data, rngs):
    cfg, n = self.cfg, data.num_train_examples
    s_dim = common.feature_shapes(student, data)['pooled'][-1]
    t_dim = common.feature_shapes(teacher.model, data)['pooled'][-1]
    modules = {
      'embed_s': Embed(s_dim, cfg.feat_dim, rngs=rngs),
      'embed_t': Embed(t_dim, cfg.feat_dim, rngs=rngs),
      # memory_s holds student embeddings, memory_t teacher ones
      # (RepDistiller's memory_v1, memory_v2), drawn in that order.
      'memory_s': base.MethodState(_memory(rngs.params(), n, cfg.feat_dim)),
      'memory_t': base.MethodState(_memory(rngs.params(), n, cfg.feat_dim)),
      # NCE normalisers, fixed from the first batch (-1: not yet).
      'z_s': base.MethodState(jnp.float32(-1.0)),
      'z_t': base.MethodState(jnp.float32(-1.0)),
    }
    modules.update(_negative_sampler(data))
    return modules

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    cfg = self.cfg
    n = trainable.memory_s.shape[0]
    if n != context.num_train_examples:
      raise errors.ConfigError(
        f'The CRD memory has {n} rows, the training set '
        f'{context.num_train_examples} examples.'
      )
    v_s = trainable.embed_s(s_feats['pooled'])
    v_t = trainable.embed_t(teacher_out.feats['pooled'])
    idx = jnp.concatenate(
      [batch.indices[:, None],
       _draw_negatives(trainable, batch, cfg.nce_k, context.rng,
                       always_replace=cfg.negatives_with_replacement)],
      axis=1
    )
    memory_s, memory_t = trainable.memory_s[...], trainable.memory_t[...]

    def scores(memory, v):  # exp(<memory rows, v> / T): (B, K + 1)
      rows = jax.lax.stop_gradient(memory[idx])
      return jnp.exp(jnp.einsum('bkd,bd->bk', rows, v) / cfg.nce_t)

    out_s, out_t = scores(memory_t, v_s), scores(memory_s, v_t)
    z_s = jnp.where(trainable.z_s[...] < 0,
                    jax.lax.stop_gradient(jnp.mean(out_s)) * n,
                    trainable.z_s[...])
    z_t = jnp.where(trainable.z_t[...] < 0,
                    jax.lax.stop_gradient(jnp.mean(out_t)) * n,
                    trainable.z_t[...])
    trainable.z_s[...], trainable.z_t[...] = z_s, z_t
    trainable.memory_s[...] = _update_memory(memory_s, batch.indices, v_s,
                                             cfg.nce_m)
    trainable.memory_t[...] = _update_memory(memory_t, batch.indices, v_t,
                                             cfg.nce_m)
    return (losses.contrast_loss(out_s / z_s, n)
            + losses.contrast_loss(out_t / z_t, n))


def _negative_sampler(data) -> dict:
  """The training examples sorted by class, and each class's span: enough
  to draw other-class examples uniformly inside the step."""
  labels = data.train_labels
  if labels is None:
    labels = np.zeros((data.num_train_examples,), np.int32)
  labels = np.asarray(labels)
  order = np.argsort(labels, kind='stable').astype(np.int32)
  counts = np.bincount(labels, minlength=data.num_classes).astype(np.int32)
  starts = (np.cumsum(counts) - counts).astype(np.int32)
  # Constants of the run, kept with the method state so that they are
  # device arrays (not compile-time constants) and travel with the memory.
  return {
    'by_class': base.MethodState(jnp.asarray(order)),
    'class_start': base.MethodState(jnp.asarray(starts)),
    'class_count': base.MethodState(jnp.asarray(counts)),
  }


def _draw_negatives(trainable, batch, k, rng, always_replace=False):
  """(B, k) indices of examples of other classes: a uniform k-subset of
  the example's pool (distinct indices) when the pool has at least k
  examples, else k uniform draws with replacement, as RepDistiller's
  ``np.random.choice(pool, k, replace=k > len(pool))``; with
  ``always_replace``, k draws with replacement for every row. Without
  labels (one class) the pool is every example."""
  n = trainable.by_class.shape[0]
  start = trainable.class_start[...][batch.labels][:, None]
  count = trainable.class_count[...][batch.labels][:, None]
  single_class = count == n
  pool = jnp.where(single_class, n, n - count)
  rng_with, rng_without = jax.random.split(rng)
  # With replacement: uniform over the pool's positions, which are the
  # class-sorted order with the example's own class span cut out.
  u = jax.random.randint(rng_with, (batch.labels.shape[0], k), 0, pool)
  j = jnp.where(single_class | (u < start), u, u + count)
  if k <= n and not always_replace:
    # Without replacement: the k smallest of i.i.d. uniform keys over the
    # pool's positions are a uniform k-subset (own class keyed above 1).
    position = jnp.arange(n)[None, :]
    own = (position >= start) & (position < start + count) & ~single_class
    keys = jax.random.uniform(rng_without, (batch.labels.shape[0], n))
    _, subset = jax.lax.top_k(-jnp.where(own, 2.0, keys), k)
    j = jnp.where(pool >= k, subset, j)
  return trainable.by_class[...][j]
