"""Behaviour tests of m2df.datacheck (issue 23): the probe cache across a change of the file, the boundary of exactly T frames,
a video broken at its end, and the frame-count figures of the report."""
import os

import numpy as np
import pytest
from PIL import Image

from m2df.config import make_config
from m2df.datacheck import ProbeCache, check_data, file_stamp, probe_video
from m2df.video import write_video


def frame_folder(path, n, size=(16, 12)):
    "A frame folder of `n` small JPEG frames."
    path.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((size[1], size[0], 3), 10 * i, np.uint8)).save(path / f'{i + 1:05d}.jpg')
    return path


def video_file(path, n):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, np.random.default_rng(n).integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))


def benchmark(tmp_path, lines):
    "A config reading `lines` as the synthetic benchmark's train list, videos under tmp_path/videos, T = 4."
    (tmp_path / 'splits').mkdir(exist_ok=True)
    (tmp_path / 'splits' / 'train.txt').write_text('\n'.join(lines) + '\n')
    return make_config('synthetic', data_root=str(tmp_path / 'videos'), splits_dir=str(tmp_path / 'splits'), frames=4,
                       check_workers=1)


def test_cache_entry_is_keyed_by_size_and_mtime(tmp_path):
    c = ProbeCache(tmp_path / 'root', cache_dir=tmp_path / 'cache')
    c.put('/v.mp4', [1000, 123456789], 40, '')
    assert c.get('/v.mp4', [1000, 123456789]) == (40, '')
    assert c.get('/v.mp4', [1000, 123456790]) is None          # same size, rewritten later
    assert c.get('/v.mp4', [1001, 123456789]) is None          # same time, other size
    assert c.get('/w.mp4', [1000, 123456789]) is None
    c.save()
    assert ProbeCache(tmp_path / 'root', cache_dir=tmp_path / 'cache').get('/v.mp4', [1000, 123456789]) == (40, '')


def test_file_stamp_is_size_and_nanosecond_mtime(tmp_path):
    f = tmp_path / 'v.mp4'; f.write_bytes(b'x' * 77)
    os.utime(f, ns=(1_500_000_000_123_456_789, 1_500_000_000_123_456_789))
    assert file_stamp(str(f)) == [77, 1_500_000_000_123_456_789]


def test_cached_verdict_follows_a_change_of_the_file(tmp_path):
    "A good video rewritten as a broken one of the same size (and a broken one repaired) gets a new verdict."
    cfg = benchmark(tmp_path, ['a/v1', 'a/v2', 'b/v3'])
    for name in ('a/v1', 'a/v2', 'b/v3'): video_file(tmp_path / 'videos' / f'{name}.mp4', 6)
    cache = tmp_path / 'cache'
    rep = check_data(cfg, ('train',), progress=False, cache_dir=cache)
    assert rep.ok and rep.opened == 3
    rep = check_data(cfg, ('train',), progress=False, cache_dir=cache)
    assert rep.ok and rep.opened == 0                                   # every verdict from the cache
    v2 = tmp_path / 'videos' / 'a' / 'v2.mp4'
    st = v2.stat()
    v2.write_bytes(np.random.default_rng(0).integers(0, 255, st.st_size, dtype=np.uint8).tobytes())   # same size, garbage
    os.utime(v2, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))          # a microsecond later
    rep = check_data(cfg, ('train',), progress=False, cache_dir=cache)
    assert rep.opened == 1 and [(p.line, p.video, p.kind) for p in rep.problems] == [(2, 'a/v2', 'broken')]
    video_file(v2, 3)                                                   # repaired, but shorter than T = 4
    rep = check_data(cfg, ('train',), progress=False, cache_dir=cache)
    assert rep.opened == 1 and [(p.line, p.kind, p.detail) for p in rep.problems] == [(2, 'short', '3 frames, fewer than T = 4')]
    video_file(v2, 4)                                                   # exactly T frames: usable
    rep = check_data(cfg, ('train',), progress=False, cache_dir=cache)
    assert rep.ok and rep.opened == 1 and rep.frame_counts['train'] == [4, 6, 6]


def test_exactly_t_frames_is_usable_and_one_fewer_is_short(tmp_path):
    cfg = benchmark(tmp_path, ['a/x', 'a/y', 'b/z'])
    frame_folder(tmp_path / 'videos' / 'a' / 'x', 4)
    frame_folder(tmp_path / 'videos' / 'a' / 'y', 3)
    frame_folder(tmp_path / 'videos' / 'b' / 'z', 5)
    rep = check_data(cfg, ('train',), progress=False, cache_dir=tmp_path / 'cache')
    assert [(p.line, p.video, p.kind) for p in rep.problems] == [(2, 'a/y', 'short')]
    assert rep.frame_counts['train'] == [4, 4, 5]                     # median of 4 and 5 is 4.5, reported as 4


def test_frame_counts_report_min_median_max(tmp_path):
    cfg = benchmark(tmp_path, ['a/x', 'a/y', 'b/z'])
    for name, n in (('a/x', 4), ('a/y', 5), ('b/z', 12)): frame_folder(tmp_path / 'videos' / name, n)
    rep = check_data(cfg, ('train',), progress=False, cache_dir=tmp_path / 'cache')
    assert rep.ok and rep.frame_counts == {'train': [4, 5, 12]}        # the mean would be 7
    assert 'frames per video min 4, median 5, max 12' in rep.summary()


def test_a_video_broken_at_its_end_is_broken(tmp_path):
    good = frame_folder(tmp_path / 'good', 5)
    assert probe_video(str(good)) == (5, '')
    bad = frame_folder(tmp_path / 'bad', 5)
    (bad / '00005.jpg').write_bytes(b'not a jpeg')                      # the first four frames decode, the last does not
    n, err = probe_video(str(bad))
    assert n == 0 and '00005.jpg' in err
