"""Run under torchrun by tests/test_ddp.py: train the smoke profile, save this rank's weights."""

import sys

import torch

from paper_unet.config import load_config
from paper_unet.data import load_isbi2012
from paper_unet.train import distributed, train

out, stop_after, mode, data_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
isbi = load_isbi2012(data_dir)
config = load_config("smoke", ["optim.iterations=4", "run.checkpoint_every=2", "run.log_every=1"])
result = train(config, isbi.train_images[:3, :128, :128], isbi.train_labels[:3, :128, :128], out,
               val_images=isbi.train_images[3:4, :128, :128], val_labels=isbi.train_labels[3:4, :128, :128],
               resume=mode == "resume", progress=False, stop_after=stop_after)
torch.save(result.model.state_dict(), f"{out}/rank{distributed()[0]}.pt")
