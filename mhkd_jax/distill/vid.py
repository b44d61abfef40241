"""Variational information distillation (VID; Ahn et al., CVPR 2019), as
in RepDistiller: ``CE + 1 * sum_k VID(stage_k)`` over every stage output;
per stage a regressor (three 1x1 convs, ReLU between, no bias) predicts
the teacher's map, under a learned per-channel variance."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import layers


class VIDRegressor(nnx.Module):
  """One stage's mean regressor and log-scale (variance) parameter."""

  def __init__(self, in_channels, mid_channels, out_channels, *, rngs,
               init_pred_var=5.0, eps=1e-5):
    def conv1x1(cin, cout):
      return layers.conv(cin, cout, 1, kernel_init=layers.torch_default_kernel,
                         rngs=rngs)

    self.conv1 = conv1x1(in_channels, mid_channels)
    self.conv2 = conv1x1(mid_channels, mid_channels)
    self.conv3 = conv1x1(mid_channels, out_channels)
    # softplus(log_scale) + eps starts at init_pred_var.
    init = np.log(np.exp(init_pred_var - eps) - 1.0)
    self.log_scale = nnx.Param(jnp.full((out_channels,), init, jnp.float32))

  def __call__(self, x):
    return self.conv3(nnx.relu(self.conv2(nnx.relu(self.conv1(x)))))


@base.register
class VariationalInformationDistillation(common.WeightedDistillation):
  """Maximises a variational bound on the stages' mutual information."""

  name = 'vid'
  BETA = 1.0
  TERM = 'vid/stages'

  @classmethod
  def extra_config(cls):
    return {'init_pred_var': 5.0}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('vid.init_pred_var', minimum=0, strict=True)

  def create_modules(self, student, teacher, data, rngs):
    s_shapes = common.feature_shapes(student, data)
    t_shapes = common.feature_shapes(teacher.model, data)
    pairs = zip(common.stages(s_shapes), common.stages(t_shapes))
    return {'regressors': nnx.List([
      VIDRegressor(s[-1], t[-1], t[-1], rngs=rngs,
                   init_pred_var=self.cfg.init_pred_var)
      for s, t in pairs
    ])}

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del batch, context
    pairs = zip(common.stages(s_feats), common.stages(teacher_out.feats),
                trainable.regressors)
    total = 0.0
    for f_s, f_t, regressor in pairs:
      f_s, f_t = losses.pool_to_smaller(f_s, f_t)
      total = total + losses.vid_loss(regressor(f_s), f_t,
                                      regressor.log_scale[...])
    return total
