"""Per-group gradient shares from the training step's own backward (no extra backward).

For a Linear, Conv2d, GroupNorm or LayerNorm layer, the weight gradient is a sum over samples of
terms built from the layer's input and its output gradient. A forward hook keeps each layer's input,
a hook on its output catches the output gradient during the step's backward, and there the group
shares are computed either from per-sample terms in one call (a batched product for Linear and
pointwise Conv2d, one grouped weight-gradient call for other Conv2d) summed per group by one product
with the batch's one-hot group matrix, or, for large layers, by one weight-gradient call per group
on its rows of the batch (slices when the batch is sorted by group). The UNet's own parameters are
frozen for that backward, so autograd computes only input gradients, and each parameter's gradient
is set to the sum of its group shares: the weight gradients are computed once, split by group, not
twice. The step's backward stops at the caption embedding; the caption path's (encoder and caption
slots: small) group shares come after it from its per-sample gradients for that embedding's gradient
(``torch.func``), and its gradient is their sum. With routing on, each parameter's shares count only
the samples that may change its band (``LayerShares``); ``supported`` says whether a model
qualifies."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from govlab.routing import ops
from govlab.routing.slots import SLOTS_ATTR, SlotBank, banks

LAYERS = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)


def _qualifies(m: nn.Module) -> bool:
    if type(m) is nn.Conv2d:
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    return type(m) in LAYERS


def supported(model: nn.Module) -> bool:
    """Whether every UNet parameter sits directly in a layer of ``LAYERS`` (plain convolutions:
    one group, zero padding) or a slot bank without triggers, and there is a caption encoder
    ``model.text`` to recompute."""
    if not hasattr(model, "unet") or not hasattr(model, "text"):
        return False
    if any(bank.target_name != "text" and bank.triggers is not None for bank in banks(model)):
        return False
    return all(_qualifies(m) or not list(m.parameters(recurse=False)) for m in model.unet.modules())


# Up to this many per-sample weight-gradient elements (batch x weight size) a layer's group shares
# come from per-sample gradients (one call); above it, from one weight-gradient call per group on
# the group's rows (no batch-sized copy of the weight). Chosen by timing both on the smoke and demo
# models (``govlab bench index``).
PER_SAMPLE_MAX = 1 << 19


def weight_grad(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The weight gradient of a Linear or Conv2d layer for input ``x`` and output gradient ``g``."""
    if type(m) is nn.Linear:
        return g.reshape(-1, g.shape[-1]).t().mm(x.reshape(-1, x.shape[-1]))
    return torch.ops.aten.convolution_backward(
        g, x, m.weight, None, list(m.stride), list(m.padding), list(m.dilation), False, [0, 0], 1,
        [False, True, False])[1]


def per_sample_weight(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(batch, *weight.shape)`` of a Linear or Conv2d layer for input
    ``x`` and output gradient ``g``, in one call."""
    if type(m) is nn.Linear:
        return per_sample_linear(x, g)
    return per_sample_conv(x, g, m.weight.shape, m.stride, m.padding, m.dilation)


def per_sample_linear(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample gradients ``(batch, out, in)`` of a linear map's weight: a batched product."""
    b = x.shape[0]
    if x.dim() == 2:
        return g[:, :, None] * x[:, None, :]
    return torch.bmm(g.reshape(b, -1, g.shape[-1]).transpose(1, 2), x.reshape(b, -1, x.shape[-1]))


def per_sample_conv(x: torch.Tensor, g: torch.Tensor, shape, stride, padding, dilation) -> torch.Tensor:
    """Per-sample gradients ``(batch, *shape)`` of a convolution's weight: one weight-gradient call
    with the batch folded into channel groups (the trick behind per-sample convolution gradients;
    only the weight's shape is read, so it is left empty); a pointwise convolution (1x1, stride 1,
    no padding) is a Linear over its pixels (``per_sample_linear``), which is quicker."""
    b, out_ch = x.shape[0], g.shape[1]
    if tuple(shape[2:]) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0):
        pixels_last = x.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2)  # (batch, pixels, channels)
        return per_sample_linear(*pixels_last).reshape(b, *shape)
    grad = torch.ops.aten.convolution_backward(
        g.reshape(1, b * out_ch, *g.shape[2:]), x.reshape(1, b * x.shape[1], *x.shape[2:]),
        x.new_empty((b * out_ch, *shape[1:])), None, list(stride), list(padding), list(dilation),
        False, [0, 0], b, [False, True, False])[1]
    return grad.reshape(b, *shape)


def per_sample_bank(bank: SlotBank, x: torch.Tensor, g: torch.Tensor,
                    gate: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, per-sample gradients) of every ``down`` and ``up`` weight of a slot bank
    (``up(down(x))``, each slot's part times its 0/1 ``gate`` (batch, slots) if given) for its input
    ``x`` and output gradient ``g``."""
    downs, ups = list(bank.down.values()), list(bank.up.values())
    down, up = torch.cat(downs), torch.cat(ups, dim=1)
    if bank.kind == "linear":
        h, gh = F.linear(x, down), g.matmul(up)
        if gate is not None:
            cols = ops.bcast(gate.to(h.dtype)[:, bank.col_slot], h, -1)
            h, gh = h * cols, gh * cols
        gd, gu = per_sample_linear(x, gh), per_sample_linear(h, g)
    else:
        if gate is not None:
            raise NotImplementedError("gated convolution slot banks")
        stride, padding, dilation = bank.geometry
        h = F.conv2d(x, down, None, stride, padding, dilation)
        gh = torch.einsum("bohw,or->brhw", g, up[:, :, 0, 0])
        gd = per_sample_conv(x, gh, down.shape, stride, padding, dilation)
        gu = torch.einsum("bohw,brhw->bor", g, h)[..., None, None]
    ranks = [r for _, r, _ in bank.slots]
    return [*zip(downs, gd.split(ranks, dim=1)), *zip(ups, gu.split(ranks, dim=2))]


def per_sample_small(m: nn.Module, x: torch.Tensor, g: torch.Tensor):
    """Per-sample gradients ``(batch, channels)`` of the small parameters of layer ``m``: the
    weight of a norm layer (None for Linear and Conv2d) and any bias (None without one)."""
    b = x.shape[0]
    if type(m) is nn.Linear:
        gw, gb = None, g.reshape(b, -1, g.shape[-1]).sum(1)
    elif type(m) is nn.Conv2d:
        gw, gb = None, g.reshape(b, g.shape[1], -1).sum(2)
    elif type(m) is nn.GroupNorm:
        xhat, shape = F.group_norm(x, m.num_groups, eps=m.eps), (b, x.shape[1], -1)
        gw, gb = (g * xhat).reshape(shape).sum(2), g.reshape(shape).sum(2)
    else:  # LayerNorm
        xhat, shape = F.layer_norm(x, m.normalized_shape, eps=m.eps), (b, -1, *m.normalized_shape)
        gw, gb = (g * xhat).reshape(shape).sum(1).reshape(b, -1), g.reshape(shape).sum(1).reshape(b, -1)
    return gw, (gb if m.bias is not None else None)


def _fits(buffer: torch.Tensor | None, shape: tuple, like: torch.Tensor) -> bool:
    """Whether a kept ``buffer`` holds ``shape`` (at least as many rows) on ``like``'s device and dtype."""
    return (buffer is not None and buffer.shape[1:] == shape[1:] and len(buffer) >= shape[0]
            and buffer.device == like.device and buffer.dtype == like.dtype)


class _Caption(nn.Module):
    """The caption path of a model (its encoder, and the slots its forward hooks add), as one
    module whose parameters ``torch.func.functional_call`` can replace."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.text(tokens)


class LayerShares:
    """Fills ``flat`` (groups x flattened parameters, in ``params`` order) during the backward.

    With a ``router`` (routing on), each parameter's shares count only the samples that may change
    its band: their rows of the output gradient are kept, the others zeroed. The router's own ops
    then only pass input gradients (the parameters are frozen for the backward), and each
    parameter's gradient, the sum of its shares, is the routed gradient.

    ``persistent``: the layer hooks stay on the model between steps; otherwise they are put on by
    ``begin`` and taken off by ``finish``, so a step without ``begin`` runs no hook at all.
    """

    def __init__(self, model: nn.Module, params: list[torch.Tensor], router=None, *, persistent: bool = True):
        self.model, self.router, self.active = model, router, False
        offsets, start = {}, 0
        for p in params:
            offsets[id(p)] = (start, p.numel())
            start += p.numel()
        self.offsets, self.size, self.shapes = offsets, start, {id(p): p.shape for p in params}
        self._buffer = self._total = None
        names = {id(p): n for n, p in model.named_parameters()}
        self.band = {id(p): router.band_of[names[id(p)]] for p in params} if router is not None else {}
        caption = ("text.", f"{SLOTS_ATTR}.text.")
        self.caption_params = {"model." + n: p for n, p in model.named_parameters()
                               if n.startswith(caption) and id(p) in offsets}
        self.caption = _Caption(model)
        layers = [m for m in model.unet.modules() if type(m) in LAYERS and list(m.parameters(recurse=False))]
        unet_banks = [bank for bank in banks(model) if bank.target_name != "text"]
        self.unet_params = [p for m in (*layers, *unet_banks) for p in m.parameters() if id(p) in offsets]
        self.layers, self.unet_banks, self.persistent, self.handles = layers, unet_banks, persistent, []
        if persistent:
            self._attach()

    def _attach(self) -> None:
        if self.handles:
            return
        self.handles = [h for m in self.layers for h in (m.register_forward_pre_hook(self._input_hook),
                                                         m.register_forward_hook(self._layer_hook))]
        self.handles += [h for bank in self.unet_banks for h in (bank.register_forward_pre_hook(self._input_hook),
                                                                 bank.register_forward_hook(self._bank_hook))]
        self.handles += [self.model.text.register_forward_pre_hook(self._tokens_hook, prepend=True),
                         self.model.text.register_forward_hook(self._text_hook)]

    def _detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def begin(self, slices: list, group_of_row: torch.Tensor) -> None:
        """Catch the next forward and backward: ``slices`` are the groups' rows (slices of a batch
        sorted by group, or index tensors), ``group_of_row`` the group of each row."""
        self._attach()
        self.slices, self.rows, self.active, self.tokens = slices, group_of_row, True, None
        first = self.unet_params[0]
        self.onehot = F.one_hot(group_of_row, len(slices)).t().to(first.device, first.dtype)  # groups x batch
        if not _fits(self._buffer, (len(slices), self.size), first):
            # kept across steps (groups x parameters: small per source, large per sample with a large
            # batch): a fresh buffer this large would be allocated and paged in anew at every step
            self._buffer = torch.empty(len(slices), self.size, device=first.device, dtype=first.dtype)
        self.flat = self._buffer[:len(slices)]
        self.written: set[int] = set()
        self._onehots: dict[str, torch.Tensor | None] = {}
        for p in self.unet_params:
            p.requires_grad_(False)

    def _slot(self, p: torch.Tensor | None) -> torch.Tensor | None:
        """``p``'s columns of ``flat`` (a ``(groups, numel)`` view), or None when ``p`` is not
        tracked."""
        if p is None or id(p) not in self.offsets:
            return None
        start, n = self.offsets[id(p)]
        return self.flat[:, start:start + n]

    def _put_rows(self, p: torch.Tensor | None, per_row: torch.Tensor | None,
                  onehot: torch.Tensor | None = None) -> None:
        """Write (or add, for a layer called twice) the per-group sums of ``p``'s per-sample
        gradients ``(batch, ...)``: one product with the one-hot group matrix (or ``onehot``: its
        routed columns, ``_routed_onehot``), straight into ``flat``."""
        slot = self._slot(p)
        if slot is None or per_row is None:
            return
        rows = per_row.reshape(per_row.shape[0], -1)
        onehot = self.onehot if onehot is None else onehot
        if id(p) in self.written:
            slot.addmm_(onehot, rows)
        else:
            torch.mm(onehot, rows, out=slot)
            self.written.add(id(p))

    def _put_routed(self, p: torch.Tensor, per_row: torch.Tensor) -> None:
        """``_put_rows`` counting only the samples that may change ``p``'s band."""
        onehot = self._routed_onehot(p)
        if onehot is not None:
            self._put_rows(p, per_row, onehot)

    def _put_groups(self, p: torch.Tensor, grads: torch.Tensor) -> None:
        """Write (or add) ``p``'s group gradients ``(groups, ...)``."""
        slot = self._slot(p)
        if slot is None:
            return
        grads = grads.reshape(grads.shape[0], -1)
        if id(p) in self.written:
            slot += grads
        else:
            slot.copy_(grads)
            self.written.add(id(p))

    def _input_hook(self, m, args):
        """With the UNet frozen, a layer fed by no trainable input (the first convolution, the time
        embedding) gets an input that asks for its gradient, so that its output gradient exists."""
        if self.active and not args[0].requires_grad:
            return (args[0].detach().requires_grad_(), *args[1:])

    def _layer_hook(self, m, args, out):
        if not self.active or not out.requires_grad:
            return
        x = args[0].detach()
        if x.shape[0] != len(self.rows):
            raise RuntimeError(f"provenance: layer input of batch {x.shape[0]}, expected {len(self.rows)}")

        def on_grad(g):
            with torch.no_grad():
                onehot = self._routed_onehot(m.weight)
                if onehot is None:  # no sample may change this layer: no shares, no gradient
                    return
                gw, gb = per_sample_small(m, x, g)
                if gw is None and x.shape[0] * m.weight.numel() > PER_SAMPLE_MAX:
                    g = self._routed(m.weight, g)
                    self._put_groups(m.weight, torch.stack([weight_grad(m, x[s], g[s]) for s in self.slices]))
                else:
                    self._put_rows(m.weight, per_sample_weight(m, x, g) if gw is None else gw, onehot)
                self._put_rows(m.bias, gb, onehot)

        out.register_hook(on_grad)

    def _bank_hook(self, bank, args, out):
        if not self.active or not out.requires_grad:
            return
        x, gate = args[0].detach(), (args[1] if len(args) > 1 else None)

        def on_grad(g):
            with torch.no_grad():
                for p, per_row in per_sample_bank(bank, x, g, gate):
                    self._put_routed(p, per_row)

        out.register_hook(on_grad)

    def _routed_onehot(self, p: torch.Tensor) -> torch.Tensor | None:
        """The one-hot group matrix (groups x batch) with the columns of the samples that may not
        change ``p``'s band zeroed (None when no sample may), one per band and step: the per-sample
        terms are linear in the output gradient's rows, so zeroing a sample's column of the group
        sum equals zeroing its rows of the output gradient (``_routed``), without a pass over it."""
        if self.router is None:
            return self.onehot
        band = self.band[id(p)]
        if band not in self._onehots:
            n, rows = self.router.band_rows(band)
            self._onehots[band] = (None if n == 0 else self.onehot if rows is None
                                   else self.onehot * rows.to(self.onehot)[None, :])
        return self._onehots[band]

    def _routed(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """``t`` (batch first) with the rows of the samples that may not change ``p``'s band
        zeroed (unchanged without a router); None when no sample may."""
        if self.router is None:
            return t
        n, rows = self.router.band_rows(self.band[id(p)])
        return None if n == 0 else ops.pick(t, rows, 0)

    def _tokens_hook(self, m, args):
        """The caption as given (before any hook of the caption slots masks its triggers)."""
        if self.active:
            self.given = args[0]

    def _text_hook(self, m, args, out):
        """The UNet's backward stops at the caption embedding (a fresh leaf), whose gradient is kept
        for the caption path's group shares in ``finish``."""
        if not self.active or not out.requires_grad:
            return
        self.tokens, leaf = self.given, out.detach().requires_grad_()

        def keep(g):
            self.text_grad = g

        leaf.register_hook(keep)
        return leaf

    def _caption_per_sample(self) -> dict[str, torch.Tensor]:
        """Per-sample gradients of the caption path's parameters (encoder, caption slots) for the
        kept caption-embedding gradient (``torch.func``: ``vmap`` of ``grad`` of one row's
        recomputation, unrouted; the math attention kernel, whose backward ``vmap`` batches)."""
        params = {n: p.detach() for n, p in self.caption_params.items()}

        def row_dot(ps, tokens, g):
            return (functional_call(self.caption, ps, (tokens[None],))[0] * g).sum()

        bypass = self.router.bypassed() if self.router is not None else contextlib.nullcontext()
        with bypass, sdpa_kernel(SDPBackend.MATH):
            return vmap(grad(row_dot), in_dims=(None, 0, 0))(params, self.tokens, self.text_grad)

    def finish(self) -> torch.Tensor:
        """After the step's backward: the caption encoder's group shares, zeros for parameters the
        step did not reach, and each parameter's gradient set to the sum of its group shares (the
        UNet unfrozen). Returns every group's flat share (groups x parameters).

        Both live in buffers that the next step overwrites: the returned shares until the next
        ``begin``, the gradients (views of one buffer) until the next ``finish``, unless they are
        still set then (not cleared, or accumulated), in which case that step takes a fresh buffer.
        Clone either to keep it."""
        self.active = False
        self._unfreeze()
        if not self.persistent:
            self._detach()
        if self.tokens is not None and self.caption_params:  # the caption path took part
            for name, per_row in self._caption_per_sample().items():
                self._put_routed(self.caption_params[name], per_row)
        for pid in self.offsets.keys() - self.written:
            start, n = self.offsets[pid]
            self.flat[:, start:start + n] = 0.0
        tracked = (*self.unet_params, *self.caption_params.values())
        if not _fits(self._total, (self.size,), self.flat) or any(p.grad is not None for p in tracked):
            self._total = self.flat.new_empty(self.size)
            self._grads = {pid: self._total[start:start + n].view(self.shapes[pid])
                           for pid, (start, n) in self.offsets.items()}
        torch.sum(self.flat, 0, out=self._total)
        for p in tracked:
            if id(p) in self.written:
                g = self._grads[id(p)]
                p.grad = g if p.grad is None else p.grad + g
        self.text_grad = self.tokens = self.given = self.onehot = None
        self._onehots = {}
        return self.flat

    def _unfreeze(self) -> None:
        for p in self.unet_params:
            p.requires_grad_(True)

    def remove(self) -> None:
        self._unfreeze()
        self._detach()
