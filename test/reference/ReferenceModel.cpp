//===- ReferenceModel.cpp - moec-reference: the forward pass --------------===//
//
// The ViT / ViMoE forward pass in double precision, one routing group of
// images at a time: math helpers, the weights, the routers of every kind,
// the experts, attention and the blocks (README.md in this directory).
//
//===----------------------------------------------------------------------===//

#include "Reference.h"

namespace moecref {

//===----------------------------------------------------------------------===//
// Math helpers (row-major matrices of doubles)
//===----------------------------------------------------------------------===//


/// y[n, out] = x[n, in] . W[in, out] + b[out]  (W may be a slice: pointer).
Vec linear(const Vec &x, int64_t n, int64_t in, const double *W, const double *b,
           int64_t out) {
  Vec y(size_t(n * out));
  for (int64_t r = 0; r < n; ++r) {
    double *yr = &y[size_t(r * out)];
    for (int64_t o = 0; o < out; ++o)
      yr[o] = b ? b[o] : 0.0;
    for (int64_t i = 0; i < in; ++i) {
      double xv = x[size_t(r * in + i)];
      const double *wr = W + i * out;
      for (int64_t o = 0; o < out; ++o)
        yr[o] += xv * wr[o];
    }
  }
  return y;
}

double activate(Act a, double x) {
  switch (a) {
  case Act::Gelu:
    return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
  case Act::GeluTanh: {
    const double pi = 3.14159265358979323846;
    const double c = std::sqrt(2.0 / pi);
    return 0.5 * x * (1.0 + std::tanh(c * (x + 0.044715 * x * x * x)));
  }
  case Act::Relu:
    return x > 0 ? x : 0.0;
  case Act::Silu:
    return x / (1.0 + std::exp(-x));
  }
  return x;
}

Vec layerNorm(const Vec &x, int64_t n, int64_t d, const Vec &w, const Vec &b,
              double eps) {
  Vec y(x.size());
  for (int64_t r = 0; r < n; ++r) {
    const double *xr = &x[size_t(r * d)];
    double mean = 0;
    for (int64_t i = 0; i < d; ++i)
      mean += xr[i];
    mean /= double(d);
    double var = 0;
    for (int64_t i = 0; i < d; ++i)
      var += (xr[i] - mean) * (xr[i] - mean);
    var /= double(d);
    double inv = 1.0 / std::sqrt(var + eps);
    for (int64_t i = 0; i < d; ++i)
      y[size_t(r * d + i)] = (xr[i] - mean) * inv * w[size_t(i)] + b[size_t(i)];
  }
  return y;
}

/// Softmax of v[0..n) with stride `stride`, in place.
void softmaxStrided(double *v, int64_t n, int64_t stride) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    mx = std::max(mx, v[i * stride]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    v[i * stride] = std::exp(v[i * stride] - mx);
    sum += v[i * stride];
  }
  for (int64_t i = 0; i < n; ++i)
    v[i * stride] /= sum;
}

/// Indices of the k largest values of v[0..n), descending; ties: lower index.
std::vector<int64_t> topK(const double *v, int64_t n, int64_t k) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](int64_t a, int64_t b) { return v[a] > v[b]; });
  idx.resize(size_t(k));
  return idx;
}

Model loadModel(const Spec &s, const SafeTensors &st) {
  Model m;
  m.s = s;
  const int64_t D = s.D;
  m.T = (s.H / s.P) * (s.W / s.P);
  m.S = m.T + (s.clsPool ? 1 : 0);
  m.patchW = st.get("patch_embed.proj.weight", {s.C * s.P * s.P, D});
  m.patchB = st.get("patch_embed.proj.bias", {D});
  if (s.clsPool)
    m.cls = st.get("cls_token", {D});
  m.pos = st.get("pos_embed", {m.S, D});
  for (int64_t i = 0; i < s.L; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    BlockWeights b;
    b.n1w = st.get(p + "norm1.weight", {D});
    b.n1b = st.get(p + "norm1.bias", {D});
    b.qkvw = st.get(p + "attn.qkv.weight", {D, 3 * D});
    b.qkvb = st.get(p + "attn.qkv.bias", {3 * D});
    b.projw = st.get(p + "attn.proj.weight", {D, D});
    b.projb = st.get(p + "attn.proj.bias", {D});
    b.n2w = st.get(p + "norm2.weight", {D});
    b.n2b = st.get(p + "norm2.bias", {D});
    b.moe = s.hasMoE && s.moeBlocks.count(i);
    if (!b.moe) {
      b.mlp.w1 = st.get(p + "mlp.fc1.weight", {D, s.Hm});
      b.mlp.b1 = st.get(p + "mlp.fc1.bias", {s.Hm});
      b.mlp.w2 = st.get(p + "mlp.fc2.weight", {s.Hm, D});
      b.mlp.b2 = st.get(p + "mlp.fc2.bias", {D});
    } else {
      const Layer &c = s.layer.at(i);
      const int64_t E = c.E, H = c.Hx;
      const int64_t slots = c.router == RouterKind::Soft ? c.slots : 1;
      b.moeW.cfg = c;
      // A model-scope router's weight is the first MoE layer's (the later
      // layers read it there).
      if (!c.modelScope || i == *s.moeBlocks.begin())
        b.moeW.router =
            st.get(p + "moe.router.weight", {c.gateWidth(D), E * slots});
      if (c.cosine)
        b.moeW.scale = st.get(p + "moe.router.scale", {1});
      if (c.gateDim > 0)
        b.moeW.projection =
            st.get(p + "moe.router.projection", {D, c.gateDim});
      b.moeW.w1 = st.get(p + "moe.experts.fc1.weight", {E, D, H});
      b.moeW.b1 = st.get(p + "moe.experts.fc1.bias", {E, H});
      b.moeW.w2 = st.get(p + "moe.experts.fc2.weight", {E, H, D});
      b.moeW.b2 = st.get(p + "moe.experts.fc2.bias", {E, D});
      b.moeW.shared = c.shared;
      if (c.shared) {
        b.moeW.sharedFFN.w1 = st.get(p + "moe.shared.fc1.weight", {D, H});
        b.moeW.sharedFFN.b1 = st.get(p + "moe.shared.fc1.bias", {H});
        b.moeW.sharedFFN.w2 = st.get(p + "moe.shared.fc2.weight", {H, D});
        b.moeW.sharedFFN.b2 = st.get(p + "moe.shared.fc2.bias", {D});
      }
    }
    m.blocks.push_back(std::move(b));
  }
  m.normW = st.get("norm.weight", {D});
  m.normB = st.get("norm.bias", {D});
  m.headW = st.get("head.weight", {D, s.K});
  m.headB = st.get("head.bias", {s.K});
  return m;
}

//===----------------------------------------------------------------------===//
// Forward pass
//===----------------------------------------------------------------------===//

/// fc2(act(fc1(x))) for x [n, D] with explicit weight pointers.
Vec mlp(const Vec &x, int64_t n, int64_t D, int64_t H, const double *w1,
        const double *b1, const double *w2, const double *b2, Act act,
        TrainCtx *ctx = nullptr) {
  Vec h = linear(x, n, D, w1, b1, H);
  if (ctx && act == Act::Relu) {
    // ReLU kinks are discrete decisions too (for finite differences).
    uint64_t bits = 0;
    for (size_t i = 0; i < h.size(); ++i) {
      bits = (bits << 1) | (h[i] > 0 ? 1u : 0u);
      if (i % 64 == 63 || i + 1 == h.size())
        ctx->mix(bits), bits = 0;
    }
  }
  for (double &v : h)
    v = activate(act, v);
  return linear(h, n, H, w2, b2, D);
}

/// Expert e applied to a single vector v [D].
Vec expert(const Model &m, const MoEWeights &w, int64_t e, const Vec &v,
           TrainCtx *ctx) {
  const int64_t D = m.s.D, H = w.cfg.Hx;
  return mlp(v, 1, D, H, &w.w1[size_t(e * D * H)], &w.b1[size_t(e * H)],
             &w.w2[size_t(e * H * D)], &w.b2[size_t(e * D)], m.s.act, ctx);
}

Vec row(const Vec &x, int64_t r, int64_t d) {
  return Vec(x.begin() + r * d, x.begin() + (r + 1) * d);
}

void addScaled(Vec &y, int64_t r, int64_t d, double g, const Vec &v) {
  for (int64_t i = 0; i < d; ++i)
    y[size_t(r * d + i)] += g * v[size_t(i)];
}

int64_t capacityOf(int64_t k, int64_t S, double cf, int64_t E) {
  const double cap = std::ceil(double(k) * double(S) * cf / double(E));
  return std::min<int64_t>(S, std::max<int64_t>(1, (int64_t)cap));
}

/// Capacity-limited slot filling shared by token-choice and sinkhorn:
/// choice[s] lists token s's experts in priority order; gates G[s][e].
/// Round r takes every token's r-th choice, the tokens in `order`.
RoutingRecorder *routingRecorder = nullptr;

namespace {
/// The stats of the layer being routed, sized for E experts.
RoutingStats *routingStats(int64_t E) {
  if (!routingRecorder)
    return nullptr;
  RoutingStats &st = routingRecorder->layers[routingRecorder->block];
  const size_t n = size_t(routingRecorder->images);
  if (st.entropy.empty()) {
    st.tokens.assign(n * size_t(E), 0.0);
    st.weights.assign(n * size_t(E), 0.0);
    st.probs.assign(n * size_t(E), 0.0);
    st.entropy.assign(n, 0.0);
  }
  return &st;
}

/// Token s of a group of S tokens (groupSize images) went to expert e with
/// dispatch weight d and combine weight c.
void noteRouted(int64_t S, int64_t groupSize, int64_t E, int64_t s, int64_t e,
                double d, double c) {
  if (RoutingStats *st = routingStats(E)) {
    const size_t i =
        size_t(routingRecorder->base + s / (S / groupSize)) * size_t(E) +
        size_t(e);
    st->tokens[i] += d;
    st->weights[i] += c;
  }
}

/// The clean logits [R, E*P] of a group's R decisions (R = 1: one image).
void noteDecisions(const Vec &L, int64_t R, int64_t groupSize, int64_t E,
                   int64_t P) {
  RoutingStats *st = routingStats(E);
  if (!st)
    return;
  const int64_t J = E * P, perImage = R / groupSize;
  for (int64_t r = 0; r < R; ++r) {
    Vec p(L.begin() + r * J, L.begin() + (r + 1) * J);
    softmaxStrided(p.data(), J, 1);
    const size_t image = size_t(routingRecorder->base + r / perImage);
    double h = 0;
    for (int64_t j = 0; j < J; ++j) {
      st->probs[image * size_t(E) + size_t(j / P)] += p[size_t(j)] / perImage;
      if (p[size_t(j)] > 0)
        h -= p[size_t(j)] * std::log(p[size_t(j)]);
    }
    if (J > 1)
      st->entropy[image] += h / std::log(double(J)) / double(perImage);
  }
}
} // namespace

Vec fillAndCombine(const Model &m, const MoEWeights &w, const Vec &h,
                   const std::vector<std::vector<int64_t>> &choice, const Vec &G,
                   const std::vector<int64_t> &order, double cf, TrainCtx *ctx) {
  const int64_t D = m.s.D, S = int64_t(h.size()) / D, E = w.cfg.E,
                k = w.cfg.k;
  const int64_t C = capacityOf(k, S, cf, E);
  std::vector<int64_t> fill(size_t(E), 0);
  Vec y(size_t(S * D), 0.0);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t s : order) {
      int64_t e = choice[size_t(s)][size_t(r)];
      const bool take = fill[size_t(e)] < C;
      if (ctx)
        ctx->mix(uint64_t(take));
      if (take) {
        if (!ctx)
          noteRouted(S, w.cfg.groupSize, E, s, e, 1.0, G[size_t(s * E + e)]);
        ++fill[size_t(e)];
        addScaled(y, s, D, G[size_t(s * E + e)],
                  expert(m, w, e, row(h, s, D), ctx));
      }
    }
  return y;
}

double logSumExp(const double *v, int64_t n) {
  double mx = -INFINITY;
  for (int64_t i = 0; i < n; ++i)
    mx = std::max(mx, v[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i)
    sum += std::exp(v[i] - mx);
  return mx + std::log(sum);
}

/// Squared coefficient of variation: population variance / mean^2.
double cv2(const Vec &v) {
  double mean = 0;
  for (double x : v)
    mean += x;
  mean /= double(v.size());
  double var = 0;
  for (double x : v)
    var += (x - mean) * (x - mean);
  var /= double(v.size());
  return var / (mean * mean);
}

/// The router auxiliary losses of one routing group (one image), added to
/// `out`. L: clean router logits [R, J]; Gd: the gates used for dispatch
/// [R, J]; Ln: the noisy logits [R, J] (noisy token-choice only, else null),
/// with noise scale sn; k: top_k (for the load loss threshold).
void routerAux(TrainCtx &ctx, LayerLoss &out, const Spec &s, const Vec &L,
               int64_t R, int64_t J, const Vec &Gd, const Vec *Ln, int64_t k,
               double sn) {
  // importance: CV^2 over experts of the summed clean gates.
  Vec P = L;
  for (int64_t r = 0; r < R; ++r)
    softmaxStrided(&P[size_t(r * J)], J, 1);
  Vec imp(size_t(J), 0.0);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t j = 0; j < J; ++j)
      imp[size_t(j)] += P[size_t(r * J + j)];
  out.importance += cv2(imp);
  // z_loss: mean over rows of logsumexp(clean logits)^2.
  double z = 0;
  for (int64_t r = 0; r < R; ++r) {
    double l = logSumExp(&L[size_t(r * J)], J);
    z += l * l;
  }
  out.z += z / double(R);
  // balance: J^2 * mean_j(mean_r Gd[r][j] * fraction of rows with argmax j).
  Vec meanG(size_t(J), 0.0), frac(size_t(J), 0.0);
  for (int64_t r = 0; r < R; ++r) {
    const double *g = &Gd[size_t(r * J)];
    int64_t a = 0;
    for (int64_t j = 0; j < J; ++j) {
      meanG[size_t(j)] += g[j] / double(R);
      if (g[j] > g[a])
        a = j;
    }
    frac[size_t(a)] += 1.0 / double(R);
    ctx.mix(uint64_t(a));
    if (s.wBalance > 0)
      ctx.noteMargin(g, J, 1);
  }
  double bal = 0;
  for (int64_t j = 0; j < J; ++j)
    bal += meanG[size_t(j)] * frac[size_t(j)];
  out.balance += double(J) * bal; // J^2 * (bal / J)
  // load (noisy top-k only): threshold t = k-th largest noisy logit;
  // p = 1 - Phi((t - L) / sn); CV^2 over experts of mean_r p.
  if (Ln) {
    Vec pm(size_t(J), 0.0);
    for (int64_t r = 0; r < R; ++r) {
      const double *ln = &(*Ln)[size_t(r * J)];
      const int64_t idx = topK(ln, J, k).back();
      ctx.mix(uint64_t(idx));
      const double t = ln[idx];
      for (int64_t j = 0; j < J; ++j)
        pm[size_t(j)] +=
            0.5 * std::erfc((t - L[size_t(r * J + j)]) / (sn * std::sqrt(2.0))) /
            double(R);
    }
    out.load += cv2(pm);
  }
}

/// Sinkhorn scores from gates G [S, E]: each iteration scales every column
/// (expert) to sum S / E, then every row (token) to sum 1.
Vec sinkhorn(Vec Q, int64_t S, int64_t E, int64_t iterations) {
  const double target = double(S) / double(E);
  for (int64_t it = 0; it < iterations; ++it) {
    for (int64_t e = 0; e < E; ++e) {
      double sum = 0;
      for (int64_t t = 0; t < S; ++t)
        sum += Q[size_t(t * E + e)];
      for (int64_t t = 0; t < S; ++t)
        Q[size_t(t * E + e)] *= target / sum;
    }
    for (int64_t t = 0; t < S; ++t) {
      double sum = 0;
      for (int64_t e = 0; e < E; ++e)
        sum += Q[size_t(t * E + e)];
      for (int64_t e = 0; e < E; ++e)
        Q[size_t(t * E + e)] /= sum;
    }
  }
  return Q;
}

/// In training with noise: L += noise_std / E * N (this layer's samples, as
/// many as L has entries).
void addNoise(Vec &L, const Layer &c, int64_t E, TrainCtx *ctx) {
  if (!ctx || !(c.noiseStd > 0))
    return;
  const double *N = ctx->noise.at(ctx->noiseBlock);
  for (size_t i = 0; i < L.size(); ++i)
    L[i] += c.noiseStd / double(E) * N[i];
}

/// A token-level router's logits [S, J]: h * W, or with a cosine gate
/// scale * <normalize(h (* projection)), normalize(column j of W)>, the
/// norms sqrt(sum v^2 + 1e-6).
Vec gateLogits(const MoEWeights &w, const Vec &h, int64_t S, int64_t D,
               int64_t J) {
  const Layer &c = w.cfg;
  if (!c.cosine)
    return linear(h, S, D, w.router.data(), nullptr, J);
  const int64_t Dg = c.gateWidth(D);
  Vec x = c.gateDim > 0
              ? linear(h, S, D, w.projection.data(), nullptr, c.gateDim)
              : h;
  for (int64_t t = 0; t < S; ++t) {
    double sq = 0;
    for (int64_t i = 0; i < Dg; ++i)
      sq += x[size_t(t * Dg + i)] * x[size_t(t * Dg + i)];
    for (int64_t i = 0; i < Dg; ++i)
      x[size_t(t * Dg + i)] /= std::sqrt(sq + 1e-6);
  }
  Vec codes = w.router;
  for (int64_t j = 0; j < J; ++j) {
    double sq = 0;
    for (int64_t i = 0; i < Dg; ++i)
      sq += codes[size_t(i * J + j)] * codes[size_t(i * J + j)];
    for (int64_t i = 0; i < Dg; ++i)
      codes[size_t(i * J + j)] *= w.scale[0] / std::sqrt(sq + 1e-6);
  }
  return linear(x, S, Dg, codes.data(), nullptr, J);
}

/// One MoE layer on the tokens `h` of one routing group. A per-image
/// router reads `routerIn` with weight `routerW` (the first MoE layer's
/// for a model-scope router, else `h` and this layer's); `losses`: whether
/// this layer adds auxiliary losses (not the later layers of a model-scope
/// router).
Vec moeForward(const Model &m, const MoEWeights &w, const Vec &h,
               TrainCtx *ctx, const Vec &routerIn, const Vec &routerW,
               bool losses) {
  const Spec &s = m.s;
  const Layer &c = w.cfg;
  // The tokens of one routing group: one image, or groupSize images.
  const int64_t D = s.D, S = int64_t(h.size()) / D, E = c.E;
  const double cf = ctx ? c.cfTrain : c.cf;
  LayerLoss *ll = ctx ? &ctx->layers[ctx->block] : nullptr;
  Vec y(size_t(S * D), 0.0);
  switch (c.router) {
  case RouterKind::TokenChoice:
  case RouterKind::Sinkhorn: {
    Vec Lg = gateLogits(w, h, S, D, E);
    if (!ctx)
      noteDecisions(Lg, S, c.groupSize, E, 1);
    Vec G = Lg;
    for (int64_t t = 0; t < S; ++t)
      softmaxStrided(&G[size_t(t * E)], E, 1);
    // Training with noise: gates = softmax(L + sn * N) select (for sinkhorn:
    // through the iterations) and weight.
    const bool noisy = ctx && c.noiseStd > 0;
    const double sn = c.noiseStd / double(E);
    Vec Ln;
    if (noisy) {
      const double *N = ctx->noise.at(ctx->noiseBlock);
      Ln = Lg;
      for (size_t i = 0; i < Ln.size(); ++i)
        Ln[i] += sn * N[i];
      G = Ln;
      for (int64_t t = 0; t < S; ++t)
        softmaxStrided(&G[size_t(t * E)], E, 1);
    }
    const Vec Q =
        c.router == RouterKind::Sinkhorn ? sinkhorn(G, S, E, c.iterations) : G;
    std::vector<std::vector<int64_t>> choice;
    for (int64_t t = 0; t < S; ++t) {
      choice.push_back(topK(&Q[size_t(t * E)], E, c.k));
      if (ctx) {
        ctx->noteMargin(&Q[size_t(t * E)], E, c.k);
        for (int64_t e : choice.back())
          ctx->mix(uint64_t(e));
      }
    }
    // Token order, or (Batch Prioritized Routing) by each token's top score,
    // highest first, ties in token order.
    std::vector<int64_t> order(static_cast<size_t>(S));
    for (int64_t t = 0; t < S; ++t)
      order[size_t(t)] = t;
    if (c.batchPrioritized)
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
        const double qa = Q[size_t(a * E + choice[size_t(a)][0])],
                     qb = Q[size_t(b * E + choice[size_t(b)][0])];
        return qa > qb || (qa == qb && a < b);
      });
    y = fillAndCombine(m, w, h, choice, G, order, cf, ctx);
    if (ctx)
      routerAux(*ctx, *ll, s, Lg, S, E, G,
                noisy && c.router == RouterKind::TokenChoice ? &Ln : nullptr,
                c.k, sn);
    break;
  }
  case RouterKind::ExpertChoice:
  case RouterKind::SinkhornExpertChoice: {
    Vec Lg = gateLogits(w, h, S, D, E);
    if (!ctx)
      noteDecisions(Lg, S, c.groupSize, E, 1);
    Vec G = Lg;
    addNoise(G, c, E, ctx);
    for (int64_t t = 0; t < S; ++t)
      softmaxStrided(&G[size_t(t * E)], E, 1);
    // Experts choose their tokens by gate, or by Sinkhorn score; the gates
    // weight them either way.
    const Vec Q = c.router == RouterKind::SinkhornExpertChoice
                      ? sinkhorn(G, S, E, c.iterations)
                      : G;
    const int64_t C = capacityOf(1, S, cf, E);
    for (int64_t e = 0; e < E; ++e) {
      Vec col(static_cast<size_t>(S));
      for (int64_t t = 0; t < S; ++t)
        col[size_t(t)] = Q[size_t(t * E + e)];
      if (ctx)
        ctx->noteMargin(col.data(), S, C);
      for (int64_t t : topK(col.data(), S, C)) {
        if (ctx)
          ctx->mix(uint64_t(t));
        else
          noteRouted(S, c.groupSize, E, t, e, 1.0, G[size_t(t * E + e)]);
        addScaled(y, t, D, G[size_t(t * E + e)],
                  expert(m, w, e, row(h, t, D), ctx));
      }
    }
    if (ctx)
      routerAux(*ctx, *ll, s, Lg, S, E, G, nullptr, 1, 0.0);
    break;
  }
  case RouterKind::Soft: {
    const int64_t J = E * c.slots;
    Vec Lg = gateLogits(w, h, S, D, J);
    Vec Dw = Lg, Cw = Lg;
    for (int64_t j = 0; j < J; ++j)
      softmaxStrided(&Dw[size_t(j)], S, J); // over tokens
    for (int64_t t = 0; t < S; ++t)
      softmaxStrided(&Cw[size_t(t * J)], J, 1); // over slots
    std::vector<Vec> Y(static_cast<size_t>(J));
    for (int64_t j = 0; j < J; ++j) {
      Vec X(size_t(D), 0.0);
      for (int64_t t = 0; t < S; ++t)
        for (int64_t i = 0; i < D; ++i)
          X[size_t(i)] += Dw[size_t(t * J + j)] * h[size_t(t * D + i)];
      Y[size_t(j)] = expert(m, w, j / c.slots, X, ctx);
    }
    for (int64_t t = 0; t < S; ++t)
      for (int64_t j = 0; j < J; ++j)
        addScaled(y, t, D, Cw[size_t(t * J + j)], Y[size_t(j)]);
    if (!ctx) {
      noteDecisions(Lg, S, c.groupSize, E, c.slots);
      for (int64_t t = 0; t < S; ++t)
        for (int64_t j = 0; j < J; ++j)
          noteRouted(S, c.groupSize, E, t, j / c.slots,
                     Dw[size_t(t * J + j)], Cw[size_t(t * J + j)]);
    }
    if (ctx)
      routerAux(*ctx, *ll, s, Lg, S, J, Cw, nullptr, 1, 0.0);
    break;
  }
  case RouterKind::PerImage: {
    // The router reads the mean token, or the class token (token 0).
    Vec mean(size_t(D), 0.0);
    for (int64_t t = 0; t < (c.classToken ? 1 : S); ++t)
      for (int64_t i = 0; i < D; ++i)
        mean[size_t(i)] += routerIn[size_t(t * D + i)];
    if (!c.classToken)
      for (double &v : mean)
        v /= double(S);
    Vec Lg = linear(mean, 1, D, routerW.data(), nullptr, E);
    Vec G = Lg;
    addNoise(G, c, E, ctx);
    softmaxStrided(G.data(), E, 1);
    if (ctx)
      ctx->noteMargin(G.data(), E, c.k);
    if (!ctx)
      noteDecisions(Lg, 1, 1, E, 1);
    for (int64_t e : topK(G.data(), E, c.k)) {
      if (ctx)
        ctx->mix(uint64_t(e));
      for (int64_t t = 0; t < S; ++t) {
        addScaled(y, t, D, G[size_t(e)], expert(m, w, e, row(h, t, D), ctx));
        if (!ctx)
          noteRouted(S, 1, E, t, e, 1.0, G[size_t(e)]);
      }
    }
    if (ctx && losses) {
      routerAux(*ctx, *ll, s, Lg, 1, E, G, nullptr, 1, 0.0);
      // Mobile V-MoE super-class loss: CE(router logits, map[label]).
      if (!s.superClassMap.empty())
        ll->superClass += logSumExp(Lg.data(), E) -
                          Lg[size_t(s.superClassMap[size_t(ctx->label)])];
    }
    break;
  }
  }
  if (w.shared) {
    const FFNWeights &f = w.sharedFFN;
    Vec z = mlp(h, S, D, c.Hx, f.w1.data(), f.b1.data(), f.w2.data(), f.b2.data(),
                s.act, ctx);
    for (size_t i = 0; i < y.size(); ++i)
      y[i] += z[i];
  }
  return y;
}

Vec attention(const Model &m, const BlockWeights &b, const Vec &h) {
  const int64_t S = m.S, D = m.s.D, nh = m.s.heads, dh = D / nh;
  Vec qkv = linear(h, S, D, b.qkvw.data(), b.qkvb.data(), 3 * D);
  Vec O(size_t(S * D), 0.0);
  const double scale = 1.0 / std::sqrt(double(dh));
  for (int64_t j = 0; j < nh; ++j) {
    for (int64_t q = 0; q < S; ++q) {
      Vec a(static_cast<size_t>(S));
      for (int64_t kk = 0; kk < S; ++kk) {
        double dot = 0;
        for (int64_t i = 0; i < dh; ++i)
          dot += qkv[size_t(q * 3 * D + j * dh + i)] *
                 qkv[size_t(kk * 3 * D + D + j * dh + i)];
        a[size_t(kk)] = dot * scale;
      }
      softmaxStrided(a.data(), S, 1);
      for (int64_t kk = 0; kk < S; ++kk)
        for (int64_t i = 0; i < dh; ++i)
          O[size_t(q * D + j * dh + i)] +=
              a[size_t(kk)] * qkv[size_t(kk * 3 * D + 2 * D + j * dh + i)];
    }
  }
  return linear(O, S, D, b.projw.data(), b.projb.data(), D);
}

std::vector<Vec> forward(const Model &m, const float *imgs, int64_t count,
                         TrainCtx *ctx,
                         const std::function<void(int64_t)> &select) {
  const Spec &s = m.s;
  const int64_t D = s.D, P = s.P, S = m.S, gw = s.W / P, gh = s.H / P;
  const int64_t pd = s.C * P * P, per = s.C * s.H * s.W;
  std::vector<Vec> xs;
  for (int64_t im = 0; im < count; ++im) {
    const float *img = imgs + im * per;
    // 1. Patches, row-major; patch vector index c*P*P + dy*P + dx.
    Vec patches(size_t(m.T * pd));
    for (int64_t py = 0; py < gh; ++py)
      for (int64_t px = 0; px < gw; ++px) {
        int64_t t = py * gw + px;
        for (int64_t c = 0; c < s.C; ++c)
          for (int64_t dy = 0; dy < P; ++dy)
            for (int64_t dx = 0; dx < P; ++dx)
              patches[size_t(t * pd + c * P * P + dy * P + dx)] =
                  double(img[size_t(c * s.H * s.W + (py * P + dy) * s.W +
                                    (px * P + dx))]);
      }
    Vec tok = linear(patches, m.T, pd, m.patchW.data(), m.patchB.data(), D);
    // 2. cls token, position embeddings.
    Vec x(size_t(S * D));
    int64_t off = 0;
    if (s.clsPool) {
      for (int64_t i = 0; i < D; ++i)
        x[size_t(i)] = m.cls[size_t(i)];
      off = 1;
    }
    for (int64_t t = 0; t < m.T; ++t)
      for (int64_t i = 0; i < D; ++i)
        x[size_t((t + off) * D + i)] = tok[size_t(t * D + i)];
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += m.pos[i];
    xs.push_back(std::move(x));
  }
  // 3. Blocks. A model-scope router reads the first MoE layer's tokens
  // (and noise) in every MoE layer.
  std::vector<Vec> firstIn;
  int64_t firstBlock = -1;
  for (size_t bi = 0; bi < m.blocks.size(); ++bi) {
    const BlockWeights &b = m.blocks[bi];
    if (ctx)
      ctx->block = ctx->noiseBlock = int64_t(bi);
    std::vector<Vec> h2(static_cast<size_t>(count));
    for (int64_t im = 0; im < count; ++im) {
      Vec &x = xs[size_t(im)];
      Vec h = layerNorm(x, S, D, b.n1w, b.n1b, s.eps);
      Vec a = attention(m, b, h);
      for (size_t i = 0; i < x.size(); ++i)
        x[i] += a[i];
      h2[size_t(im)] = layerNorm(x, S, D, b.n2w, b.n2b, s.eps);
    }
    const int64_t n = b.moe ? b.moeW.cfg.groupSize : 1;
    for (int64_t g = 0; g < count; g += n) {
      if (!b.moe) {
        Vec f = mlp(h2[size_t(g)], S, D, s.Hm, b.mlp.w1.data(),
                    b.mlp.b1.data(), b.mlp.w2.data(), b.mlp.b2.data(), s.act,
                    ctx);
        for (size_t i = 0; i < f.size(); ++i)
          xs[size_t(g)][i] += f[i];
        continue;
      }
      // One routing group: its images' tokens one after the other.
      Vec group;
      for (int64_t im = g; im < g + n; ++im)
        group.insert(group.end(), h2[size_t(im)].begin(), h2[size_t(im)].end());
      if (ctx && select)
        select(g);
      LayerLoss before = ctx ? ctx->layers[int64_t(bi)] : LayerLoss();
      if (b.moeW.cfg.modelScope && firstBlock < 0)
        firstBlock = int64_t(bi);
      const bool reuse = b.moeW.cfg.modelScope && firstBlock != int64_t(bi);
      if (b.moeW.cfg.modelScope && !reuse)
        firstIn.push_back(group);
      if (ctx && reuse)
        ctx->noiseBlock = firstBlock;
      if (routingRecorder) {
        routingRecorder->block = int64_t(bi);
        routingRecorder->base = routingRecorder->first + g;
      }
      Vec f = moeForward(
          m, b.moeW, group, ctx, reuse ? firstIn[size_t(g)] : group,
          reuse ? m.blocks[size_t(firstBlock)].moeW.router : b.moeW.router,
          !reuse);
      if (ctx && n > 1) {
        // The losses are means over routing groups, and the batch's
        // totals are divided by the images: count each group n times.
        LayerLoss &l = ctx->layers[int64_t(bi)];
        l.importance += (n - 1) * (l.importance - before.importance);
        l.load += (n - 1) * (l.load - before.load);
        l.balance += (n - 1) * (l.balance - before.balance);
        l.z += (n - 1) * (l.z - before.z);
      }
      for (int64_t im = g; im < g + n; ++im)
        for (int64_t i = 0; i < S * D; ++i)
          xs[size_t(im)][size_t(i)] += f[size_t((im - g) * S * D + i)];
    }
  }
  // 4. Final norm, pooling, head.
  std::vector<Vec> out;
  for (int64_t im = 0; im < count; ++im) {
    Vec xn = layerNorm(xs[size_t(im)], S, D, m.normW, m.normB, s.eps);
    Vec feat(size_t(D), 0.0);
    if (s.clsPool) {
      feat = row(xn, 0, D);
    } else {
      for (int64_t t = 0; t < S; ++t)
        for (int64_t i = 0; i < D; ++i)
          feat[size_t(i)] += xn[size_t(t * D + i)];
      for (double &v : feat)
        v /= double(S);
    }
    out.push_back(linear(feat, 1, D, m.headW.data(), m.headB.data(), s.K));
  }
  return out;
}

int64_t largestGroup(const Spec &s) {
  int64_t n = 1;
  for (const auto &kv : s.layer)
    n = std::max(n, kv.second.groupSize);
  return n;
}

} // namespace moecref
