"""Self-supervised KD with singular value decomposition (KDSVD; Lee et al.,
ECCV 2018), as in mdistiller: ``ce_weight * CE + feat_weight * L_svd``.

``L_svd`` (``losses.kdsvd_loss``) compares, between consecutive stages, an
RBF kernel of the leading right singular vectors of the student's and the
teacher's post-ReLU stage maps. As in mdistiller a map is the matrix (C*H)
x W, so the vectors live on the image width, not on the channels as in the
authors' TensorFlow code (docs/methods.md#kdsvd); the stages pair from the
first (mdistiller zips ``feats[1:]``), and the teacher runs in eval mode.
Two choices of ours: the teacher's vectors get a canonical sign (an SVD's
sign is arbitrary and the loss is not invariant to it), and a pair of maps
of different sizes, which mdistiller cannot compare, is pooled to the
smaller one first (RepDistiller's rule), so every CIFAR-100 pair runs.
mdistiller's defaults: k = 1, CE weight 1, feature weight 1.
"""

import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import features


@base.register
class KDSVD(base.Method):
  """Kernel of leading singular vectors between consecutive stages."""

  name = 'kdsvd'
  TERM = 'kdsvd/stages'

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      # mdistiller's CFG.KDSVD: the teacher's singular vectors per stage
      # (the student's: k + 3) and the two loss weights.
      'k': 1, 'ce_weight': 1.0, 'feat_weight': 1.0,
    })

  def validate_config(self, check):
    check.number('kdsvd.k', minimum=1, integer=True)
    for key in ('ce_weight', 'feat_weight'):
      check.number(f'kdsvd.{key}', minimum=0)

  def create_trainable(self, teacher, data, rngs):
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return self.cfg.ce_weight

  def loss(self, trainable, teacher_out, batch, context):
    del context
    cfg = self.cfg
    logits, s_feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    # zip pairs from the first stage and stops at the shorter network.
    pairs = [losses.pool_to_smaller(s, t) for s, t in zip(
      common.stages(s_feats), common.stages(teacher_out.feats))]
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      self.TERM: losses.kdsvd_loss([s for s, _ in pairs],
                                   [t for _, t in pairs], cfg.k),
    }
    total = cfg.ce_weight * terms['ce'] + cfg.feat_weight * terms[self.TERM]
    return total, terms, logits
