//===- Checkpoint.h - training checkpoints ----------------------*- C++ -*-===//
//
// A checkpoint is ONE safetensors file (SafeTensors.h):
//
//   <param name>                    the parameters, under their names
//   optimizer.<slot>.<param name>   optimizer state, e.g. optimizer.m.head.w
//                                   (a slot has no '.'; the parameter must
//                                   be in the file)
//   __metadata__                    format   "moec-checkpoint/1"
//                                   step, epoch, position   decimal
//                                   rng_state  16 lower-case hex digits per
//                                              word, comma-separated
//                                   + the caller's keys (model, optimizer..)
//
// Files are written through AtomicFile (a temporary in the same directory,
// fsync, rename, then an fsync of the directory), so a crash or a failed
// write never destroys the previous file.
//
// A CheckpointDir holds ckpt-<step>.safetensors files and a `latest` file
// (written the same way) whose one line names the newest. save() writes the
// checkpoint, then `latest`, and only then deletes the checkpoints beyond
// the last K, so at every moment `latest` names a complete file.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_CHECKPOINT_H
#define MOEC_RUNTIME_CHECKPOINT_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Error.h"
#include "moec/Runtime/SafeTensors.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moec::rt {

/// Where training stands. rngState is opaque to the checkpoint (e.g.
/// BatchIteratorState::toWords()).
struct TrainState {
  int64_t step = 0;
  int64_t epoch = 0;
  int64_t positionInEpoch = 0;
  std::vector<uint64_t> rngState;
  /// The caller's metadata (model name, optimizer kind, ...); the keys
  /// "format", "step", "epoch", "position" and "rng_state" are reserved.
  std::map<std::string, std::string> metadata;
};

/// The value of the "format" metadata key.
constexpr const char *kCheckpointFormat = "moec-checkpoint/1";
/// The prefix of optimizer-state tensor names.
constexpr const char *kOptimizerPrefix = "optimizer.";

/// "optimizer.<slot>.<param>".
std::string optimizerTensorName(const std::string &slot,
                                const std::string &param);

/// "0123456789abcdef,..." and back (Argument errors name the bad word).
std::string formatRngState(const std::vector<uint64_t> &words);
Expected<std::vector<uint64_t>> parseRngState(const std::string &text);

/// A checkpoint read back.
struct Checkpoint {
  std::string path;
  TrainState state;
  /// In file order.
  std::vector<Tensor> params;
  /// Under their full names, optimizer.<slot>.<param>.
  std::vector<Tensor> optimizer;

  const Tensor *findParam(const std::string &name) const;
  const Tensor *findOptimizer(const std::string &slot,
                              const std::string &param) const;
  /// The distinct slot names, sorted.
  std::vector<std::string> optimizerSlots() const;

  /// Copies parameter `name` (which must have `shape`) to `out`. Weights
  /// errors: "PATH: missing tensor 'x'", "PATH: tensor 'x' has shape [2],
  /// expected [3]".
  Error copyParam(const std::string &name, const std::vector<int64_t> &shape,
                  float *out) const;
  Error copyOptimizer(const std::string &slot, const std::string &param,
                      const std::vector<int64_t> &shape, float *out) const;

  /// Checks that the file holds exactly `params` (names and shapes) and,
  /// for each slot of `slots`, one tensor per parameter with its shape;
  /// the first problem is a Weights error naming the file and the tensor.
  Error check(const std::vector<ParamSpec> &params,
              const std::vector<std::string> &slots) const;
};

/// Writes a checkpoint to `path` atomically. Argument errors for a negative
/// step, epoch or position, a reserved or duplicate name, a parameter named
/// optimizer.*, an optimizer tensor not named optimizer.<slot>.<param> of a
/// parameter in `params`, or a size mismatch; Io errors name the file.
Error saveCheckpoint(const std::string &path, const TrainState &state,
                     const std::vector<TensorRef> &params,
                     const std::vector<TensorRef> &optimizer = {});

/// Reads a checkpoint. Errors (Weights, or Io) name the file: a malformed
/// safetensors file, "not a moec checkpoint (no 'format' metadata)", "bad
/// metadata 'step': '12x' is not a non-negative integer", ...
Expected<Checkpoint> loadCheckpoint(const std::string &path);

/// What CheckpointDir::save did.
struct SavedCheckpoint {
  std::string path;
  /// Checkpoints (and stale temporaries) deleted by pruning.
  std::vector<std::string> removed;
  /// Pruning problems; the checkpoint itself was saved.
  std::vector<std::string> warnings;
};

class CheckpointDir {
public:
  /// Keeps the newest `keepLast` checkpoints (<= 0: all of them).
  explicit CheckpointDir(std::string dir, int64_t keepLast = 3)
      : dir_(std::move(dir)), keepLast_(keepLast) {}

  const std::string &dir() const { return dir_; }
  int64_t keepLast() const { return keepLast_; }
  /// DIR/ckpt-<step>.safetensors.
  std::string pathForStep(int64_t step) const;

  /// Creates the directory if needed, writes ckpt-<state.step>.safetensors
  /// (replacing one of the same step), points `latest` at it, then prunes:
  /// the new checkpoint and the keepLast-1 others with the highest steps
  /// stay; older ckpt-*.safetensors and temporaries left by other processes
  /// (*.tmp.<pid>.<n>) are deleted.
  Expected<SavedCheckpoint> save(const TrainState &state,
                                 const std::vector<TensorRef> &params,
                                 const std::vector<TensorRef> &optimizer = {});

  /// The steps of the ckpt-<step>.safetensors files present, ascending.
  Expected<std::vector<int64_t>> steps() const;

  /// loadLatestCheckpoint(dir()).
  Expected<Checkpoint> loadLatest() const;

private:
  std::string dir_;
  int64_t keepLast_;
};

/// The name of the file naming the newest checkpoint.
constexpr const char *kLatestFile = "latest";

/// The path of the checkpoint `dir`/latest names; nullopt when `dir` or
/// `latest` does not exist (a fresh run). Errors for an unreadable or
/// malformed `latest`, or one naming a missing file.
Expected<std::optional<std::string>>
findLatestCheckpoint(const std::string &dir);

/// Loads the checkpoint `dir`/latest names; an Io error when there is none.
Expected<Checkpoint> loadLatestCheckpoint(const std::string &dir);

/// Model weights from `path`: a safetensors weights file, a checkpoint
/// file, or a checkpoint directory (the checkpoint its `latest` names). Of
/// a checkpoint only the model parameters are kept (its optimizer.* tensors
/// and training metadata are dropped) and `note` (if given) says so;
/// otherwise `note` is left empty. `source` (if given) receives the file
/// read. Errors name the file, or the directory without a `latest`.
Expected<SafeTensors> readWeights(const std::string &path,
                                  std::string *note = nullptr,
                                  std::string *source = nullptr);

} // namespace moec::rt

#endif // MOEC_RUNTIME_CHECKPOINT_H
