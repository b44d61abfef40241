"""Times this tree's JAX train step against another git revision's, in one
process, alternating blocks of steps (so machine load hits both alike).

  python -m experiments.compare_revisions --old-rev 40b1ea3 --steps 12

A refactor must not slow the step down, and on a shared machine only a
comparison inside one run means anything. The old revision's package
(``mhkd_jax``, ``configs/`` if it has one) and its
``experiments/benchmark_step.py`` are extracted with ``git archive`` into
a temporary directory and renamed (``mhkd_jax`` -> ``mhkd_jax_old``) so
that both import side by side; each side's ``JaxBench`` builds its own
step exactly as that revision's ``make bench`` does. Other flags are
``experiments.benchmark_step``'s (``--batch``, ``--steps``, ``--block``,
``--threads``, ...); the cases are KD and MHKD with 'light' and 'dih'
heads (``--method`` and ``--head`` choose).
"""

import argparse
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile

from experiments import benchmark_step

_OLD = 'mhkd_jax_old'


def extract_old(rev: str, directory: str) -> None:
  """Writes ``rev``'s package as ``mhkd_jax_old`` and its benchmark as
  ``old_benchmark_step.py`` into ``directory``."""
  paths = ['mhkd_jax', 'configs', 'experiments/benchmark_step.py']
  listed = subprocess.run(
    ['git', 'ls-tree', '--name-only', rev, 'configs'], capture_output=True,
    text=True, check=True,
  ).stdout.split()
  if not listed:
    paths.remove('configs')
  archive = subprocess.run(
    ['git', 'archive', '--format=tar', rev, *paths], capture_output=True,
    check=True,
  ).stdout
  rename = [
    (re.compile(r'\bmhkd_jax\b'), _OLD),
    (re.compile(r'^(\s*)from configs import', re.M),
     r'\1from configs_old import'),
  ]
  with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
    for member in tar.getmembers():
      if not member.isfile():
        continue
      name = member.name.replace('mhkd_jax/', f'{_OLD}/', 1)
      name = re.sub(r'^configs/', 'configs_old/', name)
      name = name.replace('experiments/benchmark_step.py',
                          'old_benchmark_step.py')
      text = tar.extractfile(member).read()
      if name.endswith('.py'):
        text = text.decode()
        for pattern, new in rename:
          text = pattern.sub(new, text)
        text = text.encode()
      path = os.path.join(directory, name)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'wb') as f:
        f.write(text)


def main(argv=None):
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument('--old-rev', required=True,
                      help='the git revision to compare with')
  known, rest = parser.parse_known_args(
    sys.argv[1:] if argv is None else argv
  )
  old_rev = known.old_rev
  args = benchmark_step._parse_args(rest)  # noqa: SLF001
  benchmark_step._pin_threads(args.threads)  # noqa: SLF001
  benchmark_step.resolve_defaults(args)
  directory = tempfile.mkdtemp(prefix='old_rev_')
  extract_old(old_rev, directory)
  sys.path.insert(0, directory)
  import old_benchmark_step  # noqa: PLC0415

  print(f'# this tree vs {old_rev}, {args.steps} steps each, blocks of '
        f'{args.block}, batch {args.batch}', flush=True)
  heads = [h for h in args.head.split(',') if h]
  cases = [(m, None) if m == 'kd' else (m, h)
           for m in args.method.split(',') if m
           for h in (heads if m == 'mhkd' else [None])]
  for method, head in cases:
    n = max(args.batch * 16, 1024)
    benches = {
      'old': old_benchmark_step.JaxBench(args, method, head, n),
      'new': benchmark_step.JaxBench(args, method, head, n),
    }
    times = benchmark_step._alternate(  # noqa: SLF001
      benches, args.warmup, args.steps, args.block, 0
    )
    s = {k: benchmark_step._summary(v) for k, v in times.items()}  # noqa: SLF001
    print(
      f'{method}/{head or "-"}: old {s["old"]["median_s"] * 1e3:.0f} ms '
      f'(IQR {s["old"]["iqr_s"] * 1e3:.0f}), new '
      f'{s["new"]["median_s"] * 1e3:.0f} ms (IQR '
      f'{s["new"]["iqr_s"] * 1e3:.0f}); new/old '
      f'{s["new"]["median_s"] / s["old"]["median_s"]:.3f}',
      flush=True,
    )


if __name__ == '__main__':
  main()
