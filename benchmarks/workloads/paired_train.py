"""Child process: the tutorial's model trained twice in lockstep, one copy recorded by flor, one plain.

Each epoch trains copy A inside flor.loop (flor.log every 10 steps, flor.checkpoints(model, optimizer)
with the default adaptive policy) and copy B with a plain loop, alternating which goes first. Both
see the same machine at the same moment, so the noise of a shared machine (±15% between two
processes run a minute apart) cancels, and the difference is what recording costs training:
A's extra CPU (the whole process's, torch's worker threads included, less flor's background threads),
plus the CPU of flor's background threads (checkpoint writer, record flush), per steady-state epoch;
the same on the training thread alone (≈ wall time) is reported beside it. Epoch 0 warms both up
and is not counted; the fixed cost of a run is in its metadata `cost`. Writes JSON to OUT.

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


def flor_background() -> float:
    return 0.0 if control else background_cpu()


def fresh() -> dict:
    return {"a": [], "b": [], "a_main": [], "b_main": []}


times = fresh()
warm = 0.0
for epoch in flor.loop("epoch", range(epochs)):
    if epoch == 1:  # epoch 0 warms both copies up (first optimizer step, first checkpoint): not counted
        times, warm = fresh(), flor_background()
    for side in ("ab" if epoch % 2 == 0 else "ba"):
        main, cpu, bg = time.thread_time(), time.process_time(), flor_background()
        epoch_a() if side == "a" else epoch_b()  # A's checkpoint is taken as its step loop ends
        # the process's CPU (torch's worker threads too: the metric is the script's CPU time),
        # less flor's background threads, which are added once below, whichever epoch they overlapped
        times[side].append(time.process_time() - cpu - (flor_background() - bg))
        times[side + "_main"].append(time.thread_time() - main)
flor.commit()
background = flor_background() - warm


def median_ratio(a: list, b: list) -> float:
    # a neighbour's burst only ever slows one side of one epoch: the median of per-epoch ratios ignores it
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


same = all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True))
with open(out, "w") as f:
    json.dump({"a_s": sum(times["a"]), "b_s": sum(times["b"]), "b_main_s": sum(times["b_main"]),
               "background_s": background, "median_ratio": median_ratio(times["a"], times["b"]),
               "median_ratio_main": median_ratio(times["a_main"], times["b_main"]),
               "checkpoints": len(flor._run.checkpoints), "epochs": epochs, "same_weights": same}, f)
