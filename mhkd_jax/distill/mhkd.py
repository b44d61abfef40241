"""Multi-head knowledge distillation (MHKD, arXiv 2012.02911).

Project reading (docs/methods.md; every weight is a config field)::

  L = w_ce * CE(s, y) + w_kd * KD_T(s, t)
    + sum_k w_head * [KD_T(s_k, sg(t_k)) + w_head_ce * CE(s_k, y)]
    + [online teacher heads] sum_k CE(t_k(sg(teacher feats)), y)

With ``mhkd.logit_standardize`` every KD_T term (final and head pairs)
sees LS's z-scored logits on both sides.

Student stage k's head s_k is matched with teacher stage k's head t_k. The
student-head terms back-propagate into the student backbone: that is how
MHKD teaches intermediate layers. Teacher heads are either fitted before
(``teacher_head_mode='pretrain'``: a run of the ``fit_teacher_heads``
method, whose export is the teacher with its heads, loaded frozen) or
trained here (``'online'``) from stop-gradiented teacher features; their
outputs are stop-gradiented inside the KD terms, so the student never
pulls them.
"""

import jax
import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base, standardize
from mhkd_jax.models import features, heads
from mhkd_jax.run import errors

# Where the teacher's heads come from: fitted by a fit_teacher_heads run
# and loaded frozen with the teacher, or trained in this run.
TEACHER_HEAD_MODES = ('pretrain', 'online')


@base.register
class MHKD(base.Method):
  """KD of the final logits plus KD between paired auxiliary heads."""

  name = 'mhkd'

  @classmethod
  def default_config(cls):
    cfg = ml_collections.ConfigDict()
    # Student stages that get heads; () = every stage but the last.
    cfg.stages = ()
    # Teacher stages paired with them in order; () = the same names.
    cfg.teacher_stages = ()
    # Head architecture of the student's heads (and of online teacher
    # heads): 'dih', 'light' or 'linear' (mhkd_jax/models/heads.py).
    cfg.head = 'dih'
    # Head width; None = the kind's default (dih 256, light 128).
    cfg.head_width = ml_collections.config_dict.placeholder(int)
    # 'pretrain': the teacher checkpoint holds heads fitted by a
    # fit_teacher_heads run, used frozen; 'online': teacher heads trained
    # here with CE on stop-gradiented teacher features.
    cfg.teacher_head_mode = 'pretrain'
    cfg.temperature = 4.0
    cfg.w_ce = 0.1
    cfg.w_kd = 0.9
    # Each head pair adds w_head * (KD_T(s_k, t_k) + w_head_ce * CE(s_k, y)).
    cfg.w_head = 1.0
    cfg.w_head_ce = 0.0
    # LS on every KD term (final logits and each head pair): both sides
    # z-scored first (distill/standardize); the CE terms see raw logits.
    cfg.logit_standardize = False
    return cfg

  def validate_config(self, check):
    check.choice('mhkd.head', heads.HEAD_KINDS, 'head kind')
    check.number('mhkd.head_width', minimum=1, integer=True, optional=True)
    check.choice('mhkd.teacher_head_mode', TEACHER_HEAD_MODES,
                 'teacher head mode')
    check.number('mhkd.temperature', minimum=0, strict=True)
    for weight in ('w_ce', 'w_kd', 'w_head', 'w_head_ce'):
      check.number(f'mhkd.{weight}', minimum=0)
    check.names('mhkd.stages')
    check.names('mhkd.teacher_stages')
    standardize.validate(check, 'mhkd')

  @property
  def online(self) -> bool:
    return self.cfg.teacher_head_mode == 'online'

  def create_trainable(self, teacher, data, rngs):
    cfg = self.cfg
    model = self.create_student(data, rngs)
    student_heads = heads.create_heads(
      cfg.head, model, tuple(cfg.stages) or None,
      num_classes=data.num_classes, input_shape=data.input_shape,
      width=cfg.head_width, rngs=rngs,
    )
    pairs = self._stage_pairs(student_heads.spec.stages)
    t_stages = tuple(t for _, t in pairs)
    parts = dict(student=model, heads=student_heads, stage_pairs=pairs)
    if self.online:
      parts['teacher_heads'] = heads.create_heads(
        cfg.head, teacher.model, t_stages, num_classes=data.num_classes,
        input_shape=data.input_shape, width=cfg.head_width, rngs=rngs,
      )
    else:
      _check_frozen_teacher_heads(teacher, t_stages)
    return base.Trainable(**parts)

  def _stage_pairs(self, student_stages) -> tuple[tuple[str, str], ...]:
    """(student stage, teacher stage) pairs: the one pairing rule."""
    t_stages = tuple(self.cfg.teacher_stages) or tuple(student_stages)
    if len(t_stages) != len(student_stages):
      raise errors.ConfigError(
        f'config.mhkd.teacher_stages {t_stages} must pair one to one with '
        f'the student stages {tuple(student_stages)}.'
      )
    return tuple(zip(student_stages, t_stages))

  def _teacher_head_logits(self, trainable, teacher_out, train):
    if self.online:
      # Online heads learn from frozen, stop-gradiented teacher features.
      return trainable.teacher_heads(
        jax.lax.stop_gradient(teacher_out.feats), train=train
      )
    return teacher_out.head_logits

  def task_weight(self):
    return self.cfg.w_ce

  def loss(self, trainable, teacher_out, batch, context):
    del context
    cfg, labels = self.cfg, batch.labels
    logits, feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    student_head_logits = trainable.heads(feats, train=True)
    teacher_head_logits = self._teacher_head_logits(
      trainable, teacher_out, train=True
    )
    terms = {}
    if self.online:
      for stage, t_logits in teacher_head_logits.items():
        terms[f'ce/teacher_head/{stage}'] = losses.cross_entropy(
          t_logits, labels
        )
    terms['ce'] = losses.cross_entropy(logits, labels)
    ls = cfg.logit_standardize
    terms['kd/logits'] = losses.kd_loss(
      *standardize.logits(ls, logits, teacher_out.logits), cfg.temperature
    )
    total = cfg.w_ce * terms['ce'] + cfg.w_kd * terms['kd/logits']
    for s_stage, t_stage in trainable.stage_pairs:
      target = jax.lax.stop_gradient(teacher_head_logits[t_stage])
      s_logits = student_head_logits[s_stage]
      kd = losses.kd_loss(*standardize.logits(ls, s_logits, target),
                          cfg.temperature)
      ce = losses.cross_entropy(s_logits, labels)
      terms[f'kd/{s_stage}'] = kd
      terms[f'ce/{s_stage}'] = ce
      total = total + cfg.w_head * (kd + cfg.w_head_ce * ce)
    for _, t_stage in trainable.stage_pairs:
      if f'ce/teacher_head/{t_stage}' in terms:
        total = total + terms[f'ce/teacher_head/{t_stage}']
    return total, terms, logits

  def eval_needs_teacher_features(self):
    return self.online

  def eval_logits(self, trainable, images, teacher_out):
    logits, feats = features.forward_with_features(
      trainable.student, images, train=False
    )
    outputs = {base.STUDENT: logits}
    for stage, head_logits in trainable.heads(feats, train=False).items():
      outputs[f'{base.STUDENT}/{stage}'] = head_logits
    if self.online:
      t_heads = trainable.teacher_heads(teacher_out.feats, train=False)
      for stage, head_logits in t_heads.items():
        outputs[f'{base.TEACHER}/{stage}'] = head_logits
    return outputs

  def agreement_pairs(self, trainable):
    pairs = super().agreement_pairs(trainable)
    for s_stage, t_stage in trainable.stage_pairs:
      pairs[f'agree_top1/{s_stage}'] = (
        f'{base.STUDENT}/{s_stage}', f'{base.TEACHER}/{t_stage}'
      )
    return pairs


def _check_frozen_teacher_heads(teacher, t_stages) -> None:
  """'pretrain' mode: the teacher must arrive with heads on those stages."""
  if teacher.heads is None:
    raise errors.ConfigError(
      "config.mhkd.teacher_head_mode='pretrain' needs a teacher checkpoint "
      'that holds fitted teacher heads, and config.teacher.init has none. '
      'Fit them first with the fit_teacher_heads method (phase 1, e.g. '
      '--config=configs/cifar100_resnet32x4_resnet8x4.py:fit_teacher_heads) '
      "and point config.teacher.init at that run's workdir, or use "
      "config.mhkd.teacher_head_mode='online'."
    )
  missing = [s for s in t_stages if s not in teacher.heads.spec.stages]
  if missing:
    raise errors.ConfigError(
      f'The teacher checkpoint has heads on {teacher.heads.spec.stages}, '
      f'but MHKD pairs the student with teacher stages {t_stages}. Set '
      'config.mhkd.teacher_stages to stages that have heads, or refit the '
      'teacher heads on those stages.'
    )
