"Shared pytest set-up: one torch thread, the tiny synthetic config the training tests use, and the real split lists."
import os
from pathlib import Path
import pytest, torch
from m2df.config import make_config

TINY = dict(backbone='m2df-tiny-vit', frames=4, fusion_ffn=64, accumulation=2, episodes=8, val_every=4, val_episodes=4, test_episodes=4)
SPLITS_ENV = 'M2DF_TEST_SPLITS'   # folder of the real split lists, <benchmark>/<split>.txt (+ the authors' class-name files)


def tiny(**kw):
    "A synthetic config small enough for a test: 4 frames, 8 episodes of 2 per step."
    return make_config('synthetic', **{**TINY, **kw})


def real_splits_dir() -> Path:
    """The folder of the five benchmarks' real split lists that the tests read: `$M2DF_TEST_SPLITS` (`.ci/run` sets it).

    Unset, the lists are downloaded once by `m2df.splits.fetch_splits` (checked by sha256) into the package's cache; the
    tests that also need the authors' class-name files (`<split>_classnames.txt`) are then skipped, saying why."""
    d = os.environ.get(SPLITS_ENV)
    if d:
        p = Path(d).expanduser()
        if not p.is_dir(): pytest.fail(f'{SPLITS_ENV}={d!r} is not a folder')
        return p
    from m2df.splits import BENCHMARKS, SplitError, cache_root, fetch_splits
    root = cache_root() / 'splits'
    try:
        for b in BENCHMARKS.values():
            if b.files: fetch_splits(b.name, root)
    except SplitError as e:
        pytest.skip(f'no real split lists: set {SPLITS_ENV} to a folder of <benchmark>/<split>.txt, or allow the download ({e})',
                    allow_module_level=True)
    return root


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    "Tiny models on a shared 2-core machine: one torch thread (OpenMP spin-waits make two up to 10x slower under load)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
