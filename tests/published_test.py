"""The published numbers: how many each source holds, spot values read
again from the READMEs, the epoch each carries, and which one a results
cell shows."""

import pytest

from mhkd_jax import models
from mhkd_jax.configs import cifar100
from mhkd_jax.tools import published


def test_records_per_source():
  # RepDistiller: 13 methods x 13 pairs, less FSP's 7 (N/A for wrn_40_2 ->
  # wrn_40_1, no FSP row for the 6 cross-architecture pairs), plus the
  # vanilla accuracy of its 15 models. mdistiller: CIFAR-100 KD (11 pairs)
  # and DKD (11), KD+DOT (3); Tiny-ImageNet KD and KD+DOT (2 + 2);
  # ImageNet KD, KD+DOT and DKD (3 x 2). LS: 8 rows x 14 pairs.
  assert published.count_by_source() == {
    'repdistiller': 13 * 13 - 7 + 15, 'mdistiller': 11 + 11 + 3 + 4 + 6,
    'ls': 8 * 14, 'dist': 6 + 4, 'ctkd': 6 + 6 + 6, 'reviewkd': 2,
    'ofd': 12, 'distillers': 13, 'hsakd': 2, 'torchdistill': 1,
  }
  assert set(published.count_by_source()) == set(published.SOURCES)


@pytest.mark.parametrize('data, pair, method, source, top1', [
  ('cifar100', 'resnet32x4-resnet8x4', 'crd', 'repdistiller', 75.51),
  ('cifar100', 'vgg13-MobileNetV2', 'nst', 'repdistiller', 58.16),
  ('cifar100', 'wrn_40_2-ShuffleV1', 'ab', 'repdistiller', 73.34),
  ('cifar100', 'ResNet50', 'ce', 'repdistiller', 79.34),
  ('cifar100', 'MobileNetV2', 'ce', 'repdistiller', 64.60),
  ('cifar100', 'resnet32x4-ShuffleV2', 'dkd', 'mdistiller', 77.07),
  ('cifar100', 'vgg13-vgg8', 'kd+dot', 'mdistiller', 73.77),
  ('imagenet2012', 'imagenet_resnet34-imagenet_resnet18', 'dkd',
   'mdistiller', 71.70),
  ('tiny_imagenet', 'ResNet18-ShuffleNetV2 (Tiny-ImageNet)', 'kd+dot',
   'mdistiller', 65.75),
  ('cifar100', 'resnet32x4-resnet8x4', 'mlkd+ls', 'ls', 78.28),
  ('cifar100', 'ResNet50-MobileNetV2', 'kd+ls', 'ls', 69.02),
  ('cifar100', 'wrn_40_2-resnet8x4', 'dkd+ls', 'ls', 76.75),
  ('cifar100', 'resnet110-resnet20', 'dkd', 'ls', 71.06),
  ('cifar100', 'resnet32x4-ShuffleV1', 'dist', 'dist', 76.34),
  ('cifar100', 'wrn_40_2-wrn_16_2', 'ctkd', 'ctkd', 75.45),
  ('imagenet2012', 'imagenet_resnet34-imagenet_resnet18', 'reviewkd',
   'reviewkd', 71.61),
  ('cifar100', 'wrn_28_4-wrn_16_2', 'ofd', 'ofd', 75.92),  # 100 - 24.08
])
def test_spot_values(data, pair, method, source, top1):
  found = published.records(data=data, pair=pair, method=method,
                            source=source)
  assert [r.top1 for r in found] == [top1]


def test_each_record_carries_its_sources_epoch_unless_it_repeats_one():
  for r in published.RECORDS:
    assert r.epoch in ('last', 'best', None)
    assert r.epoch == published.SOURCES[r.repeats or r.source].epoch
  # RepDistiller reports the last epoch, mdistiller's trainer the best.
  assert published.SOURCES['repdistiller'].epoch == 'last'
  assert published.SOURCES['mdistiller'].epoch == 'best'
  assert published.SOURCES['ls'].epoch == 'best'
  # mdistiller's KD row is RepDistiller's: last epoch, marked repeated.
  kd, = published.records(source='mdistiller', pair='vgg13-vgg8',
                          method='kd')
  assert (kd.top1, kd.repeats, kd.epoch) == (72.98, 'repdistiller', 'last')
  # The LS README's DKD for wrn_40_2 -> wrn_16_2 (76.24) is not
  # mdistiller's 76.23: its own, best epoch.
  dkd, = published.records(source='ls', pair='wrn_40_2-wrn_16_2',
                           method='dkd')
  assert (dkd.top1, dkd.repeats, dkd.epoch) == (76.24, None, 'best')


def test_a_cell_shows_the_original_measurement():
  kd = published.lookup('cifar100', 'resnet32x4-resnet8x4', 'kd')
  assert (kd.source, kd.top1, kd.epoch) == ('repdistiller', 73.33, 'last')
  # Where RepDistiller has none, the LS README's own KD run.
  kd = published.lookup('cifar100', 'resnet32x4-wrn_40_2', 'kd')
  assert (kd.source, kd.top1, kd.epoch) == ('ls', 77.70, 'best')
  dkd = published.lookup('cifar100', 'wrn_40_2-wrn_16_2', 'dkd')
  assert (dkd.source, dkd.top1) == ('mdistiller', 76.23)
  # CTKD without LS: CTKD's README before the LS README's repeat of it.
  ctkd = published.lookup('cifar100', 'vgg13-vgg8', 'ctkd')
  assert (ctkd.source, ctkd.top1) == ('ctkd', 73.52)
  assert published.lookup('cifar100', 'resnet32x4-resnet8x4', 'mhkd') is None


def test_pairs_use_this_projects_model_names():
  names = set(models.MODEL_NAMES)
  for r in published.records(data='cifar100'):
    if r.source == 'ofd':
      continue  # WRN-28-4 and PyramidNet teachers: not in the zoo
    assert set(r.pair.split('-')) <= names, r


def test_the_cifar100_config_reads_the_same_numbers():
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'ce')] == 72.50
  assert cifar100.PUBLISHED[('vgg13', 'teacher')] == 74.64
  # ctkd runs with LS on by default, so its cell is CTKD+LS.
  assert cifar100.PUBLISHED[('resnet32x4-resnet8x4', 'ctkd')] == 76.67
  assert cifar100.PUBLISHED_LS[('resnet32x4-resnet8x4', 'kd')] == 76.62
  for (pair, method), top1 in cifar100.PUBLISHED.items():
    if top1 is not None and method not in ('teacher', 'ce', 'ctkd'):
      assert published.lookup('cifar100', pair, method).top1 == top1
