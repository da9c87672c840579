"""A heavier model for checkpoint cost: MLP 64 -> W -> W -> 10 with Adam; W=3000 is ~108 MB of state.

Prints one JSON line: seconds spent in the training loop (what checkpoint copies block) and the state size.
"""

import json
import time

import torch
import torch.nn as nn

import flor_lib as flor

torch.manual_seed(0)
width = flor.arg("width", 3000)
epochs = flor.arg("epochs", 6)
steps = flor.arg("steps", 6)
batch = flor.arg("batch", 64)

model = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
flor.checkpoints(model, optimizer)
x = torch.randn(steps * batch, 64)
y = torch.randint(0, 10, (steps * batch,))

t0 = time.perf_counter()
for _epoch in flor.loop("epoch", range(epochs)):
    for step in flor.loop("step", range(steps)):
        part = slice(step * batch, (step + 1) * batch)
        loss = nn.functional.cross_entropy(model(x[part]), y[part])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        flor.log("loss", loss.item())
train_s = time.perf_counter() - t0
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"train_s": train_s, "state_mb": params * 4 * 3 / 1e6}))  # weights + Adam's two moments
