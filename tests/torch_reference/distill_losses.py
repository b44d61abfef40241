"""PyTorch reference for RepDistiller's and mdistiller's distillation losses.

An independent re-implementation (written from the definitions, not copied)
of the losses of RepDistiller (HobbitLong/RepDistiller @ b84f547: the
official CRD code, ``distiller_zoo/``, ``crd/``, ``models/util.py``) and of
DKD (megvii-research/mdistiller @ a08d46f, ``mdistiller/distillers/DKD.py``).
Tests use it to check the JAX port on random inputs to float32 precision, so
every reduction, normalisation, epsilon, pooling rule and constant below is
the original's. Tensors are NCHW; feature vectors are (B, D). Modules keep
the originals' attribute names, so ``state_dict`` keys are the originals'
and weights can be loaded either way; constructors consume the global torch
RNG in the originals' order, so the same ``torch.manual_seed`` gives the
same parameters as the original classes.

Training loop (``helper/loops.py``, ``train_student.py``)
---------------------------------------------------------
``feat`` is the model's ``is_feat=True`` list ``[stem, stage1, ..., stageN,
pooled]`` (``--distill`` names: kd, hint, attention, similarity,
correlation, vid, rkd, pkt, abound, factor, fsp, nst, crd). Stage outputs
are taken after the block's ReLU; with ``preact=True`` (RepDistiller's
resnet) the stage entries are the last block's pre-ReLU sum, the stem and
the pooled vector unchanged. Teacher features run under ``no_grad`` and
are detached.
``loss = gamma * CE + alpha * DistillKL(T=4) + beta * loss_kd``.

===========  ============================================  ==================
method       loss_kd (features)                            run_cifar_distill
===========  ============================================  ==================
kd           0 (the KD term is ``alpha * DistillKL``)      -r 0.1 -a 0.9 -b 0
hint         hint_loss(ConvReg(s[2]), t[2]); hint_layer=2  -a 0 -b 100
attention    sum(attention_losses(s[1:-1], t[1:-1]))       -a 0 -b 1000
similarity   sum(similarity_losses([s[-2]], [t[-2]]))      -a 0 -b 3000
correlation  correlation_loss(LinearEmbed_s(s[-1]),        -a 0 -b 0.02
             LinearEmbed_t(t[-1])), feat_dim=128
vid          sum_k VIDLoss_k(s[k], t[k]) over feat[1:-1],  -a 0 -b 1
             VIDLoss(C_s, C_t, C_t) (mid channels = C_t)
rkd          rkd_loss(s[-1], t[-1])                        -a 0 -b 1
pkt          pkt_loss(s[-1], t[-1])                        -a 0 -b 30000
abound       0 after the init phase (below); preact=True   -a 0 -b 1
factor       factor_loss(Translator(s[-2]),                -a 0 -b 200
             Paraphraser(t[-2], is_factor=True))
fsp          0 after the init phase (below)                -a 0 -b 50
nst          sum(nst_losses(s[1:-1], t[1:-1]))             -a 0 -b 50
crd          CRDLoss(s[-1], t[-1], index, contrast_idx)    -a 0 -b 0.8
crd (+kd)    same                                          -a 1 -b 0.8
===========  ============================================  ==================

gamma (-r) defaults to 1 everywhere except kd (0.1). CRD: feat_dim=128,
nce_k=16384, nce_t=0.07, nce_m=0.5, mode='exact', n_data=50000 (CIFAR-100
train set). Other defaults: batch 64, 240 epochs, lr 0.05 (0.01 for
MobileNetV2/ShuffleV1/ShuffleV2), x0.1 at epochs 150/180/210, SGD momentum
0.9, weight decay 5e-4 on *every* trainable parameter, which includes the
extra modules (ConvReg, LinearEmbed/CRD embeds incl. the teacher-side one,
VID regressors *and* VID's ``log_scale``, Translator). The paraphraser is
not in the optimiser after its init phase and runs in eval mode; the AB
connector is not used after its init phase.

Init phase (``helper/pretrain.py::init``; ``init_epochs`` = 30, SGD
momentum 0.9, wd 5e-4, constant lr = ``opt.learning_rate`` except FT with a
resnet*/wrn* student: 0.01). Only abound, factor and fsp have one:

* abound: trains the Connector *and* the student's feature modules
  (``model_s.get_feat_modules()``: everything but the classifier; BN in
  train mode) on ``sum(ab_losses(Connector(s_pre[1:-1]), t_pre[1:-1]))``
  with preact features. The main phase then has loss_kd = 0: with -a 0 it
  is plain CE.
* factor: trains only the Paraphraser on ``MSE(rec, t[-2])`` with ``_, rec
  = Paraphraser(t[-2])`` (``nn.MSELoss``, mean).
* fsp: trains the student's feature modules on ``fsp_loss(s[:-1],
  t[:-1])``. The main phase has loss_kd = 0 (plain CE with -a 0).

Details a port can easily get wrong
-----------------------------------
* Pooling rule (AT, NST, FT, VID, FSP): compare ``shape[2]`` (H) only; the
  larger map is ``adaptive_avg_pool2d``-ed to ``(H_small, H_small)`` (square
  output even if W differs). FSP applies it between a net's consecutive
  maps (bottom vs top), not between student and teacher.
* ``F.normalize`` is ``x / max(||x||_2, 1e-12)`` (AT, SP, NST, FT, RKD
  angles). CRD's ``Normalize`` has NO epsilon: ``x / sqrt(sum x^2)``; the
  memory update has no epsilon either. PKT adds 1e-7 to the norm (not a
  clamp) and replaces NaNs by 0.
* AT: ``f**p`` averaged over channels (``mean(1)``, not a sum), flattened,
  l2-normalised over space; loss = mean over (B, HW) of the squared
  difference. FT's factor is the same map; p2=1 gives a mean absolute
  difference.
* SP: per-row ``F.normalize`` of the B x B Gram matrix of flattened maps,
  loss = sum of squared differences / (B*B); the original returns a tensor
  of shape (1,), as does ``similarity_loss`` here.
* CC: ``mean_i sum_d |e_s-e_t|_i,d * |e_s-e_t|_{i+1},d`` over the B-1 pairs
  of consecutive samples in the batch (batch-order dependent).
* RKD: distances ``sqrt(clamp(|a|^2+|b|^2-2ab, 1e-12))`` with the diagonal
  set to 0, divided by the mean of the strictly positive entries; angle
  tensor is the full B x B x B including degenerate (zero) vectors;
  ``smooth_l1_loss`` (beta=1, mean) for both, 25 * dist + 50 * angle;
  teacher side without gradient.
* NST: kernel ``(<a_i, b_j>)^2`` on maps normalised over space (dim 2 of
  (B, C, HW)); loss = mean K(t,t) (detached) + mean K(s,s) - 2 mean K(s,t),
  each mean over B*C*C.
* FSP: matrix (B, C_top, C_bot) = mean over HW of top_i * bot_j; loss per
  pair = mean squared difference; student and teacher channels must match.
* AB: per element ``(s+m)^2 [s>-m and t<=0] + (s-m)^2 [s<=m and t>0]``,
  SUMMED over all elements, times w_i = 2**(i-n+1) (n stages: 1/4, 1/2, 1
  for n=3), then / B, / 1000, * 3 per stage; ``ABLoss`` returns the list,
  the init phase sums it.
* VID: ``pred_var = log(1 + exp(log_scale)) + eps`` (naive softplus),
  ``log_scale`` initialised to ``log(exp(5 - 1e-5) - 1)`` (float32),
  regressor = 1x1 conv (no bias), ReLU, 1x1, ReLU, 1x1 with PyTorch default
  init; loss = mean over B,C,H,W of ``0.5 * ((mu - t)^2 / var + log var)``.
* KD / DKD: ``kl_div(log q, p, 'sum')`` = sum p * (log p - log q) with
  terms where p == 0 counted as 0, times T^2 / B.
* CRD: see ``ContrastMemory``/``contrast_loss``. Z_v1, Z_v2 are set once
  from the FIRST batch (with the random, unnormalised initial memory) as
  ``mean(exp(score / T)) * n_data`` in float32, and never change (they
  live in the ``params`` buffer); outputs are divided by them as constants.
  Memory rows are read *before* the in-place update and carry no gradient.
  Loss is divided by the batch size; the returned value has shape (1,).
* DKD: TCKD uses ``log`` of the masked *sums* of ``softmax(z / T)`` (not a
  log-softmax); NCKD subtracts ``1000 * onehot`` from ``z / T`` (after the
  division by T) for both nets; warm-up factor ``min(epoch / 20, 1)`` with a
  1-based epoch. Because TCKD takes ``log`` of a summed probability (and
  ``kl_div`` gives 0 * -inf = nan), the original returns inf/nan once a
  float32 softmax entry it logs underflows to 0 (logit/T gaps of ~100);
  this file reproduces that. mdistiller defaults: CE weight 1, alpha 1,
  beta 8, T 4, warmup 20; the DKD term is added to CE unweighted otherwise
  (trainer: sum of ``loss.mean()``). cifar100/dkd configs set beta = 2 for
  res56->res20 and res110->res32, 6 for vgg13->vgg8, vgg13->mv2,
  wrn40_2->wrn16_2, wrn40_2->wrn40_1, and keep 8 for res32x4->res8x4,
  res32x4->shuv1/shuv2, res50->mv2, wrn40_2->shuv1 (batch 64, 240 epochs,
  lr 0.05, or 0.01 for the MobileNetV2/ShuffleNet students).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor

__all__ = [
  'hint_loss',
  'pool_to_smaller',
  'attention_map',
  'attention_loss',
  'attention_losses',
  'similarity_loss',
  'similarity_losses',
  'correlation_loss',
  'rkd_pdist',
  'rkd_loss',
  'pkt_loss',
  'nst_loss',
  'nst_losses',
  'factor_map',
  'factor_loss',
  'fsp_matrices',
  'fsp_losses',
  'fsp_loss',
  'ab_stage_loss',
  'ab_losses',
  'ab_loss',
  'vid_loss',
  'vid_init_log_scale',
  'contrast_loss',
  'dkd_loss',
  'dkd_warmup_factor',
  'distill_kl',
  'l2_normalize_no_eps',
  'ConvReg',
  'LinearEmbed',
  'CRDEmbed',
  'Connector',
  'Paraphraser',
  'Translator',
  'VIDRegressor',
  'ContrastMemory',
  'CRDCriterion',
]


# ---------------------------------------------------------------------------
# Helpers


def pool_to_smaller(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
  """RepDistiller's size rule: pool the taller map to the other's H x H.

  Only dimension 2 (H) is compared and the target size is square.
  """
  h_s, h_t = f_s.shape[2], f_t.shape[2]
  if h_s > h_t:
    f_s = F.adaptive_avg_pool2d(f_s, (h_t, h_t))
  elif h_t > h_s:
    f_t = F.adaptive_avg_pool2d(f_t, (h_s, h_s))
  return f_s, f_t


def _normalize(x: Tensor, dim: int = 1) -> Tensor:
  """``F.normalize`` semantics: x / max(||x||_2, 1e-12)."""
  n = x.norm(2, dim, keepdim=True).clamp_min(1e-12)
  return x / n


def l2_normalize_no_eps(x: Tensor) -> Tensor:
  """CRD's ``Normalize(2)``: x / sqrt(sum_j x_j^2) over dim 1, no epsilon."""
  return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def _kl_sum(log_q: Tensor, p: Tensor) -> Tensor:
  """sum p * (log p - log q), p == 0 terms contribute 0 (``kl_div`` sum)."""
  return (torch.xlogy(p, p) - p * log_q).sum()


# ---------------------------------------------------------------------------
# Losses


def hint_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
  """FitNet ``HintLoss``: ``nn.MSELoss()`` (mean over every element)."""
  return ((f_s - f_t) ** 2).mean()


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
  """AT map: channel mean of f**p, flattened, l2-normalised (eps 1e-12)."""
  a = f.pow(p).mean(1).reshape(f.shape[0], -1)
  return _normalize(a, 1)


def attention_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0) -> Tensor:
  """``Attention.at_loss``: mean squared difference of the attention maps."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  d = attention_map(f_s, p) - attention_map(f_t, p)
  return d.pow(2).mean()


def attention_losses(
  g_s: Sequence[Tensor], g_t: Sequence[Tensor], p: float = 2.0
) -> list[Tensor]:
  """``Attention.forward``: one loss per pair; the loop sums the list."""
  return [attention_loss(a, b, p) for a, b in zip(g_s, g_t)]


def similarity_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
  """SP for one pair; returns shape (1,) like the original."""
  b = f_s.shape[0]
  x_s = f_s.reshape(b, -1)
  x_t = f_t.reshape(b, -1)
  g_s = _normalize(x_s @ x_s.t(), 1)
  g_t = _normalize(x_t @ x_t.t(), 1)
  diff = g_t - g_s
  return (diff * diff).reshape(-1, 1).sum(0) / (b * b)


def similarity_losses(
  g_s: Sequence[Tensor], g_t: Sequence[Tensor]
) -> list[Tensor]:
  """``Similarity.forward`` (the loop passes ``[feat[-2]]``)."""
  return [similarity_loss(a, b) for a, b in zip(g_s, g_t)]


def correlation_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
  """CC (``Correlation``) on embeddings (B, D): consecutive-sample product."""
  d = (e_s - e_t).abs()
  return (d[:-1] * d[1:]).sum(1).mean()


def rkd_pdist(e: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
  """RKD pairwise distances: clamp(min=eps) before sqrt, zero diagonal."""
  sq = e.pow(2).sum(1)
  d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps)
  if not squared:
    d = d.sqrt()
  eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
  return d.masked_fill(eye, 0.0)


def _rkd_angles(x: Tensor) -> Tensor:
  # v[i, j] = x_j - x_i, normalised; angles[i, j, k] = <v[i, j], v[i, k]>.
  v = _normalize(x.unsqueeze(0) - x.unsqueeze(1), 2)
  return torch.bmm(v, v.transpose(1, 2)).reshape(-1)


def rkd_loss(
  f_s: Tensor, f_t: Tensor, w_d: float = 25.0, w_a: float = 50.0
) -> Tensor:
  """``RKDLoss``: w_d * distance loss + w_a * angle loss (smooth L1, mean)."""
  s = f_s.reshape(f_s.shape[0], -1)
  t = f_t.reshape(f_t.shape[0], -1)
  with torch.no_grad():
    td = rkd_pdist(t)
    td = td / td[td > 0].mean()
    ta = _rkd_angles(t)
  sd = rkd_pdist(s)
  sd = sd / sd[sd > 0].mean()
  loss_d = F.smooth_l1_loss(sd, td)
  loss_a = F.smooth_l1_loss(_rkd_angles(s), ta)
  return w_d * loss_d + w_a * loss_a


def pkt_loss(f_s: Tensor, f_t: Tensor, eps: float = 1e-7) -> Tensor:
  """PKT ``cosine_similarity_loss`` on (B, D) features."""

  def unit(x: Tensor) -> Tensor:
    y = x / (torch.sqrt((x**2).sum(1, keepdim=True)) + eps)
    return torch.where(torch.isnan(y), torch.zeros_like(y), y)

  def cond_prob(x: Tensor) -> Tensor:
    c = (x @ x.t() + 1.0) / 2.0
    return c / c.sum(1, keepdim=True)

  ps = cond_prob(unit(f_s))
  pt = cond_prob(unit(f_t))
  return (pt * torch.log((pt + eps) / (ps + eps))).mean()


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
  # a, b: (B, C, N); mean over (B, C, C) of <a_j, b_i>^2.
  return torch.bmm(b, a.transpose(1, 2)).pow(2).mean()


def nst_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
  """``NSTLoss.nst_loss`` (full_loss=True), with the pooling rule."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  s = _normalize(f_s.reshape(f_s.shape[0], f_s.shape[1], -1), 2)
  t = _normalize(f_t.reshape(f_t.shape[0], f_t.shape[1], -1), 2)
  return (
    _poly_kernel_mean(t, t).detach()
    + _poly_kernel_mean(s, s)
    - 2 * _poly_kernel_mean(s, t)
  )


def nst_losses(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
  """``NSTLoss.forward``: one loss per pair; the loop sums the list."""
  return [nst_loss(a, b) for a, b in zip(g_s, g_t)]


def factor_map(f: Tensor, p1: float = 2.0) -> Tensor:
  """FT factor: channel mean of f**p1, flattened, ``F.normalize``-d."""
  return _normalize(f.pow(p1).mean(1).reshape(f.shape[0], -1), 1)


def factor_loss(
  f_s: Tensor, f_t: Tensor, p1: float = 2.0, p2: float = 1.0
) -> Tensor:
  """``FactorTransfer``: mean |diff| if p2 == 1 else mean diff**p2."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  d = factor_map(f_s, p1) - factor_map(f_t, p1)
  if p2 == 1:
    return d.abs().mean()
  return d.pow(p2).mean()


def fsp_matrices(g: Sequence[Tensor]) -> list[Tensor]:
  """FSP matrices of consecutive maps: (B, C_top, C_bot), mean over HW."""
  out = []
  for bot, top in zip(g[:-1], g[1:]):
    h_b, h_t = bot.shape[2], top.shape[2]
    if h_b > h_t:
      bot = F.adaptive_avg_pool2d(bot, (h_t, h_t))
    elif h_t > h_b:
      top = F.adaptive_avg_pool2d(top, (h_b, h_b))
    b = bot.shape[0]
    bot2 = bot.reshape(b, bot.shape[1], -1)
    top2 = top.reshape(b, top.shape[1], -1)
    out.append(torch.bmm(top2, bot2.transpose(1, 2)) / bot2.shape[2])
  return out


def fsp_losses(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> list[Tensor]:
  """``FSP.forward``: mean squared difference per consecutive pair."""
  if len(g_s) != len(g_t):
    raise ValueError('unequal length of feat list')
  if any(a.shape[1] != b.shape[1] for a, b in zip(g_s, g_t)):
    raise ValueError('num of channels not equal (error in FSP)')
  return [
    (a - b).pow(2).mean()
    for a, b in zip(fsp_matrices(g_s), fsp_matrices(g_t))
  ]


def fsp_loss(g_s: Sequence[Tensor], g_t: Sequence[Tensor]) -> Tensor:
  """Sum of ``fsp_losses``, as the init phase uses it (on ``feat[:-1]``)."""
  return sum(fsp_losses(g_s, g_t))


def ab_stage_loss(s: Tensor, t: Tensor, margin: float = 1.0) -> Tensor:
  """AB ``criterion_alternative_l2``: summed (not averaged) over elements."""
  neg = ((s > -margin) & (t <= 0)).float()
  pos = ((s <= margin) & (t > 0)).float()
  val = (s + margin) ** 2 * neg + (s - margin) ** 2 * pos
  return val.abs().sum()


def ab_losses(
  g_s: Sequence[Tensor], g_t: Sequence[Tensor], margin: float = 1.0
) -> list[Tensor]:
  """``ABLoss.forward``: weighted, scaled per-stage losses (a list).

  Stage i of n gets weight 2**(i - n + 1), is divided by the batch size,
  then by 1000, then multiplied by 3. ``g_s`` is the Connector's output on
  the student's pre-activation ``feat[1:-1]``; ``g_t`` the teacher's
  pre-activation ``feat[1:-1]``.
  """
  n = len(g_s)
  b = g_s[0].shape[0]
  out = []
  for i, (s, t) in enumerate(zip(g_s, g_t)):
    w = 2 ** (i - n + 1)
    out.append(w * ab_stage_loss(s, t, margin) / b / 1000 * 3)
  return out


def ab_loss(
  g_s: Sequence[Tensor], g_t: Sequence[Tensor], margin: float = 1.0
) -> Tensor:
  """Sum of ``ab_losses``.

  The original ``ABLoss`` returns the per-stage list; only the init phase
  uses it (``loss = sum(list)``, training the Connector and the student's
  feature modules). The main phase's loss_kd for 'abound' is 0.
  """
  return sum(ab_losses(g_s, g_t, margin))


def vid_init_log_scale(init_pred_var: float = 5.0, eps: float = 1e-5):
  """VID's initial log_scale value (a Python float, rounded to f32 later)."""
  return math.log(math.exp(init_pred_var - eps) - 1.0)


def vid_loss(
  pred_mean: Tensor, target: Tensor, log_scale: Tensor, eps: float = 1e-5
) -> Tensor:
  """VID Gaussian NLL: mean of 0.5 * ((mu - t)^2 / var + log var).

  ``var = log(1 + exp(log_scale)) + eps`` per channel (naive softplus).
  """
  var = (torch.log(1.0 + torch.exp(log_scale)) + eps).reshape(1, -1, 1, 1)
  nll = 0.5 * ((pred_mean - target) ** 2 / var + torch.log(var))
  return nll.mean()


def contrast_loss(x: Tensor, n_data: int) -> Tensor:
  """CRD ``ContrastLoss`` (NCE) on scores (B, K+1[, 1]), positive first.

  With c = K / n_data, the loss is -(sum_b log(P_b0 / (P_b0 + c + 1e-7))
  + sum_{b,k>0} log(c / (P_bk + c + 1e-7))) / B; constants are computed in
  Python doubles and rounded to float32 when applied. Returns shape (1,).
  """
  b = x.shape[0]
  m = x.shape[1] - 1
  pn = 1 / float(n_data)
  eps = 1e-7
  p_pos = x[:, 0]
  p_neg = x[:, 1:]
  log_d1 = torch.log(p_pos / (p_pos + (m * pn + eps)))
  num = torch.full_like(p_neg, m * pn)
  log_d0 = torch.log(num / (p_neg + (m * pn + eps)))
  return -(log_d1.sum(0) + log_d0.reshape(-1, 1).sum(0)) / b


def distill_kl(logits_s: Tensor, logits_t: Tensor, T: float) -> Tensor:
  """``DistillKL``: KL(softmax(t/T) || softmax(s/T)) summed, * T^2 / B."""
  log_q = F.log_softmax(logits_s / T, dim=1)
  p = F.softmax(logits_t / T, dim=1)
  return _kl_sum(log_q, p) * (T**2) / logits_s.shape[0]


def dkd_loss(
  logits_s: Tensor,
  logits_t: Tensor,
  labels: Tensor,
  alpha: float,
  beta: float,
  temperature: float,
) -> Tensor:
  """mdistiller ``dkd_loss``: alpha * TCKD + beta * NCKD (no warm-up)."""
  T = temperature
  b = labels.shape[0]
  gt = F.one_hot(labels.reshape(-1), logits_s.shape[1]).to(logits_s.dtype)
  other = 1.0 - gt

  def binary(p: Tensor) -> Tensor:
    return torch.cat(
      [(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], 1
    )

  b_s = binary(F.softmax(logits_s / T, dim=1))
  b_t = binary(F.softmax(logits_t / T, dim=1))
  tckd = _kl_sum(torch.log(b_s), b_t) * (T**2) / b
  p_t2 = F.softmax(logits_t / T - 1000.0 * gt, dim=1)
  log_s2 = F.log_softmax(logits_s / T - 1000.0 * gt, dim=1)
  nckd = _kl_sum(log_s2, p_t2) * (T**2) / b
  return alpha * tckd + beta * nckd


def dkd_warmup_factor(epoch: int, warmup: int = 20) -> float:
  """mdistiller DKD warm-up ``min(epoch / warmup, 1.0)``; epoch is 1-based.

  The trainer counts epochs from 1, so the first epoch uses 1 / warmup.
  """
  return min(epoch / warmup, 1.0)


# ---------------------------------------------------------------------------
# Modules


class ConvReg(nn.Module):
  """FitNet regressor (also AB's connector with ``use_relu=False``).

  s_H == 2 t_H: conv3x3 stride 2 pad 1; 2 s_H == t_H: transposed conv 4x4
  stride 2 pad 1; s_H >= t_H: conv with kernel (1+s_H-t_H, 1+s_W-t_W); then
  BatchNorm2d(t_C) (train mode in training) and ReLU if ``use_relu``.
  PyTorch default initialisation.
  """

  def __init__(self, s_shape, t_shape, use_relu: bool = True):
    super().__init__()
    self.use_relu = use_relu
    _, s_c, s_h, s_w = s_shape
    _, t_c, t_h, t_w = t_shape
    if s_h == 2 * t_h:
      self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif 2 * s_h == t_h:
      self.conv = nn.ConvTranspose2d(
        s_c, t_c, kernel_size=4, stride=2, padding=1
      )
    elif s_h >= t_h:
      kernel = (1 + s_h - t_h, 1 + s_w - t_w)
      self.conv = nn.Conv2d(s_c, t_c, kernel_size=kernel)
    else:
      raise NotImplementedError(f'student size {s_h}, teacher size {t_h}')
    self.bn = nn.BatchNorm2d(t_c)
    self.relu = nn.ReLU()

  def forward(self, x: Tensor) -> Tensor:
    x = self.bn(self.conv(x))
    return self.relu(x) if self.use_relu else x


class LinearEmbed(nn.Module):
  """CC embedding: flatten, ``nn.Linear`` (no normalisation)."""

  def __init__(self, dim_in: int = 1024, dim_out: int = 128):
    super().__init__()
    self.linear = nn.Linear(dim_in, dim_out)

  def forward(self, x: Tensor) -> Tensor:
    return self.linear(x.reshape(x.shape[0], -1))


class _Normalize(nn.Module):
  # Parameter-free; exists so the module tree mirrors the original.
  def forward(self, x: Tensor) -> Tensor:
    return l2_normalize_no_eps(x)


class CRDEmbed(nn.Module):
  """CRD ``Embed``: flatten, Linear, l2-normalise WITHOUT epsilon."""

  def __init__(self, dim_in: int = 1024, dim_out: int = 128):
    super().__init__()
    self.linear = nn.Linear(dim_in, dim_out)
    self.l2norm = _Normalize()

  def forward(self, x: Tensor) -> Tensor:
    return self.l2norm(self.linear(x.reshape(x.shape[0], -1)))


class Connector(nn.Module):
  """AB connector: identity where (C, H) agree, else ConvReg(no ReLU)."""

  def __init__(self, s_shapes, t_shapes):
    super().__init__()
    if len(s_shapes) != len(t_shapes):
      raise ValueError('unequal length of feat list')
    self.s_shapes = s_shapes
    self.t_shapes = t_shapes
    mods = []
    for s, t in zip(s_shapes, t_shapes):
      if s[1] == t[1] and s[2] == t[2]:
        mods.append(nn.Sequential())
      else:
        mods.append(ConvReg(s, t, use_relu=False))
    self.connectors = nn.ModuleList(mods)

  def forward(self, g_s: Sequence[Tensor]) -> list[Tensor]:
    return [c(x) for c, x in zip(self.connectors, g_s)]


def _ft_block(cin: int, cout: int, use_bn: bool, transpose: bool):
  conv = (
    nn.ConvTranspose2d(cin, cout, 3, 1, 1)
    if transpose
    else nn.Conv2d(cin, cout, 3, 1, 1)
  )
  # An empty Sequential keeps the original's layer indices when use_bn=False.
  norm = nn.BatchNorm2d(cout) if use_bn else nn.Sequential()
  return [conv, norm, nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
  """FT paraphraser on the teacher's ``feat[-2]`` (k * C_t factor channels).

  Encoder: 3 x (conv3x3 pad 1, [BN], LeakyReLU 0.1): C -> C -> kC -> kC.
  Decoder: 3 x (convT3x3 pad 1, [BN], LeakyReLU 0.1): kC -> kC -> C -> C.
  ``use_bn`` defaults to False as in RepDistiller. ``forward(x,
  is_factor=True)`` returns the factor only, else ``(factor, rec)``.
  """

  def __init__(self, t_shape, k: float = 0.5, use_bn: bool = False):
    super().__init__()
    c = t_shape[1]
    o = int(t_shape[1] * k)
    self.encoder = nn.Sequential(
      *_ft_block(c, c, use_bn, False),
      *_ft_block(c, o, use_bn, False),
      *_ft_block(o, o, use_bn, False),
    )
    self.decoder = nn.Sequential(
      *_ft_block(o, o, use_bn, True),
      *_ft_block(o, c, use_bn, True),
      *_ft_block(c, c, use_bn, True),
    )

  def forward(self, x: Tensor, is_factor: bool = False):
    factor = self.encoder(x)
    if is_factor:
      return factor
    return factor, self.decoder(factor)


class Translator(nn.Module):
  """FT translator on the student's ``feat[-2]``; BN on by default.

  3 x (conv3x3 pad 1, BN, LeakyReLU 0.1): C_s -> C_s -> kC_t -> kC_t.
  """

  def __init__(self, s_shape, t_shape, k: float = 0.5, use_bn: bool = True):
    super().__init__()
    c = s_shape[1]
    o = int(t_shape[1] * k)
    self.encoder = nn.Sequential(
      *_ft_block(c, c, use_bn, False),
      *_ft_block(c, o, use_bn, False),
      *_ft_block(o, o, use_bn, False),
    )

  def forward(self, x: Tensor) -> Tensor:
    return self.encoder(x)


class VIDRegressor(nn.Module):
  """One ``VIDLoss``: regressor + per-channel ``log_scale``.

  ``forward(f_s, f_t)`` pools by the size rule, regresses the student map
  and returns ``vid_loss``. RepDistiller builds ``VIDLoss(C_s, C_t, C_t)``
  per stage of ``feat[1:-1]`` and sums them.
  """

  def __init__(
    self,
    in_channels: int,
    mid_channels: int,
    out_channels: int,
    init_pred_var: float = 5.0,
    eps: float = 1e-5,
  ):
    super().__init__()
    self.regressor = nn.Sequential(
      nn.Conv2d(in_channels, mid_channels, 1, bias=False),
      nn.ReLU(),
      nn.Conv2d(mid_channels, mid_channels, 1, bias=False),
      nn.ReLU(),
      nn.Conv2d(mid_channels, out_channels, 1, bias=False),
    )
    self.log_scale = nn.Parameter(
      torch.full((out_channels,), vid_init_log_scale(init_pred_var, eps))
    )
    self.eps = eps

  def forward(self, f_s: Tensor, f_t: Tensor) -> Tensor:
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return vid_loss(self.regressor(f_s), f_t, self.log_scale, self.eps)


class ContrastMemory(nn.Module):
  """CRD memory bank with explicit indices.

  Buffers (names as the original): ``params`` = float32 [K, T, Z_v1, Z_v2,
  momentum] (Z < 0 means "not set yet"), ``memory_v1`` (student memory) and
  ``memory_v2`` (teacher memory), both (output_size, input_size). Initial
  memories are U(-stdv, stdv), stdv = 1 / sqrt(input_size / 3), drawn as
  ``rand * 2 stdv - stdv`` for v1 then v2 from ``generator`` (or the global
  RNG, as the original), unless given explicitly.

  ``forward(v1, v2, y, idx)``, idx (B, K+1) with idx[:, 0] == y:
    out_v2 = exp(memory_v1[idx] . v2 / T)   (teacher vs student memory)
    out_v1 = exp(memory_v2[idx] . v1 / T)   (student vs teacher memory)
  Z_v1 = mean(out_v1) * output_size, Z_v2 likewise, set on the first call
  only (float32); outputs are divided by the Python-float Z. Then, without
  gradient and in place, memory_v1[y] <- normalize(m * memory_v1[y] +
  (1 - m) * v1) (no eps), memory_v2[y] likewise with v2. ``y`` must be
  unique within the batch. Returns (out_v1, out_v2), each (B, K+1, 1).
  """

  def __init__(
    self,
    input_size: int,
    output_size: int,
    K: int,
    T: float = 0.07,
    momentum: float = 0.5,
    generator: torch.Generator | None = None,
    memory_v1: Tensor | None = None,
    memory_v2: Tensor | None = None,
  ):
    super().__init__()
    self.n_lem = output_size
    self.K = K
    self.register_buffer('params', torch.tensor([K, T, -1, -1, momentum]))
    stdv = 1.0 / math.sqrt(input_size / 3)

    def init(given):
      if given is not None:
        return given.detach().clone().to(torch.float32)
      r = torch.rand(output_size, input_size, generator=generator)
      return r.mul_(2 * stdv).add_(-stdv)

    self.register_buffer('memory_v1', init(memory_v1))
    self.register_buffer('memory_v2', init(memory_v2))

  @property
  def Z_v1(self) -> float:
    return self.params[2].item()

  @property
  def Z_v2(self) -> float:
    return self.params[3].item()

  def forward(self, v1: Tensor, v2: Tensor, y: Tensor, idx: Tensor):
    K = int(self.params[0].item())
    T = self.params[1].item()
    momentum = self.params[4].item()
    b = v1.shape[0]
    n, d = self.memory_v1.shape
    if tuple(idx.shape) != (b, K + 1):
      raise ValueError(f'idx must have shape {(b, K + 1)}, got {idx.shape}')
    flat = idx.reshape(-1)
    w1 = self.memory_v1.index_select(0, flat).detach().reshape(b, K + 1, d)
    w2 = self.memory_v2.index_select(0, flat).detach().reshape(b, K + 1, d)
    out_v2 = torch.exp(torch.bmm(w1, v2.reshape(b, d, 1)) / T)
    out_v1 = torch.exp(torch.bmm(w2, v1.reshape(b, d, 1)) / T)
    with torch.no_grad():
      if self.params[2].item() < 0:
        self.params[2] = out_v1.mean() * n
      if self.params[3].item() < 0:
        self.params[3] = out_v2.mean() * n
    out_v1 = (out_v1 / self.Z_v1).contiguous()
    out_v2 = (out_v2 / self.Z_v2).contiguous()
    with torch.no_grad():
      for mem, v in ((self.memory_v1, v1), (self.memory_v2, v2)):
        upd = mem.index_select(0, y.reshape(-1)) * momentum
        upd = upd + v * (1 - momentum)
        upd = upd / upd.pow(2).sum(1, keepdim=True).pow(0.5)
        mem.index_copy_(0, y, upd)
    return out_v1, out_v2


class CRDCriterion(nn.Module):
  """``CRDLoss``: embeds, memory, student-side + teacher-side NCE loss.

  ``forward(f_s, f_t, idx, contrast_idx)``: f_s/f_t are ``feat[-1]`` (the
  pooled vectors), idx the dataset indices (B,), contrast_idx (B, K+1) with
  column 0 == idx. Loss = contrast_loss(out_v1) + contrast_loss(out_v2),
  shape (1,). Both embeds (the teacher's too) are trainable. Submodules are
  created in the original's order: embed_s, embed_t, contrast.
  """

  def __init__(
    self,
    s_dim: int,
    t_dim: int,
    feat_dim: int,
    n_data: int,
    nce_k: int,
    nce_t: float = 0.07,
    nce_m: float = 0.5,
    generator: torch.Generator | None = None,
    memory_v1: Tensor | None = None,
    memory_v2: Tensor | None = None,
  ):
    super().__init__()
    self.n_data = n_data
    self.embed_s = CRDEmbed(s_dim, feat_dim)
    self.embed_t = CRDEmbed(t_dim, feat_dim)
    self.contrast = ContrastMemory(
      feat_dim, n_data, nce_k, nce_t, nce_m, generator, memory_v1, memory_v2
    )

  def forward(
    self, f_s: Tensor, f_t: Tensor, idx: Tensor, contrast_idx: Tensor
  ) -> Tensor:
    e_s = self.embed_s(f_s)
    e_t = self.embed_t(f_t)
    out_s, out_t = self.contrast(e_s, e_t, idx, contrast_idx)
    return contrast_loss(out_s, self.n_data) + contrast_loss(
      out_t, self.n_data
    )
