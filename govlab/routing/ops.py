"""Layer ops whose parameter gradient sees only some samples, while the input gradient sees all.

``sel`` says which samples may change the parameters: a ``slice`` of the batch (the fast path:
the router sorts a batch so that each band's samples are contiguous), or a 0/1 mask of shape
``(B,)`` or ``(B, C)`` (per sample and channel, for slot banks). The parameter gradient is then
exactly the gradient of the selected samples' loss; the input gradient is the ordinary one, so
every sample still trains the earlier layers it may reach. ``xsel`` (masks only) masks the input
instead of the output gradient (for a slot bank's ``up`` weights, whose slots are input channels).

The ``Masked*`` classes below state the arithmetic. The same ops are compiled from
``masked_ops.cpp`` on first use (``torch.utils.cpp_extension``; a C++ compiler and ninja), which
saves their Python cost per layer; ``GOVLAB_ROUTING_OPS=python`` keeps the classes, and so does a
machine where the build fails (with a warning).
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch.autograd import Function
from torch.nn import functional as F

OPS_ENV = "GOVLAB_ROUTING_OPS"


@functools.cache
def compiled():
    """The C++ ops module, built once per machine into the govlab cache, or None (``python`` asked
    for, or the build failed)."""
    choice = os.environ.get(OPS_ENV, "cpp")
    if choice not in ("cpp", "python"):
        raise ValueError(f"{OPS_ENV}={choice!r}: expected 'cpp' or 'python'")
    if choice == "python":
        return None
    from filelock import FileLock
    from torch.utils.cpp_extension import load

    from govlab.data.cache import cache_dir

    build = cache_dir("extensions", f"torch-{torch.__version__}")
    try:
        # one build per machine while concurrent first uses wait; our lock is released when its
        # holder dies, torch's own ``lock`` file is not, so one left by a killed build is removed
        with FileLock(str(build / "govlab.lock")):
            (build / "lock").unlink(missing_ok=True)
            return load("govlab_masked_ops", [str(Path(__file__).with_name("masked_ops.cpp"))],
                        build_directory=str(build), extra_cflags=["-O2"], verbose=False)
    except Exception as exc:  # no compiler, no ninja, headers missing: the Python ops still work
        warnings.warn(f"routing: C++ masked ops unavailable ({type(exc).__name__}: {str(exc)[:200]}); "
                      f"using the Python ops (set {OPS_ENV}=python to skip the build)", stacklevel=2)
        return None


def _range(sel, b: int, xsel=None):
    """(mask, lo, hi) of a selection for the C++ ops: a slice's bounds, or a mask over all rows."""
    if isinstance(sel, slice):
        if xsel is not None:
            raise ValueError("routing ops: an input mask (xsel) goes with a mask selection, not a slice")
        return None, sel.start or 0, b if sel.stop is None else sel.stop
    return sel, 0, b


def bcast(mask: torch.Tensor, like: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """View a (B,) or (B, C) mask so that it broadcasts against ``like``."""
    shape = [1] * like.dim()
    shape[0] = like.shape[0]
    if mask.dim() == 2:
        shape[channel_dim % like.dim()] = mask.shape[1]
    return mask.view(shape)


def pick(t: torch.Tensor, sel, channel_dim: int) -> torch.Tensor:
    """The samples of ``t`` that ``sel`` selects (a slice view), or ``t`` masked."""
    if sel is None:
        return t
    if isinstance(sel, slice):
        return t[sel]
    return t * bcast(sel, t, channel_dim)


class MaskedLinear(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sel, xsel):
        ctx.save_for_backward(x, weight)
        ctx.sel, ctx.xsel, ctx.has_bias = sel, xsel, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g.matmul(weight)
        want_b = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_b:
            sel, xsel = ctx.sel, ctx.xsel
            gm = pick(g, sel, -1).reshape(-1, g.shape[-1])
            if ctx.needs_input_grad[1]:
                xm = x[sel] if isinstance(sel, slice) else pick(x, xsel, -1)
                gw = gm.t().matmul(xm.reshape(-1, x.shape[-1]))
            if want_b:
                gb = gm.sum(0)
        return gx, gw, gb, None, None


class MaskedConv2d(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sel, xsel, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.sel, ctx.xsel, ctx.has_bias = sel, xsel, bias is not None
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        conv_bw = torch.ops.aten.convolution_backward
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = conv_bw(g, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                         [True, False, False])[0]
        want_w, want_b = ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]
        if want_w or want_b:
            sel = ctx.sel
            gm = pick(g, sel, 1)
            xm = x[sel] if isinstance(sel, slice) else pick(x, ctx.xsel, 1)
            _, gw, gb = conv_bw(gm, xm, weight, [weight.shape[0]] if want_b else None, stride, padding,
                                dilation, False, [0, 0], groups, [False, want_w, want_b])
        return gx, gw, gb, None, None, None, None, None, None


def norm_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format in which ``torch.group_norm`` computes on ``x`` (channels_last inputs stay
    channels_last on the CPU); its backward needs the output gradient in the same format."""
    if x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class MaskedGroupNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sel, groups, eps):
        n, c = x.shape[:2]
        hw = x[0, 0].numel()
        fmt = norm_format(x)
        x = x.contiguous(memory_format=fmt)
        y, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, hw, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.sel, ctx.conf, ctx.fmt = sel, (n, c, hw, groups), fmt
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, hw, groups = ctx.conf
        bw = torch.ops.aten.native_group_norm_backward
        g = g.contiguous(memory_format=ctx.fmt)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = bw(g, x, mean, rstd, weight, n, c, hw, groups, [True, False, False])[0]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            sel = ctx.sel
            if isinstance(sel, slice):
                g, x, mean, rstd = g[sel], x[sel], mean[sel], rstd[sel]
            else:
                g = pick(g, sel, 1)
            # torch's CPU kernel crashes on channels_last when asked for the parameter gradients
            # alone (torch 2.13), so these are taken in the standard layout
            g, x = g.contiguous(), x.contiguous()
            _, gw, gb = bw(g, x, mean, rstd, weight, g.shape[0], c, hw, groups,
                           [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return gx, gw, gb, None, None, None


class MaskedLayerNorm(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sel, shape, eps):
        y, mean, rstd = torch.ops.aten.native_layer_norm(x, shape, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.sel, ctx.shape = sel, shape
        return y

    @staticmethod
    def backward(ctx, g):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        bw = torch.ops.aten.native_layer_norm_backward
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = bw(g, x, ctx.shape, mean, rstd, weight, bias, [True, False, False])[0]
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            sel = ctx.sel
            if isinstance(sel, slice):
                g, x, mean, rstd = g[sel], x[sel], mean[sel], rstd[sel]
            else:
                g = pick(g, sel, -1)
            _, gw, gb = bw(g, x, ctx.shape, mean, rstd, weight, bias,
                           [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2] and bias is not None])
        return gx, gw, gb, None, None, None


class MaskedEmbedding(Function):
    @staticmethod
    def forward(ctx, idx, weight, sel):
        ctx.save_for_backward(idx)
        ctx.sel, ctx.rows = sel, weight.shape[0]
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, g):
        (idx,) = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return None, None, None
        sel = ctx.sel
        if isinstance(sel, slice):
            g, idx = g[sel], idx[sel]
        else:
            g = pick(g, sel, -1)
        gw = torch.zeros(ctx.rows, g.shape[-1], dtype=g.dtype, device=g.device)
        gw.index_add_(0, idx.reshape(-1), g.reshape(-1, g.shape[-1]))
        return None, gw, None


# -- per-module forwards: ``fn(module, x, sel, live, static)``; ``live=False`` cuts the parameters
# from the graph (no sample may change them) and keeps the input gradient; ``static`` holds the
# module's fixed arguments (``static_args``), computed once.
def _p(t, live):
    return t if live or t is None else t.detach()


def masked_linear(x, weight, bias, sel, xsel=None):
    """``F.linear`` whose parameter gradient sees the samples ``sel`` selects (``xsel``: see above)."""
    native = compiled()
    if native is None:
        return MaskedLinear.apply(x, weight, bias, sel, xsel)
    mask, lo, hi = _range(sel, x.shape[0], xsel)
    return native.linear(x, weight, bias, mask, xsel, lo, hi)


def masked_conv2d(x, weight, bias, sel, xsel, stride, padding, dilation, groups):
    """``F.conv2d`` whose parameter gradient sees the samples ``sel`` selects."""
    native = compiled()
    if native is None:
        return MaskedConv2d.apply(x, weight, bias, sel, xsel, stride, padding, dilation, groups)
    mask, lo, hi = _range(sel, x.shape[0], xsel)
    return native.conv2d(x, weight, bias, mask, xsel, lo, hi, stride, padding, dilation, groups)


def linear(m, x, sel, live=True, static=None):
    return masked_linear(x, _p(m.weight, live), _p(m.bias, live), sel)


def conv2d(m, x, sel, live=True, static=None):
    stride, padding, dilation, groups = static or static_args(m)
    return masked_conv2d(x, _p(m.weight, live), _p(m.bias, live), sel, None, stride, padding, dilation, groups)


def group_norm(m, x, sel, live=True, static=None):
    w, b, native = _p(m.weight, live), _p(m.bias, live), compiled()
    if native is None:
        return MaskedGroupNorm.apply(x, w, b, sel, m.num_groups, m.eps)
    return native.group_norm(x, w, b, *_range(sel, x.shape[0]), m.num_groups, m.eps)


def layer_norm(m, x, sel, live=True, static=None):
    w, b, native, shape = _p(m.weight, live), _p(m.bias, live), compiled(), static or list(m.normalized_shape)
    if native is None:
        return MaskedLayerNorm.apply(x, w, b, sel, shape, m.eps)
    return native.layer_norm(x, w, b, *_range(sel, x.shape[0]), shape, m.eps)


def embedding(m, x, sel, live=True, static=None):
    return MaskedEmbedding.apply(x, _p(m.weight, live), sel)


def static_args(m):
    from torch import nn

    if type(m) is nn.Conv2d:
        return list(m.stride), list(m.padding), list(m.dilation), m.groups
    if type(m) is nn.LayerNorm:
        return list(m.normalized_shape)
    return None


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
