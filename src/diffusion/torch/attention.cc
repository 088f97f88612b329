#include "diffusion/torch/attention.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "diffusion/torch/parallel.h"

namespace megaserve::diffusion {
namespace {

// Score elements per attention block when the caller sets no slice: 8 MiB of fp32 scores per
// thread, which stay in the last-level cache between the QK^T product, the softmax and the
// product with V (at SD1.5's 4096 tokens, 512-row blocks ran faster than 32- and 128-row ones
// and than the whole [heads, 4096, 4096] score tensor at once, in runs of diffusion_bench unet
// --slice).
constexpr int64_t kBlockScoreElements = int64_t{1} << 21;

at::Tensor UnitStrideLast(const at::Tensor& t) { return t.stride(-1) == 1 ? t : t.contiguous(); }

}  // namespace

Linear Linear::Load(const Weights& w, const std::string& prefix, int64_t in, int64_t out,
                    bool with_bias) {
  Linear l;
  l.weight = w.Get(prefix + ".weight", {out, in});
  if (with_bias) l.bias = w.Get(prefix + ".bias", {out});
  return l;
}

at::Tensor Linear::Forward(const at::Tensor& x) const { return ParallelLinear(x, weight, bias); }

void Linear::AddTo(const at::Tensor& x, at::Tensor& residual) const {
  ParallelMatmul(residual.view({-1, weight.size(0)}), x.reshape({-1, weight.size(1)}), weight.t(),
                 bias, /*accumulate=*/true);
}

Conv2d Conv2d::Load(const Weights& w, const std::string& prefix, int64_t in, int64_t out,
                    int64_t kernel, int64_t stride, int64_t padding,
                    const ComputeOptions& options) {
  Conv2d c;
  c.weight = w.Get(prefix + ".weight", {out, in, kernel, kernel});
  c.bias = w.Get(prefix + ".bias", {out});
  c.stride = stride;
  c.padding = padding;
  c.channels_last = options.channels_last;
  if (c.channels_last) {
    c.weight = c.weight.contiguous(at::MemoryFormat::ChannelsLast);
  } else if (c.weight.is_cpu() && c.weight.scalar_type() == at::kFloat && at::hasMKLDNN()) {
    c.packed = at::mkldnn_reorder_conv2d_weight(c.weight.contiguous().to_mkldnn(),
                                                {padding, padding}, {stride, stride}, {1, 1}, 1);
    c.weight = at::Tensor();
  }
  return c;
}

at::Tensor Conv2d::Forward(const at::Tensor& x) const {
  if (packed.defined()) {
    return at::mkldnn_convolution(x.contiguous().to_mkldnn(), packed, bias, {padding, padding},
                                  {stride, stride}, {1, 1}, 1)
        .to_dense();
  }
  const at::Tensor in = channels_last ? x.contiguous(at::MemoryFormat::ChannelsLast) : x;
  return at::conv2d(in, weight, bias, {stride, stride}, {padding, padding});
}

GroupNorm GroupNorm::Load(const Weights& w, const std::string& prefix, int64_t channels,
                          int64_t groups, double eps) {
  if (groups <= 0 || channels % groups != 0) {
    throw std::invalid_argument(fmt::format("{}: {} channels cannot form {} groups (from {})",
                                            prefix, channels, groups, w.source()));
  }
  GroupNorm g;
  g.weight = w.Get(prefix + ".weight", {channels});
  g.bias = w.Get(prefix + ".bias", {channels});
  g.groups = groups;
  g.eps = eps;
  return g;
}

at::Tensor GroupNorm::Forward(const at::Tensor& x, bool silu) const {
  at::Tensor y = at::group_norm(x, groups, weight, bias, eps, /*cudnn_enabled=*/false);
  if (silu) at::silu_(y);
  return y;
}

LayerNorm LayerNorm::Load(const Weights& w, const std::string& prefix, int64_t dim, double eps) {
  LayerNorm n;
  n.weight = w.Get(prefix + ".weight", {dim});
  n.bias = w.Get(prefix + ".bias", {dim});
  n.eps = eps;
  return n;
}

at::Tensor LayerNorm::Forward(const at::Tensor& x) const {
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

ResnetBlock2D ResnetBlock2D::Load(const Weights& w, const std::string& prefix, int64_t in,
                                  int64_t out, int64_t temb_channels, int64_t groups, double eps,
                                  double output_scale_factor, const ComputeOptions& options) {
  ResnetBlock2D r;
  r.norm1 = GroupNorm::Load(w, prefix + ".norm1", in, groups, eps);
  r.conv1 = Conv2d::Load(w, prefix + ".conv1", in, out, 3, 1, 1, options);
  if (temb_channels > 0) {
    r.time_emb_proj = Linear::Load(w, prefix + ".time_emb_proj", temb_channels, out, true);
  }
  r.norm2 = GroupNorm::Load(w, prefix + ".norm2", out, groups, eps);
  r.conv2 = Conv2d::Load(w, prefix + ".conv2", out, out, 3, 1, 1, options);
  if (in != out)
    r.conv_shortcut = Conv2d::Load(w, prefix + ".conv_shortcut", in, out, 1, 1, 0, options);
  r.output_scale_factor = output_scale_factor;
  return r;
}

at::Tensor ResnetBlock2D::Forward(const at::Tensor& x, const at::Tensor& temb_silu) const {
  at::Tensor h = conv1.Forward(norm1.Forward(x, /*silu=*/true));
  if (time_emb_proj) {
    const at::Tensor t = time_emb_proj->Forward(temb_silu);
    h.add_(t.view({t.size(0), t.size(1), 1, 1}));
  }
  h = conv2.Forward(norm2.Forward(h, /*silu=*/true));
  h.add_(conv_shortcut ? conv_shortcut->Forward(x) : x);
  if (output_scale_factor != 1.0) h.div_(output_scale_factor);
  return h;
}

at::Tensor MultiHeadAttention(const at::Tensor& q_in, const at::Tensor& k_in,
                              const at::Tensor& v_in, int64_t heads, double scale, int64_t slice) {
  if (q_in.dim() != 3 || k_in.dim() != 3 || v_in.dim() != 3 || heads <= 0) {
    throw std::invalid_argument("attention: q, k and v must be [batch, tokens, channels]");
  }
  const int64_t batch = q_in.size(0), n = q_in.size(1), m = k_in.size(1);
  if (k_in.size(0) != batch || v_in.size(0) != batch || v_in.size(1) != m ||
      k_in.size(2) != q_in.size(2) || q_in.size(2) % heads != 0 || v_in.size(2) % heads != 0) {
    throw std::invalid_argument(
        fmt::format("attention: shapes q [{}], k [{}], v [{}] do not fit {} heads",
                    fmt::join(q_in.sizes(), ","), fmt::join(k_in.sizes(), ","),
                    fmt::join(v_in.sizes(), ","), heads));
  }
  const at::Tensor q = UnitStrideLast(q_in), k = UnitStrideLast(k_in), v = UnitStrideLast(v_in);
  const int64_t d = q.size(2) / heads, dv = v.size(2) / heads;
  at::Tensor out = at::empty({batch, n, heads * dv}, q.options());
  if (n == 0) return out;
  const int64_t rows =
      slice > 0 ? std::min(slice, n)
                : std::clamp<int64_t>(kBlockScoreElements / std::max<int64_t>(m, 1), 16, n);
  const bool reduced = q.scalar_type() != at::kFloat && q.scalar_type() != at::kDouble;
  // The work items are (batch, head, block of query rows), spread over the intra-op pool; each
  // thread keeps one score block of its own.
  const int64_t blocks = (n + rows - 1) / rows;
  ParallelFor(0, batch * heads * blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor scores = at::empty({rows, m}, q.options());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / (heads * blocks), h = item / blocks % heads;
      const int64_t r0 = item % blocks * rows, len = std::min(rows, n - r0);
      // Per-head views into the fused projections: BLAS reads them through their row stride.
      const at::Tensor qh = q.select(0, b).narrow(1, h * d, d).narrow(0, r0, len);
      const at::Tensor kt = k.select(0, b).narrow(1, h * d, d).t();
      const at::Tensor vh = v.select(0, b).narrow(1, h * dv, dv);
      at::Tensor o = out.select(0, b).narrow(1, h * dv, dv).narrow(0, r0, len);
      at::Tensor s = len == rows ? scores : scores.narrow(0, 0, len);
      s.addmm_(qh, kt, /*beta=*/0, /*alpha=*/scale);
      if (reduced) {
        at::mm_out(o, at::softmax(s, -1, at::kFloat).to(q.scalar_type()), vh);
      } else {
        at::_softmax_out(s, s, -1, false);  // row-wise, so in place is safe
        at::mm_out(o, s, vh);
      }
    }
  });
  return out;
}

}  // namespace megaserve::diffusion
