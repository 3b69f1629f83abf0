"Tests of m2df.karmma.model and m2df.karmma.train: token reduction, missing modalities, modality dropout, losses, protocols, checkpoints."
import functools, math, os, tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from m2df.karmma.model import (KarmmaConfig, KarmmaModel, ModalityFusion, MultiHeadMLP, SwinTokens, adapt_stem, drop_modalities,
                               info_nce, karmma_loss, kd_kl, make_karmma_config, swin_state_dict, theta_average)
from m2df.karmma.train import (CachedClips, KarmmaTrainer, TokenCache, TokenStore, clip_keys, evaluate_protocols, fixed_drops,
                               karmma_lr, load_karmma_checkpoint, modality_subsets, model_tokens, pretrain_extractors)

MODS = ('rgb', 'flow', 'audio')


@pytest.fixture(autouse=True)
def _one_thread():
    "One torch thread: the test machine's two cores are shared, and two spinning threads per process run much slower."
    n = torch.get_num_threads(); torch.set_num_threads(1); torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def batch(B=4, T=4, S=32, M=64, F=64, n=24, seed=0, audio=None):
    g = torch.Generator().manual_seed(seed)
    audio = torch.tensor([True, False] * (B // 2)) if audio is None else audio
    return dict(id=[f's{seed}-{i}' for i in range(B)], label=torch.randint(0, n, (B,), generator=g),
                inputs=dict(rgb=torch.randn(B, T, 3, S, S, generator=g), flow=torch.randn(B, T, 2, S, S, generator=g),
                            audio=torch.randn(B, 1, M, F, generator=g) * audio.view(-1, 1, 1, 1)),
                present=dict(rgb=torch.ones(B, dtype=torch.bool), flow=torch.ones(B, dtype=torch.bool), audio=audio))


def collate(items):
    out = dict(id=[i['id'] for i in items], label=torch.stack([i['label'] for i in items]),
               inputs={m: torch.stack([i['inputs'][m] for i in items]) for m in MODS},
               present={m: torch.tensor([i['present'][m] for i in items]) for m in MODS})
    if 'view' in items[0]: out['view'] = [i['view'] for i in items]
    return out


class Clips(torch.utils.data.Dataset):
    "Random clips whose class is written into every modality; every third clip has no audio."
    def __init__(self, n, classes=4, seed=0):
        b = batch(n, n=classes, seed=seed, audio=torch.arange(n) % 3 != 0)
        pats = {m: torch.randn(classes, *v.shape[1:], generator=torch.Generator().manual_seed(7 + i))
                for i, (m, v) in enumerate(b['inputs'].items())}
        for m in MODS: b['inputs'][m] = (b['inputs'][m] + 0.5 * pats[m][b['label']]) * b['present'][m].view(-1, *[1] * (b['inputs'][m].dim() - 1))
        self.b = b
    def __len__(self): return len(self.b['id'])
    def __getitem__(self, i):
        return dict(id=self.b['id'][i], label=self.b['label'][i], inputs={m: v[i] for m, v in self.b['inputs'].items()},
                    present={m: bool(v[i]) for m, v in self.b['present'].items()})


def tiny(role, **kw):
    d = {**dict(num_classes=(4,), epochs=2, warmup_epochs=1, device='cpu'), **kw}
    if d['warmup_epochs'] >= d['epochs']: d['warmup_epochs'] = 0
    return make_karmma_config('synthetic', role, **d)


# ---- Θ-Average

def loop_theta_average(x, theta):
    k = x.shape[1]
    if k <= theta: return x
    g = k // theta
    groups = [x[:, j * g:(j + 1) * g] for j in range(theta - 1)] + [x[:, (theta - 1) * g:]]
    return torch.stack([t.mean(1) for t in groups], 1)


def test_theta_average_with_remainder():
    x = torch.arange(10.).view(1, 10, 1)               # Θ = 3: g = 3, groups {0,1,2} {3,4,5} {6,7,8,9}
    assert theta_average(x, 3).flatten().tolist() == [1.0, 4.0, 7.5]
    x = torch.arange(392.).view(1, 392, 1)             # Swin-B's 8×7×7 tokens, Θ = 300: g = 1, the last group holds 93
    y = theta_average(x, 300)
    assert y.shape == (1, 300, 1)
    assert torch.equal(y[0, :299, 0], torch.arange(299.))
    assert y[0, 299, 0].item() == pytest.approx(np.mean(np.arange(299, 392)))


@pytest.mark.parametrize('k,theta', [(7, 3), (100, 7), (301, 300), (1000, 300), (599, 300)])
def test_theta_average_matches_loop(k, theta):
    x = torch.randn(2, k, 5)
    torch.testing.assert_close(theta_average(x, theta), loop_theta_average(x, theta))


@pytest.mark.parametrize('k', [1, 50, 300])
def test_theta_average_keeps_short_sequences(k):
    x = torch.randn(3, k, 4)
    assert theta_average(x, 300) is x


def test_theta_average_bad_theta():
    with pytest.raises(ValueError, match='theta'):
        theta_average(torch.randn(1, 5, 2), 0)


# ---- missing modalities

def fusion_inputs(model, b):
    return model.extract(b['inputs'])


def test_missing_modality_keeps_length_and_uses_only_learned_tokens():
    cfg = make_karmma_config('synthetic', 'student')
    model = KarmmaModel(cfg).eval()
    b = batch()
    lengths = []
    h = model.fusion.layers[0].register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1]))
    out_all = model(b['inputs'], {m: torch.ones(4, dtype=torch.bool) for m in MODS})
    out = model(b['inputs'], b['present'])
    none_audio = {**b['present'], 'audio': torch.zeros(4, dtype=torch.bool)}
    model(b['inputs'], none_audio)
    h.remove()
    assert len(set(lengths)) == 1                                            # the sequence length never changes
    # a missing modality's input, even NaN, never reaches the output
    b2 = batch(); b2['inputs']['audio'][1::2] = float('nan')
    out2 = model(b2['inputs'], b2['present'])
    torch.testing.assert_close(out2['logits']['label'][1::2], out['logits']['label'][1::2])
    assert torch.isfinite(out2['logits']['label']).all()
    # a present modality's input does change it
    assert not torch.allclose(out_all['logits']['label'][1], out['logits']['label'][1])


def test_missing_tokens_are_modality_plus_position_tokens():
    f = ModalityFusion(MODS, dict(rgb=8, flow=8, audio=8), 16, 1, 4, max_tokens=10)
    x = torch.randn(3, 6, 8)
    z = f.modality_tokens('audio', x, torch.tensor([True, False, True]))
    torch.testing.assert_close(z[1], f.modality_token['audio'] + f.position_tokens['audio'][:6])
    torch.testing.assert_close(z[0], f.embed['audio'](x[0]) + f.modality_token['audio'] + f.position_tokens['audio'][:6])
    with pytest.raises(ValueError, match='more than the 10 position tokens'):
        f.modality_tokens('audio', torch.randn(1, 11, 8), torch.tensor([True]))


def test_missing_modality_gets_no_gradient():
    cfg = make_karmma_config('synthetic', 'student')
    model = KarmmaModel(cfg)
    b = batch(audio=torch.zeros(4, dtype=torch.bool))
    model(b['inputs'], b['present'])['logits']['label'].sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.extractors['audio'].parameters())
    assert model.fusion.modality_token['audio'].grad.abs().sum() > 0


def test_zeros_mode_is_zero_input():
    cfg = make_karmma_config('synthetic', 'ce_only')
    model = KarmmaModel(cfg).eval()
    b = batch()
    allp = {m: torch.ones(4, dtype=torch.bool) for m in MODS}
    torch.testing.assert_close(model(b['inputs'], b['present'])['logits']['label'], model(b['inputs'], allp)['logits']['label'])


def test_bad_batches_name_the_problem():
    model = KarmmaModel(make_karmma_config('synthetic', 'student')).eval()
    b = batch()
    with pytest.raises(KeyError, match="'audio'"):
        model({k: v for k, v in b['inputs'].items() if k != 'audio'}, b['present'])
    with pytest.raises(KeyError, match="'flow'"):
        model(b['inputs'], {k: v for k, v in b['present'].items() if k != 'flow'})
    with pytest.raises(ValueError, match='B×1×M×F'):
        model({**b['inputs'], 'audio': b['inputs']['audio'][:, 0]}, b['present'])


# ---- modality dropout

@pytest.mark.parametrize('p', [0.5, 0.9, 0.99])
def test_dropout_never_removes_every_modality(p):
    g = torch.Generator().manual_seed(1)
    B = 4000
    present = {m: torch.ones(B, dtype=torch.bool) for m in MODS}
    present['audio'][::3] = False                                          # some clips lack audio in the data
    present['flow'][::7] = False
    for _ in range(5):
        d = drop_modalities(present, p, g)
        kept = torch.stack([d[m] for m in MODS], 1)
        assert kept.any(1).all()
        for m in MODS: assert not (d[m] & ~present[m]).any()              # nothing missing comes back
    # each present modality is kept with probability (1-p) + p^n / n for a clip with n modalities (the restored one)
    full = present['audio'] & present['flow']
    rate = kept[full].float().mean(0)
    expect = (1 - p) + p ** 3 / 3
    assert torch.allclose(rate, torch.full((3,), expect), atol=0.04), (rate, expect)


def test_dropout_zero_keeps_everything():
    present = {m: torch.rand(10) > 0.3 for m in MODS}
    d = drop_modalities(present, 0.)
    for m in MODS: assert torch.equal(d[m], present[m])


def test_fixed_drops_are_the_same_for_any_batching():
    ids = [f'clip{i}' for i in range(50)]
    present = {m: torch.ones(50, dtype=torch.bool) for m in MODS}
    a = fixed_drops(ids, present, 0.7, seed=3)
    b = {m: torch.cat([fixed_drops(ids[:20], {k: v[:20] for k, v in present.items()}, 0.7, 3)[m],
                       fixed_drops(ids[20:], {k: v[20:] for k, v in present.items()}, 0.7, 3)[m]]) for m in MODS}
    for m in MODS: assert torch.equal(a[m], b[m])
    assert torch.stack(list(a.values()), 1).any(1).all()
    c = fixed_drops(ids, present, 0.7, seed=4)
    assert any(not torch.equal(a[m], c[m]) for m in MODS)


# ---- losses

def test_kd_is_zero_when_student_equals_teacher():
    z = torch.randn(16, 24, requires_grad=True)
    loss = kd_kl(z.detach(), z)
    assert loss.item() == pytest.approx(0., abs=1e-6)
    loss.backward()
    assert z.grad.abs().max() < 1e-6
    assert kd_kl(torch.randn(16, 24), torch.randn(16, 24)).item() > 0.01
    for T in (1., 2., 4.):
        assert kd_kl(z.detach(), z.detach(), T).item() == pytest.approx(0., abs=1e-6)


def test_kd_matches_definition():
    t, s = torch.randn(5, 7), torch.randn(5, 7)
    pt, ps = t.softmax(-1), s.softmax(-1)
    ref = (pt * (pt.log() - ps.log())).sum(-1).mean()
    assert kd_kl(t, s).item() == pytest.approx(ref.item(), rel=1e-5)


def test_info_nce_prefers_aligned_pairs():
    a = torch.randn(32, 16)
    assert info_nce(a, a + 0.01 * torch.randn(32, 16)) < info_nce(a, torch.randn(32, 16))
    assert info_nce(a[:1], a[:1]).item() == 0.                            # one clip: no negatives, no loss


def test_loss_weights_and_roles():
    b = batch(); labels = {'label': b['label']}
    t_cfg = make_karmma_config('synthetic', 'teacher')
    out = KarmmaModel(t_cfg)(b['inputs'], b['present'])
    loss, parts = karmma_loss(t_cfg, out, labels, b['present'])
    assert loss.item() == pytest.approx(0.7 * parts['ce'].item() + 0.3 * parts['aux'].item(), rel=1e-5)
    assert parts['aux'] > 0
    ce_cfg = make_karmma_config('synthetic', 'ce_only')
    out = KarmmaModel(ce_cfg)(b['inputs'], b['present'])
    loss, parts = karmma_loss(ce_cfg, out, labels)
    assert loss.item() == pytest.approx(parts['ce'].item())
    s_cfg = make_karmma_config('synthetic', 'student')
    with pytest.raises(ValueError, match="teacher's logits"):
        karmma_loss(s_cfg, out, labels)


def test_epic_targets_average_over_verb_and_noun():
    cfg = make_karmma_config('epic_kitchens', 'ce_only', scale='tiny', frames=4, size=32)
    assert cfg.classes == {'verb': 97, 'noun': 300}
    model = KarmmaModel(cfg)
    b = batch()
    out = model(b['inputs'], b['present'])
    assert out['logits']['verb'].shape == (4, 97) and out['logits']['noun'].shape == (4, 300)
    labels = {'verb': torch.randint(0, 97, (4,)), 'noun': torch.randint(0, 300, (4,))}
    loss, _ = karmma_loss(cfg, out, labels)
    ce = torch.nn.functional.cross_entropy
    assert loss.item() == pytest.approx(0.5 * (ce(out['logits']['verb'], labels['verb']) + ce(out['logits']['noun'], labels['noun'])).item(), rel=1e-5)


# ---- config, schedule, extractors

def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="'modality_dropout'"):
        make_karmma_config('synthetic', modality_dropout=1.0)
    with pytest.raises(ValueError, match="'fusion_heads'"):
        make_karmma_config('synthetic', fusion_dim=30, fusion_heads=4)
    with pytest.raises(ValueError, match='unknown dataset'):
        make_karmma_config('kinetics')
    with pytest.raises(ValueError, match='unknown role'):
        make_karmma_config('synthetic', 'assistant')
    for bad in ((), ('rgb', 'boxes')):
        with pytest.raises(ValueError, match="'checkpoint_modalities'"): make_karmma_config('synthetic', checkpoint_modalities=bad)
    assert make_karmma_config('synthetic', checkpoint_modalities=['flow']).checkpoint_modalities == ('flow',)


def test_paper_presets():
    t, s = make_karmma_config('epic_kitchens', 'teacher'), make_karmma_config('epic_kitchens', 'student')
    assert (t.video_extractor, t.fusion_dim, t.fusion_layers, t.fusion_heads, t.fusion_attn_dropout) == ('swin3d_b', 768, 2, 8, 0.3)
    assert (s.video_extractor, s.audio_extractor, s.fusion_dim, s.fusion_layers) == ('swin3d_t', 'ast', 384, 1)
    assert (t.ce_weight, t.aux_weight, t.infonce_tau, s.kd_temperature, s.modality_dropout, t.theta) == (0.7, 0.3, 0.1, 1., 0.5, 300)
    assert (t.epochs, t.warmup_epochs, t.warmup_lr) == (100, 10, 1e-5)
    for role in ('ce_only', 'dropout_only'):
        b = make_karmma_config('epic_kitchens', role)
        assert (b.video_extractor, b.fusion_dim, b.aux_loss) == ('swin3d_t', 384, 'none')
    assert t.rgb_statistics == s.rgb_statistics == 'imagenet'            # torchvision's Kinetics-400 Swin weights
    assert make_karmma_config('synthetic', 'student').rgb_statistics == 'clip'
    assert make_karmma_config('epic_kitchens', 'student', epochs=20).warmup_epochs == 2   # the warm-up keeps its tenth


def test_schedule_warmup_then_cosine():
    cfg = make_karmma_config('epic_kitchens', 'student')
    lrs = [karmma_lr(cfg, s, 7) for s in range(100 * 7 + 1)]
    assert lrs[0] == pytest.approx(1e-5) and max(lrs) == pytest.approx(1e-4) and lrs[70] == pytest.approx(1e-4)
    assert all(a <= b for a, b in zip(lrs[:70], lrs[1:71])) and all(a >= b for a, b in zip(lrs[70:], lrs[71:]))
    assert lrs[-1] == pytest.approx(0., abs=1e-12)


def test_swin_weights_missing_gives_clear_error(tmp_path):
    old = torch.hub.get_dir(); torch.hub.set_dir(str(tmp_path))
    try:
        with pytest.raises(FileNotFoundError) as e: swin_state_dict('swin3d_b', 'KINETICS400_V1')
    finally: torch.hub.set_dir(old)
    msg = str(e.value)
    assert str(tmp_path / 'checkpoints' / 'swin3d_b_1k-24f7c7c6.pth') in msg and 'https://download.pytorch.org' in msg
    assert 'extractor_weights' in msg


def test_swin_loads_a_local_file_and_adapts_the_stem(tmp_path):
    import torchvision
    net = torchvision.models.video.swin3d_t(weights=None)
    f = tmp_path / 'swin_t.pth'
    torch.save(net.state_dict(), f)
    flow = SwinTokens('swin3d_t', 2, str(f))
    w = net.patch_embed.proj.weight
    torch.testing.assert_close(flow.patch_embed.proj.weight.sum(1), w.sum(1))            # kernel sum over channels kept
    torch.testing.assert_close(flow.patch_embed.proj.weight[:, 0], flow.patch_embed.proj.weight[:, 1])
    torch.testing.assert_close(flow.norm.weight, net.norm.weight)
    torch.testing.assert_close(flow.features[0][0].attn.qkv.weight, net.features[0][0].attn.qkv.weight)
    # RGB: the same tokens as the backbone before its pooling
    rgb = SwinTokens('swin3d_t', 3, str(f)).eval(); net.eval()
    x = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        ref = net.norm(net.features(net.patch_embed(x.transpose(1, 2))))
        torch.testing.assert_close(rgb(x), ref.flatten(1, 3))
        torch.testing.assert_close(net.head(ref.mean((1, 2, 3))), net(x.transpose(1, 2)))    # the pooled tokens are what swin classifies
    bad = tmp_path / 'bad.pth'; torch.save({'w': torch.ones(1)}, bad)
    with pytest.raises(RuntimeError, match='do not fit'):
        SwinTokens('swin3d_t', 3, str(bad))


def test_adapt_stem_keeps_rgb_conv():
    conv = torch.nn.Conv3d(3, 8, (2, 4, 4), (2, 4, 4))
    assert adapt_stem(conv, 3) is conv
    assert adapt_stem(conv, 1).weight.shape == (8, 1, 2, 4, 4)


# ---- protocols

def test_subsets_are_complete():
    s = modality_subsets(MODS)
    assert len(s) == 7 and len(set(s)) == 7 and all(len(x) > 0 for x in s)
    assert set(s) == {('rgb',), ('flow',), ('audio',), ('rgb', 'flow'), ('rgb', 'audio'), ('flow', 'audio'), MODS}
    for M in range(1, 6): assert len(set(modality_subsets(range(M)))) == 2 ** M - 1


def test_evaluate_protocols_identical_clips_and_counts():
    data = Clips(20, seed=5)
    models = {n: KarmmaModel(tiny(r)) for n, r in (('a', 'student'), ('b', 'ce_only'))}
    r = evaluate_protocols(models, data, collate, batch_size=7)
    r2 = evaluate_protocols(models, data, collate, batch_size=20)
    assert r['complete_clips'] == sum(1 for i in range(20) if i % 3) and r['clips'] == 20
    for n in models:
        assert len(r['models'][n]['subsets']) == 7 and len(r['models'][n]['drop']) == 10
        for k, v in r['models'][n]['subsets'].items():
            assert v['n'] == r['complete_clips']
            assert v['accuracy'] == pytest.approx(r2['models'][n]['subsets'][k]['accuracy'])    # batching changes nothing
        for p, v in r['models'][n]['drop'].items():
            assert v['n'] == 20 and v['accuracy'] == pytest.approx(r2['models'][n]['drop'][p]['accuracy'])


def test_a_modality_missing_everywhere_is_said_and_left_out_of_the_subsets():
    data = Clips(12, seed=2)
    for i in range(12): data.b['present']['audio'][i] = False; data.b['inputs']['audio'][i] = 0
    with pytest.warns(UserWarning, match=r"no test clip holds the modalities \['audio'\]"):
        r = evaluate_protocols({'m': KarmmaModel(tiny('student'))}, data, collate, batch_size=5)
    assert r['available'] == ['rgb', 'flow'] and r['complete_clips'] == 12
    assert sorted(r['models']['m']['subsets']) == ['flow', 'rgb', 'rgb+flow']


def test_action_needs_verb_and_noun():
    cfg = make_karmma_config('epic_kitchens', 'ce_only', scale='tiny', num_classes=(3, 3))
    model = KarmmaModel(cfg).eval()
    data = Clips(12, classes=3, seed=1)
    def col(items):
        b = collate(items)
        b['verb'] = b.pop('label'); b['noun'] = (b['verb'] + torch.tensor([0, 1] * (len(items) // 2) + [0] * (len(items) % 2))) % 3
        return b
    r = evaluate_protocols({'m': model}, data, col, batch_size=12, drop_levels=(0.,))
    rec = r['models']['m']['drop'][0.]
    with torch.no_grad():
        b = col([data[i] for i in range(12)])
        out = model(b['inputs'], b['present'])['logits']
    v, n = out['verb'].argmax(-1) == b['verb'], out['noun'].argmax(-1) == b['noun']
    assert rec['verb_accuracy'] == pytest.approx(100 * v.float().mean().item())
    assert rec['noun_accuracy'] == pytest.approx(100 * n.float().mean().item())
    assert rec['accuracy'] == pytest.approx(100 * (v & n).float().mean().item())


# ---- training machinery

def test_teacher_trains_only_fusion_and_mlp(tmp_path):
    data = Clips(24)
    tr = KarmmaTrainer(tiny('teacher', batch_size=8, epochs=1), tmp_path / 't', data, None, collate_fn=collate)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    after = tr.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith('extractors.'))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith('fusion.'))
    assert tr.cache.misses == 24 and tr.cache.hits == 0                     # 1 epoch: each clip extracted once
    assert not list(tr.run.ckpt_dir.glob('*.tmp'))


def test_student_needs_a_teacher(tmp_path):
    with pytest.raises(ValueError, match='pass the trained teacher'):
        KarmmaTrainer(tiny('student'), tmp_path, Clips(8), None, collate_fn=collate)


def test_checkpoint_refuses_another_network(tmp_path):
    tr = KarmmaTrainer(tiny('dropout_only', epochs=1, batch_size=8), tmp_path / 'r', Clips(16), None, collate_fn=collate)
    tr.fit()
    s = load_karmma_checkpoint(tr.run.last, tr.cfg)
    assert s['epoch'] == 1 and s['config']['role'] == 'dropout_only'
    with pytest.raises(ValueError, match='fusion_layers: checkpoint 1, config 2'):
        load_karmma_checkpoint(tr.run.last, tr.cfg.replace(fusion_layers=2))
    with pytest.raises(ValueError, match='role'):
        KarmmaTrainer(tiny('ce_only', epochs=1, batch_size=8), tmp_path / 'r', Clips(16), None, collate_fn=collate)
    with pytest.raises(FileNotFoundError):
        load_karmma_checkpoint(tmp_path / 'none.pt')


def test_a_run_resumes_only_from_the_same_extractors(tmp_path):
    "A run folder trained from random extractors is not resumed by a config that starts from a file, nor the reverse (nor other modalities)."
    cfg = tiny('dropout_only', epochs=2, batch_size=8)
    pretrain_extractors(cfg, Clips(16), tmp_path / 'ext.pt', epochs=1, batch_size=8, collate_fn=collate)
    KarmmaTrainer(cfg, tmp_path / 'r', Clips(16), None, collate_fn=collate).fit(stop_after=1)
    start = cfg.replace(extractor_checkpoint=str(tmp_path / 'ext.pt'))
    with pytest.raises(ValueError, match=r"trained from other extractors \({'extractor_checkpoint': None.*'ext.pt'.*another run folder"):
        KarmmaTrainer(start, tmp_path / 'r', Clips(16), None, collate_fn=collate)
    assert KarmmaTrainer(cfg, tmp_path / 'r', Clips(16), None, collate_fn=collate).epoch == 1          # its own config resumes it
    assert KarmmaTrainer(cfg.replace(epochs=4), tmp_path / 'r', Clips(16), None, collate_fn=collate).epoch == 1   # longer: allowed
    for change, said in ((dict(warmup_epochs=0), 'warmup_epochs: checkpoint 1, config 0'), (dict(lr=1e-3), 'lr: checkpoint 0.002, config 0.001'),
                         (dict(modality_dropout=0.3), 'modality_dropout: checkpoint 0.5, config 0.3'), (dict(seed=1), 'seed: checkpoint 0, config 1')):
        with pytest.raises(ValueError, match=f'another recipe: {said}'):
            KarmmaTrainer(cfg.replace(**change), tmp_path / 'r', Clips(16), None, collate_fn=collate)
    KarmmaTrainer(start, tmp_path / 's', Clips(16), None, collate_fn=collate).fit(stop_after=1)
    moved = start.replace(extractor_checkpoint=str(tmp_path / 'elsewhere' / 'ext.pt'))                # the same file, copied: the name counts
    assert KarmmaTrainer(moved, tmp_path / 's', Clips(16), None, collate_fn=collate, model=KarmmaModel(start)).epoch == 1
    for other in (cfg, start.replace(checkpoint_modalities=('rgb', 'flow'))):
        with pytest.raises(ValueError, match='other extractors'):
            KarmmaTrainer(other, tmp_path / 's', Clips(16), None, collate_fn=collate)


def test_token_cache_on_disk_is_found_by_a_new_cache(tmp_path):
    cfg = tiny('teacher')
    model = KarmmaModel(cfg)
    b = batch(n=4)
    c1 = TokenCache(tmp_path, dict(frames=4))
    t1 = c1.frozen_tokens(model, b)
    assert c1.misses == 4 and not c1.mem                                    # on disk, nothing kept in memory
    c2 = TokenCache(tmp_path, dict(frames=4))
    t2 = c2.frozen_tokens(model, b)
    assert c2.misses == 0 and c2.hits == 4                                  # read back from disk
    for m in MODS: torch.testing.assert_close(t1[m], t2[m], atol=1e-2, rtol=1e-2)   # float16 on disk
    assert c2.bytes_per_clip == sum(2 * v.shape[1] * v.shape[2] for v in t1.values())
    c3 = TokenCache(tmp_path, dict(frames=8))
    c3.frozen_tokens(model, b)
    assert c3.misses == 4                                                   # other sampling, other key
    b2 = dict(b, view=[1] * 4)                                              # another view of the same clips: other tokens
    c2.frozen_tokens(model, b2)
    assert c2.misses == 4
    with pytest.raises(ValueError, match='frozen'):
        TokenCache().frozen_tokens(KarmmaModel(tiny('student')), b)
    with pytest.raises(ValueError, match='views=0'):
        c2.frozen_tokens(model, dict(b, view=[None] * 4))


def test_token_store_chunks_and_index(tmp_path):
    st = TokenStore(tmp_path / 's', chunk_rows=3)
    x = {'rgb': torch.randn(5, 4, 2), 'audio': torch.randn(5, 1, 2)}
    st.put([f'k{i}' for i in range(5)], x)                                  # spans two chunk files
    assert sorted(p.name for p in (tmp_path / 's').glob('rgb-*.npy')) == ['rgb-00000.npy', 'rgb-00001.npy']
    again = TokenStore(tmp_path / 's', chunk_rows=3)
    got = again.get(['k4', 'k0'], ['rgb', 'audio'])
    torch.testing.assert_close(got['rgb'].float(), x['rgb'][[4, 0]].half().float())
    assert 'k3' in again and 'k9' not in again and len(again) == 5
    with pytest.raises(ValueError, match='do not fit'):
        again.put(['z'], {'rgb': torch.randn(1, 5, 2), 'audio': torch.randn(1, 1, 2)})
    (tmp_path / 's' / 'index.tsv').write_text('broken line\n')
    with pytest.raises(ValueError, match='index.tsv.*line 1'):
        TokenStore(tmp_path / 's')


def test_cache_keys_hold_the_view():
    assert clip_keys({'id': ['a', 'b']}) == ['a|-', 'b|-']
    assert clip_keys({'id': ['a', 'b'], 'view': [0, -1]}) == ['a|0', 'b|-1']
    assert clip_keys({'id': ['a'], 'view': [None]}) is None


def test_cached_clips_refuses_random_sampling():
    class D(torch.utils.data.Dataset):
        train = True
        def __len__(self): return 1
    with pytest.raises(ValueError, match='train=False'):
        CachedClips(D())



# ---- the method itself: each test fails when one part of KARMMA is broken

def reference_info_nce(a, b, tau):
    "Symmetric InfoNCE with cosine similarity / tau, written out."
    a, b = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    s = a @ b.T / tau
    return 0.5 * (-(s.diag() - s.logsumexp(1)).mean() - (s.diag() - s.logsumexp(0)).mean())


def test_info_nce_uses_its_temperature():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g)
    for tau in (0.1, 0.5, 1.0):
        assert info_nce(a, b, tau).item() == pytest.approx(reference_info_nce(a, b, tau).item(), rel=1e-5)
    assert abs(info_nce(a, b, 0.1).item() - info_nce(a, b, 1.0).item()) > 0.1


def test_teacher_loss_is_ce_plus_infonce_at_the_configured_temperature():
    b = batch(B=8, n=4, audio=torch.ones(8, dtype=torch.bool)); labels = {'label': b['label']}
    for tau in (0.1, 0.7):
        cfg = tiny('teacher', infonce_tau=tau)
        torch.manual_seed(0); model = KarmmaModel(cfg).eval()
        out = model(b['inputs'], b['present'])
        loss, parts = karmma_loss(cfg, out, labels, b['present'])
        v = cfg.modalities.index('rgb')
        ref = torch.stack([reference_info_nce(out['fused'][:, i], out['fused'][:, v], tau) for i, m in enumerate(cfg.modalities) if m != 'rgb']).mean()
        ce = torch.nn.functional.cross_entropy(out['logits']['label'], labels['label'])
        assert parts['aux'].item() == pytest.approx(ref.item(), rel=1e-4)
        assert loss.item() == pytest.approx(0.7 * ce.item() + 0.3 * ref.item(), rel=1e-4)


def test_student_loss_is_ce_plus_kl_to_the_teacher():
    b = batch(n=4); labels = {'label': b['label']}
    cfg = tiny('student')
    out = KarmmaModel(cfg).eval()(b['inputs'], b['present'])
    t = {'label': torch.randn(4, 4) * 3}
    loss, parts = karmma_loss(cfg, out, labels, teacher_logits=t)
    pt, ps = t['label'].softmax(-1), out['logits']['label'].softmax(-1)
    kl = (pt * (pt.log() - ps.log())).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(out['logits']['label'], labels['label'])
    assert kl.item() > 0.05 and parts['aux'].item() == pytest.approx(kl.item(), rel=1e-4)
    assert loss.item() == pytest.approx(0.7 * ce.item() + 0.3 * kl.item(), rel=1e-4)


def test_fusion_output_is_modality_means_then_cls():
    torch.manual_seed(0)
    f = ModalityFusion(MODS, dict(rgb=8, flow=8, audio=8), 16, 2, 4, max_tokens=10, attn_dropout=0., dropout=0.).eval()
    tok = {'rgb': torch.randn(2, 5, 8), 'flow': torch.randn(2, 3, 8), 'audio': torch.randn(2, 4, 8)}
    present = {m: torch.ones(2, dtype=torch.bool) for m in MODS}
    out = f(tok, present)
    assert out.shape == (2, len(MODS) + 1, 16)
    zs = [f.modality_tokens(m, tok[m], present[m]) for m in MODS]
    x = torch.cat([f.cls.expand(2, 1, -1), *zs], 1)                     # CLS first in the sequence
    for layer in f.layers: x = layer(x)
    x = f.norm(x)
    torch.testing.assert_close(out[:, 0], x[:, 1:6].mean(1))              # rgb: the mean of its 5 output tokens
    torch.testing.assert_close(out[:, 2], x[:, 9:13].mean(1))             # audio
    torch.testing.assert_close(out[:, -1], x[:, 0])                       # the CLS output, last
    f.cls.data += 1.                                                      # the CLS token is in the sequence
    assert not torch.allclose(f(tok, present), out)


def test_prediction_averages_the_m_plus_one_token_predictions():
    torch.manual_seed(0)
    head = MultiHeadMLP(16, {'verb': 5, 'noun': 7}, dropout=0.).eval()
    z = torch.randn(3, 4, 16)
    logits, per_token = head(z)
    for t, n in (('verb', 5), ('noun', 7)):
        ref = torch.stack([head.heads[t](head.shared(z[:, j])) for j in range(4)], 1)
        torch.testing.assert_close(per_token[t], ref)
        torch.testing.assert_close(logits[t], ref.mean(1))
        assert not torch.allclose(logits[t], ref[:, -1])                  # not the CLS token's prediction alone
    cfg = tiny('student')
    model = KarmmaModel(cfg).eval()
    b = batch()
    out = model(b['inputs'], b['present'])
    torch.testing.assert_close(out['logits']['label'], out['token_logits']['label'].mean(1))
    assert out['token_logits']['label'].shape[1] == len(MODS) + 1


class Spy:
    "Wraps a model's classify and records the `present` masks it receives."
    def __init__(self, model):
        self.seen, self.inner = [], model.classify
        model.classify = self
    def __call__(self, tokens, present):
        self.seen.append({m: v.clone().cpu() for m, v in present.items()})
        return self.inner(tokens, present)


def student_trainer(tmp_path, role='student', n=32, **kw):
    data = Clips(n, seed=3)
    teacher = KarmmaModel(tiny('teacher')).eval() if role == 'student' else None
    return KarmmaTrainer(tiny(role, batch_size=n, **kw), tmp_path / role, data, None, teacher=teacher, collate_fn=collate), data


@pytest.mark.parametrize('role', ['student', 'dropout_only'])
def test_training_step_drops_modalities_for_the_student_only(tmp_path, role):
    tr, data = student_trainer(tmp_path, role)
    assert tr.cfg.modality_dropout == 0.5
    spy_s = Spy(tr.model)
    spy_t = Spy(tr.teacher) if tr.teacher is not None else None
    b = collate([data[i] for i in range(len(data))])
    for _ in range(3): tr.train_step(b)
    for seen in spy_s.seen:
        kept = torch.stack([seen[m] for m in MODS], 1)
        assert kept.any(1).all()                                          # never every modality gone
        for m in MODS: assert not (seen[m] & ~b['present'][m]).any()      # nothing missing comes back
        rate = kept[b['present']['audio']].float().mean()
        assert 0.3 < rate < 0.8, rate                                     # about (1 - p) + p^3 / 3 = 0.54 kept
    if spy_t is not None:
        for seen in spy_t.seen:                                           # the teacher sees every modality the clip has
            for m in MODS: assert torch.equal(seen[m], b['present'][m])


def test_ce_only_baseline_sees_every_modality(tmp_path):
    tr, data = student_trainer(tmp_path, 'ce_only')
    spy = Spy(tr.model)
    b = collate([data[i] for i in range(len(data))])
    tr.train_step(b)
    for m in MODS: assert torch.equal(spy.seen[0][m], b['present'][m])


def test_student_step_moves_toward_the_teacher(tmp_path):
    "The distillation term pulls the student toward the teacher's distribution, beyond what the labels do."
    probs = {}
    for name, kw in (('kd', {}), ('no_kd', dict(aux_weight=0.))):
        tr, data = student_trainer(tmp_path / name, modality_dropout=0., lr=3e-3, warmup_epochs=0, epochs=50, **kw)
        b = collate([data[i] for i in range(len(data))])
        target = (b['label'] + 1) % 4                                     # the teacher prefers another class
        tr.teacher_predictions = lambda batch: {'label': 6. * torch.nn.functional.one_hot(target, 4).float()}
        for _ in range(15): tr.train_step(b)
        tr.model.eval()
        with torch.no_grad(): p = tr.model(b['inputs'], b['present'])['logits']['label'].softmax(-1)
        probs[name] = p.gather(1, target[:, None]).mean().item()
    assert probs['kd'] > probs['no_kd'] + 0.05, probs


class ViewClips(Clips):
    "Clips whose pixels depend on the epoch's view (views random samplings cycled over epochs), as `KarmmaDataset` in training."
    def __init__(self, n, views, **kw):
        super().__init__(n, **kw); self.views, self.epoch = views, 0
    def set_epoch(self, e): self.epoch = e
    def __getitem__(self, i):
        it = super().__getitem__(i)
        v = self.epoch % self.views if self.views else None
        g = torch.Generator().manual_seed(1000 * (v if v is not None else 99 + self.epoch) + i)
        it['inputs'] = {m: x + 0.5 * torch.randn(x.shape, generator=g) * bool(it['present'][m]) for m, x in it['inputs'].items()}
        it['view'] = v
        return it


@pytest.mark.parametrize('views', [2, 0])
def test_teacher_sees_the_students_exact_clip(tmp_path, views):
    data = ViewClips(16, views)
    t_cfg = tiny('teacher', batch_size=8, epochs=2)
    tt = KarmmaTrainer(t_cfg, tmp_path / 't', data, None, collate_fn=collate)
    tt.fit()
    st = KarmmaTrainer(tiny('student', batch_size=8, epochs=3), tmp_path / 's', data, None, teacher=tt.model,
                       teacher_cache=tt.cache, collate_fn=collate)
    teacher = tt.model.eval()
    for epoch in range(3):                                                # views 0, 1, 0 (or three new samplings)
        data.set_epoch(epoch)
        b = collate([data[i] for i in range(8)])
        got = st.teacher_predictions(b)['label']
        with torch.no_grad(): ref = teacher(b['inputs'], b['present'])['logits']['label']
        torch.testing.assert_close(got, ref, atol=2e-2, rtol=1e-2)        # the teacher on the very clips the student gets
    if views:
        assert tt.cache.misses == 16 * 2 and len(tt.cache) == 16 * 2      # one extraction per clip and view, reused after
    else:
        assert tt.cache is None or len(tt.cache) == 0                     # nothing cacheable: extracted on the fly


def test_box_extractor_trains_inside_the_ssv2_teacher(tmp_path):
    cfg = make_karmma_config('ssv2', 'teacher', scale='tiny', frames=4, size=32, num_classes=(4,), epochs=1, warmup_epochs=0,
                             batch_size=8, device='cpu')
    assert cfg.frozen_modalities == ('rgb', 'flow') and cfg.trainable_extractors == ('boxes',)
    g = torch.Generator().manual_seed(0)
    class Boxes(torch.utils.data.Dataset):
        def __len__(self): return 16
        def __getitem__(self, i):
            return dict(id=f'b{i}', label=torch.tensor(i % 4), view=-1,
                        inputs=dict(rgb=torch.randn(4, 3, 32, 32, generator=g), flow=torch.randn(4, 2, 32, 32, generator=g),
                                    boxes=torch.rand(4, 4, 5, generator=g)), present=dict(rgb=True, flow=True, boxes=True))
    def col(items):
        return dict(id=[i['id'] for i in items], view=[i['view'] for i in items], label=torch.stack([i['label'] for i in items]),
                    inputs={m: torch.stack([i['inputs'][m] for i in items]) for m in cfg.modalities},
                    present={m: torch.ones(len(items), dtype=torch.bool) for m in cfg.modalities})
    tr = KarmmaTrainer(cfg, tmp_path / 't', Boxes(), None, collate_fn=col)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    after = tr.model.state_dict()
    changed = lambda prefix: any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))
    assert changed('extractors.boxes.') and not changed('extractors.rgb.') and not changed('extractors.flow.')
    assert tr.cache.store is None and set(next(iter(tr.cache.mem.values()))) == {'rgb', 'flow'}   # only frozen tokens cached


def test_pretrained_extractors_are_loaded_and_frozen(tmp_path):
    cfg = tiny('teacher', batch_size=8)
    acc = pretrain_extractors(cfg, Clips(24), tmp_path / 'ext.pt', epochs=2, batch_size=8, collate_fn=collate)
    assert set(acc) == set(MODS)
    model = KarmmaModel(cfg.replace(extractor_checkpoint=str(tmp_path / 'ext.pt')))
    sd = torch.load(tmp_path / 'ext.pt', weights_only=True)
    for m in MODS:
        for k, v in model.extractors[m].state_dict().items(): assert torch.equal(v, sd[m][k]), (m, k)
    assert not any(p.requires_grad for p in model.extractors.parameters())
    with pytest.raises(ValueError, match="no weights for"):
        KarmmaModel(tiny('teacher', modalities=('rgb', 'flow', 'audio', 'boxes'), extractor_checkpoint=str(tmp_path / 'ext.pt')))
    with pytest.raises(FileNotFoundError, match='pretrain_extractors'):
        KarmmaModel(cfg.replace(extractor_checkpoint=str(tmp_path / 'none.pt')))


def test_a_checkpoint_of_some_extractors_sets_only_those(tmp_path):
    "pretrain_extractors on a subset writes only that subset; checkpoint_modalities loads it and leaves the others at their initialisation."
    cfg = tiny('student', batch_size=8)
    acc = pretrain_extractors(cfg, Clips(24), tmp_path / 'ext.pt', epochs=1, batch_size=8, collate_fn=collate, modalities=('flow',))
    sd = torch.load(tmp_path / 'ext.pt', weights_only=True)
    assert set(acc) == set(sd) == {'flow'}
    torch.manual_seed(0); part = KarmmaModel(cfg.replace(extractor_checkpoint=str(tmp_path / 'ext.pt'), checkpoint_modalities=('flow',)))
    torch.manual_seed(0); scratch = KarmmaModel(cfg)
    for k, v in part.extractors['flow'].state_dict().items(): assert torch.equal(v, sd['flow'][k]), k
    assert not all(torch.equal(v, sd['flow'][k]) for k, v in scratch.extractors['flow'].state_dict().items())
    for m in ('rgb', 'audio'):
        for k, v in part.extractors[m].state_dict().items(): assert torch.equal(v, scratch.extractors[m].state_dict()[k]), (m, k)
    with pytest.raises(ValueError, match=r"holds no weights for \['rgb'\]"):       # every modality by default: this file lacks two
        KarmmaModel(cfg.replace(extractor_checkpoint=str(tmp_path / 'ext.pt'), checkpoint_modalities=('rgb', 'flow')))
    with pytest.raises(ValueError, match='no weights for'): KarmmaModel(cfg.replace(extractor_checkpoint=str(tmp_path / 'ext.pt')))
    with pytest.raises(ValueError, match='give each its targets'):
        pretrain_extractors(cfg, Clips(24), tmp_path / 'x.pt', epochs=1, collate_fn=collate, modalities=('flow',), targets={'rgb': cfg.classes})


# ---- the synthetic benchmark (slow)

SLOW = os.environ.get('M2DF_SLOW') == '1'


@pytest.mark.skipif(not SLOW, reason='trains four models on the synthetic benchmark (minutes on a CPU): set M2DF_SLOW=1')
def test_synthetic_benchmark_teacher_strongest_and_student_robust(tmp_path):
    "One seed of tests/benchmarks/bench_karmma_synthetic.py (which measures distillation's effect over seeds, with intervals)."
    import importlib.util
    from m2df.karmma.data import karmma_synthetic_root
    spec = importlib.util.spec_from_file_location('bench', Path(__file__).parent / 'benchmarks' / 'bench_karmma_synthetic.py')
    bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench)
    fig = bench.one_seed(0, karmma_synthetic_root(), tmp_path, pretrain_epochs=15)
    t, s, d, c = (fig[r] for r in ('teacher', 'student', 'dropout_only', 'ce_only'))
    assert t['all'] >= max(s['all'], d['all'], c['all']), fig                # the teacher is the strongest model
    assert s['missing'] > c['missing'] and s['p0.9'] > c['p0.9'], fig       # the student keeps more when modalities go
    assert s['all'] > 10 * 100 / 24, fig                                     # and it learnt the task (chance 4.2%)
