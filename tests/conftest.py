import os

import pytest
import torch

# Two cores here: keep torch from oversubscribing them when tests spawn processes.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_train_args():
    """Flags for the smallest real training run through the CLI (a few seconds on a CPU)."""
    return ["--model", "tiny", "--batch-size", "16", "--workers", "0", "--warmup", "2", "--log-every-steps", "1",
            "--zeroshot-samples", "32", "--no-progress", "--image-size", "32"]
