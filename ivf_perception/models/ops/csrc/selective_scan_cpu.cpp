// Fused CPU selective scan (forward only): one pass over time, the state in a small local array,
// eight channels of one B/C group per SIMD vector, Δ softplus (+bias), D skip and z gate fused.
//
// Why this layout: the eight channels of a block share B_t and C_t (grouped B/C), so a time step
// is, per state n, one vector exp(Δ·A_n), one FMA into h_n and one FMA into y with B_t[n], C_t[n]
// broadcast; no horizontal sums. Inputs are read through strides in blocks of kSteps time steps
// (a small gather of the tokens into per-step vectors; B and C read in place), so any layout works
// without a copy, and the same core
// reads VMamba's four cross-scan orders (and S4Fusion's interleaved modalities) straight from
// image-order tensors (Order::kCross) instead of materialising the permuted sequences; there it
// also applies Δ's low-rank up-projection itself, so the largest intermediate is never stored.
//
// Math helpers use GCC/Clang vector extensions (no intrinsics, no -ffast-math); scan_task is
// cloned for AVX-512 / AVX2 machines and a baseline, picked at load time.

#include <Python.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kLanes = 8;      // channels per task (one AVX2 vector of float)
constexpr int kSteps = 64;     // time steps per gathered block
constexpr int kMaxState = 64;  // largest supported N (the Python side falls back above it)
constexpr int kMaxRank = 64;   // largest rank of Δ's projection in the cross scan

// x86-64-v3/v4 clone targets need GCC 12; older compilers build the baseline only (correct, slower).
#if defined(IVF_CLONES)
#elif defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__)
#define IVF_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define IVF_CLONES
#endif

// Eight floats as one value: GCC/Clang vector extensions compile this to one AVX2 register (two
// SSE or NEON registers elsewhere) without intrinsics, and keep the vectorisation independent of
// the auto-vectoriser's moods.
#if defined(__GNUC__)
#define IVF_INLINE inline __attribute__((always_inline))
#else
#define IVF_INLINE inline
#endif

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

IVF_INLINE vf splat(float x) { return vf{} + x; }
IVF_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
IVF_INLINE vf vmin(vf a, vf b) { return a < b ? a : b; }

// 2^x to ~2 ulp for x in [-126, 127] (clamped outside): x = k + r, |r| <= 1/2, 2^r = e^(r·ln2)
// by its degree-6 Taylor polynomial (truncation < 1.2e-7 relative), 2^k built in the exponent
// bits. Rounding k by adding 1.5·2^23 keeps it branch-free without a rounding instruction.
IVF_INLINE vf exp2_approx(vf x) {
  x = vmin(vmax(x, splat(-126.0f)), splat(127.0f));
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23
  const vf t = x + shifter;
  const vf r = x - (t - shifter);
  vf p = splat(1.5403530393381606e-04f);  // ln2^6 / 6!
  p = p * r + 1.3333558146428443e-03f;    // ln2^5 / 5!
  p = p * r + 9.6181291076284772e-03f;    // ln2^4 / 4!
  p = p * r + 5.5504108664821580e-02f;    // ln2^3 / 3!
  p = p * r + 2.4022650695910071e-01f;    // ln2^2 / 2!
  p = p * r + 6.9314718055994531e-01f;    // ln2
  p = p * r + 1.0f;
  const vi k = reinterpret_cast<vi>(t) - reinterpret_cast<vi>(shifter);
  return p * reinterpret_cast<vf>((k + 127) << 23);
}

constexpr float kLog2e = 1.44269504088896341f;

IVF_INLINE vf exp_approx(vf x) { return exp2_approx(x * kLog2e); }

// softplus(x) = max(x, 0) + log1p(e), e = exp(-|x|) in (0, 1]; log1p(e) = 2·atanh(s) with
// s = e / (2 + e) <= 1/3, whose odd series to s^15 is exact to ~1e-9.
IVF_INLINE vf softplus_approx(vf x) {
  const vf e = exp_approx(-vmax(x, -x));
  const vf s = e / (2.0f + e);
  const vf s2 = s * s;
  vf p = splat(1.0f / 15.0f);
  p = p * s2 + 1.0f / 13.0f;
  p = p * s2 + 1.0f / 11.0f;
  p = p * s2 + 1.0f / 9.0f;
  p = p * s2 + 1.0f / 7.0f;
  p = p * s2 + 1.0f / 5.0f;
  p = p * s2 + 1.0f / 3.0f;
  p = p * s2 + 1.0f;
  return vmax(x, splat(0.0f)) + 2.0f * s * p;
}

IVF_INLINE vf silu_approx(vf x) { return x / (1.0f + exp_approx(-x)); }

// A strided view of a token tensor: element (batch b, group g, channel c, modality m, position p).
struct TokenView {
  const float* data = nullptr;
  int64_t sb = 0, sg = 0, sc = 0, sm = 0, sp = 0;
};

// Output view, same indexing as TokenView.
struct OutView {
  float* data = nullptr;
  int64_t sb = 0, sg = 0, sc = 0, sm = 0, sp = 0;
};

// B, C or Δ's low-rank part: element (b, g, row n, modality m, position p).
struct StateView {
  const float* data = nullptr;
  int64_t sb = 0, sg = 0, sn = 0, sm = 0, sp = 0;
};

enum class Order { kPlain, kCross };

struct Problem {
  int64_t batch = 0, groups = 0, per_group = 0, n_state = 0;
  int64_t modalities = 1, length = 0;  // tokens per modality; the scan runs modalities·length steps
  int64_t height = 1, width = 1;       // kCross: the token map is height×width (length = h·w)
  Order order = Order::kPlain;
  TokenView u, delta, z;                // z.data may be null
  StateView B, C;
  // Δ from its low-rank part instead of `delta` (when dt_proj is set): Δ_c = Σ_r W[g, c, r]·dts_r.
  StateView dts;
  const float* dt_proj = nullptr;       // (groups, per_group, rank), contiguous
  int64_t rank = 0;
  const float* A = nullptr;             // (groups·per_group, n_state), contiguous
  const float* D = nullptr;             // (groups·per_group) or null
  const float* delta_bias = nullptr;    // (groups·per_group) or null
  bool softplus = false;
  OutView y;
  float* last_state = nullptr;          // (batch, groups·per_group, n_state) or null
};

// Walks the image positions of one scan order step by step (no divisions in the loop): plain
// order, or cross-scan direction g (row-major, column-major, both reversed), each position
// repeated for the M interleaved modalities.
class PositionWalker {
 public:
  PositionWalker(const Problem& pb, int64_t g)
      : h_(pb.height), w_(pb.width), mods_(pb.modalities), reverse_(pb.order == Order::kCross && g >= 2),
        columns_(pb.order == Order::kCross && (g & 1)) {
    if (reverse_) {  // start at the last position of the order
      row_ = h_ - 1;
      col_ = w_ - 1;
    }
  }
  int64_t position() const { return row_ * w_ + col_; }
  int64_t modality() const { return mod_; }
  void next() {
    if (++mod_ < mods_) return;
    mod_ = 0;
    if (columns_) {
      step(row_, col_, h_);
    } else {
      step(col_, row_, w_);
    }
  }

 private:
  // Advance the fast index (wrapping at `extent`) and carry into the slow one.
  void step(int64_t& fast, int64_t& slow, int64_t extent) {
    if (!reverse_) {
      if (++fast == extent) fast = 0, ++slow;
    } else if (fast-- == 0) {
      fast = extent - 1, --slow;
    }
  }
  int64_t h_, w_, mods_;
  bool reverse_, columns_;
  int64_t row_ = 0, col_ = 0, mod_ = 0;
};

// Two-vector shuffle: clang's builtin, or GCC's (GCC has __builtin_shufflevector only since 12).
#if defined(__clang__)
#define IVF_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define IVF_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, vi{__VA_ARGS__})
#endif

// 8×8 transpose in registers: out[j][c] = in[c][j] (unpack pairs, then pairs of pairs, then halves).
static_assert(kLanes == 8, "transpose8 and the shuffles assume eight lanes");
IVF_INLINE void transpose8(const vf* in, vf* out) {
  vf t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = IVF_SHUFFLE(in[i], in[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
    t[i + 1] = IVF_SHUFFLE(in[i], in[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      u[i + 2 * j] = IVF_SHUFFLE(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
      u[i + 2 * j + 1] = IVF_SHUFFLE(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
    }
  }
  for (int j = 0; j < 4; ++j) {
    out[j] = IVF_SHUFFLE(u[j], u[j + 4], 0, 1, 2, 3, 8, 9, 10, 11);
    out[j + 4] = IVF_SHUFFLE(u[j], u[j + 4], 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// One block of steps of eight lanes into per-step vectors. Lane-contiguous data (channels last)
// is read a vector per step; otherwise lane by lane, each lane's run of steps (contiguous in the
// (B, D, L) layout) at a time, so that memory is read in long runs instead of eight strided ones.
// With `consecutive` (the plain order: positions pos[0], pos[0] + 1, ...) and position-contiguous
// lanes, eight steps of eight lanes are eight vector loads and one register transpose.
IVF_INLINE void gather_lanes(vf* out, const float* base, const TokenView& v, const int64_t* mod, const int64_t* pos,
                             int len, int lanes, bool consecutive) {
  if (v.sc == 1 && lanes == kLanes) {
    for (int s = 0; s < len; ++s) std::memcpy(&out[s], base + mod[s] * v.sm + pos[s] * v.sp, sizeof(vf));
    return;
  }
  int first = 0;
  if (consecutive && v.sp == 1 && lanes == kLanes) {
    const float* start = base + mod[0] * v.sm + pos[0];
    for (; first + kLanes <= len; first += kLanes) {
      vf rows[kLanes];
      for (int c = 0; c < kLanes; ++c) std::memcpy(&rows[c], start + c * v.sc + first, sizeof(vf));
      transpose8(rows, out + first);
    }
  }
  if (lanes < kLanes) {
    for (int s = first; s < len; ++s) out[s] = vf{};
  }
  for (int c = 0; c < lanes; ++c) {
    const float* lane = base + c * v.sc;
    for (int s = first; s < len; ++s) out[s][c] = lane[mod[s] * v.sm + pos[s] * v.sp];
  }
}

IVF_CLONES
void scan_task(const Problem& pb, int64_t b, int64_t g, int64_t c0) {
  const int lanes = static_cast<int>(std::min<int64_t>(kLanes, pb.per_group - c0));
  const int n_state = static_cast<int>(pb.n_state), rank = static_cast<int>(pb.rank);
  const int64_t steps = pb.modalities * pb.length;

  // Per-lane parameters; unused lanes get A = 0, Δ = 0 so their state stays 0.
  vf a[kMaxState] = {}, h[kMaxState] = {}, wdt[kMaxRank] = {}, bias = {}, dskip = {}, valid = {};
  for (int c = 0; c < lanes; ++c) {
    const int64_t ch = g * pb.per_group + c0 + c;
    for (int n = 0; n < n_state; ++n) a[n][c] = pb.A[ch * pb.n_state + n] * kLog2e;  // exp(Δa) = 2^(Δ·a·log2e)
    for (int r = 0; r < rank; ++r) wdt[r][c] = pb.dt_proj[ch * rank + r];
    if (pb.delta_bias) bias[c] = pb.delta_bias[ch];
    if (pb.D) dskip[c] = pb.D[ch];
    valid[c] = 1.0f;
  }

  const float* u_base = pb.u.data + b * pb.u.sb + g * pb.u.sg + c0 * pb.u.sc;
  const float* dt_base = pb.dt_proj ? nullptr : pb.delta.data + b * pb.delta.sb + g * pb.delta.sg + c0 * pb.delta.sc;
  const float* dts_base = pb.dt_proj ? pb.dts.data + b * pb.dts.sb + g * pb.dts.sg : nullptr;
  const float* z_base = pb.z.data ? pb.z.data + b * pb.z.sb + g * pb.z.sg + c0 * pb.z.sc : nullptr;
  const float* b_base = pb.B.data + b * pb.B.sb + g * pb.B.sg;
  const float* c_base = pb.C.data + b * pb.C.sb + g * pb.C.sg;
  float* y_base = pb.y.data + b * pb.y.sb + g * pb.y.sg + c0 * pb.y.sc;

  vf uu[kSteps], du[kSteps], dt[kSteps], yy[kSteps], zz[kSteps];
  int64_t pos[kSteps], mod[kSteps];
  PositionWalker walker(pb, g);
  const bool consecutive = pb.order == Order::kPlain && pb.modalities == 1;

  for (int64_t s0 = 0; s0 < steps; s0 += kSteps) {
    const int len = static_cast<int>(std::min<int64_t>(kSteps, steps - s0));
    for (int s = 0; s < len; ++s, walker.next()) {
      mod[s] = walker.modality();
      pos[s] = walker.position();
    }
    // Gather this block: tokens as one vector per step, B/C as [step][n]; Δ transform.
    gather_lanes(uu, u_base, pb.u, mod, pos, len, lanes, consecutive);
    if (pb.dt_proj) {
      for (int s = 0; s < len; ++s) {
        const float* lowrank = dts_base + mod[s] * pb.dts.sm + pos[s] * pb.dts.sp;
        vf dv = {};
        for (int r = 0; r < rank; ++r) dv += wdt[r] * lowrank[r * pb.dts.sn];
        dt[s] = dv;
      }
    } else {
      gather_lanes(dt, dt_base, pb.delta, mod, pos, len, lanes, consecutive);
    }
    for (int s = 0; s < len; ++s) {
      vf dv = dt[s] + bias;
      if (pb.softplus) dv = softplus_approx(dv);
      dt[s] = dv * valid;
      du[s] = dt[s] * uu[s];
    }
    // The recurrence: sequential in time, independent over lanes and states.
    // B_t and C_t are read in place (broadcast from memory), not copied.
    for (int s = 0; s < len; ++s) {
      const vf dts = dt[s], dus = du[s];
      const float* bs = b_base + mod[s] * pb.B.sm + pos[s] * pb.B.sp;
      const float* cs = c_base + mod[s] * pb.C.sm + pos[s] * pb.C.sp;
      vf acc = dskip * uu[s];
      for (int n = 0; n < n_state; ++n) {
        h[n] = exp2_approx(dts * a[n]) * h[n] + dus * bs[n * pb.B.sn];
        acc += h[n] * cs[n * pb.C.sn];
      }
      yy[s] = acc;
    }
    if (z_base) {
      gather_lanes(zz, z_base, pb.z, mod, pos, len, lanes, consecutive);
      for (int s = 0; s < len; ++s) yy[s] *= silu_approx(zz[s]);
    }
    if (pb.y.sc == 1 && lanes == kLanes) {
      for (int s = 0; s < len; ++s) std::memcpy(y_base + mod[s] * pb.y.sm + pos[s] * pb.y.sp, &yy[s], sizeof(vf));
    } else {  // lane by lane: each lane's outputs are contiguous in the (B, D, L) layout
      int first = 0;
      if (consecutive && pb.y.sp == 1 && lanes == kLanes) {  // transposed back, eight steps at a time
        float* start = y_base + mod[0] * pb.y.sm + pos[0];
        for (; first + kLanes <= len; first += kLanes) {
          vf rows[kLanes];
          transpose8(yy + first, rows);
          for (int c = 0; c < kLanes; ++c) std::memcpy(start + c * pb.y.sc + first, &rows[c], sizeof(vf));
        }
      }
      for (int c = 0; c < lanes; ++c) {
        float* out = y_base + c * pb.y.sc;
        for (int s = first; s < len; ++s) out[mod[s] * pb.y.sm + pos[s] * pb.y.sp] = yy[s][c];
      }
    }
  }
  if (pb.last_state) {
    float* last = pb.last_state + (b * pb.groups * pb.per_group + g * pb.per_group + c0) * pb.n_state;
    for (int c = 0; c < lanes; ++c)
      for (int n = 0; n < n_state; ++n) last[c * pb.n_state + n] = h[n][c];
  }
}

void run(const Problem& pb) {
  const int64_t blocks = (pb.per_group + kLanes - 1) / kLanes;
  const int64_t tasks = pb.batch * pb.groups * blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t blk = i % blocks, bg = i / blocks;
      scan_task(pb, bg / pb.groups, bg % pb.groups, blk * kLanes);
    }
  });
}

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, ": the CPU selective scan needs CPU tensors, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, ": the CPU selective scan needs float32, got ",
              t.scalar_type());
}

const float* param_ptr(const std::optional<at::Tensor>& t, int64_t channels, const char* name) {
  if (!t.has_value()) return nullptr;
  check_float(*t, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == channels && t->is_contiguous(), name,
              ": expected a contiguous (", channels, ",) tensor, got ", t->sizes());
  return t->data_ptr<float>();
}

void check_state_matrix(const at::Tensor& A, int64_t channels) {
  check_float(A, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == channels && A.is_contiguous(), "A: expected a contiguous (",
              channels, ", N) tensor, got ", A.sizes());
  TORCH_CHECK(A.size(1) >= 1 && A.size(1) <= kMaxState, "A: state size N must be in 1..", kMaxState,
              ", got ", A.size(1));
}

// u, delta, z: (B, D, L); A: (D, N); B, C: (B, G, N, L); D, delta_bias: (D,).
// Returns y (B, D, L) and the last state (B, D, N).
std::tuple<at::Tensor, at::Tensor> selective_scan_fwd(
    const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
    const std::optional<at::Tensor>& delta_bias, bool delta_softplus) {
  for (auto [t, name] : {std::pair{&u, "u"}, {&delta, "delta"}, {&B, "B"}, {&C, "C"}}) check_float(*t, name);
  TORCH_CHECK(u.dim() == 3, "u: expected (B, D, L), got ", u.sizes());
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2);
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta: expected ", u.sizes(), ", got ", delta.sizes());
  check_state_matrix(A, dim);
  TORCH_CHECK(B.dim() == 4 && B.sizes() == C.sizes() && B.size(0) == batch && B.size(2) == A.size(1) &&
                  B.size(3) == length && B.size(1) >= 1 && dim % B.size(1) == 0,
              "B, C: expected (B, G, N, L) with G dividing D, got ", B.sizes(), " and ", C.sizes());
  Problem pb;
  pb.batch = batch;
  pb.groups = B.size(1);
  pb.per_group = dim / pb.groups;
  pb.n_state = A.size(1);
  pb.length = length;
  pb.width = length;  // plain order: one row of L positions
  auto tokens = [&](const at::Tensor& t) {
    return TokenView{t.data_ptr<float>(), t.stride(0), pb.per_group * t.stride(1), t.stride(1), 0, t.stride(2)};
  };
  auto states = [](const at::Tensor& t) {
    return StateView{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2), 0, t.stride(3)};
  };
  pb.u = tokens(u);
  pb.delta = tokens(delta);
  if (z.has_value()) {
    check_float(*z, "z");
    TORCH_CHECK(z->sizes() == u.sizes(), "z: expected ", u.sizes(), ", got ", z->sizes());
    pb.z = tokens(*z);
  }
  pb.B = states(B);
  pb.C = states(C);
  pb.A = A.data_ptr<float>();
  pb.D = param_ptr(D, dim, "D");
  pb.delta_bias = param_ptr(delta_bias, dim, "delta_bias");
  pb.softplus = delta_softplus;
  at::Tensor y = at::empty({batch, dim, length}, u.options());
  at::Tensor last = at::empty({batch, dim, pb.n_state}, u.options());
  pb.y = OutView{y.data_ptr<float>(), y.stride(0), pb.per_group * y.stride(1), y.stride(1), 0, y.stride(2)};
  pb.last_state = last.data_ptr<float>();
  run(pb);
  return {y, last};
}

// The four cross-scan directions over M interleaved modalities, read from image order.
// u: (B, M, C, L) tokens in row-major image order (shared by the four directions);
// x_dbl: (B, M, 4, R + 2N, L) each direction's token projection [Δ low-rank part; B; C];
// dt_proj: (4, C, R), Δ's up-projection (applied here, so Δ is never stored); A: (4C, N);
// D, delta_bias: (4C,); L = height·width. Direction k scans the positions in its order,
// modalities interleaved per position (m = 0, 1, ... at each position). Returns the output
// of every direction put back in image order, channels last: (B, 4, M, L, C).
at::Tensor cross_scan_fwd(const at::Tensor& u, const at::Tensor& x_dbl, const at::Tensor& dt_proj,
                          const at::Tensor& A, const std::optional<at::Tensor>& D,
                          const std::optional<at::Tensor>& delta_bias, bool delta_softplus, int64_t height,
                          int64_t width) {
  for (auto [t, name] : {std::pair{&u, "u"}, {&x_dbl, "x_dbl"}, {&dt_proj, "dt_proj"}}) check_float(*t, name);
  TORCH_CHECK(u.dim() == 4, "u: expected (B, M, C, L), got ", u.sizes());
  const int64_t batch = u.size(0), mods = u.size(1), chans = u.size(2), length = u.size(3);
  TORCH_CHECK(height >= 1 && width >= 1 && height * width == length, "height*width must equal L = ", length,
              ", got ", height, "x", width);
  check_state_matrix(A, 4 * chans);
  const int64_t n_state = A.size(1);
  TORCH_CHECK(dt_proj.dim() == 3 && dt_proj.size(0) == 4 && dt_proj.size(1) == chans && dt_proj.is_contiguous() &&
                  dt_proj.size(2) >= 1 && dt_proj.size(2) <= kMaxRank,
              "dt_proj: expected a contiguous (4, ", chans, ", R) tensor with R <= ", kMaxRank, ", got ",
              dt_proj.sizes());
  const int64_t rank = dt_proj.size(2);
  TORCH_CHECK(x_dbl.dim() == 5 && x_dbl.size(0) == batch && x_dbl.size(1) == mods && x_dbl.size(2) == 4 &&
                  x_dbl.size(3) == rank + 2 * n_state && x_dbl.size(4) == length,
              "x_dbl: expected (", batch, ", ", mods, ", 4, ", rank + 2 * n_state, ", ", length, "), got ",
              x_dbl.sizes());
  Problem pb;
  pb.batch = batch;
  pb.groups = 4;
  pb.per_group = chans;
  pb.n_state = n_state;
  pb.modalities = mods;
  pb.length = length;
  pb.height = height;
  pb.width = width;
  pb.order = Order::kCross;
  pb.u = TokenView{u.data_ptr<float>(), u.stride(0), 0, u.stride(2), u.stride(1), u.stride(3)};
  auto rows = [&](int64_t first) {
    return StateView{x_dbl.data_ptr<float>() + first * x_dbl.stride(3), x_dbl.stride(0), x_dbl.stride(2),
                     x_dbl.stride(3), x_dbl.stride(1), x_dbl.stride(4)};
  };
  pb.dts = rows(0);
  pb.B = rows(rank);
  pb.C = rows(rank + n_state);
  pb.dt_proj = dt_proj.data_ptr<float>();
  pb.rank = rank;
  pb.A = A.data_ptr<float>();
  pb.D = param_ptr(D, 4 * chans, "D");
  pb.delta_bias = param_ptr(delta_bias, 4 * chans, "delta_bias");
  pb.softplus = delta_softplus;
  at::Tensor y = at::empty({batch, 4, mods, length, chans}, u.options());
  pb.y = OutView{y.data_ptr<float>(), y.stride(0), y.stride(1), y.stride(4), y.stride(2), y.stride(3)};
  run(pb);
  return y;
}

// ---------------------------------------------------------------------------------------------
// Class ids for the node: argmax over K float logits straight to uint8, one pass, no copies.
// Any strides are read, but the pass is pixel by pixel: it is fast for channels-last logits (K
// contiguous per pixel, as S4Fusion's head leaves them: 480x640x9 in 1.2 ms against 2.2 ms for
// OpenCV's transpose + running max); for NCHW planes the running max over planes is faster and the
// Python caller keeps it. A strict ">" from -inf keeps the first maximum (torch.argmax's tie rule)
// and lets no NaN win; an all-NaN pixel gets class 0.

void labels_row(const float* base, int64_t sk, int64_t sw, int64_t classes, int64_t width, uint8_t* out) {
  for (int64_t x = 0; x < width; ++x) {
    const float* p = base + x * sw;
    float best = -INFINITY;
    int64_t id = 0;
    for (int64_t k = 0; k < classes; ++k) {
      const float v = p[k * sk];
      const bool higher = v > best;
      best = higher ? v : best;
      id = higher ? k : id;
    }
    out[x] = static_cast<uint8_t>(id);
  }
}

at::Tensor labels_argmax(const at::Tensor& logits) {
  TORCH_CHECK(logits.dim() == 4, "labels_argmax: logits must be (B, K, H, W), got ", logits.dim(), " dimensions");
  TORCH_CHECK(logits.scalar_type() == at::kFloat, "labels_argmax: logits must be float32");
  const int64_t batch = logits.size(0), classes = logits.size(1), height = logits.size(2), width = logits.size(3);
  TORCH_CHECK(classes >= 1 && classes <= 256, "labels_argmax: ", classes, " classes do not fit uint8 (1..256)");
  at::Tensor labels = at::empty({batch, height, width}, logits.options().dtype(at::kByte));
  const float* src = logits.data_ptr<float>();
  uint8_t* dst = labels.data_ptr<uint8_t>();
  const int64_t sb = logits.stride(0), sk = logits.stride(1), sh = logits.stride(2), sw = logits.stride(3);
  at::parallel_for(0, batch * height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / height, y = r % height;
      labels_row(src + b * sb + y * sh, sk, sw, classes, width, dst + r * width);
    }
  });
  return labels;
}

}  // namespace

TORCH_LIBRARY(ivf_perception, m) {
  m.def("selective_scan_fwd(Tensor u, Tensor delta, Tensor A, Tensor B, Tensor C, Tensor? D, Tensor? z, "
        "Tensor? delta_bias, bool delta_softplus) -> (Tensor, Tensor)");
  m.def("cross_scan_fwd(Tensor u, Tensor x_dbl, Tensor dt_proj, Tensor A, Tensor? D, Tensor? delta_bias, "
        "bool delta_softplus, int height, int width) -> Tensor");
  m.def("labels_argmax(Tensor logits) -> Tensor");
}

TORCH_LIBRARY_IMPL(ivf_perception, CPU, m) {
  m.impl("selective_scan_fwd", &selective_scan_fwd);
  m.impl("cross_scan_fwd", &cross_scan_fwd);
  m.impl("labels_argmax", &labels_argmax);
}

// An importable (empty) Python module, so that `import ivf_perception.models.ops._cpu_scan` finds and
// loads this library with the platform's extension suffix; loading registers the operators above.
extern "C" PyMODINIT_FUNC PyInit__cpu_scan(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_scan", "fused CPU selective scan (torch operators)",
                               -1, nullptr};
  return PyModule_Create(&module);
}
