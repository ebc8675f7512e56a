import torch
from torch import nn

from govlab.routing import RoutedAdamW


class StubRouter:
    """Just what RoutedAdamW asks of a router."""

    def __init__(self, idle):
        self.active, self.idle = True, idle

    def idle_parameters(self):
        return self.idle


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))


def run(model, opt, steps=3):
    for i in range(steps):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(i))
        model(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def test_same_as_adamw_without_a_router():
    a, b = net(), net()
    oa = torch.optim.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    ob = RoutedAdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    run(a, oa), run(b, ob)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    c = net()
    oc = RoutedAdamW(c.parameters(), lr=1e-2, weight_decay=0.1)
    oc.load_state_dict(sa)  # an AdamW state dict loads as is
    assert torch.equal(oc.state_dict()["state"][0]["exp_avg"], sa["state"][0]["exp_avg"])


def test_idle_parameters_do_not_move_or_drift():
    model = net()
    first = model[0].weight
    opt = RoutedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    run(model, opt)  # momentum and state built up
    before, state = first.detach().clone(), {k: v.clone() for k, v in opt.state[first].items()}
    opt.router = StubRouter([first])
    run(model, opt, steps=2)  # it has a gradient, but no sample was routed to it
    assert torch.equal(first, before)
    assert all(torch.equal(opt.state[first][k], v) for k, v in state.items())
    assert not torch.equal(model[2].weight, torch.zeros_like(model[2].weight))


def test_move_unrouted_lets_momentum_and_decay_act():
    model = net()
    first = model[0].weight
    opt = RoutedAdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    run(model, opt)
    before = first.detach().clone()
    opt.router, opt.move_unrouted = StubRouter([first]), True
    x = torch.randn(5, 4)
    model[2](torch.tanh(model[0](x).detach())).pow(2).sum().backward()  # no gradient reaches ``first``
    assert first.grad is None
    opt.step()
    assert not torch.equal(first, before)
