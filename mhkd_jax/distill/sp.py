"""Similarity-preserving KD (SP; Tung & Mori, ICCV 2019), as in
RepDistiller: ``CE + 3000 * SP(last stage)`` (``feat[-2]``)."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import features


@base.register
class SimilarityPreserving(common.WeightedDistillation):
  """Matches the batch similarity (Gram) matrices of the last stage."""

  name = 'sp'
  BETA = 3000.0
  TERM = 'sp/last_stage'

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del trainable, batch, context
    last = features.stage_names(s_feats)[-1]
    t_last = features.stage_names(teacher_out.feats)[-1]
    return losses.similarity_loss(s_feats[last], teacher_out.feats[t_last])
