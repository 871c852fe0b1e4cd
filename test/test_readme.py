"""The README and the docs stay true: the README's opening commands and length, the parameter
and launch-argument tables against the code, links between the pages, no commit hashes."""

import ast
import re
from pathlib import Path

from step_ros.stream.config import PARAMETERS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()
INTERFACES = (ROOT / 'docs' / 'INTERFACES.md').read_text()
PAGES = [ROOT / 'README.md', ROOT / 'models' / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]


def test_readme_starts_with_the_two_commands():
    block = re.search(r'```bash\n(.*?)```', README, re.S)
    assert block, 'README has no bash block'
    commands = [line.split('#')[0].strip() for line in block.group(1).splitlines()]
    assert commands == ['make demo', 'make test'], commands
    # Only the title, one paragraph and the block's mark come before it.
    head = README[:README.index(block.group(0))]
    head = re.sub(r'\n<!--[^\n]*-->\n$', '\n', head).strip().split('\n\n')
    assert len(head) == 2 and head[0].startswith('# '), \
        f'the two commands must follow the title and one paragraph: {head}'
    assert len(README.splitlines()) < 300, f'README.md has {len(README.splitlines())} lines'


def parameter_rows(text: str) -> dict[str, str]:
    """name -> default cell of the rows of the tables headed `| parameter | default |`."""
    rows = {}
    for table in re.findall(r'^\| parameter \| default \|.*?\n((?:\|.*\n)+)', text, re.M):
        rows.update(re.findall(r'^\| `([a-z_.]+)` \| `(.*?)` \|', table, re.M))
    return rows


def test_parameter_tables_match_the_declared_parameters():
    declared = {p.name: repr(p.default) for p in PARAMETERS}
    rows = parameter_rows(INTERFACES)
    for name, default in declared.items():
        assert name in rows, f'parameter {name} missing from the docs/INTERFACES.md table'
        assert rows[name] == default, \
            f'docs/INTERFACES.md says {name} defaults to {rows[name]}, the node uses {default}'
    # The README's short table: every row that names a parameter has the node's default.
    readme_rows = parameter_rows(README)
    assert len(readme_rows) >= 5, readme_rows
    for name, value in readme_rows.items():
        assert name in declared, f'README: {name} is not a parameter of the node'
        assert value == declared[name], \
            f'README says {name} defaults to {value}, the node uses {declared[name]}'


def test_launch_arguments_are_documented():
    tree = ast.parse((ROOT / 'launch' / 'perception.launch.py').read_text())
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
                'DeclareLaunchArgument'}
    assert declared == {'camera', 'params_file', 'device', 'namespace', 'use_sim_time',
                        'autostart', 'cameras'}, declared
    for name in declared:
        assert f'| `{name}` |' in INTERFACES, \
            f'launch argument {name} missing from docs/INTERFACES.md'


def test_makefile_has_the_readme_targets_and_ci_calls_make_test():
    makefile = (ROOT / 'Makefile').read_text()
    for target in ('demo', 'test'):
        assert re.search(rf'^{target}:', makefile, re.M), f'Makefile has no {target} target'
    assert 'make test' in (ROOT / '.ci' / 'run').read_text()


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def test_links_between_pages_resolve():
    """Every relative link of README.md, models/README.md and docs/*.md names a file that exists,
    and a #fragment names a heading of that page."""
    for page in PAGES:
        text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)
        for target in re.findall(r'\]\(([^)\s]+)\)', text):
            if re.match(r'[a-z]+://', target):
                continue
            path, _, fragment = target.partition('#')
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f'{page.relative_to(ROOT)}: link to missing {target}'
            if fragment and linked.suffix == '.md':
                headings = re.findall(r'^#+ (.*)$', re.sub(r'```.*?```', '', linked.read_text(),
                                                           flags=re.S), re.M)
                assert fragment in {slug(h) for h in headings}, \
                    f'{page.relative_to(ROOT)}: {target}: no such heading in {linked.name}'


def test_no_commit_hashes_in_the_docs():
    """The docs describe what is there; history is in git and docs/CHANGELOG.md, by date."""
    for page in [ROOT / 'README.md', *sorted((ROOT / 'docs').glob('*.md'))]:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            found = re.search(r'\bcommit [0-9a-f]{7,40}\b|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)'
                              r'[0-9a-f]{7,40}\b', line)
            assert not found, f'{page.relative_to(ROOT)}:{number}: {found.group(0)}: {line}'
