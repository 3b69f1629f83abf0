"""KARMMA (Santos-Villafranca et al., arXiv 2504.08578): multimodal egocentric action recognition robust to missing modalities.

modalities: optical flow, audio, object boxes; data: the synthetic multimodal benchmark and the SSv2 / Epic-Kitchens-100
loaders; model: extractors, Θ-Average, fusion block, multi-head MLP, losses; train: teacher, student, baselines, protocols.
Each module is exported from its notebook nbs/2x_karmma_*.ipynb."""
