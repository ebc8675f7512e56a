"""A module without a masked op (here ``nn.MultiheadAttention``) is routed as one unit: by batch
splitting when its input carries a gradient, in one pass with the barred rows detached at its
output when its input carries none. Both against per-sample gradients, on a toy model."""

import pytest
import torch
from torch import nn

from govlab.routing.policy import RoutingPolicy
from govlab.routing.router import Router


class Toy(nn.Module):
    def __init__(self, lift: bool):
        super().__init__()
        self.lift = nn.Linear(8, 8) if lift else None
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x):
        h = self.lift(x) if self.lift is not None else x
        return self.head(self.attn(h, h, h, need_weights=False)[0]).sum((1, 2))


def per_sample(model, x, allowed):
    """Each sample's own gradient, summed into the parameters it may change."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        grads = torch.autograd.grad(model(x[i:i + 1]).sum(), list(params.values()))
        for (n, p), g in zip(params.items(), grads):
            if allowed[i] or not n.startswith("attn."):
                total[n] += g
    return total


@pytest.mark.parametrize("lift", [True, False], ids=["batch-split", "one-pass"])
@pytest.mark.parametrize("rows", [[0, 1, 2], [3, 4, 5], [0, 2, 3], []], ids=["head", "tail", "mask", "none"])
def test_a_unit_without_masked_op_is_routed_exactly(lift, rows):
    torch.manual_seed(0)
    model = Toy(lift).double()
    band_of = {n: "attn" if n.startswith("attn.") else "trunk" for n, _ in model.named_parameters()}
    router = Router(model, band_of, RoutingPolicy({}))
    assert [n for n, _, fn, _ in router.units if fn is None] == ["attn"]
    x = torch.randn(6, 5, 8, dtype=torch.float64)
    allowed = torch.zeros(6, dtype=torch.bool)
    allowed[rows] = True
    table = torch.zeros(6, len(router.bands), dtype=torch.bool)
    table[:, router.bands.index("trunk")] = True
    table[:, router.bands.index("attn")] = allowed
    ref = per_sample(model, x, allowed)
    with router:
        router.route(table=table)
        model(x).sum().backward()
        router.clear()
    for n, p in model.named_parameters():
        got = torch.zeros_like(p) if p.grad is None else p.grad
        assert torch.allclose(got, ref[n], rtol=1e-10, atol=1e-12), n
    assert (ref["attn.in_proj_weight"].abs().sum() > 0) == bool(rows)
    if lift:  # the barred rows still train the layer before the unit, through it
        assert ref["lift.weight"].abs().sum() > 0


def test_masked_ops_fall_back_to_python_when_the_build_fails(monkeypatch):
    import torch.utils.cpp_extension as ext

    from govlab.routing import ops

    def broken(*args, **kw):
        raise OSError("no compiler")

    monkeypatch.setattr(ext, "load", broken)
    monkeypatch.delenv(ops.OPS_ENV, raising=False)
    ops.compiled.cache_clear()
    try:
        with pytest.warns(UserWarning, match="C\\+\\+ masked ops unavailable.*no compiler"):
            assert ops.compiled() is None
        ops.compiled.cache_clear()
        monkeypatch.setenv(ops.OPS_ENV, "fortran")
        with pytest.raises(ValueError, match="GOVLAB_ROUTING_OPS='fortran'"):
            ops.compiled()
    finally:
        ops.compiled.cache_clear()


@pytest.mark.parametrize("case", ["linear-slice", "linear-mask", "linear-channels", "linear-xmask",
                                  "conv2d-channels", "conv2d-slice-frozen", "group_norm-mask",
                                  "layer_norm-slice-nobias", "layer_norm-mask-frozen"])
def test_compiled_masked_ops_match_the_python_ops(case, monkeypatch):
    """Every op and selection kind the router and slot banks use (and a LayerNorm without bias),
    against the Python classes; the end-to-end exactness tests cover the built-in models' layers."""
    from govlab.routing import ops

    if ops.compiled() is None:
        pytest.skip("C++ masked ops not built here")
    torch.manual_seed(0)
    kind, sel_kind, *flags = case.split("-")
    b, live = 6, "frozen" not in flags
    m, x = {"linear": (nn.Linear(5, 4), torch.randn(b, 3, 5)),
            "conv2d": (nn.Conv2d(3, 4, 3, padding=1, stride=2), torch.randn(b, 3, 6, 6)),
            "group_norm": (nn.GroupNorm(2, 4), torch.randn(b, 4, 3, 3)),
            "layer_norm": (nn.LayerNorm(5, bias="nobias" not in flags), torch.randn(b, 3, 5))}[kind]
    m, x = m.double(), x.double().requires_grad_()
    channels = (torch.rand(b, 4) > 0.5).double()
    sel, xsel = {"slice": (slice(1, 4), None), "mask": ((torch.rand(b) > 0.5).double(), None),
                 "channels": (channels, None), "xmask": (None, (torch.rand(b, 5) > 0.5).double())}[sel_kind]
    wrt = [x, *(p for p in (m.weight, m.bias) if p is not None and live)]
    v = None

    def grads():
        nonlocal v
        if kind == "linear":
            out = ops.masked_linear(x, m.weight, m.bias, sel, xsel)
        else:
            out = getattr(ops, kind)(m, x, sel, live)
        v = torch.randn_like(out) if v is None else v
        return [out.detach(), *torch.autograd.grad(out, wrt, v)]

    got = grads()
    monkeypatch.setattr(ops, "compiled", lambda: None)
    want = grads()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    assert any(g.abs().sum() > 0 for g in got[2:]) or not live  # a real comparison of parameter gradients
