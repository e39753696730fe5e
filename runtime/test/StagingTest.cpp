//===- StagingTest.cpp - sessions on a device without host access ---------===//
//
// A Session on a device whose memory the host cannot reach keeps host
// copies of the entry points' inputs and outputs and of the parameter
// block. The cuda device is such a device; here a test device stands in
// for it on any machine: the cpu device's kernels, but memory that is
// mapped PROT_NONE except while the device itself copies or runs kernels,
// so any direct host access by the session or its users (Trainer,
// evaluate, analyze) faults. Every result must be bitwise the cpu
// device's.
//
//===----------------------------------------------------------------------===//

#include "moec/Runtime/Device.h"
#include "moec/Runtime/Evaluate.h"
#include "moec/Runtime/Session.h"
#include "moec/Runtime/Trainer.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <sys/mman.h>
#include <unistd.h>

using namespace moec::rt;
using namespace moec::rt::test;

namespace {

/// The cpu device's kernels on memory the host cannot touch outside the
/// device's own calls.
class GuardedDevice final : public Device {
public:
  GuardedDevice() : inner_(std::move(*createDevice("cpu", 2))) {}
  ~GuardedDevice() override {
    for (auto &[ptr, length] : regions_)
      ::munmap(ptr, length);
  }

  std::string_view name() const override { return inner_->name(); }
  int threads() const override { return inner_->threads(); }
  bool hostAccessible() const override { return false; }

  void *allocate(size_t bytes) override {
    const size_t page = size_t(::sysconf(_SC_PAGESIZE));
    const size_t length = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    void *ptr =
        ::mmap(nullptr, length, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ptr == MAP_FAILED)
      return nullptr;
    regions_[ptr] = length;
    return ptr;
  }
  void free(void *ptr) override {
    auto it = regions_.find(ptr);
    if (it == regions_.end())
      return;
    ::munmap(it->first, it->second);
    regions_.erase(it);
  }
  void upload(void *device, const void *host, size_t bytes) override {
    ++uploads;
    Open open(*this);
    std::memcpy(device, host, bytes);
  }
  void download(void *host, const void *device, size_t bytes) override {
    ++downloads;
    Open open(*this);
    std::memcpy(host, device, bytes);
  }
  Error loadKernels(const Artifact &artifact) override {
    return inner_->loadKernels(artifact);
  }
  Error runDispatch(const Dispatch &dispatch, void **args,
                    int64_t images) override {
    ++dispatches;
    Open open(*this);
    return inner_->runDispatch(dispatch, args, images);
  }
  Error runEntry(const std::string &entry, const std::vector<Dispatch> &plan,
                 std::vector<std::vector<void *>> &args,
                 int64_t images) override {
    ++entries;
    return Device::runEntry(entry, plan, args, images);
  }
  Error synchronize() override {
    ++syncs;
    return Error::success();
  }

  /// Whether `ptr` lies in device memory.
  bool owns(const void *ptr) const {
    for (auto &[base, length] : regions_)
      if (ptr >= base && ptr < static_cast<const char *>(base) + length)
        return true;
    return false;
  }

  int64_t uploads = 0, downloads = 0, dispatches = 0, entries = 0, syncs = 0;

private:
  /// Makes the device memory accessible while it lives.
  struct Open {
    explicit Open(GuardedDevice &d) : d(d) {
      d.protect(PROT_READ | PROT_WRITE);
    }
    ~Open() { d.protect(PROT_NONE); }
    GuardedDevice &d;
  };
  void protect(int mode) {
    for (auto &[ptr, length] : regions_)
      ::mprotect(ptr, length, mode);
  }

  std::unique_ptr<Device> inner_;
  std::map<void *, size_t> regions_;
};

std::vector<float> flat(const std::vector<Tensor> &tensors) {
  std::vector<float> out;
  for (const Tensor &t : tensors)
    out.insert(out.end(), t.data.begin(), t.data.end());
  return out;
}

std::vector<float> flat(const std::vector<TensorRef> &views) {
  std::vector<float> out;
  for (const TensorRef &v : views)
    out.insert(out.end(), v.data, v.data + numElements(v.shape));
  return out;
}

class StagingTest : public ::testing::Test {
protected:
  std::shared_ptr<const Artifact> load(const std::vector<uint8_t> &bytes,
                                       const std::string &name) {
    const std::string path = dir / name;
    writeBytes(path, bytes);
    Expected<std::shared_ptr<const Artifact>> a = Artifact::load(path);
    EXPECT_TRUE(a) << a.error().message();
    return a ? *a : nullptr;
  }

  std::unique_ptr<Session> cpuSession(std::shared_ptr<const Artifact> a) {
    Expected<std::unique_ptr<Session>> s = Session::create(a, "cpu", 2);
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(*s) : nullptr;
  }

  /// A session on a new GuardedDevice, which `device` then points at.
  std::unique_ptr<Session> guardedSession(std::shared_ptr<const Artifact> a,
                                          GuardedDevice *&device) {
    auto owned = std::make_unique<GuardedDevice>();
    device = owned.get();
    Expected<std::unique_ptr<Session>> s = Session::create(a, std::move(owned));
    EXPECT_TRUE(s) << s.error().message();
    return s ? std::move(*s) : nullptr;
  }

  TempDir dir;
};

TEST_F(StagingTest, InferAndRunMatchTheCpu) {
  auto artifact = load(tinyArtifact(), "tiny.moec");
  ASSERT_TRUE(artifact);
  GuardedDevice *guarded = nullptr;
  std::unique_ptr<Session> cpu = cpuSession(artifact);
  std::unique_ptr<Session> staged = guardedSession(artifact, guarded);
  ASSERT_TRUE(cpu && staged);
  cpu->initWeights(7);
  staged->initWeights(7);
  EXPECT_EQ(flat(cpu->parameters()), flat(staged->parameters()));

  // infer, in chunks (7 images: 4 + 3).
  std::vector<float> images = tinyImages(7);
  std::vector<float> a(7 * kClasses), b(7 * kClasses, -1.0f);
  ASSERT_FALSE(cpu->infer(images.data(), 7, a.data()));
  ASSERT_FALSE(staged->infer(images.data(), 7, b.data()));
  EXPECT_EQ(a, b);
  EXPECT_EQ(guarded->entries, 2); // one runEntry per chunk

  // run() through input() and output(): host copies, not device memory.
  Expected<EntryTensor> in = staged->input("infer", "images");
  Expected<EntryTensor> out = staged->output("infer", "logits");
  Expected<EntryTensor> cpuIn = cpu->input("infer", "images");
  Expected<EntryTensor> cpuOut = cpu->output("infer", "logits");
  ASSERT_TRUE(in && out && cpuIn && cpuOut);
  EXPECT_FALSE(guarded->owns(in->data));
  EXPECT_FALSE(guarded->owns(out->data));
  EXPECT_EQ(staged->inputs("infer")[0].data, in->data); // the same copy
  EXPECT_EQ(staged->outputs("infer")[0].data, out->data);
  // Zeroed like the arena before any run.
  for (int64_t i = 0; i < out->count(); ++i)
    ASSERT_EQ(out->f32()[i], 0.0f);
  for (int64_t n : {3, 4, 1}) {
    std::vector<float> batch = tinyImages(kBatch);
    for (float &x : batch)
      x += float(n);
    std::memcpy(in->f32(), batch.data(), in->bytes());
    std::memcpy(cpuIn->f32(), batch.data(), cpuIn->bytes());
    int64_t uploads = guarded->uploads, downloads = guarded->downloads;
    ASSERT_FALSE(staged->run("infer", n));
    ASSERT_FALSE(cpu->run("infer", n));
    EXPECT_EQ(guarded->uploads, uploads + 1);     // the one input
    EXPECT_EQ(guarded->downloads, downloads + 1); // the one output
    for (int64_t i = 0; i < n * kClasses; ++i)
      ASSERT_EQ(out->f32()[i], cpuOut->f32()[i]) << n << " " << i;
  }

  // Profiling: one dispatch at a time, each synchronized.
  staged->setProfiling(true);
  cpu->setProfiling(true);
  int64_t syncs = guarded->syncs, entries = guarded->entries;
  ASSERT_FALSE(staged->infer(images.data(), 4, b.data()));
  ASSERT_FALSE(cpu->infer(images.data(), 4, a.data()));
  EXPECT_EQ(std::vector<float>(a.begin(), a.begin() + 4 * kClasses),
            std::vector<float>(b.begin(), b.begin() + 4 * kClasses));
  EXPECT_EQ(guarded->entries, entries); // no runEntry while profiling
  EXPECT_GE(guarded->syncs, syncs + 3); // one per dispatch
  EXPECT_EQ(staged->dispatchSeconds().size(), 3u);
  ASSERT_FALSE(staged->run("infer", 2));
  EXPECT_EQ(staged->entrySeconds("infer").size(), 3u);
}

TEST_F(StagingTest, BlockViewsAreHostCopies) {
  auto artifact = load(trainArtifact(), "train.moec");
  ASSERT_TRUE(artifact);
  GuardedDevice *guarded = nullptr;
  std::unique_ptr<Session> staged = guardedSession(artifact, guarded);
  ASSERT_TRUE(staged);
  staged->initWeights(3);
  std::vector<TensorRef> views = staged->blockViews();
  ASSERT_EQ(views.size(), 4u); // w, b, and their momentum
  for (const TensorRef &v : views)
    EXPECT_FALSE(guarded->owns(v.data));
  std::vector<float> params = flat(staged->parameters());
  std::vector<float> viewed = flat(views);
  EXPECT_EQ(std::vector<float>(viewed.begin(), viewed.begin() + 17), params);
  // A new binding shows after a refresh, through the same pointers.
  SafeTensors weights;
  for (Tensor t : staged->parameters()) {
    for (float &x : t.data)
      x += 1.0f;
    weights.tensors.push_back(std::move(t));
  }
  ASSERT_FALSE(staged->bindWeights(weights, "w.safetensors"));
  EXPECT_EQ(views[1].data[0], params[16]); // the copy, until refreshed
  staged->refreshBlockViews();
  EXPECT_EQ(views[1].data[0], params[16] + 1.0f);
  EXPECT_EQ(staged->blockViews()[1].data, views[1].data);
}

// The Trainer on the guarded device: every step, evaluation and
// checkpoint equals the cpu device's, and a checkpoint written there
// resumes on the cpu.
TEST_F(StagingTest, TrainerMatchesTheCpu) {
  auto artifact = load(trainArtifact(), "train.moec");
  ASSERT_TRUE(artifact);
  const std::string data = dir / "data";
  makeTrainData(data);
  GuardedDevice *guarded = nullptr;
  std::unique_ptr<Session> cpu = cpuSession(artifact);
  std::unique_ptr<Session> staged = guardedSession(artifact, guarded);
  ASSERT_TRUE(cpu && staged);
  TrainerOptions options;
  options.dataDir = data;
  options.epochs = 2;
  Expected<std::unique_ptr<Trainer>> a = Trainer::create(*cpu, options);
  Expected<std::unique_ptr<Trainer>> b = Trainer::create(*staged, options);
  ASSERT_TRUE(a) << a.error().message();
  ASSERT_TRUE(b) << b.error().message();
  std::vector<TensorRef> views = staged->blockViews();
  for (int k = 0; k < 3; ++k) {
    Expected<StepResult> sa = (*a)->step();
    Expected<StepResult> sb = (*b)->step();
    ASSERT_TRUE(sa) << sa.error().message();
    ASSERT_TRUE(sb) << sb.error().message();
    EXPECT_EQ(sa->loss, sb->loss) << k;
    EXPECT_EQ(sa->ceLoss, sb->ceLoss) << k;
    EXPECT_EQ(sa->auxLoss, sb->auxLoss) << k;
    EXPECT_EQ(sa->gradNorm, sb->gradNorm) << k;
    EXPECT_EQ(sa->lr, sb->lr) << k;
    EXPECT_EQ(sa->correct, sb->correct) << k;
    EXPECT_EQ(flat(cpu->parameters()), flat(staged->parameters())) << k;
    EXPECT_EQ(flat(cpu->state()), flat(staged->state())) << k;
    // The trainer refreshed the views it checks after the step.
    std::vector<float> block = flat(staged->parameters());
    std::vector<float> state = flat(staged->state());
    block.insert(block.end(), state.begin(), state.end());
    EXPECT_EQ(flat(views), block) << k;
  }
  Expected<EvalResult> ea = (*a)->evaluate();
  Expected<EvalResult> eb = (*b)->evaluate();
  ASSERT_TRUE(ea && eb);
  EXPECT_EQ(ea->lossSum, eb->lossSum);
  EXPECT_EQ(ea->correct, eb->correct);
  EXPECT_EQ(ea->images, eb->images);
  ASSERT_EQ(ea->routing.size(), eb->routing.size());
  for (size_t r = 0; r < ea->routing.size(); ++r)
    EXPECT_EQ(ea->routing[r].second, eb->routing[r].second);

  // Checkpoints: the same bytes from both devices, and one written on the
  // guarded device continues on the cpu like the cpu's own run.
  const std::string ca = dir / "a.safetensors", cb = dir / "b.safetensors";
  ASSERT_FALSE((*a)->saveCheckpoint(ca));
  ASSERT_FALSE((*b)->saveCheckpoint(cb));
  EXPECT_EQ(readBytes(ca), readBytes(cb));
  std::unique_ptr<Session> resumed = cpuSession(artifact);
  Expected<std::unique_ptr<Trainer>> c = Trainer::create(*resumed, options);
  ASSERT_TRUE(c) << c.error().message();
  ASSERT_FALSE((*c)->loadCheckpoint(cb));
  Expected<StepResult> sa = (*a)->step();
  Expected<StepResult> sc = (*c)->step();
  ASSERT_TRUE(sa && sc);
  EXPECT_EQ(sa->loss, sc->loss);
  EXPECT_EQ(flat(cpu->parameters()), flat(resumed->parameters()));
  // And back: the cpu's checkpoint into the guarded device.
  ASSERT_FALSE((*a)->saveCheckpoint(ca));
  ASSERT_FALSE((*b)->loadCheckpoint(ca));
  EXPECT_EQ(flat(cpu->parameters()), flat(staged->parameters()));
  EXPECT_EQ(flat(cpu->state()), flat(staged->state()));
}

// A NaN the update writes into the parameters is found through the
// refreshed host copy, as on the cpu.
TEST_F(StagingTest, NonFiniteFoundInTheHostCopy) {
  auto artifact = load(trainArtifact(), "train.moec");
  ASSERT_TRUE(artifact);
  const std::string data = dir / "data";
  makeTrainData(data, /*poisoned=*/true);
  GuardedDevice *guarded = nullptr;
  std::unique_ptr<Session> cpu = cpuSession(artifact);
  std::unique_ptr<Session> staged = guardedSession(artifact, guarded);
  ASSERT_TRUE(cpu && staged);
  TrainerOptions options;
  options.dataDir = data;
  options.epochs = 3;
  Expected<std::unique_ptr<Trainer>> a = Trainer::create(*cpu, options);
  Expected<std::unique_ptr<Trainer>> b = Trainer::create(*staged, options);
  ASSERT_TRUE(a && b);
  std::string cpuError, stagedError;
  for (int k = 0; k < 6 && cpuError.empty(); ++k) {
    Expected<StepResult> sa = (*a)->step();
    Expected<StepResult> sb = (*b)->step();
    ASSERT_EQ(bool(sa), bool(sb)) << k;
    if (!sa) {
      cpuError = sa.error().message();
      stagedError = sb.error().message();
      EXPECT_EQ((*a)->lastFailure(), TrainFailure::NonFinite);
      EXPECT_EQ((*b)->lastFailure(), TrainFailure::NonFinite);
    }
  }
  ASSERT_FALSE(cpuError.empty()) << "the poisoned data never showed";
  EXPECT_EQ(cpuError, stagedError);
}

// evaluate() alone (its inputs and outputs through host copies).
TEST_F(StagingTest, EvaluateMatchesTheCpu) {
  auto artifact = load(trainArtifact(), "train.moec");
  ASSERT_TRUE(artifact);
  const std::string data = dir / "data";
  makeTrainData(data);
  Expected<Dataset> test = loadModelSplit(artifact->manifest(), data, "test");
  ASSERT_TRUE(test) << test.error().message();
  GuardedDevice *guarded = nullptr;
  std::unique_ptr<Session> cpu = cpuSession(artifact);
  std::unique_ptr<Session> staged = guardedSession(artifact, guarded);
  ASSERT_TRUE(cpu && staged);
  cpu->initWeights(11);
  staged->initWeights(11);
  Expected<EvalResult> ea = evaluate(*cpu, *test);
  Expected<EvalResult> eb = evaluate(*staged, *test);
  ASSERT_TRUE(ea && eb);
  EXPECT_EQ(ea->lossSum, eb->lossSum);
  EXPECT_EQ(ea->correct, eb->correct);
  EXPECT_EQ(ea->routing.size(), eb->routing.size());
  for (size_t r = 0; r < ea->routing.size(); ++r)
    EXPECT_EQ(ea->routing[r].second, eb->routing[r].second);
}

} // namespace
