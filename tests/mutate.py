#!/usr/bin/env python
"""Mutation check of the test suite: break the package one line at a time and report the breaks no test notices.

Run by hand from the repository root (pytest never collects this file, and CI does not run it):

    python tests/mutate.py --list                     # the breaks, by name
    python tests/mutate.py --check                    # only check that every break's snippet is still in the code
    python tests/mutate.py                            # every break against tests/ (minus the slow tests), one at a time
    python tests/mutate.py lam_ignored ce_mean        # chosen breaks
    python tests/mutate.py --tag issue15              # the breaks with a tag (issue15: the five of issue 15)
    python tests/mutate.py --tag issue23 --focused    # the breaks of issue 23 (statistics, data, augmentation, KARMMA)
    python tests/mutate.py --tag issue19 --focused    # the authors' protocol outside the head (BatchNorm, names, frames, presets)
    python tests/mutate.py --focused -j 2 --timeout 900   # each break against its own test files, two at a time
    python tests/mutate.py --tests tests/test_protocol.py tests/test_distill.py

When it starts, the script copies the repository's files (those git tracks or would track: package, tests, notebooks) into
a snapshot, so that editing them during a run does not change that run. For each break it copies the snapshot into a
temporary folder, replaces one exact snippet of one module of its `m2df/`, and runs `pytest -x` on the chosen tests of
that copy, with the copy's folder as working directory and first on `PYTHONPATH` (checked: `import m2df` must resolve to
the mutated copy). A break is KILLED when a test fails (or cannot even be collected), SURVIVED when the tests pass. A break whose
snippet is no longer in the code is STALE (AMBIGUOUS when it occurs more than once): that is reported loudly and counts as a
failure of the check, so that the list is kept up to date with the code. The unmutated copy is run first (the baseline):
if it fails, every break would look killed, so the script stops. The exit status is 0 only when every break is killed.

Each entry is (name, module file, exact original text, replacement, description, tags, test files for --focused). Keep the
snippets short and unique; when the code changes, refresh the entries that turn STALE.
"""
from __future__ import annotations
import argparse, concurrent.futures as cf, json, os, re, shutil, signal, subprocess, sys, tempfile, threading, time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / 'tests'
# Left out of the default selection: the long tests of the KARMMA subpackage (its issue-23 breaks are caught by
# tests/test_behaviour_karmma.py, which stays in)
# and the tests that take half a minute or more each on a 2-core CPU (a killed-and-resumed run, torchrun, papermill).
# Name them with --tests to include them.
SLOW = ['tests/test_karmma.py', 'tests/test_karmma_data.py', 'tests/test_modalities.py', 'tests/test_distributed.py',
        'tests/test_learner.py::test_killed_run_resumes_from_its_last_checkpoint',
        'tests/test_learner.py::test_papermill_train_without_data_fails_at_once',
        'tests/test_artifacts.py::test_concurrent_requests_train_once', 'tests/test_artifacts.py::test_papermill_driver']


@dataclass(frozen=True)
class Break:
    name: str            # short identifier (command line)
    file: str            # module, relative to m2df/
    original: str        # exact text that must occur once in the module
    replacement: str     # what it becomes
    description: str     # what the break means for a user
    tags: tuple = ()     # e.g. 'issue15', and the area: loss, switch, preset, sampler, accumulation, evaluation, module
    tests: tuple = ()    # test files that should catch it (--focused); empty: the default selection

    def apply(self, text: str) -> tuple:
        "(mutated text, None) or (None, 'STALE' | 'AMBIGUOUS')."
        n = text.count(self.original)
        if n == 0: return None, 'STALE'
        if n > 1: return None, 'AMBIGUOUS'
        return text.replace(self.original, self.replacement), None


P = 'tests/test_protocol.py'
LOSS = (P,)
MODEL = (P, 'tests/test_evaluate.py', 'tests/test_artifacts.py')
LEARN = (P, 'tests/test_learner.py', 'tests/test_evaluate.py')
EVAL = ('tests/test_evaluate.py', P, 'tests/test_artifacts.py')
SAMPLE = (P, 'tests/test_evaluate.py', 'tests/test_learner.py')
CONFIG = (P, 'tests/test_artifacts.py', 'tests/test_evaluate.py')
# issue 23: each module's behaviour tests first, then the existing tests of that module
BH = 'tests/test_behaviour_{}.py'
ART = (BH.format('artifacts'), 'tests/test_artifacts.py')
DC = (BH.format('datacheck'), 'tests/test_real_path.py')
SPL = (BH.format('splits'), 'tests/test_splits.py')
PREP = (BH.format('prepare'), 'tests/test_real_path.py')
VID = (BH.format('video'), 'tests/test_video.py')
EPI = (BH.format('episodes'), 'tests/test_video.py', P)
RUNS = (BH.format('runs'), 'tests/test_runs.py')
LRN = (BH.format('learner'), 'tests/test_learner.py')
KAR = (BH.format('karmma'), 'tests/test_karmma.py')
KW = ('tests/test_karmma_world.py', 'tests/test_karmma.py')
REF = ('tests/test_reference_protocol.py', 'tests/test_authors_protocol.py', 'tests/test_config.py')   # issue 19
B = Break
BREAKS = [
    # ---- the five breaks of issue 15
    B('lam_ignored', 'model.py', "loss = loss + cfg.lam * out['distill_loss']", "loss = loss + 0 * out['distill_loss']",
      'the distillation weight λ is ignored (the λ curve comes out flat)', ('issue15', 'loss'), LOSS),
    B('ce_mean', 'model.py', "(out['logits'].float(), query_labels, reduction='sum')", "(out['logits'].float(), query_labels, reduction='mean')",
      'CE averaged over the queries instead of summed (the authors\' reduction)', ('issue15', 'loss'), LOSS),
    B('no_accumulation', 'learner.py', 'self.per_rank = max(1, math.ceil(cfg.accumulation / self.world))', 'self.per_rank = 1',
      'gradient accumulation ignored: the optimiser steps every episode', ('issue15', 'accumulation'), LEARN),
    B('query_overlaps_support', 'episodes.py', 'query += [vids[i] for i in pick[self.shot:]]',
      'query += [vids[i] for i in rng.choice(len(vids), self.query, replace=False)]',
      'query videos drawn independently of the support (a query can be a support video)', ('issue15', 'sampler'), SAMPLE),
    B('query_prompt_zero', 'model.py', 'pq.to(fs.dtype), pi', 'torch.zeros_like(pq).to(fs.dtype), pi',
      'the query prompt is the zero prompt while PPS is on', ('issue15', 'switch'), (P, 'tests/test_pps.py')),

    # ---- loss terms
    B('lam_below_one_skipped', 'model.py', "is not None and cfg.lam:", "is not None and cfg.lam > 1:",
      'λ ≤ 1 drops the distillation term', ('loss',), LOSS),
    B('mvmd_zero', 'distill.py', 'return loss_l2g + loss_g2l, info', 'return 0 * (loss_l2g + loss_g2l), info',
      'the MVMD loss is zero', ('loss',), ('tests/test_distill.py', P)),
    B('mvmd_one_direction', 'distill.py', 'return loss_l2g + loss_g2l, info', 'return loss_l2g + 0 * loss_g2l, info',
      'MVMD keeps only local→global', ('loss',), ('tests/test_distill.py', P)),
    B('video_text_ignored', 'model.py', 'loss = loss + cfg.lam_vt * vt', 'loss = loss + 0 * vt',
      'the video-text loss weight λ_vt is ignored', ('loss',), LOSS),
    B('video_text_mean', 'model.py', "F.cross_entropy(logits, y, reduction='sum')\n\ndef text_filtered_frames", "F.cross_entropy(logits, y, reduction='mean')\n\ndef text_filtered_frames",
      'video-text CE averaged over the videos instead of summed', ('loss',), LOSS),
    B('kl_reversed', 'distill.py', 'return (teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1)',
      'kl = (student_logp.exp() * (student_logp - teacher_logp)).sum(-1)', 'KL(student‖teacher) instead of KL(teacher‖student)',
      ('loss', 'module'), ('tests/test_distill.py', P)),
    B('mvmd_unweighted', 'distill.py', 'loss_l2g = _direction_loss(teacher(lp_l), lp_g, a_l + b_l, l_teaches)',
      'loss_l2g = _direction_loss(teacher(lp_l), lp_g, torch.ones_like(a_l), l_teaches)',
      'the local teacher\'s confidence weight a + b is ignored', ('loss', 'module'), ('tests/test_distill.py', P)),
    B('mvmd_unnormalised', 'distill.py', 'return num / torch.where(mask.any(-1), den, torch.ones_like(den))', 'return num',
      'MVMD not normalised by the sum of the confidence weights', ('loss', 'module'), ('tests/test_distill.py', P)),

    # ---- switches the presets and ablations set (config fields read by the model and the pipeline)
    B('use_pps_ignored', 'model.py', 'if not self.cfg.use_pps:', 'if False:',
      'use_pps=False still uses PPS (the no_pps and clipfsar ablations)', ('switch',), (P, 'tests/test_pps.py')),
    B('pps_always_off', 'model.py', 'if not self.cfg.use_pps:', 'if True:',
      'PPS always off (zero prompts)', ('switch',), (P, 'tests/test_pps.py')),
    B('support_prompt_zero', 'model.py', 'return own_text if self.cfg.use_pps else', 'return 0 * own_text if self.cfg.use_pps else',
      'the support prompts are zeros', ('switch',), (P, 'tests/test_pps.py')),
    B('pps_mode_train_eval_same', 'model.py', 'mode = self.cfg.pps_train_mode if self.training else self.cfg.pps_eval_mode',
      'mode = self.cfg.pps_eval_mode', 'pps_train_mode ignored: training uses the evaluation mode', ('switch',), (P, 'tests/test_pps.py')),
    B('pps_eval_mode_ignored', 'model.py', 'mode = self.cfg.pps_train_mode if self.training else self.cfg.pps_eval_mode',
      'mode = self.cfg.pps_train_mode', 'pps_eval_mode ignored: evaluation uses the training mode (sampled prompts)',
      ('switch',), (P, 'tests/test_pps.py')),
    B('pps_tau_ignored', 'model.py', 'ProbabilityPromptSelector(cfg.pps_topk, cfg.pps_tau, cfg.cos_eps)', 'ProbabilityPromptSelector(cfg.pps_topk, 1., cfg.cos_eps)',
      'pps_tau ignored by the model', ('switch',), (P, 'tests/test_pps.py')),
    B('pps_tau_dropped', 'pps.py', 'torch.softmax(self.tau * pps_scores(', 'torch.softmax(pps_scores(',
      'PPS temperature τ dropped', ('module',), ('tests/test_pps.py', P)),
    B('pps_topk_ignored', 'pps.py', 'sim.topk(min(topk, sim.shape[-1]), dim=-1).values.mean(-1)', 'sim.mean(-1)',
      'PPS averages all frames instead of the top k', ('module',), ('tests/test_pps.py', P)),
    B('pps_expectation_is_argmax', 'pps.py', "if mode == 'expectation': return pi @ e, pi", "if mode == 'expectation': return e[pi.argmax(-1)], pi",
      'the expectation prompt is the argmax class text', ('module',), ('tests/test_pps.py', P)),
    B('pps_sample_is_argmax', 'pps.py', "c = pi.argmax(-1) if mode == 'argmax' else self.draw(pi, generator)", "c = pi.argmax(-1)",
      'the sampled prompt is always the argmax class text', ('module',), ('tests/test_pps.py', P)),
    B('views_swapped', 'model.py', "(ctx['local'] if v == 'local' else ctx['glob'])", "(ctx['glob'] if v == 'local' else ctx['local'])",
      'the local view gets GTCE and the global view LTCE', ('switch',), (P, 'tests/test_temporal.py')),
    B('prompt_token_matched', 'model.py', "tokens = slice(None) if v == 'raw' else slice(1, None)", "tokens = slice(None)",
      'the prompt token is matched as if it were a frame', ('switch',), MODEL),
    B('raw_view_drops_a_frame', 'model.py', "tokens = slice(None) if v == 'raw' else slice(1, None)", "tokens = slice(1, None)",
      'the raw (CLIP-FSAR) view drops its first frame', ('switch',), MODEL),
    B('distill_always_off', 'model.py', '        if cfg.distill:\n', '        if False:\n',
      'distill=True never distils', ('switch',), (P, 'tests/test_artifacts.py')),
    B('distill_condition_ignored', 'model.py', 'condition=cfg.distill_condition', "condition='tv'",
      'distill_condition ignored (always text+visual)', ('switch',), (P, 'tests/test_distill.py')),
    B('distill_direction_ignored', 'model.py', 'direction=cfg.distill_direction', "direction='both'",
      'distill_direction ignored (always both)', ('switch',), (P, 'tests/test_distill.py')),
    B('detach_teacher_ignored', 'model.py', 'detach_teacher=cfg.detach_teacher', 'detach_teacher=True',
      'detach_teacher=False (the reference preset) still detaches the teacher', ('switch',), (P, 'tests/test_distill.py')),
    B('condition_tv_is_v', 'distill.py', "if condition == 'tv': return vis & txt, ~vis & ~txt", "if condition == 'tv': return vis, ~vis",
      'condition tv read as v', ('switch', 'module'), ('tests/test_distill.py', P)),
    B('condition_t_is_v', 'distill.py', "if condition == 't': return txt, ~txt", "if condition == 't': return vis, ~vis",
      'condition t read as v', ('switch', 'module'), ('tests/test_distill.py', P)),
    B('condition_none_one_way', 'distill.py', 'return everyone, everyone.clone()', 'return everyone, ~everyone',
      'condition none distils local→global only', ('switch', 'module'), ('tests/test_distill.py', P)),
    B('directions_swapped', 'distill.py', "if direction == 'g2l': l_teaches", "if direction == 'l2g': l_teaches",
      'directions l2g and g2l swapped', ('switch', 'module'), ('tests/test_distill.py', P)),
    B('teacher_never_detached', 'distill.py', 'teacher = (lambda lp: lp.detach()) if detach_teacher else (lambda lp: lp)',
      'teacher = (lambda lp: lp)', 'the teacher view always receives gradients', ('switch', 'module'), ('tests/test_distill.py', P)),
    B('text_token_swapped', 'model.py', "t = 0 if cfg.text_token == 'prompt' else 1", "t = 1 if cfg.text_token == 'prompt' else 0",
      'text_token prompt and first_frame swapped', ('switch',), (P, 'tests/test_distill.py')),
    B('text_token_ignored', 'model.py', "t = 0 if cfg.text_token == 'prompt' else 1", "t = 0",
      'text_token=first_frame (the reference preset) reads the prompt token', ('switch',), (P, 'tests/test_distill.py')),
    B('matching_ignored', 'model.py', "if self.cfg.matching == 'mean_cos':", 'if False:',
      'matching=mean_cos still uses OTAM', ('switch',), MODEL),
    B('otam_lambda_ignored', 'model.py', 'lam=self.cfg.otam_lambda', 'lam=1.0',
      'otam_lambda ignored by the model', ('switch',), MODEL),
    B('otam_bidirectional_ignored', 'model.py', 'bidirectional=self.cfg.otam_bidirectional', 'bidirectional=True',
      'otam_bidirectional=False still matches both ways', ('switch',), MODEL),
    B('otam_variant_ignored', 'model.py', 'variant=self.cfg.otam_variant, eps', "variant='paper', eps",
      'otam_variant=reference (the reference preset) uses the paper recursion', ('switch',), MODEL),
    B('otam_one_direction', 'matching.py', 'if not bidirectional: return', 'if True: return',
      'OTAM always one direction', ('module',), ('tests/test_matching.py', P)),
    B('logit_scale_ignored', 'model.py', "fuse_views(out['dist'], cfg.logit_scale)", "fuse_views(out['dist'], 1.)",
      'logit_scale ignored (the synthetic preset sets 5)', ('switch',), MODEL),
    B('views_averaged', 'matching.py', 'torch.stack(list(distances.values())).sum(0)', 'torch.stack(list(distances.values())).mean(0)',
      'view distances averaged instead of summed', ('module',), ('tests/test_matching.py', P)),
    B('normalize_ignored', 'episodes.py', 'normalize=cfg.normalize)', 'normalize=True)',
      'normalize=False (the reference preset) still normalises pixels', ('switch',), (P, 'tests/test_video.py', 'tests/test_evaluate.py')),
    B('flip_default_always', 'episodes.py', 'flip = BENCHMARKS[cfg.dataset].flip if cfg.flip is None', 'flip = True if cfg.flip is None',
      'SSv2 training clips are flipped (left/right classes swap)', ('switch',), (P, 'tests/test_video.py')),
    B('freeze_backbone_ignored', 'model.py', 'freeze_visual=cfg.freeze_backbone', 'freeze_visual=False',
      'freeze_backbone=True still fine-tunes the backbone', ('switch',), (P, 'tests/test_evaluate.py', 'tests/test_encoders.py')),
    B('fusion_depth_ignored', 'model.py', 'cfg.fusion_ffn, cfg.fusion_depth,', 'cfg.fusion_ffn, 1,',
      'fusion_depth ignored by the model', ('switch',), (P, 'tests/test_fusion.py', 'tests/test_artifacts.py')),

    B('fusion_heads_ignored', 'model.py', 'MultiModalFusionEncoder(D, cfg.fusion_heads,', 'MultiModalFusionEncoder(D, 8,',
      'fusion_heads ignored by the model (the synthetic preset sets 4)', ('switch',), (P, 'tests/test_fusion.py')),
    B('fusion_ffn_ignored', 'model.py', 'cfg.fusion_heads, cfg.fusion_ffn,', 'cfg.fusion_heads, 2048,',
      'fusion_ffn ignored by the model (the synthetic preset sets 256)', ('switch',), (P, 'tests/test_fusion.py')),
    B('crop_ignored', 'episodes.py', 'resize=cfg.resize, crop=cfg.crop,', 'resize=cfg.resize, crop=cfg.resize,',
      'crop ignored: clips are not cropped to the configured side', ('switch',), (P, 'tests/test_video.py')),

    # ---- the presets themselves
    B('preset_no_pps_empty', 'config.py', "'no_pps': dict(use_pps=False),", "'no_pps': dict(),",
      'the no_pps ablation keeps PPS', ('preset',), CONFIG),
    B('preset_no_distill_empty', 'config.py', "'no_distill': dict(distill=False),", "'no_distill': dict(),",
      'the no_distill ablation distils', ('preset',), CONFIG),
    B('preset_local_only_global', 'config.py', "'local_only': dict(views=('local',)", "'local_only': dict(views=('global',)",
      'the local_only ablation keeps the global view', ('preset',), CONFIG),
    B('preset_global_only_local', 'config.py', "'global_only': dict(views=('global',)", "'global_only': dict(views=('local',)",
      'the global_only ablation keeps the local view', ('preset',), CONFIG),
    B('preset_clipfsar_pps', 'config.py', "'clipfsar': dict(use_pps=False,", "'clipfsar': dict(use_pps=True,",
      'the CLIP-FSAR baseline uses PPS', ('preset',), CONFIG),
    B('preset_reference_eval_expectation', 'config.py', "'reference': dict(pps_eval_mode='sample',", "'reference': dict(pps_eval_mode='expectation',",
      'the reference preset evaluates with expectation prompts (the authors sample)', ('preset',), CONFIG),
    B('preset_reference_detach', 'config.py', 'detach_teacher=False, normalize=False', 'detach_teacher=True, normalize=False',
      'the reference preset detaches the teacher', ('preset',), CONFIG),
    B('preset_reference_normalize', 'config.py', 'detach_teacher=False, normalize=False', 'detach_teacher=False, normalize=True',
      'the reference preset normalises pixels', ('preset',), CONFIG),
    B('preset_reference_text_token', 'config.py', "text_token='first_frame'", "text_token='prompt'",
      'the reference preset reads the prompt token', ('preset',), CONFIG),
    B('preset_reference_otam', 'config.py', "otam_variant='reference', detach_confidence", "otam_variant='paper', detach_confidence",
      'the reference preset uses the paper OTAM recursion', ('preset',), CONFIG),
    B('preset_synthetic_logit_scale', 'config.py', "crop=56, logit_scale=5., lr=1e-3,\n", "crop=56, logit_scale=1., lr=1e-3,\n",
      'the synthetic benchmark trains on unscaled logits (does not train at all)', ('preset',), CONFIG),
    B('preset_ssv2_flip', 'config.py', "'ssv2_small': dict(flip=False)", "'ssv2_small': dict(flip=True)",
      'SSv2-Small clips are flipped in training', ('preset',), CONFIG),

    # ---- the episode sampler
    B('classes_with_replacement', 'episodes.py', 'cls = rng.choice(self.classes, self.way, replace=False)',
      'cls = rng.choice(self.classes, self.way, replace=True)', 'an episode can hold a class twice', ('sampler',), SAMPLE),
    B('videos_with_replacement', 'episodes.py', 'pick = rng.choice(len(vids), self.shot + self.query, replace=False)',
      'pick = rng.choice(len(vids), self.shot + self.query, replace=True)', 'a video can be drawn twice in an episode',
      ('sampler',), SAMPLE),
    B('rank_ignored', 'episodes.py', 'rng = np.random.default_rng([self.seed, self.rank, index])', 'rng = np.random.default_rng([self.seed, index])',
      'every rank draws the same training episodes', ('sampler',), (P, 'tests/test_distributed.py')),
    B('seed_ignored', 'episodes.py', 'rng = np.random.default_rng([self.seed, self.rank, index])', 'rng = np.random.default_rng([0, self.rank, index])',
      'the seed does not change the episodes (evaluation and training draw the same)', ('sampler',), SAMPLE),
    B('support_labels_tiled', 'episodes.py', 'def support_labels(self): return np.repeat(', 'def support_labels(self): return np.tile(',
      'support labels not class-major (wrong for K > 1)', ('sampler',), SAMPLE),
    B('query_labels_tiled', 'episodes.py', 'def query_labels(self): return np.repeat(', 'def query_labels(self): return np.tile(',
      'query labels not class-major', ('sampler',), SAMPLE),
    B('train_query_is_eval_query', 'episodes.py', 'cfg.query if train else cfg.eval_query', 'cfg.eval_query',
      'training episodes have eval_query (1) queries per class instead of query (5)', ('sampler',), SAMPLE),
    B('eval_seed_is_train_seed', 'evaluate.py', 'seed=cfg.eval_seed if seed is None else seed', 'seed=cfg.seed if seed is None else seed',
      'the fixed evaluation episodes follow the training seed (models of two seeds scored on different episodes)',
      ('sampler', 'evaluation'), EVAL),
    B('eval_query_is_train_query', 'evaluate.py', 'cfg.shot, cfg.eval_query, seed=', 'cfg.shot, cfg.query, seed=',
      'evaluation episodes use the training number of queries', ('sampler', 'evaluation'), EVAL),
    B('augment_ignored', 'episodes.py', 'augment = (train and cfg.train_augment) if augment is None else augment',
      'augment = train if augment is None else augment', 'train_augment=False still augments', ('sampler',), SAMPLE),

    # ---- accumulation and the optimiser step
    B('step_every_episode', 'learner.py', 'self.scaler.scale(loss / len(episodes)).backward()',
      'self.scaler.scale(loss / len(episodes)).backward(); self.scaler.step(self.opt); self.opt.zero_grad()',
      'the optimiser steps after every episode of a step', ('accumulation',), LEARN),
    B('accumulated_sum', 'learner.py', 'self.scaler.scale(loss / len(episodes)).backward()', 'self.scaler.scale(loss).backward()',
      'accumulated gradients summed instead of averaged over the episodes', ('accumulation',), LEARN),
    B('grads_not_cleared', 'learner.py', 'self.opt.zero_grad(set_to_none=True)', 'None',
      'gradients are never cleared: every step adds the previous steps\' gradients', ('accumulation',), LEARN),
    B('one_episode_per_step', 'learner.py', 'eps = [next(it) for _ in range(self.per_rank)]', 'eps = [next(it)]',
      'fit hands one episode to each optimiser step', ('accumulation',), LEARN),
    B('lr_ignored', 'learner.py', "g['lr'] = self.lr_at(self.step)", "g['lr'] = 1e-4",
      'the learning rate is not the configured one', ('accumulation',), LEARN),
    B('grad_clip_ignored', 'learner.py', '        if cfg.grad_clip:\n', '        if False:\n',
      'grad_clip ignored', ('accumulation',), LEARN),

    # ---- resumption
    B('resume_rank0_digest', 'learner.py', "self.episode_digest = (s.get('episode_digests') or [''] * self.world)[self.rank]",
      "self.episode_digest = (s.get('episode_digests') or [''] * self.world)[0]",
      'a resumed rank continues rank 0\'s episode stream record instead of its own', ('resumption',),
      ('tests/test_distributed.py',)),

    # ---- evaluation
    B('ci_without_sqrt_n', 'evaluate.py', '1.96 * v.std() / math.sqrt(v.size)', '1.96 * v.std()',
      'the 95% CI is not divided by √n', ('evaluation',), EVAL),
    B('ci_wrong_z', 'evaluate.py', '1.96 * v.std() / math.sqrt(v.size)', '1.0 * v.std() / math.sqrt(v.size)',
      'a 68% interval reported as 95%', ('evaluation',), EVAL),
    B('mean_is_median', 'evaluate.py', 'return float(v.mean()),', 'return float(np.median(v)),',
      'the reported accuracy is the median episode', ('evaluation',), EVAL),
    B('episode_accuracy_summed', 'evaluate.py', 'accs.append(float(row.mean()))', 'accs.append(float(row.sum()))',
      'per-episode accuracy is a count of correct queries', ('evaluation',), EVAL),
    B('prediction_argmin', 'evaluate.py', "pred = out['logits'].argmax(-1).cpu()", "pred = out['logits'].argmin(-1).cpu()",
      'the prediction is the least likely class', ('evaluation',), EVAL),
    B('per_class_episode_labels', 'evaluate.py', "cls = ep['class_ids'].gather(1, ep['query_labels']).cpu().numpy()", "cls = ep['query_labels'].cpu().numpy()",
      'per-class accuracy keyed by the episode label instead of the class', ('evaluation',), EVAL),
    B('eval_generators_shared', 'evaluate.py', 'episode_generator(cfg.eval_seed, split, i, device) for i in indices',
      'episode_generator(cfg.eval_seed, split, indices[0], device) for i in indices',
      'the episodes of a chunk draw their sampled prompts from one seed: scores depend on eval_chunk', ('evaluation',), EVAL),
    B('eval_chunk_prototypes_mixed', 'fusion.py', '        x = x.flatten(0, 1)\n', '        x = x.transpose(0, 1).flatten(0, 1)\n',
      'the prototypes of a chunk of episodes mix the episodes\' support videos', ('evaluation',), EVAL),
    B('eval_chunk_first_text', 'evaluate.py', "text[ep['class_ids']], generator", "text[ep['class_ids'][:1].expand_as(ep['class_ids'])], generator",
      'every episode of a chunk gets the class texts of the first', ('evaluation',), EVAL),
    B('eval_support_tokens_of_class_0', 'evaluate.py', "text[[r.label for r in videos]]", "text[[0 for r in videos]]",
      'the support tokens computed once per video get the prompt of class 0 instead of their own class', ('evaluation',), EVAL),
    B('eval_nonfinite_names_chunk_start', 'evaluate.py', 'non-finite logits at {where(bad)}', 'non-finite logits at {where()}',
      'a NaN episode is named by the first episode of its chunk', ('evaluation',), EVAL),
    B('fixed_episodes_depend_on_n', 'evaluate.py', 'sampler.episode(i) for i in range(n_episodes)', 'sampler.episode(i + n_episodes) for i in range(n_episodes)',
      'the fixed episodes change with their number', ('evaluation',), EVAL),
    B('best_is_last', 'learner.py', "rec['best'] = math.isfinite(score) and score > self.best", "rec['best'] = math.isfinite(score)",
      'the best checkpoint is the last validated one, not the best', ('evaluation',), LEARN + ('tests/test_artifacts.py',)),
    B('test_scores_last_not_best', 'learner.py', 'if self.run.best.exists(): load_model_state(self.model, load_checkpoint(self.run.best', 'if False: load_model_state(self.model, load_checkpoint(self.run.best',
      'the test split is scored with the last weights, not the best validation checkpoint', ('evaluation',),
      LEARN + ('tests/test_artifacts.py',)),

    # ---- issue 23: statistics of the artifacts, data handling, training length, KARMMA (written before their tests)
    B('resolved_only_if_positive', 'stats.py', "out.loc[i, 'resolved'] = bool(abs(d) > h)", "out.loc[i, 'resolved'] = bool(d > h)",
      'a significant drop is captioned as inside its 95% CI (only gains count as resolved)', ('issue23', 'statistics'), ART),
    B('seed_ms_wrong_count', 'stats.py', 'E * ((r - m) ** 2).sum() / (S - 1), S - 1)', 'E * ((r - m) ** 2).sum() / (S * E - 1), S - 1)',
      'the seed mean square is divided by S·E − 1 instead of S − 1 (every multi-seed CI too narrow)', ('issue23', 'statistics'), ART),
    B('episode_ms_without_s', 'stats.py', 'S * ((c - m) ** 2).sum() / (E - 1), E - 1)', '((c - m) ** 2).sum() / (E - 1), E - 1)',
      'the episode mean square lacks its factor S', ('issue23', 'statistics'), ART),
    B('residual_ms_wrong_count', 'stats.py', '** 2).sum() / ((S - 1) * (E - 1)), (S - 1) * (E - 1))', '** 2).sum() / (S * E), (S - 1) * (E - 1))',
      'the residual mean square is divided by S·E instead of (S − 1)(E − 1)', ('issue23', 'statistics'), ART),
    B('negative_component_kept', 'stats.py', "coef = {k: float(ms[k][0] > res) for k in ('seeds', 'episodes')}",
      "coef = {k: 1. for k in ('seeds', 'episodes')}", 'a variance component estimated negative is kept (not truncated at 0)',
      ('issue23', 'statistics'), ART),
    B('crossed_ci_normal_quantile', 'stats.py', 'float(stats.t.ppf(0.975, df) * math.sqrt(v))', 'float(1.96 * math.sqrt(v))',
      'the crossed CI uses 1.96 instead of the Satterthwaite t quantile', ('issue23', 'statistics'), ART),
    B('one_episode_ci_ddof0', 'stats.py', 'stats.t.ppf(0.975, S - 1) * r.std(ddof=1) / math.sqrt(S)', 'stats.t.ppf(0.975, S - 1) * r.std(ddof=0) / math.sqrt(S)',
      'the one-episode CI over seeds uses the biased standard deviation', ('issue23', 'statistics'), ART),
    B('seed_ci95_t_df', 'stats.py', 'float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1)', 'float(stats.t.ppf(0.975, len(v)) * v.std(ddof=1)',
      'the CI over seeds takes n degrees of freedom instead of n − 1', ('issue23', 'statistics'), ART),
    B('delta_paired_by_position', 'stats.py', 'ref.episode_accuracy[[ref.seeds.index(s) for s in both]]', 'ref.episode_accuracy[:len(both)]',
      'with unequal seed sets, Δ pairs runs by position instead of by seed', ('issue23', 'statistics'), ART),
    B('delta_seed_ci_wrong_axis', 'stats.py', '[d, h, seed_ci95(D.mean(1)), mean_ci95(D.mean(0))[1]]', '[d, h, seed_ci95(D.mean(0)), mean_ci95(D.mean(0))[1]]',
      "Δ's seed CI computed over episode means", ('issue23', 'statistics'), ART),
    B('ci95_seeds_wrong_axis', 'stats.py', 'ci95_seeds=seed_ci95(X.mean(1))', 'ci95_seeds=seed_ci95(X.mean(0))',
      "the accuracy's seed CI computed over episode means", ('issue23', 'statistics'), ART),
    B('single_run_delta_reversed', 'stats.py', 'paired_difference(row.episode_accuracy, ref.episode_accuracy)', 'paired_difference(ref.episode_accuracy, row.episode_accuracy)',
      'single-run Δ is reference − setting (the sign flips)', ('issue23', 'statistics'), ART),
    B('signed_format_drops_sign', 'report.py', "return f'{mean:+.1f} ± {ci:.1f}' if signed", "return f'{abs(mean):+.1f} ± {ci:.1f}' if signed",
      'a negative Δ is printed as a gain', ('issue23', 'statistics'), ART),
    B('per_class_max_over_seeds', 'stats.py', 'float(np.mean([pc[c] for pc in g.per_class if c in pc]))', 'float(np.max([pc[c] for pc in g.per_class if c in pc]))',
      'per-class accuracy of a setting is the best seed, not the mean', ('issue23', 'statistics'), ART),
    B('caption_two_seeds_single', 'report.py', 'if (s.n_seeds > 1).any():', 'if (s.n_seeds > 2).any():',
      'a two-seed grid is captioned as single runs (wrong CI description)', ('issue23', 'statistics'), ART),

    B('probe_cache_ignores_stamp', 'datacheck.py', 'return (e[2], e[3]) if e and e[:2] == stamp else None', 'return (e[2], e[3]) if e else None',
      'a cached verdict ignores the file\'s stamp (a repaired or newly broken video keeps its old verdict)', ('issue23', 'datacheck'), DC),
    B('probe_cache_size_only', 'datacheck.py', 'return (e[2], e[3]) if e and e[:2] == stamp else None', 'return (e[2], e[3]) if e and e[:1] == stamp[:1] else None',
      'a cached verdict survives a rewrite of the same size', ('issue23', 'datacheck'), DC),
    B('file_stamp_seconds', 'datacheck.py', 'return [st.st_size, st.st_mtime_ns]', 'return [st.st_size, int(st.st_mtime)]',
      'the stamp keeps whole seconds: a rewrite within the second keeps its verdict', ('issue23', 'datacheck'), DC),
    B('exactly_t_frames_short', 'datacheck.py', 'elif n < cfg.frames:', 'elif n <= cfg.frames:',
      'a video of exactly T frames is reported short', ('issue23', 'datacheck'), DC),
    B('probe_first_frame_only', 'datacheck.py', 'v.read([n - 1])', 'v.read([0])',
      'the probe decodes the first frame, so a video broken at its end passes', ('issue23', 'datacheck'), DC),
    B('frame_count_mean_not_median', 'datacheck.py', 'int(statistics.median(xs)) if xs', 'int(statistics.mean(xs)) if xs',
      'the report\'s median frame count is the mean', ('issue23', 'datacheck'), DC),

    B('extra_classes_accepted', 'splits.py', 'if want is not None and len(classes) != want:', 'if want is not None and len(classes) < want:',
      'a split list with extra classes is accepted', ('issue23', 'splits'), SPL),
    B('check_episode_needs_one_more', 'splits.py', 'ok = [i for i, n in counts.items() if n >= shot + query]', 'ok = [i for i, n in counts.items() if n > shot + query]',
      'a class with exactly shot + query videos is left out of episodes', ('issue23', 'splits'), SPL),
    B('blank_line_skipped', 'splits.py', "if not line.strip(): raise bad('blank line inside the list')", 'if not line.strip(): continue',
      'a blank line inside a split list is skipped silently', ('issue23', 'splits'), SPL),
    B('stray_spaces_accepted', 'splits.py', 'or any(p != p.strip() for p in parts):', ':',
      'a split line with stray spaces around a part is accepted', ('issue23', 'splits'), SPL),
    B('clipfsar_tag_unchecked', 'splits.py', r"re.fullmatch(r'[A-Za-z]+\d+', tag)", r"re.fullmatch(r'.*', tag)",
      'a CLIP-FSAR line with a malformed tag is accepted', ('issue23', 'splits'), SPL),
    B('split_lines_zero_based', 'splits.py', 'for i, line in enumerate(lines, 1):', 'for i, line in enumerate(lines):',
      'split-list lines numbered from 0 (errors and records name the wrong line)', ('issue23', 'splits'), SPL),

    B('prepare_enlarges', 'prepare.py', 's = min(1., short_side / min(w, h))', 's = short_side / min(w, h)',
      'small videos are enlarged to the short side', ('issue23', 'prepare'), PREP),
    B('prepare_long_side', 'prepare.py', 's = min(1., short_side / min(w, h))', 's = min(1., short_side / max(w, h))',
      'the longer side is brought to 256', ('issue23', 'prepare'), PREP),
    B('prepare_floor_even', 'prepare.py', 'even = lambda x, n: max(2, min(int(round(x / 2)) * 2, n // 2 * 2))', 'even = lambda x, n: max(2, min(int(x / 2) * 2, n // 2 * 2))',
      'the other side is floored to even instead of rounded', ('issue23', 'prepare'), PREP),
    B('prepare_odd_sides', 'prepare.py', 'even = lambda x, n: max(2, min(int(round(x / 2)) * 2, n // 2 * 2))', 'even = lambda x, n: max(2, min(int(round(x)), n))',
      'sides may be odd (yuv420p needs even)', ('issue23', 'prepare'), PREP),
    B('prepare_frame_folder_not_resized', 'prepare.py', 'frame.resize(size, Image.BILINEAR) if frame.size != size else frame', 'frame',
      'a frame-folder source is copied at its size, not resized', ('issue23', 'prepare'), PREP),
    B('prepare_mp4_suffix_doubled', 'prepare.py', "return base if base.suffix.lower() == '.mp4' else base.with_name(base.name + '.mp4')",
      "return base.with_name(base.name + '.mp4')", "a split line naming 'v.mp4' is written to 'v.mp4.mp4'", ('issue23', 'prepare'), PREP),

    B('crop_top_never_last', 'video.py', 'top, left = int(rng.integers(0, h - c + 1)),', 'top, left = int(rng.integers(0, h - c)),',
      'a random crop never reaches the bottom row of a tall clip', ('issue23', 'video'), VID),
    B('crop_left_never_first', 'video.py', 'int(rng.integers(0, w - c + 1))\n', 'int(rng.integers(1, w - c + 1))\n',
      'a random crop never starts at the left edge of a wide clip', ('issue23', 'video'), VID),
    B('flip_probability_tenth', 'video.py', 'flip = self.flip and bool(rng.random() < 0.5)', 'flip = self.flip and bool(rng.random() < 0.1)',
      'training clips are flipped with probability 0.1 instead of 1/2', ('issue23', 'video'), VID),
    B('centre_crop_rounds_up', 'video.py', 'else: top, left, flip = (h - c) // 2, (w - c) // 2, False', 'else: top, left, flip = (h - c + 1) // 2, (w - c + 1) // 2, False',
      'an odd margin puts the centre crop one pixel further', ('issue23', 'video'), VID),
    B('resize_truncates', 'video.py', 'nh, nw = (size, max(1, round(w * size / h)))', 'nh, nw = (size, max(1, int(w * size / h)))',
      'the longer side of a resized clip is truncated instead of rounded', ('issue23', 'video'), VID),

    B('query_reuses_support_draws', 'episodes.py', 'query=_load_records(spec.query, *args, len(spec.support), self.sampling),', 'query=_load_records(spec.query, *args, 0, self.sampling),',
      'the queries draw the same augmentations as the support videos', ('issue23', 'episodes'), EPI),
    B('one_draw_per_episode', 'episodes.py', 'rng = np.random.default_rng([seed, rank, index, offset + j])', 'rng = np.random.default_rng([seed, rank, index, offset])',
      'every support video (and every query) of an episode gets the same crop, flip and frames', ('issue23', 'episodes'), EPI),
    B('draws_ignore_episode', 'episodes.py', 'rng = np.random.default_rng([seed, rank, index, offset + j])', 'rng = np.random.default_rng([seed, rank, offset + j])',
      'every episode draws the same augmentations', ('issue23', 'episodes'), EPI),
    B('sampler_exact_need_rejected', 'episodes.py', 'short = {c: len(v) for c, v in by_class.items() if len(v) < need}', 'short = {c: len(v) for c, v in by_class.items() if len(v) <= need}',
      'a class with exactly shot + query videos is refused by the sampler', ('issue23', 'episodes'), EPI),
    B('eval_clips_random', 'episodes.py', 'self.frames, self.transform, False, np.random.default_rng(0),', 'self.frames, self.transform, True, np.random.default_rng(0),',
      'evaluation clips (feature cache) sample frames at random positions', ('issue23', 'episodes'), EPI),

    B('metrics_header_every_row', 'runs.py', '            if new: w.writeheader()\n', '            w.writeheader()\n',
      'metrics.csv repeats its header before every row', ('issue23', 'runs'), RUNS),
    B('metrics_overwritten', 'runs.py', "with open(f, 'a', newline='') as fh:", "with open(f, 'w', newline='') as fh:",
      'metrics.csv keeps only the last row', ('issue23', 'runs'), RUNS),
    B('log_json_no_newline', 'runs.py', "fh.write(json.dumps(record) + '\\n')", 'fh.write(json.dumps(record))',
      'JSON lines are written without their newline (val.jsonl becomes one unreadable line)', ('issue23', 'runs'), RUNS),
    B('log_json_overwrites', 'runs.py', "with open(self.path / name, 'a') as fh:", "with open(self.path / name, 'w') as fh:",
      'a JSON-lines log keeps only its last record', ('issue23', 'runs'), RUNS),

    B('total_steps_floor', 'learner.py', 'self.total_steps = math.ceil(cfg.episodes / self.per_step)', 'self.total_steps = cfg.episodes // self.per_step',
      'episodes not a multiple of accumulation: the last partial step is dropped', ('issue23', 'learner'), LRN),
    B('cosine_over_episodes', 'learner.py', 'math.cos(math.pi * min(step, self.total_steps) / self.total_steps)', 'math.cos(math.pi * min(step, self.total_steps) / self.cfg.episodes)',
      'the cosine schedule runs over episodes instead of optimiser steps', ('issue23', 'learner'), LRN),
    B('validate_on_multiples_only', 'learner.py', 'crossed = lambda every: every and before // every != self.episode // every',
      'crossed = lambda every: every and self.episode % every == 0',
      'validation only when the episode count is a multiple of val_every (skipped when accumulation does not divide it)', ('issue23', 'learner'), LRN),
    B('metrics_lr_of_next_step', 'learner.py', 'lr=self.lr_at(self.step - 1),', 'lr=self.lr_at(self.step),',
      'metrics.csv records the next step\'s learning rate', ('issue23', 'learner'), LRN),

    B('kd_temperature_ignored', 'karmma/model.py', 'out[\'logits\'][t], cfg.kd_temperature) for t in cfg.targets]', 'out[\'logits\'][t], 1.) for t in cfg.targets]',
      'kd_temperature ignored: a T = 4 distillation trains at T = 1', ('issue23', 'karmma'), KAR),
    B('kd_no_t_squared', 'karmma/model.py', "reduction='batchmean', log_target=True) * T * T", "reduction='batchmean', log_target=True) * T",
      'the distillation loss is scaled by T instead of T²', ('issue23', 'karmma'), KAR),
    B('kd_teacher_not_softened', 'karmma/model.py', 'F.log_softmax(teacher_logits / T, -1)', 'F.log_softmax(teacher_logits, -1)',
      "the teacher's distribution is not softened by T", ('issue23', 'karmma'), KAR),
    B('kd_student_not_softened', 'karmma/model.py', 'F.log_softmax(student_logits / T, -1)', 'F.log_softmax(student_logits, -1)',
      "the student's distribution is not softened by T", ('issue23', 'karmma'), KAR),
    B('karmma_loss_weights_fixed', 'karmma/model.py', 'return cfg.ce_weight * ce + cfg.aux_weight * aux,', 'return 0.7 * ce + 0.3 * aux,',
      'ce_weight and aux_weight ignored (the paper values always)', ('issue23', 'karmma'), KAR),
    B('karmma_best_is_last', 'karmma/train.py', "best=r['accuracy'] > self.best)", 'best=True)',
      "KARMMA's best checkpoint is the last validated one", ('issue23', 'karmma'), KAR),
    B('karmma_ends_on_last', 'karmma/train.py', 'if self.run.best.exists():   # end on the selected weights', 'if False:',
      'a KARMMA run ends on its last weights, not the selected ones', ('issue23', 'karmma'), KAR),

    # ---- issue 22: what the world's figures measure
    B('pps_true_top_argmin', 'evaluate.py', "top = (out['pps_probs'].argmax(-1).cpu()", "top = (out['pps_probs'].argmin(-1).cpu()",
      "PPS's π is scored on its smallest mass, not its largest", ('issue22', 'evaluation'), EVAL),
    B('pps_frame_first_seed_only', 'report.py', "m, h, _ = crossed_mean_ci95(100 * np.stack(g.pps_episode_true_top.to_list()))",
      "m, h, _ = crossed_mean_ci95(100 * np.stack(g.pps_episode_true_top.to_list()[:1]))",
      "the PPS summary of a setting reads its first seed only", ('issue22', 'statistics'), ART),
    B('drop_weight_no_all_dropped_case', 'karmma/train.py', "(p ** held / held if kept == 1 else 0.)", "0.",
      "the drop protocol's expectation forgets that a clip with every modality dropped keeps one", ('issue22', 'karmma'), KAR),
    B('drop_weight_swapped_powers', 'karmma/train.py', "(1 - p) ** kept * p ** (held - kept)", "p ** kept * (1 - p) ** (held - kept)",
      "the drop protocol's expectation weighs a kept modality by p instead of 1 - p", ('issue22', 'karmma'), KAR),
    B('pps_label_without_dataset', 'report.py', "(f', {r.dataset}' if frame.dataset.nunique() > 1 else '')", "''",
      "the PPS table's rows of two benchmarks carry the same name", ('issue22', 'statistics'), ART),
    B('pps_table_accuracy_is_share', 'report.py', "acc: fmt_acc(r.accuracy, r.accuracy_ci95)", "acc: fmt_acc(r.pps_true_top, r.ci95)",
      "the PPS table's accuracy column repeats π's hit rate", ('issue22', 'statistics'), ART),
    B('student_start_without_audio', 'karmma/world.py', "STUDENT_PRETRAINED = ('rgb', 'flow', 'audio')", "STUDENT_PRETRAINED = ('rgb', 'flow')",
      "the world's student network starts its audio extractor from scratch by default", ('issue22', 'karmma'), KW),
    B('checkpoint_modalities_ignored', 'karmma/model.py', 'cfg.extractor_checkpoint, cfg.checkpoint_modalities)', 'cfg.extractor_checkpoint)',
      'a model loads every extractor from extractor_checkpoint whatever checkpoint_modalities says', ('issue22', 'karmma'), KW),
    B('world_start_drops_modalities', 'karmma/world.py', 'checkpoint_modalities=None if every else mods)', 'checkpoint_modalities=None)',
      "a start that pretrains some of the student network's extractors does not tell the config which", ('issue22', 'karmma'), KW),
    B('world_start_reuses_any_file', 'karmma/world.py', 'if held != sorted(mods):', 'if False:',
      'a folder holding extractors of another start is reused silently', ('issue22', 'karmma'), KW),
    B('karmma_resumes_any_start', 'karmma/train.py', '        if was != now:\n', '        if False:\n',
      'a KARMMA run folder trained from other extractors is resumed under a new start', ('issue22', 'karmma'), KW),
    B('karmma_resumes_any_recipe', 'karmma/train.py', '        if recipe:\n', '        if False:\n',
      'a KARMMA run folder is resumed under another warm-up, learning rate, dropout or seed', ('issue22', 'karmma'), KW),

    # ---- issue 19: the authors' protocol outside the head (presets `reference` and `reference_fixed`)
    B('bn_reference_never_switches', 'learner.py', 'return episode >= cfg.test_at[0]', 'return False',
      "bn_mode='reference' keeps running statistics after the first test scoring", ('issue19', 'switch'), REF),
    B('bn_frozen_uses_batch_stats', 'learner.py', "if cfg.bn_mode == 'frozen': return False", "if cfg.bn_mode == 'frozen': return True",
      "bn_mode='frozen' trains BatchNorm on batch statistics", ('issue19', 'switch'), REF),
    B('reference_preset_bn_train', 'config.py', "bn_mode='reference', class_names='reference'", "bn_mode='train', class_names='reference'",
      "the reference preset trains BatchNorm from step 0 (the authors' model is in eval mode until the first test)", ('issue19', 'preset'), REF),
    B('reference_fixed_keeps_permutation', 'config.py', "REFERENCE_FIXES = dict(bn_mode='frozen', class_names='authors',",
      "REFERENCE_FIXES = dict(bn_mode='frozen', class_names='reference',",
      "reference_fixed prompts classes with another class's name, as the authors' loader does", ('issue19', 'preset'), REF),
    B('authors_names_unpermuted', 'splits.py', 'given = [names[pos[glob[k]]] for k in classes]', 'given = [names[i] for i, k in enumerate(classes)]',
      "class_names='reference' gives each class the yaml name at its own index, not at its position in list(set(ids))", ('issue19', 'splits'), REF),
    B('reference_jitter_3', 'video.py', 'REFERENCE_JITTER = 5 ', 'REFERENCE_JITTER = 3 ',
      "the authors' training span moves each end by at most 3 frames instead of 5", ('issue19', 'sampler'), REF),
    B('reference_eval_span_whole_clip', 'video.py', 'else: start, end = 1, n_frames - 2', 'else: start, end = 0, n_frames - 1',
      "the authors' evaluation frames are spread over the whole clip instead of frames 1 .. L-2", ('issue19', 'sampler'), REF),
    B('k100_one_shot_two_way', 'config.py', "('reference', 'kinetics100', 1): dict(otam_bidirectional=False)",
      "('reference', 'kinetics100', 1): dict(otam_bidirectional=True)",
      "the reference preset matches Kinetics-100 1-shot both ways (the authors' yaml sets SINGLE_DIRECT)", ('issue19', 'preset'), REF),
    B('authors_lr_1e5', 'config.py', 'AUTHORS_MAIN_SCRIPT = dict(lr=1e-6,', 'AUTHORS_MAIN_SCRIPT = dict(lr=1e-5,',
      "the reference presets train the real benchmarks at lr 1e-5 instead of the authors' 1e-6", ('issue19', 'preset'), REF),
    B('reference_amp_on', 'config.py', "frame_sampling='reference', flip=True, amp=False)", "frame_sampling='reference', flip=True, amp=True)",
      "the reference preset trains in mixed precision (the authors' run in float32)", ('issue19', 'preset'), REF),
    B('test_at_not_rescaled', 'config.py', "d['test_at'] = tuple(sorted({max(1, round(e * n / last)) for e in d['test_at']}))", "pass",
      "a reference run of another length keeps the 20,000-episode scoring points", ('issue19', 'preset'), REF),
    B('test_at_reports_first', 'learner.py', 'h = picked[-1]', 'h = picked[0]',
      "a test_at run reports its first (or first best) scoring instead of its last (or best)", ('issue19', 'evaluation'), REF),
]
BY_NAME = {b.name: b for b in BREAKS}
assert len(BY_NAME) == len(BREAKS), 'two breaks share a name'


@dataclass
class Result:
    name: str
    status: str               # KILLED | SURVIVED | STALE | AMBIGUOUS | TIMEOUT | ERROR
    seconds: float = 0.
    detail: str = ''          # the first failing test, or why
    tests: list = field(default_factory=list)


def snapshot() -> Path:
    "A copy of the repository's files (tracked, or untracked and not ignored) in a temporary folder."
    dst = Path(tempfile.mkdtemp(prefix='m2df-mutate-snapshot-'))
    try:
        names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                               capture_output=True, check=True).stdout.decode().split('\0')
    except (OSError, subprocess.CalledProcessError):     # not a git checkout: the folders the tests need
        names = [str(p.relative_to(REPO)) for d in ('m2df', 'tests', 'nbs') for p in (REPO / d).rglob('*') if p.is_file()]
        names += [p.name for p in REPO.iterdir() if p.is_file()]
    for n in names:
        src = REPO / n
        if n and src.is_file() and '__pycache__' not in n:
            (dst / n).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / n)
    if not (dst / 'm2df' / '__init__.py').is_file(): sys.exit(f'no package m2df/ in {REPO}')
    return dst


def child_env(root: Path) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(root)] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    env.update(PYTHONDONTWRITEBYTECODE='1', OMP_NUM_THREADS=env.get('OMP_NUM_THREADS', '1'), MPLBACKEND='Agg')
    return env


def imported_from(root: Path) -> str:
    "The folder `import m2df` resolves to with the copy at `root` first on the path."
    p = subprocess.run([sys.executable, '-c', 'import m2df, os; print(os.path.dirname(m2df.__file__))'],
                       cwd=root, env=child_env(root), capture_output=True, text=True, timeout=120)
    return p.stdout.strip() or p.stderr.strip()


def run_pytest(root: Path, tests: list, timeout: float, extra: list) -> tuple:
    "(pytest exit code or None on timeout, output) of `pytest -x tests` in the repository copy `root`."
    deselect = [a for s in SLOW if '::' in s for a in ('--deselect', s)]
    cmd = [sys.executable, '-m', 'pytest', '-x', '-q', '-p', 'no:cacheprovider', f'--basetemp={root.parent / "pytest"}',
           f'--rootdir={root}', *deselect, *extra, *tests]
    p = subprocess.Popen(cmd, cwd=root, env=child_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)   # its own process group: a timeout ends pytest and its children
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return None, out


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if re.match(r'(FAILED|ERROR) ', line): return re.sub(r'\S*?(tests/test_)', r'\1', line)[:300]
    m = re.search(r'^E\s+.*$', output, re.M)
    return m.group(0)[:300] if m else output.strip().splitlines()[-1][:300] if output.strip() else ''


def run_break(b: Break | None, snap: Path, tests: list, timeout: float, extra: list, keep: bool) -> Result:
    "Apply `b` (None: the baseline) to a fresh copy of the snapshot `snap` and run the tests there."
    name = b.name if b else 'baseline'
    work = Path(tempfile.mkdtemp(prefix=f'm2df-mutant-{name}-'))
    root = work / 'repo'
    t0 = time.time()
    try:
        shutil.copytree(snap, root)
        pkg = root / 'm2df'
        if b is not None:
            f = pkg / b.file
            if not f.exists(): return Result(name, 'STALE', 0., f'm2df/{b.file} does not exist', tests)
            text, problem = b.apply(f.read_text())
            if problem:
                n = f.read_text().count(b.original)
                return Result(name, problem, 0., f'm2df/{b.file}: the original text occurs {n} times: {b.original!r}', tests)
            f.write_text(text)
        where = imported_from(root)
        if Path(where) != pkg:
            return Result(name, 'ERROR', time.time() - t0, f'the tests would import m2df from {where}, not from the copy {pkg}', tests)
        code, out = run_pytest(root, tests, timeout, extra)
        dt = time.time() - t0
        if code is None: return Result(name, 'TIMEOUT', dt, f'no verdict within {timeout:.0f} s', tests)
        if code == 0: return Result(name, 'SURVIVED', dt, 'every selected test passed', tests)
        if code in (1, 2): return Result(name, 'KILLED', dt, first_failure(out) + (' (collection)' if code == 2 else ''), tests)
        return Result(name, 'ERROR', dt, f'pytest exit code {code}: {first_failure(out)}', tests)
    finally:
        if keep: print(f'  kept {work}', flush=True)
        else: shutil.rmtree(work, ignore_errors=True)


def in_copy(t: str) -> str:
    "A test file or node id as a path relative to the repository (the copy runs its own tests)."
    path, sep, node = t.partition('::')
    p = Path(path).resolve()
    try: path = str(p.relative_to(REPO))
    except ValueError: sys.exit(f'--tests {t}: not inside the repository {REPO}')
    return path + sep + node


def default_tests() -> list:
    slow_files = {s for s in SLOW if '::' not in s}
    return [f'tests/{p.name}' for p in sorted(TESTS.glob('test_*.py')) if f'tests/{p.name}' not in slow_files]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog='\n\n'.join(__doc__.split('\n\n')[1:]))
    ap.add_argument('names', nargs='*', help='breaks to run (default: all)')
    ap.add_argument('--list', action='store_true', help='list the breaks and exit')
    ap.add_argument('--check', action='store_true', help='only check that every snippet occurs exactly once')
    ap.add_argument('--tag', action='append', default=[], help='only breaks with this tag (repeatable)')
    ap.add_argument('--tests', nargs='+', help='test files or node ids (default: tests/test_*.py minus the slow ones)')
    ap.add_argument('--focused', action='store_true', help="each break against its own test files (see its entry)")
    ap.add_argument('--timeout', type=float, default=1800, help='seconds per break (default 1800)')
    ap.add_argument('-j', '--jobs', type=int, default=1, help='breaks run in parallel (default 1)')
    ap.add_argument('--no-baseline', action='store_true', help='skip the run of the unmutated copy')
    ap.add_argument('--keep', action='store_true', help='keep the temporary copies')
    ap.add_argument('--json', help='write the results to this file')
    ap.add_argument('--pytest-args', default='', help='extra pytest arguments, one string')
    a = ap.parse_args(argv)

    unknown = [n for n in a.names if n not in BY_NAME]
    if unknown: ap.error(f'unknown break(s) {unknown}; see --list')
    chosen = [BY_NAME[n] for n in a.names] if a.names else list(BREAKS)
    if a.tag: chosen = [b for b in chosen if set(a.tag) & set(b.tags)]
    if not chosen: ap.error('no break selected')
    if a.list:
        for b in chosen: print(f'{b.name:34s} m2df/{b.file:13s} [{",".join(b.tags)}] {b.description}')
        print(f'{len(chosen)} breaks'); return 0
    if a.check:
        bad = 0
        for b in chosen:
            f = REPO / 'm2df' / b.file
            n = f.read_text().count(b.original) if f.exists() else 0
            if n != 1:
                bad += 1
                print(f'{"STALE" if n == 0 else "AMBIGUOUS"} {b.name}: m2df/{b.file} holds the original text {n} times: {b.original!r}')
        print(f'{len(chosen)} breaks, {len(chosen) - bad} apply, {bad} stale or ambiguous')
        return 1 if bad else 0

    extra = a.pytest_args.split()
    snap = snapshot()
    selection = lambda b: [in_copy(t) for t in a.tests] if a.tests else (list(b.tests) if a.focused and b.tests else default_tests())
    if not a.no_baseline:
        union = list(dict.fromkeys(t for b in chosen for t in selection(b)))
        print(f'baseline: the unmutated package against {len(union)} test file(s) ...', flush=True)
        r = run_break(None, snap, union, a.timeout * 2, extra, a.keep)
        print(f'baseline: {"passed" if r.status == "SURVIVED" else r.status + ": " + r.detail} ({r.seconds:.0f} s)', flush=True)
        if r.status != 'SURVIVED':
            shutil.rmtree(snap, ignore_errors=True)
            print('the tests fail without any break: fix that first (or pass --no-baseline)'); return 2

    print(f'{len(chosen)} break(s), {a.jobs} at a time, timeout {a.timeout:.0f} s each', flush=True)
    results, lock = [], threading.Lock()
    def one(b):
        r = run_break(b, snap, selection(b), a.timeout, extra, a.keep)
        with lock:
            results.append(r)
            loud = '!!! ' if r.status != 'KILLED' else ''
            print(f'[{len(results)}/{len(chosen)}] {loud}{r.status:9s} {b.name:34s} {r.seconds:6.0f} s  {r.detail}', flush=True)
        return r
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex: list(ex.map(one, chosen))
    finally:
        shutil.rmtree(snap, ignore_errors=True)

    order = {b.name: i for i, b in enumerate(chosen)}
    results.sort(key=lambda r: order[r.name])
    counts = {s: sum(r.status == s for r in results) for s in ('KILLED', 'SURVIVED', 'STALE', 'AMBIGUOUS', 'TIMEOUT', 'ERROR')}
    print('\n' + '\n'.join(f'{r.status:9s} {r.name}: {BY_NAME[r.name].description}' for r in results if r.status != 'KILLED'))
    print(f'{time.strftime("%Y-%m-%d")}: {len(results)} breaks: ' + ', '.join(f'{n} {s.lower()}' for s, n in counts.items() if n or s in ('KILLED', 'SURVIVED')))
    if a.json:
        Path(a.json).write_text(json.dumps(dict(date=time.strftime('%Y-%m-%d %H:%M'), focused=a.focused, tests=a.tests,
                                                results=[r.__dict__ for r in results]), indent=1))
    return 0 if counts['KILLED'] == len(results) else 1


if __name__ == '__main__':
    sys.exit(main())
