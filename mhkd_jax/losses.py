"""Pure loss and agreement functions on logits.

All reductions follow RepDistiller so that numbers are comparable with the
PyTorch literature: cross-entropy is a batch mean, and the distillation term
is ``DistillKL``: KL(softmax(t/T) || softmax(s/T)) summed over classes,
averaged over the batch, times T^2 (the T^2 keeps gradient magnitudes
independent of T, as in Hinton et al.).
"""

import jax
import jax.numpy as jnp


def _label_log_probs(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """log softmax(logits)[label], float32 [B, 1]."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, labels[:, None], axis=-1)


def negative_log_likelihood(
  logits: jax.Array, labels: jax.Array
) -> jax.Array:
  """Per-example softmax cross-entropy against integer labels: [B]."""
  return -_label_log_probs(logits, labels)[:, 0]


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy against integer labels."""
  return -jnp.mean(_label_log_probs(logits, labels))


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
  log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t, -1)
  log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t, -1)
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


def adaptive_avg_pool(f: jax.Array, out: int) -> jax.Array:
  """F.adaptive_avg_pool2d(f, (out, out)) on NHWC."""
  _, h, w, _ = f.shape
  if (h, w) == (out, out):
    return f
  return jnp.einsum('oh,bhwc,pw->bopc', _pool_matrix(h, out), f,
                    _pool_matrix(w, out))


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


def hint_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """FitNet: mean squared error between the regressed student feature and
  the teacher's."""
  return jnp.mean((f_s - f_t) ** 2)


def attention_map(f: jax.Array, p: float = 2.0) -> jax.Array:
  """AT's map: channel mean of |f|^p, flattened, l2-normalised: (B, H*W)."""
  a = jnp.mean(f**p, axis=-1)
  return _l2_normalize(a.reshape(a.shape[0], -1))


def attention_loss(f_s: jax.Array, f_t: jax.Array, p: float = 2.0):
  """AT for one feature pair: mean squared difference of the maps."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  return jnp.mean((attention_map(f_s, p) - attention_map(f_t, p)) ** 2)


def similarity_loss(f_s: jax.Array, f_t: jax.Array) -> jax.Array:
  """SP: squared Frobenius distance of the row-normalised batch Gram
  matrices, over B^2."""
  b = f_s.shape[0]
  g_s = f_s.reshape(b, -1)
  g_t = f_t.reshape(b, -1)
  g_s = _l2_normalize(g_s @ g_s.T)
  g_t = _l2_normalize(g_t @ g_t.T)
  return jnp.sum((g_t - g_s) ** 2) / (b * b)


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


def factor_loss(f_s: jax.Array, f_t: jax.Array, p1: float = 2.0,
                p2: float = 1.0) -> jax.Array:
  """FT: distance between the normalised channel-mean maps of the two
  factors (L1 mean for p2 = 1, else the mean p2-th power)."""
  f_s, f_t = pool_to_smaller(f_s, f_t)
  diff = attention_map(f_s, p1) - attention_map(f_t, p1)
  if p2 == 1:
    return jnp.mean(jnp.abs(diff))
  return jnp.mean(diff**p2)


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


def fsp_loss(g_s: list[jax.Array], g_t: list[jax.Array]) -> jax.Array:
  """FSP: sum over consecutive pairs of the mean squared difference of
  the student's and the teacher's FSP matrices."""
  return sum(
    jnp.mean((s - t) ** 2)
    for s, t in zip(fsp_matrices(g_s), fsp_matrices(g_t))
  )


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


def vid_loss(pred_mean: jax.Array, target: jax.Array, log_scale: jax.Array,
             eps: float = 1e-5) -> jax.Array:
  """VID: Gaussian negative log-likelihood of the teacher feature under the
  regressed mean and a learned per-channel variance softplus(log_scale)."""
  var = jnp.log(1.0 + jnp.exp(log_scale)) + eps
  return jnp.mean(0.5 * ((pred_mean - target) ** 2 / var + jnp.log(var)))


def contrast_loss(x: jax.Array, n_data: int, eps: float = 1e-7):
  """CRD's NCE objective on the (B, K + 1) scores, positive first."""
  x = x.reshape(x.shape[0], -1)
  batch, k = x.shape[0], x.shape[1] - 1
  noise = k * (1.0 / float(n_data))
  log_d1 = jnp.log(x[:, 0] / (x[:, 0] + noise + eps))
  log_d0 = jnp.log(noise / (x[:, 1:] + noise + eps))
  return -(jnp.sum(log_d1) + jnp.sum(log_d0)) / batch


def dkd_loss(logits_s: jax.Array, logits_t: jax.Array, labels: jax.Array,
             alpha: float, beta: float, temperature: float) -> jax.Array:
  """DKD (mdistiller): alpha * TCKD (binary target-vs-rest KL) + beta *
  NCKD (KL among the non-target classes), each x T^2 / B."""
  t = temperature
  s = logits_s.astype(jnp.float32) / t
  te = logits_t.astype(jnp.float32) / t
  gt = jax.nn.one_hot(labels, s.shape[-1], dtype=jnp.float32)
  p_s, p_t = jax.nn.softmax(s, -1), jax.nn.softmax(te, -1)

  def binary(p):
    return jnp.stack([jnp.sum(p * gt, 1), jnp.sum(p * (1.0 - gt), 1)], 1)

  batch = labels.shape[0]
  tckd = _kl_sum(jnp.log(binary(p_s)), binary(p_t)) * t * t / batch
  nckd = _kl_sum(jax.nn.log_softmax(s - 1000.0 * gt, -1),
                 jax.nn.softmax(te - 1000.0 * gt, -1)) * t * t / batch
  return alpha * tckd + beta * nckd
