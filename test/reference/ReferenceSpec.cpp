//===- ReferenceSpec.cpp - moec-reference: files and the spec -------------===//
//
// Little-endian file I/O and the spec parser of the double-precision
// reference (the semantics: README.md in this directory).
//
//===----------------------------------------------------------------------===//

#include "Reference.h"

namespace moecref {

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

} // namespace moecref
