import torch

# The tests use tiny tensors: one thread avoids oversubscription on small shared machines.
torch.set_num_threads(1)
