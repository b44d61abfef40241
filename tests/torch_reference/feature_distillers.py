"""PyTorch ports of two of mdistiller's feature distillers: OFD and KDSVD.

Written from megvii-research/mdistiller's ``mdistiller/distillers/OFD.py``
and ``KDSVD.py`` (the behaviour, not the text), as the reference that
``tests/feature_method_parity_test.py`` runs beside the JAX steps of
``mhkd_jax/distill/ofd.py`` and ``kdsvd.py``. The networks are the
RepDistiller-style models of ``tests/torch_reference/models.py``:
``model(x, is_feat=True, preact=...)`` gives ``[stem, stage1, ...,
stageN, pooled]``, so mdistiller's ``feats[1:]`` (and ``preact_feats
[1:]``) are ``feats[1:-1]`` here. Tensors are NCHW.

What the two distillers do, in mdistiller's CIFAR-100 setting:

- OFD: a connector (1x1 conv without bias, kaiming fan-out normal weights,
  BatchNorm) per stage from the student's pre-ReLU map to the teacher's
  channels; per-channel margins from the teacher's BatchNorm before each
  stage's ReLU (E[x | x < 0] for x ~ N(bias, |weight|^2), -3 |weight|
  where P(x < 0) <= 0.001), computed once at construction; the teacher
  runs in train mode (its ``train()`` puts every child in train mode) but
  under ``no_grad``; loss ``ce_w * CE + feat_w * sum_i feat_loss_i /
  2^(n-1-i)`` with the teacher's map average-pooled to the student's size.
- KDSVD: the teacher in eval mode under ``no_grad``; for every pair of
  post-ReLU stage maps, a truncated SVD of the map viewed as ``(B, C*H,
  W)`` (``torch.svd``), the student's k+3 right singular vectors aligned
  in sign to the teacher's k, both scaled by the teacher's normalised
  singular values, and between consecutive stages an RBF kernel
  ``exp(-(a - b)^2 / 8)`` of every pair of vector entries; the squared
  difference of the two kernels (non-finite entries zeroed) summed and
  divided by the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.stats import norm
from torch import nn

# OFD -----------------------------------------------------------------------


def ofd_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
  """(1, C, 1, 1) margins of the BatchNorm before a ReLU, channel by
  channel in Python floats as mdistiller computes them."""
  values = []
  for weight, bias in zip(bn.weight.data.tolist(), bn.bias.data.tolist()):
    std, mean = abs(weight), bias
    below = norm.cdf(-mean / std)
    if below > 0.001:
      values.append(-std * math.exp(-((mean / std) ** 2) / 2)
                    / math.sqrt(2 * math.pi) / below + mean)
    else:
      values.append(-3 * std)
  return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1)


def bn_before_relu(model: nn.Module) -> list[nn.BatchNorm2d]:
  """mdistiller's ``get_bn_before_relu`` of a CIFAR ResNet of basic
  blocks: the last block's ``bn2`` in each stage."""
  return [layer[-1].bn2 for layer in (model.layer1, model.layer2,
                                       model.layer3)]


class OFDConnector(nn.Module):
  """conv (no bias, 'same' padding) + BatchNorm, mdistiller's init."""

  def __init__(self, s_channels: int, t_channels: int, kernel_size: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(s_channels, t_channels, kernel_size, stride=1,
                          padding=(kernel_size - 1) // 2, bias=False)
    self.bn = nn.BatchNorm2d(t_channels)
    fan_out = kernel_size * kernel_size * t_channels
    self.conv.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
    self.bn.weight.data.fill_(1)
    self.bn.bias.data.zero_()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.bn(self.conv(x))


def ofd_feat_loss(source, target, margin):
  """mdistiller's ``feat_loss``: partial L2 below the margin, summed over
  C, H, W, averaged over the batch."""
  loss = (
    (source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
    + (source - target) ** 2
    * ((source > target) & (target > margin) & (target <= 0)).float()
    + (source - target) ** 2 * (target > 0).float()
  )
  return torch.abs(loss).mean(dim=0).sum()


class OFD(nn.Module):
  """mdistiller's OFD distiller on RepDistiller-style models."""

  def __init__(self, student: nn.Module, teacher: nn.Module, *,
               ce_weight: float = 1.0, feat_weight: float = 1e-3,
               kernel_size: int = 1, input_size: int = 32):
    super().__init__()
    self.student, self.teacher = student, teacher
    self.ce_weight, self.feat_weight = ce_weight, feat_weight
    probe = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
      s_feats = student(probe, is_feat=True, preact=True)[0][1:-1]
      t_feats = teacher(probe, is_feat=True, preact=True)[0][1:-1]
    n = min(len(s_feats), len(t_feats))  # mdistiller's _align_list
    self.connectors = nn.ModuleList([
      OFDConnector(s.shape[1], t.shape[1], kernel_size)
      for s, t in zip(s_feats[-n:], t_feats[-n:])
    ])
    # Fixed at construction from the teacher as loaded.
    self.margins = [ofd_margin(bn) for bn in bn_before_relu(teacher)]

  def learnable_parameters(self) -> list[nn.Parameter]:
    return [*self.student.parameters(), *self.connectors.parameters()]

  def forward(self, x: torch.Tensor, y: torch.Tensor):
    """Loss terms of one training batch; OFD's teacher is in train mode."""
    self.student.train()
    self.connectors.train()
    self.teacher.train()
    feat_s, logit_s = self.student(x, is_feat=True, preact=True)
    with torch.no_grad():
      feat_t, _ = self.teacher(x, is_feat=True, preact=True)
    g_s, g_t = feat_s[1:-1], feat_t[1:-1]
    n = min(len(g_s), len(g_t))
    g_s, g_t = g_s[-n:], g_t[-n:]
    feat = 0.0
    for i, (s, t) in enumerate(zip(g_s, g_t)):
      source = self.connectors[i](s)
      target = F.adaptive_avg_pool2d(t, source.shape[-2:]).detach()
      feat = feat + ofd_feat_loss(source, target, self.margins[i]) / (
        2 ** (n - i - 1))
    terms = {'ce': F.cross_entropy(logit_s, y), 'ofd/preacts': feat}
    terms['loss'] = self.ce_weight * terms['ce'] + self.feat_weight * feat
    return terms


# KDSVD ---------------------------------------------------------------------


def _finite(x: torch.Tensor) -> torch.Tensor:
  return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd_right(feat: torch.Tensor, n: int):
  """mdistiller's ``svd``: the map (B, C, H, W) viewed as (B, C*H, W),
  ``torch.svd``, non-finite entries zeroed, the first n singular values
  and right singular vectors each L2-normalised (values over the n,
  vectors over W). The left vectors are computed there too but unused."""
  b, c, h, w = feat.shape
  _, s, v = torch.svd(feat.view(b, c * h, w).float())
  s, v = _finite(s), _finite(v)
  return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_signs(v_s: torch.Tensor, v_t: torch.Tensor) -> torch.Tensor:
  """For each teacher vector, the student vector of largest |cosine|, with
  the cosine's sign: ``v_s @ mask`` (the mask carries no gradient)."""
  cosine = torch.matmul(v_s.transpose(-2, -1), v_t)
  best, _ = torch.max(torch.abs(cosine), 1, keepdim=True)
  mask = torch.where(torch.eq(best, torch.abs(cosine)), torch.sign(cosine),
                     torch.zeros_like(cosine))
  return torch.matmul(v_s, mask)


def kdsvd_loss(g_s, g_t, k: int) -> torch.Tensor:
  """mdistiller's ``kdsvd_loss`` over paired post-ReLU stage maps."""
  total = 0.0
  prev_s = prev_t = None
  for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    s_t, v_t = svd_right(f_t, k)
    _, v_s = svd_right(f_s, k + 3)
    v_s = align_signs(v_s, v_t)
    v_t = v_t * s_t.unsqueeze(1)
    v_s = v_s * s_t.unsqueeze(1)
    if i > 0:
      s_rbf = torch.exp(-(v_s.unsqueeze(2) - prev_s.unsqueeze(1)).pow(2) / 8)
      t_rbf = torch.exp(-(v_t.unsqueeze(2) - prev_t.unsqueeze(1)).pow(2) / 8)
      l2 = _finite((s_rbf - t_rbf.detach()).pow(2))
      total = total + l2.sum() / g_s[0].shape[0]
    prev_s, prev_t = v_s, v_t
  return total


class KDSVD(nn.Module):
  """mdistiller's KDSVD distiller on RepDistiller-style models."""

  def __init__(self, student: nn.Module, teacher: nn.Module, *, k: int = 1,
               ce_weight: float = 1.0, feat_weight: float = 1.0):
    super().__init__()
    self.student, self.teacher = student, teacher
    self.k, self.ce_weight, self.feat_weight = k, ce_weight, feat_weight

  def learnable_parameters(self) -> list[nn.Parameter]:
    return list(self.student.parameters())

  def forward(self, x: torch.Tensor, y: torch.Tensor):
    self.student.train()
    self.teacher.eval()
    feat_s, logit_s = self.student(x, is_feat=True)
    with torch.no_grad():
      feat_t, _ = self.teacher(x, is_feat=True)
    feat = kdsvd_loss(feat_s[1:-1], feat_t[1:-1], self.k)
    terms = {'ce': F.cross_entropy(logit_s, y), 'kdsvd/stages': feat}
    terms['loss'] = self.ce_weight * terms['ce'] + self.feat_weight * feat
    return terms
