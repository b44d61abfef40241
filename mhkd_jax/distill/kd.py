"""Hinton's knowledge distillation, RepDistiller's KD run:
``w_ce * CE(s, y) + w_kd * KD_T(s, t)`` (0.1, 0.9, T 4 by default);
``kd.logit_standardize`` is LS's KD (the LS code's ``KD.py``)."""

import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base, standardize
from mhkd_jax.models import features


@base.register
class KD(base.Method):
  """KD of the final logits (RepDistiller's ``DistillKL``)."""

  name = 'kd'

  @classmethod
  def default_config(cls):
    # RepDistiller's KD run: 0.1 CE + 0.9 KD at T 4.
    return ml_collections.ConfigDict(
      {'temperature': 4.0, 'w_ce': 0.1, 'w_kd': 0.9,
       # LS: z-score both logits before the KD term (distill/standardize).
       'logit_standardize': False}
    )

  def validate_config(self, check):
    check.number('kd.temperature', minimum=0, strict=True)
    for weight in ('w_ce', 'w_kd'):
      check.number(f'kd.{weight}', minimum=0)
    standardize.validate(check, 'kd')

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return self.cfg.w_ce

  def loss(self, trainable, teacher_out, batch, context):
    del context
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    kd_s, kd_t = standardize.logits(self.cfg.logit_standardize, logits,
                                    teacher_out.logits)
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'kd/logits': losses.kd_loss(kd_s, kd_t, self.cfg.temperature),
    }
    total = self.cfg.w_ce * terms['ce'] + self.cfg.w_kd * terms['kd/logits']
    return total, terms, logits
