"""Probabilistic knowledge transfer (PKT; Passalis & Tefas, ECCV 2018), as
in RepDistiller: ``CE + 30000 * PKT(pooled)``."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common


@base.register
class ProbabilisticKT(common.WeightedDistillation):
  """Matches the batch's cosine-similarity distributions."""

  name = 'pkt'
  BETA = 30000.0
  TERM = 'pkt/pooled'

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del trainable, batch, context
    return losses.pkt_loss(s_feats['pooled'], teacher_out.feats['pooled'])
