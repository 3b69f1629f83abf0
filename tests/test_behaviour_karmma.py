"""Behaviour tests of KARMMA's distillation and model selection (issue 23): the KD loss at T ≠ 1 against its formula (T², the
softened teacher and student), kd_temperature and the loss weights read from the config, and the best-vs-last weights."""
import math

import pytest
import torch

import m2df.karmma.train as ktrain
from m2df.karmma.model import KarmmaModel, karmma_loss, kd_kl
from m2df.karmma.train import KarmmaTrainer, load_karmma_checkpoint
from test_karmma import Clips, batch, collate, tiny


def naive_kd(teacher, student, T):
    "T²·(1/B)·Σ_b Σ_k p_k log(p_k / q_k), p = softmax(teacher/T), q = softmax(student/T), written out with loops."
    B, K = teacher.shape
    total = 0.
    for b in range(B):
        zt = [math.exp(float(teacher[b, k]) / T) for k in range(K)]; zs = [math.exp(float(student[b, k]) / T) for k in range(K)]
        p = [z / sum(zt) for z in zt]; q = [z / sum(zs) for z in zs]
        total += sum(p[k] * math.log(p[k] / q[k]) for k in range(K))
    return T * T * total / B


def test_kd_at_a_temperature_by_hand():
    "Teacher [2 ln 3, 0] and student [0, 0] at T = 2: p = (3/4, 1/4), q = (1/2, 1/2); KL = 3/4 ln(3/2) + 1/4 ln(1/2); ×T² = 4."
    t, s = torch.tensor([[2 * math.log(3.), 0.]]), torch.zeros(1, 2)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert kd_kl(t, s, 2.).item() == pytest.approx(4 * kl, rel=1e-6)
    assert kd_kl(t, s, 1.).item() == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-6)   # p = (9/10, 1/10)


@pytest.mark.parametrize('T', [0.5, 2., 4.])
def test_kd_matches_the_formula_at_temperature(T):
    g = torch.Generator().manual_seed(3)
    t, s = 3 * torch.randn(6, 5, generator=g), 3 * torch.randn(6, 5, generator=g)
    assert kd_kl(t, s, T).item() == pytest.approx(naive_kd(t, s, T), rel=1e-5)


def test_student_loss_reads_kd_temperature_and_the_weights():
    b = batch(n=4); labels = {'label': b['label']}
    t = {'label': 4 * torch.randn(4, 4, generator=torch.Generator().manual_seed(1))}
    for T, wc, wa in ((4., 0.7, 0.3), (2., 0.25, 2.)):
        cfg = tiny('student', kd_temperature=T, ce_weight=wc, aux_weight=wa)
        torch.manual_seed(0)
        out = KarmmaModel(cfg).eval()(b['inputs'], b['present'])
        loss, parts = karmma_loss(cfg, out, labels, teacher_logits=t)
        kd = naive_kd(t['label'], out['logits']['label'].detach(), T)
        ce = torch.nn.functional.cross_entropy(out['logits']['label'], labels['label']).item()
        assert parts['aux'].item() == pytest.approx(kd, rel=1e-4)
        assert kd != pytest.approx(naive_kd(t['label'], out['logits']['label'].detach(), 1.), rel=1e-2)
        assert loss.item() == pytest.approx(wc * ce + wa * kd, rel=1e-4)


def test_training_ends_on_the_best_validated_weights(tmp_path, monkeypatch):
    "Validation accuracies 50, 80, 60: the best checkpoint is epoch 2's, and the model ends with its weights, not the last."
    scores = iter([50., 80., 60.])
    monkeypatch.setattr(ktrain, 'evaluate_all_modalities', lambda *a, **k: dict(accuracy=next(scores), ci95=1.))
    tr = KarmmaTrainer(tiny('ce_only', epochs=3, batch_size=8), tmp_path / 'r', Clips(16), Clips(8), collate_fn=collate)
    res = tr.fit()
    assert [h['best'] for h in tr.history] == [True, True, False] and tr.best == 80. and res['best_val'] == 80.
    best, last = load_karmma_checkpoint(tr.run.best, tr.cfg), load_karmma_checkpoint(tr.run.last, tr.cfg)
    assert (best['epoch'], last['epoch']) == (2, 3)
    sd = tr.model.state_dict()
    assert all(torch.equal(sd[k], best['model'][k]) for k in sd)
    assert any(not torch.equal(sd[k], last['model'][k]) for k in sd)


def naive_keep_share(p, trials=20_000, n=3, kept='rgb'):
    "Share of simulated complete clips whose modality `kept` survives the drop rule (each dropped with p; all dropped: one kept at random)."
    import random
    rng, mods, hit = random.Random(7), ['rgb', 'flow', 'audio'][:n], 0
    for _ in range(trials):
        k = [m for m in mods if rng.random() >= p] or [rng.choice(mods)]
        hit += kept in k
    return hit / trials


@pytest.mark.parametrize('p', [0., 0.1, 0.6, 0.9, 1.])
def test_expected_drop_accuracy_is_the_drop_rule_in_expectation(p):
    "A model right exactly when RGB is kept: by hand (1 - p) + p³/3, and the share a naive simulation of the rule keeps."
    mods = ('rgb', 'flow', 'audio')
    acc = {ktrain.subset_name(s): 100. * ('rgb' in s) for s in ktrain.modality_subsets(mods)}
    e = ktrain.expected_drop_accuracy(acc, p, mods)
    assert e == pytest.approx(100 * ((1 - p) + p ** 3 / 3))
    assert e == pytest.approx(100 * naive_keep_share(p), abs=1.5)          # the simulation's sd is at most 0.35 points
    # a model right only on the full set: every modality must survive, (1 - p)³
    full = {k: 100. * (k == 'rgb+flow+audio') for k in acc}
    assert ktrain.expected_drop_accuracy(full, p, mods) == pytest.approx(100 * (1 - p) ** 3)
