"""Every masked op, in both implementations, on inputs and gradients in channels_last (or another
non-standard) layout: the gradients equal those of the same op on contiguous tensors.

A VAE latent can come out channels_last on the CPU; torch's group-norm backward crashed the process
(a segmentation fault) on it before the ops converted their gradients as torch's own ops do.
"""

import pytest
import torch
from torch import nn

from govlab.routing import ops

B = 8
MASK = torch.tensor([1., 0, 1, 1, 0, 0, 1, 0])  # mixed rows: the slow path
SLICE = slice(2, 6)  # contiguous rows: the fast path


@pytest.fixture(params=["python", "cpp"])
def impl(request, monkeypatch):
    monkeypatch.setenv(ops.OPS_ENV, request.param)
    ops.compiled.cache_clear()
    if request.param == "cpp" and ops.compiled() is None:
        pytest.skip("C++ masked ops could not be built here")
    yield request.param
    ops.compiled.cache_clear()


def _layers():
    torch.manual_seed(0)
    return {
        "linear": (nn.Linear(8, 6), lambda: torch.randn(B, 8, 8, 8)),  # features last of a 4-d input
        "conv2d": (nn.Conv2d(16, 8, 3, padding=1), lambda: torch.randn(B, 16, 8, 8)),
        "group_norm": (nn.GroupNorm(8, 16), lambda: torch.randn(B, 16, 8, 8)),
        "layer_norm": (nn.LayerNorm(8), lambda: torch.randn(B, 16, 8, 8)),
    }


def _grads(m, fn, x, sel, upstream):
    x = x.detach().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = fn(m, x, sel, True, ops.static_args(m))
    (y * upstream).sum().backward()
    return [x.grad] + [p.grad for p in m.parameters()]


@pytest.mark.parametrize("sel", [MASK, SLICE], ids=["mask", "slice"])
@pytest.mark.parametrize("name", ["linear", "conv2d", "group_norm", "layer_norm"])
def test_channels_last_equals_contiguous(impl, name, sel):
    m, make = _layers()[name]
    fn = ops.masked_forward(m)
    x = make()
    with torch.no_grad():
        upstream = torch.randn_like(m(x))
    ref = _grads(m, fn, x, sel, upstream)
    # input and incoming gradient channels_last (the VAE-latent case), then the gradient alone
    for xin, up in ((x.to(memory_format=torch.channels_last), upstream.to(memory_format=torch.channels_last)),
                    (x, upstream.to(memory_format=torch.channels_last))):
        got = _grads(m, fn, xin, sel, up)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    # and the parameter gradient is that of the selected rows only (the routing itself)
    rows = torch.arange(B)[sel] if isinstance(sel, slice) else MASK.nonzero().squeeze(1)
    m.zero_grad(set_to_none=True)
    (m(x[rows]) * upstream[rows]).sum().backward()
    for p, g in zip(m.parameters(), got[1:]):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sel", [MASK, SLICE], ids=["mask", "slice"])
def test_embedding_non_contiguous_gradient(impl, sel):
    torch.manual_seed(0)
    m = nn.Embedding(20, 6)
    idx = torch.randint(0, 20, (B, 5))
    upstream = torch.randn(B, 6, 5).transpose(1, 2)  # a gradient that is not contiguous
    grads = []
    for up in (upstream, upstream.contiguous()):
        m.zero_grad(set_to_none=True)
        (ops.embedding(m, idx, sel) * up).sum().backward()
        grads.append(m.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])
    rows = torch.arange(B)[sel] if isinstance(sel, slice) else MASK.nonzero().squeeze(1)
    m.zero_grad(set_to_none=True)
    (m(idx[rows]) * upstream[rows]).sum().backward()
    torch.testing.assert_close(grads[0], m.weight.grad)
