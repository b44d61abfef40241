"""Activation boundaries (AB; Heo et al., AAAI 2019), as in RepDistiller.

Preliminary phase (``ab_init``, run first inside the AB run, in
``workdir/preliminary``): for ``init_epochs`` = 30 epochs at a constant
rate, the student's feature layers (RepDistiller's ``get_feat_modules()``;
its other layers stay untouched, BatchNorms in eval mode) and a connector
per stage learn to put each student pre-activation on the same
side of zero as the teacher's, with a margin (``losses.ab_loss``). The
features are RepDistiller's ``preact=True`` ``feat[1:-1]``: every stage's
output before its final ReLU, which the models sow as ``preact1``,
``preact2``... The connector of a stage is the identity where the two maps
have the same channels and size, else FitNet's regressor without its ReLU
(RepDistiller's ``Connector``). Then the student, started from those
layers, trains with plain CE: RepDistiller runs AB with ``-a 0 -b 1`` and
adds no term after the init phase.
"""

from flax import nnx

from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.distill.fitnet import ConvReg
from mhkd_jax.models import features
from mhkd_jax.run import errors


def _preacts(feats) -> list:
  """RepDistiller's ``feat[1:-1]`` with ``preact=True``."""
  return [feats[name.replace('stage', 'preact')]
          for name in features.stage_names(feats)]


def _preact_shapes(model, data, role: str, model_name: str) -> list:
  shapes = common.feature_shapes(model, data)
  stages = features.stage_names(shapes)
  missing = [s for s in stages if s.replace('stage', 'preact') not in shapes]
  if missing:
    raise errors.ConfigError(
      f'AB distils pre-activations, and the {role} {model_name} does not '
      f'sow them for {missing}; use a model of the zoo that does.'
    )
  return [shapes[s.replace('stage', 'preact')] for s in stages]


@base.register
class ActivationBoundaries(common.InitPhaseThenCE):
  """CE from an AB-initialised student."""

  name = 'ab'
  BETA = 1.0
  TERM = 'ab/after_init'
  INIT_METHOD = 'ab_init'

  @classmethod
  def extra_config(cls):
    return {'init_epochs': 30, 'margin': 1.0}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('ab.init_epochs', minimum=1, integer=True)
    check.number('ab.margin', minimum=0)

  def create_modules(self, student, teacher, data, rngs):
    # Fail before any phase compiles if the pair cannot be connected.
    create_connector(student, self.config.model, teacher, data, rngs)
    return {}


def create_connector(student, student_name, teacher, data, rngs):
  """One connector per stage pair (None where the maps already agree)."""
  s_shapes = _preact_shapes(student, data, 'student', student_name)
  t_shapes = _preact_shapes(teacher.model, data, 'teacher', teacher.name)
  if len(s_shapes) != len(t_shapes):
    raise errors.ConfigError(
      f'AB pairs the stages of student and teacher one to one: the student '
      f'{student_name} has {len(s_shapes)}, the teacher {teacher.name} '
      f'{len(t_shapes)}. Use a pair with as many stages.'
    )
  return nnx.List([
    None if s[1:] == t[1:] else ConvReg(s, t, use_relu=False, rngs=rngs)
    for s, t in zip(s_shapes, t_shapes)
  ])


def _student_features_or_connector(model_name: str):
  features_only = common.student_features_only(model_name)

  def trained(path, value) -> bool:
    return features_only(path, value) or (
      isinstance(value, nnx.Param) and path[0] == 'connector'
    )

  return trained


@base.register
class FitActivationBoundaries(base.Method):
  """AB's preliminary phase: the student's feature layers and the
  connectors on the activation-boundary loss."""

  name = 'ab_init'
  phase_of = 'ab'

  def create_trainable(self, teacher, data, rngs):
    student = self.create_student(data, rngs)
    common.hold_outside_features(student, self.config.model)
    connector = create_connector(student, self.config.model, teacher, data,
                                 rngs)
    return base.Trainable(student=student, connector=connector)

  def trained_parameters(self):
    return _student_features_or_connector(self.config.model)

  def loss(self, trainable, teacher_out, batch, context):
    del context
    logits, feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    g_s = [
      x if conn is None else conn(x, train=True)
      for conn, x in zip(trainable.connector, _preacts(feats))
    ]
    ab = losses.ab_loss(g_s, _preacts(teacher_out.feats),
                        self.config.ab.margin)
    return ab, {'ab/preacts': ab}, logits

  def export(self, trainable, teacher):
    return None
