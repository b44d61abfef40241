"""MHKD phase 1: fit auxiliary heads on a frozen teacher by cross-entropy.

The teacher backbone is frozen (eval mode, stop-gradiented features); only
the heads train. The run's export is the teacher together with its fitted
heads, which ``config.mhkd.teacher_heads='pretrain'`` then loads frozen.
"""

import jax

from mhkd_jax import heads, losses
from mhkd_jax.distill import mhkd
from mhkd_jax.distill.base import Trainable

NEEDS_TEACHER = True


def create_trainable(config, *, teacher, num_classes, input_shape, rngs):
  stages = mhkd.teacher_stages_of(config, teacher.model, input_shape)
  teacher_heads = heads.create_heads(
    config.mhkd.head, teacher.model, stages, num_classes=num_classes,
    input_shape=input_shape, width=config.mhkd.head_width, rngs=rngs,
  )
  return Trainable(teacher_heads=teacher_heads)


def compute_loss(trainable, teacher_out, images, labels, config):
  del images, config
  head_logits = trainable.teacher_heads(
    jax.lax.stop_gradient(teacher_out.feats), train=True
  )
  terms = {
    f'ce/teacher_head/{stage}': losses.cross_entropy(logits, labels)
    for stage, logits in head_logits.items()
  }
  total = sum(terms.values())
  return total, terms, None
