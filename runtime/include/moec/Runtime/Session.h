//===- Session.h - running a loaded artifact --------------------*- C++ -*-===//
//
// A Session binds an Artifact to a Device: it owns the parameter block
// (manifest param_bytes) and the arena (arena_bytes) in device memory, and
// runs the "infer" entry point. A session serves one call at a time; use
// one session per thread to run in parallel.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_SESSION_H
#define MOEC_RUNTIME_SESSION_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Device.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/SafeTensors.h"

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moec::rt {

class Session {
public:
  /// A session on device `device` ("cpu") with `threads` threads (0 = every
  /// core). Loads the artifact's kernels and allocates the parameter block
  /// and arena. The parameters start out unset: load or initialize them
  /// before infer().
  static Expected<std::unique_ptr<Session>>
  create(std::shared_ptr<const Artifact> artifact, std::string_view device,
         int threads);
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  const Artifact &artifact() const { return *artifact_; }
  const Manifest &manifest() const { return artifact_->manifest(); }
  Device &device() { return *device_; }
  int threads() const { return device_->threads(); }

  /// Reads a safetensors file and binds it (bindWeights).
  Error loadWeights(const std::string &path);
  /// Copies `weights` into the parameter block. Every manifest parameter
  /// must be present with its exact shape, and nothing else; errors (code
  /// Weights) name `source` and the tensor. On error the parameters are
  /// unchanged.
  Error bindWeights(const SafeTensors &weights, const std::string &source);
  /// Random initial parameters from `seed` (Weights.h).
  void initWeights(uint64_t seed);
  /// Whether the parameters have been loaded or initialized.
  bool hasWeights() const { return hasWeights_; }
  /// The current parameters, in manifest order.
  std::vector<Tensor> parameters() const;
  /// Writes the current parameters as safetensors, in manifest order.
  Error saveWeights(const std::string &path) const;

  /// Runs "infer" on `n` images (n x C x H x W floats, NCHW), writing n x
  /// classes logits; any n >= 0, in chunks of at most the manifest's batch.
  Error infer(const float *images, int64_t n, float *logits);

  /// With profiling on, infer() adds each dispatch's wall time to
  /// dispatchSeconds() (one entry per "infer" dispatch, in plan order).
  void setProfiling(bool enabled);
  const std::vector<double> &dispatchSeconds() const {
    return dispatchSeconds_;
  }

private:
  Session() = default;

  std::shared_ptr<const Artifact> artifact_;
  std::unique_ptr<Device> device_;
  void *params_ = nullptr;
  void *arena_ = nullptr;
  /// Per "infer" dispatch: its argument base pointers.
  std::vector<std::vector<void *>> inferArgs_;
  bool hasWeights_ = false;
  bool profiling_ = false;
  std::vector<double> dispatchSeconds_;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_SESSION_H
