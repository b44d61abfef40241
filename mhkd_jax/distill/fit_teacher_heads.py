"""MHKD phase 1: fit auxiliary heads on a frozen teacher by cross-entropy.

The teacher backbone is frozen (eval mode, stop-gradiented features); only
the heads train. The run's export is the teacher together with its fitted
heads, which ``config.mhkd.teacher_head_mode='pretrain'`` then loads
frozen.
"""

import jax
import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base
from mhkd_jax.models import heads


@base.register
class FitTeacherHeads(base.Method):
  """CE on heads over the frozen teacher's features; no student."""

  name = 'fit_teacher_heads'

  @classmethod
  def default_config(cls):
    cfg = ml_collections.ConfigDict()
    # Head architecture: 'dih', 'light' or 'linear' (mhkd_jax/models/heads.py).
    cfg.head = 'dih'
    # Head width; None = the kind's default (dih 256, light 128).
    cfg.head_width = ml_collections.config_dict.placeholder(int)
    # Teacher stages that get heads; () = every stage but the last (the
    # stages MHKD pairs with by default).
    cfg.stages = ()
    return cfg

  def validate_config(self, check):
    check.choice('fit_teacher_heads.head', heads.HEAD_KINDS, 'head kind')
    check.number('fit_teacher_heads.head_width', minimum=1, integer=True,
                 optional=True)
    check.names('fit_teacher_heads.stages')

  def create_trainable(self, teacher, data, rngs):
    teacher_heads = heads.create_heads(
      self.cfg.head, teacher.model, tuple(self.cfg.stages) or None,
      num_classes=data.num_classes, input_shape=data.input_shape,
      width=self.cfg.head_width, rngs=rngs,
    )
    return base.Trainable(teacher_heads=teacher_heads)

  def loss(self, trainable, teacher_out, batch, context):
    del context
    head_logits = trainable.teacher_heads(
      jax.lax.stop_gradient(teacher_out.feats), train=True
    )
    terms = {
      f'ce/teacher_head/{stage}': losses.cross_entropy(logits, batch.labels)
      for stage, logits in head_logits.items()
    }
    return sum(terms.values()), terms, None

  def eval_needs_teacher_features(self):
    return True

  def eval_logits(self, trainable, images, teacher_out):
    del images
    head_logits = trainable.teacher_heads(teacher_out.feats, train=False)
    return {f'{base.TEACHER}/{s}': l for s, l in head_logits.items()}

  def agreement_pairs(self, trainable):
    del trainable
    return {}

  def export(self, trainable, teacher):
    return base.Export(teacher.model, trainable.teacher_heads, teacher.name)
