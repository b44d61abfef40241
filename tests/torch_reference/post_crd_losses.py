"""PyTorch reference for the losses of the methods after CRD.

An independent re-implementation (written from the authors' code, not
copied) of:

- LS: ``normalize`` of sunshangquan/logit-standardization-KD @ f6e5aa5
  (``mdistiller/distillers/{KD,DKD,MLKD}.py``, four identical copies);
- DIST: ``lib/models/losses/dist_kd.py`` of hunto/image_classification_sota
  @ d9662f7 (the commit hunto/DIST_KD pins; the file is the same at HEAD
  6f7a70a), the ``DIST`` module with its temperature ``tau``;
- MLKD: ``forward_train`` of Jin-Ying/Multi-Level-Logit-Distillation
  @ 5ee473f (``mdistiller/distillers/KD_ours.py``) and of the LS
  repository's ``mdistiller/distillers/MLKD.py`` (the same code plus the
  ``logit_stand`` switch on its KD terms);
- ReviewKD: ``hcl_loss`` of megvii-research/mdistiller @ a08d46f
  (``mdistiller/distillers/ReviewKD.py``; dvlab-research/ReviewKD's ``hcl``
  in ``CIFAR-100/model/reviewkd.py`` is the same function);
- OFD: ``feat_loss`` of mdistiller's ``mdistiller/distillers/OFD.py``, and
  for comparison ``distillation_loss`` of clovaai/overhaul-distillation
  @ 76344a8 (``CIFAR-100/distiller.py``).

Tensors are NCHW, logits (B, K). Each function reproduces its original's
behaviour operation by operation (reductions, eps placement, Python-float
weights, numpy's percentile on the masks), so the JAX port in
``mhkd_jax.losses`` can be checked against it to float32 precision
(``tests/post_crd_losses_test.py``). Teacher inputs are used as given: the
originals run the teacher under ``no_grad``, so a test passes detached
teacher tensors.
"""

import numpy as np
import torch
import torch.nn.functional as F

# LS -------------------------------------------------------------------------


def normalize(logit: torch.Tensor) -> torch.Tensor:
  """LS's z-score of each row: unbiased std, 1e-7 added to the std."""
  mean = logit.mean(dim=-1, keepdim=True)
  std = logit.std(dim=-1, keepdim=True)
  return (logit - mean) / (1e-7 + std)


# DIST -----------------------------------------------------------------------


def _cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8):
  """Row cosine with eps added to the product of the norms."""
  return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8):
  return _cosine(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1),
                 eps)


def _inter_class_relation(y_s, y_t):
  return 1 - _pearson(y_s, y_t).mean()


def _intra_class_relation(y_s, y_t):
  return _inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def dist_relations(z_s, z_t, tau=1.0):
  """(inter, intra), each already times tau^2, as DIST.forward forms them."""
  y_s = (z_s / tau).softmax(dim=1)
  y_t = (z_t / tau).softmax(dim=1)
  inter = tau**2 * _inter_class_relation(y_s, y_t)
  intra = tau**2 * _intra_class_relation(y_s, y_t)
  return inter, intra


def dist_loss(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
  """DIST(beta, gamma, tau)(z_s, z_t)."""
  inter, intra = dist_relations(z_s, z_t, tau)
  return beta * inter + gamma * intra


# MLKD -----------------------------------------------------------------------


def _mlkd_kd(s, t, temperature, logit_stand=False):
  """MLKD's kd_loss with reduce=True: KL summed over classes, batch mean,
  times T^2; logit_stand standardises both logits first (LS's MLKD)."""
  if logit_stand:
    s, t = normalize(s), normalize(t)
  log_p_s = F.log_softmax(s / temperature, dim=1)
  p_t = F.softmax(t / temperature, dim=1)
  kl = F.kl_div(log_p_s, p_t, reduction='none').sum(1).mean()
  return kl * temperature**2


def _mlkd_cc(s, t, temperature):
  """MLKD's cc_loss (reduce=True): class Gram matrices, sum, / K."""
  num_classes = t.shape[1]
  p_s = F.softmax(s / temperature, dim=1)
  p_t = F.softmax(t / temperature, dim=1)
  gram_s = torch.mm(p_s.transpose(1, 0), p_s)
  gram_t = torch.mm(p_t.transpose(1, 0), p_t)
  return ((gram_t - gram_s) ** 2).sum() / num_classes


def _mlkd_bc(s, t, temperature):
  """MLKD's bc_loss (reduce=True): batch Gram matrices, sum, / B."""
  batch = t.shape[0]
  p_s = F.softmax(s / temperature, dim=1)
  p_t = F.softmax(t / temperature, dim=1)
  gram_s = torch.mm(p_s, p_s.transpose(1, 0))
  gram_t = torch.mm(p_t, p_t.transpose(1, 0))
  return ((gram_t - gram_s) ** 2).sum() / batch


def mlkd_masks(t_weak):
  """forward_train's confidence masks from the teacher's weak logits:
  max-probability and class-sum at most numpy's 50th percentile."""
  p = F.softmax(t_weak.detach(), dim=1)
  confidence = p.max(dim=1)[0].detach()
  mask = confidence.le(np.percentile(confidence.cpu().numpy().flatten(), 50))
  class_confidence = torch.sum(p, dim=0).detach()
  class_mask = class_confidence.le(
    np.percentile(class_confidence.cpu().numpy().flatten(), 50)
  )
  return mask.bool(), class_mask.bool()


def mlkd_terms(s_weak, s_strong, t_weak, t_strong, temperature, kd_weight,
               logit_stand=False):
  """MLKD's distillation terms, each summed in the code's order.

  Returns {'kd_weak', 'kd_strong', 'cc', 'bc'}; the authors' losses_dict
  has loss_kd = kd_weak + kd_strong, loss_cc = cc and loss_bc = bc (its
  loss_cc_strong and loss_bc_strong are computed and dropped; they are
  left out here).
  """
  mask, class_mask = mlkd_masks(t_weak)
  w = kd_weight
  temperatures = (temperature, 3.0, 5.0, 2.0, 6.0)

  kd_weak = 0
  for temp in temperatures:
    term = _mlkd_kd(s_weak, t_weak, temp, logit_stand)
    kd_weak = kd_weak + w * ((term * mask).mean())
  # The strong sum: T0, 3 and 5 on the strong view, then 2 and 6 on the
  # weak view, unmasked (as the code is written).
  kd_strong = (
    w * _mlkd_kd(s_strong, t_strong, temperature, logit_stand)
    + w * _mlkd_kd(s_strong, t_strong, 3.0, logit_stand)
    + w * _mlkd_kd(s_strong, t_strong, 5.0, logit_stand)
    + w * _mlkd_kd(s_weak, t_weak, 2.0, logit_stand)
    + w * _mlkd_kd(s_weak, t_weak, 6.0, logit_stand)
  )
  cc, bc = 0, 0
  for temp in temperatures:
    cc = cc + w * ((_mlkd_cc(s_weak, t_weak, temp) * class_mask).mean())
  for temp in temperatures:
    bc = bc + w * ((_mlkd_bc(s_weak, t_weak, temp) * mask).mean())
  return {'kd_weak': kd_weak, 'kd_strong': kd_strong, 'cc': cc, 'bc': bc}


def mlkd_loss(s_weak, s_strong, t_weak, t_strong, temperature, kd_weight,
              logit_stand=False):
  """loss_kd + loss_cc + loss_bc of forward_train (everything but CE)."""
  terms = mlkd_terms(s_weak, s_strong, t_weak, t_strong, temperature,
                     kd_weight, logit_stand)
  return terms['kd_weak'] + terms['kd_strong'] + terms['cc'] + terms['bc']


# ReviewKD -------------------------------------------------------------------


def hcl_loss(fstudent, fteacher):
  """ReviewKD's hierarchical context loss over lists of NCHW maps."""
  total = 0.0
  for fs, ft in zip(fstudent, fteacher):
    height = fs.shape[2]
    loss = F.mse_loss(fs, ft, reduction='mean')
    weight, weights = 1.0, 1.0
    for size in [4, 2, 1]:
      if size >= height:
        continue
      pooled_s = F.adaptive_avg_pool2d(fs, (size, size))
      pooled_t = F.adaptive_avg_pool2d(ft, (size, size))
      weight /= 2.0
      loss = loss + F.mse_loss(pooled_s, pooled_t, reduction='mean') * weight
      weights += weight
    total = total + loss / weights
  return total


# OFD ------------------------------------------------------------------------


def ofd_feat_loss(source, target, margin):
  """mdistiller's feat_loss: the partial L2 with the margin (1, C, 1, 1),
  summed over C, H, W and averaged over the batch."""
  margin = margin.to(source)
  loss = (
    (source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
    + (source - target) ** 2
    * ((source > target) & (target > margin) & (target <= 0)).float()
    + (source - target) ** 2 * (target > 0).float()
  )
  return torch.abs(loss).mean(dim=0).sum()


def ofd_distillation_loss_clovaai(source, target, margin):
  """The OFD authors' distillation_loss (clovaai): target raised to the
  margin, squared error where source > target or target > 0, summed (not
  divided by the batch: their training script divides by it)."""
  target = torch.max(target, margin)
  loss = F.mse_loss(source, target, reduction='none')
  return (loss * ((source > target) | (target > 0)).float()).sum()
