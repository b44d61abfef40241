"""PyTorch KD and MHKD train steps with RepDistiller's semantics.

The reference that ``mhkd_jax.steps`` is checked (``tests/
step_parity_test.py``) and timed (``experiments/benchmark_step.py``)
against. It follows RepDistiller's ``train_student.py`` and
``helper/loops.py::train_distill``:

- the teacher (and frozen teacher heads) run in eval mode under
  ``torch.no_grad()``, and their features are detached;
- ``torch.optim.SGD(trainable, lr, momentum=0.9, weight_decay=5e-4)``, no
  Nesterov: coupled L2 on every trainable parameter (student, student
  heads and, in MHKD's online mode, teacher heads), never on the teacher;
- ``DistillKL``: ``kl_div(log_softmax(s/T), softmax(t/T), 'sum') * T^2 /
  batch``;
- with ``optimizer='dot'``, mdistiller's DOT trainer instead: the
  distillation loss (all but ``w_ce * CE``) and the task loss backward
  apart, into ``DistillationOrientedSGD`` (``tests/torch_reference/dot.py``);
- ``adjust_learning_rate``: the rate is ``lr * rate**k`` with ``k`` the
  number of decay epochs that the 1-based epoch exceeds, set on every
  parameter group at the start of the epoch.

The MHKD loss is the project's (``mhkd_jax/distill/mhkd.py``)::

  L = w_ce CE(s, y) + w_kd KD_T(s, t)
    + sum_k w_head [KD_T(s_k, t_k.detach()) + w_head_ce CE(s_k, y)]
    + [online] sum_k CE(t_k(teacher feats.detach()), y)

Inputs are NCHW float tensors, already normalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The project's own list of modes, so that the two implementations accept
# the same ones.
from mhkd_jax.distill.mhkd import TEACHER_HEAD_MODES
from tests.torch_reference.dot import DistillationOrientedSGD
from tests.torch_reference.heads import AuxHeads, stage_features

METHODS = ('kd', 'mhkd')


class DistillKL(nn.Module):
  """KL(softmax(t/T) || softmax(s/T)) summed over classes, x T^2 / batch."""

  def __init__(self, temperature: float):
    super().__init__()
    self.t = temperature

  def forward(self, y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    log_p_s = F.log_softmax(y_s / self.t, dim=1)
    p_t = F.softmax(y_t / self.t, dim=1)
    kl = F.kl_div(log_p_s, p_t, reduction='sum')
    return kl * self.t**2 / y_s.shape[0]


def adjust_learning_rate(
  epoch: int,
  optimizer: torch.optim.Optimizer,
  *,
  learning_rate: float,
  decay_epochs: Sequence[int],
  decay_rate: float,
) -> float:
  """RepDistiller's rule: x decay_rate once per decay epoch < ``epoch``.

  ``epoch`` is 1-based, as in RepDistiller's loop. Returns the new rate.
  """
  steps = sum(epoch > d for d in decay_epochs)
  lr = learning_rate * decay_rate**steps if steps > 0 else learning_rate
  for group in optimizer.param_groups:
    group['lr'] = lr
  return lr


class DistillStep:
  """One KD or MHKD training step on a batch, RepDistiller style.

  Attributes:
    student, teacher: the backbones (RepDistiller ``forward(x,
      is_feat=True) -> (feats, logits)``).
    student_heads: MHKD's student heads (None for KD).
    teacher_heads: MHKD's teacher heads: frozen (``'pretrain'``) or trained
      in this step (``'online'``).
    optimizer: SGD over exactly the trainable parameters.
  """

  def __init__(
    self,
    *,
    method: str,
    student: nn.Module,
    teacher: nn.Module,
    student_heads: AuxHeads | None = None,
    teacher_heads: AuxHeads | None = None,
    teacher_heads_mode: str = 'pretrain',
    learning_rate: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = False,
    temperature: float = 4.0,
    w_ce: float = 0.1,
    w_kd: float = 0.9,
    w_head: float = 1.0,
    w_head_ce: float = 0.0,
    teacher_stages: Sequence[str] | None = None,
    optimizer: str = 'sgd',
    dot_delta: float = 0.075,
  ):
    if method not in METHODS:
      raise ValueError(f'method={method!r}; valid: {", ".join(METHODS)}.')
    if teacher_heads_mode not in TEACHER_HEAD_MODES:
      raise ValueError(
        f'teacher_heads_mode={teacher_heads_mode!r}; valid: '
        f'{", ".join(TEACHER_HEAD_MODES)}.'
      )
    if method == 'mhkd' and (student_heads is None or teacher_heads is None):
      raise ValueError('MHKD needs student_heads and teacher_heads.')
    self.method = method
    self.student = student
    self.teacher = teacher
    self.student_heads = student_heads if method == 'mhkd' else None
    self.teacher_heads = teacher_heads if method == 'mhkd' else None
    self.online = method == 'mhkd' and teacher_heads_mode == 'online'
    self.w_ce, self.w_kd = w_ce, w_kd
    self.w_head, self.w_head_ce = w_head, w_head_ce
    self.kd = DistillKL(temperature)
    if self.student_heads is not None:
      s_stages = self.student_heads.stages
      t_stages = tuple(teacher_stages or s_stages)
      if t_stages != tuple(self.teacher_heads.stages):
        raise ValueError(
          f'Teacher heads are on {self.teacher_heads.stages}, but the '
          f'student stages {s_stages} pair with {t_stages}.'
        )
      self.pairs = tuple(zip(s_stages, t_stages, strict=True))
    else:
      self.pairs = ()
    # RepDistiller: the optimizer holds the trainable modules only; the
    # teacher (and frozen teacher heads) are never given to it.
    trainable = [p for m in self.trainable_modules() for p in m.parameters()]
    self.dot = optimizer == 'dot'
    if self.dot:
      # mdistiller's DOT trainer: momentum -/+ delta for task/distillation.
      self.optimizer = DistillationOrientedSGD(
        trainable, lr=learning_rate, momentum=momentum - dot_delta,
        momentum_kd=momentum + dot_delta, weight_decay=weight_decay,
      )
    else:
      self.optimizer = torch.optim.SGD(
        trainable, lr=learning_rate, momentum=momentum,
        weight_decay=weight_decay, nesterov=nesterov,
      )
    for m in self.frozen_modules():
      m.requires_grad_(False)

  def trainable_modules(self) -> list[nn.Module]:
    mods = [self.student]
    if self.student_heads is not None:
      mods.append(self.student_heads)
    if self.online:
      mods.append(self.teacher_heads)
    return mods

  def frozen_modules(self) -> list[nn.Module]:
    mods = [self.teacher]
    if self.teacher_heads is not None and not self.online:
      mods.append(self.teacher_heads)
    return mods

  def __call__(
    self, x: torch.Tensor, y: torch.Tensor
  ) -> dict[str, torch.Tensor]:
    """Forward, backward and SGD update; returns the detached loss terms."""
    for m in self.trainable_modules():
      m.train()
    for m in self.frozen_modules():
      m.eval()

    feat_s, logit_s = self.student(x, is_feat=True)
    with torch.no_grad():
      feat_t, logit_t = self.teacher(x, is_feat=True)
      feat_t = [f.detach() for f in feat_t]
      t_feats = stage_features(feat_t)
      t_head_logits = None
      if self.teacher_heads is not None and not self.online:
        t_head_logits = self.teacher_heads(t_feats)

    terms = {}
    if self.online:
      # Trained here by CE, from detached teacher features.
      t_head_logits = self.teacher_heads(t_feats)
      for stage, logits in t_head_logits.items():
        terms[f'ce/teacher_head/{stage}'] = F.cross_entropy(logits, y)
    terms['ce'] = F.cross_entropy(logit_s, y)
    terms['kd/logits'] = self.kd(logit_s, logit_t)
    loss = self.w_ce * terms['ce'] + self.w_kd * terms['kd/logits']
    if self.student_heads is not None:
      s_head_logits = self.student_heads(stage_features(feat_s))
      for s_stage, t_stage in self.pairs:
        s_logits = s_head_logits[s_stage]
        kd = self.kd(s_logits, t_head_logits[t_stage].detach())
        ce = F.cross_entropy(s_logits, y)
        terms[f'kd/{s_stage}'] = kd
        terms[f'ce/{s_stage}'] = ce
        loss = loss + self.w_head * (kd + self.w_head_ce * ce)
      if self.online:
        for _, t_stage in self.pairs:
          loss = loss + terms[f'ce/teacher_head/{t_stage}']

    if self.dot:
      self._dot_backward_and_step(terms)
    else:
      self.optimizer.zero_grad()
      loss.backward()
      self.optimizer.step()

    out = {'loss': loss.detach()}
    out.update({k: v.detach() for k, v in terms.items()})
    out['acc'] = (logit_s.detach().argmax(1) == y).float().mean()
    return out


  def _distillation_loss(self, terms) -> torch.Tensor:
    """Everything in the loss but ``w_ce * CE``: mdistiller's ``loss_kd``."""
    loss = self.w_kd * terms['kd/logits']
    for s_stage, _ in self.pairs:
      loss = loss + self.w_head * (
        terms[f'kd/{s_stage}'] + self.w_head_ce * terms[f'ce/{s_stage}']
      )
    if self.online:
      for _, t_stage in self.pairs:
        loss = loss + terms[f'ce/teacher_head/{t_stage}']
    return loss

  def _dot_backward_and_step(self, terms) -> None:
    """mdistiller's ``DOT.train_iter``: the distillation backward and
    ``step_kd``, then the task backward and ``step``."""
    self.optimizer.zero_grad(set_to_none=True)
    self._distillation_loss(terms).backward(retain_graph=True)
    self.optimizer.step_kd()
    self.optimizer.zero_grad(set_to_none=True)
    (self.w_ce * terms['ce']).backward()
    self.optimizer.step()


def create_step_from_config(
  config,
  *,
  student: nn.Module,
  teacher: nn.Module,
  student_heads: AuxHeads | None = None,
  teacher_heads: AuxHeads | None = None,
) -> DistillStep:
  """A ``DistillStep`` with the hyperparameters of a project config.

  Reads the same fields as ``mhkd_jax.train_state.create_optimizer`` and
  ``mhkd_jax.distill.{kd,mhkd}`` (``config.kd`` for KD, ``config.mhkd``
  for MHKD), so that both frameworks run the same recipe.
  """
  if config.method == 'kd':
    loss_cfg, mode, t_stages = config.kd, 'pretrain', None
    w_head, w_head_ce = 0.0, 0.0
  elif config.method == 'mhkd':
    loss_cfg = config.mhkd
    mode = config.mhkd.teacher_head_mode
    t_stages = tuple(config.mhkd.teacher_stages) or None
    w_head, w_head_ce = config.mhkd.w_head, config.mhkd.w_head_ce
  else:
    raise ValueError(f'config.method={config.method!r}; valid: kd, mhkd.')
  return DistillStep(
    method=config.method, student=student, teacher=teacher,
    student_heads=student_heads, teacher_heads=teacher_heads,
    teacher_heads_mode=mode, learning_rate=config.learning_rate,
    momentum=config.momentum, weight_decay=config.weight_decay,
    nesterov=config.nesterov, temperature=loss_cfg.temperature,
    w_ce=loss_cfg.w_ce, w_kd=loss_cfg.w_kd, w_head=w_head,
    w_head_ce=w_head_ce, teacher_stages=t_stages,
    optimizer=config.optimizer.name,
    dot_delta=config.optimizer.dot_delta,
  )
