"""A PyTorch port of mdistiller's DOT optimizer (``mdistiller/engine/
dot.py``), the reference that ``mhkd_jax.dot`` is checked against.

Used as mdistiller's DOT trainer does:

  opt.zero_grad(set_to_none=True); loss_kd.backward(retain_graph=True)
  opt.step_kd()    # remembers the distillation gradients
  opt.zero_grad(set_to_none=True); loss_ce.backward()
  opt.step()       # both momentum buffers, then both updates

The rules, per parameter (``p.grad`` None = the loss does not reach it):

* task pass, every parameter with a task gradient: ``d = g + wd * p``;
  its buffer is ``d`` the first time, else ``m * buf + d`` with ``m`` the
  task momentum if the parameter also got a distillation gradient, the
  mean of both momenta if not; ``p -= lr * buf``;
* distillation pass, every parameter with a distillation gradient: its
  buffer is the bare gradient the first time, else ``m_kd * buf + g`` if
  it also got a task gradient, else ``mean * buf + (g + wd * p)``;
  ``p -= lr * buf``.
"""

from __future__ import annotations

import torch


class DistillationOrientedSGD(torch.optim.Optimizer):
  """mdistiller's ``DistillationOrientedTrainer`` (one parameter group,
  dampening 0)."""

  def __init__(self, params, lr: float, momentum: float, momentum_kd: float,
               weight_decay: float = 0.0):
    if min(lr, momentum, momentum_kd, weight_decay) < 0:
      raise ValueError('lr, momenta and weight_decay must be >= 0.')
    super().__init__(params, dict(lr=lr, momentum=momentum,
                                  momentum_kd=momentum_kd,
                                  weight_decay=weight_decay))
    if len(self.param_groups) != 1:
      raise ValueError('one parameter group only, as mdistiller.')
    self._kd_grads: dict[int, torch.Tensor] = {}

  def _params(self):
    return self.param_groups[0]['params']

  @torch.no_grad()
  def step_kd(self):
    """Keeps the distillation gradients for the next ``step``."""
    self._kd_grads = {
      id(p): p.grad.clone() for p in self._params() if p.grad is not None
    }

  @torch.no_grad()
  def step(self, closure=None):
    del closure
    group = self.param_groups[0]
    lr, wd = group['lr'], group['weight_decay']
    m, m_kd = group['momentum'], group['momentum_kd']
    mean = (m + m_kd) / 2.0
    params = self._params()
    has_task = {id(p) for p in params if p.grad is not None}
    # mdistiller's order: every task update, then every distillation one.
    for p in params:
      if id(p) not in has_task:
        continue
      state = self.state[p]
      d = p.grad.add(p, alpha=wd)
      buf = state.get('task_buffer')
      if buf is None:
        buf = d.clone()
      else:
        buf.mul_(m if id(p) in self._kd_grads else mean).add_(d)
      state['task_buffer'] = buf
      p.add_(buf, alpha=-lr)
    for p in params:
      g = self._kd_grads.get(id(p))
      if g is None:
        continue
      state = self.state[p]
      buf = state.get('kd_buffer')
      if buf is None:
        buf = g.clone()
      elif id(p) in has_task:
        buf.mul_(m_kd).add_(g)
      else:
        buf.mul_(mean).add_(g.add(p, alpha=wd))
      state['kd_buffer'] = buf
      p.add_(buf, alpha=-lr)
    self._kd_grads = {}
