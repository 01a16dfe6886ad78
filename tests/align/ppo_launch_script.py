"""Run by tests/align/test_distributed_save.py under ``accelerate launch --cpu --num_processes 2``:
the PPO stage as ``python -m align ppo`` runs it, with each process also writing the policy it
trained (``trained-rank{i}.pt``) so the test can compare the saved checkpoint against it."""
import sys

import torch

import align.ppo
from align.cli import main


class RecordingPPOTrainer(align.ppo.PPOTrainer):
    def train(self, resume_from=None):
        last = super().train(resume_from)
        policy = self.acc.unwrap_model(self.model).policy
        torch.save({k: v.detach().clone() for k, v in policy.state_dict().items()},
                   f"{self.cfg.output_dir}/trained-rank{self.acc.process_index}.pt")
        return last


align.ppo.PPOTrainer = RecordingPPOTrainer
sys.exit(main(["ppo", *sys.argv[1:]]))
