"Shared pytest set-up: one torch thread, the tiny synthetic config the training tests use, and the real split lists."
import os
from pathlib import Path
import pytest, torch
from m2df.config import make_config

TINY = dict(backbone='m2df-tiny-vit', frames=4, fusion_ffn=64, accumulation=2, episodes=8, val_every=4, val_episodes=4, test_episodes=4)
SPLITS_ENV = 'M2DF_TEST_SPLITS'   # optional: another folder of <benchmark>/<split>.txt (+ the authors' class-name files)


def tiny(**kw):
    "A synthetic config small enough for a test: 4 frames, 8 episodes of 2 per step."
    return make_config('synthetic', **{**TINY, **kw})


def real_splits_dir() -> Path:
    """The folder of the five benchmarks' real split lists that the tests read: the lists shipped in the package
    (`m2df/data/splits`, with the authors' class-name files), or `$M2DF_TEST_SPLITS` when it is set."""
    d = os.environ.get(SPLITS_ENV)
    if d:
        p = Path(d).expanduser()
        if not p.is_dir(): pytest.fail(f'{SPLITS_ENV}={d!r} is not a folder')
        return p
    from m2df.splits import packaged_splits_dir
    p = packaged_splits_dir('ucf101')
    if p is None: pytest.fail('the package holds no split lists (m2df/data/splits): reinstall m2df from a full clone')
    return p


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    "Tiny models on a shared 2-core machine: one torch thread (OpenMP spin-waits make two up to 10x slower under load)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
