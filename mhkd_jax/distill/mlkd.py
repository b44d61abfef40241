"""Multi-level logit distillation (MLKD; Jin et al., CVPR 2023), as its
authors' ``KD_ours`` (Jin-Ying/Multi-Level-Logit-Distillation) and the LS
code's copy of it (``mdistiller/distillers/MLKD.py``) compute it.

Every training image comes in two views: the weak one (crop + flip, the
batch's ``images``) and a strong one (its own crop + flip, RandAugment and
Cutout: ``data/augment.py``'s ``strong_augment``, in
``batch.extras['strong_images']``). Student and teacher see both; the
student's BatchNorms take the weak view's statistics, then the strong
view's, as the authors' two forward passes do.

  L = ce_weight * (CE(s_weak) + CE(s_strong)) + mlkd_loss(...)

``losses.mlkd_terms`` holds the distillation terms (instance KD at five
temperatures on both views, class and batch correlation on the weak one,
with the authors' confidence masks). No warm-up: the authors' loss takes
the epoch and ignores it. Defaults are the authors' (mdistiller's KD
section: T 4, CE 0.1, KD 0.9). ``mlkd.logit_standardize`` is the LS code's
MLKD+LS: its KD terms see z-scored logits; its runs also lower the
temperature and raise the weight (``configs/cifar100.py``, LS_SETTINGS).
The training accuracy is the weak view's, as the authors report it.
"""

import ml_collections

from mhkd_jax import losses
from mhkd_jax.distill import base, standardize
from mhkd_jax.models import features


@base.register
class MLKD(base.Method):
  """Instance, batch and class-level KD over a weak and a strong view."""

  name = 'mlkd'
  needs_strong_view = True

  @classmethod
  def default_config(cls):
    return ml_collections.ConfigDict({
      # The configured temperature; the loss adds 2, 3, 5 and 6 to it.
      'temperature': 4.0, 'ce_weight': 0.1, 'kd_weight': 0.9,
      # LS: z-score the logits of the KD terms (distill/standardize).
      'logit_standardize': False,
    })

  def validate_config(self, check):
    check.number('mlkd.temperature', minimum=0, strict=True)
    for key in ('ce_weight', 'kd_weight'):
      check.number(f'mlkd.{key}', minimum=0)
    standardize.validate(check, 'mlkd')
    pipeline = check.value('data.pipeline')
    check.require(
      pipeline in ('device', 'host'), 'data.pipeline',
      "gives one view of each image; mlkd trains on a weak and a strong "
      "view, which data.pipeline='device' or 'host' make "
      '(--config.data.pipeline=device).',
    )

  def create_trainable(self, teacher, data, rngs):
    del teacher
    return base.Trainable(student=self.create_student(data, rngs))

  def task_weight(self):
    return self.cfg.ce_weight

  def loss(self, trainable, teacher_out, batch, context):
    del context
    cfg = self.cfg
    strong_images = base.strong_images(self.name, batch)
    # Two passes, weak first: the BatchNorm statistics move twice per
    # step, as in the authors' forward_train.
    s_weak, _ = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    s_strong, _ = features.forward_with_features(
      trainable.student, strong_images, train=True
    )
    t_weak, t_strong = teacher_out.logits, teacher_out.strong.logits
    kd_terms = losses.mlkd_terms(
      s_weak, s_strong, t_weak, t_strong, cfg.temperature, cfg.kd_weight,
      cfg.logit_standardize,
    )
    ce_weak = losses.cross_entropy(s_weak, batch.labels)
    ce_strong = losses.cross_entropy(s_strong, batch.labels)
    terms = {
      'ce': ce_weak + ce_strong,
      'ce/weak': ce_weak,
      'ce/strong': ce_strong,
      **{f'mlkd/{name}': value for name, value in kd_terms.items()},
    }
    total = cfg.ce_weight * terms['ce'] + sum(kd_terms.values())
    return total, terms, s_weak
