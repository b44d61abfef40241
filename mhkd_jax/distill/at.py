"""Attention transfer (AT; Zagoruyko & Komodakis, ICLR 2017), as in
RepDistiller: ``CE + 1000 * sum_k AT(stage_k)`` over every stage output
(``feat[1:-1]``), p = 2."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common


@base.register
class AttentionTransfer(common.WeightedDistillation):
  """Matches the normalised spatial attention maps of paired stages."""

  name = 'at'
  BETA = 1000.0
  TERM = 'at/stages'

  @classmethod
  def extra_config(cls):
    return {'p': 2.0}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('at.p', minimum=0, strict=True)

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del trainable, batch, context
    pairs = zip(common.stages(s_feats), common.stages(teacher_out.feats))
    return sum(losses.attention_loss(s, t, self.cfg.p) for s, t in pairs)
