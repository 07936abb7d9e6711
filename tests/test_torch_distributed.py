"""process_group: a batch sharded unevenly over 2 and 3 CPU ranks (gloo, spawned
processes). On every rank the forward pass, the gradient and the Hessian-vector
product (double backward, and torch.func's jvp(grad)) are that rank's part of the
unsharded batch's results: its rows for x-shaped results, its share of the
parameter gradients (which add up over the ranks to the whole batch's); the
running statistics are the whole batch's, as torch.nn.SyncBatchNorm."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import grad, jvp  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

from test_torch_reference import assert_close, gradients_and_hvp, like, make_inputs  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)
SHARDS = {2: [2, 5], 3: [1, 2, 4]}  # rows per rank: uneven, one rank with a single row


@pytest.mark.parametrize("ranks", [2, 3])
def test_sharded_batch_equals_unsharded(ranks, tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")  # the spawned ranks share two cores
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_rank, args=(ranks, init, SHARDS[ranks]), nprocs=ranks, join=True)


def _rank(rank: int, world: int, init: str, rows: list[int]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        _check(rank, rows, dist.new_group(list(range(world))))
    finally:
        dist.destroy_process_group()


def _whole(t: torch.Tensor, group) -> torch.Tensor:
    """The sum over the ranks of a per-rank share."""
    t = t.detach().clone()
    dist.all_reduce(t, group=group)
    return t


def _check(rank: int, rows: list[int], group) -> None:
    x, w, b = make_inputs((sum(rows), 3, 4))
    mine = slice(sum(rows[:rank]), sum(rows[: rank + 1]))
    directions = [like(a, 40 + i) for i, a in enumerate((x, w, b))]

    def whole_batch(x_, w_, b_):
        return F.batch_norm(x_, None, None, w_, b_, training=True)

    def sharded(x_, w_, b_):
        """This rank's rows of the layer, as a function of the whole batch (the
        other ranks' rows enter through the process group)."""
        return nbt.batch_norm(x_[mine], w_, b_, process_group=group)

    want_grads, want_hvp = gradients_and_hvp(whole_batch, (x, w, b), directions)
    got_grads, got_hvp = _sharded_gradients_and_hvp(x[mine], w, b, directions, mine, group)
    assert_close(got_grads[0], want_grads[0][mine], what=f"rank {rank} gradient x")
    assert_close(got_hvp[0], want_hvp[0][mine], what=f"rank {rank} hvp x")
    for i, name in ((1, "weight"), (2, "bias")):
        assert_close(_whole(got_grads[i], group), want_grads[i], what=f"rank {rank} grad {name}")
        assert_close(_whole(got_hvp[i], group), want_hvp[i], what=f"rank {rank} hvp {name}")

    z = sharded(x, w, b)
    assert_close(z, whole_batch(x, w, b)[mine], what=f"rank {rank} forward")

    # torch.func: jvp(grad) in x, on this rank's rows
    c = _loss_weights(x)[mine]
    got = jvp(grad(lambda a: (c * torch.sin(nbt.batch_norm(a, w, b, process_group=group))).sum()),
              (x[mine],), (directions[0][mine],))[1]  # fmt: skip
    zero = [directions[0], torch.zeros_like(w), torch.zeros_like(b)]
    assert_close(got, gradients_and_hvp(whole_batch, (x, w, b), zero)[1][0][mine], what="func")

    # running statistics of the whole batch; a converted layer syncs too
    mean, var = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
    nbt.batch_norm(x[mine], w, b, running_mean=mean, running_var=var, process_group=group)
    want_mean, want_var = torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype)
    F.batch_norm(x, want_mean, want_var, w, b, training=True)
    assert_close(mean, want_mean, what="running_mean")
    assert_close(var, want_var, what="running_var")
    layer = nbt.convert_batchnorm(torch.nn.SyncBatchNorm(3).double(), process_group=group)
    assert_close(layer(x[mine]), F.batch_norm(x, None, None, training=True)[mine], what="layer")


def _loss_weights(x: torch.Tensor) -> torch.Tensor:
    """The weights of test_torch_reference.loss_of for the whole batch."""
    return torch.cos(0.37 * torch.arange(x.numel(), dtype=x.dtype) + 1.0).reshape(x.shape)


def _sharded_gradients_and_hvp(x_rows, w, b, directions, mine, group):
    """Gradient and HVP of this rank's part of loss_of (its rows of the weights)."""
    leaves = [t.detach().clone().requires_grad_() for t in (x_rows, w, b)]
    c = _loss_weights(torch.empty(directions[0].shape, dtype=x_rows.dtype))[mine]
    z = nbt.batch_norm(*leaves, process_group=group)
    grads = torch.autograd.grad((c * torch.sin(z)).sum(), leaves, create_graph=True)
    u = (directions[0][mine], directions[1], directions[2])
    dot = sum((g * d).sum() for g, d in zip(grads, u, strict=True))
    return tuple(g.detach() for g in grads), torch.autograd.grad(dot, leaves)
