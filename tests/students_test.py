"""Several students per teacher in one program equal one-student runs."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from mhkd_jax import distill, parallel, steps, students, train, train_state
from mhkd_jax.configs import test as test_config
from mhkd_jax.data import datasets, input_pipeline
from mhkd_jax.distill import base
from mhkd_jax.distill.base import DataSpec, Teacher
from mhkd_jax.models import create_model
from mhkd_jax.run import errors, records

# Not in `make test-fast` (several students: full runs and multi-student steps): docs/testing.md.
pytestmark = pytest.mark.slow

NUM_CLASSES = 10
NUM_EXAMPLES = 64
BATCH = 16
STEPS = 3
PREPROCESSING = input_pipeline.Preprocessing(
  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), crop_padding=4,
  random_flip=True,
)
DATA = DataSpec(
  num_classes=NUM_CLASSES, example_shape=(32, 32, 3),
  num_train_examples=NUM_EXAMPLES, steps_per_epoch=NUM_EXAMPLES // BATCH,
)


def _config(method, num_students=1, share_data=True, seed=3, loop='unroll'):
  config = test_config.get_config()
  config.students_loop = loop
  config.method = method
  config.batch_size = BATCH
  config.seed = seed
  config.num_students = num_students
  config.students_share_data = share_data
  config.mhkd.teacher_head_mode = 'online'
  return config


def _teacher():
  model = create_model('resnet8', num_classes=NUM_CLASSES, rngs=nnx.Rngs(7))
  return Teacher(model, None, name='resnet8')


def _split():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_EXAMPLES, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, (NUM_EXAMPLES,)).astype(np.int32)
  return datasets.ArraySplit(images, labels)


def _train(config, data_seed, evaluate=False):
  """STEPS steps of ``config``'s students on batches drawn from the data
  key of ``data_seed`` (one stream), or each student's own (independent
  data). Returns host (state, per-step losses), and with ``evaluate`` the
  eval step's sums on one batch of the split, the teacher run in it (as
  for heads trained in the run)."""
  mesh = parallel.create_mesh(1)
  method = distill.create_method(config)
  teacher = _teacher()
  state, graphdef, tx = train_state.create_train_state(
    config, method, teacher=teacher, data=DATA, mesh=mesh
  )
  t_graphdef, t_state = train_state.place_teacher(teacher, config, mesh)
  train_step = steps.create_train_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef, tx=tx,
    data=DATA, compiler_options=steps.compiler_options(mesh),
    num_students=config.num_students,
    share_data=config.students_share_data,
    students_loop=config.students_loop,
  )
  train_input = input_pipeline.DeviceResidentInput(
    _split(), PREPROCESSING, batch_size=BATCH, mesh=mesh
  )
  if config.num_students > 1 and not config.students_share_data:
    batches = students.train_batches(
      train_input, state, 0, config.num_students, False
    )
  else:
    batches = train_input.batches(0, train_state.data_rng(
      train_state.base_rng(data_seed)))
  losses = []
  for _, batch in zip(range(STEPS), batches):
    state, metrics = train_step(state, batch, t_state)
    losses.append(np.asarray(metrics['loss']))
  result = jax.device_get(state), np.stack(losses, axis=-1)
  if not evaluate:
    return result
  eval_step = steps.create_eval_step(
    method=method, graphdef=graphdef, teacher_graphdef=t_graphdef,
    compiler_options=steps.compiler_options(mesh),
    num_students=config.num_students, students_loop=config.students_loop,
  )
  eval_input = input_pipeline.DeviceResidentEvalInput(
    _split(), PREPROCESSING, batch_size=BATCH, mesh=mesh
  )
  batch = next(eval_input.batches())
  return (*result, jax.device_get(eval_step(state, t_state, batch, None)))


def _assert_student_equals(stacked, k, one, atol=1e-5):
  state, loss = stacked[:2]
  one_state, one_loss = one[:2]
  np.testing.assert_allclose(loss[k], one_loss, rtol=1e-5, atol=1e-6)
  mine = train_state.unstack(state.params, k)
  for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(one_state.params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)
  for a, b in zip(jax.tree.leaves(train_state.unstack(state.buffers, k)),
                  jax.tree.leaves(one_state.buffers), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=atol)


@pytest.mark.parametrize('method', ['ce', 'kd', 'mhkd'])
def test_student_k_of_shared_data_run_equals_one_student_run(method):
  seed = 3
  # MHKD (online teacher heads): its evaluation runs the teacher and
  # scores each student's and teacher heads; compare that too.
  evaluate = method == 'mhkd'
  stacked = _train(_config(method, num_students=2), data_seed=seed,
                   evaluate=evaluate)
  # Shared data: every student sees student 0's batches (data key of
  # `seed`); student k is initialised from seed + k.
  k = 1
  one = _train(_config(method, seed=seed + k), data_seed=seed,
               evaluate=evaluate)
  _assert_student_equals(stacked, k, one)
  # The students really differ (distinct initialisations).
  assert abs(stacked[1][0, -1] - stacked[1][1, -1]) > 1e-4
  if evaluate:
    sums, one_sums = stacked[2], one[2]
    assert sums.keys() == one_sums.keys()
    # The online teacher heads are scored (the teacher ran in the step).
    assert steps.accuracy_metric(f'{base.TEACHER}/stage1') in sums
    for key in sums:
      np.testing.assert_allclose(sums[key][k], one_sums[key], rtol=1e-5,
                                 atol=1e-5, err_msg=key)


def test_vmapped_students_equal_one_student_runs_to_rounding():
  # vmap turns each convolution into a grouped one, whose gradient sums
  # in another order: 3 steps leave ~3e-5 absolute on a few weights.
  stacked = _train(_config('kd', num_students=2, loop='vmap'), data_seed=3)
  one = _train(_config('kd', seed=4), data_seed=3)
  _assert_student_equals(stacked, 1, one, atol=1e-4)


def test_student_k_of_independent_data_run_equals_one_student_run():
  seed = 3
  stacked = _train(_config('kd', num_students=2, share_data=False),
                   data_seed=None)
  one = _train(_config('kd', seed=seed + 1), data_seed=seed + 1)
  _assert_student_equals(stacked, 1, one)


def test_crd_students_carry_their_own_memory():
  config = _config('crd', num_students=2)
  with config.unlocked():
    config.crd.nce_k = 16
  state, loss = _train(config, data_seed=config.seed)
  assert np.all(np.isfinite(loss)) and loss.shape == (2, STEPS)
  memories = [x for x in jax.tree.leaves(state.buffers) if x.ndim == 3]
  assert memories, 'the CRD memory banks are buffers with a students axis'
  for m in memories:
    assert m.shape[0] == 2
    assert not np.allclose(m[0], m[1])


def test_summarise_gives_mean_population_std_and_each_student():
  out = students.summarise({'eval/acc': np.array([0.5, 0.7, 0.9])}, 'eval')
  assert out['eval/acc'] == pytest.approx(0.7)
  assert out['eval_std/acc'] == pytest.approx(np.sqrt(0.08 / 3))
  assert out['student2/eval/acc'] == pytest.approx(0.9)
  assert students.student_metrics(out, 1) == {'eval/acc': pytest.approx(0.7)}


# --------------------------------------------------------------------------
# train_and_evaluate end to end (mock CIFAR-100, a resnet8 teacher).


def _run_config(teacher_dir, method='kd', **kwargs):
  config = test_config.get_config()
  config.method = method
  config.teacher.model = 'resnet8'
  config.teacher.init = teacher_dir
  config.checkpoint.every_steps = 4
  for k, v in kwargs.items():
    config[k] = v
  return config


def _assert_run_student_equals(student, seed, one):
  """A student's entry of a several-student results.json against the
  one-student run of its seed."""
  assert student['seed'] == seed
  assert student['final']['eval/loss'] == pytest.approx(
    one['final']['eval/loss'], rel=1e-4)
  assert student['final']['eval/acc'] == pytest.approx(
    one['final']['eval/acc'], abs=1e-6)
  assert student['best_eval_acc'] == pytest.approx(
    one['best_eval_acc'], abs=1e-6)


@pytest.fixture(scope='module')
def two_students(mock_cifar100, resnet8_teacher_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('two_students'))
  config = _run_config(resnet8_teacher_dir, num_students=2,
                       students_share_data=False)
  return workdir, train.train_and_evaluate(config, workdir)


def test_two_independent_students_equal_two_one_student_runs(
  two_students, mock_cifar100, resnet8_teacher_dir, tmp_path
):
  workdir, results = two_students
  assert results['num_students'] == 2
  finals = []
  for k, seed in enumerate((0, 1)):
    one = train.train_and_evaluate(
      _run_config(resnet8_teacher_dir, seed=seed), str(tmp_path / str(k))
    )
    _assert_run_student_equals(results['students'][k], seed, one)
    finals.append(one['final']['eval/acc'])
    # Each student's exported network is a loadable teacher checkpoint.
    assert os.path.isdir(os.path.join(workdir, f'student{k}', 'export'))
  mean, std = results['mean_std']['final_eval_acc']
  assert mean == pytest.approx(np.mean(finals), abs=1e-6)
  assert std == pytest.approx(np.std(finals), abs=1e-6)
  assert results['final']['eval/acc'] == pytest.approx(mean, abs=1e-6)
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['students'] == results['students']


def test_two_students_killed_and_restarted_equal_uninterrupted(
  two_students, mock_cifar100, resnet8_teacher_dir, tmp_path,
  disrupt_train_step
):
  workdir = str(tmp_path)
  config = _run_config(resnet8_teacher_dir, num_students=2,
                       students_share_data=False)
  disrupt_train_step(at_call=6, action=_kill)  # after the step-4 checkpoint
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, workdir)
  disrupt_train_step.restore()
  resumed = train.train_and_evaluate(config, workdir)
  _, expected = two_students
  assert resumed['final'] == pytest.approx(expected['final'], abs=1e-6)
  assert resumed['train'] == pytest.approx(expected['train'], rel=1e-5)


def _kill():
  raise KeyboardInterrupt('killed')


def test_workdir_refuses_another_number_of_students(two_students,
                                                    resnet8_teacher_dir):
  workdir, _ = two_students
  config = _run_config(resnet8_teacher_dir, num_students=3,
                       students_share_data=False)
  with pytest.raises(errors.WorkdirError, match='num_students'):
    records.check_config(workdir, config)


def test_a_run_recorded_before_num_students_resumes_as_one_student(
  tmp_path, resnet8_teacher_dir
):
  config = _run_config(resnet8_teacher_dir)
  old = records.config_as_json(config)
  del old['num_students'], old['students_share_data']
  records.write_json(str(tmp_path / 'config.json'), old)
  assert records.check_config(str(tmp_path), config) == {}
  config.num_students = 2
  with pytest.raises(errors.WorkdirError, match='num_students'):
    records.check_config(str(tmp_path), config)


def test_students_after_a_preliminary_phase_equal_one_student_runs(
  mock_cifar100, resnet8_teacher_dir, tmp_path
):
  """FSP's preliminary phase trains the same two students; student k of
  the run continues from student k of the phase, so each equals the
  one-student run of its seed, phase included."""
  def config(**kwargs):
    c = _run_config(resnet8_teacher_dir, method='fsp', num_epochs=1,
                    **kwargs)
    c.fsp.init_epochs = 1
    return c

  two = train.train_and_evaluate(
    config(num_students=2, students_share_data=False), str(tmp_path / 'two')
  )
  phase = records.read_json(
    str(tmp_path / 'two' / 'preliminary' / 'results.json'))
  assert phase['num_students'] == 2
  for k, seed in enumerate((0, 1)):
    one = train.train_and_evaluate(config(seed=seed), str(tmp_path / str(k)))
    _assert_run_student_equals(two['students'][k], seed, one)
