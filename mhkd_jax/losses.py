"""Pure loss and agreement functions on logits.

All reductions follow RepDistiller so that numbers are comparable with the
PyTorch literature: cross-entropy is a batch mean, and the distillation term
is ``DistillKL``: KL(softmax(t/T) || softmax(s/T)) summed over classes,
averaged over the batch, times T^2 (the T^2 keeps gradient magnitudes
independent of T, as in Hinton et al.).
"""

import jax
import jax.numpy as jnp


def _label_log_probs(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log softmax(logits)[label], float32 [B, 1]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)


def negative_log_likelihood(
  logits: jax.Array, labels: jax.Array
) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels: [B]."""
  return -_label_log_probs(logits, labels)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy against integer labels."""
  return -jnp.mean(_label_log_probs(logits, labels))


def kd_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
) -> jax.Array:
  """RepDistiller's DistillKL: T^2 * mean_batch KL(p_t^T || p_s^T).

  The teacher logits are not stop-gradiented here: the caller decides which
  side is a target (the step stops gradients into the frozen teacher).
  """
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, -1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, -1)
  p_t = jnp.exp(log_p_t)
  # p_t * (log p_t - log p_s); where p_t underflows to 0 the term is 0.
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  return jnp.mean(kl) * t * t


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per example: whether the top-1 prediction is the label (bool [B])."""
  return jnp.argmax(logits, -1) == labels


def agrees(a_logits: jax.Array, b_logits: jax.Array) -> jax.Array:
  """Per example: whether two classifiers' top-1 classes agree (bool [B])."""
  return jnp.argmax(a_logits, -1) == jnp.argmax(b_logits, -1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of top-1 predictions equal to the label."""
  return jnp.mean(correct(logits, labels))


def top1_agreement(a_logits: jax.Array, b_logits: jax.Array) -> jax.Array:
  """Fraction of examples on which two classifiers' top-1 classes agree."""
  return jnp.mean(agrees(a_logits, b_logits))
