"""`synth --bag` states the size of what it writes: in its help, and in a final line with the
bytes written and the image payload estimated."""

import re

import pytest

from step_ros.tools import synth
from step_ros.tools.synth_bag import estimated_bytes


@pytest.mark.parametrize('compressed', [False, True])
def test_synth_bag_prints_bytes_written_and_estimate(tmp_path, capsys, compressed):
    out = tmp_path / 'bag'
    args = ['--bag', str(out), '--seconds', '1', '--fps', '10', '--size', '48x64']
    assert synth.main(args + (['--compressed'] if compressed else [])) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(r'synth: (\d+) bytes \((\d+\.\d) MB\) written; image payload '
                         r'(\d+\.\d) MB \((JPEG, estimated|rgb8 before zstd)\)', last)
    assert found, last
    on_disk = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    assert int(found.group(1)) == on_disk, (last, on_disk)
    assert found.group(3) == f'{estimated_bytes(1, 10, (48, 64), compressed) / 1e6:.1f}', last
    assert found.group(4) == ('JPEG, estimated' if compressed else 'rgb8 before zstd'), last


def test_synth_help_states_the_bag_size(capsys):
    with pytest.raises(SystemExit):
        synth.main(['--help'])
    text = ' '.join(capsys.readouterr().out.split())
    megabytes = round(12 * 30 * 240 * 320 * 3 / 1e6)
    assert f'12 s of 240x320 at 30 fps: {megabytes} MB' in text, text


def test_rgb8_estimate_bounds_the_bag_from_above(tmp_path, capsys):
    """rgb8 before zstd is an upper bound of the image payload on disk (zstd only shrinks it)."""
    out = tmp_path / 'bag'
    assert synth.main(['--bag', str(out), '--seconds', '1', '--fps', '10']) == 0
    on_disk = sum(f.stat().st_size for f in out.rglob('*') if f.is_file())
    assert 0.3 * estimated_bytes(1, 10, (240, 320), False) < on_disk, on_disk
    assert on_disk < estimated_bytes(1, 10, (240, 320), False) + 200_000, on_disk
