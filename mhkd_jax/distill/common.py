"""What RepDistiller's methods share: ``gamma*CE + alpha*KD + beta*L``.

RepDistiller (the CRD benchmark's code) trains every student with
``loss = gamma * CE(s, y) + alpha * KD_T(s, t) + beta * L_method``
(``helper/loops.py::train_distill``), taps the teacher's features in eval
mode with no gradient, and adds the method's own modules (a regressor, an
embedding) to the trainable set, with weight decay like the student.
``WeightedDistillation`` does that once; a method subclasses it, sets its
``name`` and default weights, builds its extra modules and computes
``L_method`` from the student's and the teacher's features. Features are
the models' sown names: RepDistiller's ``feat`` list is ``[stem, stage1,
..., stageN, pooled]``, so ``feat[1:-1]`` are the stages, ``feat[-2]`` the
last stage, ``feat[-1]`` the pooled vector.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import jax
import ml_collections
from flax import nnx

from mhkd_jax import losses, models
from mhkd_jax.distill import base
from mhkd_jax.models import features, layers


def stages(feats: dict[str, jax.Array]) -> list[jax.Array]:
  """RepDistiller's ``feat[1:-1]``: every stage output, in order."""
  return [feats[name] for name in features.stage_names(feats)]


class WeightedDistillation(base.Method):
  """Base of the CRD benchmark's methods (not registered itself)."""

  # RepDistiller's scripts/run_cifar_distill.sh weights for the method.
  GAMMA: ClassVar[float] = 1.0
  ALPHA: ClassVar[float] = 0.0
  BETA: ClassVar[float] = 0.0
  # The name of the method's own term in the logged metrics.
  TERM: ClassVar[str] = ''

  @classmethod
  def default_config(cls):
    cfg = ml_collections.ConfigDict()
    # loss = gamma * CE + alpha * KD_T + beta * L_method.
    cfg.gamma = cls.GAMMA
    cfg.alpha = cls.ALPHA
    cfg.beta = cls.BETA
    # Temperature of the KD term (RepDistiller's --kd_T).
    cfg.temperature = 4.0
    for key, value in cls.extra_config().items():
      cfg[key] = value
    return cfg

  @classmethod
  def extra_config(cls) -> dict:
    """The method's own keys beside the weights, with their defaults."""
    return {}

  def validate_config(self, check):
    for key in ('gamma', 'alpha', 'beta'):
      check.number(f'{self.name}.{key}', minimum=0)
    check.number(f'{self.name}.temperature', minimum=0, strict=True)

  def create_trainable(self, teacher, data, rngs):
    student = self.create_student(data, rngs)
    return base.Trainable(
      student=student, **self.create_modules(student, teacher, data, rngs)
    )

  def create_modules(self, student, teacher, data, rngs) -> dict:
    """The method's trainable modules and state, by name (none here)."""
    del student, teacher, data, rngs
    return {}

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    """``L_method`` (a scalar) from the features; see the module doc."""
    raise NotImplementedError

  def task_weight(self):
    return self.cfg.gamma

  def loss(self, trainable, teacher_out, batch, context):
    cfg = self.cfg
    logits, s_feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    terms = {
      'ce': losses.cross_entropy(logits, batch.labels),
      'kd/logits': losses.kd_loss(
        logits, teacher_out.logits, cfg.temperature
      ),
      self.TERM: self.distill(trainable, s_feats, teacher_out, batch,
                              context),
    }
    total = (cfg.gamma * terms['ce'] + cfg.alpha * terms['kd/logits']
             + cfg.beta * terms[self.TERM])
    return total, terms, logits


class InitPhaseThenCE(WeightedDistillation):
  """RepDistiller's init-phase methods whose main phase adds no term (FSP,
  AB): the preliminary method ``INIT_METHOD`` trains the student's feature
  layers first; the student then starts from them and trains with CE."""

  INIT_METHOD: ClassVar[str] = ''

  def preliminary(self):
    return 'preliminary', preliminary_config(
      self.config, self.INIT_METHOD, self.config.learning_rate
    )

  def load_preliminary(self, trainable, preliminary):
    nnx.update(trainable.student, nnx.state(preliminary.student))

  def distill(self, trainable, s_feats, teacher_out, batch, context):
    # After the init phase RepDistiller trains with loss_kd = 0.
    del trainable, s_feats, teacher_out, batch, context
    return 0.0


def student_features_only(model_name: str):
  """nnx filter of RepDistiller's ``model_s.get_feat_modules()``: the
  parameters its init phases (AB, FSP) train. The student's other layers
  (its classifier, and WRN's final ``bn1``, MobileNetV2's ``conv2``,
  ShuffleV2's ``conv2``/``bn2``) are outside its init optimizer, so they
  are neither updated nor decayed there: here they travel with the buffers,
  undifferentiated."""
  feat = models.feature_modules(model_name)

  def trained(path, value) -> bool:
    return (isinstance(value, nnx.Param) and len(path) > 1
            and path[0] == 'student' and path[1] in feat)

  return trained


def hold_outside_features(student, model_name: str) -> None:
  """Holds every BatchNorm outside ``get_feat_modules()`` in eval mode, as
  RepDistiller's init phase does (``model_s.eval()``, then only the init
  modules ``.train()``): those normalise with their running statistics and
  never update them. WRN's AB pre-activation of the last group is taken
  after such a BatchNorm, at its initial statistics."""
  feat = models.feature_modules(model_name)
  for name, child in nnx.iter_children(student):
    if name in feat:
      continue
    for _, module in nnx.iter_modules(child):
      if isinstance(module, layers.BatchNorm):
        module.eval_only = True


def preliminary_config(config, method: str, learning_rate: float):
  """The config of a preliminary phase: ``init_epochs`` of ``method`` at a
  constant rate with SGD (RepDistiller's ``helper/pretrain.py::init``), one
  eval at its end."""
  phase = copy.deepcopy(config)
  phase.method = method
  phase.num_epochs = config[config.method].init_epochs
  phase.learning_rate = learning_rate
  phase.lr_decay_fractions = ()
  phase.eval_every_epochs = phase.num_epochs
  # RepDistiller's init phases are plain SGD, and have no task term to
  # split off for DOT.
  phase.optimizer.name = 'sgd'
  return phase


def feature_shapes(model, data) -> dict[str, tuple[int, ...]]:
  """The model's sown feature shapes for one example of ``data``."""
  return features.feature_shapes(model, data.input_shape)
