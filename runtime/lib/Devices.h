//===- Devices.h - the device implementations -------------------*- C++ -*-===//
//
// Internal to the runtime library: the constructors createDevice (Device.h)
// chooses between.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_DEVICES_H
#define MOEC_RUNTIME_LIB_DEVICES_H

#include "moec/Runtime/Device.h"

namespace moec::rt {

/// The cpu device on `threads` (>= 1) threads; throws std::system_error
/// when a thread cannot be started.
std::unique_ptr<Device> createCpuDevice(int threads);

/// The cuda device on the first visible GPU, or a Device error saying why
/// there is none (CudaDevice.cpp).
Expected<std::unique_ptr<Device>> createCudaDevice();

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_DEVICES_H
