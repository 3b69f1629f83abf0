"""The README's KARMMA commands for SSv2 and Epic-Kitchens-100, run as written on small files in the datasets' real layouts.

The test builds the files at the README's own paths under a temporary folder (`/data/...` becomes `<tmp>/data/...`),
then runs each `papermill nbs/karmma.ipynb ...` line of the README with those paths, adding only parameters that make
the run small (tiny models, 4 frames of 32², one epoch) and send its outputs to the temporary folder."""
import json, re, shlex, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2df.video import write_video

ROOT = Path(__file__).resolve().parents[1]
SMALL = ['-p', 'scale', 'tiny', '-p', 'frames', '4', '-p', 'size', '32', '-p', 'teacher_epochs', '1', '-p', 'student_epochs', '1',
         '-p', 'pretrain_epochs', '1', '-p', 'views', '2', '-p', 'teacher_batch', '4', '-p', 'student_batch', '4']


def readme_commands():
    "The README's `papermill nbs/karmma.ipynb` command lines, each as a list of arguments."
    text = (ROOT / 'README.md').read_text()
    return [shlex.split(l) for l in re.findall(r'^papermill nbs/karmma\.ipynb .*$', text, re.M)]


def param(cmd, name):
    i = [k for k in range(len(cmd) - 1) if cmd[k] == '-p' and cmd[k + 1] == name]
    return cmd[i[0] + 2] if i else None


def local(tmp, p): return tmp / p.lstrip('/')


def clip(cls, n=12, h=48, w=64):
    "A clip of a bar moving in one of three directions, so that the class shows in RGB and flow."
    f = np.full((n, h, w, 3), 90, np.uint8)
    for t in range(n):
        x = [4 + 3 * t, w - 12 - 3 * t, 26][cls]
        y = [18, 18, 4 + 3 * t][cls]
        f[t, y:y + 10, x:x + 8] = (230, 40, 40)
    return f


def build_ssv2(tmp, cmd):
    videos, ann = local(tmp, param(cmd, 'data_root')), local(tmp, param(cmd, 'annotations'))
    videos.mkdir(parents=True); ann.mkdir(parents=True)
    templates = ['Pushing [something] from left to right', 'Pushing [something] from right to left', 'Moving [something] down']
    (ann / 'something-something-v2-labels.json').write_text(json.dumps({t.replace('[', '').replace(']', ''): str(i) for i, t in enumerate(templates)}))
    entries = {'train': [], 'validation': []}
    for i in range(18):
        split = 'validation' if i % 3 == 2 else 'train'
        entries[split].append({'id': str(100 + i), 'label': 'x', 'template': templates[i % 3], 'placeholders': ['a pen']})
        write_video(videos / f'{100 + i}.webm', clip(i % 3), codec='libvpx-vp9')             # SSv2's webm, no audio
    for s, e in entries.items(): (ann / f'something-something-v2-{s}.json').write_text(json.dumps(e))
    files = [local(tmp, p) for p in param(cmd, 'boxes').split(',')]
    assert len(files) >= 1
    for k, f in enumerate(files):                                             # Something-Else: boxes split over part files
        f.parent.mkdir(parents=True, exist_ok=True)
        d = {}
        for i in range(k, 18, len(files)):
            d[str(100 + i)] = [{'name': f'{100 + i}/{t + 1:04d}.jpg', 'labels': [
                {'box2d': {'x1': 4 + 3 * t, 'y1': 18, 'x2': 12 + 3 * t, 'y2': 28}, 'standard_category': '0000', 'gt_annotation': 'object 0'},
                {'box2d': {'x1': 0, 'y1': 30, 'x2': 20, 'y2': 47}, 'standard_category': 'hand', 'gt_annotation': 'hand'}]}
                for t in range(12)]
        f.write_text(json.dumps(d))


EK_HEADER = ('narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,stop_frame,'
             'narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n')


def build_epic(tmp, cmd):
    root, ann = local(tmp, param(cmd, 'data_root')), local(tmp, param(cmd, 'annotations'))
    ann.mkdir(parents=True)
    fps, sr = 30, 16_000
    rows = {'train': [], 'validation': []}
    for p, v, as_video in (('P01', 'P01_01', True), ('P02', 'P02_01', False)):
        frames = np.concatenate([clip(k, 30) for k in range(3)] * 2)             # 180 frames: 6 one-second actions
        if as_video:                                                             # the .MP4 with its audio track
            (root / p / 'videos').mkdir(parents=True)
            t = np.arange(len(frames) * sr // fps) / sr
            write_video(root / p / 'videos' / f'{v}.MP4', frames, fps=fps, audio=(0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                        sample_rate=sr)
        else:                                                                    # frames only: no audio
            (root / p / 'rgb_frames' / v).mkdir(parents=True)
            for i, f in enumerate(frames, 1): Image.fromarray(f).save(root / p / 'rgb_frames' / v / f'frame_{i:010d}.jpg')
        for d in ('u', 'v'):                                                     # TV-L1 flow: one frame per two RGB frames
            (root / p / 'flow_frames' / v / d).mkdir(parents=True)
            for j in range(1, len(frames) // 2 + 1):
                Image.fromarray(np.full((48, 64), 128 + (j % 7), np.uint8)).save(root / p / 'flow_frames' / v / d / f'frame_{j:010d}.jpg')
        for k in range(6):
            split = 'validation' if k >= 4 else 'train'
            rows[split].append(f'{v}_{k},{p},{v},,,,{30 * k + 1},{30 * k + 30},,,{k % 3},,{(k + 1) % 3},,')
    for s, r in rows.items(): (ann / f'EPIC_100_{s}.csv').write_text(EK_HEADER + '\n'.join(r) + '\n')


def run(cmd, tmp, name):
    (tmp / 'out').mkdir(exist_ok=True)
    args = [tmp / 'out' / Path(cmd[2]).name if k == 2 else a for k, a in enumerate(cmd)]
    here = lambda a: ','.join(str(local(tmp, p)) if p.startswith('/data/') else p for p in a.split(','))   # the README's /data/ paths
    args = [here(a) if isinstance(a, str) else a for a in args]
    args = [str(a) for a in args] + SMALL + ['-p', 'run_dir', str(tmp / 'runs' / name), '-p', 'figures_dir', str(tmp / 'figures')]
    r = subprocess.run([sys.executable, '-m', 'papermill', *args[1:], '--cwd', str(ROOT / 'nbs')], cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return (tmp / 'figures' / f'karmma_subsets_{name}.md').read_text()


@pytest.fixture(scope='module')
def commands():
    cmds = {param(c, 'dataset') or 'synthetic': c for c in readme_commands()}
    assert {'synthetic', 'ssv2', 'epic_kitchens'} <= set(cmds), f'the README lacks a karmma command for {sorted(cmds)}'
    return cmds


def test_readme_ssv2_command_runs_on_the_real_layout(commands, tmp_path):
    cmd = commands['ssv2']
    assert param(cmd, 'boxes'), 'the SSv2 command must pass the box annotations (-p boxes ...)'
    build_ssv2(tmp_path, cmd)
    md = run(cmd, tmp_path, 'ssv2')
    assert 'V+F+D' in md                                                          # RGB, flow and boxes


def test_readme_epic_command_runs_on_the_real_layout(commands, tmp_path):
    cmd = commands['epic_kitchens']
    build_epic(tmp_path, cmd)
    md = run(cmd, tmp_path, 'epic_kitchens')
    assert 'V+F+A' in md and 'verb and noun' in md
    out = (tmp_path / 'out' / Path(cmd[2]).name).read_text()
    assert 'precomputed TV-L1 frames' in out                                      # the dataset's own flow was read
