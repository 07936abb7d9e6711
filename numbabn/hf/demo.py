"""``python -m numbabn hf``: train a BatchNorm MLP on scikit-learn's bundled digits
with Hessian-free optimisation and with Adam, and plot loss against work.

Work is counted in full-batch gradient evaluations: a gradient on the whole
training set is 1, a loss evaluation ½, a curvature-vector product on a
mini-batch of m of N samples m/N, and an Adam step on a mini-batch m/N.
Needs the ``examples`` extra (scikit-learn, tqdm, matplotlib).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np

from ..bench.timing import compile_notice
from . import BatchNorm, HessianFree, Linear, Sequential, Tanh


def load_data(seed: int = 0):
    """Digits (8x8 images, 10 classes), scaled to [0, 1], split 80/20."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X, y = digits.data / 16.0, digits.target
    perm = np.random.default_rng(seed).permutation(len(X))
    X, y = X[perm], y[perm]
    n_train = int(0.8 * len(X))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def make_network() -> Sequential:
    return Sequential([Linear(64, 100), BatchNorm(100), Tanh(), Linear(100, 10)])


def train_hf(net, X, y, Xt, yt, steps: int, seed: int = 0):
    """Hessian-free training; returns (theta, [(work, train loss)], test accuracy)."""
    from tqdm import tqdm

    theta = net.init(seed)
    opt = HessianFree(net, damping=1.0, max_cg_iter=50, curvature_batch=512, seed=seed)
    history, work = [(0.0, net.loss(theta, X, y))], 0.0
    bar = tqdm(range(steps), desc="Hessian-free", unit="step")
    for i in bar:
        with compile_notice("the network's kernels") if i == 0 else nullcontext():
            theta, info = opt.step(theta, X, y)
        work += info.work
        history.append((work, info.loss))
        bar.set_postfix(loss=f"{info.loss:.4f}", test_acc=f"{net.accuracy(theta, Xt, yt):.3f}",
                        cg=info.cg_iterations, damping=f"{info.damping:.3g}")  # fmt: skip
    return theta, history, net.accuracy(theta, Xt, yt)


def train_adam(net, X, y, budget: float, batch: int = 128, lr: float = 3e-3, seed: int = 0):
    """Adam on mini-batches until ``budget`` full-batch gradient evaluations are spent."""
    theta = net.init(seed)
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    rng = np.random.default_rng(seed)
    history, work, t = [(0.0, net.loss(theta, X, y))], 0.0, 0
    while work < budget:
        for idx in np.array_split(rng.permutation(len(X)), len(X) // batch):
            t += 1
            g = net.grad(theta, X[idx], y[idx])
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            theta = theta - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
            work += len(idx) / len(X)
        history.append((work, net.loss(theta, X, y)))
    return theta, history


def plot(histories: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, history in histories.items():
        work, loss = zip(*history, strict=True)
        ax.semilogy(work, loss, marker="o" if name.startswith("Hessian") else None, ms=3,
                    label=name)  # fmt: skip
    ax.set_xlabel("work (full-batch gradient evaluations)")
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title("BatchNorm MLP on digits: Hessian-free (numbabn) vs Adam")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def run(steps: int = 20, plot_path: str = "docs/hf_digits.png", seed: int = 0) -> float:
    """Train with HF and Adam, print the test accuracies, save the plot; returns
    the HF test accuracy."""
    X, y, Xt, yt = load_data(seed)
    net = make_network()
    print(f"digits: {len(X)} training and {len(Xt)} test images; network "
          f"64-100-BN-tanh-10 ({net.size} parameters)")  # fmt: skip
    start = time.perf_counter()
    theta, hf_history, accuracy = train_hf(net, X, y, Xt, yt, steps, seed)
    hf_seconds = time.perf_counter() - start
    start = time.perf_counter()
    adam_theta, adam_history = train_adam(net, X, y, budget=hf_history[-1][0], seed=seed)
    adam_seconds = time.perf_counter() - start
    plot({"Hessian-free (GGN, numbabn)": hf_history, "Adam (lr 3e-3, batch 128)": adam_history},
         plot_path)  # fmt: skip
    print(f"Hessian-free: train loss {hf_history[-1][1]:.4f}, test accuracy {accuracy:.4f} "
          f"({hf_seconds:.1f} s)")  # fmt: skip
    print(f"Adam:         train loss {adam_history[-1][1]:.4f}, test accuracy "
          f"{net.accuracy(adam_theta, Xt, yt):.4f} ({adam_seconds:.1f} s, same work)")  # fmt: skip
    print(f"plot: {plot_path}")
    return accuracy
