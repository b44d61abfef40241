"""Published top-1 accuracies (%), each with its source and the epoch that
source reports.

Every number of every pair that RepDistiller's, mdistiller's and the LS
code's READMEs report is a ``Record``, and so are the CIFAR-100 (and our
ImageNet pair's) numbers of the READMEs of DIST, CTKD, ReviewKD and OFD,
plus the few numbers this project took from elsewhere before (CRD+KD,
ImageNet's teacher, student and CRD). The tables below are in each README's
own order, the models renamed to this project's names
(``mhkd_jax.models``); pairs are ``teacher-student`` and the vanilla
accuracy of a model is ``(model, 'ce')``, which is how the results table
names a run with no teacher. Method labels are the results table's rows:
the method, ``+ls`` when logit standardization is on and ``+dot`` when it
trains with DOT (``kd+ls``, ``kd+dot``); ``dkd+ctkd`` is CTKD on DKD, which
this project does not run.

``Record.epoch`` says which epoch the number is: 'last', 'best' or None
where the source does not say. A number a README repeats from another
source (mdistiller's and the LS README's KD row are RepDistiller's) is
marked with ``repeats`` and carries that source's epoch, since it is that
source's measurement.

Read from the repositories' README.md at the commits named in ``SOURCES``.
``lookup`` picks the number a cell of the results table shows
(``mhkd_jax.tools.results``).
"""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass(frozen=True)
class Source:
  """A README the numbers come from, and which epoch it reports."""

  where: str
  epoch: str | None  # 'last', 'best' or None: not stated
  why: str


SOURCES = {
  'repdistiller': Source(
    'HobbitLong/RepDistiller README.md @ b84f547, "Benchmark Results on '
    'CIFAR-100"', 'last',
    'its train_student.py: the results in the paper and README are from '
    'the last epoch (the best one is printed only)'),
  'mdistiller': Source(
    'megvii-research/mdistiller README.md @ a08d46f (DOT and DKD tables: '
    'CIFAR-100, Tiny-ImageNet, ImageNet)', 'best',
    'its trainer (mdistiller/engine/trainer.py) tracks and logs the best '
    'test accuracy; its maintainer reports best-epoch means (mdistiller '
    'issues #30, #42)'),
  'ls': Source(
    'sunshangquan/logit-standardization-KD README.md @ f6e5aa5, "Results '
    'and Logs" (CNNs on CIFAR-100)', 'best',
    "built on mdistiller's trainer, which logs the best test accuracy"),
  'dist': Source(
    'hunto/DIST_KD README.md @ 2418f18 (CIFAR-100; ImageNet baseline '
    'settings, ResNet34 -> ResNet18)', None,
    'means and stds of its runs; the README does not say which epoch'),
  'ctkd': Source(
    'zhengli97/CTKD README.md @ 7d52522, "Main Results"', None,
    'its train_student.py records the best accuracy beside each epoch\'s; '
    'the README does not say which it reports'),
  'reviewkd': Source(
    'dvlab-research/ReviewKD ImageNet/README.md @ cede6ea (its CIFAR-100 '
    'README gives no numbers)', None, 'not stated'),
  'ofd': Source(
    'clovaai/overhaul-distillation README.md @ 76344a8, CIFAR-100 error '
    'rates (top-1 = 100 - error)', None, 'not stated'),
  'distillers': Source(
    "giakoumoglou/distillers README, its CRD+KD row (as this project "
    "recorded it; the README's newest version, a2ee80b, has no table)",
    None, 'not stated'),
  'hsakd': Source(
    'HSAKD README (ImageNet teacher and student), as this project '
    'recorded it', None, 'not stated'),
  'torchdistill': Source(
    'torchdistill README, "Original work" column (the CRD paper\'s '
    'ImageNet CRD), as this project recorded it', None, 'not stated'),
}

# Which source a cell shows when several report it: a source's own runs
# before numbers it repeats, then this order.
SOURCE_ORDER = ('repdistiller', 'mdistiller', 'hsakd', 'torchdistill',
                'distillers', 'ls', 'ctkd', 'dist', 'reviewkd', 'ofd')


@dataclasses.dataclass(frozen=True)
class Record:
  data: str  # a data set name of mhkd_jax.data ('cifar100', ...)
  pair: str  # 'teacher-student', or a model alone for 'ce'
  method: str  # the results table's row label ('kd', 'kd+ls', ...)
  top1: float
  source: str  # a key of SOURCES
  epoch: str | None  # 'last', 'best' or None (not stated)
  repeats: str | None = None  # the source whose number this repeats


# Per source: {(data, method): {pair: top-1}}, in the README's order.


# RepDistiller's README, both tables (FSP: same-type pairs only, N/A for
# wrn_40_2 -> wrn_40_1). The first body row gives teacher and student.
_REPDISTILLER = {
  ('cifar100', 'ce'): {
    'wrn_40_2': 75.61, 'wrn_16_2': 73.26, 'wrn_40_1': 71.98, 'resnet56': 72.34,
    'resnet20': 69.06, 'resnet110': 74.31, 'resnet32': 71.14,
    'resnet32x4': 79.42, 'resnet8x4': 72.50, 'vgg13': 74.64, 'vgg8': 70.36,
    'MobileNetV2': 64.60, 'ResNet50': 79.34, 'ShuffleV1': 70.50,
    'ShuffleV2': 71.82,
  },
  ('cifar100', 'kd'): {
    'wrn_40_2-wrn_16_2': 74.92, 'wrn_40_2-wrn_40_1': 73.54,
    'resnet56-resnet20': 70.66, 'resnet110-resnet20': 70.67,
    'resnet110-resnet32': 73.08, 'resnet32x4-resnet8x4': 73.33,
    'vgg13-vgg8': 72.98, 'vgg13-MobileNetV2': 67.37,
    'ResNet50-MobileNetV2': 67.35, 'ResNet50-vgg8': 73.81,
    'resnet32x4-ShuffleV1': 74.07, 'resnet32x4-ShuffleV2': 74.45,
    'wrn_40_2-ShuffleV1': 74.83,
  },
  ('cifar100', 'fitnet'): {
    'wrn_40_2-wrn_16_2': 73.58, 'wrn_40_2-wrn_40_1': 72.24,
    'resnet56-resnet20': 69.21, 'resnet110-resnet20': 68.99,
    'resnet110-resnet32': 71.06, 'resnet32x4-resnet8x4': 73.50,
    'vgg13-vgg8': 71.02, 'vgg13-MobileNetV2': 64.14,
    'ResNet50-MobileNetV2': 63.16, 'ResNet50-vgg8': 70.69,
    'resnet32x4-ShuffleV1': 73.59, 'resnet32x4-ShuffleV2': 73.54,
    'wrn_40_2-ShuffleV1': 73.73,
  },
  ('cifar100', 'at'): {
    'wrn_40_2-wrn_16_2': 74.08, 'wrn_40_2-wrn_40_1': 72.77,
    'resnet56-resnet20': 70.55, 'resnet110-resnet20': 70.22,
    'resnet110-resnet32': 72.31, 'resnet32x4-resnet8x4': 73.44,
    'vgg13-vgg8': 71.43, 'vgg13-MobileNetV2': 59.40,
    'ResNet50-MobileNetV2': 58.58, 'ResNet50-vgg8': 71.84,
    'resnet32x4-ShuffleV1': 71.73, 'resnet32x4-ShuffleV2': 72.73,
    'wrn_40_2-ShuffleV1': 73.32,
  },
  ('cifar100', 'sp'): {
    'wrn_40_2-wrn_16_2': 73.83, 'wrn_40_2-wrn_40_1': 72.43,
    'resnet56-resnet20': 69.67, 'resnet110-resnet20': 70.04,
    'resnet110-resnet32': 72.69, 'resnet32x4-resnet8x4': 72.94,
    'vgg13-vgg8': 72.68, 'vgg13-MobileNetV2': 66.30,
    'ResNet50-MobileNetV2': 68.08, 'ResNet50-vgg8': 73.34,
    'resnet32x4-ShuffleV1': 73.48, 'resnet32x4-ShuffleV2': 74.56,
    'wrn_40_2-ShuffleV1': 74.52,
  },
  ('cifar100', 'cc'): {
    'wrn_40_2-wrn_16_2': 73.56, 'wrn_40_2-wrn_40_1': 72.21,
    'resnet56-resnet20': 69.63, 'resnet110-resnet20': 69.48,
    'resnet110-resnet32': 71.48, 'resnet32x4-resnet8x4': 72.97,
    'vgg13-vgg8': 70.71, 'vgg13-MobileNetV2': 64.86,
    'ResNet50-MobileNetV2': 65.43, 'ResNet50-vgg8': 70.25,
    'resnet32x4-ShuffleV1': 71.14, 'resnet32x4-ShuffleV2': 71.29,
    'wrn_40_2-ShuffleV1': 71.38,
  },
  ('cifar100', 'vid'): {
    'wrn_40_2-wrn_16_2': 74.11, 'wrn_40_2-wrn_40_1': 73.30,
    'resnet56-resnet20': 70.38, 'resnet110-resnet20': 70.16,
    'resnet110-resnet32': 72.61, 'resnet32x4-resnet8x4': 73.09,
    'vgg13-vgg8': 71.23, 'vgg13-MobileNetV2': 65.56,
    'ResNet50-MobileNetV2': 67.57, 'ResNet50-vgg8': 70.30,
    'resnet32x4-ShuffleV1': 73.38, 'resnet32x4-ShuffleV2': 73.40,
    'wrn_40_2-ShuffleV1': 73.61,
  },
  ('cifar100', 'rkd'): {
    'wrn_40_2-wrn_16_2': 73.35, 'wrn_40_2-wrn_40_1': 72.22,
    'resnet56-resnet20': 69.61, 'resnet110-resnet20': 69.25,
    'resnet110-resnet32': 71.82, 'resnet32x4-resnet8x4': 71.90,
    'vgg13-vgg8': 71.48, 'vgg13-MobileNetV2': 64.52,
    'ResNet50-MobileNetV2': 64.43, 'ResNet50-vgg8': 71.50,
    'resnet32x4-ShuffleV1': 72.28, 'resnet32x4-ShuffleV2': 73.21,
    'wrn_40_2-ShuffleV1': 72.21,
  },
  ('cifar100', 'pkt'): {
    'wrn_40_2-wrn_16_2': 74.54, 'wrn_40_2-wrn_40_1': 73.45,
    'resnet56-resnet20': 70.34, 'resnet110-resnet20': 70.25,
    'resnet110-resnet32': 72.61, 'resnet32x4-resnet8x4': 73.64,
    'vgg13-vgg8': 72.88, 'vgg13-MobileNetV2': 67.13,
    'ResNet50-MobileNetV2': 66.52, 'ResNet50-vgg8': 73.01,
    'resnet32x4-ShuffleV1': 74.10, 'resnet32x4-ShuffleV2': 74.69,
    'wrn_40_2-ShuffleV1': 73.89,
  },
  ('cifar100', 'ab'): {
    'wrn_40_2-wrn_16_2': 72.50, 'wrn_40_2-wrn_40_1': 72.38,
    'resnet56-resnet20': 69.47, 'resnet110-resnet20': 69.53,
    'resnet110-resnet32': 70.98, 'resnet32x4-resnet8x4': 73.17,
    'vgg13-vgg8': 70.94, 'vgg13-MobileNetV2': 66.06,
    'ResNet50-MobileNetV2': 67.20, 'ResNet50-vgg8': 70.65,
    'resnet32x4-ShuffleV1': 73.55, 'resnet32x4-ShuffleV2': 74.31,
    'wrn_40_2-ShuffleV1': 73.34,
  },
  ('cifar100', 'ft'): {
    'wrn_40_2-wrn_16_2': 73.25, 'wrn_40_2-wrn_40_1': 71.59,
    'resnet56-resnet20': 69.84, 'resnet110-resnet20': 70.22,
    'resnet110-resnet32': 72.37, 'resnet32x4-resnet8x4': 72.86,
    'vgg13-vgg8': 70.58, 'vgg13-MobileNetV2': 61.78,
    'ResNet50-MobileNetV2': 60.99, 'ResNet50-vgg8': 70.29,
    'resnet32x4-ShuffleV1': 71.75, 'resnet32x4-ShuffleV2': 72.50,
    'wrn_40_2-ShuffleV1': 72.03,
  },
  ('cifar100', 'fsp'): {
    'wrn_40_2-wrn_16_2': 72.91, 'resnet56-resnet20': 69.95,
    'resnet110-resnet20': 70.11, 'resnet110-resnet32': 71.89,
    'resnet32x4-resnet8x4': 72.62, 'vgg13-vgg8': 70.23,
  },
  ('cifar100', 'nst'): {
    'wrn_40_2-wrn_16_2': 73.68, 'wrn_40_2-wrn_40_1': 72.24,
    'resnet56-resnet20': 69.60, 'resnet110-resnet20': 69.53,
    'resnet110-resnet32': 71.96, 'resnet32x4-resnet8x4': 73.30,
    'vgg13-vgg8': 71.53, 'vgg13-MobileNetV2': 58.16,
    'ResNet50-MobileNetV2': 64.96, 'ResNet50-vgg8': 71.28,
    'resnet32x4-ShuffleV1': 74.12, 'resnet32x4-ShuffleV2': 74.68,
    'wrn_40_2-ShuffleV1': 74.89,
  },
  ('cifar100', 'crd'): {
    'wrn_40_2-wrn_16_2': 75.48, 'wrn_40_2-wrn_40_1': 74.14,
    'resnet56-resnet20': 71.16, 'resnet110-resnet20': 71.46,
    'resnet110-resnet32': 73.48, 'resnet32x4-resnet8x4': 75.51,
    'vgg13-vgg8': 73.94, 'vgg13-MobileNetV2': 69.73,
    'ResNet50-MobileNetV2': 69.11, 'ResNet50-vgg8': 74.30,
    'resnet32x4-ShuffleV1': 75.11, 'resnet32x4-ShuffleV2': 75.65,
    'wrn_40_2-ShuffleV1': 76.05,
  },
}

# mdistiller's README. Its column "ResNet32x4 -> MobileNet-V2" (KD 74.45,
# DKD 77.07) is recorded as resnet32x4 -> ShuffleV2: 74.45 is the CRD
# table's KD for that pair, and mdistiller ships res32x4_shuv2.yaml and no
# resnet32x4 -> MobileNetV2 config. Its Tiny-ImageNet and second ImageNet
# pairs use models this project does not have.
_MDISTILLER = {
  ('cifar100', 'kd'): {
    'resnet32x4-resnet8x4': 73.33, 'vgg13-vgg8': 72.98,
    'resnet32x4-ShuffleV2': 74.45, 'resnet56-resnet20': 70.66,
    'resnet110-resnet32': 73.08, 'wrn_40_2-wrn_16_2': 74.92,
    'wrn_40_2-wrn_40_1': 73.54, 'resnet32x4-ShuffleV1': 74.07,
    'wrn_40_2-ShuffleV1': 74.83, 'vgg13-MobileNetV2': 67.37,
    'ResNet50-MobileNetV2': 67.35,
  },
  ('cifar100', 'kd+dot'): {
    'resnet32x4-resnet8x4': 75.12, 'vgg13-vgg8': 73.77,
    'resnet32x4-ShuffleV2': 75.55,
  },
  ('tiny_imagenet', 'kd'): {
    'ResNet18-MobileNetV2 (Tiny-ImageNet)': 58.35,
    'ResNet18-ShuffleNetV2 (Tiny-ImageNet)': 62.26,
  },
  ('tiny_imagenet', 'kd+dot'): {
    'ResNet18-MobileNetV2 (Tiny-ImageNet)': 64.01,
    'ResNet18-ShuffleNetV2 (Tiny-ImageNet)': 65.75,
  },
  ('imagenet2012', 'kd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.03,
    'ResNet50-MobileNetV1 (ImageNet)': 70.50,
  },
  ('imagenet2012', 'kd+dot'): {
    'imagenet_resnet34-imagenet_resnet18': 71.72,
    'ResNet50-MobileNetV1 (ImageNet)': 73.09,
  },
  ('cifar100', 'dkd'): {
    'resnet56-resnet20': 71.97, 'resnet110-resnet32': 74.11,
    'resnet32x4-resnet8x4': 76.32, 'wrn_40_2-wrn_16_2': 76.23,
    'wrn_40_2-wrn_40_1': 74.81, 'vgg13-vgg8': 74.68,
    'resnet32x4-ShuffleV1': 76.45, 'wrn_40_2-ShuffleV1': 76.70,
    'vgg13-MobileNetV2': 69.71, 'ResNet50-MobileNetV2': 70.35,
    'resnet32x4-ShuffleV2': 77.07,
  },
  ('imagenet2012', 'dkd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.70,
    'ResNet50-MobileNetV1 (ImageNet)': 72.05,
  },
}

# The LS README's two CNN tables (its ViT table names no teacher and no
# model of this zoo). KD+Ours is kd+ls, and so on; MLKD's rows are the
# only MLKD numbers its authors' code publishes (Jin-Ying/
# Multi-Level-Logit-Distillation's README has none).
_LS = {
  ('cifar100', 'kd'): {
    'resnet32x4-resnet8x4': 73.33, 'vgg13-vgg8': 72.98,
    'wrn_40_2-wrn_40_1': 73.54, 'wrn_40_2-wrn_16_2': 74.92,
    'resnet56-resnet20': 70.66, 'resnet110-resnet32': 73.08,
    'resnet110-resnet20': 70.67, 'resnet32x4-ShuffleV2': 74.45,
    'resnet32x4-wrn_16_2': 74.90, 'resnet32x4-wrn_40_2': 77.70,
    'wrn_40_2-resnet8x4': 73.97, 'wrn_40_2-MobileNetV2': 68.36,
    'vgg13-MobileNetV2': 67.37, 'ResNet50-MobileNetV2': 67.35,
  },
  ('cifar100', 'kd+ls'): {
    'resnet32x4-resnet8x4': 76.62, 'vgg13-vgg8': 74.36,
    'wrn_40_2-wrn_40_1': 74.37, 'wrn_40_2-wrn_16_2': 76.11,
    'resnet56-resnet20': 71.43, 'resnet110-resnet32': 74.17,
    'resnet110-resnet20': 71.48, 'resnet32x4-ShuffleV2': 75.56,
    'resnet32x4-wrn_16_2': 75.26, 'resnet32x4-wrn_40_2': 77.92,
    'wrn_40_2-resnet8x4': 77.11, 'wrn_40_2-MobileNetV2': 69.23,
    'vgg13-MobileNetV2': 68.61, 'ResNet50-MobileNetV2': 69.02,
  },
  ('cifar100', 'ctkd'): {
    'resnet32x4-resnet8x4': 73.39, 'vgg13-vgg8': 73.52,
    'wrn_40_2-wrn_40_1': 73.93, 'wrn_40_2-wrn_16_2': 75.45,
    'resnet56-resnet20': 71.19, 'resnet110-resnet32': 73.52,
    'resnet110-resnet20': 70.99, 'resnet32x4-ShuffleV2': 75.37,
    'resnet32x4-wrn_16_2': 74.57, 'resnet32x4-wrn_40_2': 77.66,
    'wrn_40_2-resnet8x4': 74.61, 'wrn_40_2-MobileNetV2': 68.34,
    'vgg13-MobileNetV2': 68.50, 'ResNet50-MobileNetV2': 68.67,
  },
  ('cifar100', 'ctkd+ls'): {
    'resnet32x4-resnet8x4': 76.67, 'vgg13-vgg8': 74.47,
    'wrn_40_2-wrn_40_1': 74.58, 'wrn_40_2-wrn_16_2': 76.08,
    'resnet56-resnet20': 71.34, 'resnet110-resnet32': 74.01,
    'resnet110-resnet20': 71.39, 'resnet32x4-ShuffleV2': 76.18,
    'resnet32x4-wrn_16_2': 75.16, 'resnet32x4-wrn_40_2': 77.99,
    'wrn_40_2-resnet8x4': 77.03, 'wrn_40_2-MobileNetV2': 69.53,
    'vgg13-MobileNetV2': 68.98, 'ResNet50-MobileNetV2': 69.36,
  },
  ('cifar100', 'dkd'): {
    'resnet32x4-resnet8x4': 76.32, 'vgg13-vgg8': 74.68,
    'wrn_40_2-wrn_40_1': 74.81, 'wrn_40_2-wrn_16_2': 76.24,
    'resnet56-resnet20': 71.97, 'resnet110-resnet32': 74.11,
    'resnet110-resnet20': 71.06, 'resnet32x4-ShuffleV2': 77.07,
    'resnet32x4-wrn_16_2': 75.70, 'resnet32x4-wrn_40_2': 78.46,
    'wrn_40_2-resnet8x4': 75.56, 'wrn_40_2-MobileNetV2': 69.28,
    'vgg13-MobileNetV2': 69.71, 'ResNet50-MobileNetV2': 70.35,
  },
  ('cifar100', 'dkd+ls'): {
    'resnet32x4-resnet8x4': 77.01, 'vgg13-vgg8': 74.81,
    'wrn_40_2-wrn_40_1': 74.89, 'wrn_40_2-wrn_16_2': 76.39,
    'resnet56-resnet20': 72.32, 'resnet110-resnet32': 74.29,
    'resnet110-resnet20': 71.85, 'resnet32x4-ShuffleV2': 77.37,
    'resnet32x4-wrn_16_2': 76.19, 'resnet32x4-wrn_40_2': 78.95,
    'wrn_40_2-resnet8x4': 76.75, 'wrn_40_2-MobileNetV2': 70.01,
    'vgg13-MobileNetV2': 69.98, 'ResNet50-MobileNetV2': 70.45,
  },
  ('cifar100', 'mlkd'): {
    'resnet32x4-resnet8x4': 77.08, 'vgg13-vgg8': 75.18,
    'wrn_40_2-wrn_40_1': 75.35, 'wrn_40_2-wrn_16_2': 76.63,
    'resnet56-resnet20': 72.19, 'resnet110-resnet32': 74.11,
    'resnet110-resnet20': 71.89, 'resnet32x4-ShuffleV2': 78.44,
    'resnet32x4-wrn_16_2': 76.52, 'resnet32x4-wrn_40_2': 79.26,
    'wrn_40_2-resnet8x4': 77.33, 'wrn_40_2-MobileNetV2': 70.78,
    'vgg13-MobileNetV2': 70.57, 'ResNet50-MobileNetV2': 71.04,
  },
  ('cifar100', 'mlkd+ls'): {
    'resnet32x4-resnet8x4': 78.28, 'vgg13-vgg8': 75.22,
    'wrn_40_2-wrn_40_1': 75.56, 'wrn_40_2-wrn_16_2': 76.95,
    'resnet56-resnet20': 72.33, 'resnet110-resnet32': 74.32,
    'resnet110-resnet20': 72.27, 'resnet32x4-ShuffleV2': 78.76,
    'resnet32x4-wrn_16_2': 77.53, 'resnet32x4-wrn_40_2': 79.66,
    'wrn_40_2-resnet8x4': 77.68, 'wrn_40_2-MobileNetV2': 71.61,
    'vgg13-MobileNetV2': 70.94, 'ResNet50-MobileNetV2': 71.19,
  },
}

# DIST's CIFAR-100 table (means of its runs) and its ImageNet ResNet34 ->
# ResNet18 row (torchvision's models; KD at T 4, teacher and student as
# its README gives them).
_DIST = {
  ('cifar100', 'dist'): {
    'wrn_40_2-wrn_40_1': 74.43, 'resnet56-resnet20': 71.75,
    'resnet32x4-resnet8x4': 76.31, 'ResNet50-MobileNetV2': 68.66,
    'resnet32x4-ShuffleV1': 76.34, 'resnet32x4-ShuffleV2': 77.35,
  },
  ('imagenet2012', 'dist'): {
    'imagenet_resnet34-imagenet_resnet18': 72.07,
  },
  ('imagenet2012', 'kd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.21,
  },
  ('imagenet2012', 'ce'): {
    'imagenet_resnet34': 73.31, 'imagenet_resnet18': 69.76,
  },
}

_CTKD = {
  ('cifar100', 'kd'): {
    'resnet56-resnet20': 70.66, 'resnet110-resnet32': 73.08,
    'resnet110-resnet20': 70.66, 'wrn_40_2-wrn_16_2': 74.92,
    'wrn_40_2-wrn_40_1': 73.54, 'vgg13-vgg8': 72.98,
  },
  ('cifar100', 'ctkd'): {
    'resnet56-resnet20': 71.19, 'resnet110-resnet32': 73.52,
    'resnet110-resnet20': 70.99, 'wrn_40_2-wrn_16_2': 75.45,
    'wrn_40_2-wrn_40_1': 73.93, 'vgg13-vgg8': 73.52,
  },
  ('imagenet2012', 'ce'): {
    'imagenet_resnet34': 73.96, 'imagenet_resnet18': 70.26,
  },
  ('imagenet2012', 'kd'): {
    'imagenet_resnet34-imagenet_resnet18': 70.83,
  },
  ('imagenet2012', 'ctkd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.32,
  },
  ('imagenet2012', 'dkd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.13,
  },
  ('imagenet2012', 'dkd+ctkd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.51,
  },
}

_REVIEWKD = {
  ('imagenet2012', 'ce'): {
    'imagenet_resnet18': 69.75,
  },
  ('imagenet2012', 'reviewkd'): {
    'imagenet_resnet34-imagenet_resnet18': 71.61,
  },
}

# OFD's CIFAR-100 settings (a)-(d), (f), (g): WRN-28-4 and PyramidNet
# teachers, none of them in this project's zoo. "Original" is the student
# alone.
_OFD = {
  ('cifar100', 'ce'): {
    'wrn_16_4': 77.28, 'wrn_28_2': 75.12, 'wrn_16_2': 72.68, 'resnet56': 72.32,
    'wrn_28_4': 78.91, 'pyramidnet110': 77.42,
  },
  ('cifar100', 'ofd'): {
    'wrn_28_4-wrn_16_4': 79.11, 'wrn_28_4-wrn_28_2': 78.02,
    'wrn_28_4-wrn_16_2': 75.92, 'wrn_28_4-resnet56': 75.56,
    'pyramidnet200-wrn_28_4': 82.20, 'pyramidnet200-pyramidnet110': 81.11,
  },
}

_DISTILLERS = {
  ('cifar100', 'crd_kd'): {
    'wrn_40_2-wrn_16_2': 75.64, 'wrn_40_2-wrn_40_1': 74.38,
    'resnet56-resnet20': 71.63, 'resnet110-resnet20': 71.56,
    'resnet110-resnet32': 73.75, 'resnet32x4-resnet8x4': 75.46,
    'vgg13-vgg8': 74.29, 'vgg13-MobileNetV2': 69.94,
    'ResNet50-MobileNetV2': 69.54, 'ResNet50-vgg8': 74.58,
    'resnet32x4-ShuffleV1': 75.12, 'resnet32x4-ShuffleV2': 76.05,
    'wrn_40_2-ShuffleV1': 76.27,
  },
}
_HSAKD = {
  ('imagenet2012', 'ce'): {'imagenet_resnet34': 73.31,
                           'imagenet_resnet18': 69.75},
}
_TORCHDISTILL = {
  ('imagenet2012', 'crd'): {'imagenet_resnet34-imagenet_resnet18': 71.17},
}

_TABLES = {
  'repdistiller': _REPDISTILLER, 'mdistiller': _MDISTILLER, 'ls': _LS,
  'dist': _DIST, 'ctkd': _CTKD, 'reviewkd': _REVIEWKD, 'ofd': _OFD,
  'distillers': _DISTILLERS, 'hsakd': _HSAKD, 'torchdistill': _TORCHDISTILL,
}
# Rows a README repeats from another source: (source, data, method) -> the
# source it repeats. A cell counts as repeated where the two numbers are
# equal; where they differ it is the README's own.
_REPEATED_ROWS = {
  ('mdistiller', 'cifar100', 'kd'): 'repdistiller',
  ('ls', 'cifar100', 'kd'): 'repdistiller',
  ('ls', 'cifar100', 'dkd'): 'mdistiller',
  ('ls', 'cifar100', 'ctkd'): 'ctkd',
  ('ctkd', 'cifar100', 'kd'): 'repdistiller',
}


def _build() -> tuple[Record, ...]:
  out = []
  for source, table in _TABLES.items():
    for (data, method), cells in table.items():
      origin = _REPEATED_ROWS.get((source, data, method))
      for pair, top1 in cells.items():
        theirs = _TABLES.get(origin, {}).get((data, method), {}).get(pair)
        repeats = origin if theirs == top1 else None
        epoch = SOURCES[repeats or source].epoch
        out.append(Record(data, pair, method, top1, source, epoch, repeats))
  return tuple(out)


RECORDS = _build()


def records(**match) -> list[Record]:
  """The records whose fields equal ``match`` (``data='cifar100'``,
  ``source='ls'``, ``method='kd'``...)."""
  return [r for r in RECORDS
          if all(getattr(r, k) == v for k, v in match.items())]


def lookup(data: str, pair: str, method: str) -> Record | None:
  """The number a results cell shows: of every source's record of the
  cell, a source's own measurement before a repeated one, then by
  ``SOURCE_ORDER``."""
  found = records(data=data, pair=pair, method=method)
  if not found:
    return None
  return min(found, key=lambda r: (r.repeats is not None,
                                   SOURCE_ORDER.index(r.source)))


def count_by_source() -> dict[str, int]:
  """How many records each source holds."""
  return dict(collections.Counter(r.source for r in RECORDS))
