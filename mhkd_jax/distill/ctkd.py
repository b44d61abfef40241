"""CTKD (Li et al., AAAI 2023), as the LS code's ``CTKD/`` folder runs it:
KD at a learnable temperature that the student's optimizer trains through
a gradient-reversal layer.

  T = t_start + t_end * sigmoid(grl(global_t, lambda_e))
  L = w_ce * CE + w_kd * KD_T(s, t)

``global_t`` (one parameter, initialised to 1, under the student's SGD and
weight decay, as CTKD puts it in its ``trainable_list``) is the identity
forward; its gradient is multiplied by lambda_e. lambda_e is CTKD's
``CosineDecay`` of the 1-based epoch e, from ``decay_max`` to
``decay_min`` over ``decay_loops`` epochs:
(cos(pi * min(e, loops) / loops) + 1) / 2 * (max - min) + min; with the
script's 0, -1, 10 it falls from 0 to -1, so the temperature ascends the
KD loss (the student descends it) ever more strongly. Defaults are its
CIFAR script (``run_cifar_distill.sh``: -r 0.1 -a 9, t_start 1, t_end
20). Its ``kd_T`` (2) is unused once the temperature is learnt.

LS: the folder's ``train_student.py`` picks the standardising KD when
``--logit_stand`` is *absent* (its test is inverted), and its script does
not pass it: its runs, the LS README's CTKD+Ours, are standardised. Here
``ctkd.logit_standardize`` says what it means, True by default to match.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, standardize
from mhkd_jax.models import features


@jax.custom_vjp
def gradient_reversal(x: jax.Array, scale: jax.Array) -> jax.Array:
  """Identity forward; backward multiplies the gradient by ``scale``
  (CTKD's GradientReversalFunction: the reversal is a negative scale)."""
  del scale
  return x


def _grl_fwd(x, scale):
  return x, scale


def _grl_bwd(scale, g):
  return (g * scale.astype(g.dtype), jnp.zeros_like(scale))


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


def cosine_decay(epoch: jax.Array, max_value: float, min_value: float,
                 loops: float) -> jax.Array:
  """CTKD's CosineDecay.get_value at the 1-based ``epoch``."""
  i = jnp.clip(epoch, 0, loops).astype(jnp.float32)
  value = (jnp.cos(i * math.pi / loops) + 1.0) * 0.5
  return value * (max_value - min_value) + min_value


class GlobalTemperature(nnx.Module):
  """CTKD's Global_T: one learnable value, initialised to 1."""

  def __init__(self):
    self.value = nnx.Param(jnp.ones((1,), jnp.float32))


@base.register
class CTKD(base.Method):
  """KD at a curriculum temperature learnt adversarially."""

  name = 'ctkd'

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      'w_ce': 0.1, 'w_kd': 9.0, 't_start': 1.0, 't_end': 20.0,
      'decay_max': 0.0, 'decay_min': -1.0, 'decay_loops': 10,
      'logit_standardize': True,
    })

  def validate_config(self, check):
    for key in ('w_ce', 'w_kd', 't_end'):
      check.number(f'ctkd.{key}', minimum=0)
    check.number('ctkd.t_start', minimum=0, strict=True)
    check.number('ctkd.decay_loops', minimum=1, integer=True)
    for key in ('decay_max', 'decay_min'):
      check.number(f'ctkd.{key}', minimum=-math.inf)
    standardize.validate(check, 'ctkd')

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs),
                          temperature=GlobalTemperature())

  def task_weight(self):
    return self.cfg.w_ce

  def loss(self, trainable, teacher_out, batch, context):
    cfg = self.cfg
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    # CTKD's epochs start at 1.
    scale = cosine_decay(context.epoch + 1, cfg.decay_max, cfg.decay_min,
                         cfg.decay_loops)
    global_t = gradient_reversal(trainable.temperature.value[...], scale)
    temperature = cfg.t_start + cfg.t_end * jax.nn.sigmoid(global_t[0])
    kd_s, kd_t = standardize.logits(cfg.logit_standardize, logits,
                                    teacher_out.logits)
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'kd/logits': losses.kd_loss(kd_s, kd_t, temperature),
      'ctkd/temperature': temperature,
      'ctkd/lambda': scale,
    }
    total = cfg.w_ce * terms['ce'] + cfg.w_kd * terms['kd/logits']
    return total, terms, logits
