//===- Reference.h - moec-reference: shared types and declarations -*- C++ -*-===//
//
// The pieces of the double-precision reference that its three files share:
// errors, little-endian file I/O, the safetensors reader, the spec, the
// model's weights and the training-mode state. ReferenceSpec.cpp parses
// specs, ReferenceModel.cpp runs the model, Reference.cpp computes losses
// and finite-difference gradients and holds the commands.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_TEST_REFERENCE_REFERENCE_H
#define MOEC_TEST_REFERENCE_REFERENCE_H

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

namespace moecref {

using json = nlohmann::json;
using Vec = std::vector<double>;

[[noreturn]] inline void fail(const std::string &msg) {
  throw std::runtime_error(msg);
}

//===----------------------------------------------------------------------===//
// Files (ReferenceSpec.cpp)
//===----------------------------------------------------------------------===//

std::vector<unsigned char> readFile(const std::string &path);
float loadF32LE(const unsigned char *p);
void storeF32LE(unsigned char *p, float f);
void storeF64LE(unsigned char *p, double d);
std::string shapeStr(const std::vector<int64_t> &shape);

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

/// The spec file at `path`, checked (ReferenceSpec.cpp).
Spec parseSpec(const std::string &path);

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

/// The weights of `s` from `st` (ReferenceModel.cpp).
Model loadModel(const Spec &s, const SafeTensors &st);

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
// The forward pass (ReferenceModel.cpp)
//===----------------------------------------------------------------------===//

double logSumExp(const double *v, int64_t n);

/// The logits of `count` consecutive images, which every MoE layer's
/// routing groups divide. With `ctx`: training mode (train capacity, router
/// noise, auxiliary losses accumulated into ctx); `select(i)` then points
/// ctx at image i's label and noise before a layer routes the group that
/// starts at image i (its noise rows follow: [B, T, E] is [B/n, n*T, E]).
std::vector<Vec> forward(const Model &m, const float *imgs, int64_t count,
                         TrainCtx *ctx = nullptr,
                         const std::function<void(int64_t)> &select = {});

/// Per-image routing statistics of the MoE layers (moec-run analyze's
/// `routing_*` outputs), by block: tokens[i*E+e] the tokens of image i
/// expert e took (soft MoE: the summed dispatch weights), weights[i*E+e]
/// their summed combine weights, probs[i*E+e] the clean softmax of each
/// decision summed over e's slots and averaged over the image's decisions,
/// entropy[i] that softmax's entropy / log(E*P), averaged the same way.
struct RoutingStats {
  std::vector<double> tokens, weights, probs, entropy;
};
struct RoutingRecorder {
  int64_t images = 0; // the images of the whole run
  int64_t first = 0;  // the run's index of forward()'s first image
  int64_t block = -1, base = 0;           // set by forward() per group
  std::map<int64_t, RoutingStats> layers; // by block
};
/// When set, inference (no TrainCtx) records every MoE layer's routing.
extern RoutingRecorder *routingRecorder;

/// The largest routing group of the model's MoE layers (1 without any):
/// the image counts the reference takes must be multiples of it.
int64_t largestGroup(const Spec &s);

} // namespace moecref

#endif // MOEC_TEST_REFERENCE_REFERENCE_H
