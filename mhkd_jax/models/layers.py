"""Building blocks that reproduce PyTorch's layer semantics in Flax NNX.

Every model in this package names its submodules after the PyTorch
attribute names of RepDistiller's models (``conv1``, ``bn1``,
``layer1[0].downsample[1]``...), so that the state_dict of a PyTorch
checkpoint maps onto the NNX state by path alone (see ``interop``).
Layout is NHWC; PyTorch's ``padding=p`` is written as explicit symmetric
padding, because ``'SAME'`` pads (0, 1) for stride-2 convs on even sizes.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes as nnx_dtypes

# torch.nn.init.kaiming_normal_(mode='fan_out', nonlinearity='relu').
kaiming_normal_fan_out = nnx.initializers.variance_scaling(
  2.0, 'fan_out', 'normal'
)
# torch.nn.init.kaiming_normal_(mode='fan_in') / normal(0, sqrt(2/n)) with
# n = k*k*out_channels is fan_out again; keep both names explicit.
kaiming_normal_fan_in = nnx.initializers.variance_scaling(
  2.0, 'fan_in', 'normal'
)
# PyTorch's default for Conv2d/Linear weights: kaiming_uniform(a=sqrt(5)),
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_kernel = nnx.initializers.variance_scaling(
  1.0 / 3.0, 'fan_in', 'uniform'
)


def torch_default_bias(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def conv(
  in_channels: int,
  out_channels: int,
  kernel_size: int,
  *,
  stride: int = 1,
  padding: int = 0,
  groups: int = 1,
  bias: bool = False,
  kernel_init=kaiming_normal_fan_out,
  rngs: nnx.Rngs,
) -> nnx.Conv:
  """A Conv2d with PyTorch's arguments: explicit symmetric padding."""
  fan_in = in_channels // groups * kernel_size * kernel_size
  return nnx.Conv(
    in_channels,
    out_channels,
    (kernel_size, kernel_size),
    strides=(stride, stride),
    padding=((padding, padding), (padding, padding)),
    feature_group_count=groups,
    use_bias=bias,
    kernel_init=kernel_init,
    bias_init=torch_default_bias(fan_in),
    rngs=rngs,
  )


class TransposedConv(nnx.Module):
  """PyTorch's ConvTranspose2d(k, stride, padding) on NHWC.

  ``kernel`` is (k, k, in, out), i.e. PyTorch's (in, out, k, k) weight
  with its axes moved; the transposed conv is the input-dilated conv with
  the spatially flipped kernel. Like ``nnx.Conv`` it computes in ``dtype``
  (set by ``precision.set_compute_dtype``; None: the inputs' promoted
  dtype): input, kernel and bias are cast to it first, since
  ``lax.conv_general_dilated`` takes operands of one dtype only.
  """

  def __init__(self, in_channels, out_channels, kernel_size, *, stride,
               padding, rngs, dtype=None):
    # PyTorch's default init: fan_in from the weight's dim 1 (out) * k * k.
    bound = 1.0 / math.sqrt(out_channels * kernel_size * kernel_size)
    shape = (kernel_size, kernel_size, in_channels, out_channels)
    self.kernel = nnx.Param(
      jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
    )
    self.bias = nnx.Param(
      jax.random.uniform(rngs.params(), (out_channels,), jnp.float32,
                         -bound, bound)
    )
    self.stride, self.padding, self.size = stride, padding, kernel_size
    self.dtype = dtype

  def __call__(self, x):
    x, kernel, bias = nnx_dtypes.promote_dtype(
      (x, self.kernel[...], self.bias[...]), dtype=self.dtype
    )
    edge = self.size - 1 - self.padding
    y = jax.lax.conv_general_dilated(
      x, jnp.flip(kernel, (0, 1)), window_strides=(1, 1),
      padding=((edge, edge), (edge, edge)),
      lhs_dilation=(self.stride, self.stride),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    return y + bias


class BatchNorm(nnx.BatchNorm):
  """``nnx.BatchNorm`` that normalises in float32 whatever the compute
  dtype, and returns its input's dtype.

  Flax casts the running statistics, scale and bias to the layer's
  ``dtype`` before normalising, so a bf16 layer would normalise an eval
  batch with bf16 statistics (three significant digits of the variance).
  Here the layer's ``dtype`` stays float32 (``precision``'s rule): batch
  statistics, running statistics and the affine map are float32, and only
  the output is rounded back to the activations' dtype (a no-op in a
  float32 run). ``x`` is handed to flax unchanged, so
  ``fold.fold_batchnorm`` still sees the convolution output it pairs.

  ``eval_only = True`` on an instance holds it in eval mode whatever
  ``train`` is: RepDistiller's init phases (AB, FSP) put the student in
  eval mode and only its ``get_feat_modules()`` back in train mode, so a
  BatchNorm outside them (WRN's final ``bn1``) normalises with its running
  statistics and never updates them
  (``distill.common.hold_outside_features``). It is a static attribute:
  the phase that sets it compiles it in.
  """

  eval_only: bool = False

  def __call__(self, x, use_running_average=None, *, mask=None):
    if self.eval_only:
      use_running_average = True
    y = super().__call__(x, use_running_average, mask=mask)
    return y.astype(x.dtype)


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> BatchNorm:
  """BatchNorm2d/1d with PyTorch's defaults (momentum 0.1 == Flax 0.9),
  computing in float32 (``BatchNorm``)."""
  return BatchNorm(
    num_features, momentum=0.9, epsilon=1e-5, dtype=jnp.float32, rngs=rngs
  )


def linear(in_features: int, out_features: int, *, rngs: nnx.Rngs):
  """nn.Linear with PyTorch's default initialisation."""
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=torch_default_kernel,
    bias_init=torch_default_bias(in_features),
    rngs=rngs,
  )


def global_avg_pool(x: jax.Array) -> jax.Array:
  """Mean over H and W (NHWC -> NC); equals AvgPool2d(H) on square maps.

  Float32 whatever the activations' dtype: the pooled vector feeds the
  classifier (float32 by ``precision``'s rule) and the pooled-feature
  losses, so it is not rounded to bf16 on the way.
  """
  return jnp.mean(x, axis=(1, 2), dtype=jnp.float32)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0):
  """nn.MaxPool2d(window, stride, padding) on NHWC."""
  pad = ((padding, padding), (padding, padding))
  return nnx.max_pool(x, (window, window), (stride, stride), pad)


def avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0):
  """nn.AvgPool2d(window, stride, padding), count_include_pad=True."""
  pad = ((padding, padding), (padding, padding))
  return nnx.avg_pool(
    x, (window, window), (stride, stride), pad, count_include_pad=True
  )


zeros = nnx.initializers.zeros_init()
# RepDistiller's VGG/MobileNetV2 linear init: normal(0, 0.01).
normal_001 = nnx.initializers.normal(0.01)


def linear_zero_bias(
  in_features: int,
  out_features: int,
  *,
  kernel_init=torch_default_kernel,
  rngs: nnx.Rngs,
) -> nnx.Linear:
  """nn.Linear whose bias RepDistiller zeroes after construction."""
  return nnx.Linear(
    in_features,
    out_features,
    kernel_init=kernel_init,
    bias_init=zeros,
    rngs=rngs,
  )


def run_sequential(seq, x: jax.Array, *, train: bool) -> jax.Array:
  """Runs an ``nn.Sequential`` port; ``None`` entries stand for ``ReLU``.

  PyTorch's parameter-free ReLU entries occupy indices of the Sequential,
  so the ports keep a ``None`` placeholder there: the parameter indices
  (``block0.0``, ``block0.1``, ``block0.3``...) then match the state_dict.
  """
  for layer in seq:
    if layer is None:
      x = nnx.relu(x)
    elif isinstance(layer, nnx.BatchNorm):
      x = layer(x, use_running_average=not train)
    else:
      x = layer(x)
  return x


def channel_shuffle(x: jax.Array, groups: int) -> jax.Array:
  """ShuffleNet's channel shuffle on the last (channel) axis of NHWC.

  Same permutation as torch's ``view(N, g, C/g, H, W).permute(0, 2, 1, 3,
  4)``: output channel ``j * g + i`` is input channel ``i * (C/g) + j``.
  """
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


def run_stages(model: nnx.Module, stages, x: jax.Array, *,
               train: bool) -> jax.Array:
  """Runs each stage's blocks in order and sows the stage's output.

  The outputs are sown on ``model`` as ``stage1``, ``stage2``... (1-based):
  the features that distillation heads read (``mhkd_jax.models.features``). A
  stage whose last block has ``with_preactivation`` also sows that block's
  output before its final ReLU as ``preact1``, ``preact2``... (RepDistiller's
  ``preact=True`` features, which AB distils).
  """
  for i, stage in enumerate(stages):
    *blocks, last = stage
    for block in blocks:
      x = block(x, train=train)
    if hasattr(last, 'with_preactivation'):
      x, pre = last.with_preactivation(x, train=train)
      model.sow(nnx.Intermediate, f'preact{i + 1}', pre)
    else:
      x = last(x, train=train)
    model.sow(nnx.Intermediate, f'stage{i + 1}', x)
  return x
