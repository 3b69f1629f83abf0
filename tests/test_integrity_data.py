"Data integrity: duplicate lines by the lookup's own rule, a feature cache keyed by the videos, prepare's history, clear weight-file errors."
import json, os, shutil, unicodedata, warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import m2df.evaluate as E
from m2df.encoders import NotAWeightsFile, load_clip_model
from m2df.evaluate import FeatureCache, encode_videos, feature_key
from m2df.model import M2DF
from m2df.prepare import PrepareSettingsError, prepare_benchmark, read_prepare_records
from m2df.splits import SplitError, VideoRecord, load_split
from m2df.synthetic import synthetic_root
from m2df.video import resolve_video

from conftest import tiny

NFC, NFD = unicodedata.normalize('NFC', 'café'), unicodedata.normalize('NFD', 'café')


def lists(tmp_path, **splits) -> Path:
    "A folder of split lists `<split>.txt` with the given lines."
    d = tmp_path / 'lists'; d.mkdir(exist_ok=True)
    for s, lines in splits.items(): (d / f'{s}.txt').write_text(''.join(l + '\n' for l in lines), encoding='utf-8')
    return d


# --- 6. duplicates by the lookup's rule: letter case and Unicode normal form

def test_video_listed_twice_in_another_letter_case_is_refused_naming_both_lines(tmp_path):
    root = tmp_path / 'videos'; (root / 'bounce').mkdir(parents=True); (root / 'bounce' / 'bounce_000.mp4').write_bytes(b'x')
    # the lookup takes both spellings to one file ...
    assert resolve_video(root, 'bounce/BOUNCE_000') == resolve_video(root, 'bounce/Bounce_000') == root / 'bounce' / 'bounce_000.mp4'
    # ... so the list holding both is refused, naming both lines
    d = lists(tmp_path, test=['jump/a', 'bounce/BOUNCE_000', 'jump/b', 'bounce/Bounce_000'])
    with pytest.raises(SplitError) as e: load_split('synthetic', 'test', splits_dir=d)
    assert str(e.value) == (f"{d / 'test.txt'}, line 4: video 'bounce/Bounce_000' of class 'bounce' is already listed on line 2 as "
                            f"'bounce/BOUNCE_000' (the video lookup ignores letter case, Unicode normal form and the file extension: one file)")


def test_video_name_in_nfc_and_nfd_is_one_video(tmp_path):
    d = lists(tmp_path, test=[f'jump/{NFC}_1', 'jump/b', f'jump/{NFD}_1.MP4'])
    with pytest.raises(SplitError, match=f"line 3: video 'jump/{NFD}_1.MP4' of class 'jump' is already listed on line 1 as 'jump/{NFC}_1'"):
        load_split('synthetic', 'test', splits_dir=d)


def test_class_in_nfc_and_nfd_is_one_class_with_one_prompt(tmp_path):
    assert NFC != NFD                                      # two strings, one text
    d = lists(tmp_path, test=[f'{NFC}/a', 'jump/b', f'{NFD}/c', f'{NFD}/d'])
    sp = load_split('synthetic', 'test', splits_dir=d)
    assert sp.classes == [NFC, 'jump'] and sp.class_names == [NFC, 'jump']
    assert [(v.path, v.label) for v in sp.videos] == [(f'{NFC}/a', 0), ('jump/b', 1), (f'{NFD}/c', 0), (f'{NFD}/d', 0)]
    assert {i: len(v) for i, v in sp.by_class().items()} == {0: 3, 1: 1}


def test_class_in_nfd_in_one_split_and_nfc_in_another_is_shared(tmp_path):
    d = lists(tmp_path, train=[f'{NFC}/a', 'jump/b'], test=['spin/c', f'{NFD}/d'])
    with pytest.raises(SplitError, match=f"line 2: class '{NFC}' is also in the train split .*line 1"):
        load_split('synthetic', 'test', splits_dir=d)


def test_class_folders_differing_only_in_case_are_refused_naming_both_lines(tmp_path):
    d = lists(tmp_path, test=['Bounce/a', 'jump/b', 'bounce/c'])
    with pytest.raises(SplitError, match="test.txt, line 3: class 'bounce' differs only in letter case from class 'Bounce' on line 1"):
        load_split('synthetic', 'test', splits_dir=d)


def test_kinetics_spellings_still_merge_and_distinct_videos_pass(tmp_path):
    from m2df.splits import BENCHMARKS, read_split_file
    f = tmp_path / 'k.txt'; f.write_text('air drumming/v1\nair_drumming/v2\nair drumming/V3\n')
    _, rows, keys = read_split_file(f, BENCHMARKS['kinetics100'])
    assert keys == ['air_drumming'] * 3
    f.write_text('air drumming/v1\nair_drumming/V1\n')        # one video under both spellings and in two cases
    with pytest.raises(SplitError, match="line 2: video 'air_drumming/V1' of class 'air_drumming' is already listed on line 1"):
        read_split_file(f, BENCHMARKS['kinetics100'])


# --- 8. the feature cache follows the videos, and survives a damaged file

@pytest.fixture
def small_root(tmp_path):
    "A data root holding copies of three validation videos of the synthetic benchmark (two classes)."
    sp = load_split('synthetic', 'val')
    by = sp.by_class()
    recs = [by[0][0], by[0][1], by[1][0]]
    for r in recs:
        src = resolve_video(synthetic_root() / 'videos', r.path)
        dst = tmp_path / 'data' / Path(r.path).parent / src.name
        dst.parent.mkdir(parents=True, exist_ok=True); shutil.copyfile(src, dst)
    return tmp_path / 'data', recs


@pytest.fixture(scope='module')
def frozen_model():
    torch.manual_seed(0)
    return M2DF(tiny(freeze_backbone=True)).eval()


def fresh(model, cfg, records) -> dict:
    "Features encoded now, without any cache."
    return encode_videos(model, records, cfg)


@pytest.mark.parametrize('persist', [False, True])
def test_a_video_replaced_in_place_is_encoded_again(small_root, frozen_model, tmp_path, persist):
    root, (a, b, other) = small_root
    cfg = tiny(freeze_backbone=True, data_root=str(root))
    cache = FeatureCache(tmp_path / 'features')
    before = dict(cache.get(frozen_model, cfg, 'val', [a, b], persist=persist))   # the store itself is updated in place
    torch.testing.assert_close(before[a.path], fresh(frozen_model, cfg, [a])[a.path])
    # replace a's file in place with another video of another class (same path, other bytes, other time)
    fa = resolve_video(root, a.path)
    shutil.copyfile(resolve_video(root, other.path), fa)
    os.utime(fa, ns=(fa.stat().st_atime_ns, fa.stat().st_mtime_ns + 10**9))
    calls, real = [], E.encode_videos
    def counting(model, records, cfg, **kw): calls.append([r.path for r in records]); return real(model, records, cfg, **kw)
    E.encode_videos = counting
    try:
        cache = FeatureCache(tmp_path / 'features') if persist else cache   # persisted: a new cache reads the file
        after = dict(cache.get(frozen_model, cfg, 'val', [a, b], persist=persist))
    finally: E.encode_videos = real
    assert calls == [[a.path]]                                           # only the replaced video, once
    new = fresh(frozen_model, cfg, [other])[other.path]                  # the replacement's own features
    assert not torch.allclose(new, before[a.path])
    torch.testing.assert_close(after[a.path], new)
    torch.testing.assert_close(after[b.path], before[b.path])
    # the same bytes with a new modification time (copied back, touched): encoded again, to the same numbers
    fb = resolve_video(root, b.path)
    os.utime(fb, ns=(fb.stat().st_atime_ns, fb.stat().st_mtime_ns + 10**9))
    E.encode_videos = counting
    try: again = cache.get(frozen_model, cfg, 'val', [a, b], persist=persist)
    finally: E.encode_videos = real
    assert calls == [[a.path], [b.path]]
    torch.testing.assert_close(again[b.path], before[b.path])


def test_a_frame_folder_with_a_frame_replaced_is_encoded_again(tmp_path, frozen_model):
    from m2df.prepare import prepare_video
    sp = load_split('synthetic', 'val')
    r = sp.videos[0]
    folder = tmp_path / 'data' / r.path
    prepare_video(resolve_video(synthetic_root() / 'videos', r.path), folder, 'frames')
    cfg = tiny(freeze_backbone=True, data_root=str(tmp_path / 'data'))
    cache = FeatureCache()
    before = cache.get(frozen_model, cfg, 'val', [r])[r.path].clone()
    frames = sorted(folder.iterdir())
    for f in frames[1:]: shutil.copyfile(frames[0], f)                   # every frame now shows the first one
    want = fresh(frozen_model, cfg, [r])[r.path]
    assert not torch.allclose(want, before)
    torch.testing.assert_close(cache.get(frozen_model, cfg, 'val', [r])[r.path], want)


def cache_file(cache, model, cfg) -> Path: return cache.root / f'{feature_key(model, cfg, "val")}.pt'


@pytest.mark.parametrize('damage', ['empty', 'truncated'])
def test_a_damaged_cache_file_is_named_set_aside_and_rebuilt(small_root, frozen_model, tmp_path, damage):
    root, recs = small_root
    cfg = tiny(freeze_backbone=True, data_root=str(root))
    FeatureCache(tmp_path / 'features').get(frozen_model, cfg, 'val', recs, persist=True)
    f = cache_file(FeatureCache(tmp_path / 'features'), frozen_model, cfg)
    data = f.read_bytes()
    f.write_bytes(b'' if damage == 'empty' else data[:len(data) // 2])
    damaged = f.read_bytes()
    with pytest.warns(UserWarning) as w:
        got = FeatureCache(tmp_path / 'features').get(frozen_model, cfg, 'val', recs, persist=True)
    msgs = [str(x.message) for x in w if 'feature cache' in str(x.message)]
    assert len(msgs) == 1 and str(f) in msgs[0] and f'moved aside to {f.name}.damaged' in msgs[0]
    if damage == 'empty': assert '(empty file)' in msgs[0]
    aside = f.with_name(f.name + '.damaged')
    assert aside.read_bytes() == damaged                                 # kept, not deleted
    want = fresh(frozen_model, cfg, recs)
    for r in recs: torch.testing.assert_close(got[r.path], want[r.path])
    # the rebuilt file is whole: a new cache reads it without encoding anything or warning
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        again = FeatureCache(tmp_path / 'features')
        assert set(again._load(f)[0]) == {r.path for r in recs}
    # a second damage does not overwrite the first one set aside
    f.write_bytes(b'')
    with pytest.warns(UserWarning, match=r'\.damaged\.1'): FeatureCache(tmp_path / 'features').get(frozen_model, cfg, 'val', recs, persist=True)
    assert aside.read_bytes() == damaged and f.with_name(f.name + '.damaged.1').stat().st_size == 0


# --- 9. prepare.json: one record per invocation, and other settings are refused

@pytest.fixture
def download(tmp_path):
    "The synthetic benchmark as a download in class folders (links to its videos)."
    src = tmp_path / 'download'
    shutil.copytree(synthetic_root() / 'videos', src, symlinks=False, copy_function=os.symlink)
    return src


def prep(src, dst, **kw):
    return prepare_benchmark('synthetic', src, dst, splits_dir=synthetic_root() / 'splits', workers=1, progress=False, limit=1, **kw)


def test_prepare_appends_one_record_per_invocation(download, tmp_path):
    dst = tmp_path / 'prepared'
    first = prep(download, dst)
    assert (first['videos'], first['done'], first['status'], first['quality']) == (3, 3, 'finished', 90)
    second = prep(download, dst)
    assert (second['done'], second['skipped']) == (0, 3)
    records = json.loads((dst / 'prepare.json').read_text())
    assert records == [first, second] == read_prepare_records(dst)


def test_the_old_single_summary_is_read_as_one_record_and_kept(download, tmp_path):
    dst = tmp_path / 'prepared'
    prep(download, dst)
    old = {k: v for k, v in read_prepare_records(dst)[0].items() if k not in ('status', 'started', 'finished')}
    old['crf'] = 20                                                     # the old summary held both quality and crf
    (dst / 'prepare.json').write_text(json.dumps(old, indent=1))
    assert read_prepare_records(dst) == [old]
    new = prep(download, dst)
    assert read_prepare_records(dst) == [old, new]


@pytest.mark.parametrize('change, says', [(dict(quality=70), "quality: 90 then, 70 now"),
                                          (dict(short_side=128), "short_side: 256 then, 128 now"),
                                          (dict(mode='video'), "mode: 'frames' then, 'video' now; quality: 90 then, None now; crf: None then, 20 now")])
def test_a_second_prepare_with_other_settings_is_refused_saying_which(download, tmp_path, change, says):
    dst = tmp_path / 'prepared'
    prep(download, dst)
    history = (dst / 'prepare.json').read_bytes()
    outputs = {p: p.stat().st_mtime_ns for p in dst.rglob('*.jpg')}
    with pytest.raises(PrepareSettingsError) as e: prep(download, dst, **change)
    msg = str(e.value)
    assert msg.startswith(f'{dst / "prepare.json"}: 3 of the 3 videos asked for were prepared here with other settings (record 1, ')
    assert says in msg and 'approach_and_return/approach_and_return_000' in msg and 'nothing was changed' in msg
    assert (dst / 'prepare.json').read_bytes() == history                # nothing rewritten ...
    assert {p: p.stat().st_mtime_ns for p in dst.rglob('*.jpg')} == outputs and not list(dst.rglob('*.mp4'))   # ... or written
    # the same settings go on; once the earlier outputs are deleted, the other settings are accepted and recorded
    assert prep(download, dst)['skipped'] == 3
    for d in [p for p in dst.iterdir() if p.is_dir()]: shutil.rmtree(d)
    redo = prep(download, dst, **change)
    assert redo['done'] == 3 and len(read_prepare_records(dst)) == 3


def test_an_interrupted_prepare_records_what_it_finished(download, tmp_path, monkeypatch):
    import m2df.prepare as P
    dst, real, calls = tmp_path / 'prepared', P.prepare_video, []
    def once_then_interrupt(*a, **kw):
        calls.append(a[0])
        if len(calls) == 2: raise KeyboardInterrupt
        return real(*a, **kw)
    monkeypatch.setattr(P, 'prepare_video', once_then_interrupt)
    with pytest.raises(KeyboardInterrupt): prep(download, dst)
    [r] = read_prepare_records(dst)
    assert (r['status'], r['error'], r['videos'], r['done'], r['quality']) == ('interrupted', 'KeyboardInterrupt: ', 1, 1, 90)
    monkeypatch.setattr(P, 'prepare_video', real)
    assert prep(download, dst)['done'] == 2 and [r['status'] for r in read_prepare_records(dst)] == ['interrupted', 'finished']


def test_an_unreadable_prepare_json_is_named_and_left_alone(download, tmp_path):
    dst = tmp_path / 'prepared'; dst.mkdir()
    (dst / 'prepare.json').write_text('{"benchmark": "synth')
    with pytest.raises(ValueError, match='prepare.json cannot be read .*left as it is'): prep(download, dst)
    assert (dst / 'prepare.json').read_text() == '{"benchmark": "synth'


# --- 10. weight files: the key and both shapes; the backbone and the file's format

def test_a_misshaped_key_names_the_key_and_both_shapes(tmp_path):
    sd = load_clip_model('m2df-tiny-rn').state_dict()
    torch.save(dict(sd, positional_embedding=torch.zeros(77)), tmp_path / 'bad.pt')
    with pytest.raises(ValueError) as e: load_clip_model('m2df-tiny-rn', str(tmp_path / 'bad.pt'))
    assert str(e.value) == (f"checkpoint {str(tmp_path / 'bad.pt')!r} does not fit open_clip model 'm2df-tiny-rn': 1 tensor(s) have "
                            f"the wrong shape: positional_embedding is [77] in the file, [77, 64] in the model")
    sd2 = load_clip_model('m2df-tiny-vit').state_dict()
    torch.save(dict(sd2, **{'visual.conv1.weight': torch.zeros(64, 3, 4, 4), 'logit_scale': torch.zeros(2)}), tmp_path / 'bad2.pt')
    with pytest.raises(ValueError, match=r'2 tensor\(s\) have the wrong shape: logit_scale is \[2\] in the file, \[\] in the model; '
                                         r'visual.conv1.weight is \[64, 3, 4, 4\] in the file, \[64, 3, 8, 8\] in the model$'):
        load_clip_model('m2df-tiny-vit', str(tmp_path / 'bad2.pt'))
    # a text positional embedding of another length is still resized, as open_clip does
    torch.save(dict(sd, positional_embedding=sd['positional_embedding'][:40]), tmp_path / 'short.pt')
    load_clip_model('m2df-tiny-rn', str(tmp_path / 'short.pt'))


@pytest.mark.parametrize('name, tower', [('m2df-tiny-rn', 'ModifiedResNet'), ('m2df-tiny-vit', 'VisionTransformer')])
def test_an_npz_for_a_model_it_cannot_fit_names_the_backbone_and_the_format(tmp_path, name, tower):
    np.savez(tmp_path / 'w.npz', a=np.zeros(3))
    with pytest.raises(NotAWeightsFile) as e: load_clip_model(name, str(tmp_path / 'w.npz'))
    msg = str(e.value)
    assert msg.startswith(f"checkpoint {str(tmp_path / 'w.npz')!r} is big_vision numpy weights (.npz), which open_clip reads only "
                          f"into SigLIP models with a timm image tower")
    assert f"backbone {name!r} has a {tower} image tower" in msg and 'trunk' not in msg
