//===- PlanCheck.h - validating a plan and its kernels ----------*- C++ -*-===//
//
// The loader's last line of defence: a checksum only says the file is what
// its writer wrote, so before anything runs, every dispatch of the plan is
// checked against the manifest (arguments, their extents, tile counts,
// scratch sizes) and the kernels section against its target's format: the
// ELF headers against the section's bytes (cpu), the PTX text's kernel
// entries against the plan (cuda).
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_LIB_PLANCHECK_H
#define MOEC_RUNTIME_LIB_PLANCHECK_H

#include "moec/Runtime/Artifact.h"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moec::rt {

/// The most arguments one dispatch may pass.
inline constexpr size_t kMaxDispatchArgs = 1024;
/// The most tiles a "fixed" dispatch may run over.
inline constexpr int64_t kMaxFixedTiles = int64_t(1) << 20;
/// The most scratch bytes one dispatch may ask for over its whole range
/// (scratch_bytes times its largest range), 1 TiB.
inline constexpr uint64_t kMaxScratchBytes = uint64_t(1) << 40;
/// The most threads a CUDA block may have.
inline constexpr int64_t kMaxCudaBlockThreads = 1024;

/// Checks every dispatch of `plan`: 1 to kMaxDispatchArgs arguments, the same
/// number at every use of a kernel; a "param" argument starts at a parameter
/// or state tensor; an argument with a byte extent lies within its space;
/// an "images" dispatch has at most the batch as tiles, a "fixed" one at
/// most kMaxFixedTiles; scratch_bytes times the largest range is at most
/// kMaxScratchBytes. Format errors read "WHERE: /entries/E/I/...: ...".
Error checkPlan(const Plan &plan, const Manifest &manifest,
                const std::string &where);

/// Checks that the kernels section is a 64-bit little-endian x86-64 ELF
/// shared object whose program headers, segments' file bytes and section
/// headers all lie within its `size` bytes, so dlopen reads nothing past
/// them. Format errors name `path`.
Error checkKernelsElf(const uint8_t *data, uint64_t size,
                      const std::string &path);

/// Checks that the kernels section of a cuda artifact is PTX text ending
/// in one NUL byte (and holding no other), with a ".version" and a ".target"
/// directive and an ".entry" for each of `kernels`. Format errors name
/// `path` and the missing kernel.
Error checkKernelsPtx(const uint8_t *data, uint64_t size,
                      const std::vector<std::string> &kernels,
                      const std::string &path);

/// The names of the ".entry" directives of PTX `text`, in order.
std::vector<std::string> ptxEntryNames(std::string_view text);

} // namespace moec::rt

#endif // MOEC_RUNTIME_LIB_PLANCHECK_H
