"""Correlation congruence (CC; Peng et al., ICCV 2019), RepDistiller's
reading: ``CE + 0.02 * CC(embed_s(pooled_s), embed_t(pooled_t))`` with a
trained linear embedding (128) on each side."""

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import layers


@base.register
class CorrelationCongruence(common.WeightedDistillation):
  """Correlation between consecutive examples' embedding differences."""

  name = 'cc'
  BETA = 0.02
  TERM = 'cc/pooled'

  @classmethod
  def extra_config(cls):
    return {'feat_dim': 128}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('cc.feat_dim', minimum=1, integer=True)

  def create_modules(self, student, teacher, data, rngs):
    s_dim = common.feature_shapes(student, data)['pooled'][-1]
    t_dim = common.feature_shapes(teacher.model, data)['pooled'][-1]
    return {
      'embed_s': layers.linear(s_dim, self.cfg.feat_dim, rngs=rngs),
      'embed_t': layers.linear(t_dim, self.cfg.feat_dim, rngs=rngs),
    }

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del batch, context
    return losses.correlation_loss(
      trainable.embed_s(s_feats['pooled']),
      trainable.embed_t(teacher_out.feats['pooled']),
    )
