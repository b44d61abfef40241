"""The documentation's links resolve, and nothing in the repository points
outside it (a clone has nothing beside it)."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
  os.path.join('docs', f) for f in os.listdir(os.path.join(REPO, 'docs'))
  if f.endswith('.md')
)


def _without_code_blocks(text: str) -> str:
  return re.sub(r'```.*?```', '', text, flags=re.S)


def _anchors(path: str) -> set[str]:
  """GitHub's anchors of a page's headings (lower case, punctuation but
  '-' and '_' dropped, spaces as '-')."""
  with open(path) as f:
    text = _without_code_blocks(f.read())
  headings = re.findall(r'^#{1,6}\s+(.*)$', text, flags=re.M)
  return {
    re.sub(r'[^\w\- ]', '', h.replace('`', '').strip().lower()).replace(
      ' ', '-')
    for h in headings
  }


@pytest.mark.parametrize('page', PAGES)
def test_every_relative_link_resolves(page):
  path = os.path.join(REPO, page)
  with open(path) as f:
    text = _without_code_blocks(f.read())
  problems = []
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+://|mailto:', target):
      continue
    file_part, _, anchor = target.partition('#')
    resolved = (os.path.normpath(os.path.join(os.path.dirname(path),
                                              file_part))
                if file_part else path)
    if not resolved.startswith(REPO + os.sep):
      problems.append(f'{target}: outside the repository')
    elif not os.path.exists(resolved):
      problems.append(f'{target}: no such file')
    elif anchor and resolved.endswith('.md') and (
      anchor not in _anchors(resolved)
    ):
      problems.append(f'{target}: no such heading')
  assert not problems, f'{page}: ' + '; '.join(problems)


def test_no_file_refers_to_the_notes_beside_the_repository():
  # The design notes, specs and reference tables the project was built
  # from live beside the repository, not in it: what the project needs of
  # them is in docs/ and the package.
  listed = subprocess.run(
    ['git', 'grep', '-nE', r'(\.\./shared|shared/(specs|reference)|'
     r'(^|[ `(])specs/|recipes\.md|reference/results)'],
    cwd=REPO, capture_output=True, text=True,
  )
  if listed.returncode not in (0, 1):  # not a git checkout (a wheel, ...)
    pytest.skip(listed.stderr.strip())
  hits = [line for line in listed.stdout.splitlines()
          if not line.startswith('tests/docs_test.py:')]
  assert not hits, '\n'.join(hits)
