"""Per-group gradient shares from the training step's own backward (no extra backward of the UNet).

For a Linear, Conv2d, GroupNorm or LayerNorm layer, the weight gradient is a sum over samples of
terms built from the layer's input and its output gradient, so a group's share is the same formula
over the group's samples only. A forward hook keeps each layer's input, a hook on its output
catches the output gradient during the step's backward, and the shares are computed right there.
The caption encoder (small, deterministic) is recomputed once and back-propagated per group from the
gradient caught at its output. Used when routing is off (routing changes which samples reach which
parameters inside its own ops); ``supported`` says whether a model qualifies.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


def supported(model: nn.Module) -> bool:
    """Whether every UNet parameter sits directly in a layer of ``LAYERS`` (and there is a caption
    encoder ``model.text`` to recompute)."""
    if not hasattr(model, "unet") or not hasattr(model, "text") or hasattr(model, "slots"):
        return False
    return all(type(m) in LAYERS or not list(m.parameters(recurse=False)) for m in model.unet.modules())


def _weight_bias(m: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """The weight and bias gradient of layer ``m`` for input ``x`` and output gradient ``g``."""
    if type(m) is nn.Linear:
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        return g2.t().mm(x2), (g2.sum(0) if m.bias is not None else None)
    if type(m) is nn.Conv2d:
        _, gw, gb = torch.ops.aten.convolution_backward(
            g, x, m.weight, [m.weight.shape[0]] if m.bias is not None else None, list(m.stride),
            list(m.padding), list(m.dilation), False, [0, 0], m.groups, [False, True, m.bias is not None])
        return gw, gb
    if type(m) is nn.GroupNorm:
        xhat = F.group_norm(x, m.num_groups, eps=m.eps)
        dims = [0, *range(2, x.dim())]
        return (g * xhat).sum(dims), g.sum(dims)
    xhat = F.layer_norm(x, m.normalized_shape, eps=m.eps)  # LayerNorm
    dims = list(range(x.dim() - len(m.normalized_shape)))
    return (g * xhat).sum(dims), g.sum(dims)


class LayerShares:
    """Fills ``flat`` (groups x flattened parameters, in ``params`` order) during the backward."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor]):
        self.model, self.active = model, False
        offsets, start = {}, 0
        for p in params:
            offsets[id(p)] = (start, p.numel())
            start += p.numel()
        self.offsets, self.size = offsets, start
        self.text_params = [p for p in model.text.parameters() if p.requires_grad]
        self.handles = [m.register_forward_hook(self._layer_hook) for m in model.unet.modules()
                        if type(m) in LAYERS and list(m.parameters(recurse=False))]
        self.handles.append(model.text.register_forward_hook(self._text_hook))

    def begin(self, groups: list[torch.Tensor], batch: int) -> None:
        """Catch the next forward and backward for these groups (row indices of the batch)."""
        self.groups, self.batch, self.active = groups, batch, True
        self.flat = torch.zeros(len(groups), self.size)

    def _put(self, p: torch.Tensor | None, grads: list) -> None:
        """Add every group's gradient of ``p`` (one per group, or None) into ``flat``."""
        if p is not None and p.requires_grad and grads[0] is not None:
            start, n = self.offsets[id(p)]
            self.flat[:, start:start + n] += torch.stack(grads).reshape(len(grads), n)

    def _layer_hook(self, m, args, out):
        if not self.active or not out.requires_grad:
            return
        x = args[0].detach()
        if x.shape[0] != self.batch:
            raise RuntimeError(f"provenance: layer input of batch {x.shape[0]}, expected {self.batch}")

        def on_grad(g):
            with torch.no_grad():
                gw, gb = zip(*(_weight_bias(m, x[rows], g[rows]) for rows in self.groups))
                self._put(m.weight, gw)
                self._put(m.bias, gb)

        out.register_hook(on_grad)

    def _text_hook(self, m, args, out):
        if not self.active or not out.requires_grad:
            return
        self.tokens = args[0]

        def keep(g):
            self.text_grad = g

        out.register_hook(keep)

    def finish(self) -> torch.Tensor:
        """After the step's backward: the caption encoder's shares, then every group's flat share."""
        self.active = False
        with torch.enable_grad():
            out = self.model.text(self.tokens)
            per_group = []
            for k, rows in enumerate(self.groups):
                mask = torch.zeros(self.batch, *([1] * (out.dim() - 1)))
                mask[rows] = 1.0
                grads = torch.autograd.grad(out, self.text_params, grad_outputs=self.text_grad * mask,
                                            retain_graph=k < len(self.groups) - 1, allow_unused=True)
                per_group.append([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.text_params)])
            for p, grads in zip(self.text_params, zip(*per_group)):
                self._put(p, list(grads))
        self.text_grad = self.tokens = None
        return self.flat

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
