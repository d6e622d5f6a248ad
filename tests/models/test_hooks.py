import pytest
import torch
from torch import nn

from deepcluster.models.hooks import capture_outputs


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_captures_named_outputs_and_stops_the_forward():
    net = _net()
    ran = []
    net[3].register_forward_pre_hook(lambda m, i: ran.append("linear"))
    x = torch.randn(2, 1, 8, 8)
    out = capture_outputs(net, x, {"conv": net[0], "relu": net[1]}, transform=lambda t: t.clone())
    assert set(out) == {"conv", "relu"} and not ran  # the Linear layer never ran
    assert torch.equal(out["relu"], torch.relu(net[0](x)))
    assert torch.equal(out["conv"], net[0](x))  # cloned before the in-place ReLU overwrote it
    assert not net[0]._forward_hooks and not net[1]._forward_hooks  # hooks removed


def test_without_stop_the_forward_runs_to_the_end_and_errors_propagate():
    net = _net()
    x = torch.randn(2, 1, 8, 8)
    out = capture_outputs(net, x, {"last": net[3]}, stop=False)
    assert out["last"].shape == (2, 3)
    with pytest.raises(RuntimeError):
        capture_outputs(net, torch.randn(2, 3, 8, 8), {"conv": net[0]})
    assert not net[0]._forward_hooks


def test_an_unreached_module_is_missing():
    net = _net()
    assert capture_outputs(net, torch.randn(1, 1, 8, 8), {"other": nn.Linear(2, 2)}) == {}
