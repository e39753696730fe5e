//===- Session.h - running a loaded artifact --------------------*- C++ -*-===//
//
// A Session binds an Artifact to a Device: it owns the parameter block
// (manifest param_bytes: the parameters and the state tensors) and the arena
// (arena_bytes) in device memory, and runs the "infer" entry point
// (infer()) or any entry point by name (run(), with input() and output()
// giving the tensors in the arena). A session serves one call at a time;
// use one session per thread to run in parallel.
//
// On a device whose memory the host cannot reach (cuda) the session keeps
// host copies of every entry point's inputs and outputs (what input() and
// output() point at) and of the parameter block (blockViews()), and copies
// them to and from the device around each run; on the cpu device they are
// the device memory itself and nothing is copied.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_SESSION_H
#define MOEC_RUNTIME_SESSION_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Checkpoint.h"
#include "moec/Runtime/Device.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/SafeTensors.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moec::rt {

/// An entry point's input or output in a session's arena: write an input's
/// values to `data` before Session::run() and read an output's after it.
/// On the cpu device `data` points into the arena; on a device without
/// host-accessible memory at a host copy, which run() uploads (inputs)
/// before the dispatches and downloads (outputs) after them. Valid while
/// the session lives.
struct EntryTensor {
  const TensorSpec *spec = nullptr;
  void *data = nullptr;

  int64_t count() const { return spec->count(); }
  size_t bytes() const { return static_cast<size_t>(spec->bytes()); }
  bool isI32() const { return spec->dtype == "i32"; }
  DType dtype() const { return isI32() ? DType::I32 : DType::F32; }
  float *f32() const { return static_cast<float *>(data); }
  int32_t *i32() const { return static_cast<int32_t *>(data); }
  /// Element i as a double, whatever the dtype.
  double value(int64_t i = 0) const {
    return isI32() ? double(i32()[i]) : double(f32()[i]);
  }
};

class Session {
public:
  /// A session on device `device` ("cpu" or "cuda") with `threads` threads
  /// (0 = every core; cpu only). Loads the artifact's kernels and allocates
  /// the parameter block and arena. The parameters start out unset: load or
  /// initialize them before infer(). A model compiled for another target is
  /// an Argument error "MODEL: compiled for target 'cuda'; run it with
  /// --device=cuda", checked before the device is created.
  static Expected<std::unique_ptr<Session>>
  create(std::shared_ptr<const Artifact> artifact, std::string_view device,
         int threads);
  /// A session on `device`, which must run the artifact's target
  /// (device->name()); for devices made outside createDevice (tests).
  static Expected<std::unique_ptr<Session>>
  create(std::shared_ptr<const Artifact> artifact,
         std::unique_ptr<Device> device);
  ~Session();
  Session(const Session &) = delete;
  Session &operator=(const Session &) = delete;

  const Artifact &artifact() const { return *artifact_; }
  const Manifest &manifest() const { return artifact_->manifest(); }
  Device &device() { return *device_; }
  int threads() const { return device_->threads(); }

  /// Reads weights (readWeights in Checkpoint.h: a safetensors file, or
  /// the parameters of a checkpoint file or directory) and binds them
  /// (bindWeights). `note` (if given) says when a checkpoint was read.
  Error loadWeights(const std::string &path, std::string *note = nullptr);
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

  /// The current state tensors (manifest "state", the optimizer slots), in
  /// manifest order. Sessions start with them zeroed.
  std::vector<Tensor> state() const;
  /// The parameters, then the state tensors, in manifest order, as views
  /// valid while the session lives. The trainer checks them for NaN and
  /// infinities. On the cpu device they point into the parameter block. On
  /// a device without host-accessible memory they point into a host copy of
  /// it, downloaded by this call and by each refreshBlockViews() (the
  /// pointers stay the same).
  std::vector<TensorRef> blockViews() const;
  /// Downloads the parameter block into the host copy blockViews() points
  /// into again; nothing to do on the cpu device or before blockViews().
  void refreshBlockViews() const;
  /// Zeroes the state tensors.
  void resetState();
  /// Copies `state` into the state tensors: every manifest state tensor
  /// with its exact shape, and nothing else; Weights errors name `source`
  /// and the tensor. On error the state is unchanged.
  Error bindState(const SafeTensors &state, const std::string &source);
  /// Reads a safetensors file and binds it (bindState).
  Error loadState(const std::string &path);
  /// Copies a checkpoint's parameters and optimizer tensors into the
  /// parameters and state: exactly the manifest's parameters and state
  /// tensors, with their shapes (errors name the checkpoint file). On error
  /// nothing is changed.
  Error restoreCheckpoint(const Checkpoint &checkpoint);

  /// Success if the model has entry point `entry`, else an Argument error
  /// "MODEL: the model has no entry point 'x' (it has: eval, infer, ...)".
  Error checkEntry(const std::string &entry) const;
  /// Runs the dispatches of entry point `entry` once: "images" dispatches
  /// over [0, n), "fixed" ones over [0, tiles); 1 <= n <= batch. Inputs
  /// are what was written to input(); outputs are read from output().
  /// Argument errors: an unknown entry, n out of range, no weights.
  Error run(const std::string &entry, int64_t n);
  /// Input / output `name` of entry point `entry`; Argument errors name
  /// the model, the entry and the tensor.
  Expected<EntryTensor> input(const std::string &entry,
                              const std::string &name);
  Expected<EntryTensor> output(const std::string &entry,
                               const std::string &name);
  /// Every input / output of `entry` (which must exist), in manifest order.
  std::vector<EntryTensor> inputs(const std::string &entry);
  std::vector<EntryTensor> outputs(const std::string &entry);

  /// Runs "infer" on `n` images (n x C x H x W floats, NCHW), writing n x
  /// classes logits; any n >= 0, in chunks of at most the manifest's batch.
  /// With routing groups the chunks are whole groups (the last one padded
  /// with zero images), so consecutive calls route as one call would only
  /// when each call's n is a multiple of routingGroup().
  Error infer(const float *images, int64_t n, float *logits);

  /// Images the model routes together in "infer": the least common
  /// multiple of its MoE layers' routing groups (1 without any).
  int64_t routingGroup() const;

  /// With profiling on, infer() adds each dispatch's wall time to
  /// dispatchSeconds() (one entry per "infer" dispatch, in plan order).
  void setProfiling(bool enabled);
  const std::vector<double> &dispatchSeconds() const {
    return dispatchSeconds_;
  }
  /// With profiling on, run() adds each dispatch's wall time here (per
  /// entry point, one entry per dispatch in plan order).
  const std::vector<double> &entrySeconds(const std::string &entry) {
    return entrySeconds_[entry];
  }
  /// The FLOPs the profiled dispatches ran (as dispatchSeconds() and
  /// entrySeconds()), from the plan's per-dispatch FLOPs.
  const std::vector<double> &dispatchFlops() const { return dispatchFlops_; }
  const std::vector<double> &entryFlops(const std::string &entry) {
    return entryFlops_[entry];
  }

private:
  Session() = default;
  /// The tensors `specs` describe, read from the parameter block.
  std::vector<Tensor> downloadBlock(const std::vector<ParamSpec> &specs) const;
  EntryTensor view(const TensorSpec &spec) const;
  /// Without host-accessible device memory: copies the host copies of
  /// `entry`'s inputs to the arena / its outputs back.
  void uploadInputs(const std::string &entry);
  void downloadOutputs(const std::string &entry);

  std::shared_ptr<const Artifact> artifact_;
  std::unique_ptr<Device> device_;
  void *params_ = nullptr;
  void *arena_ = nullptr;
  /// Whether the session keeps host copies (the device's memory is not
  /// host-accessible).
  bool staged_ = false;
  /// The host copies of the entry points' inputs and outputs, by spec
  /// (8-byte words, zeroed at creation like the arena).
  std::map<const TensorSpec *, std::vector<uint64_t>> staging_;
  /// The host copy of the parameter block blockViews() points into.
  mutable std::vector<uint64_t> hostBlock_;

  /// Per entry point, per dispatch: its argument base pointers.
  std::map<std::string, std::vector<std::vector<void *>>> entryArgs_;
  std::vector<std::vector<void *>> *inferArgs_ = nullptr;
  bool hasWeights_ = false;
  bool profiling_ = false;
  std::vector<double> dispatchSeconds_, dispatchFlops_;
  std::map<std::string, std::vector<double>> entrySeconds_, entryFlops_;
};

} // namespace moec::rt

#endif // MOEC_RUNTIME_SESSION_H
