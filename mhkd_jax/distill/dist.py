"""DIST (Huang et al., NeurIPS 2022), as hunto's DIST_KD code:
``ce_weight * CE + kd_weight * (beta * T^2 inter + gamma * T^2 intra)``
on softmax(z / T) of the final logits.

Defaults are the CIFAR-100 run of DIST_KD (its ``dist_cifar.yaml``:
``ori_loss_weight`` 1, ``kd_loss_weight`` 2, ``kd: dist_t4``, so T 4 and
beta = gamma = 1). That recipe is RepDistiller's (240 epochs, batch 64, SGD
0.05, 0.01 for MobileNetV2 and the ShuffleNets, x0.1 after 150, 180, 210),
which ``configs/cifar100.py`` already gives every method.
"""

import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base
from mhkd_jax.models import features


@base.register
class DIST(base.Method):
  """Inter- and intra-class Pearson relations of the softened logits."""

  name = 'dist'

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      'ce_weight': 1.0, 'kd_weight': 2.0, 'beta': 1.0, 'gamma': 1.0,
      'temperature': 4.0,
    })

  def validate_config(self, check):
    for key in ('ce_weight', 'kd_weight', 'beta', 'gamma'):
      check.number(f'dist.{key}', minimum=0)
    check.number('dist.temperature', minimum=0, strict=True)

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return self.cfg.ce_weight

  def loss(self, trainable, teacher_out, batch, context):
    del context
    cfg = self.cfg
    logits, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    relations = losses.dist_terms(logits, teacher_out.logits,
                                  cfg.temperature)
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'dist/inter': relations['inter'],
      'dist/intra': relations['intra'],
    }
    # The same sum as losses.dist_loss, from the terms already computed.
    terms['dist/logits'] = (cfg.beta * relations['inter']
                            + cfg.gamma * relations['intra'])
    total = cfg.ce_weight * terms['ce'] + cfg.kd_weight * terms['dist/logits']
    return total, terms, logits
