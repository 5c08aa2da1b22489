"""Run under torchrun by tests/test_distributed.py: train the smoke profile, save this rank's weights."""

import sys

import torch

from paper_unet.config import load_config
from paper_unet.data import load_isbi2012
from paper_unet.train import distributed, train

out, stop_after, mode, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
isbi = load_isbi2012(data_dir)
overrides = ["optim.iterations=4", "run.checkpoint_every=2", "run.log_every=1"]
if mode == "collapse-on-rank-1":  # rank 1 alone sees a constant output: both ranks must stop together
    import paper_unet.train as train_module

    overrides.append("optim.collapse_patience=2")
    if distributed()[0] == 1:
        train_module.looks_dead = lambda logits: True  # the two stages of the check (collapse.py) both say dead
        train_module.is_dead = lambda model, image: True
config = load_config("smoke", overrides)
result = train(config, isbi.train_images[:3, :128, :128], isbi.train_labels[:3, :128, :128], out,
               val_images=isbi.train_images[3:4, :128, :128], val_labels=isbi.train_labels[3:4, :128, :128],
               resume=mode == "resume", progress=False, stop_after=stop_after)
torch.save(result.model.state_dict(), f"{out}/rank{distributed()[0]}.pt")
