"""Timeline CSVs: exact segment lookup in nanoseconds, and errors that name the line."""

import pytest

from step_ros.data.timeline import TimelineError, load_timeline, seconds, write_timeline

S = 1_000_000_000
BASE = 1_700_000_000 * S


def write(tmp_path, text: str):
    path = tmp_path / 'timeline.csv'
    path.write_text(text)
    return path


def test_lookup_is_half_open_and_exact(tmp_path):
    path = write(tmp_path, 'start,end,label\n'
                           '1700000000.0,1700000002.0,wave\n'
                           '1700000002.000000000,1700000004.033333333,pick_up\n'
                           '# a comment, then a gap\n'
                           '1700000005,1700000006,put_down\n')
    timeline = load_timeline(path, labels=('wave', 'pick_up', 'put_down'))
    assert [s.line for s in timeline.segments] == [2, 3, 5]
    assert timeline.label_at(BASE) == 'wave'
    assert timeline.label_at(BASE + 2 * S - 1) == 'wave'
    assert timeline.label_at(BASE + 2 * S) == 'pick_up'  # a boundary belongs to the later one
    assert timeline.label_at(BASE + 4 * S + 33_333_332) == 'pick_up'
    assert timeline.label_at(BASE + 4 * S + 33_333_333) is None  # the gap is unlabelled
    assert timeline.label_at(BASE - 1) is None
    assert timeline.label_at(BASE + 6 * S) is None
    assert timeline.label_over(BASE + S, BASE + 3 * S) is None  # spans two segments
    assert timeline.label_over(BASE + 2 * S, BASE + 4 * S) == 'pick_up'
    assert timeline.shifted(-BASE).label_at(5 * S) == 'put_down'


def test_write_round_trip(tmp_path):
    segments = [(BASE, BASE + 2 * S, 'a'), (BASE + 2 * S, BASE + 4 * S + 1, 'b')]
    path = write_timeline(tmp_path / 'out.csv', segments)
    assert path.read_text().splitlines()[:2] == ['start,end,label',
                                                 '1700000000.000000000,1700000002.000000000,a']
    timeline = load_timeline(path)
    assert [(s.start_ns, s.end_ns, s.label) for s in timeline.segments] == segments
    assert seconds(-1) == '-0.000000001'


@pytest.mark.parametrize('text, expected', [
    ('start,end,label\n0,2,wave\n2,4,dance\n', r'timeline.csv:3: unknown label \'dance\''),
    ('0,2,wave\n1.5,3,stir\n', r'timeline.csv:2: segment 1.500000000-3.000000000 \'stir\' '
                               r'overlaps line 1 \(0.000000000-2.000000000 \'wave\'\)'),
    ('0,2,wave\n3,3,stir\n', r'timeline.csv:2: end 3 is not after start 3'),
    ('0,2,wave\n4,3,stir\n', r'timeline.csv:2: end 3 is not after start 4'),
    ('0,two,wave\n', r'timeline.csv:1: start and end must be seconds'),
    ('0,2\n', r'timeline.csv:1: expected 3 columns start,end,label, got 2'),
    ('0,2,\n', r'timeline.csv:1: empty label'),
    ('start,end,label\n', r'no segments'),
])
def test_bad_timelines_name_the_line(tmp_path, text, expected):
    with pytest.raises(TimelineError, match=expected):
        load_timeline(write(tmp_path, text), labels=('wave', 'stir'))


def test_missing_file(tmp_path):
    with pytest.raises(TimelineError, match='does not exist'):
        load_timeline(tmp_path / 'nope.csv')
