"""The prior approaches' losses against their PyTorch definitions.

Every loss of ``mhkd_jax.losses`` for RepDistiller's methods and DKD, on
random inputs (NHWC for JAX, NCHW for torch), against the independent
PyTorch port in ``tests/torch_reference/distill_losses.py`` (itself
checked against the original code when it was written): equal to float32
precision, same-size and pooled feature pairs alike. A few cases are also
computed by hand.
"""

import pathlib
import sys

import pytest

torch = pytest.importorskip(
  'torch', reason='the PyTorch loss parity tests need torch'
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
  sys.path.insert(0, str(_ROOT))

from mhkd_jax import losses  # noqa: E402
from tests.torch_reference import distill_losses as ref  # noqa: E402

RTOL, ATOL = 2e-5, 1e-6
# case -> max |JAX - torch| (printed with -s).
REPORT: dict[str, float] = {}


@pytest.fixture(scope='module', autouse=True)
def _report():
  yield
  for case, diff in sorted(REPORT.items()):
    print(f'\n[loss parity] {case}: max abs diff {diff:.2e}')


def _maps(seed, shape, positive=False):
  """(JAX NHWC array, torch NCHW tensor) of the same random values."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  if positive:
    x = np.abs(x)
  return jnp.asarray(x), torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _vecs(seed, shape):
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return jnp.asarray(x), torch.from_numpy(x.copy())


def _check(case, got, want, rtol=RTOL, atol=ATOL):
  got = np.asarray(got, np.float64).reshape(-1)
  want = want.detach().double().numpy().reshape(-1)
  REPORT[case] = max(REPORT.get(case, 0.0), float(np.max(np.abs(got - want))))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=case)


# Student/teacher map shapes (NHWC): equal, student larger, teacher larger,
# and a non-divisible pair (adaptive pooling bins of unequal size).
PAIRS = {
  'same': ((4, 8, 8, 6), (4, 8, 8, 10)),
  'student larger': ((4, 16, 16, 6), (4, 8, 8, 10)),
  'teacher larger': ((4, 4, 4, 6), (4, 8, 8, 10)),
  'non-divisible': ((4, 7, 7, 6), (4, 3, 3, 10)),
}


@pytest.mark.parametrize('pair', list(PAIRS))
def test_attention_nst_and_factor_losses(pair):
  s_shape, t_shape = PAIRS[pair]
  (js, ts), (jt, tt) = _maps(1, s_shape), _maps(2, t_shape)
  _check(f'at/{pair}', losses.attention_loss(js, jt),
         ref.attention_loss(ts, tt))
  _check(f'nst/{pair}', losses.nst_loss(js, jt), ref.nst_loss(ts, tt))
  _check(f'ft/{pair}', losses.factor_loss(js, jt), ref.factor_loss(ts, tt))
  _check(f'ft p2=2/{pair}', losses.factor_loss(js, jt, p2=2.0),
         ref.factor_loss(ts, tt, p2=2.0))


def test_hint_similarity_and_vid_losses():
  (js, ts), (jt, tt) = _maps(3, (5, 4, 4, 6)), _maps(4, (5, 4, 4, 6))
  _check('hint', losses.hint_loss(js, jt), ref.hint_loss(ts, tt))
  (ju, tu) = _maps(5, (5, 8, 8, 12))
  _check('sp', losses.similarity_loss(js, ju), ref.similarity_loss(ts, tu))
  log_scale = np.random.default_rng(6).standard_normal(6).astype(np.float32)
  _check('vid', losses.vid_loss(js, jt, jnp.asarray(log_scale)),
         ref.vid_loss(ts, tt, torch.from_numpy(log_scale)))


def test_vector_losses():
  (js, ts), (jt, tt) = _vecs(7, (9, 16)), _vecs(8, (9, 24))
  (je, te) = _vecs(9, (9, 16))
  _check('cc', losses.correlation_loss(js, je),
         ref.correlation_loss(ts, te))
  _check('rkd', losses.rkd_loss(js, jt), ref.rkd_loss(ts, tt))
  _check('pkt', losses.pkt_loss(js, jt), ref.pkt_loss(ts, tt))
  # A repeated example (a zero distance and zero difference vectors) and a
  # zero feature (PKT's 0/0 guard). The repeated row holds multiples of
  # 1/4, so |a|^2 + |a|^2 - 2 a.a is exactly 0 in float32 whatever order
  # the matmul sums in: with arbitrary values both RKDs take the square
  # root of a rounding residual (~1e-3), which differs between CPUs' BLAS
  # kernels and is not a property of either implementation.
  repeated = jnp.round(js[2] * 4.0) / 4.0
  jd = js.at[2].set(repeated).at[3].set(repeated).at[5].set(0.0)
  td = torch.from_numpy(np.asarray(jd).copy())
  _check('rkd/duplicate', losses.rkd_loss(jd, jt), ref.rkd_loss(td, tt))
  _check('pkt/zero row', losses.pkt_loss(jd, jt), ref.pkt_loss(td, tt))


def test_fsp_and_ab_losses():
  shapes = [(3, 16, 16, 4), (3, 16, 16, 4), (3, 8, 8, 8), (3, 4, 4, 8)]
  s = [_maps(10 + i, shape) for i, shape in enumerate(shapes)]
  t = [_maps(20 + i, shape) for i, shape in enumerate(shapes)]
  j_s, t_s = [a for a, _ in s], [b for _, b in s]
  j_t, t_t = [a for a, _ in t], [b for _, b in t]
  _check('fsp', losses.fsp_loss(j_s, j_t), ref.fsp_loss(t_s, t_t))
  for margin in (1.0, 0.5):
    _check(f'ab/margin {margin}', losses.ab_loss(j_s[1:], j_t[1:], margin),
           ref.ab_loss(t_s[1:], t_t[1:], margin))


def test_contrast_loss():
  rng = np.random.default_rng(11)
  x = np.exp(rng.standard_normal((6, 33)).astype(np.float32)) / 50.0
  _check('crd contrast', losses.contrast_loss(jnp.asarray(x), 5000),
         ref.contrast_loss(torch.from_numpy(x), 5000))


@pytest.mark.parametrize('alpha, beta, temperature',
                         [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 6.0, 2.0)])
def test_dkd_loss(alpha, beta, temperature):
  (js, ts), (jt, tt) = _vecs(12, (10, 7)), _vecs(13, (10, 7))
  labels = np.random.default_rng(14).integers(0, 7, 10)
  _check(f'dkd a{alpha} b{beta} T{temperature}',
         losses.dkd_loss(3 * js, 3 * jt, jnp.asarray(labels), alpha, beta,
                         temperature),
         ref.dkd_loss(3 * ts, 3 * tt, torch.from_numpy(labels), alpha, beta,
                      temperature))


@pytest.mark.slow
def test_gradients_match_for_the_student_side():
  """The student's gradients (the teacher side is a constant)."""
  (js, ts), (jt, tt) = _maps(15, (4, 8, 8, 6)), _maps(16, (4, 4, 4, 10))
  ts.requires_grad_(True)
  cases = {
    'at': (losses.attention_loss, ref.attention_loss),
    'nst': (losses.nst_loss, ref.nst_loss),
    'ft': (losses.factor_loss, ref.factor_loss),
  }
  for name, (j_fn, t_fn) in cases.items():
    grad = jax.grad(j_fn)(js, jt)
    ts.grad = None
    t_fn(ts, tt).sum().backward()
    _check(f'grad {name}', jnp.transpose(grad, (0, 3, 1, 2)), ts.grad,
           atol=1e-7)
  (jv, tv), (jw, tw) = _vecs(17, (8, 12)), _vecs(18, (8, 20))
  tv.requires_grad_(True)
  for name, (j_fn, t_fn) in {'rkd': (losses.rkd_loss, ref.rkd_loss),
                             'pkt': (losses.pkt_loss, ref.pkt_loss)}.items():
    grad = jax.grad(j_fn)(jv, jw)
    tv.grad = None
    t_fn(tv, tw).sum().backward()
    _check(f'grad {name}', grad, tv.grad, atol=1e-7)


# ---------------------------------------------------------------- by hand


def test_by_hand():
  # Hint: mean of squared differences.
  assert float(losses.hint_loss(jnp.array([1.0, 2.0]),
                                jnp.array([0.0, 4.0]))) == pytest.approx(2.5)
  # CC: |delta| = [[1, 2], [3, 1], [0, 2]] -> (1*3 + 2*1 + 3*0 + 1*2) / 2.
  e_s = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.0, 2.0]])
  assert float(losses.correlation_loss(e_s, jnp.zeros((3, 2)))) == (
    pytest.approx(3.5)
  )
  # CRD's NCE with K = 1 negative among n = 10: noise m*Pn = 0.1.
  x = jnp.array([[0.4, 0.1]])
  expected = -(np.log(0.4 / (0.5 + 1e-7)) + np.log(0.1 / (0.2 + 1e-7)))
  assert float(losses.contrast_loss(x, 10)) == pytest.approx(expected,
                                                             rel=1e-6)
  # AB with one stage (weight 1), margin 1: s=0.5,t=-1 -> (1.5)^2;
  # s=0.5,t=2 -> (0.5)^2; s=-2,t=-1 -> 0; over batch 1, x 3/1000.
  s = jnp.array([0.5, 0.5, -2.0]).reshape(1, 1, 3, 1)
  t = jnp.array([-1.0, 2.0, -1.0]).reshape(1, 1, 3, 1)
  assert float(losses.ab_loss([s], [t])) == pytest.approx(
    (2.25 + 0.25) * 3 / 1000
  )
  # DKD with T = 1 and equal logits: both KLs are 0.
  z = jnp.array([[1.0, 2.0, 3.0]])
  assert float(losses.dkd_loss(z, z, jnp.array([1]), 1.0, 8.0, 1.0)) == (
    pytest.approx(0.0, abs=1e-6)
  )
  # Adaptive pooling of 3 -> 2: bins [0, 2) and [1, 3).
  f = jnp.arange(9.0).reshape(1, 3, 3, 1)
  np.testing.assert_allclose(
    losses.adaptive_avg_pool(f, 2)[0, :, :, 0], [[2.0, 3.0], [5.0, 6.0]]
  )
