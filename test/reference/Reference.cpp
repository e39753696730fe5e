//===- Reference.cpp - double-precision ViMoE reference forward pass ------===//
//
// moec-reference SPEC.json WEIGHTS.safetensors IMAGES.f32 OUT.f32
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

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

using json = nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string &msg) { throw std::runtime_error(msg); }

//===----------------------------------------------------------------------===//
// Files
//===----------------------------------------------------------------------===//

std::vector<unsigned char> readFile(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    fail("cannot open '" + path + "'");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)),
                                   std::istreambuf_iterator<char>());
  if (in.bad())
    fail("cannot read '" + path + "'");
  return bytes;
}

float loadF32LE(const unsigned char *p) {
  uint32_t u = uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) |
               (uint32_t(p[3]) << 24);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void storeF32LE(unsigned char *p, float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  for (int i = 0; i < 4; ++i)
    p[i] = (unsigned char)((u >> (8 * i)) & 0xff);
}

void storeF64LE(unsigned char *p, double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  for (int i = 0; i < 8; ++i)
    p[i] = (unsigned char)((u >> (8 * i)) & 0xff);
}

std::string shapeStr(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

//===----------------------------------------------------------------------===//
// Safetensors (F32 only)
//===----------------------------------------------------------------------===//

class SafeTensors {
public:
  explicit SafeTensors(const std::string &path) : path_(path) {
    bytes_ = readFile(path);
    if (bytes_.size() < 8)
      fail(path + ": not a safetensors file (shorter than 8 bytes)");
    uint64_t n = 0;
    for (int i = 0; i < 8; ++i)
      n |= uint64_t(bytes_[i]) << (8 * i);
    if (n > bytes_.size() - 8)
      fail(path + ": header size " + std::to_string(n) + " exceeds file size");
    dataBegin_ = 8 + n;
    json header;
    try {
      header = json::parse(bytes_.begin() + 8, bytes_.begin() + 8 + n);
    } catch (const json::exception &e) {
      fail(path + ": bad safetensors header: " + e.what());
    }
    if (!header.is_object())
      fail(path + ": safetensors header is not a JSON object");
    uint64_t dataSize = bytes_.size() - dataBegin_;
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__")
        continue;
      const json &t = it.value();
      const std::string where = path + ": tensor '" + it.key() + "'";
      if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") ||
          !t.contains("data_offsets"))
        fail(where + ": needs dtype, shape and data_offsets");
      Entry e;
      if (!t["dtype"].is_string())
        fail(where + ": dtype is not a string");
      e.dtype = t["dtype"].get<std::string>();
      if (!t["shape"].is_array())
        fail(where + ": shape is not an array");
      uint64_t numel = 1;
      for (const json &d : t["shape"]) {
        if (!d.is_number_integer() || d.get<int64_t>() < 0)
          fail(where + ": bad dimension in shape");
        e.shape.push_back(d.get<int64_t>());
        numel *= uint64_t(d.get<int64_t>());
      }
      const json &off = t["data_offsets"];
      if (!off.is_array() || off.size() != 2 || !off[0].is_number_integer() ||
          !off[1].is_number_integer() || off[0].get<int64_t>() < 0 ||
          off[1].get<int64_t>() < off[0].get<int64_t>())
        fail(where + ": bad data_offsets");
      e.begin = off[0].get<uint64_t>();
      e.end = off[1].get<uint64_t>();
      if (e.end > dataSize)
        fail(where + ": data_offsets beyond the end of the file");
      if (e.dtype == "F32" && e.end - e.begin != numel * 4)
        fail(where + ": data_offsets span " + std::to_string(e.end - e.begin) +
             " bytes, shape " + shapeStr(e.shape) + " needs " +
             std::to_string(numel * 4));
      entries_[it.key()] = e;
    }
  }

  bool has(const std::string &name) const { return entries_.count(name) != 0; }

  /// The tensor `name` as doubles, checking dtype F32 and the exact shape.
  std::vector<double> get(const std::string &name,
                          const std::vector<int64_t> &shape) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
      fail(path_ + ": missing tensor '" + name + "' (expected shape " +
           shapeStr(shape) + ")");
    const Entry &e = it->second;
    if (e.dtype != "F32")
      fail(path_ + ": tensor '" + name + "' has dtype " + e.dtype +
           ", only F32 is supported");
    if (e.shape != shape)
      fail(path_ + ": tensor '" + name + "' has shape " + shapeStr(e.shape) +
           ", expected " + shapeStr(shape));
    size_t numel = (e.end - e.begin) / 4;
    std::vector<double> out(numel);
    const unsigned char *p = bytes_.data() + dataBegin_ + e.begin;
    for (size_t i = 0; i < numel; ++i)
      out[i] = double(loadF32LE(p + 4 * i));
    return out;
  }

private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
  };
  std::string path_;
  std::vector<unsigned char> bytes_;
  uint64_t dataBegin_ = 0;
  std::map<std::string, Entry> entries_;
};

//===----------------------------------------------------------------------===//
// Spec
//===----------------------------------------------------------------------===//

enum class Act { Gelu, GeluTanh, Relu, Silu };
enum class RouterKind { TokenChoice, ExpertChoice, Soft, PerImage, Sinkhorn };

struct Spec {
  int64_t C = 0, H = 0, W = 0, P = 0, D = 0, L = 0, heads = 0, K = 0, Hm = 0;
  bool clsPool = true;
  Act act = Act::Gelu;
  double eps = 1e-6;

  bool hasMoE = false;
  std::set<int64_t> moeBlocks;
  int64_t E = 0, k = 1, Hx = 0; // experts, top_k, expert_hidden
  RouterKind router = RouterKind::TokenChoice;
  int64_t iterations = 3, slots = 1;
  double cf = 1.0;
  bool shared = false;
};

int64_t getInt(const json &obj, const std::string &key, const std::string &ctx) {
  if (!obj.contains(key))
    fail("spec: missing '" + ctx + key + "'");
  const json &v = obj.at(key);
  if (v.is_number_integer())
    return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15)
      return int64_t(d);
  }
  fail("spec: '" + ctx + key + "' must be an integer");
}

int64_t getPosInt(const json &obj, const std::string &key, const std::string &ctx) {
  int64_t v = getInt(obj, key, ctx);
  if (v <= 0)
    fail("spec: '" + ctx + key + "' must be positive");
  return v;
}

double getNum(const json &obj, const std::string &key, const std::string &ctx) {
  if (!obj.contains(key))
    fail("spec: missing '" + ctx + key + "'");
  const json &v = obj.at(key);
  if (!v.is_number())
    fail("spec: '" + ctx + key + "' must be a number");
  return v.get<double>();
}

std::string getStr(const json &obj, const std::string &key, const std::string &ctx) {
  if (!obj.contains(key))
    fail("spec: missing '" + ctx + key + "'");
  const json &v = obj.at(key);
  if (!v.is_string())
    fail("spec: '" + ctx + key + "' must be a string");
  return v.get<std::string>();
}

json preset(const std::string &name) {
  json m = {{"input", {{"channels", 3}, {"height", 224}, {"width", 224}}},
            {"patch_size", 16},
            {"width", 192},
            {"depth", 12},
            {"heads", 3},
            {"mlp_ratio", 4},
            {"classes", 1000},
            {"pooling", "cls"}};
  if (name == "vit-tiny")
    return m;
  if (name == "vit-small") {
    m["width"] = 384;
    m["heads"] = 6;
    return m;
  }
  if (name == "vit-base") {
    m["width"] = 768;
    m["heads"] = 12;
    return m;
  }
  fail("spec: unknown preset '" + name + "' in 'extends'");
}

Spec parseSpec(const std::string &path) {
  std::vector<unsigned char> bytes = readFile(path);
  json root;
  try {
    root = json::parse(bytes.begin(), bytes.end());
  } catch (const json::exception &e) {
    fail(path + ": bad JSON: " + e.what());
  }
  if (!root.is_object())
    fail(path + ": spec is not a JSON object");

  // The model object: preset (if any) with "model" merged key by key.
  json model = json::object();
  if (root.contains("extends") && !root["extends"].is_null()) {
    if (!root["extends"].is_string())
      fail("spec: 'extends' must be a string");
    model = preset(root["extends"].get<std::string>());
  }
  if (root.contains("model") && !root["model"].is_null()) {
    const json &m = root["model"];
    if (!m.is_object())
      fail("spec: 'model' must be an object");
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (it.key() == "input" && it.value().is_object() && model.contains("input") &&
          model["input"].is_object()) {
        for (auto jt = it.value().begin(); jt != it.value().end(); ++jt)
          model["input"][jt.key()] = jt.value();
      } else {
        model[it.key()] = it.value();
      }
    }
  }

  Spec s;
  if (!model.contains("input") || !model["input"].is_object())
    fail("spec: missing 'model.input'");
  const json &in = model["input"];
  s.C = getPosInt(in, "channels", "model.input.");
  s.H = getPosInt(in, "height", "model.input.");
  s.W = getPosInt(in, "width", "model.input.");
  s.P = getPosInt(model, "patch_size", "model.");
  s.D = getPosInt(model, "width", "model.");
  s.L = getPosInt(model, "depth", "model.");
  s.heads = getPosInt(model, "heads", "model.");
  s.K = getPosInt(model, "classes", "model.");
  double ratio = model.contains("mlp_ratio") ? getNum(model, "mlp_ratio", "model.") : 4.0;
  s.Hm = (int64_t)std::llround(ratio * double(s.D));
  if (s.Hm <= 0)
    fail("spec: mlp_ratio * width must be positive");
  if (model.contains("pooling")) {
    std::string p = getStr(model, "pooling", "model.");
    if (p == "cls")
      s.clsPool = true;
    else if (p == "mean")
      s.clsPool = false;
    else
      fail("spec: unknown pooling '" + p + "'");
  }
  if (model.contains("activation")) {
    std::string a = getStr(model, "activation", "model.");
    if (a == "gelu")
      s.act = Act::Gelu;
    else if (a == "gelu_tanh")
      s.act = Act::GeluTanh;
    else if (a == "relu")
      s.act = Act::Relu;
    else if (a == "silu")
      s.act = Act::Silu;
    else
      fail("spec: unknown activation '" + a + "'");
  }
  if (model.contains("layer_norm_eps")) {
    s.eps = getNum(model, "layer_norm_eps", "model.");
    if (!(s.eps >= 0))
      fail("spec: layer_norm_eps must be non-negative");
  }
  if (s.H % s.P || s.W % s.P)
    fail("spec: image size must be a multiple of patch_size");
  if (s.D % s.heads)
    fail("spec: width must be a multiple of heads");

  if (root.contains("moe") && !root["moe"].is_null()) {
    const json &moe = root["moe"];
    if (!moe.is_object())
      fail("spec: 'moe' must be an object");
    s.hasMoE = true;
    s.E = getPosInt(moe, "experts", "moe.");
    s.k = moe.contains("top_k") ? getPosInt(moe, "top_k", "moe.") : 1;
    s.Hx = moe.contains("expert_hidden") ? getPosInt(moe, "expert_hidden", "moe.") : s.Hm;
    if (moe.contains("shared_expert")) {
      if (!moe["shared_expert"].is_boolean())
        fail("spec: 'moe.shared_expert' must be a boolean");
      s.shared = moe["shared_expert"].get<bool>();
    }
    if (moe.contains("capacity_factor")) {
      const json &cf = moe["capacity_factor"];
      if (cf.is_number())
        s.cf = cf.get<double>();
      else if (cf.is_object() && cf.contains("eval"))
        s.cf = getNum(cf, "eval", "moe.capacity_factor.");
      else
        fail("spec: 'moe.capacity_factor' must be a number or an object with 'eval'");
      if (!(s.cf > 0) || !std::isfinite(s.cf))
        fail("spec: capacity_factor must be positive");
    }
    if (!moe.contains("router") || !moe["router"].is_object())
      fail("spec: missing 'moe.router'");
    const json &r = moe["router"];
    std::string kind = getStr(r, "kind", "moe.router.");
    if (kind == "token-choice")
      s.router = RouterKind::TokenChoice;
    else if (kind == "expert-choice")
      s.router = RouterKind::ExpertChoice;
    else if (kind == "soft")
      s.router = RouterKind::Soft;
    else if (kind == "per-image")
      s.router = RouterKind::PerImage;
    else if (kind == "sinkhorn")
      s.router = RouterKind::Sinkhorn;
    else
      fail("spec: unknown router kind '" + kind + "'");
    if (r.contains("iterations"))
      s.iterations = getInt(r, "iterations", "moe.router.");
    if (s.iterations < 0)
      fail("spec: 'moe.router.iterations' must be non-negative");
    if (r.contains("slots_per_expert"))
      s.slots = getPosInt(r, "slots_per_expert", "moe.router.");
    if ((s.router == RouterKind::TokenChoice || s.router == RouterKind::Sinkhorn ||
         s.router == RouterKind::PerImage) &&
        s.k > s.E)
      fail("spec: top_k exceeds the number of experts");

    if (!moe.contains("placement") || !moe["placement"].is_object())
      fail("spec: missing 'moe.placement'");
    const json &pl = moe["placement"];
    std::string rule = getStr(pl, "rule", "moe.placement.");
    if (rule == "every-n") {
      int64_t n = getPosInt(pl, "n", "moe.placement.");
      for (int64_t i = 0; i < s.L; ++i)
        if (i % n == n - 1)
          s.moeBlocks.insert(i);
    } else if (rule == "last-n") {
      int64_t n = getPosInt(pl, "n", "moe.placement.");
      for (int64_t j = 0; j < n; ++j) {
        int64_t b = s.L - 1 - 2 * j;
        if (b < 0)
          fail("spec: placement last-n with n = " + std::to_string(n) +
               " needs more than " + std::to_string(s.L) + " blocks");
        s.moeBlocks.insert(b);
      }
    } else if (rule == "blocks") {
      if (!pl.contains("blocks") || !pl["blocks"].is_array())
        fail("spec: placement 'blocks' needs a 'blocks' array");
      for (const json &b : pl["blocks"]) {
        if (!b.is_number_integer())
          fail("spec: placement blocks must be integers");
        int64_t i = b.get<int64_t>();
        if (i < 0 || i >= s.L)
          fail("spec: placement block " + std::to_string(i) + " out of range");
        s.moeBlocks.insert(i);
      }
    } else {
      fail("spec: unknown placement rule '" + rule + "'");
    }
  }
  return s;
}

//===----------------------------------------------------------------------===//
// Math helpers (row-major matrices of doubles)
//===----------------------------------------------------------------------===//

using Vec = std::vector<double>;

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

//===----------------------------------------------------------------------===//
// Model
//===----------------------------------------------------------------------===//

struct FFNWeights {
  Vec w1, b1, w2, b2; // [D, H], [H], [H, D], [D]
};

struct MoEWeights {
  Vec router;         // [D, E * slots]
  Vec w1, b1, w2, b2; // [E, D, H], [E, H], [E, H, D], [E, D]
  bool shared = false;
  FFNWeights sharedFFN;
};

struct BlockWeights {
  Vec n1w, n1b, qkvw, qkvb, projw, projb, n2w, n2b;
  bool moe = false;
  FFNWeights mlp;
  MoEWeights moeW;
};

struct Model {
  Spec s;
  int64_t T = 0, S = 0;
  Vec patchW, patchB, cls, pos, normW, normB, headW, headB;
  std::vector<BlockWeights> blocks;
};

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
      const int64_t E = s.E, H = s.Hx;
      const int64_t slots = s.router == RouterKind::Soft ? s.slots : 1;
      b.moeW.router = st.get(p + "moe.router.weight", {D, E * slots});
      b.moeW.w1 = st.get(p + "moe.experts.fc1.weight", {E, D, H});
      b.moeW.b1 = st.get(p + "moe.experts.fc1.bias", {E, H});
      b.moeW.w2 = st.get(p + "moe.experts.fc2.weight", {E, H, D});
      b.moeW.b2 = st.get(p + "moe.experts.fc2.bias", {E, D});
      b.moeW.shared = s.shared;
      if (s.shared) {
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

/// fc2(act(fc1(x))) for x [n, D] with explicit weight pointers.
Vec mlp(const Vec &x, int64_t n, int64_t D, int64_t H, const double *w1,
        const double *b1, const double *w2, const double *b2, Act act) {
  Vec h = linear(x, n, D, w1, b1, H);
  for (double &v : h)
    v = activate(act, v);
  return linear(h, n, H, w2, b2, D);
}

/// Expert e applied to a single vector v [D].
Vec expert(const Model &m, const MoEWeights &w, int64_t e, const Vec &v) {
  const int64_t D = m.s.D, H = m.s.Hx;
  return mlp(v, 1, D, H, &w.w1[size_t(e * D * H)], &w.b1[size_t(e * H)],
             &w.w2[size_t(e * H * D)], &w.b2[size_t(e * D)], m.s.act);
}

Vec row(const Vec &x, int64_t r, int64_t d) {
  return Vec(x.begin() + r * d, x.begin() + (r + 1) * d);
}

void addScaled(Vec &y, int64_t r, int64_t d, double g, const Vec &v) {
  for (int64_t i = 0; i < d; ++i)
    y[size_t(r * d + i)] += g * v[size_t(i)];
}

/// Capacity-limited slot filling shared by token-choice and sinkhorn:
/// choice[s] lists token s's experts in priority order; gates G[s][e].
Vec fillAndCombine(const Model &m, const MoEWeights &w, const Vec &h,
                   const std::vector<std::vector<int64_t>> &choice, const Vec &G) {
  const int64_t S = m.S, D = m.s.D, E = m.s.E, k = m.s.k;
  const double cap = std::ceil(double(k) * double(S) * m.s.cf / double(E));
  const int64_t C = std::min<int64_t>(S, std::max<int64_t>(1, (int64_t)cap));
  std::vector<int64_t> fill(size_t(E), 0);
  Vec y(size_t(S * D), 0.0);
  for (int64_t r = 0; r < k; ++r)
    for (int64_t s = 0; s < S; ++s) {
      int64_t e = choice[size_t(s)][size_t(r)];
      if (fill[size_t(e)] < C) {
        ++fill[size_t(e)];
        addScaled(y, s, D, G[size_t(s * E + e)], expert(m, w, e, row(h, s, D)));
      }
    }
  return y;
}

Vec moeForward(const Model &m, const MoEWeights &w, const Vec &h) {
  const Spec &s = m.s;
  const int64_t S = m.S, D = s.D, E = s.E;
  Vec y(size_t(S * D), 0.0);
  switch (s.router) {
  case RouterKind::TokenChoice:
  case RouterKind::Sinkhorn: {
    Vec G = linear(h, S, D, w.router.data(), nullptr, E);
    for (int64_t t = 0; t < S; ++t)
      softmaxStrided(&G[size_t(t * E)], E, 1);
    Vec Q = G;
    if (s.router == RouterKind::Sinkhorn) {
      const double target = double(S) / double(E);
      for (int64_t it = 0; it < s.iterations; ++it) {
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
    }
    std::vector<std::vector<int64_t>> choice;
    for (int64_t t = 0; t < S; ++t)
      choice.push_back(topK(&Q[size_t(t * E)], E, s.k));
    y = fillAndCombine(m, w, h, choice, G);
    break;
  }
  case RouterKind::ExpertChoice: {
    Vec G = linear(h, S, D, w.router.data(), nullptr, E);
    for (int64_t t = 0; t < S; ++t)
      softmaxStrided(&G[size_t(t * E)], E, 1);
    const double cap = std::ceil(double(S) * s.cf / double(E));
    const int64_t C = std::min<int64_t>(S, std::max<int64_t>(1, (int64_t)cap));
    for (int64_t e = 0; e < E; ++e) {
      Vec col(static_cast<size_t>(S));
      for (int64_t t = 0; t < S; ++t)
        col[size_t(t)] = G[size_t(t * E + e)];
      for (int64_t t : topK(col.data(), S, C))
        addScaled(y, t, D, G[size_t(t * E + e)], expert(m, w, e, row(h, t, D)));
    }
    break;
  }
  case RouterKind::Soft: {
    const int64_t J = E * s.slots;
    Vec Lg = linear(h, S, D, w.router.data(), nullptr, J);
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
      Y[size_t(j)] = expert(m, w, j / s.slots, X);
    }
    for (int64_t t = 0; t < S; ++t)
      for (int64_t j = 0; j < J; ++j)
        addScaled(y, t, D, Cw[size_t(t * J + j)], Y[size_t(j)]);
    break;
  }
  case RouterKind::PerImage: {
    Vec mean(size_t(D), 0.0);
    for (int64_t t = 0; t < S; ++t)
      for (int64_t i = 0; i < D; ++i)
        mean[size_t(i)] += h[size_t(t * D + i)];
    for (double &v : mean)
      v /= double(S);
    Vec G = linear(mean, 1, D, w.router.data(), nullptr, E);
    softmaxStrided(G.data(), E, 1);
    for (int64_t e : topK(G.data(), E, s.k))
      for (int64_t t = 0; t < S; ++t)
        addScaled(y, t, D, G[size_t(e)], expert(m, w, e, row(h, t, D)));
    break;
  }
  }
  if (w.shared) {
    const FFNWeights &f = w.sharedFFN;
    Vec z = mlp(h, S, D, s.Hx, f.w1.data(), f.b1.data(), f.w2.data(), f.b2.data(),
                s.act);
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

Vec forward(const Model &m, const float *img) {
  const Spec &s = m.s;
  const int64_t D = s.D, P = s.P, S = m.S, gw = s.W / P, gh = s.H / P;
  const int64_t pd = s.C * P * P;
  // 1. Patches, row-major; patch vector index c*P*P + dy*P + dx.
  Vec patches(size_t(m.T * pd));
  for (int64_t py = 0; py < gh; ++py)
    for (int64_t px = 0; px < gw; ++px) {
      int64_t t = py * gw + px;
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t dy = 0; dy < P; ++dy)
          for (int64_t dx = 0; dx < P; ++dx)
            patches[size_t(t * pd + c * P * P + dy * P + dx)] = double(
                img[size_t(c * s.H * s.W + (py * P + dy) * s.W + (px * P + dx))]);
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
  // 3. Blocks.
  for (const BlockWeights &b : m.blocks) {
    Vec h = layerNorm(x, S, D, b.n1w, b.n1b, s.eps);
    Vec a = attention(m, b, h);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += a[i];
    Vec h2 = layerNorm(x, S, D, b.n2w, b.n2b, s.eps);
    Vec f = b.moe ? moeForward(m, b.moeW, h2)
                  : mlp(h2, S, D, s.Hm, b.mlp.w1.data(), b.mlp.b1.data(),
                        b.mlp.w2.data(), b.mlp.b2.data(), s.act);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += f[i];
  }
  // 4. Final norm, pooling, head.
  Vec xn = layerNorm(x, S, D, m.normW, m.normB, s.eps);
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
  return linear(feat, 1, D, m.headW.data(), m.headB.data(), s.K);
}

int run(int argc, char **argv) {
  std::vector<std::string> pos;
  bool f64 = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--f64")
      f64 = true;
    else if (a.size() > 1 && a[0] == '-' && a[1] == '-')
      fail("unknown option '" + a + "'");
    else
      pos.push_back(a);
  }
  if (pos.size() != 4)
    fail("usage: moec-reference [--f64] SPEC.json WEIGHTS.safetensors IMAGES.f32 "
         "OUT.f32");

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
  for (size_t i = 0; i < n; ++i) {
    Vec logits = forward(model, &imgs[i * per]);
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

} // namespace

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception &e) {
    std::cerr << "moec-reference: error: " << e.what() << "\n";
    return 1;
  }
}
