"""RoutedAdamW: torch's AdamW, except that a parameter no sample could reach does not move."""

from __future__ import annotations

import torch


class RoutedAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (same constructor, same ``state_dict``) plus the router.

    In a routed step, the parameters of every band that no sample of the batch may change are
    left out of the update: no momentum drift, no weight decay, no step count, exactly as if they
    had no gradient. ``move_unrouted=True`` instead gives them a zero gradient, so AdamW moves them
    by momentum and decay like any other parameter.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 *, router=None, move_unrouted: bool = False, **kwargs):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         **kwargs)
        self.router, self.move_unrouted = router, move_unrouted

    def step(self, closure=None):
        if self.router is None or not self.router.active:
            return super().step(closure)
        idle = self.router.idle_parameters()
        if self.move_unrouted:
            for p in idle:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
            return super().step(closure)
        held = [(p, p.grad) for p in idle if p.grad is not None]
        for p, _ in held:
            p.grad = None
        try:
            return super().step(closure)
        finally:
            for p, g in held:
                p.grad = g
