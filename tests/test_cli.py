"The m2df command: every subcommand's --help generated from the dataclasses, one-line errors with exit 2, --version."
import dataclasses, os, re, subprocess, sys
from pathlib import Path
import pytest

import m2df
from m2df.cli import config_fields, field_comments
from m2df.config import M2DFConfig
from m2df.karmma.model import KarmmaConfig

ROOT = Path(m2df.__file__).resolve().parent.parent
ENV = {**os.environ, 'PYTHONPATH': str(ROOT), 'COLUMNS': '100'}


def m2df_cmd(*args, module='m2df.cli'):
    return subprocess.run([sys.executable, '-m', module, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)


def naive_comments(path, cls_name) -> dict:
    "A second reading of the field comments: a regex over the source lines (comment-only lines indented past 4 continue)."
    out, cur, inside = {}, None, False
    for line in Path(path).read_text().splitlines():
        if line.startswith(f'class {cls_name}'): inside = True; continue
        if not inside: continue
        if line.strip().startswith(('def ', '@')): break
        m = re.match(r'    (\w+): [^#]*?#\s?(.*)$', line)
        if m: cur = m.group(1); out[cur] = m.group(2).strip(); continue
        m = re.match(r' {5,}#\s*(.*)$', line)
        if m and cur: out[cur] += ' ' + m.group(1).strip(); continue
        if re.match(r'    #', line): cur = None
    return out


@pytest.mark.parametrize('cls,path', [(M2DFConfig, ROOT / 'm2df' / 'config.py'), (KarmmaConfig, ROOT / 'm2df' / 'karmma' / 'model.py')])
def test_help_text_equals_the_dataclass_comments(cls, path):
    got = field_comments(cls)
    assert set(got) == {f.name for f in dataclasses.fields(cls)}
    assert got == naive_comments(path, cls.__name__)


def flat(s): return ' '.join(s.split())


def test_train_help_lists_every_field_with_type_default_and_description():
    r = m2df_cmd('train', '--help')
    assert r.returncode == 0, r.stderr
    text = flat(r.stdout)
    for name, tp, default, desc in config_fields(M2DFConfig):
        assert f'--{name}' in text, name
        assert flat(f'{desc} [{tp}; default {default}]') in text, name
    assert '--shot INT K support videos per class [int; default 1]' in text
    assert 'Adam learning rate (constant by default) [float; default 1e-05]' in text
    assert 'max gradient norm, None: no clipping [float | none; default none]' in text


@pytest.mark.parametrize('cmd,field', [('evaluate', 'eval_chunk'), ('check', 'check_workers'), ('karmma', 'modality_dropout')])
def test_other_subcommands_help(cmd, field):
    r = m2df_cmd(cmd, '--help')
    assert r.returncode == 0, r.stderr
    cls = KarmmaConfig if cmd == 'karmma' else M2DFConfig
    assert f'--{field}' in r.stdout
    desc = dict((n, d) for n, _, _, d in config_fields(cls))[field]
    assert flat(desc) in flat(r.stdout)


def test_prepare_help_and_module_aliases_print_the_same_help():
    sub = m2df_cmd('prepare', '--help')
    assert sub.returncode == 0 and '--short-side' in sub.stdout and 'usage: m2df prepare' in sub.stdout
    assert m2df_cmd('--help', module='m2df.prepare').stdout == sub.stdout
    assert m2df_cmd('--help', module='m2df.learner').stdout == m2df_cmd('train', '--help').stdout
    assert m2df_cmd('--help', module='m2df.datacheck').stdout == m2df_cmd('check', '--help').stdout


@pytest.mark.parametrize('args,names', [
    (['train', 'shot=abc'], 'shot'),
    (['train', '--grad-clip', 'x'], 'grad_clip'),
    (['train', 'shoot=5'], "unknown setting 'shoot'; did you mean shot?"),
    (['evaluate', 'checkpoint=/nonexistent/best.pt'], 'no checkpoint at /nonexistent/best.pt'),
    (['evaluate', 'way=five', 'checkpoint=x'], 'way'),
    (['check', 'frames=-1'], 'frames'),
    (['prepare', 'nope', 'a', 'b'], "invalid choice: 'nope'"),
    (['karmma', 'lr=fast'], 'lr'),
    (['karmma', 'role=critic'], 'critic'),
    (['trian'], "invalid choice: 'trian'"),
    (['train', '--no-such-flag'], '--no-such-flag'),
])
def test_a_bad_value_is_one_line_and_exit_2(args, names):
    r = m2df_cmd(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert names in r.stderr and r.stderr.startswith('m2df'), r.stderr


def test_version_prints_version_and_commit():
    r = m2df_cmd('--version')
    assert r.returncode == 0
    commit = subprocess.run(['git', '-C', str(ROOT), 'rev-parse', '--short=12', 'HEAD'], capture_output=True, text=True)
    if commit.returncode == 0: assert r.stdout.startswith(f'm2df {m2df.__version__} (git {commit.stdout.strip()}'), r.stdout
    else: assert r.stdout.strip() == f'm2df {m2df.__version__}'


def test_words_and_options_reach_the_learner(monkeypatch):
    import m2df.learner, m2df.cli
    seen = []
    monkeypatch.setattr(m2df.learner, 'main', lambda words: seen.append(words))
    assert m2df.cli.main(['train', 'shot=5', '--lr', '1e-4', '--grad-clip', 'none', 'run_dir=/tmp/x']) == 0
    assert seen == [['shot=5', 'run_dir=/tmp/x', 'lr=1e-4', 'grad_clip=none']]


def test_evaluate_writes_one_record_per_evaluation_never_overwriting(tmp_path):
    "`m2df evaluate` twice on one checkpoint, then with an override: three records under <run>/evaluations/, none rewritten."
    from m2df.config import make_config
    from m2df.learner import Learner
    run = tmp_path / 'run'
    Learner(make_config('synthetic', backbone='m2df-tiny-vit', frames=4, fusion_ffn=64, accumulation=2, episodes=4,
                        val_every=4, val_episodes=4, test_episodes=4), run, progress=False).fit(test=False)
    ckpt = run / 'checkpoints' / 'best.pt'
    outs = []
    for extra in ([], [], ['test_episodes=6']):
        p = m2df_cmd('evaluate', f'checkpoint={ckpt}', 'progress=false', *extra)
        assert p.returncode == 0, p.stderr[-2000:]
        outs.append(Path(p.stdout.strip().splitlines()[-1].split(' -> ')[-1]))
    first = outs[0].read_bytes()
    assert [o.parent for o in outs] == [run / 'evaluations'] * 3 and len(set(outs)) == 3, outs
    assert outs[1].name == outs[0].name.replace('.json', '-2.json')
    assert outs[0].read_bytes() == first
    import json
    recs = [json.loads(o.read_text()) for o in outs]
    assert [r['overrides'] for r in recs] == [{}, {}, {'test_episodes': '6'}] or [r['overrides'] for r in recs] == [{}, {}, {'test_episodes': 6}]
    assert [r['episodes'] for r in recs] == [4, 4, 6] and recs[0]['checkpoint'] == str(ckpt.resolve())
