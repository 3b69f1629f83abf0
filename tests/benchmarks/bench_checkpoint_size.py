"""Size of the checkpoints of the paper's backbones (RN50, ViT-B-16; random weights, which take the room the real ones do).

`last.pt` holds what resumption needs (the trainable weights, Adam's two moments, counters), `best.pt` the trainable
weights only; the frozen text tower is left out of both when it comes from named weights (`pretrained` a tag or a file).
The figure before that change (everything saved, optimiser in both files) is printed for comparison.

    python tests/benchmarks/bench_checkpoint_size.py
"""
import io, sys

import torch

from m2df.config import make_config
from m2df.model import M2DF
from m2df.runs import frozen_keys, model_state


def saved_bytes(obj) -> int:
    buf = io.BytesIO(); torch.save(obj, buf); return buf.getbuffer().nbytes


def sizes(backbone: str) -> dict:
    torch.manual_seed(0)
    model = M2DF(make_config('ucf101', backbone=backbone).replace(pretrained=None))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-5)
    for p in params: p.grad = torch.zeros_like(p)
    opt.step()                                                          # Adam's moments now exist, as after any step
    optim = opt.state_dict()
    full = model.state_dict()
    slim = model_state(model, rebuildable=True)
    frozen = sum(full[k].numel() * full[k].element_size() for k in frozen_keys(model))
    return dict(before_each=saved_bytes(dict(model=full, optimizer=optim)), last=saved_bytes(dict(**slim, optimizer=optim)),
                best=saved_bytes(slim), frozen=frozen)


if __name__ == '__main__':
    torch.set_num_threads(1)
    MB = 1e6
    for name in sys.argv[1:] or ['RN50', 'ViT-B-16']:
        s = sizes(name)
        print(f"{name}: before {s['before_each'] / MB:.0f} MB per file (x2: {2 * s['before_each'] / MB:.0f} MB); "
              f"now last.pt {s['last'] / MB:.0f} MB + best.pt {s['best'] / MB:.0f} MB = {(s['last'] + s['best']) / MB:.0f} MB "
              f"(frozen text tower left out: {s['frozen'] / MB:.0f} MB)")
