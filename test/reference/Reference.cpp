//===- Reference.cpp - double-precision ViMoE reference forward pass ------===//
//
// moec-reference SPEC.json WEIGHTS.safetensors IMAGES.f32 OUT.f32
// moec-reference loss SPEC.json WEIGHTS.safetensors BATCH.safetensors
// moec-reference fdgrad SPEC.json WEIGHTS BATCH OUT.safetensors [--per-tensor K|all]
//                [--h H] [--seed S]
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
#include <functional>
#include <numeric>
#include <random>
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
      const uint64_t esz = e.dtype == "F64" ? 8 : 4;
      if ((e.dtype == "F32" || e.dtype == "F64" || e.dtype == "I32") &&
          e.end - e.begin != numel * esz)
        fail(where + ": data_offsets span " + std::to_string(e.end - e.begin) +
             " bytes, shape " + shapeStr(e.shape) + " needs " +
             std::to_string(numel * esz));
      entries_[it.key()] = e;
    }
  }

  bool has(const std::string &name) const { return entries_.count(name) != 0; }

  /// The shape of tensor `name` (which must exist).
  std::vector<int64_t> shapeOf(const std::string &name) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
      fail(path_ + ": missing tensor '" + name + "'");
    return it->second.shape;
  }

  /// The names of all tensors (sorted).
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto &kv : entries_)
      out.push_back(kv.first);
    return out;
  }

  /// The tensor `name` as doubles, checking dtype F32 (or F64) and the exact
  /// shape.
  std::vector<double> get(const std::string &name,
                          const std::vector<int64_t> &shape) const {
    const Entry &e = find(name, shape);
    if (e.dtype != "F32" && e.dtype != "F64")
      fail(path_ + ": tensor '" + name + "' has dtype " + e.dtype +
           ", only F32 (or F64) is supported");
    const bool f64 = e.dtype == "F64";
    size_t numel = (e.end - e.begin) / (f64 ? 8 : 4);
    std::vector<double> out(numel);
    const unsigned char *p = bytes_.data() + dataBegin_ + e.begin;
    for (size_t i = 0; i < numel; ++i) {
      if (f64) {
        uint64_t u = 0;
        for (int b = 0; b < 8; ++b)
          u |= uint64_t(p[8 * i + size_t(b)]) << (8 * b);
        std::memcpy(&out[i], &u, 8);
      } else {
        out[i] = double(loadF32LE(p + 4 * i));
      }
    }
    return out;
  }

  /// The tensor `name` as int32 values, checking dtype I32 and the shape.
  std::vector<int32_t> getI32(const std::string &name,
                              const std::vector<int64_t> &shape) const {
    const Entry &e = find(name, shape);
    if (e.dtype != "I32")
      fail(path_ + ": tensor '" + name + "' has dtype " + e.dtype +
           ", expected I32");
    size_t numel = (e.end - e.begin) / 4;
    std::vector<int32_t> out(numel);
    const unsigned char *p = bytes_.data() + dataBegin_ + e.begin;
    for (size_t i = 0; i < numel; ++i) {
      uint32_t u = uint32_t(p[4 * i]) | (uint32_t(p[4 * i + 1]) << 8) |
                   (uint32_t(p[4 * i + 2]) << 16) | (uint32_t(p[4 * i + 3]) << 24);
      out[i] = int32_t(u);
    }
    return out;
  }

private:
  struct Entry {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0, end = 0;
  };
  const Entry &find(const std::string &name,
                    const std::vector<int64_t> &shape) const {
    auto it = entries_.find(name);
    if (it == entries_.end())
      fail(path_ + ": missing tensor '" + name + "' (expected shape " +
           shapeStr(shape) + ")");
    if (it->second.shape != shape)
      fail(path_ + ": tensor '" + name + "' has shape " +
           shapeStr(it->second.shape) + ", expected " + shapeStr(shape));
    return it->second;
  }
  std::string path_;
  std::vector<unsigned char> bytes_;
  uint64_t dataBegin_ = 0;
  std::map<std::string, Entry> entries_;
};

//===----------------------------------------------------------------------===//
// Spec
//===----------------------------------------------------------------------===//

enum class Act { Gelu, GeluTanh, Relu, Silu };
enum class RouterKind {
  TokenChoice,
  ExpertChoice,
  Soft,
  PerImage,
  Sinkhorn,
  SinkhornExpertChoice
};

/// The settings of one MoE layer ("moe", or "moe" merged with the block's
/// entry in "moe.layers").
struct Layer {
  int64_t E = 0, k = 1, Hx = 0; // experts, top_k, expert_hidden
  RouterKind router = RouterKind::TokenChoice;
  int64_t iterations = 3, slots = 1;
  double cf = 1.0;      // eval capacity factor (inference)
  double cfTrain = 1.0; // training capacity factor
  bool shared = false;
  double noiseStd = 0.0;
  bool batchPrioritized = false; // token-choice, sinkhorn
  bool classToken = false;       // per-image: route from token 0
  // Cosine gates: logits = scale * cos(token (projected to gateDim if > 0),
  // code); the default of soft MoE.
  bool cosine = false;
  int64_t gateDim = 0;
  double gateScale = 1.0;
  int64_t groupSize = 1; // images per routing group
  bool modelScope = false; // per-image: the first MoE layer's router decides
                           // for every MoE layer
  /// The dimension the router's codes live in.
  int64_t gateWidth(int64_t D) const { return gateDim > 0 ? gateDim : D; }
};

struct Spec {
  int64_t C = 0, H = 0, W = 0, P = 0, D = 0, L = 0, heads = 0, K = 0, Hm = 0;
  bool clsPool = true;
  Act act = Act::Gelu;
  double eps = 1e-6;

  bool hasMoE = false;
  std::set<int64_t> moeBlocks;
  Layer moe;                      // the model-wide values in "moe"
  std::map<int64_t, Layer> layer; // MoE block -> its merged settings

  // Training (loss / fdgrad only).
  double wImportance = 0, wLoad = 0, wBalance = 0, wZ = 0, wSuperClass = 0;
  std::vector<int64_t> superClassMap; // empty: none
  double labelSmoothing = 0.0;
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

/// Reads the MoE layer settings in `obj` ("moe", or an entry of
/// "moe.layers" when `base` is given) into `out`, which holds what they
/// override: a layer starts from "moe"'s values, and a router of another
/// kind than "moe"'s starts from that kind's defaults.
void readLayer(const json &obj, const std::string &ctx, const Layer *base,
               int64_t Hm, Layer &out) {
  if (base)
    out = *base;
  else
    out.Hx = Hm;
  if (!base || obj.contains("experts"))
    out.E = getPosInt(obj, "experts", ctx);
  if (obj.contains("top_k"))
    out.k = getPosInt(obj, "top_k", ctx);
  if (obj.contains("expert_hidden"))
    out.Hx = getPosInt(obj, "expert_hidden", ctx);
  if (obj.contains("shared_expert")) {
    if (!obj["shared_expert"].is_boolean())
      fail("spec: '" + ctx + "shared_expert' must be a boolean");
    out.shared = obj["shared_expert"].get<bool>();
  }
  if (obj.contains("capacity_factor")) {
    const json &cf = obj["capacity_factor"];
    const std::string c = ctx + "capacity_factor.";
    if (cf.is_number()) {
      out.cf = out.cfTrain = cf.get<double>();
    } else if (cf.is_object()) {
      // {train, eval}: each defaults to 1.0 in "moe", to "moe"'s value in
      // a layer.
      if (cf.contains("eval"))
        out.cf = getNum(cf, "eval", c);
      if (cf.contains("train"))
        out.cfTrain = getNum(cf, "train", c);
    } else {
      fail("spec: '" + ctx + "capacity_factor' must be a number or an object");
    }
    if (!(out.cf > 0) || !std::isfinite(out.cf) || !(out.cfTrain > 0) ||
        !std::isfinite(out.cfTrain))
      fail("spec: capacity_factor must be positive");
  }
  if (!base && (!obj.contains("router") || !obj["router"].is_object()))
    fail("spec: missing 'moe.router'");
  if (obj.contains("router")) {
    const json &r = obj["router"];
    const std::string c = ctx + "router.";
    if (!r.is_object())
      fail("spec: '" + ctx + "router' must be an object");
    RouterKind kind = out.router;
    if (!base || r.contains("kind")) {
      std::string name = getStr(r, "kind", c);
      if (name == "token-choice")
        kind = RouterKind::TokenChoice;
      else if (name == "expert-choice")
        kind = RouterKind::ExpertChoice;
      else if (name == "soft")
        kind = RouterKind::Soft;
      else if (name == "per-image")
        kind = RouterKind::PerImage;
      else if (name == "sinkhorn")
        kind = RouterKind::Sinkhorn;
      else if (name == "sinkhorn-expert-choice")
        kind = RouterKind::SinkhornExpertChoice;
      else
        fail("spec: unknown router kind '" + name + "'");
    }
    if (!base || kind != base->router) {
      out.iterations = 3;
      out.slots = 1;
      out.noiseStd = 0.0;
      out.batchPrioritized = false;
      out.classToken = false;
      out.cosine = kind == RouterKind::Soft;
      out.gateDim = 0;
      out.gateScale = 1.0;
      out.groupSize = 1;
    }
    if (r.contains("group_size"))
      out.groupSize = getPosInt(r, "group_size", c);
    if (r.contains("scope")) {
      const std::string scope = getStr(r, "scope", c);
      if (scope != "layer" && scope != "model")
        fail("spec: '" + c + "scope' must be \"layer\" or \"model\"");
      out.modelScope = scope == "model";
    }
    out.router = kind;
    if (r.contains("gate")) {
      const std::string gate = getStr(r, "gate", c);
      if (gate != "linear" && gate != "cosine")
        fail("spec: '" + c + "gate' must be \"linear\" or \"cosine\"");
      out.cosine = gate == "cosine";
      if (!out.cosine) {
        out.gateDim = 0;
        out.gateScale = 1.0;
      }
    }
    if (r.contains("gate_dim"))
      out.gateDim = getPosInt(r, "gate_dim", c);
    if (r.contains("gate_scale"))
      out.gateScale = getNum(r, "gate_scale", c);
    if (r.contains("noise_std")) {
      out.noiseStd = getNum(r, "noise_std", c);
      if (!(out.noiseStd >= 0) || !std::isfinite(out.noiseStd))
        fail("spec: '" + c + "noise_std' must be >= 0");
    }
    if (r.contains("iterations"))
      out.iterations = getInt(r, "iterations", c);
    if (out.iterations < 0)
      fail("spec: '" + c + "iterations' must be non-negative");
    if (r.contains("slots_per_expert"))
      out.slots = getPosInt(r, "slots_per_expert", c);
    if (r.contains("input")) {
      const std::string input = getStr(r, "input", c);
      if (input != "mean" && input != "class-token")
        fail("spec: '" + c + "input' must be \"mean\" or \"class-token\"");
      out.classToken = input == "class-token";
    }
    if (r.contains("batch_prioritized")) {
      if (!r["batch_prioritized"].is_boolean())
        fail("spec: '" + c + "batch_prioritized' must be a boolean");
      out.batchPrioritized = r["batch_prioritized"].get<bool>();
    }
  }
  if ((out.router == RouterKind::TokenChoice ||
       out.router == RouterKind::Sinkhorn ||
       out.router == RouterKind::PerImage) &&
      out.k > out.E)
    fail("spec: top_k exceeds the number of experts");
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
    readLayer(moe, "moe.", nullptr, s.Hm, s.moe);
    if (moe.contains("aux_loss")) {
      const json &a = moe["aux_loss"];
      if (!a.is_object())
        fail("spec: 'moe.aux_loss' must be an object");
      auto w = [&](const char *key, double &out) {
        if (a.contains(key)) {
          out = getNum(a, key, "moe.aux_loss.");
          if (!(out >= 0) || !std::isfinite(out))
            fail(std::string("spec: 'moe.aux_loss.") + key + "' must be >= 0");
        }
      };
      w("importance", s.wImportance);
      w("load", s.wLoad);
      w("balance", s.wBalance);
      w("z_loss", s.wZ);
      w("super_class", s.wSuperClass);
    }
    if (moe.contains("super_class_map")) {
      const json &mp = moe["super_class_map"];
      if (!mp.is_array())
        fail("spec: 'moe.super_class_map' must be an array");
      for (const json &v : mp) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0)
          fail("spec: 'moe.super_class_map' entries must be expert indices");
        s.superClassMap.push_back(v.get<int64_t>());
      }
      if (int64_t(s.superClassMap.size()) != s.K)
        fail("spec: 'moe.super_class_map' needs one entry per class");
      // Default weight 0.3 when the map is given and the weight is not.
      if (!moe.contains("aux_loss") || !moe["aux_loss"].contains("super_class"))
        s.wSuperClass = 0.3;
    }

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
    // Per-layer settings: "moe.layers" maps a block index to overrides.
    for (int64_t b : s.moeBlocks)
      s.layer[b] = s.moe;
    if (moe.contains("layers")) {
      const json &ls = moe["layers"];
      if (!ls.is_object())
        fail("spec: 'moe.layers' must be an object");
      for (auto it = ls.begin(); it != ls.end(); ++it) {
        int64_t b = -1;
        try {
          size_t used = 0;
          b = std::stoll(it.key(), &used);
          if (used != it.key().size())
            b = -1;
        } catch (const std::exception &) {
        }
        if (!s.layer.count(b))
          fail("spec: 'moe.layers." + it.key() + "' is not an MoE block");
        if (!it.value().is_object())
          fail("spec: 'moe.layers." + it.key() + "' must be an object");
        readLayer(it.value(), "moe.layers." + it.key() + ".", &s.moe, s.Hm,
                  s.layer[b]);
      }
    }
    for (const auto &kv : s.layer)
      for (int64_t c : s.superClassMap)
        if (c >= kv.second.E)
          fail("spec: 'moe.super_class_map' entries must be expert indices");
  }
  if (root.contains("train") && root["train"].is_object() &&
      root["train"].contains("label_smoothing")) {
    s.labelSmoothing = getNum(root["train"], "label_smoothing", "train.");
    if (!(s.labelSmoothing >= 0 && s.labelSmoothing < 1))
      fail("spec: 'train.label_smoothing' must be in [0, 1)");
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
  Layer cfg;          // this layer's settings
  Vec router;         // [D, E * slots]; cosine gates: [gate width, E * slots]
  Vec projection;     // cosine gates with gate_dim: [D, gate_dim]
  Vec scale;          // cosine gates: [1]
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
// Training-mode state
//===----------------------------------------------------------------------===//

/// The router auxiliary losses of one MoE layer (unweighted).
struct LayerLoss {
  double importance = 0, load = 0, balance = 0, z = 0, superClass = 0;
};

/// Training-mode state of a forward pass. A null TrainCtx* means inference
/// (eval capacity, no noise, no losses).
struct TrainCtx {
  // Inputs for the current image.
  int64_t label = 0;
  std::map<int64_t, const double *> noise; // block -> this image's [S, E] noise
  int64_t block = -1;                       // the block being evaluated
  int64_t noiseBlock = -1; // the block whose noise the router reads
  // Outputs, summed over the images.
  std::map<int64_t, LayerLoss> layers;
  uint64_t sig = 1469598103934665603ull; // hash of every discrete decision
  double margin = INFINITY;              // smallest routing margin (gate units)

  void mix(uint64_t v) {
    sig ^= v + 0x9e3779b97f4a7c15ull + (sig << 6) + (sig >> 2);
    sig *= 1099511628211ull;
  }
  /// Notes the gap between the k-th and (k+1)-th largest of v[i*stride],
  /// i < n: the routing decision "top k" flips when it closes.
  void noteMargin(const double *v, int64_t n, int64_t k, int64_t stride = 1) {
    if (k <= 0 || k >= n)
      return;
    std::vector<double> c(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i)
      c[size_t(i)] = v[i * stride];
    std::sort(c.begin(), c.end(), std::greater<double>());
    margin = std::min(margin, c[size_t(k - 1)] - c[size_t(k)]);
  }
};

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
    for (int64_t e : topK(G.data(), E, c.k)) {
      if (ctx)
        ctx->mix(uint64_t(e));
      for (int64_t t = 0; t < S; ++t)
        addScaled(y, t, D, G[size_t(e)], expert(m, w, e, row(h, t, D), ctx));
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

/// The logits of `count` consecutive images, which every MoE layer's
/// routing groups divide. With `ctx`: training mode (train capacity, router
/// noise, auxiliary losses accumulated into ctx); `select(i)` then points
/// ctx at image i's label and noise before a layer routes the group that
/// starts at image i (its noise rows follow: [B, T, E] is [B/n, n*T, E]).
std::vector<Vec> forward(const Model &m, const float *imgs, int64_t count,
                         TrainCtx *ctx = nullptr,
                         const std::function<void(int64_t)> &select = {}) {
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

/// The largest routing group of the model's MoE layers (1 without any):
/// the image counts the reference takes must be multiples of it.
int64_t largestGroup(const Spec &s) {
  int64_t n = 1;
  for (const auto &kv : s.layer)
    n = std::max(n, kv.second.groupSize);
  return n;
}

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
  return cmdLogits(pos, f64);
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
