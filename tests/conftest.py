"Shared pytest set-up: one torch thread, and the tiny synthetic config the training tests use."
import pytest, torch
from m2df.config import make_config

TINY = dict(backbone='m2df-tiny-vit', frames=4, fusion_ffn=64, accumulation=2, episodes=8, val_every=4, val_episodes=4, test_episodes=4)


def tiny(**kw):
    "A synthetic config small enough for a test: 4 frames, 8 episodes of 2 per step."
    return make_config('synthetic', **{**TINY, **kw})


@pytest.fixture(autouse=True, scope='session')
def one_torch_thread():
    "Tiny models on a shared 2-core machine: one torch thread (OpenMP spin-waits make two up to 10x slower under load)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
