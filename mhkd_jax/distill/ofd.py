"""Overhaul of feature distillation (OFD; Heo et al., ICCV 2019), as in
mdistiller: ``ce_weight * CE + feat_weight * sum_k L_k / 2^(n-1-k)``.

``L_k`` is the partial L2 (``losses.ofd_loss``) between a connector (1x1
conv + BatchNorm, trained with the student) of the student's stage-k
pre-activation and the teacher's stage-k pre-activation, average-pooled
to the student's size. Below the margin of a channel the teacher's
negative responses are not matched: the margin is the expectation of the
teacher's pre-ReLU response given that it is negative, for a Gaussian with
the scale and shift of the BatchNorm before that ReLU (-3 scale where that
probability is under 0.1%). The n stages are the last n of each network
(mdistiller's ``_align_list``); the deepest weighs 1, each shallower one
half the next.

As in mdistiller (and the OFD authors' code), the teacher runs with its
BatchNorms on the batch's statistics (train mode) while the student
trains; its weights and running statistics stay as loaded. mdistiller's
CIFAR-100 defaults: CE weight 1, feature weight 1e-3, 1x1 connectors.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base
from mhkd_jax.models import features, layers
from mhkd_jax.run import errors


class Connector(nnx.Module):
  """Student map -> teacher channels: conv (no bias) then BatchNorm.

  mdistiller's init: conv weights normal(0, sqrt(2 / (k*k*out))) (kaiming
  fan-out), BatchNorm scale 1 and shift 0 (the defaults)."""

  def __init__(self, s_channels, t_channels, kernel_size, *, rngs):
    self.conv = layers.conv(s_channels, t_channels, kernel_size,
                            padding=(kernel_size - 1) // 2, rngs=rngs)
    self.bn = layers.batch_norm(t_channels, rngs=rngs)

  def __call__(self, x, *, train: bool):
    return self.bn(self.conv(x), use_running_average=not train)


def margins(bn: nnx.BatchNorm) -> jax.Array:
  """Per channel, E[x | x < 0] for x ~ N(shift, |scale|^2) of ``bn``; -3
  |scale| where P(x < 0) <= 0.001 (mdistiller's rule)."""
  scale, shift = bn.scale.get_value(), bn.bias.get_value()
  if isinstance(scale, jax.ShapeDtypeStruct):
    # A shapes-only teacher (config and shape checks): no values to read.
    return jnp.zeros(scale.shape, jnp.float32)
  std = jnp.abs(jnp.asarray(scale, jnp.float32))
  mean = jnp.asarray(shift, jnp.float32)
  below = jax.scipy.stats.norm.cdf(-mean / std)
  safe = jnp.where(below > 0.001, below, 1.0)
  expected = (-std * jnp.exp(-((mean / std) ** 2) / 2)
              / math.sqrt(2 * math.pi) / safe + mean)
  return jnp.where(below > 0.001, expected, -3 * std)


def _preact_names(shapes: dict, role: str, model_name: str) -> list[str]:
  names = [n.replace('stage', 'preact') for n in
           features.stage_names(shapes)]
  missing = [n for n in names if n not in shapes]
  if missing:
    raise errors.ConfigError(
      f'OFD distils pre-activations, but the {role} {model_name} does not '
      f'sow {missing}; choose a model that sows preact<k> for each stage.'
    )
  return names


@base.register
class OFD(base.Method):
  """Connectors onto the teacher's pre-ReLU maps, with a margin."""

  name = 'ofd'
  teacher_batch_statistics = True

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      # mdistiller's CFG.OFD.LOSS and CFG.OFD.CONNECTOR.
      'ce_weight': 1.0, 'feat_weight': 1e-3, 'kernel_size': 1,
    })

  def validate_config(self, check):
    for key in ('ce_weight', 'feat_weight'):
      check.number(f'ofd.{key}', minimum=0)
    if check.number('ofd.kernel_size', minimum=1, integer=True):
      check.require(check.value('ofd.kernel_size') % 2 == 1,
                    'ofd.kernel_size',
                    'must be odd (a connector keeps the map size).')
    check.require(
      not check.value('teacher.fold_batchnorm'), 'teacher.fold_batchnorm',
      'must be False for ofd: its teacher normalises by the batch\'s '
      'statistics, which a folded BatchNorm no longer has.')

  def create_trainable(self, teacher, data, rngs):
    student = self.create_student(data, rngs)
    s_shapes = features.feature_shapes(student, data.input_shape)
    t_shapes = features.feature_shapes(teacher.model, data.input_shape)
    s_names = _preact_names(s_shapes, 'student', self.config.model)
    t_names = _preact_names(t_shapes, 'teacher', teacher.name)
    try:
      bns = features.bn_before_relu(teacher.model)
    except ValueError as e:
      raise errors.ConfigError(f'ofd: {e}') from None
    n = min(len(s_names), len(t_names))
    s_names, t_names = s_names[-n:], t_names[-n:]
    connectors = nnx.List([
      Connector(s_shapes[s][-1], t_shapes[t][-1], self.cfg.kernel_size,
                rngs=rngs)
      for s, t in zip(s_names, t_names)
    ])
    return base.Trainable(
      student=student, connectors=connectors,
      margins=nnx.List([base.MethodState(margins(bns[t])) for t in t_names]),
      pairs=tuple(zip(s_names, t_names)),
    )

  def task_weight(self):
    return self.cfg.ce_weight

  def loss(self, trainable, teacher_out, batch, context):
    del context
    cfg = self.cfg
    logits, s_feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    pairs = trainable.pairs
    feat = jnp.zeros((), jnp.float32)
    for k, ((s, t), connector, margin) in enumerate(
        zip(pairs, trainable.connectors, trainable.margins)):
      source = connector(s_feats[s], train=True)
      target = losses.adaptive_avg_pool(teacher_out.feats[t],
                                        source.shape[1])
      feat = feat + losses.ofd_loss(source, target, margin[...]) / (
        2 ** (len(pairs) - 1 - k))
    terms = {'ce': losses.cross_entropy(logits, batch.labels),
             'ofd/preacts': feat}
    total = cfg.ce_weight * terms['ce'] + cfg.feat_weight * feat
    return total, terms, logits
