"""Layer ops whose parameter gradient sees only some samples, while the input gradient sees all.

Each op takes ``gmask`` (mask of the output gradient) and/or ``xmask`` (mask of the input) used only
for the parameter gradient: shape ``(B,)`` (per sample) or ``(B, C)`` (per sample and channel).
Masks hold 0/1, so a masked parameter gradient is exactly the gradient of the allowed samples'
loss; the input gradient is the ordinary one, so every sample still trains earlier layers.
"""

from __future__ import annotations

import torch
from torch.autograd import Function
from torch.nn import functional as F


def bcast(mask: torch.Tensor | None, like: torch.Tensor, channel_dim: int) -> torch.Tensor | None:
    """View a (B,) or (B, C) mask so that it broadcasts against ``like``."""
    if mask is None:
        return None
    shape = [1] * like.dim()
    shape[0] = like.shape[0]
    if mask.dim() == 2:
        shape[channel_dim % like.dim()] = mask.shape[1]
    return mask.view(shape)


def _masked(t, mask):
    return t if mask is None else t * mask


class MaskedLinear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gmask, xmask):
        ctx.save_for_backward(x, weight, gmask, xmask)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight, gmask, xmask = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g.matmul(weight.to(g.dtype))
        gm = _masked(g, bcast(gmask, g, -1))
        if ctx.needs_input_grad[1]:
            xm = _masked(x, bcast(xmask, x, -1))
            gw = gm.reshape(-1, gm.shape[-1]).t().matmul(xm.reshape(-1, xm.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gm.reshape(-1, gm.shape[-1]).sum(0)
        return gx, gw, gb, None, None


class MaskedConv2d(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gmask, xmask, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight, gmask, xmask)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight, gmask, xmask = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        conv_bw = torch.ops.aten.convolution_backward
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = conv_bw(g, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                         [True, False, False])[0]
        want_w, want_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_w or want_b:
            gm = _masked(g, bcast(gmask, g, 1))
            xm = _masked(x, bcast(xmask, x, 1))
            _, gw, gb = conv_bw(gm, xm, weight, bias_sizes, stride, padding, dilation, False, [0, 0],
                                groups, [False, want_w, want_b])
        return gx, gw, gb, None, None, None, None, None, None


class MaskedGroupNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gmask, groups, eps):
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd, gmask)
        ctx.conf = (n, c, hw, groups)
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd, gmask = ctx.saved_tensors
        n, c, hw, groups = ctx.conf
        bw = torch.ops.aten.native_group_norm_backward
        g = g.contiguous()
        gx = bw(g, x, mean, rstd, weight, n, c, hw, groups, [True, False, False])[0] \
            if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, gw, gb = bw(_masked(g, bcast(gmask, g, 1)), x, mean, rstd, weight, n, c, hw, groups,
                           [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return gx, gw, gb, None, None, None


class MaskedLayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, gmask, shape, eps):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd, gmask)
        ctx.shape = shape
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, mean, rstd, gmask = ctx.saved_tensors
        bw = torch.ops.aten.native_layer_norm_backward
        g = g.contiguous()
        gx = bw(g, x, ctx.shape, mean, rstd, weight, bias, [True, False, False])[0] \
            if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, gw, gb = bw(_masked(g, bcast(gmask, g, -1)), x, ctx.shape, mean, rstd, weight, bias,
                           [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2] and bias is not None])
        return gx, gw, gb, None, None, None


class MaskedEmbedding(Function):
    @staticmethod
    def forward(ctx, idx, weight, gmask):
        ctx.save_for_backward(idx, gmask)
        ctx.rows = weight.shape[0]
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, g):
        idx, gmask = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        gm = _masked(g, bcast(gmask, g, -1)).reshape(-1, g.shape[-1])
        gw = torch.zeros(ctx.rows, g.shape[-1], dtype=g.dtype, device=g.device).index_add_(0, idx.reshape(-1), gm)
        return None, gw, None


# -- per-module forwards: ``fn(module, x, gmask, xmask=None, live=True)``; ``live=False`` cuts the
# parameters from the graph (no sample may change them) but keeps the input gradient.
def _p(t, live):
    return t if live or t is None else t.detach()


def linear(m, x, gmask, xmask=None, live=True):
    return MaskedLinear.apply(x, _p(m.weight, live), _p(m.bias, live), gmask, xmask)


def conv2d(m, x, gmask, xmask=None, live=True):
    return MaskedConv2d.apply(x, _p(m.weight, live), _p(m.bias, live), gmask, xmask, list(m.stride),
                              list(m.padding), list(m.dilation), m.groups)


def group_norm(m, x, gmask, xmask=None, live=True):
    return MaskedGroupNorm.apply(x, _p(m.weight, live), _p(m.bias, live), gmask, m.num_groups, m.eps)


def layer_norm(m, x, gmask, xmask=None, live=True):
    return MaskedLayerNorm.apply(x, _p(m.weight, live), _p(m.bias, live), gmask,
                                 list(m.normalized_shape), m.eps)


def embedding(m, x, gmask, xmask=None, live=True):
    return MaskedEmbedding.apply(x, _p(m.weight, live), gmask)


def masked_forward(m: torch.nn.Module):
    """The masked op of a supported leaf module, or None."""
    from torch import nn

    if type(m) in (nn.Linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        return linear
    if type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return conv2d
    if type(m) is nn.GroupNorm and m.affine:
        return group_norm
    if type(m) is nn.LayerNorm and m.elementwise_affine and m.weight is not None:
        return layer_norm
    if type(m) is nn.Embedding and m.max_norm is None and not m.sparse and m.padding_idx is None:
        return embedding
    return None
