"""A tiny CPU configuration for tests: resnet8 students, a few steps.

Tests override data.name/num_train_examples and method as they need:
  python -m mhkd_jax.main --config=configs/test.py --workdir=/tmp/t
"""

from mhkd_jax.configs import default


def get_config():
  config = default.get_config()
  config.model = 'resnet8'
  config.data.name = 'cifar100'
  config.data.num_train_examples = 64
  config.data.num_eval_examples = 32
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_epochs = 2
  config.learning_rate = 0.05
  config.log_every_steps = 2
  config.eval_every_epochs = 1
  config.checkpoint.every_steps = 2
  # Checkpoints by steps only: which steps are saved must not depend on
  # how fast the machine is.
  config.checkpoint.every_minutes = 0.0
  for heads in (config.fit_teacher_heads, config.mhkd):
    heads.head = 'light'
    heads.head_width = 16
  return config
