"""Our PyTorch port of mdistiller's ReviewKD distiller.

megvii-research/mdistiller @ a08d46f, ``mdistiller/distillers/ReviewKD.py``
(the ABF module, the review over the student's features and its loss), on
the RepDistiller-style models of ``tests/torch_reference/models.py``:
``model(x, is_feat=True, preact=p)`` returns ``[f0, f1, ..., fN, pooled]``,
which is mdistiller's ``feats`` (``preact_feats`` with ``preact=True``) plus
its ``pooled_feat``. As in mdistiller:

- the student's list, its stem ``f0`` included, is reversed; the review
  starts at the pooled feature (as a 1x1 map), and the stem is left out
  because the levels are zipped with one ABF per entry of ``in_channels``
  (the stages and the pooled feature);
- each ABF upsamples the residual to ``shapes[k]`` and its output to
  ``out_shapes[k]`` (both deepest first) by nearest neighbour;
- the targets are the teacher's pre-activations without the stem, then
  its pooled feature;
- the loss is ``ce_weight * CE + weight * min(epoch / warmup, 1) *
  hcl_loss`` with the 1-based epoch of mdistiller's trainer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_reference.post_crd_losses import hcl_loss


class ABF(nn.Module):
  """Attention-based fusion of one level with the level below it."""

  def __init__(self, in_channel, mid_channel, out_channel, fuse):
    super().__init__()
    self.conv1 = nn.Sequential(
      nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
      nn.BatchNorm2d(mid_channel))
    self.conv2 = nn.Sequential(
      nn.Conv2d(mid_channel, out_channel, kernel_size=3, padding=1,
                bias=False),
      nn.BatchNorm2d(out_channel))
    self.att_conv = nn.Sequential(
      nn.Conv2d(2 * mid_channel, 2, kernel_size=1),
      nn.Sigmoid()) if fuse else None
    nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
    nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

  def forward(self, x, residual=None, shape=None, out_shape=None):
    n, _, h, w = x.shape
    x = self.conv1(x)
    if self.att_conv is not None:
      residual = F.interpolate(residual, (shape, shape), mode='nearest')
      att = self.att_conv(torch.cat([x, residual], dim=1))
      x = (x * att[:, 0].view(n, 1, h, w)
           + residual * att[:, 1].view(n, 1, h, w))
    if x.shape[-1] != out_shape:
      x = F.interpolate(x, (out_shape, out_shape), mode='nearest')
    return self.conv2(x), x


class ReviewKD(nn.Module):
  """The ABFs of one student (built shallow to deep, kept deepest first).

  ``in_channels``/``out_channels`` are shallow to deep (the last is the
  pooled feature); ``shapes``/``out_shapes`` deepest first, as in
  mdistiller's configs.
  """

  def __init__(self, in_channels, out_channels, shapes, out_shapes,
               max_mid_channel=512):
    super().__init__()
    self.shapes, self.out_shapes = shapes, out_shapes
    mid = min(max_mid_channel, in_channels[-1])
    abfs = [ABF(c, mid, out_channels[i], i < len(in_channels) - 1)
            for i, c in enumerate(in_channels)]
    self.abfs = nn.ModuleList(abfs[::-1])

  def review(self, feats_s):
    """``feats_s``: the student's ``[f0, ..., fN, pooled]``; returns the
    fused maps, shallowest first."""
    maps = [*feats_s[:-1], feats_s[-1][:, :, None, None]][::-1]
    out, residual = self.abfs[0](maps[0], out_shape=self.out_shapes[0])
    results = [out]
    for x, abf, shape, out_shape in zip(maps[1:], self.abfs[1:],
                                        self.shapes[1:],
                                        self.out_shapes[1:]):
      out, residual = abf(x, residual, shape, out_shape)
      results.insert(0, out)
    return results


def targets(feats_t):
  """The teacher's ``preact=True`` list -> its pre-activations without the
  stem, then the pooled feature as a 1x1 map."""
  return [*feats_t[1:-1], feats_t[-1][:, :, None, None]]


def reviewkd_loss(review, feats_s, feats_t, logits_s, labels, epoch, *,
                  ce_weight=1.0, weight=1.0, warmup_epochs=20):
  """``(total, {'ce', 'reviewkd/hcl'})`` of mdistiller's forward_train;
  ``epoch`` is 1-based."""
  ce = F.cross_entropy(logits_s, labels)
  hcl = hcl_loss(review.review(feats_s), targets(feats_t))
  total = ce_weight * ce + weight * min(epoch / warmup_epochs, 1.0) * hcl
  return total, {'ce': ce, 'reviewkd/hcl': hcl}
