"""FitNets (Romero et al., ICLR 2015), as in RepDistiller: ``CE + 100 *
MSE(ConvReg(s_stage2), t_stage2)``; the hint is ``feat[2]`` (stage 2) and
the regressor (``ConvReg``: a conv chosen by the two maps' sizes, then
BatchNorm and ReLU) trains with the student."""

from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import layers
from mhkd_jax.run import errors


class ConvReg(nnx.Module):
  """RepDistiller's regressor from a student map to a teacher map.

  Student twice the teacher's size: conv3x3 stride 2; half: transposed
  conv 4x4 stride 2; otherwise a valid conv whose kernel takes the
  difference; then BatchNorm (and ReLU). PyTorch's default init.
  """

  def __init__(self, s_shape, t_shape, *, use_relu=True, rngs):
    _, s_h, s_w, s_c = s_shape
    _, t_h, t_w, t_c = t_shape
    if s_h == 2 * t_h:
      self.conv = layers.conv(s_c, t_c, 3, stride=2, padding=1, bias=True,
                              kernel_init=layers.torch_default_kernel,
                              rngs=rngs)
    elif 2 * s_h == t_h:
      self.conv = layers.TransposedConv(s_c, t_c, 4, stride=2, padding=1, rngs=rngs)
    elif s_h >= t_h:
      kernel = (1 + s_h - t_h, 1 + s_w - t_w)
      fan_in = s_c * kernel[0] * kernel[1]
      self.conv = nnx.Conv(
        s_c, t_c, kernel, padding='VALID', use_bias=True,
        kernel_init=layers.torch_default_kernel,
        bias_init=layers.torch_default_bias(fan_in), rngs=rngs,
      )
    else:
      raise errors.ConfigError(
        f'FitNet cannot regress a {s_h}x{s_w} student map onto a '
        f'{t_h}x{t_w} teacher map (RepDistiller handles twice, half or a '
        'smaller teacher map); choose another fitnet.hint_stage.'
      )
    self.bn = layers.batch_norm(t_c, rngs=rngs)
    self.use_relu = use_relu

  def __call__(self, x, *, train: bool):
    x = self.bn(self.conv(x), use_running_average=not train)
    return nnx.relu(x) if self.use_relu else x


@base.register
class FitNet(common.WeightedDistillation):
  """Regresses a middle student stage onto the teacher's."""

  name = 'fitnet'
  BETA = 100.0
  TERM = 'hint/stage'

  @classmethod
  def extra_config(cls):
    # RepDistiller's hint_layer 2: feat[2], the output of stage 2.
    return {'hint_stage': 'stage2'}

  def create_modules(self, student, teacher, data, rngs):
    stage = self.cfg.hint_stage
    s_shapes = common.feature_shapes(student, data)
    t_shapes = common.feature_shapes(teacher.model, data)
    if stage not in s_shapes or stage not in t_shapes:
      raise errors.ConfigError(
        f'config.fitnet.hint_stage={stage!r}: the student has '
        f'{sorted(s_shapes)}, the teacher {sorted(t_shapes)}.'
      )
    return {'regressor': ConvReg(s_shapes[stage], t_shapes[stage],
                                 rngs=rngs)}

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del batch, context
    stage = self.cfg.hint_stage
    hint = trainable.regressor(s_feats[stage], train=True)
    return losses.hint_loss(hint, teacher_out.feats[stage])
