import os

import torch

# The tests use tiny tensors: one thread avoids oversubscription on small shared machines.
torch.set_num_threads(1)
# mgdet's thread policy (extract/threads.py) keeps a count the environment fixes; subprocesses
# inherit it.
os.environ["OMP_NUM_THREADS"] = "1"
