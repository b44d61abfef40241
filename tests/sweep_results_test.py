"""The sweep launcher's expansion and scripts; the results table."""

import csv
import os

import numpy as np
import pytest

from mhkd_jax.configs import test as test_config
from mhkd_jax.run import errors, records
from mhkd_jax.tools import results, sweep


def test_grid_expands_zipped_pairs_times_methods_times_seeds():
  runs = sweep.expand(
    'model+teacher.model=resnet8x4+resnet32x4,wrn_16_2+wrn_40_2;'
    'method=kd,crd;seed=0,1,2'
  )
  assert len(runs) == 2 * 2 * 3
  rel, overrides = runs[-1]
  assert rel == os.path.join('model=wrn_16_2', 'method=crd', 'seed=2')
  assert overrides == {'model': 'wrn_16_2', 'teacher.model': 'wrn_40_2',
                       'method': 'crd', 'seed': '2'}
  assert len({r for r, _ in runs}) == len(runs)


def test_overrides_take_the_config_types_and_bad_grids_are_refused():
  config = test_config.get_config()
  run = sweep.apply(config, {'seed': '3', 'learning_rate': '0.1',
                             'students_share_data': 'false'})
  assert run.seed == 3 and run.learning_rate == 0.1
  assert run.students_share_data is False and config.seed == 0
  with pytest.raises(errors.ConfigError, match='no key'):
    sweep.apply(config, {'no_such_key': '1'})
  with pytest.raises(errors.ConfigError, match='2 keys'):
    sweep.parse_grid('model+teacher.model=resnet8')


def test_scripts_mode_writes_one_launch_script_per_run(tmp_path):
  config = test_config.get_config()
  sweep.run_sweep(config, str(tmp_path), 'method=ce,kd;seed=0,1', 'scripts',
                  ['--config=configs/test.py', '--config.num_students=2'])
  scripts = sorted(os.listdir(tmp_path / 'launch'))
  assert len(scripts) == 4
  text = (tmp_path / 'launch' / 'method=kd__seed=1.sh').read_text()
  assert 'python -m mhkd_jax.main' in text
  for arg in ('--config=configs/test.py', '--config.num_students=2',
              '--config.method=kd', '--config.seed=1',
              f'--workdir={tmp_path}/method=kd/seed=1'):
    assert arg in text
  manifest = records.read_json(str(tmp_path / 'sweep.json'))
  assert [e['workdir'] for e in manifest['runs']][0] == os.path.join(
    'method=ce', 'seed=0')
  assert not os.path.exists(tmp_path / 'method=ce')  # nothing ran


def _fake_run(root, rel, *, method, seeds_accs, num_students=1,
              finished=True, optimizer=None, section=None, data='cifar100',
              model='resnet8x4', teacher='resnet32x4'):
  """A workdir as a run leaves it: config.json, and results.json with
  the given per-student (last, best) accuracies when finished."""
  workdir = os.path.join(root, rel)
  os.makedirs(workdir)
  config = {'method': method, 'model': model, 'seed': 0,
            'num_students': num_students,
            'teacher': {'model': teacher}, 'data': {'name': data}}
  if optimizer is not None:
    config['optimizer'] = {'name': optimizer}
  if section is not None:
    config[method] = section
  records.write_json(os.path.join(workdir, 'config.json'), config)
  if not finished:
    return
  history = [{'step': e, 'epoch': e, 'eval/acc': 0.5 + 0.01 * e}
             for e in (1, 2)]
  res = {'method': method, 'model': model, 'teacher': teacher,
         'data': data, 'seed': 0, 'history': history}
  if num_students == 1:
    (seed, (last, best)), = seeds_accs.items()
    res.update(seed=seed, final={'eval/acc': last}, best_eval_acc=best)
  else:
    res['students'] = [
      {'seed': s, 'final': {'eval/acc': last}, 'best_eval_acc': best}
      for s, (last, best) in seeds_accs.items()
    ]
    for k in range(num_students):
      for h in history:
        h[f'student{k}/eval/acc'] = h['eval/acc'] + 0.01 * k
  records.write_json(os.path.join(workdir, 'results.json'), res)


def test_table_has_mean_std_of_every_student_and_seed_and_marks_missing(
  tmp_path
):
  root = str(tmp_path)
  _fake_run(root, 'kd/seed=0', method='kd', seeds_accs={0: (0.70, 0.72)})
  _fake_run(root, 'kd/seed=1', method='kd', num_students=2,
            seeds_accs={1: (0.74, 0.75), 2: (0.78, 0.80)})
  _fake_run(root, 'crd/seed=0', method='crd', seeds_accs={}, finished=False)
  records.write_json(os.path.join(root, 'sweep.json'), {'runs': [
    {'workdir': 'kd/seed=0', 'overrides': {}, 'config': {}},
    {'workdir': 'ce/seed=0', 'overrides': {'method': 'ce'}, 'config': {
      'method': 'ce', 'model': 'resnet8x4', 'seed': 0, 'num_students': 1,
      'teacher': {'model': 'resnet32x4'}, 'data': {'name': 'cifar100'}}},
  ]})
  text = results.write_report(root)
  lines = text.splitlines()
  header = next(line for line in lines if line.startswith('| method'))
  assert header == '| method | resnet32x4-resnet8x4 |'
  kd = next(line for line in lines if line.startswith('| kd |'))
  last = f'{100 * np.mean([.70, .74, .78]):.2f} ± ' \
         f'{100 * np.std([.70, .74, .78]):.2f}'
  best = f'{100 * np.mean([.72, .75, .80]):.2f} ± ' \
         f'{100 * np.std([.72, .75, .80]):.2f}'
  assert f'last {last} · best {best} (n=3)' in kd
  # RepDistiller's KD, resnet32x4->8x4: a last-epoch number, compared
  # with our last-epoch mean (74.00).
  assert '[published 73.33, repdistiller, last epoch; ours last +0.67]' in kd
  crd = next(line for line in lines if line.startswith('| crd |'))
  assert '(n=0, 1 not finished)' in crd
  assert '[published 75.51, repdistiller, last epoch]' in crd
  ce = next(line for line in lines if line.startswith('| ce |'))
  assert '(n=0, 1 not finished)' in ce
  assert '- crd/seed=0 (seed 0): unfinished' in text
  assert '- ce/seed=0 (seed 0): missing' in text
  with open(tmp_path / 'results.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 5
  assert sorted(r['status'] for r in rows) == [
    'finished', 'finished', 'finished', 'missing', 'unfinished']
  assert os.path.getsize(
    tmp_path / 'curves_cifar100_resnet32x4-resnet8x4.png') > 1000
  assert (tmp_path / 'results.md').read_text().strip() == text.strip()


def test_dot_runs_get_their_own_row_with_mdistillers_number(tmp_path):
  root = str(tmp_path)
  _fake_run(root, 'kd', method='kd', seeds_accs={0: (0.70, 0.72)},
            optimizer='sgd')
  _fake_run(root, 'kd+dot', method='kd', seeds_accs={0: (0.74, 0.75)},
            optimizer='dot')
  lines = results.write_report(root).splitlines()
  kd = next(line for line in lines if line.startswith('| kd |'))
  kd_dot = next(line for line in lines if line.startswith('| kd+dot |'))
  assert '(n=1)' in kd and '[published 73.33, repdistiller, last epoch' in kd
  # mdistiller's KD+DOT is a best-epoch number: against our best (75.00).
  assert 'last 74.00' in kd_dot
  assert '[published 75.12, mdistiller, best epoch; ours best -0.12]' in kd_dot


def test_ls_runs_get_their_row_and_every_source_names_its_epoch(tmp_path):
  """A KD run with logit standardization is the row 'kd+ls', beside the
  LS README's best-epoch number; DKD beside mdistiller's; an ImageNet cell
  beside a number whose source does not say its epoch (no comparison)."""
  root = str(tmp_path)
  _fake_run(root, 'kd_ls', method='kd', seeds_accs={0: (0.760, 0.770)},
            section={'logit_standardize': True, 'temperature': 2.0})
  _fake_run(root, 'dkd', method='dkd', seeds_accs={0: (0.755, 0.760)},
            section={'logit_standardize': False})
  _fake_run(root, 'imagenet_crd', method='crd', data='imagenet2012',
            model='imagenet_resnet18', teacher='imagenet_resnet34',
            seeds_accs={0: (0.70, 0.71)})
  lines = results.write_report(root).splitlines()
  row = lambda label: next(x for x in lines if x.startswith(f'| {label} |'))
  assert '[published 76.62, ls, best epoch; ours best +0.38]' in row('kd+ls')
  assert '[published 76.32, mdistiller, best epoch; ours best -0.32]' in (
    row('dkd'))
  assert not any(x.startswith('| kd |') for x in lines)
  assert '[published 71.17, torchdistill, epoch not stated]' in row('crd')
