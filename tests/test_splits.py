"Tests of m2df.splits on the real split lists, a local download server and bad input."
import functools, hashlib, http.server, json, re, shutil, threading
from pathlib import Path

import pytest

from conftest import real_splits_dir

import m2df.splits
from m2df.splits import (BENCHMARKS, SPLITS, SSV2_LABELS, SplitError, VideoRecord, fetch_splits, file_sha256, packaged_splits_dir,
                         load_split)

SHARED = real_splits_dir()
REAL = ['ucf101', 'hmdb51', 'kinetics100', 'kinetics100_clipfsar', 'ssv2_small', 'ssv2_full']
# Spellings of the authors' configs that the naming rules deliberately write otherwise (folder -> authors' name).
AUTHORS_SPELLINGS = {'ucf101': {'BlowDryHair': 'Blow DryHair', 'WalkingWithDog': 'Walking WithDog',
                                'CuttingInKitchen': 'Cutting in Kitchen'},
                     'hmdb51': {k: k for k in ('draw_sword', 'ride_bike', 'shake_hands', 'shoot_bow')}}
unbracket = lambda s: s.replace('[', '').replace(']', '')


def ssv2_labels_json(folder: Path) -> Path:
    "A labels file in the format of the real one ({template without brackets: id}) from the shared tsv names."
    names = {}
    if not (SHARED / 'ssv2_full' / 'train_classnames.tsv').exists():
        pytest.skip(f'the authors\' SSv2-Full class names (ssv2_full/<split>_classnames.tsv) are not in {SHARED}')
    for s in ('train', 'test'):
        for line in (SHARED / 'ssv2_full' / f'{s}_classnames.tsv').read_text().splitlines():
            i, name = line.split('\t')
            names[i] = unbracket(name)
    for i in range(174): names.setdefault(str(i), f'val class {i}')  # the 174 SSv2 classes; val names are not shared
    p = folder / SSV2_LABELS
    p.write_text(json.dumps({v: k for k, v in names.items()}, indent=1))
    return p


@pytest.fixture(scope='module')
def labels(tmp_path_factory): return ssv2_labels_json(tmp_path_factory.mktemp('ssv2'))


def shared_names(bench, split):
    "The authors' class names of a split: {numeric id: name} (SSv2-Full) or a list in their order; None for val."
    d = SHARED / bench
    if (d / f'{split}_classnames.txt').exists(): return (d / f'{split}_classnames.txt').read_text().splitlines()
    if (d / f'{split}_classnames.tsv').exists():
        return dict(l.split('\t') for l in (d / f'{split}_classnames.tsv').read_text().splitlines())


@pytest.mark.parametrize('bench', REAL)
@pytest.mark.parametrize('split', SPLITS)
def test_real_lists(bench, split, labels):
    b = BENCHMARKS[bench]
    test_file = SHARED / bench / f'{split}.txt'
    assert file_sha256(test_file) == b.sha256[split]
    sp = load_split(bench, split, splits_dir=SHARED, labels_json=labels)
    assert (sp.benchmark, sp.name, Path(sp.file)) == (bench, split, test_file)
    assert len(sp.classes) == b.num_classes[split] == len(sp.class_names) == len(set(sp.class_names))
    assert len(sp) == sum(1 for l in test_file.read_text().splitlines() if l.strip())
    assert sp.sha256 == b.sha256[split]
    key = (lambda f: f.replace(' ', '_')) if bench.startswith('kinetics') else (lambda f: f)
    assert all(key(v.path.split('/')[-2]) == sp.classes[v.label] for v in sp.videos)
    assert [v.line for v in sp.videos] == list(range(1, len(sp) + 1))
    ref = shared_names(bench, split) or shared_names(bench.replace('_clipfsar', ''), split)
    if ref is not None:
        quirks = AUTHORS_SPELLINGS.get(bench, {})
        derived = [quirks.get(k, n) for k, n in zip(sp.classes, sp.class_names)]
        if isinstance(ref, dict): assert dict(zip(sp.classes, derived)) == {k: unbracket(n) for k, n in ref.items()}
        elif bench == 'ssv2_small': assert sorted(derived) == sorted(unbracket(n) for n in ref)  # authors' order unsorted
        else: assert derived == ref  # same order: sorted class folders


def test_kinetics_spellings_merge():
    for split, spellings in (('train', 82), ('test', 41)):
        sp = load_split('kinetics100', split, splits_dir=SHARED)
        assert len({v.path.split('/')[0] for v in sp.videos}) == spellings
        assert all(' ' not in c for c in sp.classes)
        assert min(len(v) for v in sp.by_class().values()) == 100
    clipfsar = load_split('kinetics100_clipfsar', 'val', splits_dir=SHARED)
    assert clipfsar.classes == load_split('kinetics100', 'val', splits_dir=SHARED).classes
    assert clipfsar.videos[0] == VideoRecord('val_256/baking_cookies/-514AQUrSow.mp4', 0, 1)


def test_splits_dir_forms(tmp_path):
    shutil.copy(SHARED / 'hmdb51' / 'val.txt', tmp_path / 'val.txt')
    a, b = load_split('hmdb51', 'val', splits_dir=tmp_path), load_split('hmdb51', 'val', splits_dir=SHARED / 'hmdb51')
    assert a.videos == b.videos and a.classes == b.classes


def test_check_episode_real():
    sp = load_split('ssv2_small', 'test', splits_dir=SHARED)
    assert sp.check_episode(5, 5, 5) == list(range(24))
    with pytest.raises(SplitError, match='only 24 classes'): sp.check_episode(25, 1, 1)
    with pytest.raises(SplitError, match='shot=0'): sp.check_episode(5, 0, 1)


def test_check_episode_excludes_small_classes(labels):
    sp = load_split('ssv2_full', 'test', splits_dir=SHARED, labels_json=labels)
    counts = {i: len(v) for i, v in sp.by_class().items()}
    small = min(counts.values())
    with pytest.warns(UserWarning, match=f"'{sp.classes[min(counts, key=counts.get)]}': {small}"):
        ok = sp.check_episode(5, 1, small)
    assert ok == [i for i, n in counts.items() if n >= small + 1] and len(ok) < 24
    with pytest.raises(SplitError, match='need 5 classes'): sp.check_episode(5, 100, 1000)


# --- SSv2 labels file

def test_ssv2_labels_default_locations(tmp_path, labels):
    (tmp_path / 'lists').mkdir()
    shutil.copy(SHARED / 'ssv2_full' / 'test.txt', tmp_path / 'lists' / 'test.txt')
    with pytest.raises(FileNotFoundError, match=re.escape(SSV2_LABELS)) as e:
        load_split('ssv2_full', 'test', splits_dir=tmp_path / 'lists')
    assert 'qualcomm.com' in str(e.value) and 'labels_json' in str(e.value)
    videos = tmp_path / 'data' / 'videos'; (tmp_path / 'data' / 'labels').mkdir(parents=True)
    shutil.copy(labels, tmp_path / 'data' / 'labels' / SSV2_LABELS)
    by_root = load_split('ssv2_full', 'test', splits_dir=tmp_path / 'lists', data_root=videos)
    shutil.copy(labels, tmp_path / 'lists' / SSV2_LABELS)
    next_to_lists = load_split('ssv2_full', 'test', splits_dir=tmp_path / 'lists')
    assert by_root.class_names == next_to_lists.class_names
    assert dict(zip(by_root.classes, by_root.class_names)) == {k: unbracket(n) for k, n in shared_names('ssv2_full', 'test').items()}


def test_ssv2_labels_bad(tmp_path, labels):
    d = json.loads(labels.read_text()); del d[next(k for k, v in d.items() if v == '0')]
    (tmp_path / 'l.json').write_text(json.dumps(d))
    with pytest.raises(SplitError, match=r"\['0'\].*l\.json"):
        load_split('ssv2_full', 'test', splits_dir=SHARED, labels_json=tmp_path / 'l.json')
    (tmp_path / 'bad.json').write_text('["not", "a", "dict"]')
    with pytest.raises(SplitError, match='bad.json'):
        load_split('ssv2_full', 'test', splits_dir=SHARED, labels_json=tmp_path / 'bad.json')
    with pytest.raises(FileNotFoundError, match='nope.json'):
        load_split('ssv2_full', 'test', splits_dir=SHARED, labels_json=tmp_path / 'nope.json')


# --- download from a local server laid out like the source repository

@pytest.fixture
def server(tmp_path):
    root = tmp_path / 'srv'
    for bench in ('ucf101', 'hmdb51'):
        for split, src in BENCHMARKS[bench].files.items():
            (root / src).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(SHARED / bench / f'{split}.txt', root / src)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True); t.start()
    yield root, f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown(); httpd.server_close()


def test_download_then_offline(server, tmp_path, monkeypatch):
    root, url = server
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path / 'cache'))
    folder = fetch_splits('ucf101', base_url=url)
    assert folder == tmp_path / 'cache' / 'splits' / 'ucf101'
    assert sorted(p.name for p in folder.iterdir()) == ['test.txt', 'train.txt', 'val.txt']
    for s in SPLITS: assert (folder / f'{s}.txt').read_bytes() == (SHARED / 'ucf101' / f'{s}.txt').read_bytes()
    shutil.rmtree(root)  # the cache is used from now on, no server needed
    assert load_split('ucf101', 'val').file == str(packaged_splits_dir('ucf101') / 'ucf101' / 'val.txt')  # shipped lists first
    monkeypatch.setattr(m2df.splits, 'packaged_splits_dir', lambda b: None)   # a list missing from the package: the cache
    sp = load_split('ucf101', 'val')
    assert sp.file == str(folder / 'val.txt') and len(sp.classes) == 10
    (folder / 'val.txt').write_text('corrupted/x\n')  # a damaged cache file is fetched again: here it cannot be
    with pytest.raises(SplitError, match='could not download .*vallist03.txt'): fetch_splits('ucf101', base_url=url)
    assert (folder / 'val.txt').read_text() == 'corrupted/x\n'


def test_download_explicit_cache_and_repair(server, tmp_path):
    root, url = server
    cache = tmp_path / 'c'
    folder = fetch_splits('hmdb51', cache_dir=cache, base_url=url)
    (folder / 'test.txt').write_text('x/y\n')
    fetch_splits('hmdb51', cache_dir=cache, base_url=url)
    assert file_sha256(folder / 'test.txt') == BENCHMARKS['hmdb51'].sha256['test']
    assert len(load_split('hmdb51', 'test', cache_dir=cache).classes) == 10


def test_download_checksum_mismatch(server, tmp_path):
    root, url = server
    src = root / BENCHMARKS['hmdb51'].files['test']
    src.write_bytes(src.read_bytes() + b'kick/extra_video\n')
    got = hashlib.sha256(src.read_bytes()).hexdigest()
    with pytest.raises(SplitError) as e: fetch_splits('hmdb51', cache_dir=tmp_path / 'c', base_url=url)
    msg = str(e.value)
    assert 'test.txt' in msg and BENCHMARKS['hmdb51'].sha256['test'] in msg and got in msg
    assert sorted(p.name for p in (tmp_path / 'c' / 'hmdb51').iterdir()) == ['train.txt', 'val.txt']


def test_download_missing_on_server(server, tmp_path):
    root, url = server
    (root / BENCHMARKS['ucf101'].files['train']).unlink()
    with pytest.raises(SplitError, match='trainlist03.txt.*splits_dir'):
        fetch_splits('ucf101', cache_dir=tmp_path / 'c', base_url=url)
    assert not any((tmp_path / 'c' / 'ucf101').iterdir())


# --- bad input

def corrupt(tmp_path, bench, split, line_no, new_line):
    lines = (SHARED / bench / f'{split}.txt').read_text().splitlines()
    lines[line_no - 1] = new_line
    (tmp_path / f'{split}.txt').write_text('\n'.join(lines) + '\n\n\n')
    return tmp_path / f'{split}.txt'


@pytest.mark.parametrize('bench,line,why', [
    ('ucf101', 'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01/extra', 'expected <class folder>/<video id>'),
    ('ucf101', 'ApplyEyeMakeup', 'expected <class folder>/<video id>'),
    ('ucf101', '/v_ApplyEyeMakeup_g01_c01', 'escapes'),
    ('ucf101', 'ApplyEyeMakeup/', 'expected'),
    ('hmdb51', ' brush_hair/x', 'stray spaces'),
    ('ssv2_small', '', 'blank line'),
    ('ssv2_full', '19/../../../etc/passwd', 'escapes'),
    ('kinetics100', '../kinetics/-VtLx-mcPds_000012_000022', 'escapes'),
    ('kinetics100', 'C:/air drumming', 'escapes'),
    ('kinetics100_clipfsar', 'train_256/air_drumming/-VtLx-mcPds_000012_000022.mp4', "'<tag>//"),
    ('kinetics100_clipfsar', 'train0//air_drumming/-VtLx-mcPds_000012_000022.mp4', '<subdir>/<class folder>/<file>'),
])
def test_bad_line(tmp_path, bench, line, why):
    f = corrupt(tmp_path, bench, 'train', 37, line)
    with pytest.raises(SplitError, match=re.escape(f'{f}, line 37: ') + '.*' + re.escape(why)):
        load_split(bench, 'train', splits_dir=tmp_path, labels_json=SHARED / 'none.json')


def test_duplicate_and_count(tmp_path):
    lines = (SHARED / 'kinetics100' / 'val.txt').read_text().splitlines()
    (tmp_path / 'val.txt').write_text('\n'.join(lines + [lines[3].replace(' ', '_')]))
    with pytest.raises(SplitError, match=f'line {len(lines) + 1}: .* already listed on line 4'):
        load_split('kinetics100', 'val', splits_dir=tmp_path)
    (tmp_path / 'val.txt').write_text('\n'.join(l for l in lines if not l.startswith('baking cookies/')))
    with pytest.raises(SplitError, match='11 classes, but the kinetics100 val split has 12'):
        load_split('kinetics100', 'val', splits_dir=tmp_path)


def test_bad_names(tmp_path):
    with pytest.raises(SplitError, match="unknown benchmark 'ucf'.*'hmdb51'"): load_split('ucf', 'train', splits_dir=SHARED)
    with pytest.raises(SplitError, match="unknown split 'testing'.*'val'"): load_split('ucf101', 'testing', splits_dir=SHARED)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'ucf101' / 'val.txt'))):
        load_split('ucf101', 'val', splits_dir=tmp_path)
    with pytest.raises(SplitError, match='no public split lists'): fetch_splits('synthetic', cache_dir=tmp_path)
    (tmp_path / 'val.txt').write_bytes(b'ApplyEyeMakeup/\xff\xfe\n')
    with pytest.raises(SplitError, match='not UTF-8'): load_split('ucf101', 'val', splits_dir=tmp_path)


def test_synthetic_default_root(tmp_path, monkeypatch):
    synthetic = pytest.importorskip('m2df.synthetic')
    (tmp_path / 'splits').mkdir()
    (tmp_path / 'splits' / 'val.txt').write_text('move_left/000\nmove_right/000\n')
    import m2df.splits
    monkeypatch.setattr(m2df.splits, 'synthetic_root', lambda cache_dir=None: tmp_path)   # the name splits looks up
    sp = load_split('synthetic', 'val')
    assert sp.class_names == ['move left', 'move right'] and sp.file == str(tmp_path / 'splits' / 'val.txt')


# --- lists that would give a silently wrong benchmark

def test_same_video_with_and_without_extension(tmp_path):
    "`cls/v` and `cls/v.mp4` resolve to one file: listing both would let one video be support and query of an episode."
    lines = (SHARED / 'ucf101' / 'val.txt').read_text().splitlines()
    (tmp_path / 'val.txt').write_text('\n'.join(lines + [lines[5] + '.MP4']) + '\n')
    with pytest.raises(SplitError, match=f'line {len(lines) + 1}: .* already listed on line 6'):
        load_split('ucf101', 'val', splits_dir=tmp_path)


def test_byte_order_mark_is_dropped(tmp_path):
    "A UTF-8 byte-order mark (written by some editors) is not part of the first class folder."
    (tmp_path / 'val.txt').write_bytes(b'\xef\xbb\xbf' + (SHARED / 'ucf101' / 'val.txt').read_bytes())
    sp = load_split('ucf101', 'val', splits_dir=tmp_path)
    assert sp.classes == load_split('ucf101', 'val', splits_dir=SHARED).classes
    assert not any('\ufeff' in c for c in sp.classes) and not sp.videos[0].path.startswith('\ufeff')


def test_class_in_two_splits_is_an_error(tmp_path):
    "The few-shot protocol scores classes never trained on: a class in two lists of a folder stops the loading."
    for s in SPLITS: shutil.copy(SHARED / 'hmdb51' / f'{s}.txt', tmp_path / f'{s}.txt')
    assert len(load_split('hmdb51', 'test', splits_dir=tmp_path).classes) == 10      # the real lists are disjoint
    val = (tmp_path / 'val.txt').read_text().splitlines()
    train_line = (tmp_path / 'train.txt').read_text().splitlines()[0]
    cls = train_line.split('/')[0]
    (tmp_path / 'val.txt').write_text('\n'.join(val[:-1] + [f'{cls}/some_other_video']) + '\n')
    for split, other in (('train', 'val'), ('val', 'train')):
        with pytest.raises(SplitError, match=f"class '{cls}' is also in the {other} split") as e:
            load_split('hmdb51', split, splits_dir=tmp_path)
        assert str(tmp_path / f'{split}.txt') in str(e.value) and str(tmp_path / f'{other}.txt') in str(e.value)


def test_too_small_class_names_settable_fields(tmp_path):
    "The error for a class with fewer than shot+query videos points at config fields a user can set, not at a Python-only argument."
    from m2df.episodes import EpisodeSampler
    (tmp_path / 'train.txt').write_text(''.join(f'{c}/{c}_{i}\n' for c, n in (('a', 3), ('b', 3), ('c', 1)) for i in range(n)))
    sp = load_split('synthetic', 'train', splits_dir=tmp_path)
    with pytest.raises(ValueError) as e: EpisodeSampler(sp, 2, 1, 2)
    msg = str(e.value)
    assert "'c' (1)" in msg and 'config fields shot or query' in msg and 'min_videos_ok' not in msg, msg


def _package_copy(tmp_path, monkeypatch):
    "A copy of the package's split lists that `packaged_splits_dir` reads instead of the installed ones."
    from importlib import resources
    shutil.copytree(packaged_splits_dir('ucf101'), tmp_path / 'm2df' / 'data' / 'splits')
    real = resources.files
    monkeypatch.setattr(resources, 'files', lambda pkg: tmp_path / 'm2df' if pkg == 'm2df' else real(pkg))
    return tmp_path / 'm2df' / 'data' / 'splits'


def test_packaged_lists_are_read_offline_with_no_settings(monkeypatch, tmp_path):
    monkeypatch.setenv('M2DF_CACHE', str(tmp_path / 'nothing-here'))
    monkeypatch.setattr(m2df.splits, 'fetch_splits', lambda *a, **k: pytest.fail('downloaded although the lists ship'))
    for b in ('ucf101', 'hmdb51', 'kinetics100', 'kinetics100_clipfsar', 'ssv2_small', 'ssv2_full'):
        for s in SPLITS:
            f = packaged_splits_dir(b) / b / f'{s}.txt'
            assert file_sha256(f) == BENCHMARKS[b].sha256[s], f
    sp = load_split('hmdb51', 'test')
    assert sp.file == str(packaged_splits_dir('hmdb51') / 'hmdb51' / 'test.txt') and len(sp.classes) == 10
    assert not (tmp_path / 'nothing-here').exists()


def test_altered_packaged_list_is_an_error_naming_it(monkeypatch, tmp_path):
    d = _package_copy(tmp_path, monkeypatch)
    f = d / 'hmdb51' / 'val.txt'
    f.write_bytes(f.read_bytes() + b'kick/extra_video\n')
    with pytest.raises(SplitError, match=f"{re.escape(str(f))}: sha256 .* pinned at {BENCHMARKS['hmdb51'].sha256['val']}"):
        load_split('hmdb51', 'test')
    assert packaged_splits_dir('ucf101') == d   # the other benchmarks are untouched


def test_missing_packaged_list_falls_back_to_the_verified_download(monkeypatch, tmp_path):
    d = _package_copy(tmp_path, monkeypatch)
    (d / 'ucf101' / 'val.txt').unlink()
    assert packaged_splits_dir('ucf101') is None
    calls = []
    monkeypatch.setattr(m2df.splits, 'fetch_splits', lambda b, c=None: calls.append(b) or SHARED / b)
    assert len(load_split('ucf101', 'val').classes) == 10 and calls == ['ucf101']
