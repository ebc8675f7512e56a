"""One routed step of a governed foreign denoiser, run by test_accelerate_launch.py under one process
or under ``accelerate launch`` (DDP): each process takes its shard of the same global rows (fixed
inputs per row), and saves every parameter's gradient after governance averaged them.

    python accelerate_step.py PIPELINE IMAGEFOLDER OUT ROWS
"""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from datasets import load_dataset

from govlab import distributed
from govlab.api import DiffusersDenoiser, Governance, GovernanceConfig
from govlab.bench.foreign import load

pipeline, data_dir, out, n_rows = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
accelerator = Accelerator()
den, text, tok, _, _ = load(pipeline)
gov = Governance(den, load_dataset("imagefolder", data_dir=data_dir, split="train"), out / "gov",
                 config=GovernanceConfig(provenance=None, memorization=None))  # no index: DDP meets routing alone
ddp, opt = accelerator.prepare(den, gov.optimizer(lr=1e-4))
d = DiffusersDenoiser(den, text, tok, None)
g = torch.Generator().manual_seed(0)
x, target = torch.randn(len(gov.records), *d.shape, generator=g), torch.randn(len(gov.records), *d.shape, generator=g)
t = torch.randint(0, 1000, (len(gov.records),), generator=g)
rows = gov.begin({"row": distributed.shard(torch.arange(n_rows))})["row"]
cond = d.encode([gov.records[r]["caption"] for r in rows.tolist()])
pred = ddp(x[rows], t[rows], encoder_hidden_states=cond).sample
gov.loss(F.mse_loss(pred, target[rows], reduction="none")).backward()
gov.clip_grad_norm_(float("inf"))  # the gradients as the optimizer would take them
w = distributed.world()
torch.save({k: p.grad for k, p in gov.model.named_parameters()}, out / f"grads-{w.size}-{w.rank}.pt")
