"Progress where it is shown: a papermill copy of the training notebook holds a handful of progress lines, no widget warning."
import json, os, re, subprocess, sys
from pathlib import Path

import m2df

ROOT = Path(m2df.__file__).resolve().parent.parent
PROGRESS = re.compile(r'^[\w {}()-]+: (start|done|\d+/\d+ )')   # the lines m2df.progress prints outside a terminal


def output_lines(nb:dict) -> list:
    out = []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            t = o.get('text') or o.get('data', {}).get('text/plain', '')
            out += (''.join(t) if isinstance(t, list) else t).splitlines()
    return out


def test_executed_train_notebook_holds_few_progress_lines(tmp_path):
    out = tmp_path / 'train.ipynb'
    subprocess.run([sys.executable, '-m', 'papermill', str(ROOT / 'nbs' / 'train.ipynb'), str(out), '-p', 'episodes', '8',
                    '-p', 'val_every', '4', '-p', 'val_episodes', '4', '-p', 'test_episodes', '20', '-p', 'run_dir',
                    str(tmp_path / 'run')], check=True, capture_output=True, env={**os.environ, 'PYTHONPATH': str(ROOT)},
                   cwd=ROOT, timeout=600)
    text = out.read_text()
    lines = output_lines(json.loads(text))
    progress = [l for l in lines if PROGRESS.match(l)]
    assert 'IProgress' not in text and '\r' not in ''.join(lines) and 'it/s' not in text
    # training, encoding the test videos, the test episodes: a start line, a summary per tenth that took 10 s or more, an end line
    bars = {}
    for l in progress: bars.setdefault(l.split(':')[0], []).append(l.split(': ', 1)[1])
    assert list(bars) == ['training episodes', 'encoding videos', 'test episodes'], progress
    for name, ls in bars.items():
        assert ls[0].startswith('start') and ls[-1].startswith('done') and len(ls) <= 11, (name, ls)
        assert all(not l.startswith(('start', 'done')) for l in ls[1:-1]), (name, ls)
    assert len(progress) < 30
