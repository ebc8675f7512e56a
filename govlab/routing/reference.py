"""Ground truth and baselines for routing: per-sample reference gradients, naive routing, leakage.

Shipped as helpers (as captum ships test helpers) so users can check routing on their own model.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from govlab.routing.router import Router


def _params(model):
    return dict(model.named_parameters())


def routed_grads(model, router: Router, records, batch: dict) -> dict[str, torch.Tensor | None]:
    """Gradients of one routed backward of ``mean(loss * weights)`` (None: no sample reached it)."""
    model.zero_grad(set_to_none=True)
    router.route(records)
    try:
        loss = (model(batch["x0"], batch["tokens"], batch["noise"], batch["timesteps"]) * batch["weights"]).mean()
        loss.backward()
    finally:
        router.clear()
    out = {n: (None if p.grad is None else p.grad.clone()) for n, p in _params(model).items()}
    model.zero_grad(set_to_none=True)
    return out


def reference_grads(model, router: Router, records, batch: dict) -> dict[str, torch.Tensor]:
    """Per-sample reference: each sample's own gradient (a separate forward and backward, no routing),
    summed into the parameters of the bands it may change."""
    router.clear()
    params = _params(model)
    names, tensors = list(params), list(params.values())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    b = len(records)
    for i, rec in enumerate(records):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        loss = model(one["x0"], one["tokens"], one["noise"], one["timesteps"])[0] * one["weights"][0] / b
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        allowed = router.allowed(rec["categories"], rec["source_id"])
        for n, g in zip(names, grads):
            if g is not None and router.band_of[n] in allowed:
                total[n] += g
    return total


def compare(routed: dict, reference: dict) -> dict[str, float]:
    """Relative error per parameter: ||routed - ref|| / ||ref|| (absolute where ref is 0)."""
    out = {}
    for n, ref in reference.items():
        got = routed[n] if routed[n] is not None else torch.zeros_like(ref)
        scale = ref.norm().item()
        out[n] = (got - ref).norm().item() / (scale if scale > 0 else 1.0)
    return out


def groups(router: Router, records) -> dict[frozenset, list[int]]:
    """Samples of a batch grouped by the set of bands they may change."""
    out = defaultdict(list)
    for i, r in enumerate(records):
        out[router.allowed(r["categories"], r["source_id"])].append(i)
    return dict(out)


def leakage(model, router: Router, records, batch: dict, *, routed: bool = True) -> dict[str, float]:
    """For each group of samples (same allowed bands), the fraction of its squared gradient norm that
    lands outside its allowed bands, from the group's share of one batch's loss; ``routed=False``
    measures the same for a plain backward (what routing prevents)."""
    out = {}
    params = _params(model)
    for allowed, idx in groups(router, records).items():
        w = torch.zeros_like(batch["weights"])
        w[idx] = batch["weights"][idx]
        one = {**batch, "weights": w}
        if routed:
            grads = routed_grads(model, router, records, one)
        else:
            model.zero_grad(set_to_none=True)
            (model(one["x0"], one["tokens"], one["noise"], one["timesteps"]) * w).mean().backward()
            grads = {n: p.grad for n, p in params.items()}
        inside = outside = 0.0
        for n, g in grads.items():
            if g is None:
                continue
            sq = g.double().pow(2).sum().item()
            if router.band_of[n] in allowed:
                inside += sq
            else:
                outside += sq
        model.zero_grad(set_to_none=True)
        out["+".join(sorted(allowed))] = outside / max(inside + outside, 1e-300)
    return out


def naive_backward(model, router: Router, records, batch: dict) -> None:
    """Routing by one backward per group of samples (same allowed bands): the slow, obvious way.
    Leaves ``.grad`` as a routed backward would."""
    router.clear()
    params = _params(model)
    per_sample = model(batch["x0"], batch["tokens"], batch["noise"], batch["timesteps"]) * batch["weights"]
    b = len(records)
    parts = list(groups(router, records).items())
    for k, (allowed, idx) in enumerate(parts):
        names = [n for n in params if router.band_of[n] in allowed]
        loss = per_sample[idx].sum() / b
        grads = torch.autograd.grad(loss, [params[n] for n in names], retain_graph=k < len(parts) - 1,
                                    allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                p = params[n]
                p.grad = g if p.grad is None else p.grad + g
