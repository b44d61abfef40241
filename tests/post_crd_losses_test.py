"""The losses of the methods after CRD against their authors' code.

logit_standardize (LS), dist_loss (DIST), mlkd_loss (MLKD), hcl_loss
(ReviewKD) and ofd_loss (OFD) of ``mhkd_jax.losses``, on random inputs of
several shapes and seeds (NHWC for JAX, NCHW for torch) and on the edge
cases of each original, against the independent PyTorch port in
``tests/torch_reference/post_crd_losses.py``; one tiny case of each by
hand. The JAX side runs jitted, as a method's step does (and so that each
shape compiles once). ``pytest -s`` prints the largest absolute and
relative difference per function; the gradient checks, in the slow tier,
add theirs.
"""

import math
import pathlib
import sys

import pytest

torch = pytest.importorskip(
  'torch', reason='the PyTorch loss parity tests need torch'
)

import jax
import jax.numpy as jnp
import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from mhkd_jax import losses
from tests.torch_reference import post_crd_losses as ref

RTOL, ATOL = 2e-5, 1e-6
SEEDS = (0, 1, 2)
# A large temperature leaves KD_T = T^2 KL with KL ~ 1 / T^2 made of
# terms p_t (log p_t - log p_s) that nearly cancel: float32 rounds each log
# to ~1e-7 of log p, a ~1e-4 share of KL at T = 50. Torch's and our float32
# values are each that far from the float64 value
# (test_mlkd_loss_large_temperature_against_float64), so that case is
# compared at 1e-3 (and reported apart).
LARGE_T_RTOL = 1e-3

# name -> [max |JAX - torch|, max |JAX - torch| / |torch|] (printed with
# -s). The relative figure is elementwise over the entries of at least
# 1e-3 of the largest |torch| entry of their check (near-zero entries of a
# vector say nothing relative).
REPORT: dict[str, list[float]] = {}


@pytest.fixture(scope='module', autouse=True)
def _report():
  # One torch thread: these tensors are tiny, and on a shared 2-core
  # machine torch's thread pool costs more than it gives.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)
  for name, (abs_diff, rel_diff) in sorted(REPORT.items()):
    print(f'\n[post-CRD loss parity] {name}: max abs diff {abs_diff:.2e}, '
          f'max rel diff {rel_diff:.2e}')


def _check(name, got, want, rtol=RTOL, atol=ATOL):
  got = np.asarray(got, np.float64).reshape(-1)
  want = want.detach().double().numpy().reshape(-1)
  diff = np.abs(got - want)
  big = np.abs(want) >= max(1e-3 * np.max(np.abs(want)), 1e-30)
  rel = float(np.max(diff[big] / np.abs(want[big]))) if big.any() else 0.0
  old = REPORT.setdefault(name, [0.0, 0.0])
  old[0], old[1] = max(old[0], float(np.max(diff))), max(old[1], rel)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


def _logits(seed, shape, scale=3.0):
  """(JAX array, torch tensor) of the same random logits."""
  x = (scale * np.random.default_rng(seed).standard_normal(shape)).astype(
    np.float32)
  return jnp.asarray(x), torch.from_numpy(x.copy())


def _maps(seed, shape):
  """(JAX NHWC array, torch NCHW tensor) of the same random values."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return jnp.asarray(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _nhwc(t):
  """A torch NCHW tensor as NHWC."""
  return t.permute(0, 2, 3, 1)


_standardize = jax.jit(losses.logit_standardize)


@jax.jit
def _dist(logits_s, logits_t, beta, gamma, temperature):
  """(dist_loss, dist_terms) in one program."""
  return (losses.dist_loss(logits_s, logits_t, beta, gamma, temperature),
          losses.dist_terms(logits_s, logits_t, temperature))


def _mlkd_fn(s_weak, s_strong, t_weak, t_strong, temperature, kd_weight,
             standardize):
  """(mlkd_loss, mlkd_terms) in one program."""
  args = (s_weak, s_strong, t_weak, t_strong, temperature, kd_weight,
          standardize)
  return losses.mlkd_loss(*args), losses.mlkd_terms(*args)


# T0 and w traced: one program per shape and LS switch (w and the fixed
# temperatures 3, 5, 2, 6 enter as in a method's step).
_mlkd = jax.jit(_mlkd_fn, static_argnums=(6,))
_fraction = jax.jit(losses._fraction_at_most_median)


@jax.jit
def _mask_fractions(t_weak):
  """(r_B, r_C) as mlkd_terms computes them."""
  p = jax.nn.softmax(t_weak, axis=1)
  return (losses._fraction_at_most_median(jnp.max(p, axis=1)),
          losses._fraction_at_most_median(jnp.sum(p, axis=0)))
_hcl = jax.jit(losses.hcl_loss)
_ofd = jax.jit(losses.ofd_loss)


# logit_standardize ----------------------------------------------------------

# (batch, classes): CIFAR-100's batch, one example, two classes, odd sizes.
LOGIT_SHAPES = [(64, 100), (1, 100), (5, 2), (7, 13)]


@pytest.mark.parametrize('shape', LOGIT_SHAPES)
def test_logit_standardize(shape):
  for seed in SEEDS:
    for scale in (1.0, 3.0, 30.0):
      jz, tz = _logits(seed, shape, scale)
      _check('logit_standardize', _standardize(jz), ref.normalize(tz))


def test_logit_standardize_constant_rows_are_zero():
  # std 0: the eps case. Constants whose float32 mean is exact give exact
  # zeros in both (an inexact mean leaves rounding noise, divided by 1e-7).
  jz, _ = _logits(3, (5, 10))
  constant = np.array([2.0, -1.5, 0.0], np.float32)[:, None] * np.ones(10)
  z = np.concatenate([np.asarray(jz), constant.astype(np.float32)])
  got = _standardize(jnp.asarray(z))
  _check('logit_standardize', got, ref.normalize(torch.from_numpy(z)))
  assert np.all(np.asarray(got)[5:] == 0.0)


def test_logit_standardize_one_class_is_an_error():
  with pytest.raises(ValueError, match='at least 2 classes'):
    losses.logit_standardize(jnp.ones((4, 1)))


# dist_loss ------------------------------------------------------------------

DIST_CASES = [
  # (shape, beta, gamma, temperature)
  ((64, 100), 1.0, 1.0, 4.0),    # DIST's CIFAR setting (dist_t4)
  ((64, 100), 1.0, 1.0, 1.0),    # its ImageNet setting
  ((8, 10), 2.0, 0.5, 2.0),
  ((3, 2), 1.0, 1.0, 1.0),
  ((1, 10), 1.0, 1.0, 4.0),      # one example: intra is T^2 (zero columns)
  ((16, 100), 1.0, 1.0, 20.0),   # a large temperature
]


@pytest.mark.parametrize('shape, beta, gamma, temperature', DIST_CASES)
def test_dist_loss(shape, beta, gamma, temperature):
  name = 'dist_loss' if temperature < 20 else 'dist_loss (T = 20)'
  for seed in SEEDS:
    (js, ts), (jt, tt) = _logits(seed, shape), _logits(seed + 10, shape)
    loss, terms = _dist(js, jt, beta, gamma, temperature)
    _check(name, loss, ref.dist_loss(ts, tt, beta, gamma, temperature))
    inter, intra = ref.dist_relations(ts, tt, temperature)
    _check(name, terms['inter'], inter)
    _check(name, terms['intra'], intra)


@pytest.mark.parametrize('shape', [(64, 100), (8, 10), (1, 10)])
def test_dist_loss_identical_student_and_teacher(shape):
  js, ts = _logits(5, shape)
  loss, terms = _dist(js, js, 1.0, 1.0, 4.0)
  # ~1e-5: 1 - Pearson near 1, float32 rounding of a near-cancellation.
  _check('dist_loss (identical inputs)', loss, ref.dist_loss(ts, ts, tau=4.0))
  # Zero up to the 1e-8 in the denominator; with one example the columns
  # centre to zero vectors, whose correlation the eps makes 0: intra = T^2.
  assert abs(float(terms['inter'])) < 1e-4
  if shape[0] == 1:
    assert float(terms['intra']) == pytest.approx(16.0, rel=1e-6)
  else:
    assert abs(float(terms['intra'])) < 1e-4


# mlkd_loss ------------------------------------------------------------------


def _mlkd_inputs(seed, shape):
  """[s_weak, s_strong, t_weak, t_strong] as (JAX list, torch list)."""
  pairs = [_logits(k, shape) for k in range(seed * 4, seed * 4 + 4)]
  return [p[0] for p in pairs], [p[1] for p in pairs]


def _check_mlkd(jax_in, torch_in, temperature, kd_weight, standardize,
                rtol=RTOL, name='mlkd_loss'):
  loss, terms = _mlkd(*jax_in, temperature, kd_weight, standardize)
  want = ref.mlkd_terms(*torch_in, temperature, kd_weight, standardize)
  assert set(terms) == set(want)
  for term in want:
    _check(name, terms[term], want[term], rtol=rtol)
  _check(name, loss,
         ref.mlkd_loss(*torch_in, temperature, kd_weight, standardize),
         rtol=rtol)


MLKD_CASES = [
  # (shape, temperature, kd_weight, standardize)
  ((64, 100), 4.0, 0.9, False),   # the MLKD authors' defaults
  ((64, 100), 2.0, 9.0, False),   # the LS repository's, LS off
  ((64, 100), 2.0, 9.0, True),    # LS on
  ((7, 100), 4.0, 0.9, True),     # an odd batch: r_B = 4/7
  ((8, 10), 3.0, 1.0, False),     # T0 equal to a fixed temperature
  ((1, 10), 4.0, 0.9, False),     # one example: r_B = 1
]


@pytest.mark.parametrize('shape, temperature, kd_weight, standardize',
                         MLKD_CASES)
def test_mlkd_loss(shape, temperature, kd_weight, standardize):
  for seed in SEEDS:
    jax_in, torch_in = _mlkd_inputs(seed, shape)
    _check_mlkd(jax_in, torch_in, temperature, kd_weight, standardize)


def test_mlkd_loss_large_temperature():
  for seed in SEEDS:
    jax_in, torch_in = _mlkd_inputs(seed, (16, 10))
    _check_mlkd(jax_in, torch_in, 50.0, 1.0, True, rtol=LARGE_T_RTOL,
                name='mlkd_loss (T0 = 50)')


def test_mlkd_loss_large_temperature_against_float64():
  """At T0 = 50 both float32 values are within LARGE_T_RTOL of the port
  run in float64 (the exact value to ~1e-15)."""
  for seed in SEEDS:
    jax_in, torch_in = _mlkd_inputs(seed, (16, 10))
    exact = float(ref.mlkd_loss(*[x.double() for x in torch_in], 50.0,
                                1.0, True))
    ours = float(_mlkd(*jax_in, 50.0, 1.0, True)[0])
    theirs = float(ref.mlkd_loss(*torch_in, 50.0, 1.0, True))
    assert ours == pytest.approx(exact, rel=LARGE_T_RTOL)
    assert theirs == pytest.approx(exact, rel=LARGE_T_RTOL)


def _teacher(kind, seed, shape):
  """Teacher logits: random; very confident (200 on one class per row:
  the other probabilities underflow to exactly 0); constant."""
  if kind == 'random':
    return _logits(seed, shape)
  x = np.zeros(shape, np.float32)
  if kind == 'confident':
    labels = np.random.default_rng(seed).integers(0, shape[1], shape[0])
    x[np.arange(shape[0]), labels] = 200.0
  return jnp.asarray(x), torch.from_numpy(x.copy())


@pytest.mark.parametrize('shape', [(64, 100), (7, 100), (1, 10), (2, 5)])
@pytest.mark.parametrize('kind', ['random', 'confident', 'constant'])
def test_mlkd_mask_fractions(shape, kind):
  """r_B and r_C: 1/2 without ties (more for an odd size); with the
  teacher's confidences all tied at 1.0 (very confident) or all equal
  (constant logits), the batch mask is all on, and the class mask too for
  constant logits. No input turns a mask all off: at least half the
  values are at most the median."""
  j_teacher, t_teacher = _teacher(kind, 3, shape)
  mask, class_mask = ref.mlkd_masks(t_teacher)
  r_batch, r_class = (float(r) for r in _mask_fractions(j_teacher))
  # The same count of masked values (the means may round differently).
  assert r_batch * shape[0] == pytest.approx(int(mask.sum()))
  assert r_class * shape[1] == pytest.approx(int(class_mask.sum()))
  if kind != 'random':
    assert r_batch == 1.0
  if kind == 'constant':
    assert r_class == 1.0
  assert r_batch >= 0.5 and r_class >= 0.5


@pytest.mark.parametrize('kind', ['confident', 'constant'])
def test_mlkd_loss_with_masks_all_on(kind):
  jax_in, torch_in = _mlkd_inputs(3, (8, 10))
  jax_in[2], torch_in[2] = _teacher(kind, 3, (8, 10))
  jax_in[3], torch_in[3] = _teacher(kind, 4, (8, 10))
  _check_mlkd(jax_in, torch_in, 4.0, 0.9, False)
  _check_mlkd(jax_in, torch_in, 2.0, 9.0, True)


def test_mlkd_mask_threshold_is_numpys_float32_percentile():
  """The two middle confidences one float32 step apart: numpy's float32
  interpolation rounds the threshold up to the upper one, so both count."""
  below = np.nextafter(np.float32(0.75), np.float32(0.0))
  values = np.array([0.5, below, 0.75, 0.75], np.float32)
  threshold = np.percentile(values, 50)
  want = float(np.mean(values <= threshold))
  assert float(_fraction(jnp.asarray(values))) == want == 1.0


@pytest.mark.parametrize('shape', [(8, 10), (1, 10)])
def test_mlkd_identical_student_and_teacher_is_zero(shape):
  jax_in, torch_in = _mlkd_inputs(4, shape)
  same_j = [jax_in[2], jax_in[3], jax_in[2], jax_in[3]]
  same_t = [torch_in[2], torch_in[3], torch_in[2], torch_in[3]]
  # Ours is exactly 0: both sides of each KL are the same log_softmax. The
  # original is 0 too (its float64 value), but in float32 its KL takes
  # log(softmax) of the teacher and log_softmax of the student, whose
  # rounding leaves up to ~2e-5 at w = 9.
  for temperature, kd_weight, standardize in ((4.0, 0.9, False),
                                              (2.0, 9.0, True)):
    exact = ref.mlkd_terms(*[x.double() for x in same_t], temperature,
                           kd_weight, standardize)
    _, ours = _mlkd(*same_j, temperature, kd_weight, standardize)
    for name in exact:
      assert abs(float(exact[name])) < 1e-12
      assert float(ours[name]) == 0.0
    rounded = ref.mlkd_loss(*same_t, temperature, kd_weight, standardize)
    assert abs(float(rounded)) < 1e-4


# hcl_loss -------------------------------------------------------------------

HCL_LEVELS = {
  # ReviewKD's resnet8x4 levels, narrowed (32, 16, 8 px and the pooled 1x1).
  'reviewkd levels': [(2, 32, 32, 4), (2, 16, 16, 8), (2, 8, 8, 8),
                      (2, 1, 1, 8)],
  # Maps where the pooling levels coincide with the map (l >= h skipped).
  'coinciding levels': [(3, 4, 4, 5), (3, 2, 2, 5), (3, 1, 1, 5)],
  'one example': [(1, 8, 8, 3), (1, 4, 4, 3)],
  # Not powers of two, and not square: unequal adaptive-pooling bins.
  'uneven sizes': [(2, 7, 7, 3), (2, 3, 5, 2), (2, 5, 3, 2)],
}


def _hcl_inputs(seed, levels):
  pairs = [(_maps(seed * 10 + i, shape), _maps(seed * 10 + i + 5, shape))
           for i, shape in enumerate(HCL_LEVELS[levels])]
  return ([s[0] for s, _ in pairs], [t[0] for _, t in pairs],
          [s[1] for s, _ in pairs], [t[1] for _, t in pairs])


@pytest.mark.parametrize('levels', list(HCL_LEVELS))
def test_hcl_loss(levels):
  for seed in SEEDS:
    js, jt, ts, tt = _hcl_inputs(seed, levels)
    _check('hcl_loss', _hcl(js, jt), ref.hcl_loss(ts, tt))


def test_hcl_loss_identical_maps_are_zero():
  js, _, ts, _ = _hcl_inputs(0, 'reviewkd levels')
  assert float(_hcl(js, js)) == 0.0
  assert float(ref.hcl_loss(ts, ts)) == 0.0


def test_hcl_loss_refuses_unpaired_maps():
  a, b = _maps(0, (2, 4, 4, 3))[0], _maps(1, (2, 2, 2, 3))[0]
  with pytest.raises(ValueError, match='same shape'):
    losses.hcl_loss([a], [b])
  with pytest.raises(ValueError, match='pair every level'):
    losses.hcl_loss([a, a], [a])


# ofd_loss -------------------------------------------------------------------

OFD_SHAPES = [(4, 8, 8, 6), (1, 4, 4, 3), (2, 3, 5, 2)]
MARGINS = {
  # OFD's margins are E[x | x < 0] or -3 s: negative.
  'negative': lambda rng, c: -np.abs(rng.standard_normal(c)) - 0.05,
  'positive': lambda rng, c: np.abs(rng.standard_normal(c)) + 0.05,
  'mixed signs': lambda rng, c: rng.standard_normal(c),
  'zero': lambda rng, c: np.zeros(c),
}


def _ofd_inputs(seed, shape, margin_kind):
  (js, ts), (jt, tt) = _maps(seed, shape), _maps(seed + 100, shape)
  margin = MARGINS[margin_kind](np.random.default_rng(seed + 200),
                                shape[-1]).astype(np.float32)
  return (js, jt, jnp.asarray(margin)), (
    ts, tt, torch.from_numpy(margin.copy())[None, :, None, None])


@pytest.mark.parametrize('shape', OFD_SHAPES)
def test_ofd_loss(shape):
  for seed in SEEDS:
    for margin_kind in MARGINS:
      jax_in, torch_in = _ofd_inputs(seed, shape, margin_kind)
      _check('ofd_loss', _ofd(*jax_in), ref.ofd_feat_loss(*torch_in))


@pytest.mark.parametrize('margin_kind', list(MARGINS))
def test_ofd_loss_identical_source_and_target_is_zero(margin_kind):
  (js, _, margin), (ts, _, t_margin) = _ofd_inputs(3, OFD_SHAPES[0],
                                                   margin_kind)
  assert float(_ofd(js, js, margin)) == 0.0
  assert float(ref.ofd_feat_loss(ts, ts, t_margin)) == 0.0


def test_ofd_mdistiller_form_is_the_authors_only_for_negative_margins():
  """mdistiller's three-mask form equals clovaai's max(t, m) form (times
  the batch) when every margin is negative, as OFD's are. With a positive
  margin they differ (clovaai's raised target max(t, m) is then positive,
  so every element counts); we follow mdistiller."""
  batch = OFD_SHAPES[0][0]
  _, (ts, tt, margin) = _ofd_inputs(4, OFD_SHAPES[0], 'negative')
  np.testing.assert_allclose(
    float(ref.ofd_feat_loss(ts, tt, margin)) * batch,
    float(ref.ofd_distillation_loss_clovaai(ts, tt, margin)), rtol=1e-5)
  _, (ts, tt, margin) = _ofd_inputs(4, OFD_SHAPES[0], 'positive')
  mdistiller = float(ref.ofd_feat_loss(ts, tt, margin)) * batch
  clovaai = float(ref.ofd_distillation_loss_clovaai(ts, tt, margin))
  assert abs(mdistiller - clovaai) > 0.01 * clovaai


def test_ofd_loss_refuses_bad_shapes():
  js, jt = _maps(0, (2, 4, 4, 3))[0], _maps(1, (2, 2, 2, 3))[0]
  with pytest.raises(ValueError, match='same shape'):
    losses.ofd_loss(js, jt, jnp.zeros(3))
  with pytest.raises(ValueError, match='one value per channel'):
    losses.ofd_loss(js, js, jnp.zeros(4))


# bf16 inputs ----------------------------------------------------------------


def test_bf16_inputs_are_computed_in_float32():
  """Each loss casts its inputs to float32 on entry: bf16 inputs give the
  float32 result of their float32 values."""
  def both(fn, *args):
    low = [x.astype(jnp.bfloat16) for x in args]
    got = jax.tree.leaves(fn(*low))
    want = jax.tree.leaves(fn(*[x.astype(jnp.float32) for x in low]))
    for g, w in zip(got, want):
      assert g.dtype == jnp.float32
      np.testing.assert_array_equal(g, w)

  (s, _), (t, _) = _logits(0, (8, 10)), _logits(1, (8, 10))
  both(_standardize, s)
  both(lambda a, b: _dist(a, b, 2.0, 0.5, 2.0), s, t)
  both(lambda a, b: _mlkd(a, b, b, a, 4.0, 0.9, True), s, t)
  (fs, _), (ft, _) = _maps(2, (4, 8, 8, 6)), _maps(3, (4, 8, 8, 6))
  both(lambda a, b: _hcl([a], [b]), fs, ft)
  both(lambda a, b: _ofd(a, b, -jnp.ones(6)), fs, ft)


# Gradients of the student side (the teacher side is a constant) ------------


def _check_grad(name, got, want):
  """Gradients compared elementwise at RTOL, plus an absolute slack of
  1e-6 of the largest entry: float32 rounds small entries beside large
  ones (T^2 = 400 at T = 20) to about that share of the large ones."""
  scale = float(want.detach().abs().max())
  _check(name, got, want, atol=max(1e-6 * scale, 1e-8))


def _torch_grads(fn, *student):
  student = [x.clone().requires_grad_(True) for x in student]
  fn(*student).backward()
  return [x.grad for x in student]


@pytest.mark.slow
@pytest.mark.parametrize('shape, temperature', [((64, 100), 4.0),
                                                ((1, 10), 1.0),
                                                ((8, 10), 20.0)])
def test_dist_loss_gradients(shape, temperature):
  grad = jax.jit(jax.grad(
    lambda s, t: losses.dist_loss(s, t, 1.0, 2.0, temperature)))
  for seed in SEEDS:
    (js, ts), (jt, tt) = _logits(seed, shape), _logits(seed + 10, shape)
    (want,) = _torch_grads(
      lambda s, tt=tt: ref.dist_loss(s, tt, 1.0, 2.0, temperature), ts)
    name = 'grad dist_loss' + (' (T = 20)' if temperature >= 20 else '')
    _check_grad(name, grad(js, jt), want)


@pytest.mark.slow
@pytest.mark.parametrize('shape, temperature, kd_weight, standardize', [
  ((64, 100), 4.0, 0.9, False), ((64, 100), 2.0, 9.0, True),
  ((1, 10), 4.0, 0.9, True), ((7, 10), 50.0, 1.0, False)])
def test_mlkd_loss_gradients(shape, temperature, kd_weight, standardize):
  grad = jax.jit(jax.grad(
    lambda sw, ss, tw, ts: losses.mlkd_loss(sw, ss, tw, ts, temperature,
                                            kd_weight, standardize),
    argnums=(0, 1)))
  for seed in SEEDS:
    jax_in, torch_in = _mlkd_inputs(seed, shape)
    teacher = torch_in[2:]
    want = _torch_grads(
      lambda sw, ss, teacher=teacher: ref.mlkd_loss(
        sw, ss, *teacher, temperature, kd_weight, standardize),
      torch_in[0], torch_in[1])
    name = 'grad mlkd_loss' + (' (T0 = 50)' if temperature >= 50 else '')
    for g, w in zip(grad(*jax_in), want):
      _check_grad(name, g, w)


@pytest.mark.slow
@pytest.mark.parametrize('levels', list(HCL_LEVELS))
def test_hcl_loss_gradients(levels):
  grad = jax.jit(jax.grad(losses.hcl_loss))
  for seed in SEEDS:
    js, jt, ts, tt = _hcl_inputs(seed, levels)
    want = _torch_grads(lambda *fs, tt=tt: ref.hcl_loss(list(fs), tt), *ts)
    for g, w in zip(grad(js, jt), want):
      _check_grad('grad hcl_loss', g, _nhwc(w))


@pytest.mark.slow
@pytest.mark.parametrize('margin_kind', list(MARGINS))
def test_ofd_loss_gradients(margin_kind):
  grad = jax.jit(jax.grad(losses.ofd_loss))
  for seed in SEEDS:
    (js, jt, margin), (ts, tt, t_margin) = _ofd_inputs(seed, OFD_SHAPES[0],
                                                       margin_kind)
    (want,) = _torch_grads(
      lambda s, tt=tt, m=t_margin: ref.ofd_feat_loss(s, tt, m), ts)
    _check_grad('grad ofd_loss', grad(js, jt, margin), _nhwc(want))


@pytest.mark.slow
def test_logit_standardize_gradients_with_constant_rows():
  """Through the mean and the std, and on constant rows (torch's std
  backward contributes zero there; only the centring / 1e-7 remains)."""
  jz, _ = _logits(7, (4, 10))
  z = np.concatenate([np.asarray(jz), np.full((1, 10), 2.0, np.float32)])
  weights = np.random.default_rng(8).standard_normal(z.shape).astype(
    np.float32)
  got = jax.grad(lambda x: jnp.sum(losses.logit_standardize(x) * weights))(
    jnp.asarray(z))
  (want,) = _torch_grads(
    lambda x: (ref.normalize(x) * torch.from_numpy(weights)).sum(),
    torch.from_numpy(z))
  assert np.all(np.isfinite(np.asarray(got)))
  # The random rows, then the constant row (entries ~1e7) on its own scale.
  _check_grad('grad logit_standardize', got[:4], want[:4])
  _check_grad('grad logit_standardize (constant row)', got[4:], want[4:])


# By hand --------------------------------------------------------------------


def test_logit_standardize_by_hand():
  # (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1) / (1 + 1e-7).
  got = _standardize(jnp.array([[1.0, 2.0, 3.0]]))
  np.testing.assert_allclose(got, np.array([[-1.0, 0.0, 1.0]]) / (1 + 1e-7),
                             rtol=1e-6)


def test_dist_loss_by_hand():
  # One example, two classes. T = 1: y_s = (1/4, 3/4), y_t = (3/4, 1/4);
  # centred, they are opposite: Pearson -(1/8) / (1/8 + 1e-8), inter ~ 2.
  # Each class column has one value, centred to 0: Pearson 0, intra 1.
  s = jnp.array([[0.0, math.log(3.0)]])
  t = jnp.array([[math.log(3.0), 0.0]])
  inter = 1.0 + (1 / 8) / (1 / 8 + 1e-8)
  assert float(_dist(s, t, 1.0, 1.0, 1.0)[0]) == pytest.approx(
    inter + 1.0, rel=1e-6)
  # T = 2 (the rows stay opposite), beta 1, gamma 0.5: 4 * (2 + 0.5).
  assert float(_dist(s, t, 1.0, 0.5, 2.0)[0]) == pytest.approx(
    4 * (2.0 + 0.5), rel=1e-6)


def _np_softmax(z):
  e = np.exp(z - z.max(1, keepdims=True))
  return e / e.sum(1, keepdims=True)


def test_mlkd_loss_by_hand():
  """Two examples, two classes. The teacher's weak confidences are
  (e^2 / (1 + e^2), 1/2): the median is their midpoint, so one of the two
  is at most it (r_B = 1/2); its class sums (1.38, 0.62) likewise give
  r_C = 1/2. Then the code's sums: the weak KD at five temperatures
  halved, the strong KD at T0, 3, 5 plus the weak KD at 2 and 6 in full,
  and the weak CC and BC at five temperatures halved."""
  sw = np.array([[0.0, 1.0], [1.0, -1.0]])
  ss = np.array([[0.5, 0.0], [0.0, 2.0]])
  tw = np.array([[2.0, 0.0], [0.0, 0.0]])
  tst = np.array([[1.0, 0.0], [0.0, 3.0]])
  t0, w = 4.0, 0.9

  def kd(s, t, temp):
    ps, pt = _np_softmax(s / temp), _np_softmax(t / temp)
    return temp**2 * np.mean(np.sum(pt * np.log(pt / ps), 1))

  def cc(s, t, temp):
    ps, pt = _np_softmax(s / temp), _np_softmax(t / temp)
    return np.sum((pt.T @ pt - ps.T @ ps) ** 2) / 2

  def bc(s, t, temp):
    ps, pt = _np_softmax(s / temp), _np_softmax(t / temp)
    return np.sum((pt @ pt.T - ps @ ps.T) ** 2) / 2

  temps = (t0, 3.0, 5.0, 2.0, 6.0)
  want = w * (
    0.5 * sum(kd(sw, tw, x) for x in temps)
    + kd(ss, tst, t0) + kd(ss, tst, 3.0) + kd(ss, tst, 5.0)
    + kd(sw, tw, 2.0) + kd(sw, tw, 6.0)
    + 0.5 * sum(cc(sw, tw, x) for x in temps)
    + 0.5 * sum(bc(sw, tw, x) for x in temps)
  )
  got, _ = _mlkd(*(jnp.asarray(x, jnp.float32) for x in (sw, ss, tw, tst)),
                 t0, w, False)
  assert float(got) == pytest.approx(want, rel=1e-5)


def test_hcl_loss_by_hand():
  # A 2x2 map (1, 2; 3, 4) against zeros: MSE 30/4; l = 4 and 2 are not
  # below h = 2; the 1x1 level: mean 2.5, squared 6.25, weight 1/2; over
  # 1 + 1/2. A 1x1 pair (3 vs 1): MSE 4, no level. Summed.
  fs = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
  one_s, one_t = jnp.full((1, 1, 1, 1), 3.0), jnp.full((1, 1, 1, 1), 1.0)
  want = (7.5 + 0.5 * 6.25) / 1.5 + 4.0
  got = _hcl([fs, one_s], [jnp.zeros_like(fs), one_t])
  assert float(got) == pytest.approx(want, rel=1e-6)
  # An 8x8 map takes all three levels: weights (1, 1/2, 1/4, 1/8) / 1.875.
  # A constant difference c has the same MSE c^2 at every level.
  c = 0.5
  got = _hcl([jnp.full((2, 8, 8, 3), c)], [jnp.zeros((2, 8, 8, 3))])
  assert float(got) == pytest.approx(c * c, rel=1e-6)


def test_ofd_loss_by_hand():
  # One channel, margin -1, two examples of a 1x2 map, (source, target):
  #   (0.5, -2): t <= m < s          -> (0.5 - (-1))^2 = 2.25
  #   (-3, -2):  s <= m              -> 0
  #   (0, -0.5): m < t <= 0, s > t   -> 0.25
  #   (2, 1):    t > 0               -> 1
  # Sum 3.5, over the batch of 2: 1.75.
  source = jnp.array([0.5, -3.0, 0.0, 2.0]).reshape(2, 1, 2, 1)
  target = jnp.array([-2.0, -2.0, -0.5, 1.0]).reshape(2, 1, 2, 1)
  got = _ofd(source, target, jnp.array([-1.0]))
  assert float(got) == pytest.approx(1.75, rel=1e-6)
