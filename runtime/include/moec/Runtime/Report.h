//===- Report.h - text reports of a model and its kernel timings -*- C++
//-*-===//
//
// The reports moec-run prints, as text, so that other tools and tests can
// produce them too: `moec-run inspect`'s summary of an artifact (model,
// entry points, parameters, FLOPs, memory, kernels) and `--profile N`'s
// table of time per op kind and the N most expensive dispatches.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_RUNTIME_REPORT_H
#define MOEC_RUNTIME_REPORT_H

#include "moec/Runtime/Artifact.h"
#include "moec/Runtime/Session.h"

#include <cstddef>
#include <string>

namespace moec::rt {

/// The `moec-run inspect` report of `artifact` (lines ending in '\n').
std::string inspectReport(const Artifact &artifact);

/// The time per op kind, then the `top` most expensive dispatches of entry
/// point `entry`, from the timings a profiling session collected
/// (Session::setProfiling); empty when there are none. Starts with an
/// empty line.
std::string profileReport(Session &session, size_t top,
                          const std::string &entry = kEntryInfer);

} // namespace moec::rt

#endif // MOEC_RUNTIME_REPORT_H
