"""Pure loss and agreement functions on logits.

All reductions follow RepDistiller so that numbers are comparable with the
PyTorch literature: cross-entropy is a batch mean, and the distillation term
is ``DistillKL``: KL(softmax(t/T) || softmax(s/T)) summed over classes,
averaged over the batch, times T^2 (the T^2 keeps gradient magnitudes
independent of T, as in Hinton et al.).

Every loss and feature statistic here computes in float32 whatever the
dtype of the features and logits it is given (``in_float32``): in a bf16
run only the activations are bf16 (``models/precision.py``).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def float32(tree):
  """``tree`` with every floating-point array cast to float32; integer
  and boolean arrays (labels, indices, masks) and Python numbers are left
  as they are."""

  def cast(x):
    if (isinstance(x, (jax.Array, np.ndarray))
        and jnp.issubdtype(x.dtype, jnp.floating)
        and x.dtype != jnp.float32):
      return x.astype(jnp.float32)
    return x

  return jax.tree.map(cast, tree)


def in_float32(fn):
  """Decorator of every loss and feature statistic here: its array
  arguments (lists and dicts of them too) are cast to float32 on entry.

  In a bf16 run the features and logits arrive in bf16 (three significant
  digits); a Gram matrix, a distance written as |a|^2 + |b|^2 - 2ab or a
  softmax computed there loses most of them. Casting at the loss, in this
  one place, makes every method's loss float32 without casts in the
  methods; in a float32 run it changes nothing.
  """

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    return fn(*float32(args), **float32(kwargs))

  return wrapper


def _label_log_probs(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log softmax(logits)[label], float32 [B, 1]."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)


@in_float32
def negative_log_likelihood(
  logits: jax.Array, labels: jax.Array
) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels: [B]."""
  return -_label_log_probs(logits, labels)[:, 0]


@in_float32
def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy against integer labels."""
  return -jnp.mean(_label_log_probs(logits, labels))


@in_float32
def kd_loss(
  student_logits: jax.Array,
  teacher_logits: jax.Array,
  temperature: float,
) -> jax.Array:
  """RepDistiller's DistillKL: T^2 * mean_batch KL(p_t^T || p_s^T).

  The teacher logits are not stop-gradiented here: the caller decides which
  side is a target (the step stops gradients into the frozen teacher).
  """
  t = temperature
  log_p_s = jax.nn.log_softmax(student_logits / t, -1)
  log_p_t = jax.nn.log_softmax(teacher_logits / t, -1)
  p_t = jnp.exp(log_p_t)
  # p_t * (log p_t - log p_s); where p_t underflows to 0 the term is 0.
  kl = jnp.sum(jnp.where(p_t > 0, p_t * (log_p_t - log_p_s), 0.0), axis=-1)
  return jnp.mean(kl) * t * t


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per example: whether the top-1 prediction is the label (bool [B])."""
  return jnp.argmax(logits, -1) == labels


def agrees(a_logits: jax.Array, b_logits: jax.Array) -> jax.Array:
  """Per example: whether two classifiers' top-1 classes agree (bool [B])."""
  return jnp.argmax(a_logits, -1) == jnp.argmax(b_logits, -1)


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of top-1 predictions equal to the label."""
  return jnp.mean(correct(logits, labels))


# --------------------------------------------------------------------------
# The prior approaches (RepDistiller's distiller_zoo and crd, mdistiller's
# DKD). Features are NHWC float32 (vectors (B, D)); every reduction,
# normalisation, epsilon and pooling rule is the original's, so that the
# values equal the PyTorch definitions to float32 precision
# (tests/losses_test.py checks each against tests/torch_reference/
# distill_losses.py). Which features each method feeds in, and the weights,
# live with the method (mhkd_jax/distill/).


def _l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12):
  """torch.nn.functional.normalize: x / max(||x||_2, eps).

  Written as sqrt(max(||x||^2, eps^2)) (the same value) so that a zero
  vector, which RKD's angles meet on the diagonal, gets torch's zero
  gradient through the norm instead of sqrt's infinite one.
  """
  norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=axis, keepdims=True),
                              eps * eps))
  return x / norm


def _pool_matrix(size: int, out: int) -> jax.Array:
  """(out, size) averaging weights of PyTorch's adaptive average pooling:
  bin i covers [floor(i * size / out), ceil((i + 1) * size / out))."""
  rows = []
  for i in range(out):
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0
                 for j in range(size)])
  return jnp.asarray(rows, jnp.float32)


@in_float32
def adaptive_avg_pool(f: jax.Array, out: int) -> jax.Array:
  """F.adaptive_avg_pool2d(f, (out, out)) on NHWC."""
  _, h, w, _ = f.shape
  if (h, w) == (out, out):
    return f
  return jnp.einsum('oh,bhwc,pw->bopc', _pool_matrix(h, out), f,
                    _pool_matrix(w, out))


@in_float32
def pool_to_smaller(f_s: jax.Array, f_t: jax.Array):
  """RepDistiller's rule when two maps differ in size: compare heights and
  pool the larger map to the smaller height, square."""
  s_h, t_h = f_s.shape[1], f_t.shape[1]
  if s_h > t_h:
    f_s = adaptive_avg_pool(f_s, t_h)
  elif s_h < t_h:
    f_t = adaptive_avg_pool(f_t, s_h)
  return f_s, f_t


def _kl_sum(log_q: jax.Array, p: jax.Array) -> jax.Array:
  """F.kl_div(log_q, p, reduction='sum'): terms with p = 0 count 0."""
  safe_p = jnp.where(p > 0, p, 1.0)
  return jnp.sum(jnp.where(p > 0, p * (jnp.log(safe_p) - log_q), 0.0))


@in_float32
def hint_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """FitNet: mean squared error between the regressed student feature and
  the teacher's."""
  return jnp.mean((f_s - f_t) ** 2)


@in_float32
def attention_map(f: jax.Array, p: float = 2.0) -> jax.Array:
  """AT's map: channel mean of |f|^p, flattened, l2-normalised: (B, H*W)."""
  a = jnp.mean(f**p, axis=-1)
  return _l2_normalize(a.reshape(a.shape[0], -1))


@in_float32
def attention_loss(f_s: jax.Array, f_t: jax.Array, p: float = 2.0):
  """AT for one feature pair: mean squared difference of the maps."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  return jnp.mean((attention_map(f_s, p) - attention_map(f_t, p)) ** 2)


@in_float32
def similarity_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """SP: squared Frobenius distance of the row-normalised batch Gram
  matrices, over B^2."""
  b = f_s.shape[0]
  g_s = f_s.reshape(b, -1)
  g_t = f_t.reshape(b, -1)
  g_s = _l2_normalize(g_s @ g_s.T)
  g_t = _l2_normalize(g_t @ g_t.T)
  return jnp.sum((g_t - g_s) ** 2) / (b * b)


@in_float32
def correlation_loss(e_s: jax.Array, e_t: jax.Array) -> jax.Array:
  """CC (RepDistiller's reading): mean over consecutive examples i of
  sum_d |e_s - e_t|_i * |e_s - e_t|_{i+1}."""
  delta = jnp.abs(e_s - e_t)
  return jnp.mean(jnp.sum(delta[:-1] * delta[1:], axis=1))


def _pairwise_distances(e: jax.Array, eps: float = 1e-12) -> jax.Array:
  square = jnp.sum(e**2, axis=1)
  d2 = square[:, None] + square[None, :] - 2.0 * (e @ e.T)
  d = jnp.sqrt(jnp.maximum(d2, eps))
  return d * (1.0 - jnp.eye(e.shape[0], dtype=d.dtype))


def _smooth_l1(x: jax.Array, y: jax.Array) -> jax.Array:
  diff = jnp.abs(x - y)
  return jnp.mean(jnp.where(diff < 1.0, 0.5 * diff**2, diff - 0.5))


def _angles(x: jax.Array) -> jax.Array:
  """(B^3,) cosines of the angles e_j - e_i, e_k - e_i."""
  diff = _l2_normalize(x[None, :, :] - x[:, None, :], axis=2)
  return jnp.einsum('ijd,ikd->ijk', diff, diff).reshape(-1)


@in_float32
def rkd_loss(f_s: jax.Array, f_t: jax.Array, w_d: float = 25.0,
             w_a: float = 50.0) -> jax.Array:
  """RKD: smooth-L1 between mean-normalised pairwise distances (w_d) and
  between triplet angles (w_a); the teacher side carries no gradient."""
  s = f_s.reshape(f_s.shape[0], -1)
  t = jax.lax.stop_gradient(f_t.reshape(f_t.shape[0], -1))

  def normalised(d):
    positive = d > 0
    return d / (jnp.sum(jnp.where(positive, d, 0.0)) / jnp.sum(positive))

  t_d = jax.lax.stop_gradient(normalised(_pairwise_distances(t)))
  loss_d = _smooth_l1(normalised(_pairwise_distances(s)), t_d)
  loss_a = _smooth_l1(_angles(s), jax.lax.stop_gradient(_angles(t)))
  return w_d * loss_d + w_a * loss_a


@in_float32
def pkt_loss(f_s: jax.Array, f_t: jax.Array, eps: float = 1e-7):
  """PKT: KL-like divergence between the cosine-similarity distributions
  of the batch (cosines mapped to [0, 1] and row-normalised)."""

  def distribution(x):
    x = x / (jnp.sqrt(jnp.sum(x**2, axis=1, keepdims=True)) + eps)
    x = jnp.where(jnp.isnan(x), 0.0, x)
    similarity = (x @ x.T + 1.0) / 2.0
    return similarity / jnp.sum(similarity, axis=1, keepdims=True)

  s, t = distribution(f_s), distribution(f_t)
  return jnp.mean(t * jnp.log((t + eps) / (s + eps)))


def _poly_kernel_mean(a: jax.Array, b: jax.Array) -> jax.Array:
  """mean over (B, C, C) of <a_i, b_j>^2 (a, b: (B, C, HW))."""
  return jnp.mean(jnp.einsum('bic,bjc->bij', b, a) ** 2)


@in_float32
def nst_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """NST: squared MMD with a degree-2 polynomial kernel between the
  channels' spatially l2-normalised activation patterns."""
  f_s, f_t = pool_to_smaller(f_s, f_t)

  def channels(f):
    b, h, w, c = f.shape
    return _l2_normalize(f.reshape(b, h * w, c).transpose(0, 2, 1), axis=2)

  s, t = channels(f_s), channels(f_t)
  return (jax.lax.stop_gradient(_poly_kernel_mean(t, t))
          + _poly_kernel_mean(s, s) - 2.0 * _poly_kernel_mean(s, t))


@in_float32
def factor_loss(f_s: jax.Array, f_t: jax.Array, p1: float = 2.0,
                p2: float = 1.0) -> jax.Array:
  """FT: distance between the normalised channel-mean maps of the two
  factors (L1 mean for p2 = 1, else the mean p2-th power)."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  diff = attention_map(f_s, p1) - attention_map(f_t, p1)
  if p2 == 1:
    return jnp.mean(jnp.abs(diff))
  return jnp.mean(diff**p2)


@in_float32
def fsp_matrices(g: list[jax.Array]) -> list[jax.Array]:
  """FSP matrices of consecutive maps: (B, C_top, C_bottom), spatial mean
  of their products (the larger of the two pooled to the smaller)."""
  out = []
  for bottom, top in zip(g[:-1], g[1:]):
    bottom, top = pool_to_smaller(bottom, top)
    b, h, w, _ = bottom.shape
    out.append(jnp.einsum('bpt,bpc->btc', top.reshape(b, h * w, -1),
                          bottom.reshape(b, h * w, -1)) / (h * w))
  return out


@in_float32
def fsp_loss(g_s: list[jax.Array], g_t: list[jax.Array]) -> jax.Array:
  """FSP: sum over consecutive pairs of the mean squared difference of
  the student's and the teacher's FSP matrices."""
  return sum(
    jnp.mean((s - t) ** 2)
    for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t))
  )


@in_float32
def ab_loss(g_s: list[jax.Array], g_t: list[jax.Array],
            margin: float = 1.0) -> jax.Array:
  """AB: the activation-boundary hinge on pre-activations, summed over
  elements, stage k of n weighted 2^(k-n+1), over the batch, x 3/1000."""
  n, batch = len(g_s), g_s[0].shape[0]
  total = 0.0
  for k, (s, t) in enumerate(zip(g_s, g_t)):
    hinge = (
      (s + margin) ** 2 * ((s > -margin) & (t <= 0))
      + (s - margin) ** 2 * ((s <= margin) & (t > 0))
    )
    total = total + 2.0 ** (k - n + 1) * jnp.sum(jnp.abs(hinge)) / batch
  return total / 1000 * 3


@in_float32
def vid_loss(pred_mean: jax.Array, target: jax.Array, log_scale: jax.Array,
             eps: float = 1e-5) -> jax.Array:
  """VID: Gaussian negative log-likelihood of the teacher feature under the
  regressed mean and a learned per-channel variance softplus(log_scale)."""
  var = jnp.log(1.0 + jnp.exp(log_scale)) + eps
  return jnp.mean(0.5 * ((pred_mean - target) ** 2 / var + jnp.log(var)))


@in_float32
def contrast_loss(x: jax.Array, n_data: int, eps: float = 1e-7):
  """CRD's NCE objective on the (B, K + 1) scores, positive first."""
  x = x.reshape(x.shape[0], -1)
  batch, k = x.shape[0], x.shape[1] - 1
  noise = k * (1.0 / float(n_data))
  log_d1 = jnp.log(x[:, 0] / (x[:, 0] + noise + eps))
  log_d0 = jnp.log(noise / (x[:, 1:] + noise + eps))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / batch


@in_float32
def dkd_loss(logits_s: jax.Array, logits_t: jax.Array, labels: jax.Array,
             alpha: float, beta: float, temperature: float) -> jax.Array:
  """DKD (mdistiller): alpha * TCKD (binary target-vs-rest KL) + beta *
  NCKD (KL among the non-target classes), each x T^2 / B."""
  t = temperature
  s = logits_s / t
  te = logits_t / t
  gt = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.float32)
  p_s, p_t = jax.nn.softmax(s, -1), jax.nn.softmax(te, -1)

  def binary(p):
    return jnp.stack([jnp.sum(p * gt, 1), jnp.sum(p * (1.0 - gt), 1)], 1)

  batch = labels.shape[0]
  tckd = _kl_sum(jnp.log(binary(p_s)), binary(p_t)) * t * t / batch
  nckd = _kl_sum(jax.nn.log_softmax(s - 1000.0 * gt, -1),
                 jax.nn.softmax(te - 1000.0 * gt, -1)) * t * t / batch
  return alpha * tckd + beta * nckd


# --------------------------------------------------------------------------
# The methods after CRD (issue 21): logit standardization (LS), DIST, MLKD,
# ReviewKD's hierarchical context loss and OFD's partial L2. Each is its
# authors' code, constants and quirks included (docs/methods.md, "Loss
# functions of the methods after CRD", names the source file of each and the
# readings chosen); tests/post_crd_losses_test.py checks each against our
# PyTorch port in tests/torch_reference/post_crd_losses.py. Float inputs are
# cast to float32 on entry (``in_float32``), so bf16 activations are
# compared in float32.
# Teacher inputs are not stop-gradiented here: the caller decides.


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """sqrt(x) with torch's zero gradient at x = 0 (a zero norm or std).

  PyTorch's norm and std backward passes mask the 0 / 0 at a zero result;
  a plain jnp.sqrt would give NaN gradients there.
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


@in_float32
def logit_standardize(logits: jax.Array) -> jax.Array:
  """LS's ``normalize``: each row's z-score, (z - mean) / (1e-7 + std).

  The std is unbiased (ddof 1, torch.std's default) and the 1e-7 is added
  to the std, not to the variance, as in the LS repository's KD, DKD and
  MLKD. A constant row gives zeros (the eps case); its gradient is the
  centring divided by 1e-7, as torch's.
  """
  z = logits
  k = z.shape[-1]
  if k < 2:
    raise ValueError(
      f'logit_standardize needs at least 2 classes (got {k}): the '
      'unbiased std of one value divides by zero.'
    )
  centred = z - jnp.mean(z, axis=-1, keepdims=True)
  var = jnp.sum(centred * centred, axis=-1, keepdims=True) / (k - 1)
  return centred / (1e-7 + _safe_sqrt(var))


def _pearson_rows(a: jax.Array, b: jax.Array,
                  eps: float = 1e-8) -> jax.Array:
  """DIST's pearson_correlation: cosine of the row-centred rows, with eps
  added to the product of the two norms."""
  a = a - jnp.mean(a, axis=1, keepdims=True)
  b = b - jnp.mean(b, axis=1, keepdims=True)
  norms = (_safe_sqrt(jnp.sum(a * a, axis=1))
           * _safe_sqrt(jnp.sum(b * b, axis=1)))
  return jnp.sum(a * b, axis=1) / (norms + eps)


@in_float32
def dist_terms(
  logits_s: jax.Array, logits_t: jax.Array, temperature: float = 1.0
) -> dict[str, jax.Array]:
  """DIST's two relations, each times T^2: ``inter`` (1 - mean over the
  batch of the Pearson correlation across classes) and ``intra`` (1 - mean
  over the classes of the correlation across the batch), on softmax(z/T)."""
  t = temperature
  y_s = jax.nn.softmax(logits_s / t, axis=1)
  y_t = jax.nn.softmax(logits_t / t, axis=1)
  return {
    'inter': t * t * (1.0 - jnp.mean(_pearson_rows(y_s, y_t))),
    'intra': t * t * (1.0 - jnp.mean(_pearson_rows(y_s.T, y_t.T))),
  }


@in_float32
def dist_loss(logits_s: jax.Array, logits_t: jax.Array, beta: float = 1.0,
              gamma: float = 1.0, temperature: float = 1.0) -> jax.Array:
  """DIST (hunto): beta * T^2 * inter + gamma * T^2 * intra."""
  terms = dist_terms(logits_s, logits_t, temperature)
  return beta * terms['inter'] + gamma * terms['intra']


# MLKD's forward_train adds these fixed temperatures to the configured one,
# in this order, in every multi-temperature sum.
MLKD_EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def _fraction_at_most_median(values: jax.Array) -> jax.Array:
  """mean(values <= np.percentile(values, 50)) of a float32 vector.

  numpy's linear percentile of float32 is float32: the middle value for an
  odd length, b - (b - a) * 0.5 of the two middle values for an even one.
  MLKD's masks enter its loss only through this fraction (1/2 without ties,
  more with ties; never 0).
  """
  n = values.shape[0]
  ordered = jnp.sort(values)
  lower = ordered[(n - 1) // 2]
  if n % 2:
    threshold = lower
  else:
    upper = ordered[n // 2]
    threshold = upper - (upper - lower) * 0.5
  return jnp.mean((values <= threshold).astype(jnp.float32))


def _class_correlation_loss(logits_s: jax.Array, logits_t: jax.Array,
                            temperature: float) -> jax.Array:
  """MLKD's cc_loss: squared difference of the (K, K) class Gram matrices
  P^T P of softmax(z/T), summed, over K (no T^2)."""
  p_s = jax.nn.softmax(logits_s / temperature, axis=1)
  p_t = jax.nn.softmax(logits_t / temperature, axis=1)
  return jnp.sum((p_t.T @ p_t - p_s.T @ p_s) ** 2) / logits_t.shape[1]


def _batch_correlation_loss(logits_s: jax.Array, logits_t: jax.Array,
                            temperature: float) -> jax.Array:
  """MLKD's bc_loss: squared difference of the (B, B) batch Gram matrices
  P P^T of softmax(z/T), summed, over B (no T^2)."""
  p_s = jax.nn.softmax(logits_s / temperature, axis=1)
  p_t = jax.nn.softmax(logits_t / temperature, axis=1)
  return jnp.sum((p_t @ p_t.T - p_s @ p_s.T) ** 2) / logits_t.shape[0]


@in_float32
def mlkd_terms(
  s_weak: jax.Array, s_strong: jax.Array, t_weak: jax.Array,
  t_strong: jax.Array, temperature: float, kd_weight: float,
  standardize: bool = False,
) -> dict[str, jax.Array]:
  """Every distillation term of MLKD's forward_train, as its code computes
  them (the authors' ``loss_kd`` is kd_weak + kd_strong).

  With T in (temperature, 3, 5, 2, 6) and w = kd_weight:
  - kd_weak: w * r_B * sum_T KD_T(weak);
  - kd_strong: w * (KD_T0 + KD_3 + KD_5 of the strong view, KD_2 + KD_6 of
    the weak view: the code's copy of the weak lines);
  - cc: w * r_C * sum_T CC_T(weak); bc: w * r_B * sum_T BC_T(weak).
  The code multiplies scalar losses by the confidence masks and averages,
  so a mask acts only through its fraction: r_B = mean(conf <= median) of
  the teacher's weak max-probability, r_C the same of its class sums, both
  at T = 1 on raw logits. ``standardize`` is the LS variant: the KD terms
  (only) see logit_standardize of both logits. KD_T is kd_loss; the strong
  views' CC and BC terms, computed and dropped by the code, are left out.
  """
  p_teacher = jax.nn.softmax(t_weak, axis=1)
  r_batch = _fraction_at_most_median(jnp.max(p_teacher, axis=1))
  r_class = _fraction_at_most_median(jnp.sum(p_teacher, axis=0))

  # The logits the KD terms see (LS standardises them; CC, BC and the
  # masks keep the raw ones).
  kd_s_weak, kd_s_strong, kd_t_weak, kd_t_strong = (
    logit_standardize(x) if standardize else x
    for x in (s_weak, s_strong, t_weak, t_strong)
  )

  def kd_weak(temp):
    return kd_loss(kd_s_weak, kd_t_weak, temp)

  def kd_strong(temp):
    return kd_loss(kd_s_strong, kd_t_strong, temp)

  temperatures = (temperature,) + MLKD_EXTRA_TEMPERATURES
  w = kd_weight
  return {
    'kd_weak': sum(w * r_batch * kd_weak(temp) for temp in temperatures),
    'kd_strong': (
      w * kd_strong(temperature) + w * kd_strong(3.0) + w * kd_strong(5.0)
      + w * kd_weak(2.0) + w * kd_weak(6.0)
    ),
    'cc': sum(w * r_class * _class_correlation_loss(s_weak, t_weak, temp)
              for temp in temperatures),
    'bc': sum(w * r_batch * _batch_correlation_loss(s_weak, t_weak, temp)
              for temp in temperatures),
  }


@in_float32
def mlkd_loss(
  s_weak: jax.Array, s_strong: jax.Array, t_weak: jax.Array,
  t_strong: jax.Array, temperature: float, kd_weight: float,
  standardize: bool = False,
) -> jax.Array:
  """MLKD's distillation loss (all of forward_train's terms but CE): the
  sum of mlkd_terms, whose entries a method logs one by one."""
  return sum(mlkd_terms(s_weak, s_strong, t_weak, t_strong, temperature,
                        kd_weight, standardize).values())


def _check_same_shape(name: str, a: jax.Array, b: jax.Array) -> None:
  if a.shape != b.shape:
    raise ValueError(
      f'{name}: student and teacher maps must have the same shape (got '
      f'{a.shape} and {b.shape}); resize or pool them first.'
    )


@in_float32
def hcl_loss(feats_s: list[jax.Array],
             feats_t: list[jax.Array]) -> jax.Array:
  """ReviewKD's hierarchical context loss over paired NHWC maps, summed.

  Per pair: the MSE at full size plus, for each l in (4, 2, 1) smaller than
  the map's height, the MSE after adaptive average pooling to l x l with
  weight 1/2, 1/4, 1/8 (halving per level taken), all divided by the sum of
  the weights (1 + ...).
  """
  if len(feats_s) != len(feats_t):
    raise ValueError(
      f'hcl_loss: {len(feats_s)} student maps but {len(feats_t)} teacher '
      'maps; pair every level.'
    )
  total = jnp.zeros((), jnp.float32)
  for f_s, f_t in zip(feats_s, feats_t):
    _check_same_shape('hcl_loss', f_s, f_t)
    loss = jnp.mean((f_s - f_t) ** 2)
    weight, weights = 1.0, 1.0
    for size in (4, 2, 1):
      if size >= f_s.shape[1]:
        continue
      weight /= 2.0
      loss = loss + weight * jnp.mean(
        (adaptive_avg_pool(f_s, size) - adaptive_avg_pool(f_t, size)) ** 2
      )
      weights += weight
    total = total + loss / weights
  return total


@in_float32
def ofd_loss(source: jax.Array, target: jax.Array,
             margin: jax.Array) -> jax.Array:
  """OFD's partial L2 (mdistiller's feat_loss) for one NHWC pair.

  Elementwise, with the per-channel margin m (C,):
  (s - m)^2 [s > m and t <= m] + (s - t)^2 [s > t and m < t <= 0]
  + (s - t)^2 [t > 0], summed over H, W, C and averaged over the batch.
  The target must already have the source's size (mdistiller pools the
  teacher map to the student's: adaptive_avg_pool).
  """
  _check_same_shape('ofd_loss', source, target)
  margin = jnp.asarray(margin, jnp.float32)
  if margin.shape != (source.shape[-1],):
    raise ValueError(
      f'ofd_loss: the margin must have one value per channel, shape '
      f'({source.shape[-1]},); got {margin.shape}.'
    )
  s, t = source, target
  loss = (
    (s - margin) ** 2 * ((s > margin) & (t <= margin))
    + (s - t) ** 2 * ((s > t) & (t > margin) & (t <= 0))
    + (s - t) ** 2 * (t > 0)
  )
  return jnp.sum(jnp.mean(jnp.abs(loss), axis=0))


# KDSVD (Lee et al., ECCV 2018), as mdistiller computes it. -----------------


def _finite(x: jax.Array) -> jax.Array:
  """Non-finite entries set to 0 (mdistiller's ``removenan``)."""
  return jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x))


@jax.custom_vjp
def _singular_values_and_right_vectors(x: jax.Array):
  """``(s, V)`` of the thin SVD of x (..., m, n), m >= n: V is (n, n).

  Its gradient is the one ``jnp.linalg.svd`` and ``torch.svd`` use for the
  values and right vectors, with one change: a term divided by s_j^2 -
  s_i^2 counts 0 where that gap is 0. Such a term is multiplied by
  V^T dL/dV at (i, j), which is 0 when neither vector is used, so for
  repeated singular values outside the vectors used (all-zero columns of a
  map: several values exactly 0) this is the exact gradient, where the
  library rules give inf * 0 = NaN (docs/methods.md#kdsvd).
  """
  _, s, vt = _thin_svd(x)
  return s, jnp.swapaxes(vt, -1, -2)


def _thin_svd(x: jax.Array):
  """``jnp.linalg.svd(x, full_matrices=False)``; on CPU one matrix at a time.

  jaxlib 0.10's CPU LAPACK kernels split a batch over XLA's intra-op
  thread pool and block the calling pool thread until the pieces finish.
  When as many batched SVDs as the pool has threads start at once (KDSVD's
  stages, student and teacher, are independent), every thread waits and
  the step never ends (seen on 2 cores: gdb shows each pool thread in
  lapack_sgesdd_ffi -> ParallelBatchMap -> BlockingCounter::Wait; jaxlib
  0.11 compiled that path out). A batch of one is not split, so on CPU the
  matrices go through ``lax.map`` one by one; other backends take the
  batch at once (cuSOLVER on GPU).
  """
  def one_at_a_time(x):
    flat = x.reshape((-1,) + x.shape[-2:])
    out = jax.lax.map(
      lambda a: tuple(jnp.linalg.svd(a, full_matrices=False)), flat)
    return tuple(o.reshape(x.shape[:-2] + o.shape[1:]) for o in out)

  return jax.lax.platform_dependent(
    x, cpu=one_at_a_time,
    default=lambda x: tuple(jnp.linalg.svd(x, full_matrices=False)))


def _svd_fwd(x):
  u, s, vt = _thin_svd(x)
  v = jnp.swapaxes(vt, -1, -2)
  return (s, v), (u, s, v)


def _svd_bwd(res, cotangents):
  u, s, v = res
  g_s, g_v = cotangents
  s2 = s * s
  gap = s2[..., None, :] - s2[..., :, None]  # [i, j]: s_j^2 - s_i^2
  usable = jnp.abs(gap) > jnp.finfo(gap.dtype).tiny
  f = jnp.where(usable, 1.0 / jnp.where(usable, gap, 1.0), 0.0)
  h = f * (jnp.swapaxes(v, -1, -2) @ g_v)
  g_p = s[..., :, None] * (h + jnp.swapaxes(h, -1, -2))
  g_p = g_p + jnp.eye(s.shape[-1], dtype=s.dtype) * g_s[..., None, :]
  return (u @ g_p @ jnp.swapaxes(v, -1, -2),)


_singular_values_and_right_vectors.defvjp(_svd_fwd, _svd_bwd)


def svd_right_vectors(f: jax.Array, n: int):
  """The n leading singular values and right singular vectors of a map.

  mdistiller views its NCHW map (B, C, H, W) as the matrix (B, C*H, W):
  rows are (channel, image row) pairs, columns the W image columns, so the
  right singular vectors live on the image width (the authors' TensorFlow
  code views NHWC as (B, H*W, C): vectors on the channels; docs/
  methods.md#kdsvd). The right vectors and the singular values depend on
  the rows only through X^T X, so the NHWC map is taken as (B, H*C, W),
  rows in another order, the same result.

  Returns ``(s, v)``: s (B, n) L2-normalised over the n values, v (B, W, n)
  each vector L2-normalised (already unit, up to rounding; kept for the
  same gradient as torch's ``F.normalize``), non-finite entries zeroed
  before both as in mdistiller. Fewer than n when W < n.
  """
  b, h, w, c = f.shape
  if h * c < w:
    raise ValueError(
      f'kdsvd: a map of shape {f.shape} (NHWC) has fewer rows H*C than '
      'columns W; KDSVD takes square maps with at least one channel.'
    )
  x = jnp.transpose(f, (0, 1, 3, 2)).reshape(b, h * c, w)
  # The thin SVD, as torch.svd: V is (W, W) here.
  s, v = _singular_values_and_right_vectors(x)
  s, v = _finite(s), _finite(v)
  return (_l2_normalize(s[:, :n], axis=1),
          _l2_normalize(v[:, :, :n], axis=1))


def align_singular_vectors(v_s: jax.Array, v_t: jax.Array) -> jax.Array:
  """For each teacher vector (column of ``v_t``), the student vector of
  largest |cosine| with it, times the cosine's sign (mdistiller's
  ``align_rsv``). Singular vectors are defined up to sign, so the student's
  are flipped to the teacher's. The selection carries no gradient."""
  cosine = jnp.einsum('bwi,bwj->bij', v_s, v_t)
  best = jnp.max(jnp.abs(cosine), axis=1, keepdims=True)
  mask = jax.lax.stop_gradient(
    jnp.where(jnp.abs(cosine) == best, jnp.sign(cosine), 0.0))
  return jnp.einsum('bwi,bij->bwj', v_s, mask)


def canonical_signs(v: jax.Array) -> jax.Array:
  """Each vector (column of v, (B, W, n)) flipped to a non-negative entry
  sum. The sign an SVD routine returns is arbitrary, and the kernel between
  two stages changes when one stage's teacher vector flips (the student's
  follow the teacher's, so only the teacher's sign matters): fixing it
  makes the loss a function of the features alone, on every backend
  (docs/methods.md#kdsvd)."""
  return v * jnp.where(jnp.sum(v, axis=1, keepdims=True) < 0, -1.0, 1.0)


@in_float32
def kdsvd_loss(g_s: list[jax.Array], g_t: list[jax.Array],
               k: int = 1) -> jax.Array:
  """KDSVD over paired NHWC stage maps (mdistiller's ``kdsvd_loss``).

  Per stage: the teacher's k leading right singular vectors (signs made
  canonical: ``canonical_signs``), the student's k + 3 aligned to them (``align_singular_vectors``), both scaled by the
  teacher's normalised singular values. Between consecutive stages i-1, i
  and per vector j, the RBF kernel exp(-(a - b)^2 / 8) of every entry a of
  stage i's vector with every entry b of stage i-1's; the loss is the
  squared difference of the student's and the teacher's kernels (non-
  finite entries zeroed), summed and divided by the batch. In float32 (the
  SVD too) whatever the features' dtype. The pairs need the same width per
  stage (the vectors live on it).
  """
  if len(g_s) != len(g_t):
    raise ValueError(
      f'kdsvd_loss: {len(g_s)} student maps but {len(g_t)} teacher maps; '
      'pair every stage.'
    )
  total = jnp.zeros((), jnp.float32)
  prev_s = prev_t = None
  for i, (f_s, f_t) in enumerate(zip(g_s, g_t)):
    if f_s.shape[2] != f_t.shape[2]:
      raise ValueError(
        f'kdsvd_loss: pair {i} has widths {f_s.shape[2]} (student) and '
        f'{f_t.shape[2]} (teacher); KDSVD compares singular vectors on the '
        'map width, so pair stages of the same size.'
      )
    f_t = jax.lax.stop_gradient(f_t)
    s_t, v_t = svd_right_vectors(f_t, k)
    v_t = canonical_signs(v_t)
    _, v_s = svd_right_vectors(f_s, k + 3)
    v_s = align_singular_vectors(v_s, v_t)
    v_t = v_t * s_t[:, None, :]
    v_s = v_s * s_t[:, None, :]
    if i > 0:
      s_rbf = jnp.exp(-(v_s[:, :, None] - prev_s[:, None]) ** 2 / 8)
      t_rbf = jnp.exp(-(v_t[:, :, None] - prev_t[:, None]) ** 2 / 8)
      diff = _finite((s_rbf - jax.lax.stop_gradient(t_rbf)) ** 2)
      total = total + jnp.sum(diff) / g_s[0].shape[0]
    prev_s, prev_t = v_s, v_t
  return total
