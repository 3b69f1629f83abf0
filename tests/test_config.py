"Strict configuration: every field is checked against its annotated type when a config is built, from Python, the command line and papermill alike."
import dataclasses, json, os, subprocess, sys
from typing import Optional

import pytest

from m2df.config import M2DFConfig, make_config
from m2df import learner as L

BAD = [  # (field, value, what the one-line message must say)
    ('distill', 'no', "config field 'distill' = 'no': expected true or false"),
    ('normalize', 1, "config field 'normalize' = 1: expected true or false"),
    ('shot', True, "config field 'shot' = True: expected an integer, not a boolean"),
    ('shot', 'true', "config field 'shot' = 'true': expected an integer"),
    ('frames', 7.5, "config field 'frames' = 7.5: expected an integer"),
    ('lr', 'abc', "config field 'lr' = 'abc': expected a number"),
    ('seed', 'abc', "config field 'seed' = 'abc': expected an integer"),
    ('lam', 'abc', "config field 'lam' = 'abc': expected a number"),
    ('pps_tau', 'abc', "config field 'pps_tau' = 'abc': expected a number"),
    ('gtce_dilations', '1,x', "config field 'gtce_dilations' = 'x': expected an integer"),
    ('lr', float('inf'), "config field 'lr' = inf: must be a finite number"),
    ('lr', 'inf', "config field 'lr' = 'inf': must be a finite number"),
    ('lam', float('nan'), "config field 'lam' = nan: must be a finite number"),
    ('grad_clip', 'nan', "config field 'grad_clip' = 'nan': must be a finite number"),
    ('backbone', 50, "config field 'backbone' = 50: expected a string"),
    ('views', 7, "config field 'views' = 7: expected a comma-separated list"),
]


@pytest.mark.parametrize('field,value,msg', BAD)
def test_wrong_types_name_the_field(field, value, msg):
    with pytest.raises(ValueError) as e: M2DFConfig(**{field: value})
    assert str(e.value).startswith(msg) and '\n' not in str(e.value), str(e.value)
    with pytest.raises(ValueError, match=field): make_config('synthetic', **{field: value})      # papermill's path
    with pytest.raises(ValueError, match=field): M2DFConfig().replace(**{field: value})


def test_command_line_strings_become_typed_values():
    cfg, _ = L.cli_config(['distill=false', 'lr=1e-3', 'shot=5', 'episodes=1e4', 'gtce_dilations=1,2', 'flip=none',
                           'grad_clip=2', 'amp=TRUE', 'pretrained=none', 'prompt_template=a video of {}', 'lam=1'])
    assert (cfg.distill, cfg.lr, cfg.shot, cfg.episodes, cfg.gtce_dilations, cfg.flip, cfg.grad_clip, cfg.amp) == \
        (False, 1e-3, 5, 10_000, (1, 2), None, 2.0, True)
    assert (cfg.pretrained, cfg.prompt_template, cfg.lam) == (None, 'a video of {}', 1.0)
    assert isinstance(cfg.lam, float) and isinstance(cfg.shot, int) and type(cfg.distill) is bool


def test_every_field_is_checked_from_its_annotation():
    "Fields added later are checked too: the expected type comes from the dataclass, not from a hand-written list."
    @dataclasses.dataclass
    class Extended(M2DFConfig):
        new_rate: float = 0.5
        new_switch: bool = False
        new_count: Optional[int] = None
        new_list: tuple = ('a', 'b')
    assert Extended(new_rate='0.25', new_switch='true', new_count='3', new_list='x,y').new_list == ('x', 'y')
    for kw, msg in [(dict(new_rate='fast'), "'new_rate' = 'fast'"), (dict(new_switch='yes'), "'new_switch' = 'yes'"),
                    (dict(new_count=2.5), "'new_count' = 2.5"), (dict(new_rate=float('inf')), "'new_rate' = inf")]:
        with pytest.raises(ValueError, match=msg): Extended(**kw)


def test_cli_prints_the_message_and_exits_nonzero(tmp_path):
    "The command line prints the one-line message, no traceback, and exits with status 2, before any work."
    for words, msg in [(['distill=no'], "'distill' = 'no': expected true or false")]:   # the other words: in-process below
        p = subprocess.run([sys.executable, '-m', 'm2df.learner', *words, f'run_dir={tmp_path / "run"}'], cwd=tmp_path,
                           env=dict(os.environ, HF_HUB_OFFLINE='1', OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, (words, p.returncode, p.stderr[-2000:])
        err = p.stderr.strip().splitlines()
        assert len(err) == 1 and msg in err[0] and 'Traceback' not in p.stderr, (words, p.stderr)
        assert not (tmp_path / 'run').exists()


def test_cli_errors_in_process(capsys, tmp_path):
    "The same through `main` (cheap): every bad word is one line on stderr and exit status 2."
    for words in (['seed=abc'], ['shot=true'], ['gtce_dilations=1,x'], ['pps_tau=abc'], ['lam=abc'], ['lr=inf'], ['lamda=1'],
                  ['episodes']):
        with pytest.raises(SystemExit) as e: L.main([*words, f'run_dir={tmp_path / "run"}'])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words[0].split('=')[0] in err and not (tmp_path / 'run').exists(), err
        assert err.startswith('m2df.learner: ') and 'Traceback' not in err


def test_papermill_parameters_are_checked(tmp_path, monkeypatch):
    "A papermill parameter of the wrong type stops the notebook at the config cell, naming the field."
    import papermill as pm
    from pathlib import Path
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    nb = Path(__file__).resolve().parents[1] / 'nbs' / 'train.ipynb'
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(nb), str(tmp_path / 'out.ipynb'), cwd=str(tmp_path), progress_bar=False,
                            parameters=dict(distill='no', episodes=2, val_every=2, val_episodes=2, test_episodes=2))
    assert e.value.ename == 'ConfigError' and "config field 'distill' = 'no': expected true or false" in e.value.evalue
    assert not (tmp_path / 'runs').exists()
