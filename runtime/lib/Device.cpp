//===- Device.cpp - choosing a device -------------------------------------===//

#include "moec/Runtime/Device.h"

#include "Devices.h"

#include <system_error>
#include <thread>

namespace moec::rt {

Device::~Device() = default;

Error Device::runEntry(const std::string &, const std::vector<Dispatch> &plan,
                       std::vector<std::vector<void *>> &args, int64_t images) {
  for (size_t i = 0; i < plan.size(); ++i)
    if (Error e = runDispatch(plan[i], args[i].data(), images))
      return e;
  return synchronize();
}

int resolveThreads(int threads) {
  if (threads > 0)
    return threads;
  unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 ? 1 : static_cast<int>(cores);
}

Expected<std::unique_ptr<Device>> createDevice(std::string_view name,
                                               int threads) {
  if (name != kTargetCpu && name != kTargetCuda)
    return makeError(ErrorCode::Argument, "unknown device '", name,
                     "' (this runtime has: cpu, cuda)");
  if (threads < 0)
    return makeError(ErrorCode::Argument,
                     "threads must be >= 0 (0 = every core), got ", threads);
  if (threads > 4096)
    return makeError(ErrorCode::Argument, "threads must be <= 4096, got ",
                     threads);
  if (name == kTargetCuda)
    return createCudaDevice();
  try {
    return createCpuDevice(resolveThreads(threads));
  } catch (const std::system_error &e) {
    return makeError(ErrorCode::Device, "cannot start ", threads,
                     " threads: ", e.what());
  }
}

} // namespace moec::rt
