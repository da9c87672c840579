"""A torch-free stand-in for the tutorial, used by --quick: the same shape (args, an epoch loop with a
nested step loop, an evaluation after training) in pure Python, so a smoke run starts in milliseconds."""

import contextlib
import random

import flor_lib as flor

random.seed(0)
hidden = flor.arg("hidden", 16)
num_epochs = flor.arg("epochs", 3)
steps = flor.arg("steps", 20)
lr = flor.arg("lr", 0.05)
weights = [random.random() for _ in range(hidden)]

for epoch in flor.loop("epoch", range(num_epochs)):
    for i in flor.loop("step", range(steps)):
        grad = [w - 0.5 + random.gauss(0, 0.01) for w in weights]
        for j in range(hidden):
            weights[j] -= lr * grad[j]
        loss = sum(g * g for g in grad)
        if (i + 1) % 5 == 0:
            print(f"Epoch [{epoch + 1}/{num_epochs}], Step [{i + 1}/{steps}], Loss: {flor.log('loss', loss):.4f}")

# Test the model
with contextlib.nullcontext():
    correct = sum(abs(w - 0.5) < 0.1 for w in weights)
    total = hidden
    print(f"Accuracy of the model on {total} weights: {100 * correct / total} %")
