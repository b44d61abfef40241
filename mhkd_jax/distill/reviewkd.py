"""Knowledge review (ReviewKD; Chen et al., CVPR 2021), as in mdistiller:
``ce_weight * CE + reviewkd_weight * min(epoch / warmup, 1) * HCL``.

The student's stage maps and its pooled feature (as a 1x1 map) are read
from the deepest to the shallowest. Each level has an attention-based
fusion module (``ABF``): a 1x1 conv + BatchNorm to a common width, fused
with the level below it (the deeper one, resized to this level's map by
nearest neighbour) through two sigmoid attention maps, resized to the
teacher's map size, then a 3x3 conv + BatchNorm to the teacher's channels.
The fused maps are matched to the teacher's pre-ReLU stage maps and its
pooled feature by the hierarchical context loss (``losses.hcl_loss``).

The per-architecture settings of mdistiller's configs (``IN_CHANNELS``,
``OUT_CHANNELS``, ``SHAPES``, ``OUT_SHAPES``; the ReviewKD authors'
``build_review_kd`` for the other CIFAR students) are the channels and
sizes of these maps, so they are read from the two networks here: the
student's stage channels plus its pooled width, the teacher's, the
student's map sizes (where each residual is resized to) and the
teacher's (where each fused map is resized to). For every student of
those tables this gives their numbers.
"""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base
from mhkd_jax.models import features, layers
from mhkd_jax.run import errors

# mdistiller's mid channel is min(512, in_channels[-1]), the student's
# pooled width capped at 512. Its config's MAX_MID_CHANNEL is read but
# never used (the ResNet50 -> MobileNetV1 config sets 256 and still gets
# 512), so it is no key here.
MID_CHANNEL_CAP = 512
POOLED = 'pooled'

# torch.nn.init.kaiming_uniform_(w, a=1): gain^2 = 2 / (1 + a^2) = 1, so
# U(-sqrt(3 / fan_in), sqrt(3 / fan_in)).
kaiming_uniform_a1 = nnx.initializers.variance_scaling(
  1.0, 'fan_in', 'uniform')


def resize_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """PyTorch's ``F.interpolate(x, size, mode='nearest')`` on NHWC: output
  row i takes input row floor(i * in / out), for up- and downsampling."""
  out_h, out_w = size
  in_h, in_w = x.shape[1], x.shape[2]
  if (in_h, in_w) == (out_h, out_w):
    return x
  rows = (jnp.arange(out_h) * in_h) // out_h
  cols = (jnp.arange(out_w) * in_w) // out_w
  return x[:, rows][:, :, cols]


class ABF(nnx.Module):
  """One level of the review: transform, fuse with the deeper level,
  output at the teacher's size and width.

  Named as mdistiller's module (``conv1.0``, ``conv1.1``, ``conv2.0``,
  ``conv2.1``, ``att_conv.0``), so a PyTorch state_dict maps onto it. Its
  init: kaiming-uniform (a=1) for the two convs, PyTorch's default for the
  attention conv and its bias, BatchNorm scale 1 and shift 0.
  """

  def __init__(self, in_channels, mid_channels, out_channels, fuse, *,
               rngs):
    self.conv1 = nnx.List([
      layers.conv(in_channels, mid_channels, 1,
                  kernel_init=kaiming_uniform_a1, rngs=rngs),
      layers.batch_norm(mid_channels, rngs=rngs),
    ])
    self.conv2 = nnx.List([
      layers.conv(mid_channels, out_channels, 3, padding=1,
                  kernel_init=kaiming_uniform_a1, rngs=rngs),
      layers.batch_norm(out_channels, rngs=rngs),
    ])
    # The deepest level (the pooled feature) has nothing below to fuse.
    self.att_conv = nnx.List([
      layers.conv(2 * mid_channels, 2, 1, bias=True,
                  kernel_init=layers.torch_default_kernel, rngs=rngs),
    ]) if fuse else None

  def __call__(self, x, residual, out_size, *, train: bool):
    """Returns ``(output, residual for the next, shallower level)``."""
    x = layers.run_sequential(self.conv1, x, train=train)
    if self.att_conv is not None:
      residual = resize_nearest(residual, x.shape[1:3]).astype(x.dtype)
      z = nnx.sigmoid(self.att_conv[0](
        jnp.concatenate([x, residual], axis=-1)))
      x = x * z[..., 0:1] + residual * z[..., 1:2]
    x = resize_nearest(x, out_size)
    return layers.run_sequential(self.conv2, x, train=train), x


def _as_map(x: jax.Array) -> jax.Array:
  """A pooled (N, C) feature as the (N, 1, 1, C) map the review reads."""
  return x[:, None, None, :] if x.ndim == 2 else x


def _levels(shapes, prefix: str, role: str, model_name: str) -> list[str]:
  """The feature names of the review's levels: each stage's (``stage<k>``
  or ``preact<k>``), then the pooled feature."""
  names = [n.replace('stage', prefix) for n in features.stage_names(shapes)]
  missing = [n for n in [*names, POOLED] if n not in shapes]
  if missing:
    raise errors.ConfigError(
      f'reviewkd reads the {role}\'s {prefix}<k> maps and pooled feature, '
      f'but {model_name} does not sow {missing}; choose a model that sows '
      'them (every model of mhkd_jax.models does).'
    )
  return [*names, POOLED]


@base.register
class ReviewKD(base.Method):
  """Fused student maps, deepest first, onto the teacher's pre-ReLU maps."""

  name = 'reviewkd'

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      # mdistiller's CFG.REVIEWKD defaults (its CIFAR-100 config sets the
      # weight to 5, configs/cifar100.py per pair).
      'ce_weight': 1.0,
      'reviewkd_weight': 1.0,
      # The review term ramps up over this many epochs (1-based epoch e
      # weighs it by min(e / warmup, 1)); 0: no ramp.
      'warmup_epochs': 20,
      # True: the student's pre-activations instead of its stage outputs
      # (mdistiller's STU_PREACT; its ImageNet configs set it).
      'student_preact': False,
    })

  def validate_config(self, check):
    for key in ('ce_weight', 'reviewkd_weight'):
      check.number(f'reviewkd.{key}', minimum=0)
    check.number('reviewkd.warmup_epochs', minimum=0, integer=True)

  def create_trainable(self, teacher, data, rngs):
    student = self.create_student(data, rngs)
    s_shapes = features.feature_shapes(student, data.input_shape)
    t_shapes = features.feature_shapes(teacher.model, data.input_shape)
    s_names = _levels(s_shapes,
                      'preact' if self.cfg.student_preact else 'stage',
                      'student', self.config.model)
    t_names = _levels(t_shapes, 'preact', 'teacher', teacher.name)
    if len(s_names) != len(t_names):
      raise errors.ConfigError(
        f'reviewkd pairs the student\'s stages with the teacher\'s one to '
        f'one, but the student {self.config.model} has '
        f'{len(s_names) - 1} stages and the teacher {teacher.name} '
        f'{len(t_names) - 1} (mdistiller has no rule for that); choose '
        'networks with equal stage counts: the ResNets, WRNs and '
        'ShuffleNets have 3, the VGGs, MobileNetV2, ResNet50 and ResNet18/34 '
        'have 4.'
      )
    in_channels = [s_shapes[n][-1] for n in s_names]
    mid = min(MID_CHANNEL_CAP, in_channels[-1])
    abfs = nnx.List([
      ABF(c_in, mid, t_shapes[t][-1], k < len(s_names) - 1, rngs=rngs)
      for k, (c_in, t) in enumerate(zip(in_channels, t_names))
    ])
    out_sizes = tuple(tuple(t_shapes[t][1:3]) if t != POOLED else (1, 1)
                      for t in t_names)
    return base.Trainable(
      student=student, abfs=abfs, pairs=tuple(zip(s_names, t_names)),
      out_sizes=out_sizes,
    )

  def task_weight(self):
    return self.cfg.ce_weight

  def review(self, trainable, s_feats):
    """The fused maps, shallowest first, from the student's features."""
    maps = [_as_map(s_feats[s]) for s, _ in trainable.pairs]
    abfs, sizes = trainable.abfs, trainable.out_sizes
    out, residual = abfs[-1](maps[-1], None, sizes[-1], train=True)
    results = [out]
    for k in reversed(range(len(maps) - 1)):
      out, residual = abfs[k](maps[k], residual, sizes[k], train=True)
      results.insert(0, out)
    return results

  def loss(self, trainable, teacher_out, batch, context):
    cfg = self.cfg
    logits, s_feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    results = self.review(trainable, s_feats)
    targets = [_as_map(teacher_out.feats[t]) for _, t in trainable.pairs]
    # mdistiller numbers epochs from 1: the first epoch weighs 1 / warmup.
    warmup = jnp.minimum(
      (context.epoch + 1) / max(cfg.warmup_epochs, 1), 1.0)
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'reviewkd/hcl': losses.hcl_loss(results, targets),
      'reviewkd/warmup': warmup,
    }
    total = (cfg.ce_weight * terms['ce']
             + cfg.reviewkd_weight * warmup * terms['reviewkd/hcl'])
    return total, terms, logits
