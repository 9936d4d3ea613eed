"""Suite-wide settings: one intra-op thread (2-core CI; small tensors lose to contention)."""

import torch

torch.set_num_threads(1)
