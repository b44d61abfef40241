"""Factor transfer (FT; Kim et al., NeurIPS 2018), as in RepDistiller.

Preliminary phase (``ft_paraphraser``, run first inside the FT run, in
``workdir/preliminary``): a paraphraser (3 conv encoder, 3 transposed-conv
decoder, LeakyReLU 0.1, factor rate k = 0.5) learns to reconstruct the
frozen teacher's last-stage map (MSE) for ``init_epochs`` = 30 epochs at a
constant rate (0.01 for ResNet and WRN students, RepDistiller's rule).
Then the student trains with ``CE + 200 * FT``: a translator (3 convs with
BatchNorm) maps its last stage to a factor that must match the frozen
paraphraser's encoding of the teacher's (normalised maps, L1).
"""

import jax
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import layers

# RepDistiller's init phase uses lr 0.01 for these students (pretrain.py).
_LOW_LR_STUDENTS = frozenset({
  'resnet8', 'resnet14', 'resnet20', 'resnet32', 'resnet44', 'resnet56',
  'resnet110', 'resnet8x4', 'resnet32x4', 'wrn_16_1', 'wrn_16_2',
  'wrn_40_1', 'wrn_40_2',
})


def _conv3x3(cin, cout, rngs):
  return layers.conv(cin, cout, 3, padding=1, bias=True,
                     kernel_init=layers.torch_default_kernel, rngs=rngs)


def _deconv3x3(cin, cout, rngs):
  return layers.TransposedConv(cin, cout, 3, stride=1, padding=1, rngs=rngs)


def _leaky(x):
  return jax.nn.leaky_relu(x, 0.1)


class Paraphraser(nnx.Module):
  """Encoder to ``k * C`` channels and decoder back (no BatchNorm)."""

  def __init__(self, channels, *, k=0.5, rngs):
    factor = int(channels * k)
    self.encoder = nnx.List([
      _conv3x3(channels, channels, rngs), _conv3x3(channels, factor, rngs),
      _conv3x3(factor, factor, rngs),
    ])
    self.decoder = nnx.List([
      _deconv3x3(factor, factor, rngs), _deconv3x3(factor, channels, rngs),
      _deconv3x3(channels, channels, rngs),
    ])

  def encode(self, x):
    for conv in self.encoder:
      x = _leaky(conv(x))
    return x

  def __call__(self, x):
    """(factor, reconstruction)."""
    factor = y = self.encode(x)
    for conv in self.decoder:
      y = _leaky(conv(y))
    return factor, y


class Translator(nnx.Module):
  """The student's encoder: 3 conv-BatchNorm-LeakyReLU to ``k * C_t``."""

  def __init__(self, s_channels, t_channels, *, k=0.5, rngs):
    factor = int(t_channels * k)
    sizes = [(s_channels, s_channels), (s_channels, factor),
             (factor, factor)]
    self.convs = nnx.List([_conv3x3(a, b, rngs) for a, b in sizes])
    self.bns = nnx.List([layers.batch_norm(b, rngs=rngs) for _, b in sizes])

  def __call__(self, x, *, train: bool):
    for conv, bn in zip(self.convs, self.bns):
      x = _leaky(bn(conv(x), use_running_average=not train))
    return x


def _last_stage(feats):
  return common.stages(feats)[-1]


@base.register
class FactorTransfer(common.WeightedDistillation):
  """Matches translated student factors to the teacher's paraphrased ones."""

  name = 'ft'
  BETA = 200.0
  TERM = 'ft/last_stage'

  @classmethod
  def extra_config(cls):
    return {'k': 0.5, 'p1': 2.0, 'p2': 1.0, 'init_epochs': 30}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('ft.k', minimum=0, strict=True)
    check.number('ft.init_epochs', minimum=1, integer=True)

  def create_modules(self, student, teacher, data, rngs):
    s_c = _last_stage(common.feature_shapes(student, data))[-1]
    t_c = _last_stage(common.feature_shapes(teacher.model, data))[-1]
    return {
      'translator': Translator(s_c, t_c, k=self.cfg.k, rngs=rngs),
      'paraphraser': Paraphraser(t_c, k=self.cfg.k, rngs=rngs),
    }

  def trained_parameters(self):
    # The paraphraser was fitted in the preliminary phase: used frozen.
    return nnx.All(nnx.Param, nnx.Not(nnx.PathContains('paraphraser')))

  def preliminary(self):
    rate = (0.01 if self.config.model in _LOW_LR_STUDENTS
            else self.config.learning_rate)
    return 'preliminary', common.preliminary_config(
      self.config, 'ft_paraphraser', rate
    )

  def load_preliminary(self, trainable, preliminary):
    nnx.update(trainable.paraphraser, nnx.state(preliminary.paraphraser))

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    del batch, context
    factor_s = trainable.translator(_last_stage(s_feats), train=True)
    factor_t = trainable.paraphraser.encode(_last_stage(teacher_out.feats))
    return losses.factor_loss(factor_s, jax.lax.stop_gradient(factor_t),
                              self.cfg.p1, self.cfg.p2)


@base.register
class FitParaphraser(base.Method):
  """FT's preliminary phase: the paraphraser alone, on the teacher."""

  name = 'ft_paraphraser'
  phase_of = 'ft'

  def config_sections(self):
    return ('ft',)  # the paraphraser's factor rate k

  def create_trainable(self, teacher, data, rngs):
    t_c = _last_stage(common.feature_shapes(teacher.model, data))[-1]
    return base.Trainable(
      paraphraser=Paraphraser(t_c, k=self.config.ft.k, rngs=rngs)
    )

  def loss(self, trainable, teacher_out, batch, context):
    del batch, context
    target = _last_stage(teacher_out.feats)
    _, reconstruction = trainable.paraphraser(target)
    mse = losses.hint_loss(reconstruction, target)
    return mse, {'mse/reconstruction': mse}, None

  def agreement_pairs(self, trainable):
    return {}

  def export(self, trainable, teacher):
    return None
