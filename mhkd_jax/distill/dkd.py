"""Decoupled KD (DKD; Zhao et al., CVPR 2022), as in mdistiller:
``ce * CE + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)`` at T 4
(mdistiller's CIFAR-100 defaults: ce 1, alpha 1, beta 8, warm-up 20
epochs; beta is per teacher-student pair in its configs).
``dkd.logit_standardize`` is LS's DKD (the LS code's ``DKD.py``)."""

import jax.numpy as jnp
import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base, standardize
from mhkd_jax.models import features


@base.register
class DecoupledKD(base.Method):
  """Target-class and non-target-class KD, weighted apart."""

  name = 'dkd'

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      'ce_weight': 1.0, 'alpha': 1.0, 'beta': 8.0, 'temperature': 4.0,
      # The DKD term ramps up linearly over this many epochs (1-based
      # epoch e gives min(e / warmup, 1)).
      'warmup_epochs': 20,
      # LS: z-score both logits before the DKD term (distill/standardize).
      'logit_standardize': False,
    })

  def validate_config(self, check):
    for key in ('ce_weight', 'alpha', 'beta'):
      check.number(f'dkd.{key}', minimum=0)
    check.number('dkd.temperature', minimum=0, strict=True)
    check.number('dkd.warmup_epochs', minimum=0, integer=True)
    standardize.validate(check, 'dkd')

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return self.cfg.ce_weight

  def loss(self, trainable, teacher_out, batch, context):
    cfg = self.cfg
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    # mdistiller numbers epochs from 1: the first epoch weighs 1 / warmup.
    warmup = jnp.minimum((context.epoch + 1) / max(cfg.warmup_epochs, 1),
                         1.0)
    kd_s, kd_t = standardize.logits(cfg.logit_standardize, logits,
                                    teacher_out.logits)
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'dkd/logits': losses.dkd_loss(
        kd_s, kd_t, batch.labels, cfg.alpha, cfg.beta, cfg.temperature,
      ),
      'dkd/warmup': warmup,
    }
    total = cfg.ce_weight * terms['ce'] + warmup * terms['dkd/logits']
    return total, terms, logits
