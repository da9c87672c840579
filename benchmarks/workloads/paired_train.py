"""Child process: the tutorial's model trained twice in lockstep, one copy recorded by flor, one plain.

Each epoch trains copy A inside flor.loop (flor.log every 10 steps, flor.checkpoints(model, optimizer)
with the default adaptive policy) and copy B with a plain loop, alternating which goes first. Both
see the same machine at the same moment, so the noise of a shared machine (±15% between two
processes run a minute apart) cancels, and the difference is what recording costs training:
A's extra training-thread CPU, plus the CPU of flor's background threads (checkpoint writer, record
flush) that recording added, per steady-state epoch (epoch 0 warms both up and is not counted; the
fixed cost of a run is in its metadata `cost`). Writes JSON to OUT.

Usage: python paired_train.py EPOCHS OUT.json [aa]   (aa: the control, both copies plain)
"""

import json
import statistics
import sys
import time

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

epochs, out = int(sys.argv[1]), sys.argv[2]
control = sys.argv[3:] == ["aa"]
sys.argv[1:] = []
import flor_lib as flor  # noqa: E402

torch.manual_seed(0)
digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y_all = torch.tensor(digits.target)
train_set = torch.utils.data.TensorDataset(x_all[:1500], y_all[:1500])


def copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 500), nn.ReLU(), nn.Linear(500, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    return model, optimizer, loader


criterion = nn.CrossEntropyLoss()
model_a, opt_a, loader_a = copy()
model_b, opt_b, loader_b = copy()
if not control:
    flor.checkpoints(model_a, opt_a)


def step(model, optimizer, images, labels):
    loss = criterion(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def epoch_a():
    if control:
        return epoch_plain(model_a, opt_a, loader_a)
    for i, (images, labels) in flor.loop("step", enumerate(loader_a)):
        loss = step(model_a, opt_a, images, labels)
        if (i + 1) % 10 == 0:
            flor.log("loss", loss.item())


def epoch_plain(model, optimizer, loader):
    for i, (images, labels) in enumerate(loader):
        loss = step(model, optimizer, images, labels)
        if (i + 1) % 10 == 0:
            loss.item()


def epoch_b():
    epoch_plain(model_b, opt_b, loader_b)


def background_cpu() -> float:
    parts = flor._run.cost.parts
    return parts.get("checkpoint_writer", 0.0) + flor._run.buffer.thread_cpu_s  # the flush thread's, live


times = {"a": [], "b": []}
warm = 0.0
for epoch in flor.loop("epoch", range(epochs)):
    if epoch == 1:  # epoch 0 warms both copies up (first optimizer step, first checkpoint): not counted
        times, warm = {"a": [], "b": []}, background_cpu()
    for side in ("ab" if epoch % 2 == 0 else "ba"):
        t = time.thread_time()
        epoch_a() if side == "a" else epoch_b()  # A's checkpoint is taken as its step loop ends
        times[side].append(time.thread_time() - t)
flor.commit()
background = 0.0 if control else background_cpu() - warm
# a neighbour's burst only ever slows one side of one epoch: the median of per-epoch ratios ignores it
ratio = statistics.median(a / b for a, b in zip(times["a"], times["b"], strict=True))
cpu = {"a": sum(times["a"]), "b": sum(times["b"])}
same = all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))
with open(out, "w") as f:
    json.dump({"a_s": cpu["a"], "b_s": cpu["b"], "background_s": background, "median_ratio": ratio,
               "checkpoints": len(flor._run.checkpoints), "epochs": epochs, "same_weights": same}, f)
