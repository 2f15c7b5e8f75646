import torch

# Small CPU models are fastest, and results reproducible, with one intra-op thread.
torch.set_num_threads(1)
