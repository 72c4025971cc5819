// One-pass CPU kernel for the attention refocus (docs/method.md Eq. 5-9): flash attention per
// key-label group plus the per-query score extrema, from a single Q·Kᵀ product.
//
// Keys (and values) arrive sorted by label, so key group G_L (L = m, p, n) of batch row b is the
// range [bounds[b*4+L], bounds[b*4+L+1]). For a block of queries the kernel runs an online-softmax
// (flash) pass over each group in turn, keeping per group the running max, sum and softmax·V, and
// per query S_max, S_min = max / min over all keys of S_ij = q_i·k_j. Then, with Z_L the group
// log-sum-exps of S/√d and c_i[L] the refocus term of key label L (Eq. 6, 9),
//     out_i = Σ_L softmax_L(Z_L[i] + c_i[L]/√d) · softmax_{j∈G_L}(S_ij/√d) V_j  =  softmax((S + M)/√d)_i V
// exactly (docs/method.md "Attention refocus"). Queries go in blocks of `qb`, keys in blocks of `kb`:
// the scores of one block (qb × kb floats) stay in cache while they are read for the extrema, the
// exponentials and the product with V, so the only work beyond one flash-attention pass is a max
// and a min per score.
//
// No torch headers: plain C ABI called through ctypes, so it compiles in about a second. The matrix
// products are the BLAS sgemm that torch itself links (MKL on x86 builds), resolved at link time.
// Exponentials are clamped at log(FLT_MIN) + 1 so that no denormal ever reaches a matrix product
// (they make it ~60x slower); each clamped weight changes by < 1e-37.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
// MKL only; keeps each worker's sgemm single-threaded (the workers are the parallelism).
int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
}

namespace {

constexpr float kLo = -86.33654f;  // log(FLT_MIN) + 1: exp(kLo) is a normal float

// exp(x) for x in [kLo, 0] (Cephes' expf polynomial, < 2 ulp); written so that gcc vectorises loops of it.
inline float exp_clamped(float x) {
  x = x < kLo ? kLo : x;
  const float fx = x * 1.44269504088896341f + 0.5f;
  int n = static_cast<int>(fx);
  n -= (static_cast<float>(n) > fx);  // floor
  const float nf = static_cast<float>(n);
  float r = x - nf * 0.693359375f;
  r = r + nf * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t e = (n + 127) << 23;
  float p;
  std::memcpy(&p, &e, sizeof p);
  return y * p;
}

struct Args {
  const float* q;
  const float* k;
  const float* v;
  const int64_t* bounds;   // (B, 4)
  const int64_t* qlabels;  // (B, N)
  int64_t heads, n, d, dv;
  float scale;
  const float* coef;  // coef_max (3×3) then coef_min (3×3), row = query label, column = key label
  float* out;         // (B·H, N, dv)
  int qb, kb;
};

struct Scratch {
  std::vector<float> s, acc, m, l, smax, smin;
  Scratch(int qb, int kb, int64_t dv)
      : s(static_cast<size_t>(qb) * kb), acc(3 * static_cast<size_t>(qb) * dv), m(3 * qb), l(3 * qb), smax(qb), smin(qb) {}
};

void run_block(const Args& a, int64_t bh, int64_t i0, Scratch& w) {
  const int qbs = static_cast<int>(std::min<int64_t>(a.qb, a.n - i0));
  const int d = static_cast<int>(a.d), dv = static_cast<int>(a.dv);
  const int64_t b = bh / a.heads;
  const float* q = a.q + (bh * a.n + i0) * a.d;
  const float* kbase = a.k + bh * a.n * a.d;
  const float* vbase = a.v + bh * a.n * a.dv;
  const int64_t* bounds = a.bounds + b * 4;
  float* smax = w.smax.data();
  float* smin = w.smin.data();
  for (int r = 0; r < qbs; ++r) {
    smax[r] = -FLT_MAX;
    smin[r] = FLT_MAX;
  }
  const float one = 1.0f, zero = 0.0f;
  for (int g = 0; g < 3; ++g) {
    const int64_t lo = bounds[g], hi = bounds[g + 1];
    float* acc = w.acc.data() + static_cast<int64_t>(g) * a.qb * dv;
    float* m = w.m.data() + g * a.qb;
    float* l = w.l.data() + g * a.qb;
    bool first = true;
    for (int64_t j0 = lo; j0 < hi; j0 += a.kb) {
      const int kbs = static_cast<int>(std::min<int64_t>(a.kb, hi - j0));
      // s (row-major qbs × kbs) = q_block · k_blockᵀ; column-major BLAS: C(kbs × qbs) = Kᵀ(kbs × d) · Q(d × qbs).
      sgemm_("T", "N", &kbs, &qbs, &d, &one, kbase + j0 * a.d, &d, q, &d, &zero, w.s.data(), &kbs);
      for (int r = 0; r < qbs; ++r) {
        float* row = w.s.data() + static_cast<int64_t>(r) * kbs;
        float mx = row[0], mn = row[0];
        for (int c = 1; c < kbs; ++c) {
          mx = row[c] > mx ? row[c] : mx;
          mn = row[c] < mn ? row[c] : mn;
        }
        smax[r] = mx > smax[r] ? mx : smax[r];
        smin[r] = mn < smin[r] ? mn : smin[r];
        const float m_new = first ? mx * a.scale : std::max(m[r], mx * a.scale);
        const float sc = a.scale;
        float sum = 0.0f;
        for (int c = 0; c < kbs; ++c) {
          const float p = exp_clamped(row[c] * sc - m_new);
          row[c] = p;
          sum += p;
        }
        if (first) {
          l[r] = sum;
        } else {
          const float alpha = exp_clamped(m[r] - m_new);
          l[r] = l[r] * alpha + sum;
          float* ar = acc + static_cast<int64_t>(r) * dv;
          for (int c = 0; c < dv; ++c) ar[c] *= alpha;
        }
        m[r] = m_new;
      }
      // acc (row-major qbs × dv) (+)= p (qbs × kbs) · V_block (kbs × dv); column-major: C(dv × qbs) = Vᵀ · Pᵀ.
      sgemm_("N", "N", &dv, &qbs, &kbs, &one, vbase + j0 * a.dv, &dv, w.s.data(), &kbs, first ? &zero : &one, acc, &dv);
      first = false;
    }
  }
  // out_i = Σ_L w_iL · acc_L[i] / l_L[i],  w_iL = softmax_L(lse_L[i] + c_i[L]·scale),  lse_L = m_L + log l_L,
  // c_i[L] = S_max[i]·coef_max[l_i, L] + S_min[i]·coef_min[l_i, L]  (Eq. 6 and 9), over the non-empty groups.
  const int64_t* qlab = a.qlabels + b * a.n + i0;
  float* out = a.out + (bh * a.n + i0) * a.dv;
  bool present[3];
  for (int g = 0; g < 3; ++g) present[g] = bounds[g + 1] > bounds[g];
  for (int r = 0; r < qbs; ++r) {
    const int li = static_cast<int>(qlab[r]);
    float logit[3], top = -FLT_MAX;
    for (int g = 0; g < 3; ++g) {
      if (!present[g]) continue;
      const float c = smax[r] * a.coef[li * 3 + g] + smin[r] * a.coef[9 + li * 3 + g];
      logit[g] = w.m[g * a.qb + r] + std::log(w.l[g * a.qb + r]) + c * a.scale;
      top = std::max(top, logit[g]);
    }
    float weight[3] = {0.0f, 0.0f, 0.0f}, total = 0.0f;
    for (int g = 0; g < 3; ++g) {
      if (!present[g]) continue;
      weight[g] = std::exp(logit[g] - top);
      total += weight[g];
    }
    for (int g = 0; g < 3; ++g) weight[g] = present[g] ? weight[g] / (total * w.l[g * a.qb + r]) : 0.0f;
    float* orow = out + static_cast<int64_t>(r) * dv;
    for (int c = 0; c < dv; ++c) orow[c] = 0.0f;
    for (int g = 0; g < 3; ++g) {
      if (!present[g]) continue;
      const float* ar = w.acc.data() + (static_cast<int64_t>(g) * a.qb + r) * dv;
      const float wg = weight[g];
      for (int c = 0; c < dv; ++c) orow[c] += wg * ar[c];
    }
  }
}

// Workers take blocks from a shared counter, so a thread that starts late or runs slower (another
// process on its core) takes fewer of them instead of holding the others up.
void worker(const Args& a, std::atomic<int64_t>* next, int64_t items) {
  // The setting is per thread and this may be the caller's thread: put back what it was (0 = global).
  const int before = MKL_Set_Num_Threads_Local ? MKL_Set_Num_Threads_Local(1) : 0;
  Scratch w(a.qb, a.kb, a.dv);
  const int64_t blocks = (a.n + a.qb - 1) / a.qb;
  for (int64_t item = next->fetch_add(1); item < items; item = next->fetch_add(1))
    run_block(a, item / blocks, (item % blocks) * a.qb, w);
  if (MKL_Set_Num_Threads_Local) MKL_Set_Num_Threads_Local(before);
}

}  // namespace

// Returns 0, or 1 for invalid sizes. Labels must be 0, 1 or 2 and bounds rise from 0 to n (the caller checks).
extern "C" int me_refocus(const float* q, const float* k, const float* v, const int64_t* bounds, const int64_t* qlabels,
                          int64_t batch, int64_t heads, int64_t n, int64_t d, int64_t dv, float scale, const float* coef,
                          float* out, int threads, int qb, int kb) {
  if (batch <= 0 || heads <= 0 || n <= 0 || d <= 0 || dv <= 0 || qb <= 0 || kb <= 0) return 1;
  const Args a{q, k, v, bounds, qlabels, heads, n, d, dv, scale, coef, out, qb, kb};
  const int64_t items = batch * heads * ((n + qb - 1) / qb);
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(threads, items));
  std::atomic<int64_t> next{0};
  std::vector<std::thread> pool;
  pool.reserve(nt - 1);
  for (int64_t t = 1; t < nt; ++t) pool.emplace_back(worker, std::cref(a), &next, items);
  worker(a, &next, items);
  for (auto& th : pool) th.join();
  return 0;
}
