"""Relational KD (RKD; Park et al., CVPR 2019), as in RepDistiller:
``CE + 1 * (25 * distance + 50 * angle)`` on the pooled features."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common


@base.register
class RelationalKD(common.WeightedDistillation):
  """Matches pairwise distances and triplet angles of the batch."""

  name = 'rkd'
  BETA = 1.0
  TERM = 'rkd/pooled'

  @classmethod
  def extra_config(cls):
    return {'w_distance': 25.0, 'w_angle': 50.0}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('rkd.w_distance', minimum=0)
    check.number('rkd.w_angle', minimum=0)

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del trainable, batch, context
    return losses.rkd_loss(s_feats['pooled'], teacher_out.feats['pooled'],
                           self.cfg.w_distance, self.cfg.w_angle)
