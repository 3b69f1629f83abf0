"""The `reference` preset reproduces the authors' head (cofly2014/CLIP-MDMF, commit c6ac856, class `MDMF_CLIPFSAR` in
`models/base/few_shot_clip_two_trans.py`) to float32 rounding: logits, per-view OTAM distances, PPS probabilities, the
loss and its parts, and the gradients, at T = 8 and at T = 6 and 12.

The fixtures `tests/fixtures/parity_*.npz` are numbers computed by the authors' code:

- `parity_weights.npz`: the head's weights under m2df's parameter names (float16 values; the authors' own
  initialisation at seed 0, LayerNorm weights and biases perturbed so that they are not 1 and 0, the video-text scale 1).
- `parity_<case>.npz`, one per case: the inputs (support and query frame features, the texts of the split's C = 12
  classes, the episode's split-level class indices, episode labels, the PPS draw of every query), the case's switches
  (T, condition, direction, λ, λ_vt), and the authors' outputs: `dis_logits`, the two views' OTAM distances, their
  text comparisons (`sim_up`, `sim_down`), the PPS scores (mean of the top-4 `cos_sim` of their frame filter) and
  probabilities, the video-text logits, the loss of their `train_task` (λ_vt · video-text + CE + λ · distillation, with
  `tasks_per_batch` = 1) and its parts, the gradients with respect to the frame features, and for every parameter the
  sum, the norm and 16 entries (at `numpy.linspace(0, numel - 1, 16)` of the flattened gradient) of its gradient.

To regenerate them: take `models/base/few_shot_clip_two_trans.py`, `models/base/tcn.py`, `models/base/__init__.py` and
`utils.py` verbatim from the authors' commit c6ac856 into a scratch folder (with an empty `models/__init__.py`), stub
`models/base/clip_fsar.py` with a `load` that returns an object whose `.visual` is `nn.Identity()` and whose
`encode_text` returns the case's fixed text embeddings, and a `tokenize` that returns `arange(len(texts))`; install
`einops`; make `Tensor.cuda` return the tensor itself. Then, for D = 64, 5-way 2-shot, 2 queries per class:

1. build `MDMF_CLIPFSAR(args, cfg)` with `args.seq_len = T`, `args.way = 5`, `args.is_pps = True`,
   `args.dist_condition`, `args.dist_direction` of the case, and a cfg with `VIDEO.HEAD.BACKBONE_NAME = 'ViT-B/16'`,
   `TRAIN.USE_CLASSIFICATION = True` and 12 class names; its width is hard-coded from the backbone name, so rebuild
   `context2`, `context_local`, `context_conv1/2/11/22` and `tcn` with the same lines of its `__init__` at width 64;
   for T ≠ 8 replace the hard-coded `repeat(1, 8, 1)` of `get_context_feats_g` by `repeat(1, T, 1)` (the only change:
   their GTCE runs at no other T); set every dropout to 0 and keep the module in training mode;
2. copy the weights in (m2df name → their name: `context.local.conv1` → `context_conv1`, `context.global.blocks.i.net.0/3.conv`
   → `tcn.network.i.conv1/2` (`original0/1` → `weight_g/v`), `fusion.local` → `context2` and `fusion.global` →
   `context_local` (`blocks.0.norm`, `to_q/k/v`, `to_out`, `ffn.0/3` → `layers.0.0.norm`, `layers.0.0.fn.to_q/k/v`,
   `layers.0.0.fn.to_out.0`, `layers.0.1.net.0/3`), `vt_head.scale` → `scale`);
3. replace `random.choices` by a function that records the weights it is given (π) and returns the case's draw, and
   record the results of `cos_sim` (the 4th and 5th calls are the text comparisons) and of `otam_distance`;
4. call the model on `support_set` = the support features flattened to (N·K·T)×D, `target_set` likewise,
   `support_labels`, `real_support_labels` = the split-level labels; compute the loss as their `train_task` does
   (`utils.loss` on `class_logits` against the split-level labels of support and queries, and on `dis_logits`), call
   `backward`, and store the numbers above.

The inputs are stored, so how they were drawn does not matter for the comparison (Gaussian frame features plus 0.3 ×
their class's text and a linear temporal drift; for `T8_tv_both` an episode in which both directions distil and one
query is skipped). The four cases: T = 8 with condition `tv`, both directions and λ_vt = 0.5 (the `reference` preset
itself); T = 6 with the authors' argparse defaults (`t`, `up2down` = `g2l`), λ_vt = 0.5; T = 8 with condition `none`;
T = 12 with `v` and `down2up` = `l2g`, λ = 0.5. Tolerance: 1e-5 absolute for probabilities, distances, logits and
losses; for gradients 1e-5 relative to the largest magnitude of the compared quantity (float32 rounding; the measured
agreement is about 2e-6 on logits and 1e-6 relative on gradients).
"""
import functools
from pathlib import Path
import numpy as np, pytest, torch, torch.nn as nn
from m2df.config import make_config
from m2df.model import M2DF, m2df_loss
from m2df.pps import pps_scores

FIX = Path(__file__).parent / 'fixtures'
CASES = ('T8_tv_both', 'T6_t_g2l', 'T8_none_both', 'T12_v_l2g')
TOL = 1e-5


def close(got, want, what, rel=False):
    "Max |got − want| ≤ TOL (relative to the largest |want| when rel, for quantities far from unit scale)."
    got, want = torch.as_tensor(got).double(), torch.as_tensor(np.asarray(want)).double()
    assert got.shape == want.shape, f'{what}: shape {tuple(got.shape)} != {tuple(want.shape)}'
    err = (got - want).abs().max().item()
    scale = max(want.abs().max().item(), 1e-30) if rel else 1.
    assert err <= TOL * scale, f'{what}: max |m2df − authors| = {err:.3g} > {TOL * scale:.3g}'


class ReplayedDraws:
    "PPS `sample` draws replayed from the fixture (the authors' code drew them with random.choices)."
    def __init__(self, draws): self.draws = torch.as_tensor(draws)
    def __call__(self, pi, generator=None): return self.draws.to(pi.device)


def run_case(case, **overrides):
    "The m2df head under `reference` on the case's fixed weights, inputs and draws; returns (fixture, out, loss, parts, grads)."
    fx = dict(np.load(FIX / f'parity_{case}.npz'))
    weights = np.load(FIX / 'parity_weights.npz')
    cfg = make_config('ucf101', 'reference', backbone='m2df-tiny-vit', frames=int(fx['T']),
                      distill_condition=str(fx['condition']), distill_direction=str(fx['direction']),
                      lam=float(fx['lam']), lam_vt=float(fx['lam_vt']), **overrides).replace(pretrained=None)
    torch.manual_seed(0)
    model = M2DF(cfg)
    assert model.dim == 64
    head = {n: p for n, p in model.named_parameters() if not n.startswith('backbone.')}
    if not cfg.lam_vt: head['vt_head.scale'] = None          # the head has no scale parameter when λ_vt = 0
    assert set(head) == set(weights.files), f'head parameters differ from the fixture: {sorted(set(head) ^ set(weights.files))}'
    with torch.no_grad():
        for n, p in head.items():
            if p is not None: p.copy_(torch.from_numpy(weights[n].astype(np.float32)))
    for m in model.modules():
        if isinstance(m, nn.Dropout): m.p = 0.
    model.train()
    model.pps.draw = ReplayedDraws(fx['draws'])
    fs = torch.from_numpy(fx['support']).requires_grad_()
    fq = torch.from_numpy(fx['query']).requires_grad_()
    split_text, class_ids = torch.from_numpy(fx['split_text']), torch.from_numpy(fx['class_ids'])
    ys, yq = torch.from_numpy(fx['support_labels']), torch.from_numpy(fx['query_labels'])
    class_text = split_text[class_ids]
    out = model.forward_features(fs, fq, ys, class_text)
    loss, parts = m2df_loss(out, yq, cfg, support_labels=ys, class_text=class_text, split_text=split_text, class_ids=class_ids)
    out['model'] = model
    loss.backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in head.items() if p is not None}
    return fx, out, loss, parts, dict(support=fs.grad, query=fq.grad, **grads)


@functools.lru_cache(maxsize=None)
def reference_run(case):
    "`run_case` under the plain `reference` preset, once per case for all the tests."
    return run_case(case)


def close_sketch(g, want, what):
    """A parameter's gradient against its fixture sketch (sum, norm, entries at linspace(0, numel − 1, k)).

    Norm and entries must agree to TOL relative to the norm and to the largest sampled entry; the sum, whose float32
    rounding grows with the number of entries, to TOL relative to its bound √numel · norm."""
    g = g.detach().double().flatten()
    want = torch.from_numpy(np.asarray(want)).double()
    idx = torch.from_numpy(np.linspace(0, g.numel() - 1, len(want) - 2).astype(np.int64))
    norm = want[1].item()
    checks = (('norm', g.norm(), want[1], norm), ('entries', g[idx], want[2:], want[2:].abs().max().item()),
              ('sum', g.sum(), want[0], norm * g.numel() ** 0.5))
    for part, got, w, scale in checks:
        err = (got - w).abs().max().item()
        assert err <= TOL * scale, f'{what}, {part}: max |m2df − authors| = {err:.3g} > {TOL * scale:.3g}'


@pytest.mark.parametrize('case', CASES)
def test_forward_matches_authors(case):
    fx, out, loss, parts, _ = reference_run(case)
    model_pps, class_text = out['model'].pps, torch.from_numpy(fx['split_text'][fx['class_ids']])
    close(pps_scores(torch.from_numpy(fx['query']), class_text, model_pps.topk, model_pps.eps), fx['pps_scores'],
          'PPS scores (π is saturated at τ = 200)')
    close(out['pps_probs'], fx['pps_probs'], 'PPS probabilities')
    close(out['dist']['local'], fx['dist_local'], 'OTAM distances, local view (their "up")')
    close(out['dist']['global'], fx['dist_global'], 'OTAM distances, global view (their "down")')
    close(out['text']['local'], fx['text_local'], 'text comparison, local view')
    close(out['text']['global'], fx['text_global'], 'text comparison, global view')
    close(out['logits'], fx['logits'], 'logits')
    close(parts['ce'], fx['ce'], 'CE')
    close(out['distill_loss'], fx['distill'], 'distillation loss')
    close(loss, fx['loss'], 'total loss')
    if float(fx['lam_vt']):
        close(parts['video_text'], fx['video_text'], 'video-text loss')


@pytest.mark.parametrize('case', CASES)
def test_gradients_match_authors(case):
    fx, _, _, _, grads = reference_run(case)
    close(grads['support'], fx['grad_support'], 'gradient w.r.t. the support frame features', rel=True)
    close(grads['query'], fx['grad_query'], 'gradient w.r.t. the query frame features', rel=True)
    for name, g in grads.items():
        if name in ('support', 'query'): continue
        close_sketch(g, fx['grad:' + name], f'gradient of {name}')


def test_cases_exercise_every_branch():
    "The fixtures cover both directions of the distillation, T ≠ 8, and the video-text head."
    fx, out, *_ = reference_run('T8_tv_both')
    info = out['distill_info']
    assert info['n_l2g'] > 0 and info['n_g2l'] > 0, info
    assert {int(np.load(FIX / f'parity_{c}.npz')['T']) for c in CASES} >= {6, 8, 12}
    assert float(fx['lam_vt']) > 0 and fx['video_text'] > 0
