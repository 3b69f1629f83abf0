"""Behaviour tests of m2df.splits (issue 23): every line check of a split list with its line number, the class count of a list
(extra classes too), and the boundary of exactly shot + query videos."""
import pytest

from m2df.splits import Split, SplitError, VideoRecord, load_split, parse_split_lines


def test_rows_carry_their_one_based_line():
    assert parse_split_lines('a/1\nb/2\nb/3\n\n\n') == [('a', 'a/1', 1), ('b', 'b/2', 2), ('b', 'b/3', 3)]
    with pytest.raises(SplitError, match=r"f\.txt, line 3: expected <class folder>/<video id>"):
        parse_split_lines('a/1\nb/2\nc\n', 'f.txt')


@pytest.mark.parametrize('text, line, what', [
    ('a/1\n\nb/2\n', 2, 'blank line inside the list'),
    ('a/1\n   \nb/2\n', 2, 'blank line inside the list'),
    ('a/1\na /2\n', 2, 'no stray spaces'),
    ('a/1\nb/ 2\n', 2, 'no stray spaces'),
    (' a/1\n', 1, 'no stray spaces'),
    ('a/1\na/2/3\n', 2, '2 non-empty parts'),
    ('a/1\n../2\n', 2, 'escapes the data root'),
])
def test_each_bad_line_is_named(text, line, what):
    with pytest.raises(SplitError, match=rf'list\.txt, line {line}: .*{what}'):
        parse_split_lines(text, 'list.txt')


def test_clipfsar_lines_need_a_tag():
    rows = parse_split_lines('k400//train/air_drumming/v1.mp4\nkinetics7//val/b c/v2.mp4\n', 'f', 'clipfsar')
    assert rows == [('air_drumming', 'train/air_drumming/v1.mp4', 1), ('b c', 'val/b c/v2.mp4', 2)]
    for bad in ('//train/a/v.mp4', 'k400x//train/a/v.mp4', '4k//train/a/v.mp4', 'k-4//train/a/v.mp4'):
        with pytest.raises(SplitError, match="line 2: expected '<tag>//<subdir>/<class folder>/<file>'"):
            parse_split_lines('k400//train/a/v0.mp4\n' + bad + '\n', 'f', 'clipfsar')


def write_list(tmp_path, n_classes, per_class=2):
    (tmp_path / 'hmdb51').mkdir(exist_ok=True)
    lines = [f'class_{c:02d}/v{c}_{i}' for c in range(n_classes) for i in range(per_class)]
    (tmp_path / 'hmdb51' / 'test.txt').write_text('\n'.join(lines) + '\n')


def test_a_list_must_have_exactly_its_class_count(tmp_path):
    "HMDB-51's test split has 10 classes: 10 load, 9 and 11 (an extra class) are errors naming the count."
    write_list(tmp_path, 10)
    sp = load_split('hmdb51', 'test', splits_dir=tmp_path)
    assert len(sp.classes) == 10 and len(sp) == 20
    for n in (9, 11):
        write_list(tmp_path, n)
        with pytest.raises(SplitError, match=f'{n} classes, but the hmdb51 test split has 10'):
            load_split('hmdb51', 'test', splits_dir=tmp_path)


def split_with(counts):
    vids = [VideoRecord(f'c{c}/v{i}', c, len(counts) * i + c + 1) for c, n in enumerate(counts) for i in range(n)]
    return Split('synthetic', 'test', 'test.txt', [f'c{c}' for c in range(len(counts))], [f'c{c}' for c in range(len(counts))], vids)


def test_check_episode_takes_classes_with_exactly_shot_plus_query_videos():
    sp = split_with([3, 2, 3, 4])
    with pytest.warns(UserWarning, match=r"fewer than 3 videos are left out of episodes: \{'c1': 2\}"):
        assert sp.check_episode(3, 1, 2) == [0, 2, 3]
    with pytest.raises(SplitError, match="need 4 classes with at least 3 videos; synthetic/test has 3; too small: {'c1': 2}"):
        sp.check_episode(4, 1, 2)
    assert split_with([3, 3]).check_episode(2, 2, 1) == [0, 1]
