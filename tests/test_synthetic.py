"Tests of the synthetic benchmark: determinism, reverse pairs, split structure, decodability, atomic generation."
import filecmp, json, os
from pathlib import Path

import numpy as np
import pytest

import m2df.synthetic as syn
from m2df.synthetic import (SYNTHETIC_CLASSES, make_synthetic_benchmark, synthetic_root, synthetic_split_classes,
                            reverse_pairs, sample_video_params, video_rng, render_clip, render_background, read_marker,
                            video_id, MARKER_FILE)
from m2df.video import resolve_video, count_frames, read_frames, write_video, sample_indices, load_clip, ClipTransform

SPLITS = ('train', 'val', 'test')

def lines(root, s): return (Path(root) / 'splits' / f'{s}.txt').read_text().splitlines()

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "Two generations with the same seed and one with another seed, 2 videos per class."
    base = tmp_path_factory.mktemp('syn')
    return {k: make_synthetic_benchmark(base / k, seed=s, videos_per_class=2) for k, s in (('a', 0), ('b', 0), ('c', 1))}

@pytest.fixture(scope='module')
def default_root():
    "The default benchmark, from the package cache ($M2DF_CACHE or ~/.cache/m2df), generated there if missing."
    return synthetic_root()

# --- structure

def test_split_structure():
    cls = {s: synthetic_split_classes(s) for s in SPLITS}
    assert all(len(c) >= 5 for c in cls.values())
    assert sum(len(c) for c in cls.values()) == len(SYNTHETIC_CLASSES) >= 24
    assert not (set(cls['train']) & set(cls['val'])) and not (set(cls['train']) & set(cls['test'])) \
        and not (set(cls['val']) & set(cls['test']))
    for s in ('val', 'test'):   # each held-out split contains at least one complete reverse pair
        assert any(a in cls[s] and b in cls[s] for a, b in reverse_pairs()), s

def test_generated_lists(tiny):
    root = tiny['a']
    for s in SPLITS:
        ls = lines(root, s)
        assert len(ls) == 2 * len(synthetic_split_classes(s)) and len(set(ls)) == len(ls)
        assert sorted({l.split('/')[0] for l in ls}) == synthetic_split_classes(s)
        for l in ls:
            assert l.count('/') == 1 and not l.endswith('.mp4')
            assert resolve_video(root / 'videos', l) == root / 'videos' / f'{l}.mp4'
    meta = json.loads((root / 'classes.json').read_text())
    assert set(meta) == {c.name for c in SYNTHETIC_CLASSES}
    assert read_marker(root)['complete'] is True

def test_splits_module_reads_the_lists(tiny):
    from m2df.splits import load_split
    sp = load_split('synthetic', 'val', splits_dir=tiny['a'] / 'splits')
    assert sp.classes == synthetic_split_classes('val')
    assert len(sp.videos) == 12 and all(resolve_video(tiny['a'] / 'videos', v.path).is_file() for v in sp.videos)

# --- determinism

def test_same_seed_same_benchmark(tiny):
    a, b = tiny['a'], tiny['b']
    for s in SPLITS: assert lines(a, s) == lines(b, s)
    for l in lines(a, 'test') + lines(a, 'val')[:4]:
        pa, pb = a / 'videos' / f'{l}.mp4', b / 'videos' / f'{l}.mp4'
        n = count_frames(pa)
        assert n == count_frames(pb)
        np.testing.assert_array_equal(read_frames(pa, range(n)), read_frames(pb, range(n)))
        assert filecmp.cmp(pa, pb, shallow=False), l          # single-threaded x264: even the bytes agree

def test_other_seed_other_videos(tiny):
    a, c = tiny['a'], tiny['c']
    assert lines(a, 'train') == lines(c, 'train')             # same classes and ids ...
    diff = [not np.array_equal(read_frames(a / 'videos' / f'{l}.mp4', [0]), read_frames(c / 'videos' / f'{l}.mp4', [0]))
            for l in lines(a, 'test')]
    assert all(diff)                                          # ... different videos

def test_params_are_reproducible():
    p1, p2 = (sample_video_params(video_rng(3, 'grow', 7)) for _ in range(2))
    assert np.array_equal(render_clip('grow', p1), render_clip('grow', p2))
    p3 = sample_video_params(video_rng(3, 'grow', 8))
    assert p3.n_frames != p1.n_frames or not np.array_equal(render_clip('grow', p1), render_clip('grow', p3))

# --- reverse pairs, measured on decoded videos

def centroids(frames, bg):
    w = np.abs(frames.astype(np.float32) - bg[None] * 255).sum(-1)
    w = np.where(w > 30, w, 0)                                # codec noise on the background is not the object
    yy, xx = np.mgrid[:w.shape[1], :w.shape[2]]
    tot = np.maximum(w.sum((1, 2)), 1e-6)
    return np.stack([(w * xx).sum((1, 2)) / tot, (w * yy).sum((1, 2)) / tot, w.sum((1, 2))], 1)

@pytest.mark.parametrize('a,b', reverse_pairs())
def test_reverse_pair_is_time_reverse(tmp_path, a, b):
    p = sample_video_params(video_rng(11, 'pair', 0))
    fa, fb = render_clip(a, p), render_clip(b, p)
    np.testing.assert_array_equal(fb, fa[::-1])
    write_video(tmp_path / 'a.mp4', fa); write_video(tmp_path / 'b.mp4', fb)
    n = p.n_frames
    da, db = read_frames(tmp_path / 'a.mp4', range(n)), read_frames(tmp_path / 'b.mp4', range(n))
    bg = render_background(p)
    ca, cb = centroids(da, bg), centroids(db, bg)
    seen = (ca[:, 2] > 0.2 * ca[:, 2].max()) & (cb[::-1, 2] > 0.2 * cb[:, 2].max())  # frames where the object shows
    assert seen.sum() >= n // 3
    np.testing.assert_allclose(cb[::-1][seen, :2], ca[seen, :2], atol=1.0)          # trajectory of b = a backwards
    # played forwards, a class does not look like its reverse: some frame differs well beyond the codec's noise
    assert np.abs(da.astype(float) - db).mean((1, 2, 3)).max() > 1.0

def test_directions_of_moves():
    for name, sign in (('move_right', (1, 0)), ('move_left', (-1, 0)), ('move_down', (0, 1)), ('move_up', (0, -1))):
        for i in range(3):
            p = sample_video_params(video_rng(0, name, i))
            c = centroids(render_clip(name, p), render_background(p))
            d = c[-1, :2] - c[0, :2]
            assert np.sign(np.round(d / 5)).tolist() == list(sign), (name, d)

# --- the default benchmark

def test_default_benchmark_complete_and_decodable(default_root):
    m = read_marker(default_root)
    assert m['params']['videos_per_class'] == 20 and m['params']['seed'] == 0
    total = 0
    for s in SPLITS:
        ls = lines(default_root, s)
        assert len({l.split('/')[0] for l in ls}) >= 5
        for l in ls:
            n = count_frames(resolve_video(default_root / 'videos', l))
            assert n >= 16, (l, n)
        total += len(ls)
    assert total == m['videos'] == 20 * len(SYNTHETIC_CLASSES)

def test_default_benchmark_loads_clips(default_root):
    tf = ClipTransform(True, resize=64, crop=56, flip=True)
    rng = np.random.default_rng(0)
    for l in lines(default_root, 'test')[::20]:
        x = load_clip(resolve_video(default_root / 'videos', l), 8, tf, True, rng)
        assert x.shape == (8, 3, 56, 56) and np.isfinite(x.numpy()).all()

def test_synthetic_root_reuses_cache(default_root, monkeypatch):
    calls = []
    monkeypatch.setattr(syn, '_generate', lambda *a, **k: calls.append(a))
    assert synthetic_root() == default_root and calls == []

def test_synthetic_root_custom_params_get_own_folder(tmp_path):
    r1 = synthetic_root(tmp_path, videos_per_class=1, size=32)
    r2 = synthetic_root(tmp_path, videos_per_class=1, size=48)
    assert r1 != r2 and r1.parent == r2.parent == tmp_path and 'seed0' in r1.name
    assert read_marker(r1)['params']['size'] == 32 and read_marker(r2)['params']['size'] == 48
    assert read_frames(r1 / 'videos' / 'grow' / 'grow_000.mp4', [0]).shape == (1, 32, 32, 3)

def test_env_var_sets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path / 'cache'))
    assert syn.cache_base() == tmp_path / 'cache'
    assert syn.cache_base(tmp_path / 'x') == tmp_path / 'x'

# --- atomic generation and bad parameters

def test_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    calls = {'n': 0}
    real = syn.write_video
    def flaky(*a, **k):
        calls['n'] += 1
        if calls['n'] == 5: raise KeyboardInterrupt('simulated interruption')
        return real(*a, **k)
    monkeypatch.setattr(syn, 'write_video', flaky)
    with pytest.raises(KeyboardInterrupt): make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    assert not (tmp_path / 'r').exists()
    assert not [p for p in tmp_path.iterdir() if '.tmp-' in p.name]
    monkeypatch.setattr(syn, 'write_video', real)
    root = make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    assert read_marker(root)['videos'] == len(SYNTHETIC_CLASSES)

def test_stale_temporary_folder_and_partial_root(tmp_path):
    (tmp_path / '.r.tmp-99999' / 'videos').mkdir(parents=True)          # left by a killed process
    (tmp_path / 'r' / 'videos' / 'grow').mkdir(parents=True)             # a root whose marker says incomplete
    (tmp_path / 'r' / MARKER_FILE).write_text(json.dumps({'params': {}, 'complete': False}))
    root = make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    assert read_marker(root)['complete'] and not (tmp_path / '.r.tmp-99999').exists()
    assert len(lines(root, 'train')) == len(synthetic_split_classes('train'))

def test_corrupt_marker_is_regenerated(tmp_path):
    root = make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    (root / MARKER_FILE).write_text('{not json')
    (root / 'videos' / 'grow' / 'grow_000.mp4').unlink()
    with pytest.raises(FileExistsError): make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    (root / MARKER_FILE).write_text(json.dumps({'params': {'generator': 0}, 'complete': True}))
    make_synthetic_benchmark(tmp_path / 'r', videos_per_class=1)
    assert (root / 'videos' / 'grow' / 'grow_000.mp4').is_file()

def test_foreign_folder_is_never_overwritten(tmp_path):
    (tmp_path / 'data').mkdir(); (tmp_path / 'data' / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='data'): make_synthetic_benchmark(tmp_path / 'data', videos_per_class=1)
    assert (tmp_path / 'data' / 'keep.txt').read_text() == 'mine'

def test_parallel_generation_gives_the_same_videos(tmp_path, tiny):
    root = make_synthetic_benchmark(tmp_path / 'p', seed=0, videos_per_class=2, workers=2)
    for l in lines(root, 'val'):
        assert filecmp.cmp(root / 'videos' / f'{l}.mp4', tiny['a'] / 'videos' / f'{l}.mp4', shallow=False), l

@pytest.mark.parametrize('kw,word', [(dict(videos_per_class=0), 'videos_per_class'), (dict(size=63), 'size'),
                                     (dict(min_frames=20, max_frames=16), 'max_frames'), (dict(size=8), 'size')])
def test_bad_parameters(tmp_path, kw, word):
    with pytest.raises(ValueError, match=word): make_synthetic_benchmark(tmp_path / 'r', **kw)
    assert not (tmp_path / 'r').exists()

def test_unknown_class():
    with pytest.raises(ValueError, match='jump'): render_clip('jump', sample_video_params(video_rng(0, 'x', 0)))
