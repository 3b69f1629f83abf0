"Tests of m2df.temporal: the local (LTCE, two temporal convolutions) and global (GTCE, a dilated causal TCN) views."
import pytest
import torch
import torch.nn.functional as F

from m2df.config import M2DFConfig, make_config
from m2df.temporal import (LocalTemporalContext, GlobalTemporalContext, TemporalBlock, CausalConv1d,
                           tcn_receptive_field)

TS = (4, 8, 16)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize('T', TS)
@pytest.mark.parametrize('D', (8, 24))
def test_shapes(T, D):
    x = torch.randn(3, T, D)
    assert LocalTemporalContext(D)(x).shape == (3, T, D)
    assert GlobalTemporalContext(D)(x).shape == (3, T, D)
    assert GlobalTemporalContext(D).tcn(x).shape == (3, T, D)


@pytest.mark.parametrize('T', TS)
def test_ltce_is_two_plain_convolutions(T):
    D = 12
    m = LocalTemporalContext(D)
    x = torch.randn(2, T, D)
    h = F.conv1d(x.transpose(1, 2), m.conv1.weight, m.conv1.bias, padding=1)
    ref = F.conv1d(h, m.conv2.weight, m.conv2.bias, padding=1).transpose(1, 2)
    torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    assert m.conv1.kernel_size == (3,) and m.conv2.kernel_size == (3,)


def test_ltce_has_no_activation_between():
    "Linear in its input up to the biases: L(a x + b y) - bias term = a L(x) + b L(y) - ..."
    D, T = 8, 8
    m = LocalTemporalContext(D)
    x, y = torch.randn(1, T, D), torch.randn(1, T, D)
    zero = m(torch.zeros(1, T, D))
    lhs = m(2 * x - 3 * y) - zero
    rhs = 2 * (m(x) - zero) - 3 * (m(y) - zero)
    torch.testing.assert_close(lhs, rhs, atol=1e-4, rtol=1e-4)


def test_ltce_local_support():
    "Each output frame depends only on input frames at most 2 steps away (two kernel-3 convolutions)."
    D, T = 8, 16
    m = LocalTemporalContext(D)
    x = torch.randn(1, T, D, requires_grad=True)
    m(x)[0, 7].sum().backward()
    reached = x.grad[0].abs().sum(-1).gt(0).nonzero().flatten().tolist()
    assert reached == [5, 6, 7, 8, 9]


def test_causal_conv_matches_left_padding():
    c = CausalConv1d(6, 5, kernel=3, dilation=2)
    x = torch.randn(2, 6, 10)
    w, b = c.conv.weight, c.conv.bias
    ref = F.conv1d(F.pad(x, (4, 0)), w, b, dilation=2)
    torch.testing.assert_close(c(x), ref, atol=1e-5, rtol=1e-5)
    assert c(x).shape == (2, 5, 10)
    assert CausalConv1d(6, 6, kernel=1, dilation=4)(x).shape == (2, 6, 10)   # nothing to chomp


def test_weight_norm_parametrization():
    g = GlobalTemporalContext(8)
    names = [n for n, _ in g.named_parameters()]
    assert sum('parametrizations.weight.original0' in n for n in names) == 2 * len(g.dilations)
    assert sum('parametrizations.weight.original1' in n for n in names) == 2 * len(g.dilations)
    conv = g.blocks[0].net[0].conv
    v, gain = conv.parametrizations.weight.original1, conv.parametrizations.weight.original0
    torch.testing.assert_close(conv.weight, gain * v / v.norm(dim=(1, 2), keepdim=True))


@pytest.mark.parametrize('T', TS)
def test_gtce_causal(T):
    D = 16
    g = GlobalTemporalContext(D).eval()
    x = torch.randn(2, T, D)
    y = g.tcn(x)
    for t in range(T):
        x2 = x.clone()
        x2[:, t] += 3 * torch.randn(2, D)
        y2 = g.tcn(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=0)
        assert (y2[:, t:] - y[:, t:]).abs().amax(dim=(0, 2)).gt(1e-4).all(), f'frame {t} did not reach later outputs'


@pytest.mark.parametrize('T', TS)
def test_gtce_adds_one_summary_vector(T):
    D = 16
    g = GlobalTemporalContext(D).eval()
    x = torch.randn(4, T, D)
    off = g(x) - x
    torch.testing.assert_close(off, off[:, :1].expand_as(off), atol=1e-6, rtol=0)
    torch.testing.assert_close(off[:, 0], g.tcn(x)[:, -1], atol=1e-6, rtol=0)
    # the summary depends on the clip: different clips get different offsets
    assert (off[0, 0] - off[1, 0]).abs().max() > 1e-4


def test_receptive_field_default():
    cfg = M2DFConfig()
    assert (cfg.gtce_dilations, cfg.gtce_kernel) == ((1, 2, 4), 3)
    # two convs per block, each widening the window by (k-1)*d
    expected = 1 + sum(2 * (3 - 1) * d for d in (1, 2, 4))
    assert expected == 29
    assert tcn_receptive_field() == expected
    assert GlobalTemporalContext(8).receptive_field == expected


@pytest.mark.parametrize('kernel,dilations', [(3, (1, 2, 4)), (3, (1,)), (2, (1, 3)), (5, (2,))])
def test_receptive_field_empirical(kernel, dilations):
    D = 16
    g = GlobalTemporalContext(D, dilations=dilations, kernel=kernel).eval()
    R = g.receptive_field
    assert R == 1 + 2 * (kernel - 1) * sum(dilations)
    T = R + 10
    x = torch.randn(1, T, D, requires_grad=True)
    g.tcn(x)[0, -1].sum().backward()
    reached = x.grad[0].abs().sum(-1).gt(0)
    assert not reached[:T - R].any()
    assert reached[T - R]                              # the oldest frame of the window is reached
    if kernel == 2 or 1 in dilations:
        assert reached[T - R:].all()                   # and here every frame inside it
    else:                                              # a lone dilation d reaches only multiples of d
        offsets = (T - 1 - torch.arange(T - R, T)) % dilations[0]
        assert torch.equal(reached[T - R:], offsets == 0)


def test_gradients_reach_all_parameters():
    D, T = 16, 8
    for m in (LocalTemporalContext(D), GlobalTemporalContext(D)):
        m.train()
        x = torch.randn(3, T, D, requires_grad=True)
        m(x).pow(2).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        for n, p in m.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, f'{type(m).__name__}.{n} got no gradient'


def test_dropout_active_in_training_only():
    D, T = 16, 8
    g = GlobalTemporalContext(D, dropout=0.5)
    x = torch.randn(2, T, D)
    g.train()
    assert not torch.equal(g(x), g(x))
    g.eval()
    assert torch.equal(g(x), g(x))


def test_temporal_block_residual():
    b = TemporalBlock(8, 8, 3, 1, 0.)
    assert isinstance(b.residual, torch.nn.Identity)
    b2 = TemporalBlock(6, 8, 3, 2, 0.).eval()
    assert isinstance(b2.residual, torch.nn.Conv1d) and b2.residual.kernel_size == (1,)
    x = torch.randn(2, 6, 9)
    torch.testing.assert_close(b2(x), F.relu(b2.residual(x) + b2.net(x)))
    assert (b2(x) >= 0).all()


def test_from_config():
    cfg = make_config('synthetic', gtce_dilations=(1, 2), gtce_kernel=2, gtce_dropout=0.3)
    g = GlobalTemporalContext.from_config(cfg, 8)
    assert g.dilations == (1, 2) and g.kernel == 2 and len(g.blocks) == 2
    assert g.blocks[0].net[2].p == 0.3


def test_bad_input():
    with pytest.raises(ValueError, match='D=8'):
        LocalTemporalContext(8)(torch.randn(2, 4, 7))
    with pytest.raises(ValueError, match='B×T×D'):
        GlobalTemporalContext(8)(torch.randn(4, 8))
    with pytest.raises(ValueError, match='no time steps'):
        GlobalTemporalContext(8)(torch.randn(2, 0, 8))
    with pytest.raises(ValueError, match='dilations'):
        GlobalTemporalContext(8, dilations=())
    with pytest.raises(ValueError, match='dilations'):
        GlobalTemporalContext(8, dilations=(1, 0))
    with pytest.raises(ValueError, match='kernel'):
        GlobalTemporalContext(8, kernel=0)
