"Tests of the KARMMA data layer: the synthetic multimodal benchmark, SSv2 / Epic-Kitchens readers, the dataset, the batch contract, the feature store."
import dataclasses, json, os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import m2df.karmma.data as kd
from m2df.karmma.data import (KARMMA_CLASSES, KARMMA_CLASS_NAMES, KARMMA_MARKER, SoundDesign, ClipRecord, KarmmaSplit,
                              AnnotationError, KarmmaDataset, collate_modalities, karmma_loader,
                              make_karmma_synthetic, karmma_synthetic_params, karmma_video, motion_sound, with_colour_family,
                              load_karmma_synthetic, load_ssv2, load_epic, read_epic_classes, segment_indices,
                              audio_window, ssv2_class)
from m2df.karmma.modalities import (read_audio, log_mel_spectrogram, mel_centres, ModalityError, AudioSpec)
from m2df.synthetic import sample_video_params, video_rng, clip_states, render_clip
from m2df.video import read_frames, VideoError, write_video

SPLITS = ('train', 'val', 'test')
torch.set_num_threads(1)

@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "Two generations with seed 0 and one with seed 1, 5 videos per class (3/1/1)."
    base = tmp_path_factory.mktemp('karmma')
    return {k: make_karmma_synthetic(base / k, seed=s, videos_per_class=5) for k, s in (('a', 0), ('b', 0), ('c', 1))}

def lines(root, s): return (Path(root) / 'splits' / f'{s}.txt').read_text().split()
def silent(root): return set((Path(root) / 'audio_missing.txt').read_text().split())

def pitch_rise(wave):
    "Rise (mel filters, fitted line) of the peak filter over the loud frames of `wave`."
    S = log_mel_spectrogram(wave)[0]
    loud = S.max(0).values > S.max() - 3
    peak = S.argmax(0)[loud].numpy()
    return np.polyfit(np.arange(len(peak)), peak, 1)[0] * len(peak)

# --- the synthetic benchmark

def test_classes_are_the_product_of_three_factors():
    assert len(KARMMA_CLASSES) == 24 == len(set(KARMMA_CLASS_NAMES))
    assert KARMMA_CLASS_NAMES == sorted(KARMMA_CLASS_NAMES)
    assert {(c.motion, c.colour, c.sound) for c in KARMMA_CLASSES} == \
        {(m, c, s) for m in kd.KARMMA_MOTIONS for c in kd.COLOUR_HUES for s in kd.SOUNDS}

def test_every_class_in_every_split(tiny):
    for s, n in zip(SPLITS, (3, 1, 1)):
        ls = lines(tiny['a'], s)
        assert len(ls) == 24 * n
        assert sorted({l.split('/')[0] for l in ls}) == KARMMA_CLASS_NAMES
    assert not set(lines(tiny['a'], 'train')) & set(lines(tiny['a'], 'test'))

def test_deterministic_by_seed(tiny):
    a, b, c = tiny['a'], tiny['b'], tiny['c']
    for s in SPLITS: assert lines(a, s) == lines(b, s) == lines(c, s)
    assert silent(a) == silent(b)
    assert json.loads((a / KARMMA_MARKER).read_text())['params'] == json.loads((b / KARMMA_MARKER).read_text())['params']
    shown = [l for l in lines(a, 'test') if l not in silent(a) and l not in silent(c)][:4]
    for l in shown:
        pa, pb, pc = (r / 'videos' / f'{l}.mp4' for r in (a, b, c))
        assert np.array_equal(read_frames(pa, [0, 5, 10]), read_frames(pb, [0, 5, 10]))
        assert np.array_equal(read_audio(pa), read_audio(pb))
        assert not np.array_equal(read_frames(pa, [0]), read_frames(pc, [0]))
        ra, rc = read_audio(pa), read_audio(pc)
        assert len(ra) != len(rc) or not np.allclose(ra, rc, atol=1e-3)

def test_missing_audio_videos(tiny):
    root = tiny['a']
    miss = silent(root)
    for s, n in zip(SPLITS, (7, 2, 2)):                       # round(10 % of 72, 24, 24)
        assert len(miss & set(lines(root, s))) == n
    for l in lines(root, 'test'):
        a = read_audio(root / 'videos' / f'{l}.mp4')
        assert (a is None) == (l in miss), l

def test_files_hold_the_rendered_video_and_sound(tiny):
    root = tiny['a']
    l = next(l for l in lines(root, 'val') if l not in silent(root))
    cls, idx = l.split('/')[0], int(l[-3:])
    frames, audio, p = karmma_video(cls, idx)
    dec = read_frames(root / 'videos' / f'{l}.mp4', range(len(frames)))
    assert np.abs(dec.astype(float) - frames).mean() < 3
    a = read_audio(root / 'videos' / f'{l}.mp4')
    assert len(a) == len(audio)
    assert np.abs(a - audio).max() <= 2 ** -15 + 1e-7                    # lossless audio: the waveform up to 16-bit rounding

def x264_settings(path):
    "The options string libx264 writes into the stream (an SEI message), e.g. 'rc=crf ... crf=18.0'."
    import re
    m = re.search(rb'x264 - core[^\x00]*', Path(path).read_bytes())
    return m.group(0).decode('latin1') if m else ''

def test_videos_are_encoded_losslessly(tiny):
    "Lossless video (libx264 qp 0) and audio (FLAC): the same data at every generation, whatever the encoder's choices."
    import av
    root = tiny['a']
    for l in lines(root, 'test')[:6]:
        f = root / 'videos' / f'{l}.mp4'
        opts = x264_settings(f).split()
        assert 'rc=cqp' in opts and 'qp=0' in opts, (l, opts[:8])
        with av.open(str(f)) as c:
            assert [s.codec_context.name for s in c.streams.audio] == ([] if l in silent(root) else ['flac']), l

def test_colour_family_is_visible():
    for c in KARMMA_CLASSES[:8]:
        _, _, p = karmma_video(c, 0)
        import colorsys
        h = colorsys.rgb_to_hsv(*p.colours[0])[0]
        lo, hi = kd.COLOUR_HUES[c.colour]
        assert lo <= h <= hi or lo <= h - 1 <= hi, (c, h)

def test_audio_cannot_tell_left_from_right_but_video_can():
    p = with_colour_family(sample_video_params(video_rng(3, 't', 0)), 'cool', np.random.default_rng(0))
    q = dataclasses.replace(p, s0=1 - p.s1, s1=1 - p.s0)                 # the mirrored timing
    snd = lambda m, pp: motion_sound(clip_states(m, pp), pp, 'buzz', 12, 16_000, np.random.default_rng(5))
    assert np.array_equal(snd('move_left', p), snd('move_right', q))
    assert not np.array_equal(render_clip('move_left', p), render_clip('move_right', q))
    assert np.array_equal(snd('rotate_clockwise', p), snd('rotate_counterclockwise', q))

def test_pitch_follows_height_and_loudness_speed():
    p = with_colour_family(sample_video_params(video_rng(4, 't', 1)), 'warm', np.random.default_rng(0))
    snd = lambda m, pp=p, sound='bell': motion_sound(clip_states(m, pp), pp, sound, 12, 16_000, np.random.default_rng(5))
    assert pitch_rise(snd('move_up')) > 4 and pitch_rise(snd('move_down')) < -4
    assert abs(pitch_rise(snd('move_right'))) < 1
    d = SoundDesign()
    fast = dataclasses.replace(p, amp=1.2, s0=0.0, s1=0.85)
    slow = dataclasses.replace(p, amp=0.8, s0=0.0, s1=1.0)
    rms = lambda w: float(np.sqrt((w[1000:-1000] ** 2).mean()))
    assert rms(snd('move_right', fast)) > rms(snd('move_right', slow)) * 1.2
    still = dataclasses.replace(p, s0=0.98, s1=1.0)
    assert rms(snd('move_right', still)[:10_000]) < 3 * d.noise

def test_audio_in_the_files_depends_on_motion(tiny):
    "Decoded from the mp4 files: up raises the pitch, down lowers it, buzz has harmonics, bell none."
    root = tiny['a']
    slopes = {}
    for l in lines(root, 'train'):
        if l in silent(root): continue
        c = kd._karmma_class(l.split('/')[0])
        if c.motion in ('move_up', 'move_down'):
            slopes.setdefault(c.motion, []).append(pitch_rise(read_audio(root / 'videos' / f'{l}.mp4')))
    assert min(slopes['move_up']) > 3 and max(slopes['move_down']) < -3, slopes
    def harmonic_excess(l):
        S = log_mel_spectrogram(read_audio(root / 'videos' / f'{l}.mp4'))[0]
        loud = S.max(0).values > S.max() - 3
        f0 = int(S.argmax(0)[loud].median())
        h2 = int(np.abs(mel_centres() - 2 * mel_centres()[f0]).argmin())
        return float((S[h2, loud] - S[f0, loud]).mean())
    bell = [harmonic_excess(l) for l in lines(root, 'train') if l not in silent(root) and l.split('/')[0].endswith('_bell')
            and 'rotate' not in l][:8]
    buzz = [harmonic_excess(l) for l in lines(root, 'train') if l not in silent(root) and l.split('/')[0].endswith('_buzz')
            and 'rotate' not in l][:8]
    assert max(bell) + 3 < min(buzz), (bell, buzz)

def test_generation_parameters_are_checked(tmp_path):
    with pytest.raises(ValueError, match='leaves a split empty'): karmma_synthetic_params(videos_per_class=2)
    with pytest.raises(ValueError, match='unknown parameters'): karmma_synthetic_params(videos=3)
    with pytest.raises(ValueError, match='missing_audio'): karmma_synthetic_params(missing_audio=1.5)
    with pytest.raises(ValueError, match='fractions'): karmma_synthetic_params(fractions=(0.5, 0.5, 0.5))
    (tmp_path / 'mine').mkdir(); (tmp_path / 'mine' / 'notes.txt').write_text('x')
    with pytest.raises(FileExistsError, match='refusing to overwrite'): make_karmma_synthetic(tmp_path / 'mine', videos_per_class=5)
    assert (tmp_path / 'mine' / 'notes.txt').exists()

def test_reuse_is_a_no_op(tiny):
    root = tiny['a']
    t = (root / KARMMA_MARKER).stat().st_mtime
    make_karmma_synthetic(root, seed=0, videos_per_class=5)
    assert (root / KARMMA_MARKER).stat().st_mtime == t
    assert not list(root.parent.glob('.a.tmp-*'))

# --- dataset and collate on the synthetic benchmark

def test_dataset_items_and_shapes(tiny):
    ds = KarmmaDataset(tiny['a'], 'test', frames=8, size=56)
    assert ds.classes == KARMMA_CLASS_NAMES and len(ds) == 24
    it = ds[0]
    for m, shape in ds.shapes.items(): assert tuple(it[m].shape) == shape, m
    assert it['label'] == KARMMA_CLASS_NAMES.index(it['id'].split('/')[0])
    assert it['flow'].abs().max() <= 1
    assert torch.equal(ds[5]['rgb'], ds[5]['rgb']) and torch.equal(ds[5]['audio'], ds[5]['audio'])
    only = KarmmaDataset(tiny['a'], 'test', modalities=('audio',))
    assert sorted(only[0]) == ['audio', 'id', 'label', 'view']
    with pytest.raises(ValueError, match='modalities'): KarmmaDataset(tiny['a'], 'test', modalities=('rgb', 'depth'))
    with pytest.raises(ValueError, match='boxes'): KarmmaDataset(tiny['a'], 'test', modalities=('rgb', 'boxes'))
    with pytest.raises(ValueError, match='unknown split'): KarmmaDataset(tiny['a'], 'dev')

def test_flow_sign_on_synthetic_motion(tiny):
    ds = KarmmaDataset(tiny['a'], 'train', modalities=('flow',), frames=8, size=56)
    for i, r in enumerate(ds.records):
        c = kd._karmma_class(r.id.split('/')[0])
        if c.motion not in ('move_right', 'move_left', 'move_up', 'move_down'): continue
        f = ds[i]['flow']
        mag = f.norm(dim=1)
        w = (mag > 0.05).float()
        mx, my = float((f[:, 0] * w).sum() / w.sum()), float((f[:, 1] * w).sum() / w.sum())
        want = dict(move_right=(1, 0), move_left=(-1, 0), move_up=(0, -1), move_down=(0, 1))[c.motion]
        main, other = (mx, my) if want[0] else (my, mx)
        assert np.sign(main) == sum(want) and abs(main) > 2 * abs(other), (r.id, mx, my)

def test_missing_audio_is_marked_not_present(tiny):
    root = tiny['a']
    ds = KarmmaDataset(root, 'val')
    gone = [i for i, r in enumerate(ds.records) if r.id in silent(root)]
    here = [i for i, r in enumerate(ds.records) if r.id not in silent(root)]
    assert len(gone) == 2
    assert ds[gone[0]]['audio'] is None
    b = ds.collate([ds[here[0]], ds[gone[0]], ds[here[1]], ds[gone[1]]])
    assert b['present']['audio'].tolist() == [True, False, True, False]
    assert b['inputs']['audio'].shape == (4, *ds.shapes['audio'])
    assert b['inputs']['audio'][[1, 3]].abs().sum() == 0 and b['inputs']['audio'][0].abs().sum() > 0
    assert b['present']['rgb'].all() and b['present']['flow'].all()
    assert b['id'] == [ds.records[i].id for i in (here[0], gone[0], here[1], gone[1])]
    assert b['label'].tolist() == [ds.records[i].label for i in (here[0], gone[0], here[1], gone[1])]
    assert set(b) == {'id', 'view', 'label', 'inputs', 'present'} and set(b['inputs']) == set(b['present']) == {'rgb', 'flow', 'audio'}

def test_training_sampling_varies_by_epoch_and_flip(tiny):
    root = tiny['a']
    tr = KarmmaDataset(root, 'train', train=True, seed=3)
    x0 = tr[0]['rgb']
    assert torch.equal(x0, tr[0]['rgb'])
    tr.set_epoch(1)
    assert not torch.equal(x0, tr[0]['rgb'])
    on = KarmmaDataset(root, 'train', train=True, seed=3, flip=True)
    off = KarmmaDataset(root, 'train', train=True, seed=3, flip=False)
    flipped = 0
    for i in range(12):
        a, b = on[i], off[i]
        if torch.equal(a['rgb'], b['rgb']): assert torch.equal(a['flow'], b['flow']); continue
        flipped += 1
        assert torch.allclose(a['rgb'], b['rgb'].flip(-1))
        assert torch.allclose(a['flow'][:, 0], -b['flow'][:, 0].flip(-1)) and torch.allclose(a['flow'][:, 1], b['flow'][:, 1].flip(-1))
    assert 0 < flipped < 12

def test_loader(tiny):
    ds = KarmmaDataset(tiny['a'], 'test', frames=4, size=48)
    batches = list(karmma_loader(ds, batch_size=10))
    assert [len(b['id']) for b in batches] == [10, 10, 4]
    assert batches[0]['inputs']['rgb'].shape == (10, 4, 3, 48, 48)
    assert sum(int((~b['present']['audio']).sum()) for b in batches) == 2
    again = next(iter(karmma_loader(ds, batch_size=10)))
    assert torch.equal(again['inputs']['flow'], batches[0]['inputs']['flow'])

# --- collate contract

def _item(i, label, **mods): return {'id': f'c{i}', 'label': label, **mods}

def test_collate_verb_noun_and_errors():
    a = _item(0, {'verb': 1, 'noun': 7}, rgb=torch.ones(2, 3, 4, 4), audio=None)
    b = _item(1, {'verb': 4, 'noun': 2}, rgb=torch.zeros(2, 3, 4, 4), audio=torch.ones(1, 5, 6))
    out = collate_modalities([a, b])
    assert set(out) == {'id', 'verb', 'noun', 'inputs', 'present'}
    assert out['verb'].tolist() == [1, 4] and out['noun'].tolist() == [7, 2] and out['verb'].dtype == torch.long
    assert out['present']['audio'].tolist() == [False, True] and out['inputs']['audio'].shape == (2, 1, 5, 6)
    assert out['inputs']['rgb'].dtype == torch.float32
    with pytest.raises(ValueError, match='missing from every clip'): collate_modalities([a])
    one = collate_modalities([a], shapes={'audio': (1, 5, 6)})
    assert one['inputs']['audio'].shape == (1, 1, 5, 6) and not one['present']['audio'].any()
    with pytest.raises(ValueError, match="'rgb'.*different shapes"):
        collate_modalities([a, _item(2, {'verb': 0, 'noun': 0}, rgb=torch.ones(3, 3, 4, 4), audio=None)], shapes={'audio': (1, 5, 6)})
    with pytest.raises(ValueError, match='all be ints'): collate_modalities([_item(0, 1, rgb=torch.ones(1)), _item(1, {'verb': 1}, rgb=torch.ones(1))])
    with pytest.raises(ValueError, match='different keys'):
        collate_modalities([_item(0, {'verb': 1}, rgb=torch.ones(1)), _item(1, {'noun': 1}, rgb=torch.ones(1))])
    with pytest.raises(ValueError, match='empty'): collate_modalities([])
    unl = collate_modalities([_item(0, None, rgb=torch.ones(1))])
    assert 'label' not in unl and unl['present']['rgb'].tolist() == [True]

# --- SSv2

def _ssv2_files(d):
    (d / 'labels.json').write_text(json.dumps({'Holding something': '0', 'Putting something into something': '1',
                                               'Pushing something from left to right': '2'}))
    entries = [{'id': '11', 'label': 'holding a cup', 'template': 'Holding [something]', 'placeholders': ['a cup']},
               {'id': '12', 'label': 'putting a pen into a box', 'template': 'Putting [something] into [something]', 'placeholders': ['a pen', 'a box']},
               {'id': '13', 'label': 'pushing a phone', 'template': 'Pushing [something] from left to right', 'placeholders': ['a phone']}]
    (d / 'something-something-v2-validation.json').write_text(json.dumps(entries))
    return entries

def test_ssv2_parser(tmp_path):
    _ssv2_files(tmp_path)
    sp = load_ssv2(tmp_path / 'something-something-v2-validation.json', tmp_path / 'labels.json', tmp_path / 'v', check_files=False)
    assert isinstance(sp, KarmmaSplit) and sp.name == 'validation' and sp.dataset == 'ssv2'
    assert sp.classes == ['Holding something', 'Putting something into something', 'Pushing something from left to right']
    assert [(r.id, r.label, r.line) for r in sp.records] == [('11', 0, 1), ('12', 1, 2), ('13', 2, 3)]
    assert sp.records[0].path == str(tmp_path / 'v' / '11.webm')
    assert ssv2_class('Putting [something] into [something]') == 'Putting something into something'

def test_ssv2_errors(tmp_path):
    entries = _ssv2_files(tmp_path)
    f = tmp_path / 'bad.json'
    f.write_text(json.dumps(entries + [{'id': '99', 'template': 'Juggling [something]'}]))
    with pytest.raises(AnnotationError, match=r"bad.json.*entry 4.*Juggling something"):
        load_ssv2(f, tmp_path / 'labels.json', tmp_path, check_files=False)
    f.write_text(json.dumps([{'label': 'no id'}]))
    with pytest.raises(AnnotationError, match='entry 1'): load_ssv2(f, tmp_path / 'labels.json', tmp_path, check_files=False)
    f.write_text('{"id": 1}')
    with pytest.raises(AnnotationError, match='JSON array'): load_ssv2(f, tmp_path / 'labels.json', tmp_path, check_files=False)
    with pytest.raises(AnnotationError, match='nothere.json'): load_ssv2(tmp_path / 'nothere.json', tmp_path / 'labels.json', tmp_path)
    with pytest.raises(Exception, match='nolabels.json'):
        load_ssv2(tmp_path / 'something-something-v2-validation.json', tmp_path / 'nolabels.json', tmp_path)
    with pytest.raises(AnnotationError, match=r"3 videos.*are not under"):
        load_ssv2(tmp_path / 'something-something-v2-validation.json', tmp_path / 'labels.json', tmp_path / 'videos')

def test_ssv2_end_to_end_with_boxes(tmp_path):
    _ssv2_files(tmp_path)
    vids = tmp_path / 'videos'; vids.mkdir()
    frames = np.stack([np.full((48, 64, 3), 20 * i, np.uint8) for i in range(12)])
    for v in ('11', '12', '13'): write_video(vids / f'{v}.mp4', frames, fps=12)       # SSv2 has no audio
    boxes = {'12': [{'name': '12/0002.jpg', 'labels': [{'box2d': {'x1': 0, 'y1': 0, 'x2': 32, 'y2': 24}, 'standard_category': 'hand'}]}]}
    (tmp_path / 'boxes.json').write_text(json.dumps(boxes))
    sp = load_ssv2(tmp_path / 'something-something-v2-validation.json', tmp_path / 'labels.json', vids)
    ds = KarmmaDataset(sp, modalities=('rgb', 'flow', 'audio', 'boxes'), frames=4, size=32, boxes=tmp_path / 'boxes.json')
    b = ds.collate([ds[i] for i in range(3)])
    assert b['present']['audio'].tolist() == [False] * 3
    assert b['present']['boxes'].tolist() == [False, True, False]
    assert b['inputs']['boxes'].shape == (3, 4, 4, 5)
    assert torch.allclose(b['inputs']['boxes'][1, 0, 0], torch.tensor([0., 0., 0.5, 0.5, 1.]))
    assert b['inputs']['rgb'].shape == (3, 4, 3, 32, 32) and b['label'].tolist() == [0, 1, 2]

# --- Epic-Kitchens-100

EK_HEADER = 'narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n'

def test_epic_parser(tmp_path):
    f = tmp_path / 'EPIC_100_validation.csv'
    f.write_text(EK_HEADER + 'P01_11_0,P01,P01_11,00:00:00.560,00:00:00.14,00:00:03.37,8,202,take plate,take,0,plate,2,[\'plate\'],[2]\n'
                             'P02_03_5,P02,P02_03,00:01:00.000,00:01:00.00,00:01:02.00,3000,3100,open fridge,open,3,fridge,12,[\'fridge\'],[12]\n')
    sp = load_epic(f, tmp_path / 'ek', check_files=False)
    assert sp.name == 'validation' and sp.dataset == 'epic'
    r = sp.records[1]
    assert (r.id, r.label, r.start, r.stop, r.line) == ('P02_03_5', {'verb': 3, 'noun': 12}, 2999, 3100, 3)
    assert r.path == str(tmp_path / 'ek' / 'P02' / 'videos' / 'P02_03.MP4')
    fr = load_epic(f, tmp_path / 'ek', source='frames', check_files=False)
    assert fr.records[0].path == str(tmp_path / 'ek' / 'P01' / 'rgb_frames' / 'P01_11')
    (tmp_path / 'verbs.csv').write_text('id,key,instances,category\n0,take,"[\'take\']",retrieve\n1,put,"[\'put\']",leave\n')
    assert read_epic_classes(tmp_path / 'verbs.csv', 'verb') == ['take', 'put']

def test_epic_errors(tmp_path):
    f = tmp_path / 'ann.csv'
    f.write_text('narration_id,participant_id,video_id,start_frame,stop_frame,verb_class\nx,P01,P01_01,1,5,0\n')
    with pytest.raises(AnnotationError, match=r"ann.csv.*\['noun_class'\]"): load_epic(f, tmp_path, check_files=False)
    f.write_text(EK_HEADER + 'x,P01,P01_01,,,,ten,20,,,0,,0,,\n')
    with pytest.raises(AnnotationError, match='ann.csv.* line 2'): load_epic(f, tmp_path, check_files=False)
    f.write_text(EK_HEADER + 'x,P01,P01_01,,,,10,20,,,0,,0,,\ny,P01,P01_01,,,,10,20,,,97,,0,,\n')
    with pytest.raises(AnnotationError, match=r'line 3: verb_class 97'): load_epic(f, tmp_path, check_files=False)
    f.write_text(EK_HEADER + 'x,P01,P01_01,,,,30,20,,,0,,0,,\n')
    with pytest.raises(AnnotationError, match='start <= stop'): load_epic(f, tmp_path, check_files=False)
    f.write_text(EK_HEADER + 'x,P01,P01_01,,,,10,20,,,0,,0,,\n')
    with pytest.raises(AnnotationError, match=r"P01/P01_01"): load_epic(f, tmp_path / 'ek')
    with pytest.raises(AnnotationError, match='nothere.csv'): load_epic(tmp_path / 'nothere.csv', tmp_path)
    with pytest.raises(ValueError, match='source'): load_epic(f, tmp_path, source='flow')
    (tmp_path / 'verbs.csv').write_text('id,name\n0,take\n')
    with pytest.raises(AnnotationError, match='verbs.csv'): load_epic(f, tmp_path, verb_classes=tmp_path / 'verbs.csv', check_files=False)

@pytest.fixture(scope='module')
def epic_root(tmp_path_factory):
    "P01_01 as a 30 fps video with a tone from 2 s on; P02_01 as a frame folder only."
    d = tmp_path_factory.mktemp('ek')
    (d / 'P01' / 'videos').mkdir(parents=True)
    fps, sr, n = 30, 16_000, 90
    frames = np.zeros((n, 32, 32, 3), np.uint8)
    for t in range(n): frames[t, 10:20, t % 20:t % 20 + 8] = 255
    ts = np.arange(n * sr // fps) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * ts) * (ts >= 2.0)).astype(np.float32)
    write_video(d / 'P01' / 'videos' / 'P01_01.MP4', frames, fps=fps, audio=tone, sample_rate=sr)
    fr = d / 'P02' / 'rgb_frames' / 'P02_01'; fr.mkdir(parents=True)
    for i in range(1, 41):
        im = np.zeros((24, 32, 3), np.uint8); im[8:16, i % 24:i % 24 + 8] = 200
        Image.fromarray(im).save(fr / f'frame_{i:010d}.jpg')
    (d / 'EPIC_100_train.csv').write_text(EK_HEADER +
        'P01_01_0,P01,P01_01,,,,1,15,,,2,,5,,\n'        # 0.0-0.5 s: silent
        'P01_01_1,P01,P01_01,,,,61,75,,,4,,6,,\n'       # 2.0-2.5 s: the tone
        'P02_01_0,P02,P02_01,,,,5,40,,,1,,9,,\n')       # frames only: no audio
    return d

def test_epic_end_to_end(epic_root):
    sp = load_epic(epic_root / 'EPIC_100_train.csv', epic_root)
    assert [Path(r.path).name for r in sp.records] == ['P01_01.MP4', 'P01_01.MP4', 'P02_01']
    ds = KarmmaDataset(sp, frames=4, size=24, audio_seconds=0.5)
    items = [ds[i] for i in range(3)]
    b = ds.collate(items)
    assert set(b) == {'id', 'view', 'verb', 'noun', 'inputs', 'present'}
    assert b['verb'].tolist() == [2, 4, 1] and b['noun'].tolist() == [5, 6, 9]
    assert b['present']['audio'].tolist() == [True, True, False]
    assert b['inputs']['audio'].shape == (3, 1, 64, 51)
    quiet, loud = items[0]['audio'].max().item(), items[1]['audio'].max().item()
    assert loud > quiet + 8, (quiet, loud)
    k = int(np.abs(mel_centres() - 1000).argmin())
    assert int(items[1]['audio'][0].mean(1).argmax()) == k
    assert b['inputs']['rgb'].shape == (3, 4, 3, 24, 24) and b['present']['flow'].all()

def test_epic_segment_beyond_the_video(epic_root, tmp_path):
    f = tmp_path / 'a.csv'
    f.write_text(EK_HEADER + 'P01_01_9,P01,P01_01,,,,80,120,,,0,,0,,\n')
    ds = KarmmaDataset(load_epic(f, epic_root), frames=4, size=24)
    with pytest.raises(VideoError, match=r"P01_01_9.*90 frames"): ds[0]

def test_segment_indices_and_audio_window():
    assert segment_indices(3, 6, False).tolist() == [0, 0, 1, 1, 2, 2]
    assert segment_indices(16, 4, False).tolist() == [1, 5, 9, 13]
    with pytest.raises(ValueError, match='at least one frame'): segment_indices(0, 4, False)
    assert audio_window(10., 11., 2., False) == (9.5, 11.5)
    assert audio_window(0.2, 0.4, 2., False) == (0., 2.)
    a, b = audio_window(10., 20., 2., True, np.random.default_rng(0))
    assert 10 <= a and b <= 20 and abs(b - a - 2) < 1e-9
    assert audio_window(10., 20., 2., False) == (14., 16.)

# --- precomputed flow (Epic-Kitchens flow_frames)

def write_flow_frames(folder, n, u_px, v_px, size=(24, 32), bound=20.):
    "n flow frames of constant motion (u_px, v_px) pixels, encoded as Epic-Kitchens' u/v JPEGs (128 = still, ±bound px = 255/0)."
    for d, px in (('u', u_px), ('v', v_px)):
        (folder / d).mkdir(parents=True, exist_ok=True)
        g = int(round((px / bound + 1) / 2 * 255))
        for j in range(1, n + 1): Image.fromarray(np.full(size, g, np.uint8)).save(folder / d / f'frame_{j:010d}.jpg', quality=100)

def test_precomputed_flow_is_read_when_it_exists(epic_root, tmp_path):
    "A frames-only video with its TV-L1 flow folders (Epic-Kitchens layout: 256-px frames, one flow frame per 2 RGB frames)."
    fr = tmp_path / 'P03' / 'rgb_frames' / 'P03_01'; fr.mkdir(parents=True)
    for i in range(1, 41): Image.fromarray(np.full((256, 320, 3), 6 * i, np.uint8)).save(fr / f'frame_{i:010d}.jpg')
    fl = tmp_path / 'P03' / 'flow_frames' / 'P03_01'
    write_flow_frames(fl, 20, u_px=5., v_px=-2.5, size=(256, 320))
    f = tmp_path / 'EPIC_100_train.csv'
    f.write_text(EK_HEADER + 'P03_01_0,P03,P03_01,,,,5,40,,,1,,9,,\n')
    sp = load_epic(f, tmp_path)
    assert sp.records[0].flow == str(fl)
    ds = KarmmaDataset(sp, modalities=('rgb', 'flow'), frames=4, size=48)
    x = ds[0]['flow']
    assert x.shape == (4, 2, 48, 48)
    # 5 px at a 256-px side is a quarter of the 20-px bound, whatever the working resolution
    assert abs(x[:, 0].mean().item() - 0.25) < 0.01 and abs(x[:, 1].mean().item() + 0.125) < 0.01
    assert kd.FlowFrames(fl).flow_index([0, 1, 2, 39]).tolist() == [0, 0, 1, 19]
    computed = KarmmaDataset(load_epic(f, tmp_path, flow='compute'), modalities=('rgb', 'flow'), frames=4, size=48)[0]['flow']
    assert computed.abs().max() < 0.05                                       # flow='compute': Farneback on still frames
    (tmp_path / 'P01' / 'rgb_frames' / 'P01_01').mkdir(parents=True)         # a second video without flow folders
    g = tmp_path / 'b.csv'
    g.write_text(EK_HEADER + 'P03_01_0,P03,P03_01,,,,5,40,,,1,,9,,\nP01_01_0,P01,P01_01,,,,1,15,,,2,,5,,\n')
    with pytest.raises(AnnotationError, match='1 videos .* no precomputed flow'): load_epic(g, tmp_path)
    assert load_epic(g, tmp_path, flow='compute').records[0].flow is None
    with pytest.raises(AnnotationError, match='no precomputed flow'):
        load_epic(epic_root / 'EPIC_100_train.csv', epic_root, flow='frames')

def test_rgb_statistics(tiny):
    a = KarmmaDataset(tiny['a'], 'test', modalities=('rgb',), frames=2, size=32)
    b = KarmmaDataset(tiny['a'], 'test', modalities=('rgb',), frames=2, size=32, rgb_norm='imagenet')
    raw = KarmmaDataset(tiny['a'], 'test', modalities=('rgb',), frames=2, size=32, normalize=False)[0]['rgb']
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(b[0]['rgb'], (raw - mean) / std)
    assert not torch.allclose(a[0]['rgb'], b[0]['rgb'])
    with pytest.raises(ValueError, match='rgb_norm'): KarmmaDataset(tiny['a'], 'test', rgb_norm='kinetics')

def test_views_cycle_over_epochs(tiny):
    ds = KarmmaDataset(tiny['a'], 'train', modalities=('rgb',), frames=4, size=48, train=True, views=3, seed=2)
    got = []
    for e in range(4):
        ds.set_epoch(e); it = ds[5]; got.append((it['view'], it['rgb']))
    assert [v for v, _ in got] == [0, 1, 2, 0]
    assert torch.equal(got[0][1], got[3][1]) and not torch.equal(got[0][1], got[1][1])
    assert KarmmaDataset(tiny['a'], 'test')[0]['view'] == -1
