"""The CRD table as configs: every pair x method builds, validates, and
carries RepDistiller's per-student rate, mdistiller's DKD beta and the
published numbers."""

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill
from mhkd_jax.configs import cifar100
from mhkd_jax.data import input_pipeline
from mhkd_jax.distill.base import DataSpec, Teacher, TeacherOutputs, Trainable
from mhkd_jax.models import create_model, features
from mhkd_jax.run import errors, validation

DATA = DataSpec(100, (32, 32, 3), 50000, 781, np.arange(50000) % 100)


def test_every_cell_validates():
  assert len(cifar100.PAIRS) == 13
  for teacher, student in cifar100.PAIRS:
    for method in cifar100.METHODS:
      config = cifar100.get_config(f'{teacher}-{student},{method}')
      validation.validate(config)
      assert config.model == student and config.method == method
      rate = 0.01 if student in cifar100.LOW_LR_STUDENTS else 0.05
      if method != 'mlkd':  # its authors' recipe (test_mlkd_runs_...)
        assert config.learning_rate == rate
      if method != 'ce':
        assert config.teacher.model == teacher
  for teacher in cifar100.TEACHERS:
    config = cifar100.get_config(teacher)
    validation.validate(config)
    assert (config.model, config.method) == (teacher, 'ce')


def test_published_numbers_and_recipe_details():
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'crd')] == 75.51
  assert cifar100.PUBLISHED[('vgg13-MobileNetV2', 'at')] == 59.40
  # mdistiller reports no DKD for resnet110 -> resnet20; the LS README does.
  assert cifar100.PUBLISHED[('resnet110-resnet20', 'dkd')] == 71.06
  assert cifar100.PUBLISHED[('resnet32x4-ShuffleV2', 'dkd')] == 77.07
  assert cifar100.PUBLISHED[('resnet32x4', 'teacher')] == 79.42
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'mhkd')] is None
  # RepDistiller's README: every one of its 15 methods has its cells (FSP
  # on the six same-type pairs it reports).
  repdistiller = ('kd', 'fitnet', 'at', 'sp', 'cc', 'vid', 'rkd', 'pkt',
                  'ab', 'ft', 'nst', 'crd', 'crd_kd')
  for method in repdistiller:
    assert all(cifar100.PUBLISHED[(f'{t}-{s}', method)] is not None
               for t, s in cifar100.PAIRS), method
  assert sum(cifar100.PUBLISHED[(f'{t}-{s}', 'fsp')] is not None
             for t, s in cifar100.PAIRS) == 6
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'nst')] == 73.30
  assert cifar100.PUBLISHED[('ResNet50-MobileNetV2', 'sp')] == 68.08
  assert cifar100.PUBLISHED[('wrn_40_2-ShuffleV1', 'ft')] == 72.03
  assert cifar100.get_config('resnet56-resnet20,dkd').dkd.beta == 2.0
  assert cifar100.get_config('vgg13-vgg8,dkd').dkd.beta == 6.0
  assert cifar100.get_config('resnet32x4-ShuffleV1,dkd').dkd.beta == 8.0
  mhkd = cifar100.get_config('resnet32x4-resnet8x4,mhkd')
  assert mhkd.teacher.init == 'runs/cifar100/resnet32x4_heads'


def test_dot_cells_carry_mdistillers_settings():
  """mdistiller's configs/cifar100/dot/: KD, delta 0.075, the student's
  rate; its README's KD+DOT numbers."""
  for (teacher, student), published in [
    (('resnet32x4', 'resnet8x4'), 75.12), (('vgg13', 'vgg8'), 73.77),
    (('resnet32x4', 'ShuffleV2'), 75.55),
  ]:
    cell = f'{teacher}-{student},kd+dot'
    config = cifar100.get_config(cell)
    validation.validate(config)
    assert (config.method, config.optimizer.name) == ('kd', 'dot')
    assert config.optimizer.dot_delta == 0.075
    assert (config.momentum, config.weight_decay) == (0.9, 5e-4)
    assert (config.kd.temperature, config.kd.w_ce, config.kd.w_kd) == (
      4.0, 0.1, 0.9)
    assert config.learning_rate == (0.01 if student == 'ShuffleV2' else 0.05)
    assert cifar100.PUBLISHED[(f'{teacher}-{student}', 'kd+dot')] == published
  assert cifar100.get_config('resnet32x4-resnet8x4,kd').optimizer.name == 'sgd'
  assert cifar100.get_config('vgg13-vgg8,dkd+dot').optimizer.name == 'dot'
  with pytest.raises(errors.ConfigError, match='METHOD\\+dot'):
    cifar100.get_config('resnet32x4-resnet8x4,kd+sgd')


def test_unknown_cell_names_the_valid_ones():
  with pytest.raises(errors.ConfigError, match='PAIR,METHOD.*resnet32x4-'):
    cifar100.get_config('resnet32x4-resnet8,kd')
  with pytest.raises(errors.ConfigError, match='METHOD one of ') as e:
    cifar100.get_config('resnet32x4-resnet8x4,fitnets')
  listed = str(e.value).split('METHOD one of ')[1].split(';')[0].split(', ')
  assert listed == list(distill.method_names(phases=False))
  assert {'ce', 'kd', 'fitnet', 'crd', 'dkd', 'mhkd'} <= set(listed)


def _trainable(cell, teachers={}):  # noqa: B006  (a cache of shapes)
  config = cifar100.get_config(cell)
  if config.method == 'mhkd':
    config.mhkd.teacher_head_mode = 'online'  # no heads checkpoint here
  name = config.teacher.model
  if name not in teachers:
    teachers[name] = nnx.eval_shape(
      lambda: create_model(name, num_classes=100, rngs=nnx.Rngs(0)))
  method = distill.create_method(config)
  teacher = Teacher(teachers[name], None, name=name)
  return nnx.eval_shape(
    lambda: method.create_trainable(teacher, DATA, nnx.Rngs(0)))


@pytest.mark.parametrize('method', [m for m in cifar100.METHODS
                                    if m not in ('ce', 'fsp')])
@pytest.mark.slow
def test_every_method_fits_a_cross_architecture_pair(method):
  trainable = _trainable(f'resnet32x4-ShuffleV1,{method}')
  assert trainable.get('student') is not None or method == (
    'fit_teacher_heads')


@pytest.mark.parametrize('teacher, student', cifar100.PAIRS)
@pytest.mark.slow
def test_shape_dependent_modules_fit_every_pair(teacher, student):
  for method in ('fitnet', 'vid', 'ab'):
    _trainable(f'{teacher}-{student},{method}')


def test_fsp_on_pairs_of_other_widths_names_the_fix():
  _trainable('resnet32x4-resnet8x4,fsp')  # equal widths: fine
  with pytest.raises(errors.ConfigError,
                     match=r'equal channel counts: student \[.*\], teacher'):
    _trainable('vgg13-MobileNetV2,fsp')


def test_logit_standardization_runs_carry_the_ls_codes_settings():
  kd = cifar100.get_config('resnet110-resnet20,kd,ls')
  assert kd.kd.logit_standardize and (kd.kd.temperature, kd.kd.w_kd,
                                      kd.kd.w_ce) == (4.0, 12.0, 0.1)
  dkd = cifar100.get_config('vgg13-vgg8,dkd,ls')
  assert dkd.dkd.logit_standardize
  assert (dkd.dkd.temperature, dkd.dkd.alpha, dkd.dkd.beta) == (2.0, 15.0,
                                                                30.0)
  # A pair the LS code does not report: its defaults, T 2 and weight 9.
  other = cifar100.get_config('ResNet50-vgg8,dkd,ls')
  assert (other.dkd.temperature, other.dkd.alpha, other.dkd.beta) == (
    2.0, 9.0, 72.0)
  assert not cifar100.get_config('vgg13-vgg8,dkd').dkd.logit_standardize
  assert cifar100.PUBLISHED_LS[('resnet32x4-resnet8x4', 'dkd')] == 77.01
  for teacher, student in cifar100.PAIRS:
    for method in cifar100.LS_METHODS:
      validation.validate(
        cifar100.get_config(f'{teacher}-{student},{method},ls'))
  with pytest.raises(errors.ConfigError, match='PAIR,METHOD,ls'):
    cifar100.get_config('vgg13-vgg8,fitnet,ls')


def test_mlkd_runs_carry_their_sources_recipes():
  # The MLKD authors' configs: 240 epochs at 0.025, ShuffleNets 960 at
  # 0.01; the rate steps after epochs 150, 180 and 210 whatever the length.
  mlkd = cifar100.get_config('resnet32x4-resnet8x4,mlkd')
  assert (mlkd.num_epochs, mlkd.learning_rate) == (240, 0.025)
  assert (mlkd.mlkd.temperature, mlkd.mlkd.ce_weight, mlkd.mlkd.kd_weight,
          mlkd.mlkd.logit_standardize) == (4.0, 0.1, 0.9, False)
  shuffle = cifar100.get_config('resnet32x4-ShuffleV2,mlkd')
  assert (shuffle.num_epochs, shuffle.learning_rate) == (960, 0.01)
  assert [round(f * 960) for f in shuffle.lr_decay_fractions] == [150, 180,
                                                                 210]
  # The LS code's MLKD+LS: 480 epochs, T 2, weight 9 (6 for vgg13-vgg8,
  # whose rate is 0.01 there).
  ls = cifar100.get_config('resnet32x4-resnet8x4,mlkd,ls')
  assert (ls.num_epochs, ls.learning_rate) == (480, 0.025)
  assert ls.mlkd.logit_standardize
  assert (ls.mlkd.temperature, ls.mlkd.kd_weight, ls.mlkd.ce_weight) == (
    2.0, 9.0, 0.1)
  vgg = cifar100.get_config('vgg13-vgg8,mlkd,ls')
  assert (vgg.num_epochs, vgg.learning_rate, vgg.mlkd.kd_weight) == (
    480, 0.01, 6.0)
  assert [round(f * 480) for f in vgg.lr_decay_fractions] == [150, 180, 210]
  # A pair neither source lists: the rule for its student.
  other = cifar100.get_config('ResNet50-vgg8,mlkd')
  assert (other.num_epochs, other.learning_rate) == (240, 0.025)
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'mlkd')] == 77.08
  assert cifar100.PUBLISHED_LS[('resnet32x4-resnet8x4', 'mlkd')] == 78.28
  assert cifar100.PUBLISHED_LS[('vgg13-vgg8', 'mlkd')] == 75.22
  # The recipe rides on DOT too.
  dot = cifar100.get_config('resnet32x4-resnet8x4,mlkd+dot')
  assert (dot.num_epochs, dot.optimizer.name) == (240, 'dot')


@pytest.mark.parametrize('teacher, student', cifar100.PAIRS)
@pytest.mark.slow
def test_kdsvd_loss_traces_for_every_pair(teacher, student):
  """mdistiller's KDSVD needs equal map sizes per stage; here pairs of
  other sizes are pooled to the smaller, so every pair's loss has a shape
  (traced only: jax.eval_shape)."""
  config = cifar100.get_config(f'{teacher}-{student},kdsvd')
  method = distill.create_method(config)

  def terms(images, labels):
    t_model = create_model(teacher, num_classes=100, rngs=nnx.Rngs(0))
    t_logits, t_feats = features.forward_with_features(t_model, images,
                                                       train=False)
    trainable = Trainable(student=create_model(
      student, num_classes=100, rngs=nnx.Rngs(1)))
    batch = input_pipeline.Batch(images, labels, labels)
    return method.loss(trainable, TeacherOutputs(t_logits, t_feats, None),
                       batch, None)[1]

  out = jax.eval_shape(terms, jax.ShapeDtypeStruct((2, 32, 32, 3),
                                                   np.float32),
                       jax.ShapeDtypeStruct((2,), np.int32))
  assert out['kdsvd/stages'].shape == ()
