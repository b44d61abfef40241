"""Flow of solution procedure (FSP; Yim et al., CVPR 2017), as in
RepDistiller: a preliminary phase (``fsp_init``, run first inside the FSP
run, in ``workdir/preliminary``) trains the student's feature layers
(RepDistiller's ``get_feat_modules()``; its other layers stay untouched,
BatchNorms in eval mode) for ``init_epochs`` = 30 epochs at a constant rate to
match the teacher's FSP matrices (Gram matrices between consecutive maps
of ``[stem, stage1, ..., stageN]``); then the student, started from those
layers, trains with plain CE (RepDistiller's FSP run adds no distillation
term after the init phase). The compared maps need equal channel counts
in student and teacher."""


from mhkd_jax import losses
from mhkd_jax.distill import base, common
from mhkd_jax.models import features
from mhkd_jax.run import errors


def _fsp_maps(feats):
  """RepDistiller's ``feat[:-1]``: the stem and every stage."""
  return [feats['stem'], *common.stages(feats)]


@base.register
class FlowOfSolutionProcedure(common.InitPhaseThenCE):
  """CE from an FSP-initialised student."""

  name = 'fsp'
  BETA = 50.0
  TERM = 'fsp/after_init'
  INIT_METHOD = 'fsp_init'

  @classmethod
  def extra_config(cls):
    return {'init_epochs': 30}

  def validate_config(self, check):
    super().validate_config(check)
    check.number('fsp.init_epochs', minimum=1, integer=True)

  def create_modules(self, student, teacher, data, rngs):
    s_maps = _fsp_maps(common.feature_shapes(student, data))
    t_maps = _fsp_maps(common.feature_shapes(teacher.model, data))
    s_c, t_c = [s[-1] for s in s_maps], [t[-1] for t in t_maps]
    if s_c != t_c:
      raise errors.ConfigError(
        f'FSP compares the stem and stage maps of student and teacher, '
        f'which need equal channel counts: student {s_c}, teacher {t_c} '
        f'({self.config.model} and {teacher.name}). Use FSP on a pair of '
        'the same widths (e.g. resnet32x4 -> resnet8x4).'
      )
    return {}



@base.register
class FitFSPFeatures(base.Method):
  """FSP's preliminary phase: the student's feature layers on FSP."""

  name = 'fsp_init'
  phase_of = 'fsp'

  def create_trainable(self, teacher, data, rngs):
    del teacher
    student = self.create_student(data, rngs)
    common.hold_outside_features(student, self.config.model)
    return base.Trainable(student=student)

  def trained_parameters(self):
    return common.student_features_only(self.config.model)

  def loss(self, trainable, teacher_out, batch, context):
    del context
    logits, feats = features.forward_with_features(
      trainable.student, batch.images, train=True
    )
    fsp = losses.fsp_loss(_fsp_maps(feats), _fsp_maps(teacher_out.feats))
    return fsp, {'fsp/features': fsp}, logits

  def export(self, trainable, teacher):
    return None
