"""Test setup: 8 fake CPU devices, forced before jax is imported anywhere."""

import os

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# Keep TensorFlow (used only by TFDS) off the accelerator and quiet.
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402

# Short compiles: the tests check values, not speed.
jax.config.update('jax_disable_most_optimizations', True)
