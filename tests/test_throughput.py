"""The throughput and memory switches: DataLoader workers and their default, activation checkpointing and backbone
chunks wired from the config into the model, exact end to end. (Speed and memory figures live in tests/benchmarks.)"""
import copy

import pytest
import torch

from m2df.config import M2DFConfig, default_num_workers, make_config
from m2df.episodes import episode_loader
from m2df.model import M2DF, m2df_loss


def tiny(**kw):
    return make_config('synthetic', backbone='m2df-tiny-vit', frames=4, **kw)


def test_default_workers_follow_the_cpus():
    assert M2DFConfig().num_workers == default_num_workers()
    assert default_num_workers(cpus=2, local_processes=1) == 1
    assert default_num_workers(cpus=1, local_processes=1) == 0
    assert default_num_workers(cpus=32, local_processes=4) == 7
    assert default_num_workers(cpus=256, local_processes=1) == 16


def test_episode_loader_uses_the_configured_workers_and_is_deterministic():
    cfg = tiny(num_workers=2, device='cpu')
    dl = episode_loader(cfg, 'train', 3)
    assert dl.num_workers == 2 and dl.prefetch_factor == 2 and not dl.persistent_workers and not dl.pin_memory
    with_workers = list(dl)
    in_process = list(episode_loader(cfg.replace(num_workers=0), 'train', 3))
    for a, b in zip(with_workers, in_process):
        assert a['index'] == b['index'] and torch.equal(a['query'], b['query']) and torch.equal(a['support'], b['support'])
    assert episode_loader(tiny(), 'test', 1).num_workers == default_num_workers()


def test_config_wires_memory_options_into_the_backbone():
    m = M2DF(tiny(grad_checkpointing=True, backbone_chunk=6))
    assert m.backbone.grad_checkpointing and m.backbone.chunk == 6
    assert m.backbone.clip.visual.transformer.grad_checkpointing          # open_clip's own switch is on
    reused = M2DF(tiny(), backbone=m.backbone)                           # a reused backbone takes the new config's options
    assert not reused.backbone.grad_checkpointing and reused.backbone.chunk == 0
    assert not m.backbone.clip.visual.transformer.grad_checkpointing
    with pytest.raises(ValueError, match='backbone_chunk'): tiny(backbone_chunk=-1)


@pytest.mark.parametrize('options', [dict(grad_checkpointing=True), dict(backbone_chunk=5),
                                     dict(grad_checkpointing=True, backbone_chunk=5)])
def test_training_step_is_the_same_with_memory_options(options):
    "Loss and every gradient of a whole training step (backbone and head) agree with and without the options."
    cfg = tiny()
    torch.manual_seed(0)
    plain = M2DF(cfg).train()
    saver = M2DF(cfg.replace(**options)).train()
    saver.load_state_dict(plain.state_dict())
    S = plain.backbone.image_size
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(5, 4, 3, S, S, generator=g), torch.randn(10, 4, 3, S, S, generator=g)
    ys, yq = torch.arange(5), torch.arange(5).repeat_interleave(2)
    text = plain.class_text(['a', 'b', 'c', 'd', 'e'])
    losses = []
    for m in (plain, saver):
        torch.manual_seed(2)                                         # the same PPS draws and dropout masks
        loss, _ = m2df_loss(m(support, query, ys, text), yq, cfg)
        loss.backward(); losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (n, p), q in zip(plain.named_parameters(), saver.parameters()):
        if p.grad is None: assert q.grad is None, n; continue
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5 * (1 + p.grad.abs().max().item()), msg=n)
