"Tests of m2df.fusion: the Multi-modal Fusion Encoder (cross transformer over prompt + frames) and class prototypes."
import pytest
import torch
import torch.nn.functional as F

import m2df.fusion as fusion
from m2df.config import make_config
from m2df.fusion import MultiModalFusionEncoder, FusionBlock, class_prototypes


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def ref_block(blk, q, kv=None):
    "One block written out with einsum/softmax from the module's weights (eval mode: no dropout)."
    kv = q if kv is None else kv
    D, H = blk.dim, blk.heads
    dh = D // H
    ln = lambda x, n: F.layer_norm(x, (D,), n.weight, n.bias, n.eps)
    nq, nkv = ln(q, blk.norm), ln(kv, blk.norm)
    Q = torch.einsum('bld,ed->ble', nq, blk.to_q.weight).reshape(*q.shape[:2], H, dh)
    K = torch.einsum('bld,ed->ble', nkv, blk.to_k.weight).reshape(*kv.shape[:2], H, dh)
    V = torch.einsum('bld,ed->ble', nkv, blk.to_v.weight).reshape(*kv.shape[:2], H, dh)
    A = torch.softmax(torch.einsum('bihd,bjhd->bhij', Q, K) / dh ** 0.5, dim=-1)
    O = torch.einsum('bhij,bjhd->bihd', A, V).reshape(q.shape)
    z = q + torch.einsum('ble,de->bld', O, blk.to_out.weight) + blk.to_out.bias
    h = ln(z, blk.ffn_norm) if isinstance(blk.ffn_norm, torch.nn.LayerNorm) else z
    l1, l2 = blk.ffn[0], blk.ffn[3]
    return z + F.gelu(h @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias


def inputs(B, T, D):
    return torch.randn(B, D), torch.randn(B, T, D), torch.randn(B, T, D)


@pytest.mark.parametrize('T', (4, 8, 16))
@pytest.mark.parametrize('D,H', [(32, 8), (48, 4), (64, 8)])
def test_shapes(T, D, H):
    m = MultiModalFusionEncoder(D, heads=H, ffn=64)
    assert m(*inputs(3, T, D)).shape == (3, 1 + T, D)


@pytest.mark.parametrize('T', (4, 8, 13))
@pytest.mark.parametrize('ffn_norm', (True, False))
def test_matches_reference_attention(T, ffn_norm):
    D, H = 32, 4
    m = MultiModalFusionEncoder(D, heads=H, ffn=80, ffn_norm=ffn_norm).eval()
    P, C, Fr = inputs(3, T, D)
    q = torch.cat([P[:, None], C], 1)
    kv = torch.cat([P[:, None], Fr], 1)
    torch.testing.assert_close(m(P, C, Fr), ref_block(m.blocks[0], q, kv), atol=1e-5, rtol=1e-5)


def test_depth_two_is_cross_then_self_attention():
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64, depth=2).eval()
    assert len(m.blocks) == 2
    P, C, Fr = inputs(2, T, D)
    z = ref_block(m.blocks[0], torch.cat([P[:, None], C], 1), torch.cat([P[:, None], Fr], 1))
    z = ref_block(m.blocks[1], z)
    out = m(P, C, Fr)
    assert out.shape == (2, 1 + T, D)
    torch.testing.assert_close(out, z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('depth', (1, 2))
def test_permutation_equivariance(depth):
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64, depth=depth).eval()
    P, C, Fr = inputs(2, T, D)
    z = m(P, C, Fr)
    perm = torch.randperm(T)
    while torch.equal(perm, torch.arange(T)): perm = torch.randperm(T)
    zp = m(P, C[:, perm], Fr[:, perm])
    torch.testing.assert_close(zp[:, 1:], z[:, 1:][:, perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(zp[:, 0], z[:, 0], atol=1e-5, rtol=1e-5)
    # keys/values form a set: permuting the raw frames alone changes nothing; each output token i reads C_i only
    torch.testing.assert_close(m(P, C, Fr[:, perm]), z, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(P, C[:, perm], Fr)[:, 1:], z[:, 1:][:, perm], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(z[:, 1:][:, perm], z[:, 1:], atol=1e-4)   # the permutation is not trivial on outputs


def test_prompt_participates():
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64).eval()
    P, C, Fr = inputs(2, T, D)
    z = m(P, C, Fr)
    z2 = m(P + torch.randn_like(P), C, Fr)
    assert (z2 - z).abs().amax(dim=(0, 2)).gt(1e-4).all()    # every token changes, frame tokens included
    # through the keys/values alone: the prompt is the only key that is not a frame
    q = torch.cat([P[:, None], C], 1)
    kv_zero = torch.cat([torch.zeros_like(P)[:, None], Fr], 1)
    assert not torch.allclose(m.blocks[0](q, kv_zero), z, atol=1e-4)


def test_context_are_queries_frames_are_keys():
    "Swapping the roles of context and frames changes the output (they are not interchangeable)."
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64).eval()
    P, C, Fr = inputs(2, T, D)
    assert not torch.allclose(m(P, C, Fr), m(P, Fr, C), atol=1e-4)


def test_dropout_eval_deterministic_train_stochastic():
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64, attn_dropout=0.5, ffn_dropout=0.5)
    P, C, Fr = inputs(2, T, D)
    m.eval()
    assert torch.equal(m(P, C, Fr), m(P, C, Fr))
    m.train()
    assert not torch.equal(m(P, C, Fr), m(P, C, Fr))


def test_structure():
    blk = MultiModalFusionEncoder(32, heads=8, ffn=128).blocks[0]
    assert blk.to_q.bias is None and blk.to_k.bias is None and blk.to_v.bias is None
    assert blk.to_out.bias is not None
    assert blk.attn_drop.p == 0.2 and blk.ffn[2].p == 0.05 and blk.ffn[4].p == 0.05
    assert blk.ffn[0].out_features == 128 and isinstance(blk.ffn[1], torch.nn.GELU)
    assert isinstance(blk.ffn_norm, torch.nn.Identity)          # default: the authors' block, x = ff(x) + x
    assert isinstance(FusionBlock(32, 8, 64, 0., 0.).ffn_norm, torch.nn.Identity)
    normed = FusionBlock(32, 8, 64, 0., 0., ffn_norm=True)
    assert isinstance(normed.ffn_norm, torch.nn.LayerNorm) and normed.ffn_norm is not normed.norm
    assert not any('pos' in n for n, _ in MultiModalFusionEncoder(32).named_parameters())


def test_uses_sdpa(monkeypatch):
    calls = []
    orig = F.scaled_dot_product_attention
    monkeypatch.setattr(fusion.F, 'scaled_dot_product_attention', lambda *a, **k: calls.append(1) or orig(*a, **k))
    MultiModalFusionEncoder(32, heads=4, ffn=64, depth=3)(*inputs(2, 8, 32))
    assert len(calls) == 3


def test_gradients_reach_all_parameters():
    D, T = 32, 8
    m = MultiModalFusionEncoder(D, heads=4, ffn=64, depth=2).train()
    P, C, Fr = (t.requires_grad_() for t in inputs(3, T, D))
    m(P, C, Fr).pow(2).sum().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f'{n} got no gradient'
    for name, t in (('prompt', P), ('context', C), ('frames', Fr)):
        assert t.grad is not None and t.grad.abs().sum() > 0, f'no gradient to {name}'


def test_from_config():
    cfg = make_config('synthetic', fusion_depth=2)
    m = MultiModalFusionEncoder.from_config(cfg, 64)
    assert m.heads == cfg.fusion_heads and m.depth == 2
    assert m.blocks[0].ffn[0].out_features == cfg.fusion_ffn
    assert m.blocks[0].attn_drop.p == cfg.fusion_attn_dropout


def test_bad_input():
    with pytest.raises(ValueError, match='dim=30'):
        MultiModalFusionEncoder(30, heads=8)
    with pytest.raises(ValueError, match='heads=0'):
        MultiModalFusionEncoder(32, heads=0)
    with pytest.raises(ValueError, match='depth'):
        MultiModalFusionEncoder(32, depth=0)
    m = MultiModalFusionEncoder(32, heads=4, ffn=64)
    P, C, Fr = inputs(2, 8, 32)
    with pytest.raises(ValueError, match='prompt'):
        m(P[:, :16], C, Fr)
    with pytest.raises(ValueError, match='prompt'):
        m(P[0], C, Fr)
    with pytest.raises(ValueError, match='context'):
        m(P, C[:1], Fr)
    with pytest.raises(ValueError, match='frames'):
        m(P, C, Fr[..., :16])
    with pytest.raises(ValueError, match='same shape'):
        m(P, C, Fr[:, :4])


# --- class prototypes

@pytest.mark.parametrize('trailing', [(), (5,), (9, 16), (2, 3, 4)])
def test_prototypes_equal_loop_mean(trailing):
    way = 4
    labels = torch.tensor([3, 0, 1, 1, 2, 0, 3, 3, 2, 1, 1])
    x = torch.randn(len(labels), *trailing)
    protos = class_prototypes(x, labels, way)
    assert protos.shape == (way, *trailing)
    for c in range(way):
        acc = torch.zeros(trailing)
        idx = [i for i, l in enumerate(labels.tolist()) if l == c]
        for i in idx: acc = acc + x[i]
        torch.testing.assert_close(protos[c], acc / len(idx), atol=1e-6, rtol=1e-6)


def test_prototypes_class_major_episode():
    N, K, T, D = 5, 3, 8, 16
    labels = torch.arange(N).repeat_interleave(K)
    x = torch.randn(N * K, 1 + T, D)
    torch.testing.assert_close(class_prototypes(x, labels, N), x.view(N, K, 1 + T, D).mean(1))
    torch.testing.assert_close(class_prototypes(x[::K], torch.arange(N), N), x[::K])   # one shot: identity


def test_prototypes_gradient_and_list_labels():
    x = torch.randn(4, 3, requires_grad=True)
    class_prototypes(x, [0, 1, 1, 0], 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4, 3), 0.5))


def test_prototypes_bad_input():
    x = torch.randn(6, 4)
    with pytest.raises(ValueError, match=r'\[2\]'):
        class_prototypes(x, torch.tensor([0, 0, 1, 1, 3, 3]), 4)
    with pytest.raises(ValueError, match='0..2'):
        class_prototypes(x, torch.tensor([0, 0, 1, 1, 3, 3]), 3)
    with pytest.raises(ValueError, match='0..2'):
        class_prototypes(x, torch.tensor([0, 0, 1, 1, -1, 2]), 3)
    with pytest.raises(ValueError, match='shape'):
        class_prototypes(x, torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ValueError, match='integer'):
        class_prototypes(x, torch.tensor([0., 0, 1, 1, 2, 2]), 3)
    with pytest.raises(ValueError, match='way'):
        class_prototypes(x, torch.tensor([0, 0, 1, 1, 2, 2]), 0)


def test_ffn_norm_from_config():
    from m2df.config import M2DFConfig, make_config
    assert isinstance(MultiModalFusionEncoder.from_config(M2DFConfig(), 32).blocks[0].ffn_norm, torch.nn.Identity)
    assert isinstance(MultiModalFusionEncoder.from_config(M2DFConfig(ffn_norm=True), 32).blocks[0].ffn_norm, torch.nn.LayerNorm)
    assert make_config('ucf101', 'paper').ffn_norm is False and make_config('ucf101', 'reference').ffn_norm is False
