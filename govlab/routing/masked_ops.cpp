// The masked layer ops of govlab.routing.ops as C++ autograd functions: the same arithmetic as
// the Python ``torch.autograd.Function`` classes there, without their per-call Python cost (about
// 60 microseconds a layer, forward and backward, which is most of a routed step's overhead on a
// small model). Compiled on first use by ``torch.utils.cpp_extension.load``.
//
// Every op takes the samples whose gradient may reach its parameters as either a contiguous range
// of the batch [lo, hi) (``mask`` undefined) or a 0/1 ``mask`` of shape (B,) or (B, C); ``xmask``
// (masks only) masks the input instead of the output gradient.
#include <torch/extension.h>

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

namespace {

// ``mask`` viewed so that it broadcasts against ``like`` (channels on ``channel_dim``).
Tensor bcast(const Tensor& mask, const Tensor& like, int64_t channel_dim) {
  std::vector<int64_t> shape(like.dim(), 1);
  shape[0] = like.size(0);
  if (mask.dim() == 2) {
    int64_t d = channel_dim < 0 ? channel_dim + like.dim() : channel_dim;
    shape[d] = mask.size(1);
  }
  return mask.view(shape);
}

// Selection fields shared by every op's context.
void save_sel(AutogradContext* ctx, const OptTensor& mask, const OptTensor& xmask, int64_t lo, int64_t hi) {
  ctx->saved_data["lo"] = lo;
  ctx->saved_data["hi"] = hi;
  ctx->saved_data["mask"] = mask.has_value() ? c10::IValue(*mask) : c10::IValue();
  ctx->saved_data["xmask"] = xmask.has_value() ? c10::IValue(*xmask) : c10::IValue();
}

struct Sel {
  OptTensor mask, xmask;
  int64_t lo, hi;
};

Sel load_sel(AutogradContext* ctx) {
  auto opt = [&](const char* k) -> OptTensor {
    auto& v = ctx->saved_data[k];
    return v.isNone() ? OptTensor() : OptTensor(v.toTensor());
  };
  return {opt("mask"), opt("xmask"), ctx->saved_data["lo"].toInt(), ctx->saved_data["hi"].toInt()};
}

// The output-gradient side of the selection: rows [lo, hi), the mask, or all of ``g`` when only
// the input is masked.
Tensor pick_grad(const Tensor& g, const Sel& s, int64_t channel_dim) {
  if (s.mask.has_value()) return g * bcast(*s.mask, g, channel_dim);
  if (s.xmask.has_value()) return g;
  return g.slice(0, s.lo, s.hi);
}

Tensor pick_x(const Tensor& x, const Sel& s, int64_t channel_dim) {
  if (s.xmask.has_value()) return x * bcast(*s.xmask, x, channel_dim);
  if (s.mask.has_value()) return x;
  return x.slice(0, s.lo, s.hi);
}

// A norm layer's parameter-gradient inputs for the selected samples: the output gradient masked,
// or the rows [lo, hi) of it, the input and the saved statistics.
void pick_norm(Tensor& g, Tensor& x, Tensor& mean, Tensor& rstd, const Sel& s, int64_t channel_dim) {
  if (s.mask.has_value()) {
    g = pick_grad(g, s, channel_dim);
    return;
  }
  g = g.slice(0, s.lo, s.hi);
  x = x.slice(0, s.lo, s.hi);
  mean = mean.slice(0, s.lo, s.hi);
  rstd = rstd.slice(0, s.lo, s.hi);
}

struct MaskedLinear : public torch::autograd::Function<MaskedLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const OptTensor& b,
                        const OptTensor& mask, const OptTensor& xmask, int64_t lo, int64_t hi) {
    ctx->save_for_backward({x, w});
    save_sel(ctx, mask, xmask, lo, hi);
    ctx->saved_data["has_bias"] = b.has_value();
    return torch::linear(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &g = grads[0];
    Sel s = load_sel(ctx);
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) gx = g.matmul(w);
    // needs_input_grad counts the tensors given: without a bias, index 2 is not the bias
    bool want_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    if (ctx->needs_input_grad(1) || want_b) {
      Tensor gm = pick_grad(g, s, -1).reshape({-1, g.size(-1)});
      if (ctx->needs_input_grad(1)) gw = gm.t().matmul(pick_x(x, s, -1).reshape({-1, x.size(-1)}));
      if (want_b) gb = gm.sum(0);
    }
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct MaskedConv2d : public torch::autograd::Function<MaskedConv2d> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const OptTensor& b,
                        const OptTensor& mask, const OptTensor& xmask, int64_t lo, int64_t hi,
                        std::vector<int64_t> stride, std::vector<int64_t> padding, std::vector<int64_t> dilation,
                        int64_t groups) {
    ctx->save_for_backward({x, w});
    save_sel(ctx, mask, xmask, lo, hi);
    ctx->saved_data["has_bias"] = b.has_value();
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["groups"] = groups;
    return torch::conv2d(x, w, b, stride, padding, dilation, groups);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &g = grads[0];
    Sel s = load_sel(ctx);
    auto stride = ctx->saved_data["stride"].toIntVector();
    auto padding = ctx->saved_data["padding"].toIntVector();
    auto dilation = ctx->saved_data["dilation"].toIntVector();
    int64_t groups = ctx->saved_data["groups"].toInt();
    std::vector<int64_t> no_pad{0, 0};
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = std::get<0>(at::convolution_backward(g, x, w, std::nullopt, stride, padding, dilation, false, no_pad,
                                                groups, {true, false, false}));
    }
    bool want_w = ctx->needs_input_grad(1);
    bool want_b = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    if (want_w || want_b) {
      std::optional<at::IntArrayRef> bias_sizes;
      std::vector<int64_t> bsize{w.size(0)};
      if (want_b) bias_sizes = at::IntArrayRef(bsize);
      auto r = at::convolution_backward(pick_grad(g, s, 1), pick_x(x, s, 1), w, bias_sizes, stride, padding,
                                        dilation, false, no_pad, groups, {false, want_w, want_b});
      gw = std::get<1>(r);
      gb = std::get<2>(r);
    }
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct MaskedGroupNorm : public torch::autograd::Function<MaskedGroupNorm> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& b,
                        const OptTensor& mask, int64_t lo, int64_t hi, int64_t groups, double eps) {
    int64_t n = x.size(0), c = x.size(1), hw = x.numel() / std::max<int64_t>(n * c, 1);
    // as torch.group_norm: a channels_last input is computed channels_last on the CPU, and the
    // backward kernel then needs the output gradient in that same format
    auto fmt = x.is_cpu() ? x.suggest_memory_format() : at::MemoryFormat::Contiguous;
    Tensor xc = x.contiguous(fmt);
    auto r = at::native_group_norm(xc, w, b, n, c, hw, groups, eps);
    ctx->save_for_backward({xc, w, std::get<1>(r), std::get<2>(r)});
    save_sel(ctx, mask, std::nullopt, lo, hi);
    ctx->saved_data["conf"] = std::vector<int64_t>{n, c, hw, groups};
    ctx->saved_data["channels_last"] = fmt == at::MemoryFormat::ChannelsLast;
    return std::get<0>(r);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    auto fmt = ctx->saved_data["channels_last"].toBool() ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    Tensor x = saved[0], w = saved[1], mean = saved[2], rstd = saved[3], g = grads[0].contiguous(fmt);
    Sel s = load_sel(ctx);
    auto conf = ctx->saved_data["conf"].toIntVector();
    int64_t n = conf[0], c = conf[1], hw = conf[2], groups = conf[3];
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = std::get<0>(at::native_group_norm_backward(g, x, mean, rstd, w, n, c, hw, groups, {true, false, false}));
    }
    if (ctx->needs_input_grad(1) || ctx->needs_input_grad(2)) {
      pick_norm(g, x, mean, rstd, s, 1);
      // torch's CPU kernel crashes on channels_last when asked for the parameter gradients alone
      // (torch 2.13), so these are taken in the standard layout
      g = g.contiguous();
      x = x.contiguous();
      auto r = at::native_group_norm_backward(g, x, mean, rstd, w, g.size(0), c, hw, groups,
                                              {false, ctx->needs_input_grad(1), ctx->needs_input_grad(2)});
      gw = std::get<1>(r);
      gb = std::get<2>(r);
    }
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct MaskedLayerNorm : public torch::autograd::Function<MaskedLayerNorm> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const OptTensor& b,
                        const OptTensor& mask, int64_t lo, int64_t hi, std::vector<int64_t> shape, double eps) {
    auto r = at::native_layer_norm(x, shape, w, b, eps);
    ctx->save_for_backward({x, w, b.has_value() ? *b : Tensor(), std::get<1>(r), std::get<2>(r)});
    save_sel(ctx, mask, std::nullopt, lo, hi);
    ctx->saved_data["shape"] = shape;
    return std::get<0>(r);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    Tensor x = saved[0], w = saved[1], b = saved[2], mean = saved[3], rstd = saved[4], g = grads[0].contiguous();
    OptTensor bias = b.defined() ? OptTensor(b) : OptTensor();
    Sel s = load_sel(ctx);
    auto shape = ctx->saved_data["shape"].toIntVector();
    Tensor gx, gw, gb;
    if (ctx->needs_input_grad(0)) {
      gx = std::get<0>(at::native_layer_norm_backward(g, x, shape, mean, rstd, w, bias, {true, false, false}));
    }
    // needs_input_grad counts the tensors given: without a bias, index 2 is not the bias
    bool want_b = b.defined() && ctx->needs_input_grad(2);
    if (ctx->needs_input_grad(1) || want_b) {
      pick_norm(g, x, mean, rstd, s, -1);
      auto r = at::native_layer_norm_backward(g, x, shape, mean, rstd, w, bias,
                                              {false, ctx->needs_input_grad(1), want_b});
      gw = std::get<1>(r);
      gb = std::get<2>(r);
    }
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", [](const Tensor& x, const Tensor& w, const OptTensor& b, const OptTensor& mask,
                     const OptTensor& xmask, int64_t lo, int64_t hi) {
    return MaskedLinear::apply(x, w, b, mask, xmask, lo, hi);
  });
  m.def("conv2d", [](const Tensor& x, const Tensor& w, const OptTensor& b, const OptTensor& mask,
                     const OptTensor& xmask, int64_t lo, int64_t hi, std::vector<int64_t> stride,
                     std::vector<int64_t> padding, std::vector<int64_t> dilation, int64_t groups) {
    return MaskedConv2d::apply(x, w, b, mask, xmask, lo, hi, stride, padding, dilation, groups);
  });
  m.def("group_norm", [](const Tensor& x, const Tensor& w, const Tensor& b, const OptTensor& mask, int64_t lo,
                         int64_t hi, int64_t groups, double eps) {
    return MaskedGroupNorm::apply(x, w, b, mask, lo, hi, groups, eps);
  });
  m.def("layer_norm", [](const Tensor& x, const Tensor& w, const OptTensor& b, const OptTensor& mask, int64_t lo,
                         int64_t hi, std::vector<int64_t> shape, double eps) {
    return MaskedLayerNorm::apply(x, w, b, mask, lo, hi, shape, eps);
  });
}
