"""Multi-head knowledge distillation (MHKD, arXiv 2012.02911).

Project reading (specs/mhkd.md; every weight is a config field)::

  L = w_ce * CE(s, y) + w_kd * KD_T(s, t)
    + sum_k w_head * [KD_T(s_k, sg(t_k)) + w_head_ce * CE(s_k, y)]
    + [online teacher heads] sum_k CE(t_k(sg(teacher feats)), y)

Student stage k's head s_k is matched with teacher stage k's head t_k. The
student-head terms back-propagate into the student backbone: that is how
MHKD teaches intermediate layers. Teacher heads are either fitted before
(``teacher_heads='pretrain'``: a separate run with the 'teacher_heads'
method, loaded frozen with the teacher) or trained here (``'online'``)
from stop-gradiented teacher features, and their outputs are
stop-gradiented inside the KD terms, so the student never pulls them.
"""

import jax

from mhkd_jax import features, heads, losses
from mhkd_jax.distill.base import Trainable
from mhkd_jax.models import create_model

NEEDS_TEACHER = True
TEACHER_HEAD_MODES = ('pretrain', 'online')


def teacher_stages_of(config, teacher_model, input_shape):
  """Teacher stages to tap; defaults follow the student stage names."""
  if config.mhkd.teacher_stages:
    return tuple(config.mhkd.teacher_stages)
  if config.mhkd.stages:
    return tuple(config.mhkd.stages)
  shapes = features.feature_shapes(teacher_model, input_shape)
  return features.stage_names(shapes)[:-1]


def create_trainable(config, *, teacher, num_classes, input_shape, rngs):
  cfg = config.mhkd
  if cfg.teacher_heads not in TEACHER_HEAD_MODES:
    raise ValueError(
      f'config.mhkd.teacher_heads={cfg.teacher_heads!r}; valid: '
      f'{", ".join(TEACHER_HEAD_MODES)}.'
    )
  model = create_model(config.model, num_classes=num_classes, rngs=rngs)
  student_heads = heads.create_heads(
    cfg.head, model, tuple(cfg.stages) or None, num_classes=num_classes,
    input_shape=input_shape, width=cfg.head_width, rngs=rngs,
  )
  t_stages = tuple(cfg.teacher_stages) or student_heads.spec.stages
  if len(t_stages) != len(student_heads.spec.stages):
    raise ValueError(
      f'config.mhkd.teacher_stages {t_stages} must pair one to one with the '
      f'student stages {student_heads.spec.stages}.'
    )
  if cfg.teacher_heads == 'online':
    teacher_heads = heads.create_heads(
      cfg.head, teacher.model, t_stages, num_classes=num_classes,
      input_shape=input_shape, width=cfg.head_width, rngs=rngs,
    )
    return Trainable(model=model, heads=student_heads,
                     teacher_heads=teacher_heads)
  # 'pretrain': the teacher must arrive with frozen heads on those stages.
  if teacher.heads is None:
    raise ValueError(
      "config.mhkd.teacher_heads='pretrain' needs a teacher checkpoint that "
      'holds fitted teacher heads, and config.teacher.init has none. Fit '
      'them first with the teacher_heads method (phase 1, e.g. '
      '--config=configs/cifar100_resnet32x4_resnet8x4.py:teacher_heads) and '
      "point config.teacher.init at that run's workdir, or use "
      "config.mhkd.teacher_heads='online'."
    )
  if tuple(teacher.heads.spec.stages) != t_stages:
    raise ValueError(
      f'The teacher checkpoint has heads on {teacher.heads.spec.stages}, '
      f'but MHKD pairs student stages {student_heads.spec.stages} with '
      f'teacher stages {t_stages}. Set config.mhkd.teacher_stages to match '
      'or refit the teacher heads.'
    )
  return Trainable(model=model, heads=student_heads)


def compute_loss(trainable, teacher_out, images, labels, config):
  cfg = config.mhkd
  logits, feats = features.forward_with_features(
    trainable.model, images, train=True
  )
  student_head_logits = trainable.heads(feats, train=True)
  terms = {}
  if trainable.teacher_heads is not None:
    # Online: heads learn from frozen, stop-gradiented teacher features.
    teacher_head_logits = trainable.teacher_heads(
      jax.lax.stop_gradient(teacher_out.feats), train=True
    )
    for stage, t_logits in teacher_head_logits.items():
      terms[f'ce/teacher_head/{stage}'] = losses.cross_entropy(
        t_logits, labels
      )
  else:
    teacher_head_logits = teacher_out.head_logits
  terms['ce'] = losses.cross_entropy(logits, labels)
  terms['kd/logits'] = losses.kd_loss(
    logits, teacher_out.logits, cfg.temperature
  )
  total = cfg.w_ce * terms['ce'] + cfg.w_kd * terms['kd/logits']
  s_stages = trainable.heads.spec.stages
  t_stages = tuple(cfg.teacher_stages) or s_stages
  for s_stage, t_stage in zip(s_stages, t_stages, strict=True):
    target = jax.lax.stop_gradient(teacher_head_logits[t_stage])
    s_logits = student_head_logits[s_stage]
    kd = losses.kd_loss(s_logits, target, cfg.temperature)
    ce = losses.cross_entropy(s_logits, labels)
    terms[f'kd/{s_stage}'] = kd
    terms[f'ce/{s_stage}'] = ce
    total = total + cfg.w_head * (kd + cfg.w_head_ce * ce)
  for stage in t_stages:
    if f'ce/teacher_head/{stage}' in terms:
      total = total + terms[f'ce/teacher_head/{stage}']
  return total, terms, logits
