"""Suite-wide settings: one intra-op thread per test process.

On a 2-core machine torch's default thread pool oversubscribes the cores as soon as anything else
runs (measured: a small training test took 73 s with the default and 7 s with one thread).
"""

import torch

torch.set_num_threads(1)
