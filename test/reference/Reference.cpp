//===- Reference.cpp - moec-reference: losses, gradients, commands --------===//
//
// moec-reference SPEC.json WEIGHTS.safetensors IMAGES.f32 OUT.f32
// moec-reference loss SPEC.json WEIGHTS.safetensors BATCH.safetensors
// moec-reference fdgrad SPEC.json WEIGHTS BATCH OUT.safetensors [--per-tensor K|all]
//                [--h H] [--seed S]
// moec-reference routing SPEC.json WEIGHTS IMAGES.f32 OUT.safetensors
//
// An independent reference implementation of the ViT / ViMoE forward pass,
// computed entirely in double precision.  It shares no code with the moec
// compiler or runtime: its only purpose is to check the compiled model's
// output.  See README.md in this directory for the semantics implemented.
//
// Optional flag (anywhere on the command line):
//   --f64   write the logits as raw little-endian f64 instead of f32
//           (used by selfcheck.py to compare at 1e-9 relative error).
//
// Errors (bad file, missing tensor, wrong shape, bad spec): a message on
// stderr and exit status 1.
//
//===----------------------------------------------------------------------===//

#include "Reference.h"

namespace moecref {
namespace {

//===----------------------------------------------------------------------===//
// Training mode: loss of a batch, finite-difference gradients
//===----------------------------------------------------------------------===//

/// Whether block `i`'s router is a noisy token-choice router in training
/// (the only router that reads a `noise.<layer>` input).
bool noisyLayer(const Spec &s, int64_t i) {
  // A model-scope router's later layers read the first layer's noise.
  return s.hasMoE && s.moeBlocks.count(i) &&
         s.layer.at(i).router != RouterKind::Soft &&
         s.layer.at(i).noiseStd > 0 &&
         !(s.layer.at(i).modelScope && i != *s.moeBlocks.begin());
}

/// Router decisions per image of layer `c`: one per token, or one for a
/// per-image router (the rows of its logits and noise).
int64_t routerRows(const Layer &c, int64_t S) {
  return c.router == RouterKind::PerImage ? 1 : S;
}

std::string moePrefix(int64_t i) { return "blocks." + std::to_string(i) + ".moe"; }

struct Batch {
  int64_t B = 0;
  std::vector<float> images;           // [B, C, H, W]
  std::vector<int32_t> labels;         // [B]
  std::map<int64_t, Vec> noise;        // block -> [B, S, E]
  std::vector<std::string> ignoredNoise; // noise.* tensors nothing reads
};

Batch loadBatch(const Model &m, const SafeTensors &st) {
  const Spec &s = m.s;
  Batch bt;
  // B from the labels' shape (the only [B] tensor).
  const std::vector<int64_t> ls = st.shapeOf("labels");
  const int64_t B = ls.size() == 1 ? ls[0] : -1;
  if (B <= 0)
    fail("batch: 'labels' must have shape [B] with B >= 1");
  bt.B = B;
  Vec img = st.get("images", {B, s.C, s.H, s.W});
  bt.images.assign(img.begin(), img.end());
  bt.labels = st.getI32("labels", {B});
  for (int32_t l : bt.labels)
    if (l < 0 || l >= s.K)
      fail("batch: label " + std::to_string(l) + " is not in [0, " +
           std::to_string(s.K) + ")");
  std::set<std::string> used;
  for (int64_t i = 0; i < s.L; ++i)
    if (noisyLayer(s, i)) {
      const std::string name = "noise." + moePrefix(i);
      // Per routing group of n images: [B / n, n * rows, E] (the same
      // elements as [B, rows, E]).
      const int64_t n = s.layer.at(i).groupSize;
      if (B % n != 0)
        fail("batch: " + std::to_string(B) + " images do not divide into "
             "routing groups of " + std::to_string(n));
      bt.noise[i] = st.get(name, {B / n, n * routerRows(s.layer.at(i), m.S),
                                  s.layer.at(i).E});
      used.insert(name);
    }
  for (const std::string &n : st.names())
    if (n.rfind("noise.", 0) == 0 && !used.count(n))
      bt.ignoredNoise.push_back(n);
  return bt;
}

struct LossResult {
  double loss = 0, ce = 0, aux = 0;
  int64_t correct = 0;
  std::map<int64_t, LayerLoss> layers; // averaged over the images
  uint64_t sig = 0;
  double margin = INFINITY;
};

LossResult evalLoss(const Model &m, const Batch &bt) {
  const Spec &s = m.s;
  const int64_t K = s.K;
  TrainCtx ctx;
  LossResult r;
  if (bt.B % largestGroup(s) != 0)
    fail("batch: " + std::to_string(bt.B) + " images do not divide into "
         "routing groups of " + std::to_string(largestGroup(s)));
  auto select = [&](int64_t i) {
    ctx.label = bt.labels[size_t(i)];
    for (const auto &kv : bt.noise)
      ctx.noise[kv.first] =
          &kv.second[size_t(i * routerRows(s.layer.at(kv.first), m.S) *
                            s.layer.at(kv.first).E)];
  };
  std::vector<Vec> logits = forward(m, bt.images.data(), bt.B, &ctx, select);
  for (int64_t i = 0; i < bt.B; ++i) {
    ctx.label = bt.labels[size_t(i)];
    const Vec &z = logits[size_t(i)];
    // Cross-entropy with label smoothing: target (1-eps) onehot + eps/K.
    const double lse = logSumExp(z.data(), K), eps = s.labelSmoothing;
    double ce = 0;
    for (int64_t c = 0; c < K; ++c) {
      double t = eps / double(K) + (c == ctx.label ? 1.0 - eps : 0.0);
      ce -= t * (z[size_t(c)] - lse);
    }
    r.ce += ce / double(bt.B);
    int64_t am = 0;
    for (int64_t c = 1; c < K; ++c)
      if (z[size_t(c)] > z[size_t(am)])
        am = c;
    r.correct += am == ctx.label;
  }
  for (auto &kv : ctx.layers) {
    LayerLoss l = kv.second;
    const double inv = 1.0 / double(bt.B);
    l.importance *= inv, l.load *= inv, l.balance *= inv, l.z *= inv,
        l.superClass *= inv;
    r.layers[kv.first] = l;
    r.aux += s.wImportance * l.importance + s.wLoad * l.load +
             s.wBalance * l.balance + s.wZ * l.z + s.wSuperClass * l.superClass;
  }
  r.loss = r.ce + r.aux;
  r.sig = ctx.sig;
  r.margin = ctx.margin;
  return r;
}

/// Every parameter of the model by name, with its shape and storage.
struct ParamRef {
  std::string name;
  std::vector<int64_t> shape;
  Vec *data;
};

std::vector<ParamRef> paramList(Model &m) {
  const Spec &s = m.s;
  const int64_t D = s.D;
  std::vector<ParamRef> out;
  auto add = [&](const std::string &n, std::vector<int64_t> shape, Vec &v) {
    out.push_back({n, std::move(shape), &v});
  };
  add("patch_embed.proj.weight", {s.C * s.P * s.P, D}, m.patchW);
  add("patch_embed.proj.bias", {D}, m.patchB);
  if (s.clsPool)
    add("cls_token", {D}, m.cls);
  add("pos_embed", {m.S, D}, m.pos);
  for (int64_t i = 0; i < s.L; ++i) {
    const std::string p = "blocks." + std::to_string(i) + ".";
    BlockWeights &b = m.blocks[size_t(i)];
    add(p + "norm1.weight", {D}, b.n1w);
    add(p + "norm1.bias", {D}, b.n1b);
    add(p + "attn.qkv.weight", {D, 3 * D}, b.qkvw);
    add(p + "attn.qkv.bias", {3 * D}, b.qkvb);
    add(p + "attn.proj.weight", {D, D}, b.projw);
    add(p + "attn.proj.bias", {D}, b.projb);
    add(p + "norm2.weight", {D}, b.n2w);
    add(p + "norm2.bias", {D}, b.n2b);
    if (!b.moe) {
      add(p + "mlp.fc1.weight", {D, s.Hm}, b.mlp.w1);
      add(p + "mlp.fc1.bias", {s.Hm}, b.mlp.b1);
      add(p + "mlp.fc2.weight", {s.Hm, D}, b.mlp.w2);
      add(p + "mlp.fc2.bias", {D}, b.mlp.b2);
    } else {
      const Layer &c = s.layer.at(i);
      const int64_t E = c.E, H = c.Hx;
      const int64_t slots = c.router == RouterKind::Soft ? c.slots : 1;
      if (!c.modelScope || i == *s.moeBlocks.begin())
        add(p + "moe.router.weight", {c.gateWidth(D), E * slots},
            b.moeW.router);
      if (c.cosine)
        add(p + "moe.router.scale", {1}, b.moeW.scale);
      if (c.gateDim > 0)
        add(p + "moe.router.projection", {D, c.gateDim}, b.moeW.projection);
      add(p + "moe.experts.fc1.weight", {E, D, H}, b.moeW.w1);
      add(p + "moe.experts.fc1.bias", {E, H}, b.moeW.b1);
      add(p + "moe.experts.fc2.weight", {E, H, D}, b.moeW.w2);
      add(p + "moe.experts.fc2.bias", {E, D}, b.moeW.b2);
      if (c.shared) {
        add(p + "moe.shared.fc1.weight", {D, H}, b.moeW.sharedFFN.w1);
        add(p + "moe.shared.fc1.bias", {H}, b.moeW.sharedFFN.b1);
        add(p + "moe.shared.fc2.weight", {H, D}, b.moeW.sharedFFN.w2);
        add(p + "moe.shared.fc2.bias", {D}, b.moeW.sharedFFN.b2);
      }
    }
  }
  add("norm.weight", {D}, m.normW);
  add("norm.bias", {D}, m.normB);
  add("head.weight", {D, s.K}, m.headW);
  add("head.bias", {s.K}, m.headB);
  std::sort(out.begin(), out.end(),
            [](const ParamRef &a, const ParamRef &b) { return a.name < b.name; });
  return out;
}

/// A safetensors file written from named tensors of raw little-endian bytes.
struct TensorOut {
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};

void writeSafeTensors(const std::string &path,
                      const std::map<std::string, TensorOut> &tensors,
                      const std::map<std::string, std::string> &metadata) {
  json header = json::object();
  if (!metadata.empty())
    header["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto &kv : tensors) {
    header[kv.first] = {{"dtype", kv.second.dtype},
                        {"shape", kv.second.shape},
                        {"data_offsets", {off, off + kv.second.bytes.size()}}};
    off += kv.second.bytes.size();
  }
  std::string h = header.dump();
  while (h.size() % 8)
    h += ' ';
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  if (!o)
    fail("cannot open '" + path + "' for writing");
  unsigned char n[8];
  for (int i = 0; i < 8; ++i)
    n[i] = (unsigned char)((uint64_t(h.size()) >> (8 * i)) & 0xff);
  o.write(reinterpret_cast<const char *>(n), 8);
  o.write(h.data(), std::streamsize(h.size()));
  for (const auto &kv : tensors)
    o.write(reinterpret_cast<const char *>(kv.second.bytes.data()),
            std::streamsize(kv.second.bytes.size()));
  o.close();
  if (!o)
    fail("cannot write '" + path + "'");
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)v);
  return buf;
}

json lossJson(const Model &m, const LossResult &r) {
  const Spec &s = m.s;
  json j;
  j["loss"] = r.loss;
  j["ce_loss"] = r.ce;
  j["aux_loss"] = r.aux;
  j["correct"] = r.correct;
  LayerLoss tot;
  json layers = json::object();
  for (const auto &kv : r.layers) {
    const LayerLoss &l = kv.second;
    json lj = {{"importance", l.importance}, {"balance", l.balance},
               {"z_loss", l.z}};
    if (noisyLayer(s, kv.first))
      lj["load"] = l.load;
    if (s.layer.at(kv.first).router == RouterKind::PerImage &&
        !s.superClassMap.empty())
      lj["super_class"] = l.superClass;
    layers[moePrefix(kv.first)] = lj;
    tot.importance += l.importance, tot.load += l.load, tot.balance += l.balance,
        tot.z += l.z, tot.superClass += l.superClass;
  }
  j["importance"] = tot.importance;
  j["load"] = tot.load;
  j["balance"] = tot.balance;
  j["z_loss"] = tot.z;
  j["super_class"] = tot.superClass;
  j["weights"] = {{"importance", s.wImportance}, {"load", s.wLoad},
                  {"balance", s.wBalance}, {"z_loss", s.wZ},
                  {"super_class", s.wSuperClass}};
  j["layers"] = layers;
  j["routing_margin"] = std::isfinite(r.margin) ? json(r.margin) : json(nullptr);
  j["routing_signature"] = hex64(r.sig);
  return j;
}

//===----------------------------------------------------------------------===//
// Commands
//===----------------------------------------------------------------------===//

struct Loaded {
  Spec spec;
  Model model;
  Batch batch;
};

Loaded loadAll(const std::string &specPath, const std::string &wPath,
               const std::string &batchPath) {
  Loaded l;
  l.spec = parseSpec(specPath);
  for (const auto &kv : l.spec.layer)
    if (l.spec.wSuperClass > 0 && kv.second.router != RouterKind::PerImage)
      fail("spec: the super_class loss needs a per-image router");
  SafeTensors st(wPath);
  l.model = loadModel(l.spec, st);
  SafeTensors bs(batchPath);
  l.batch = loadBatch(l.model, bs);
  for (const std::string &n : l.batch.ignoredNoise)
    std::cerr << "moec-reference: warning: '" << n
              << "' is not read (only noisy token-choice routers take noise)\n";
  return l;
}

int cmdLoss(const std::vector<std::string> &pos) {
  if (pos.size() != 4)
    fail("usage: moec-reference loss SPEC.json WEIGHTS.safetensors "
         "BATCH.safetensors");
  Loaded l = loadAll(pos[1], pos[2], pos[3]);
  LossResult r = evalLoss(l.model, l.batch);
  json j = lossJson(l.model, r);
  j["batch"] = l.batch.B;
  std::cout << j.dump(1) << "\n";
  return 0;
}

int cmdFdGrad(const std::vector<std::string> &pos, const std::string &perTensor,
              double h, uint64_t seed) {
  if (pos.size() != 5)
    fail("usage: moec-reference fdgrad SPEC.json WEIGHTS.safetensors "
         "BATCH.safetensors OUT.safetensors [--per-tensor K|all] [--h H] "
         "[--seed S]");
  if (!(h > 0) || !std::isfinite(h))
    fail("--h must be positive");
  const bool all = perTensor == "all";
  int64_t K = 0;
  if (!all) {
    try {
      size_t used = 0;
      K = std::stoll(perTensor, &used);
      if (used != perTensor.size() || K < 1)
        throw std::invalid_argument("");
    } catch (const std::exception &) {
      fail("--per-tensor: expected a positive integer or 'all', got '" +
           perTensor + "'");
    }
  }
  Loaded l = loadAll(pos[1], pos[2], pos[3]);
  Model &m = l.model;
  const LossResult base = evalLoss(m, l.batch);
  std::mt19937_64 rng(seed);
  std::map<std::string, TensorOut> out;
  int64_t nFlagged = 0, nEntries = 0;
  for (const ParamRef &p : paramList(m)) {
    Vec &v = *p.data;
    const int64_t n = int64_t(v.size());
    // Candidate order: every entry (all, or K >= n), else a seeded shuffle;
    // entries whose +-h evaluation changes a discrete decision are flagged
    // and replaced by the next candidate (at most K + 8 tries).
    std::vector<int64_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    int64_t want = n;
    if (!all && K < n) {
      for (int64_t i = n - 1; i > 0; --i) {
        std::uniform_int_distribution<int64_t> d(0, i);
        std::swap(order[size_t(i)], order[size_t(d(rng))]);
      }
      want = K;
    }
    std::vector<int32_t> idx, flags;
    std::vector<double> vals;
    int64_t good = 0, tried = 0;
    for (int64_t c = 0; c < n && good < want; ++c) {
      if (want < n && tried >= want + 8)
        break;
      ++tried;
      const int64_t i = order[size_t(c)];
      const double w0 = v[size_t(i)];
      v[size_t(i)] = w0 + h;
      LossResult rp = evalLoss(m, l.batch);
      v[size_t(i)] = w0 - h;
      LossResult rm = evalLoss(m, l.batch);
      v[size_t(i)] = w0;
      int32_t flag = 0;
      double val = (rp.loss - rm.loss) / (2 * h);
      if (rp.sig != base.sig || rm.sig != base.sig) {
        ++nFlagged;
        if (rp.sig == base.sig)
          flag = 1, val = (rp.loss - base.loss) / h;
        else if (rm.sig == base.sig)
          flag = 1, val = (base.loss - rm.loss) / h;
        else
          flag = 2, val = NAN;
      } else {
        ++good;
      }
      idx.push_back(int32_t(i));
      flags.push_back(flag);
      vals.push_back(val);
    }
    nEntries += int64_t(idx.size());
    const int64_t cnt = int64_t(idx.size());
    TensorOut ti{"I32", {cnt}, std::vector<unsigned char>(size_t(cnt) * 4)};
    TensorOut tf{"I32", {cnt}, std::vector<unsigned char>(size_t(cnt) * 4)};
    TensorOut tv{"F64", {cnt}, std::vector<unsigned char>(size_t(cnt) * 8)};
    for (int64_t j = 0; j < cnt; ++j) {
      for (int b = 0; b < 4; ++b) {
        ti.bytes[size_t(4 * j + b)] =
            (unsigned char)((uint32_t(idx[size_t(j)]) >> (8 * b)) & 0xff);
        tf.bytes[size_t(4 * j + b)] =
            (unsigned char)((uint32_t(flags[size_t(j)]) >> (8 * b)) & 0xff);
      }
      storeF64LE(&tv.bytes[size_t(8 * j)], vals[size_t(j)]);
    }
    out["fd." + p.name + ".index"] = std::move(ti);
    out["fd." + p.name + ".flag"] = std::move(tf);
    out["fd." + p.name + ".value"] = std::move(tv);
  }
  char hbuf[64];
  std::snprintf(hbuf, sizeof hbuf, "%.17g", h);
  std::map<std::string, std::string> meta = {
      {"h", hbuf},
      {"seed", std::to_string(seed)},
      {"per_tensor", all ? "all" : std::to_string(K)},
      {"loss", lossJson(m, base).dump()}};
  writeSafeTensors(pos[4], out, meta);
  json summary = lossJson(m, base);
  summary["batch"] = l.batch.B;
  summary["fd_entries"] = nEntries;
  summary["fd_flagged"] = nFlagged;
  std::cout << summary.dump(1) << "\n";
  return 0;
}

/// moec-reference routing SPEC WEIGHTS IMAGES.f32 OUT.safetensors: every
/// MoE layer's per-image routing statistics (RoutingStats), as F32 tensors
/// named as moec's analyze entry point names them.
int cmdRouting(const std::vector<std::string> &pos) {
  if (pos.size() != 5)
    fail("usage: moec-reference routing SPEC.json WEIGHTS.safetensors "
         "IMAGES.f32 OUT.safetensors");
  Spec spec = parseSpec(pos[1]);
  SafeTensors st(pos[2]);
  Model model = loadModel(spec, st);
  std::vector<unsigned char> raw = readFile(pos[3]);
  const uint64_t imgBytes = uint64_t(spec.C * spec.H * spec.W) * 4;
  const size_t group = size_t(largestGroup(spec));
  if (raw.empty() || raw.size() % (imgBytes * group) != 0)
    fail(pos[3] + ": not a positive multiple of " + std::to_string(group) +
         " images of " + std::to_string(imgBytes) + " bytes");
  const size_t n = raw.size() / imgBytes, per = size_t(imgBytes / 4);
  std::vector<float> imgs(n * per);
  for (size_t i = 0; i < imgs.size(); ++i)
    imgs[i] = loadF32LE(&raw[4 * i]);
  RoutingRecorder recorder;
  recorder.images = int64_t(n);
  routingRecorder = &recorder;
  for (size_t i = 0; i < n; i += group) {
    recorder.first = int64_t(i);
    forward(model, &imgs[i * per], int64_t(group));
  }
  routingRecorder = nullptr;
  std::map<std::string, TensorOut> out;
  auto put = [&](const std::string &name, const std::vector<double> &v,
                 std::vector<int64_t> shape) {
    TensorOut t{"F32", std::move(shape), std::vector<unsigned char>(v.size() * 4)};
    for (size_t i = 0; i < v.size(); ++i)
      storeF32LE(&t.bytes[4 * i], float(v[i]));
    out[name] = std::move(t);
  };
  for (const auto &[block, stats] : recorder.layers) {
    const std::string layer = "blocks." + std::to_string(block) + ".moe";
    const int64_t e = int64_t(stats.tokens.size() / n);
    put("routing_tokens." + layer, stats.tokens, {int64_t(n), e});
    put("routing_weights." + layer, stats.weights, {int64_t(n), e});
    put("routing_probs." + layer, stats.probs, {int64_t(n), e});
    put("routing_entropy." + layer, stats.entropy, {int64_t(n)});
  }
  writeSafeTensors(pos[4], out, {});
  return 0;
}

int cmdLogits(const std::vector<std::string> &pos, bool f64) {
  if (pos.size() != 4)
    fail("usage: moec-reference [--f64] SPEC.json WEIGHTS.safetensors IMAGES.f32 "
         "OUT.f32\n"
         "       moec-reference loss SPEC.json WEIGHTS.safetensors "
         "BATCH.safetensors\n"
         "       moec-reference fdgrad SPEC.json WEIGHTS.safetensors "
         "BATCH.safetensors OUT.safetensors [--per-tensor K|all] [--h H] "
         "[--seed S]");

  Spec spec = parseSpec(pos[0]);
  SafeTensors st(pos[1]);
  Model model = loadModel(spec, st);

  std::vector<unsigned char> raw = readFile(pos[2]);
  const uint64_t imgBytes = uint64_t(spec.C * spec.H * spec.W) * 4;
  if (raw.empty() || raw.size() % imgBytes != 0)
    fail(pos[2] + ": size " + std::to_string(raw.size()) +
         " is not a positive multiple of one image (" + std::to_string(imgBytes) +
         " bytes = " + std::to_string(spec.C) + "x" + std::to_string(spec.H) + "x" +
         std::to_string(spec.W) + " f32)");
  const size_t n = raw.size() / imgBytes;
  const size_t per = size_t(spec.C * spec.H * spec.W);
  std::vector<float> imgs(n * per);
  for (size_t i = 0; i < imgs.size(); ++i)
    imgs[i] = loadF32LE(&raw[4 * i]);

  const size_t esz = f64 ? 8 : 4;
  std::vector<unsigned char> out(n * size_t(spec.K) * esz);
  // Routing groups: the images in groups of n consecutive ones, as the
  // compiled model sees a batch whose size n divides.
  const size_t group = size_t(largestGroup(spec));
  if (n % group != 0)
    fail(pos[2] + ": " + std::to_string(n) + " images do not divide into "
         "routing groups of " + std::to_string(group));
  std::vector<Vec> all;
  for (size_t i = 0; i < n; i += group) {
    std::vector<Vec> part = forward(model, &imgs[i * per], int64_t(group));
    all.insert(all.end(), part.begin(), part.end());
  }
  for (size_t i = 0; i < n; ++i) {
    const Vec &logits = all[i];
    for (int64_t c = 0; c < spec.K; ++c) {
      unsigned char *p = &out[(i * size_t(spec.K) + size_t(c)) * esz];
      if (f64)
        storeF64LE(p, logits[size_t(c)]);
      else
        storeF32LE(p, float(logits[size_t(c)]));
    }
  }
  std::ofstream o(pos[3], std::ios::binary | std::ios::trunc);
  if (!o)
    fail("cannot open '" + pos[3] + "' for writing");
  o.write(reinterpret_cast<const char *>(out.data()), std::streamsize(out.size()));
  o.close();
  if (!o)
    fail("cannot write '" + pos[3] + "'");
  return 0;
}

int run(int argc, char **argv) {
  std::vector<std::string> pos;
  bool f64 = false;
  std::string perTensor = "16";
  double h = 1e-5;
  uint64_t seed = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc)
        fail("option '" + a + "' needs a value");
      return argv[++i];
    };
    if (a == "--f64") {
      f64 = true;
    } else if (a == "--per-tensor") {
      perTensor = value();
    } else if (a == "--h") {
      std::string v = value();
      try {
        h = std::stod(v);
      } catch (const std::exception &) {
        fail("--h: expected a number, got '" + v + "'");
      }
    } else if (a == "--seed") {
      std::string v = value();
      try {
        seed = std::stoull(v);
      } catch (const std::exception &) {
        fail("--seed: expected an unsigned integer, got '" + v + "'");
      }
    } else if (a.size() > 1 && a[0] == '-' && a[1] == '-') {
      fail("unknown option '" + a + "'");
    } else {
      pos.push_back(a);
    }
  }
  if (!pos.empty() && pos[0] == "loss")
    return cmdLoss(pos);
  if (!pos.empty() && pos[0] == "fdgrad")
    return cmdFdGrad(pos, perTensor, h, seed);
  if (!pos.empty() && pos[0] == "routing")
    return cmdRouting(pos);
  return cmdLogits(pos, f64);
}

} // namespace
} // namespace moecref

int main(int argc, char **argv) {
  try {
    return moecref::run(argc, argv);
  } catch (const std::exception &e) {
    std::cerr << "moec-reference: error: " << e.what() << "\n";
    return 1;
  }
}
