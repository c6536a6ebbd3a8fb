// 2-D convolution (forward, input gradient, weight gradient) as an XLA FFI custom call into oneDNN.
//
// Why: XLA:CPU's convolutions run at a fraction of oneDNN's on the same CPU (torch uses oneDNN),
// its weight gradient worst of all, and XLA never reaches the bf16 dot instructions (AVX512-BF16,
// AMX) that oneDNN uses (issue 18; benchmarks/xla_cpu_paths.py). Built by reacgan_jax/onednn on
// first use against the `onednn-cpu-gomp` wheel (oneDNN 3.2, OpenMP threads).
//
// Layouts are the project's: activations NHWC, kernels HWIO. One handler, three kinds (two more
// below, with biases):
//   kind 0  y  [N,Ho,Wo,O] = conv(x [N,H,W,C], w [KH,KW,C,O])
//   kind 1  dx [N,H,W,C]   = input gradient of kind 0 from g [N,Ho,Wo,O] and w
//   kind 2  dw [KH,KW,C,O] = weight gradient of kind 0 from x and g
// Strides and the four paddings are attributes; every operand is float32 or bfloat16 (oneDNN
// accumulates in float32 either way). Activations stay NHWC (oneDNN's brgemm kernels take it
// directly); kernels are reordered to and from the blocked layout the primitive asks for.
// Primitive descriptors, primitives and reorders are cached per shape/dtype/attribute key.
// Two more targets carry a conv layer's bias (float32 [O]) through the same primitives:
// ReacganDnnlConvBias (kind 0 with the bias added before the one rounding to y's dtype) and
// ReacganDnnlWgradBias (kind 2 also returning the bias gradient, the sum of g over N, H, W,
// float32), so that neither costs a pass of XLA over the activation. Two carry the bias of a
// transposed (up-sampling) convolution, oneDNN's deconvolution primitive, in the strided
// convolution's terms (x [N,H,W,C], w [KH,KW,C,O], g [N,Ho,Wo,O] as above):
//   kind 3  x = the transpose of kind 0 applied to g, plus a float32 bias [C] (kind 1's result,
//             the bias added before the one rounding)            ReacganDnnlDeconvBias
// (Its gradients are kinds 0 and 2 and a sum: oneDNN 3.2's deconvolution backward-weights
// primitive with a bias was 3x slower than those.)
// Two more run batch norm (ReacganDnnlBnFwd / ReacganDnnlBnBwd, below).

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

std::mutex& RunMutex() {   // one oneDNN call at a time (see Run), convolutions and BN alike
  static std::mutex mu;
  return mu;
}

bool ToDnnl(ffi::DataType t, dt* out) {
  if (t == ffi::DataType::F32) { *out = dt::f32; return true; }
  if (t == ffi::DataType::BF16) { *out = dt::bf16; return true; }
  return false;
}

// One cached plan: the primitive, and reorders of the kernel between HWIO and its layout.
struct Plan {
  dnnl::primitive prim;
  dnnl::memory::desc a_md, b_md, out_md;    // plain (user) layouts
  dnnl::memory::desc w_prim_md;             // the kernel / kernel-gradient layout of prim
  bool reorder_w = false;
  dnnl::reorder w_reorder;                  // HWIO -> prim layout (kind 0, 1) or back (kind 2)
  dnnl::memory::desc scratch_md;
  dnnl::memory::desc bias_md;               // float32 [O] (kind 0, 2) or [C] (kind 3)
};

// A buffer that grows to the largest size asked of it and is reused (uninitialised: a
// std::vector would zero it); 64-byte aligned.
class Buffer {
 public:
  void* Get(size_t size) {
    if (size > size_ || !data_) {
      size_ = (size + 64) / 64 * 64;   // never 0: oneDNN takes a null handle as "no buffer"
      data_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, size_)));
    }
    return data_.get();
  }

 private:
  struct Free { void operator()(uint8_t* p) const { std::free(p); } };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0;
};

// The scratchpad every primitive runs with: one buffer, as RunMutex lets one call run at a time.
Buffer& Scratch() {
  static Buffer scratch;
  return scratch;
}

using Key = std::tuple<int64_t, std::vector<int64_t>, int, int, int>;

// Primitive attributes with the scratchpad supplied by the caller (Scratch()).
dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Sets the plan's kernel reorder between the plain layout and the primitive's (plan->w_prim_md):
// into the primitive's layout, or back out of it for a weight gradient (to_plain).
void SetWeightReorder(Plan* plan, const dnnl::memory::desc& wei_plain, bool to_plain) {
  plan->reorder_w = plan->w_prim_md != wei_plain;
  if (!plan->reorder_w) return;
  auto& eng = Engine();
  plan->w_reorder = to_plain ? dnnl::reorder(dnnl::reorder::primitive_desc(
                                   eng, plan->w_prim_md, eng, wei_plain))
                             : dnnl::reorder(dnnl::reorder::primitive_desc(
                                   eng, wei_plain, eng, plan->w_prim_md));
}

// Kind 3: the deconvolution that is the transpose of the strided convolution (src, wei, dst in
// that convolution's logical dims and dtypes: x, w [O, C, KH, KW], g), with its bias.
// The deconvolution's source is g, its destination x, its weights w with O and C swapped:
// logically [C, O, KH, KW], the same HWIO memory read as hwoi.
std::shared_ptr<Plan> MakeDeconvPlan(const dnnl::memory::dims& src,
                                     const dnnl::memory::dims& wei,
                                     const dnnl::memory::dims& dst, dt t_src, dt t_wei,
                                     dt t_dst, const dnnl::memory::dims& strides,
                                     const dnnl::memory::dims& pad_l,
                                     const dnnl::memory::dims& pad_r) {
  auto& eng = Engine();
  auto plan = std::make_shared<Plan>();
  plan->bias_md = dnnl::memory::desc({src[1]}, dt::f32, tag::a);
  dnnl::memory::desc x_md(src, t_src, tag::nhwc);
  dnnl::memory::desc g_md(dst, t_dst, tag::nhwc);
  const dnnl::memory::dims d_wei{wei[1], wei[0], wei[2], wei[3]};
  dnnl::memory::desc wei_plain(d_wei, t_wei, tag::hwoi);
  dnnl::memory::desc wei_any(d_wei, t_wei, tag::any);
  auto pd = dnnl::deconvolution_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_inference, dnnl::algorithm::deconvolution_direct, g_md,
      wei_any, plan->bias_md, x_md, strides, pad_l, pad_r, UserScratchpad());
  plan->prim = dnnl::deconvolution_forward(pd);
  plan->w_prim_md = pd.weights_desc();
  plan->a_md = g_md; plan->b_md = wei_plain; plan->out_md = x_md;
  plan->scratch_md = pd.scratchpad_desc();
  SetWeightReorder(plan.get(), wei_plain, false);
  return plan;
}

std::shared_ptr<Plan> MakePlan(int64_t kind, const dnnl::memory::dims& src,
                               const dnnl::memory::dims& wei, const dnnl::memory::dims& dst,
                               dt t_src, dt t_wei, dt t_dst, const dnnl::memory::dims& strides,
                               const dnnl::memory::dims& pad_l, const dnnl::memory::dims& pad_r,
                               bool bias) {
  if (kind == 3) return MakeDeconvPlan(src, wei, dst, t_src, t_wei, t_dst, strides, pad_l,
                                       pad_r);
  auto& eng = Engine();
  auto plan = std::make_shared<Plan>();
  if (bias) plan->bias_md = dnnl::memory::desc({wei[0]}, dt::f32, tag::a);
  dnnl::memory::desc src_md(src, t_src, tag::nhwc);
  dnnl::memory::desc dst_md(dst, t_dst, tag::nhwc);
  dnnl::memory::desc wei_plain(wei, t_wei, tag::hwio);
  dnnl::memory::desc wei_any(wei, t_wei, tag::any);
  const auto attr = UserScratchpad();
  // The forward descriptor (itself, or the hint of the backward ones) in the operand dtypes.
  const auto prop =
      kind == 0 ? dnnl::prop_kind::forward_inference : dnnl::prop_kind::forward_training;
  const auto algo = dnnl::algorithm::convolution_direct;
  const auto fwd_attr = kind == 0 ? attr : dnnl::primitive_attr();
  auto fwd_pd = bias ? dnnl::convolution_forward::primitive_desc(
                           eng, prop, algo, src_md, wei_any, plan->bias_md, dst_md, strides,
                           pad_l, pad_r, fwd_attr)
                     : dnnl::convolution_forward::primitive_desc(
                           eng, prop, algo, src_md, wei_any, dst_md, strides, pad_l, pad_r,
                           fwd_attr);
  if (kind == 0) {
    plan->prim = dnnl::convolution_forward(fwd_pd);
    plan->w_prim_md = fwd_pd.weights_desc();
    plan->a_md = src_md; plan->b_md = wei_plain; plan->out_md = dst_md;
    plan->scratch_md = fwd_pd.scratchpad_desc();
  } else if (kind == 1) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        eng, algo, src_md, wei_any, dst_md, strides, pad_l, pad_r,
        fwd_pd, attr);
    plan->prim = dnnl::convolution_backward_data(pd);
    plan->w_prim_md = pd.weights_desc();
    plan->a_md = dst_md; plan->b_md = wei_plain; plan->out_md = src_md;
    plan->scratch_md = pd.scratchpad_desc();
  } else {
    auto pd = bias ? dnnl::convolution_backward_weights::primitive_desc(
                         eng, algo, src_md, wei_any, plan->bias_md, dst_md, strides, pad_l,
                         pad_r, fwd_pd, attr)
                   : dnnl::convolution_backward_weights::primitive_desc(
                         eng, algo, src_md, wei_any, dst_md, strides, pad_l, pad_r, fwd_pd,
                         attr);
    plan->prim = dnnl::convolution_backward_weights(pd);
    plan->w_prim_md = pd.diff_weights_desc();
    plan->a_md = src_md; plan->b_md = dst_md; plan->out_md = wei_plain;
    plan->scratch_md = pd.scratchpad_desc();
  }
  SetWeightReorder(plan.get(), wei_plain, kind == 2);
  return plan;
}

// The plan cached under `key`, made by `make()` on its first use (one cache per key/plan type;
// made outside the lock: two first uses of a key build the same plan, the first one stays).
template <typename K, typename P, typename Make>
std::shared_ptr<P> Cached(const K& key, Make make) {
  static std::mutex mu;
  static std::map<K, std::shared_ptr<P>> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  std::shared_ptr<P> plan = make();
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(key, plan).first->second;
}

std::shared_ptr<Plan> GetPlan(const Key& key, int64_t kind, const dnnl::memory::dims& src,
                              const dnnl::memory::dims& wei, const dnnl::memory::dims& dst,
                              dt t_src, dt t_wei, dt t_dst, const dnnl::memory::dims& strides,
                              const dnnl::memory::dims& pad_l, const dnnl::memory::dims& pad_r,
                              bool bias) {
  return Cached<Key, Plan>(key, [&] {
    return MakePlan(kind, src, wei, dst, t_src, t_wei, t_dst, strides, pad_l, pad_r, bias);
  });
}

// bias: nullptr, or a float32 buffer: the bias read by kind 0 ([O]) and 3 ([C]), the bias
// gradient written by kind 2 ([O]) (its size is checked by the callers).
ffi::Error Run(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer>& out, void* bias,
               int64_t kind, int64_t stride_h, int64_t stride_w, int64_t pad_top,
               int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  if (kind < 0 || kind > 3) return ffi::Error::InvalidArgument("dnnl_conv: kind must be 0 to 3");
  if (bias != nullptr && kind == 1)
    return ffi::Error::InvalidArgument("dnnl_conv: the input gradient takes no bias");
  if (bias == nullptr && kind == 3)
    return ffi::Error::InvalidArgument("dnnl_conv: kind 3 takes a bias");
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || od.size() != 4)
    return ffi::Error::InvalidArgument("dnnl_conv: operands must be 4-D (NHWC / HWIO)");
  dt ta, tb, to;
  if (!ToDnnl(a.element_type(), &ta) || !ToDnnl(b.element_type(), &tb) ||
      !ToDnnl(out->element_type(), &to))
    return ffi::Error::InvalidArgument("dnnl_conv: operands must be float32 or bfloat16");
  // NHWC x [n,h,w,c] and HWIO w [kh,kw,c,o] in oneDNN's logical NCHW / OIHW dims.
  // Which operand is x (or dx), w (or dw), y (or g), per kind: (a, b) -> out.
  //   0: (x, w) -> y   1: (g, w) -> dx   2: (x, g) -> dw   3: (g, w) -> x
  const bool x_out = kind == 1 || kind == 3, w_out = kind == 2;
  const int64_t* xs = x_out ? od.begin() : ad.begin();
  const int64_t* ws = w_out ? od.begin() : bd.begin();
  const int64_t* ys = kind == 0 ? od.begin() : (w_out ? bd.begin() : ad.begin());
  dnnl::memory::dims src{xs[0], xs[3], xs[1], xs[2]}, wei{ws[3], ws[2], ws[0], ws[1]},
      dst{ys[0], ys[3], ys[1], ys[2]};
  dt t_src = x_out ? to : ta, t_wei = w_out ? to : tb,
     t_dst = kind == 0 ? to : (w_out ? tb : ta);
  dnnl::memory::dims strides{stride_h, stride_w}, pad_l{pad_top, pad_left},
      pad_r{pad_bottom, pad_right};
  std::vector<int64_t> shape;
  for (auto* d : {xs, ws, ys}) shape.insert(shape.end(), d, d + 4);
  shape.insert(shape.end(), {stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right,
                            bias != nullptr});
  Key key{kind, shape, static_cast<int>(t_src), static_cast<int>(t_wei), static_cast<int>(t_dst)};
  // One convolution at a time: XLA runs independent ops concurrently on its thread pool (D on
  // the real and on the fake batch, say), and each call's OpenMP team already spans every core;
  // two teams at once oversubscribe the cores (measured: a 3x3 conv at 326 ms beside its twin
  // at 187 ms, both ~175 ms alone). A waiting XLA thread blocks here instead of spinning.
  std::lock_guard<std::mutex> run_lock(RunMutex());
  try {
    auto plan = GetPlan(key, kind, src, wei, dst, t_src, t_wei, t_dst, strides, pad_l, pad_r,
                        bias != nullptr);
    auto& eng = Engine();
    dnnl::stream strm(eng);
    dnnl::memory a_mem(plan->a_md, eng, a.untyped_data());
    dnnl::memory b_mem(plan->b_md, eng, b.untyped_data());
    dnnl::memory o_mem(plan->out_md, eng, out->untyped_data());
    // The scratchpad and the reordered kernel live in buffers kept across calls (RunMutex
    // serialises the calls): a fresh allocation of this size is a fresh mmap whose pages the
    // kernel zero-fills on first touch, on every call.
    static Buffer wbuf;
    dnnl::memory s_mem(plan->scratch_md, eng, Scratch().Get(plan->scratch_md.get_size()));
    dnnl::memory w_mem = plan->reorder_w
                             ? dnnl::memory(plan->w_prim_md, eng,
                                            wbuf.Get(plan->w_prim_md.get_size()))
                                         : (w_out ? o_mem : b_mem);
    if (kind == 0 || kind == 3) {
      if (plan->reorder_w) plan->w_reorder.execute(strm, b_mem, w_mem);
      std::unordered_map<int, dnnl::memory> args{
          {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, o_mem},
          {DNNL_ARG_SCRATCHPAD, s_mem}};
      if (bias != nullptr) args.emplace(DNNL_ARG_BIAS, dnnl::memory(plan->bias_md, eng, bias));
      plan->prim.execute(strm, args);
    } else if (kind == 1) {
      if (plan->reorder_w) plan->w_reorder.execute(strm, b_mem, w_mem);
      plan->prim.execute(strm, {{DNNL_ARG_DIFF_DST, a_mem}, {DNNL_ARG_WEIGHTS, w_mem},
                                {DNNL_ARG_DIFF_SRC, o_mem}, {DNNL_ARG_SCRATCHPAD, s_mem}});
    } else {
      std::unordered_map<int, dnnl::memory> args{
          {DNNL_ARG_SRC, a_mem}, {DNNL_ARG_DIFF_DST, b_mem}, {DNNL_ARG_DIFF_WEIGHTS, w_mem},
          {DNNL_ARG_SCRATCHPAD, s_mem}};
      if (bias != nullptr)
        args.emplace(DNNL_ARG_DIFF_BIAS, dnnl::memory(plan->bias_md, eng, bias));
      plan->prim.execute(strm, args);
      if (plan->reorder_w) plan->w_reorder.execute(strm, w_mem, o_mem);
    }
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("dnnl_conv: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Conv(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out, int64_t kind,
                int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                int64_t pad_left, int64_t pad_right) {
  return Run(a, b, out, nullptr, kind, stride_h, stride_w, pad_top, pad_bottom, pad_left,
             pad_right);
}

// Whether v is a float32 vector of n entries (a bias, its gradient, BN statistics or scales).
bool IsF32Vector(const ffi::AnyBuffer& v, int64_t n) {
  auto d = v.dimensions();
  return v.element_type() == ffi::DataType::F32 && d.size() == 1 && d[0] == n;
}

// y = conv(x, w) + bias (kind 0; the bias float32 [O]).
ffi::Error ConvBias(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer bias,
                    ffi::Result<ffi::AnyBuffer> y, int64_t stride_h, int64_t stride_w,
                    int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto wd = w.dimensions();
  if (wd.size() != 4 || !IsF32Vector(bias, wd[3]))
    return ffi::Error::InvalidArgument("dnnl_conv: the bias must be float32 [O]");
  return Run(x, w, y, bias.untyped_data(), 0, stride_h, stride_w, pad_top, pad_bottom, pad_left,
             pad_right);
}

// dw and the bias gradient db = sum of g over (N, H, W) (kind 2; db float32 [O]).
ffi::Error WgradBias(ffi::AnyBuffer x, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dw,
                     ffi::Result<ffi::AnyBuffer> db, int64_t stride_h, int64_t stride_w,
                     int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto gd = g.dimensions();
  if (gd.size() != 4 || !IsF32Vector(*db, gd[3]))
    return ffi::Error::InvalidArgument("dnnl_conv: the bias gradient must be float32 [O]");
  return Run(x, g, dw, db->untyped_data(), 2, stride_h, stride_w, pad_top, pad_bottom, pad_left,
             pad_right);
}

// x = the transpose of conv(., w) applied to g, plus bias (kind 3; the bias float32 [C]).
ffi::Error DeconvBias(ffi::AnyBuffer g, ffi::AnyBuffer w, ffi::AnyBuffer bias,
                      ffi::Result<ffi::AnyBuffer> x, int64_t stride_h, int64_t stride_w,
                      int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right) {
  auto wd = w.dimensions();
  if (wd.size() != 4 || !IsF32Vector(bias, wd[2]))
    return ffi::Error::InvalidArgument("dnnl_conv: the transposed conv's bias must be float32 [C]");
  return Run(g, w, x, bias.untyped_data(), 3, stride_h, stride_w, pad_top, pad_bottom, pad_left,
             pad_right);
}

// Batch normalisation in training mode over (N, H, W) of an NHWC x [N, H, W, C] (float32 or
// bfloat16; statistics, scale and shift float32), oneDNN's batch_normalization primitives:
//   forward  (x, scale, shift) -> y = (x - mean) / sqrt(var + eps) [* scale + shift], mean, var
//   backward (x, dy, mean, var, scale) -> dx, dscale, dshift
// var is the biased batch variance. affine = 0: no scale / shift (dscale, dshift are zeros).
struct BnPlan {
  dnnl::primitive fwd, bwd;
  dnnl::memory::desc x_md, stat_md, scratch_fwd, scratch_bwd;
};

std::shared_ptr<BnPlan> MakeBnPlan(const int64_t* xs, dt t, float eps, bool affine) {
  auto& eng = Engine();
  auto plan = std::make_shared<BnPlan>();
  plan->x_md = dnnl::memory::desc({xs[0], xs[3], xs[1], xs[2]}, t, tag::nhwc);
  plan->stat_md = dnnl::memory::desc({xs[3]}, dt::f32, tag::a);
  const auto attr = UserScratchpad();
  using flag = dnnl::normalization_flags;
  auto flags = affine ? (flag::use_scale | flag::use_shift) : flag::none;
  auto fpd = dnnl::batch_normalization_forward::primitive_desc(
      eng, dnnl::prop_kind::forward_training, plan->x_md, plan->x_md, eps, flags, attr);
  auto bpd = dnnl::batch_normalization_backward::primitive_desc(
      eng, affine ? dnnl::prop_kind::backward : dnnl::prop_kind::backward_data, plan->x_md,
      plan->x_md, plan->x_md, eps, flags, fpd, attr);
  plan->fwd = dnnl::batch_normalization_forward(fpd);
  plan->bwd = dnnl::batch_normalization_backward(bpd);
  plan->scratch_fwd = fpd.scratchpad_desc();
  plan->scratch_bwd = bpd.scratchpad_desc();
  return plan;
}

std::shared_ptr<BnPlan> GetBnPlan(const int64_t* xs, dt t, float eps, bool affine) {
  using BnKey = std::tuple<std::vector<int64_t>, int, float, bool>;
  BnKey key{std::vector<int64_t>(xs, xs + 4), static_cast<int>(t), eps, affine};
  return Cached<BnKey, BnPlan>(key, [&] { return MakeBnPlan(xs, t, eps, affine); });
}

// Runs the forward or backward BN primitive of the plan for (x's shape, dtype, eps, affine) on
// the given buffers (activation-shaped arguments: SRC, DST, DIFF_SRC, DIFF_DST; the rest float32
// [C]), one oneDNN call at a time.
ffi::Error RunBn(bool forward, const int64_t* xs, dt t, float eps, bool affine,
                 const std::vector<std::pair<int, void*>>& buffers) {
  std::lock_guard<std::mutex> run_lock(RunMutex());
  try {
    auto plan = GetBnPlan(xs, t, eps, affine);
    auto& eng = Engine();
    dnnl::stream strm(eng);
    const auto& scratch_md = forward ? plan->scratch_fwd : plan->scratch_bwd;
    std::unordered_map<int, dnnl::memory> args{
        {DNNL_ARG_SCRATCHPAD,
         dnnl::memory(scratch_md, eng, Scratch().Get(scratch_md.get_size()))}};
    for (const auto& [arg, ptr] : buffers) {
      const bool act = arg == DNNL_ARG_SRC || arg == DNNL_ARG_DST || arg == DNNL_ARG_DIFF_SRC ||
                       arg == DNNL_ARG_DIFF_DST;
      args.emplace(arg, dnnl::memory(act ? plan->x_md : plan->stat_md, eng, ptr));
    }
    (forward ? plan->fwd : plan->bwd).execute(strm, args);
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("dnnl_bn: oneDNN: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error BnFwd(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                 ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                 ffi::Result<ffi::AnyBuffer> var, float eps, int64_t affine) {
  auto xd = x.dimensions();
  dt t;
  if (xd.size() != 4 || !ToDnnl(x.element_type(), &t) || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("dnnl_bn: x and y must be 4-D float32 / bfloat16 (NHWC)");
  const int64_t c = xd[3];
  if (!IsF32Vector(scale, c) || !IsF32Vector(shift, c) || !IsF32Vector(*mean, c) ||
      !IsF32Vector(*var, c))
    return ffi::Error::InvalidArgument("dnnl_bn: scale, shift, mean, var must be float32 [C]");
  std::vector<std::pair<int, void*>> buffers{{DNNL_ARG_SRC, x.untyped_data()},
                                             {DNNL_ARG_DST, y->untyped_data()},
                                             {DNNL_ARG_MEAN, mean->untyped_data()},
                                             {DNNL_ARG_VARIANCE, var->untyped_data()}};
  if (affine) {
    buffers.emplace_back(DNNL_ARG_SCALE, scale.untyped_data());
    buffers.emplace_back(DNNL_ARG_SHIFT, shift.untyped_data());
  }
  return RunBn(true, xd.begin(), t, eps, affine != 0, buffers);
}

ffi::Error BnBwd(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer mean, ffi::AnyBuffer var,
                 ffi::AnyBuffer scale, ffi::Result<ffi::AnyBuffer> dx,
                 ffi::Result<ffi::AnyBuffer> dscale, ffi::Result<ffi::AnyBuffer> dshift,
                 float eps, int64_t affine) {
  auto xd = x.dimensions();
  dt t;
  if (xd.size() != 4 || !ToDnnl(x.element_type(), &t) || dy.element_type() != x.element_type() ||
      dx->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("dnnl_bn: x, dy, dx must be 4-D float32 / bfloat16, alike");
  const int64_t c = xd[3];
  if (!IsF32Vector(mean, c) || !IsF32Vector(var, c) || !IsF32Vector(scale, c) ||
      !IsF32Vector(*dscale, c) || !IsF32Vector(*dshift, c))
    return ffi::Error::InvalidArgument("dnnl_bn: statistics and scales must be float32 [C]");
  std::vector<std::pair<int, void*>> buffers{{DNNL_ARG_SRC, x.untyped_data()},
                                             {DNNL_ARG_DIFF_DST, dy.untyped_data()},
                                             {DNNL_ARG_MEAN, mean.untyped_data()},
                                             {DNNL_ARG_VARIANCE, var.untyped_data()},
                                             {DNNL_ARG_DIFF_SRC, dx->untyped_data()}};
  if (affine) {
    buffers.emplace_back(DNNL_ARG_SCALE, scale.untyped_data());
    buffers.emplace_back(DNNL_ARG_DIFF_SCALE, dscale->untyped_data());
    buffers.emplace_back(DNNL_ARG_DIFF_SHIFT, dshift->untyped_data());
  } else {
    std::memset(dscale->untyped_data(), 0, c * sizeof(float));
    std::memset(dshift->untyped_data(), 0, c * sizeof(float));
  }
  return RunBn(false, xd.begin(), t, eps, affine != 0, buffers);
}

// The strides and paddings every convolution target takes, after its operands.
template <typename Binding>
auto WithConvAttrs(Binding binding) {
  return std::move(binding)
      .template Attr<int64_t>("stride_h")
      .template Attr<int64_t>("stride_w")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_bottom")
      .template Attr<int64_t>("pad_left")
      .template Attr<int64_t>("pad_right");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlConvBias, ConvBias,
                              WithConvAttrs(ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlWgradBias, WgradBias,
                              WithConvAttrs(ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlDeconvBias, DeconvBias,
                              WithConvAttrs(ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlBnFwd, BnFwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("affine"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlBnBwd, BnBwd,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("affine"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ReacganDnnlConv, Conv,
                              WithConvAttrs(ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("kind")));

// oneDNN's version, for the Python side to record beside results.
extern "C" int ReacganDnnlVersion(int* major, int* minor, int* patch) {
  const dnnl_version_t* v = dnnl_version();
  *major = v->major; *minor = v->minor; *patch = v->patch;
  return 0;
}
