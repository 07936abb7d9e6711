"""numbabn.torch's BatchNorm layers and convert_batchnorm against torch's layers:
outputs, gradients, running statistics over several steps (momentum 0.1 and None,
track_running_stats off), evaluation mode, state_dict, shared parameters; and
``import numbabn`` without torch."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import numbabn.torch as nbt  # noqa: E402

from test_torch_reference import F32, F64, assert_close, loss_of  # noqa: E402

LAYERS = [
    (nn.BatchNorm1d, nbt.BatchNorm1d, (6, 4)),
    (nn.BatchNorm1d, nbt.BatchNorm1d, (6, 4, 3)),
    (nn.BatchNorm2d, nbt.BatchNorm2d, (6, 4, 3, 2)),
    (nn.BatchNorm3d, nbt.BatchNorm3d, (6, 4, 3, 2, 2)),
]


def _pair(theirs_cls, mine_cls, dtype=F64, **kwargs):
    torch.manual_seed(0)
    theirs = theirs_cls(4, dtype=dtype, **kwargs)
    with torch.no_grad():
        if theirs.weight is not None:
            theirs.weight.uniform_(0.5, 1.5)
        if theirs.bias is not None:
            theirs.bias.normal_()
    mine = mine_cls(4, dtype=dtype, **kwargs)
    mine.load_state_dict(theirs.state_dict())
    return theirs, mine


@pytest.mark.parametrize(("theirs_cls", "mine_cls", "shape"), LAYERS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_layer_steps_equal_torch(theirs_cls, mine_cls, shape, momentum, dtype):
    theirs, mine = _pair(theirs_cls, mine_cls, dtype, momentum=momentum)
    assert isinstance(mine, theirs_cls)
    for step in range(4):
        x = 1.5 + 2.0 * torch.randn(
            shape, dtype=dtype, generator=torch.Generator().manual_seed(step)
        )
        outs = []
        for layer in (theirs, mine):
            xi = x.clone().requires_grad_()
            z = layer(xi)
            grads = torch.autograd.grad(loss_of(z), [xi, *layer.parameters()])
            outs.append((z, *grads))
        assert_close(outs[1], outs[0], dtype, f"step {step}")
    assert_close(mine.running_mean, theirs.running_mean, dtype, "running_mean")
    assert_close(mine.running_var, theirs.running_var, dtype, "running_var")
    assert int(mine.num_batches_tracked) == int(theirs.num_batches_tracked) == 4
    mine.eval()
    theirs.eval()
    x = torch.randn(shape, dtype=dtype)
    assert_close(mine(x), theirs(x), dtype, "eval")


@pytest.mark.parametrize("options", [{"affine": False}, {"track_running_stats": False},
                                     {"bias": False}])  # fmt: skip
def test_layer_options_equal_torch(options):
    theirs, mine = _pair(nn.BatchNorm2d, nbt.BatchNorm2d, **options)
    assert mine.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(5, 4, 3, 3, dtype=F64)
    for layer in (theirs, mine):
        layer.train()
    assert_close(mine(x), theirs(x), what="train")
    for layer in (theirs, mine):
        layer.eval()  # without running statistics, evaluation uses the batch's
    assert_close(mine(x), theirs(x), what="eval")


def test_convert_batchnorm_shares_parameters_and_keeps_state_dict():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4),
        nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4, momentum=None)),
        nn.BatchNorm3d(4, affine=False), nn.SyncBatchNorm(4), nn.BatchNorm2d(4, bias=False),
    ).double()  # fmt: skip
    model.eval()
    keys = list(model.state_dict())
    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    params = [id(p) for p in model.parameters()]
    converted = nbt.convert_batchnorm(model)
    assert converted is model
    assert type(model[1]) is nbt.BatchNorm1d and type(model[2][1]) is nbt.BatchNorm2d
    assert type(model[3]) is nbt.BatchNorm3d and type(model[4]) is nbt.SyncBatchNorm
    assert type(model[5]) is nbt.BatchNorm2d and model[5].bias is None
    assert model[2][1].momentum is None and not model[3].affine
    assert list(model.state_dict()) == keys
    assert [id(p) for p in model.parameters()] == params
    for k, v in model.state_dict(keep_vars=True).items():
        assert v is tensors[k], k
    assert not any(m.training for m in model.modules())
    single = nbt.convert_batchnorm(nn.BatchNorm2d(3))
    assert type(single) is nbt.BatchNorm2d


def test_convert_leaves_subclasses_and_lazy_layers():
    class Custom(nn.BatchNorm2d):
        pass

    model = nn.Sequential(Custom(3), nn.LazyBatchNorm1d())
    nbt.convert_batchnorm(model)
    assert type(model[0]) is Custom and type(model[1]) is nn.LazyBatchNorm1d


def test_sync_batchnorm_without_process_group_runs_alone_on_any_ndim():
    torch.manual_seed(0)
    theirs = nn.BatchNorm2d(4).double()
    mine = nbt.SyncBatchNorm(4).double()
    mine.load_state_dict(theirs.state_dict())
    for shape in [(5, 4), (5, 4, 3, 2), (3, 4, 2, 2, 2)]:
        x = torch.randn(shape, dtype=F64)
        assert_close(mine(x), nn.functional.batch_norm(x, None, None, theirs.weight, theirs.bias,
                                                       training=True), what=str(shape))  # fmt: skip
    with pytest.raises(ValueError, match="expected at least 2D input"):
        mine(torch.randn(5, dtype=F64))


def test_converted_model_trains_like_torch():
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 2 * 2, 3)).double()  # fmt: skip
    mine = nbt.convert_batchnorm(copy.deepcopy(theirs))
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (theirs, mine)]
    for step in range(3):
        x = torch.randn(8, 2, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(step))
        for model, opt in zip((theirs, mine), opts, strict=True):
            opt.zero_grad()
            loss_of(model(x)).backward()
            opt.step()
    assert_close(dict(mine.state_dict()), dict(theirs.state_dict()), what="after training")


def test_importing_numbabn_does_not_import_torch():
    code = "import sys, numbabn; assert 'torch' not in sys.modules, 'torch imported'"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_torch_compile_runs_numbabn_as_opaque_calls():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nbt.BatchNorm1d(3)).double()
    x = torch.randn(8, 4, dtype=F64, requires_grad=True)

    def second_order(net):
        y = net(x)
        (g,) = torch.autograd.grad((y**3).sum(), x, create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), x)
        return y, g, h

    assert_close(second_order(torch.compile(model)), second_order(model), what="compiled")
    assert int(model[1].num_batches_tracked) == 2


def test_docs_drop_in_example_runs():
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "pytorch.md").read_text()
    example = text.split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(example, scope)
    assert isinstance(scope["net"][1], nbt.BatchNorm2d)
    assert [h.shape for h in scope["hvp"]] == [p.shape for p in scope["params"]]
    assert scope["net"][1].num_batches_tracked == 1
