"Tests of m2df.karmma.model and m2df.karmma.train: token reduction, missing modalities, modality dropout, losses, protocols, checkpoints."
import functools, math, os, tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from m2df.karmma.model import (KarmmaConfig, KarmmaModel, ModalityFusion, SwinTokens, adapt_stem, drop_modalities, info_nce,
                         karmma_loss, kd_kl, make_karmma_config, swin_state_dict, theta_average)
from m2df.karmma.train import (CachedClips, KarmmaTrainer, TokenCache, evaluate_protocols, fixed_drops, karmma_lr,
                               load_karmma_checkpoint, modality_subsets)

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
    return dict(id=[i['id'] for i in items], label=torch.stack([i['label'] for i in items]),
                inputs={m: torch.stack([i['inputs'][m] for i in items]) for m in MODS},
                present={m: torch.tensor([i['present'][m] for i in items]) for m in MODS})


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


def test_paper_presets():
    t, s = make_karmma_config('epic_kitchens', 'teacher'), make_karmma_config('epic_kitchens', 'student')
    assert (t.video_extractor, t.fusion_dim, t.fusion_layers, t.fusion_heads, t.fusion_attn_dropout) == ('swin3d_b', 768, 2, 8, 0.3)
    assert (s.video_extractor, s.audio_extractor, s.fusion_dim, s.fusion_layers) == ('swin3d_t', 'ast', 384, 1)
    assert (t.ce_weight, t.aux_weight, t.infonce_tau, s.kd_temperature, s.modality_dropout, t.theta) == (0.7, 0.3, 0.1, 1., 0.5, 300)
    assert (t.epochs, t.warmup_epochs, t.warmup_lr) == (100, 10, 1e-5)
    for role in ('ce_only', 'dropout_only'):
        b = make_karmma_config('epic_kitchens', role)
        assert (b.video_extractor, b.fusion_dim, b.aux_loss) == ('swin3d_t', 384, 'none')


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


def test_token_cache_uses_a_feature_store(tmp_path):
    from m2df.karmma.data import FeatureStore
    cfg = tiny('teacher')
    model = KarmmaModel(cfg)
    b = batch(n=4)
    store = FeatureStore(tmp_path)
    c1 = TokenCache(store, dict(frames=4))
    t1 = c1.tokens(model, b)
    c2 = TokenCache(store, dict(frames=4), memory=False)
    t2 = c2.tokens(model, b)
    assert c2.misses == 0 and c2.hits == 4 and not c2.mem                  # read back from disk, nothing kept in memory
    for m in MODS: torch.testing.assert_close(t1[m], t2[m])
    c3 = TokenCache(store, dict(frames=8))
    c3.tokens(model, b)
    assert c3.misses == 4                                                   # other sampling, other key
    with pytest.raises(ValueError, match='frozen'):
        TokenCache().tokens(KarmmaModel(tiny('student')), b)


def test_cached_clips_refuses_random_sampling():
    class D(torch.utils.data.Dataset):
        train = True
        def __len__(self): return 1
    with pytest.raises(ValueError, match='train=False'):
        CachedClips(D())


# ---- the synthetic benchmark (slow)

SLOW = os.environ.get('M2DF_SLOW') == '1'


@pytest.mark.skipif(not SLOW, reason='trains four models on the synthetic benchmark (minutes on a CPU): set M2DF_SLOW=1')
def test_student_degrades_less_than_ce_baseline_on_synthetic(tmp_path):
    from m2df.karmma.data import KarmmaDataset, karmma_synthetic_root
    root = karmma_synthetic_root()
    cfgs = {r: make_karmma_config('synthetic', r, device='cpu') for r in ('teacher', 'student', 'ce_only')}
    c = cfgs['student']
    ds = {s: CachedClips(KarmmaDataset(root, s, modalities=c.modalities, frames=c.frames, size=c.size)) for s in ('train', 'val', 'test')}
    teacher = KarmmaTrainer(cfgs['teacher'], tmp_path / 'teacher', ds['train'], ds['val'])
    teacher.fit()
    models = {'teacher': teacher.model}
    for r in ('student', 'ce_only'):
        kw = dict(teacher=teacher.model, teacher_cache=teacher.cache) if r == 'student' else {}
        tr = KarmmaTrainer(cfgs[r], tmp_path / r, ds['train'], ds['val'], **kw)
        tr.fit(); models[r] = tr.model
    res = evaluate_protocols(models, ds['test'], caches={'teacher': teacher.cache})
    full = '+'.join(c.modalities)
    minus_one = ['+'.join(s) for s in modality_subsets(c.modalities) if len(s) == len(c.modalities) - 1]
    figures = {}
    for n, r in res['models'].items():
        acc = {k: v['accuracy'] for k, v in r['subsets'].items()}
        figures[n] = dict(full=acc[full], minus_one=float(np.mean([acc[k] for k in minus_one])),
                          p09=r['drop'][0.9]['accuracy'], subsets=acc)
        figures[n]['loss'] = figures[n]['full'] - figures[n]['minus_one']
        print(n, {k: (round(v, 1) if isinstance(v, float) else {a: round(b, 1) for a, b in v.items()}) for k, v in figures[n].items()})
    s, b = figures['student'], figures['ce_only']
    assert s['loss'] < b['loss'], (s, b)                                   # the student loses less when a modality goes
    assert s['p09'] > b['p09'], (s, b)                                     # and keeps more when most modalities go
    chance = 100 / c.num_classes[0]
    assert s['full'] > 2 * chance                                          # and it did learn the task
