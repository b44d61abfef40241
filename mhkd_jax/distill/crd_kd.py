"""CRD together with KD, RepDistiller's "CRD+KD" row: ``CE + 1 * KD_T +
0.8 * CRD(pooled)``."""

from mhkd_jax.distill import base, crd


@base.register
class ContrastiveRepresentationDistillationKD(
  crd.ContrastiveRepresentationDistillation
):
  """CRD with the logits' KD term on."""

  name = 'crd_kd'
  ALPHA = 1.0
