"""Neuron selectivity transfer (NST; Huang & Wang, 2017), as in
RepDistiller: ``CE + 50 * sum_k NST(stage_k)`` over every stage output."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common


@base.register
class NeuronSelectivityTransfer(common.WeightedDistillation):
  """Polynomial-kernel MMD between the channels' activation patterns."""

  name = 'nst'
  BETA = 50.0
  TERM = 'nst/stages'

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del trainable, batch, context
    pairs = zip(common.stages(s_feats), common.stages(teacher_out.feats))
    return sum(losses.nst_loss(s, t) for s, t in pairs)
