"""End-to-end test of the demo driver on shrunk configs (real digits)."""

import os

import pytest

from mhkd_jax.configs import demo as demo_config
from mhkd_jax.tools import demo

# Not in `make test-fast` (the demo driver): docs/testing.md.
pytestmark = pytest.mark.slow

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def smoke_demo(tmp_path_factory):
  """One smoke run of the whole demo: (workdir, data_dir, markdown)."""
  workdir = str(tmp_path_factory.mktemp('demo'))
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  markdown = demo.run_demo(workdir, smoke=True, data_dir=data_dir)
  return workdir, data_dir, markdown


def _table_rows(markdown: str) -> dict[str, list[str]]:
  """{run label: cells} of the markdown table's body rows."""
  rows = {}
  for line in markdown.splitlines():
    if line.startswith('| ') and not line.startswith('| run '):
      cells = [c.strip() for c in line.strip().strip('|').split('|')]
      rows[cells[0]] = cells
  return rows


def test_report_has_every_run(smoke_demo):
  workdir, _, markdown = smoke_demo
  with open(os.path.join(workdir, demo.RESULTS_MD)) as f:
    assert f.read() == markdown
  header = next(l for l in markdown.splitlines() if l.startswith('| run '))
  columns = [c.strip() for c in header.strip().strip('|').split('|')]
  assert columns[:5] == [
    'run', 'network', 'train digits', 'epochs', 'test acc %'
  ]
  # resnet8 has three stages: heads on stage1 and stage2.
  for name in ('acc stage1 %', 'acc stage2 %', 'agree stage2 %', 'wall s'):
    assert name in columns
  rows = _table_rows(markdown)
  assert set(rows) == {demo._LABELS[r] for r in demo_config.RUNS}
  for cells in rows.values():
    assert len(cells) == len(columns)
  col = {name: i for i, name in enumerate(columns)}

  def cell(run, name):
    return rows[demo._LABELS[run]][col[name]]

  # Every run has an accuracy (the fit_teacher_heads row: the teacher's).
  for run in demo_config.RUNS:
    assert 0.0 <= float(cell(run, 'test acc %')) <= 100.0
  # Blank where not applicable: no teacher for CE runs, no heads for KD.
  for run in ('teacher', 'ce'):
    assert cell(run, 'teacher acc %') == ''
    assert cell(run, 'agree top-1 %') == ''
  assert cell('kd', 'acc stage1 %') == ''
  assert cell('kd', 'agree top-1 %') != ''
  for name in ('acc stage1 %', 'agree stage1 %', 'agree stage2 %'):
    assert cell('mhkd', name) != ''
  assert cell('fit_teacher_heads', 'acc stage2 %') != ''
  # The frozen teacher is the same network in every run that reads it.
  assert cell('fit_teacher_heads', 'test acc %') == cell(
    'teacher', 'test acc %'
  )
  assert cell('kd', 'teacher acc %') == cell('teacher', 'test acc %')


def test_learning_curves_png(smoke_demo):
  workdir, _, _ = smoke_demo
  path = os.path.join(workdir, demo.CURVES_PNG)
  with open(path, 'rb') as f:
    assert f.read(8) == _PNG_SIGNATURE
  from matplotlib import image  # noqa: PLC0415

  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_rerun_reuses_finished_runs_and_resumes_the_rest(smoke_demo):
  workdir, data_dir, markdown = smoke_demo
  # A run killed after its last checkpoint but before its results.json:
  # the re-run must resume it (nothing left to train), not reuse or redo.
  os.remove(os.path.join(workdir, 'kd', 'results.json'))
  again = demo.run_demo(workdir, smoke=True, data_dir=data_dir)
  rows, first = _table_rows(again), _table_rows(markdown)
  assert set(rows) == set(first)
  for label, cells in rows.items():
    resumed = label == demo._LABELS['kd']
    assert cells[-1].endswith('(reused)') != resumed
    assert cells[:-1] == first[label][:-1]  # the same numbers


def test_other_config_in_workdir_raises(smoke_demo):
  workdir, data_dir, _ = smoke_demo
  config = demo.demo_configs(workdir, smoke=True, data_dir=data_dir)['ce']
  config.num_epochs += 1
  with pytest.raises(demo.DemoWorkdirMismatchError, match='fresh --workdir'):
    demo.run_one('ce', config, os.path.join(workdir, 'ce'))
