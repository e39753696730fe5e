//===- Session.cpp - running a loaded artifact ----------------------------===//

#include "moec/Runtime/Session.h"

#include <chrono>
#include <numeric>

#include "moec/Runtime/Weights.h"

#include <cstring>
#include <map>
#include <set>

namespace moec::rt {

/// Images per run of the plan. Kernels take any image range up to the
/// artifact's batch, and a run touches only its images' slices of each
/// buffer, so running a large batch in chunks keeps each dispatch's working
/// set in cache (the buffers' lifetimes are per run, so this is safe).
static constexpr int64_t kChunk = 32;

/// "MODEL: compiled for target 'cuda'; run it with --device=cuda".
static Error targetError(const Artifact &artifact, std::string_view device) {
  const std::string &target = artifact.manifest().target;
  if (target == kTargetCpu || target == kTargetCuda)
    return makeError(ErrorCode::Argument, artifact.path(),
                     ": compiled for target '", target,
                     "'; run it with --device=", target);
  return makeError(ErrorCode::Argument, artifact.path(),
                   ": compiled for target '", target, "', which device '",
                   device, "' cannot run (this runtime has: cpu, cuda)");
}

Expected<std::unique_ptr<Session>>
Session::create(std::shared_ptr<const Artifact> artifact,
                std::string_view deviceName, int threads) {
  if (!artifact)
    return makeError(ErrorCode::Argument, "no model given");
  // A model for the other device says so, whether or not that device is
  // here.
  if ((deviceName == kTargetCpu || deviceName == kTargetCuda) &&
      artifact->manifest().target != deviceName)
    return targetError(*artifact, deviceName);
  Expected<std::unique_ptr<Device>> device = createDevice(deviceName, threads);
  if (!device)
    return device.takeError();
  return create(std::move(artifact), std::move(*device));
}

Expected<std::unique_ptr<Session>>
Session::create(std::shared_ptr<const Artifact> artifact,
                std::unique_ptr<Device> device) {
  if (!artifact)
    return makeError(ErrorCode::Argument, "no model given");
  if (!device)
    return makeError(ErrorCode::Argument, "no device given");
  const Manifest &m = artifact->manifest();
  if (m.target != device->name())
    return targetError(*artifact, device->name());

  std::unique_ptr<Session> session(new Session());
  session->artifact_ = artifact;
  session->device_ = std::move(device);
  Device &dev = *session->device_;
  if (Error e = dev.loadKernels(*artifact))
    return e;

  session->params_ = dev.allocate(m.paramBytes);
  session->arena_ = dev.allocate(m.arenaBytes);
  if (!session->params_ || !session->arena_)
    return makeError(ErrorCode::Device, artifact->path(), ": cannot allocate ",
                     m.paramBytes, " parameter bytes and ", m.arenaBytes,
                     " arena bytes");
  // A model without parameters needs no weights.
  session->hasWeights_ = m.params.empty();

  for (const auto &[name, dispatches] : artifact->plan().entries) {
    std::vector<std::vector<void *>> &entryArgs = session->entryArgs_[name];
    for (const Dispatch &d : dispatches) {
      std::vector<void *> args;
      for (const BufferArg &arg : d.args) {
        char *base = static_cast<char *>(arg.space == BufferArg::Space::Arena
                                             ? session->arena_
                                             : session->params_);
        args.push_back(base + arg.offset);
      }
      entryArgs.push_back(std::move(args));
    }
  }
  session->inferArgs_ = &session->entryArgs_.at("infer");
  session->staged_ = !dev.hostAccessible();
  if (session->staged_)
    for (const auto &[name, entry] : m.entries)
      for (const auto *list : {&entry.inputs, &entry.outputs})
        for (const TensorSpec &spec : *list)
          session->staging_[&spec].assign((spec.bytes() + 7) / 8, 0);
  // allocate() zeroes memory; say so explicitly for the state tensors,
  // which the training entry points read before they first write them.
  session->resetState();
  return session;
}

Session::~Session() {
  if (device_) {
    device_->free(params_);
    device_->free(arena_);
  }
}

Error Session::loadWeights(const std::string &path, std::string *note) {
  std::string source;
  Expected<SafeTensors> weights = readWeights(path, note, &source);
  if (!weights)
    return weights.takeError();
  return bindWeights(*weights, source);
}

Error Session::bindWeights(const SafeTensors &weights,
                           const std::string &source) {
  const Manifest &m = manifest();
  std::set<std::string> expected;
  for (const ParamSpec &p : m.params) {
    expected.insert(p.name);
    const Tensor *t = weights.find(p.name);
    if (!t)
      return makeError(ErrorCode::Weights, source, ": missing tensor '", p.name,
                       "'");
    if (t->dtype != DType::F32)
      return makeError(ErrorCode::Weights, source, ": tensor '", p.name,
                       "' has dtype ", dtypeName(t->dtype),
                       ", the model expects F32");
    if (t->shape != p.shape)
      return makeError(ErrorCode::Weights, source, ": tensor '", p.name,
                       "' has shape ", formatShape(t->shape),
                       ", the model expects ", formatShape(p.shape));
  }
  for (const Tensor &t : weights.tensors)
    if (!expected.count(t.name))
      return makeError(ErrorCode::Weights, source, ": unexpected tensor '",
                       t.name, "' (the model has no such parameter)");
  for (const ParamSpec &p : m.params)
    device_->upload(static_cast<char *>(params_) + p.offset,
                    weights.find(p.name)->data.data(),
                    static_cast<size_t>(p.count()) * 4);
  hasWeights_ = true;
  return Error::success();
}

void Session::initWeights(uint64_t seed) {
  std::vector<float> values;
  for (const ParamSpec &p : manifest().params) {
    values.resize(static_cast<size_t>(p.count()));
    initParameter(p, seed, values.data());
    device_->upload(static_cast<char *>(params_) + p.offset, values.data(),
                    values.size() * 4);
  }
  hasWeights_ = true;
}

std::vector<Tensor>
Session::downloadBlock(const std::vector<ParamSpec> &specs) const {
  std::vector<Tensor> tensors;
  for (const ParamSpec &p : specs) {
    Tensor t{p.name, p.shape, std::vector<float>(p.count())};
    device_->download(t.data.data(),
                      static_cast<const char *>(params_) + p.offset,
                      t.data.size() * 4);
    tensors.push_back(std::move(t));
  }
  return tensors;
}

std::vector<Tensor> Session::parameters() const {
  return downloadBlock(manifest().params);
}

Error Session::saveWeights(const std::string &path) const {
  if (!hasWeights_)
    return makeError(ErrorCode::Argument, path,
                     ": no weights to save (load or initialize them first)");
  std::vector<Tensor> tensors = parameters();
  std::vector<TensorRef> refs;
  for (const Tensor &t : tensors)
    refs.push_back({t.name, t.shape, t.data.data()});
  return writeSafeTensors(path, refs, {{"model", manifest().model}});
}

std::vector<Tensor> Session::state() const {
  return downloadBlock(manifest().state);
}

std::vector<TensorRef> Session::blockViews() const {
  const char *block = static_cast<const char *>(params_);
  if (staged_) {
    hostBlock_.resize((manifest().paramBytes + 7) / 8);
    refreshBlockViews();
    block = reinterpret_cast<const char *>(hostBlock_.data());
  }
  std::vector<TensorRef> views;
  for (const auto *specs : {&manifest().params, &manifest().state})
    for (const ParamSpec &p : *specs)
      views.push_back(
          {p.name, p.shape, reinterpret_cast<const float *>(block + p.offset)});
  return views;
}

void Session::refreshBlockViews() const {
  if (staged_ && !hostBlock_.empty())
    device_->download(hostBlock_.data(), params_,
                      static_cast<size_t>(manifest().paramBytes));
}

void Session::resetState() {
  std::vector<float> zeros;
  for (const ParamSpec &p : manifest().state) {
    zeros.assign(static_cast<size_t>(p.count()), 0.0f);
    device_->upload(static_cast<char *>(params_) + p.offset, zeros.data(),
                    zeros.size() * 4);
  }
}

/// Checks that `tensors` hold exactly `specs` (names, F32, shapes); `what`
/// names the kind in "unexpected tensor" messages.
static Error checkExactly(const std::vector<ParamSpec> &specs,
                          const std::vector<Tensor> &tensors,
                          const std::string &source, const char *what) {
  std::map<std::string, const Tensor *> byName;
  for (const Tensor &t : tensors)
    byName[t.name] = &t;
  std::set<std::string> expected;
  for (const ParamSpec &p : specs) {
    expected.insert(p.name);
    auto it = byName.find(p.name);
    if (it == byName.end())
      return makeError(ErrorCode::Weights, source, ": missing tensor '", p.name,
                       "'");
    if (it->second->dtype != DType::F32)
      return makeError(ErrorCode::Weights, source, ": tensor '", p.name,
                       "' has dtype ", dtypeName(it->second->dtype),
                       ", the model expects F32");
    if (it->second->shape != p.shape)
      return makeError(ErrorCode::Weights, source, ": tensor '", p.name,
                       "' has shape ", formatShape(it->second->shape),
                       ", the model expects ", formatShape(p.shape));
  }
  for (const Tensor &t : tensors)
    if (!expected.count(t.name))
      return makeError(ErrorCode::Weights, source, ": unexpected tensor '",
                       t.name, "' (the model has no such ", what, ")");
  return Error::success();
}

/// Uploads the tensors named by `specs` (checked by checkExactly).
static void uploadAll(Device &device, void *block,
                      const std::vector<ParamSpec> &specs,
                      const std::vector<Tensor> &tensors) {
  for (const ParamSpec &p : specs)
    for (const Tensor &t : tensors)
      if (t.name == p.name)
        device.upload(static_cast<char *>(block) + p.offset, t.data.data(),
                      static_cast<size_t>(p.count()) * 4);
}

Error Session::bindState(const SafeTensors &state, const std::string &source) {
  if (Error e =
          checkExactly(manifest().state, state.tensors, source, "state tensor"))
    return e;
  uploadAll(*device_, params_, manifest().state, state.tensors);
  return Error::success();
}

Error Session::loadState(const std::string &path) {
  Expected<SafeTensors> state = readSafeTensors(path);
  if (!state)
    return state.takeError();
  return bindState(*state, path);
}

Error Session::restoreCheckpoint(const Checkpoint &checkpoint) {
  const Manifest &m = manifest();
  if (Error e = checkExactly(m.params, checkpoint.params, checkpoint.path,
                             "parameter"))
    return e;
  if (Error e = checkExactly(m.state, checkpoint.optimizer, checkpoint.path,
                             "state tensor"))
    return e;
  uploadAll(*device_, params_, m.params, checkpoint.params);
  uploadAll(*device_, params_, m.state, checkpoint.optimizer);
  hasWeights_ = true;
  return Error::success();
}

Error Session::checkEntry(const std::string &entry) const {
  if (manifest().entry(entry) && entryArgs_.count(entry))
    return Error::success();
  std::string names;
  for (const auto &[name, spec] : manifest().entries)
    names += cat(names.empty() ? "" : ", ", name);
  return makeError(ErrorCode::Argument, artifact_->path(),
                   ": the model has no entry point '", entry, "' (it has: ",
                   names, ")");
}

EntryTensor Session::view(const TensorSpec &spec) const {
  if (staged_)
    return {&spec, const_cast<uint64_t *>(staging_.at(&spec).data())};
  return {&spec, static_cast<char *>(arena_) + spec.offset};
}

void Session::uploadInputs(const std::string &entry) {
  for (const TensorSpec &spec : manifest().entries.at(entry).inputs)
    device_->upload(static_cast<char *>(arena_) + spec.offset,
                    staging_.at(&spec).data(), spec.bytes());
}

void Session::downloadOutputs(const std::string &entry) {
  for (const TensorSpec &spec : manifest().entries.at(entry).outputs)
    device_->download(staging_.at(&spec).data(),
                      static_cast<char *>(arena_) + spec.offset, spec.bytes());
}

Expected<EntryTensor> Session::input(const std::string &entry,
                                     const std::string &name) {
  if (Error e = checkEntry(entry))
    return e;
  const TensorSpec *spec = manifest().entry(entry)->input(name);
  if (!spec)
    return makeError(ErrorCode::Argument, artifact_->path(), ": entry point '",
                     entry, "' has no input '", name, "'");
  return view(*spec);
}

Expected<EntryTensor> Session::output(const std::string &entry,
                                      const std::string &name) {
  if (Error e = checkEntry(entry))
    return e;
  const TensorSpec *spec = manifest().entry(entry)->output(name);
  if (!spec)
    return makeError(ErrorCode::Argument, artifact_->path(), ": entry point '",
                     entry, "' has no output '", name, "'");
  return view(*spec);
}

std::vector<EntryTensor> Session::inputs(const std::string &entry) {
  std::vector<EntryTensor> out;
  for (const TensorSpec &spec : manifest().entries.at(entry).inputs)
    out.push_back(view(spec));
  return out;
}

std::vector<EntryTensor> Session::outputs(const std::string &entry) {
  std::vector<EntryTensor> out;
  for (const TensorSpec &spec : manifest().entries.at(entry).outputs)
    out.push_back(view(spec));
  return out;
}

Error Session::run(const std::string &entry, int64_t n) {
  if (Error e = checkEntry(entry))
    return e;
  const Manifest &m = manifest();
  if (n < 1 || n > m.batch)
    return makeError(ErrorCode::Argument, entry, ": image count ", n,
                     " is outside [1, ", m.batch, "] (the model's batch)");
  if (!hasWeights_)
    return makeError(ErrorCode::Argument, artifact_->path(),
                     ": no weights (load or initialize them before running '",
                     entry, "')");
  const std::vector<Dispatch> &plan = artifact_->plan().entries.at(entry);
  std::vector<std::vector<void *>> &args = entryArgs_.at(entry);
  std::vector<double> *secs = nullptr, *flops = nullptr;
  if (profiling_) {
    secs = &entrySeconds_[entry];
    secs->resize(plan.size(), 0.0);
    flops = &entryFlops_[entry];
    flops->resize(plan.size(), 0.0);
  }
  if (staged_)
    uploadInputs(entry);
  if (!profiling_) {
    if (Error e = device_->runEntry(entry, plan, args, n))
      return e;
  } else {
    // One dispatch at a time, each waited for, to time it.
    for (size_t i = 0; i < plan.size(); ++i) {
      auto start = std::chrono::steady_clock::now();
      if (Error e = device_->runDispatch(plan[i], args[i].data(), n))
        return e;
      if (Error e = device_->synchronize())
        return e;
      (*secs)[i] += std::chrono::duration<double>(
                        std::chrono::steady_clock::now() - start)
                        .count();
      (*flops)[i] += plan[i].flopsFor(n);
    }
  }
  if (staged_) {
    downloadOutputs(entry);
    // A copy that failed reports here.
    if (Error e = device_->synchronize())
      return e;
  }
  return Error::success();
}

int64_t Session::routingGroup() const {
  int64_t group = 1;
  auto infer = artifact_->plan().entries.find("infer");
  if (infer != artifact_->plan().entries.end())
    for (const Dispatch &d : infer->second)
      group = std::lcm(group, d.imagesPerStep);
  return group;
}

Error Session::infer(const float *images, int64_t n, float *logits) {
  if (n < 0)
    return makeError(ErrorCode::Argument, "infer: negative image count ", n);
  if (n > 0 && (!images || !logits))
    return makeError(ErrorCode::Argument, "infer: null images or logits");
  if (!hasWeights_)
    return makeError(ErrorCode::Argument, artifact_->path(),
                     ": no weights (load or initialize them before inference)");
  const Manifest &m = manifest();
  const EntrySpec &entry = m.infer();
  const std::vector<Dispatch> &plan = artifact_->plan().entries.at("infer");
  char *input = static_cast<char *>(arena_) + entry.inputs[0].offset;
  char *output = static_cast<char *>(arena_) + entry.outputs[0].offset;
  const size_t imageBytes = static_cast<size_t>(m.imageSize()) * 4;
  const size_t logitBytes = static_cast<size_t>(m.classes) * 4;
  // Calls hold whole routing groups: a chunk is a multiple of every
  // layer's group (their lcm divides the batch), and the images past the
  // last one are zeros, routed with the real ones of their group.
  const int64_t group = routingGroup();
  const int64_t chunk =
      std::min<int64_t>(m.batch, (kChunk + group - 1) / group * group);
  for (int64_t done = 0; done < n;) {
    int64_t count = std::min<int64_t>(chunk, n - done);
    int64_t padded = (count + group - 1) / group * group;
    device_->upload(input, images + done * m.imageSize(), count * imageBytes);
    if (padded > count) {
      std::vector<float> zeros(static_cast<size_t>(padded - count) *
                               static_cast<size_t>(m.imageSize()));
      device_->upload(input + count * imageBytes, zeros.data(),
                      zeros.size() * 4);
    }
    if (!profiling_) {
      if (Error e = device_->runEntry(kEntryInfer, plan, *inferArgs_, padded))
        return e;
    } else {
      for (size_t i = 0; i < plan.size(); ++i) {
        auto start = std::chrono::steady_clock::now();
        if (Error e = device_->runDispatch(plan[i], (*inferArgs_)[i].data(),
                                           padded))
          return e;
        if (Error e = device_->synchronize())
          return e;
        dispatchSeconds_[i] += std::chrono::duration<double>(
                                   std::chrono::steady_clock::now() - start)
                                   .count();
        dispatchFlops_[i] += plan[i].flopsFor(padded);
      }
    }
    device_->download(logits + done * m.classes, output, count * logitBytes);
    if (staged_)
      if (Error e = device_->synchronize())
        return e;
    done += count;
  }
  return Error::success();
}

void Session::setProfiling(bool enabled) {
  profiling_ = enabled;
  dispatchSeconds_.assign(artifact_->plan().entries.at("infer").size(), 0.0);
  dispatchFlops_.assign(dispatchSeconds_.size(), 0.0);
  entrySeconds_.clear();
  entryFlops_.clear();
}

} // namespace moec::rt
