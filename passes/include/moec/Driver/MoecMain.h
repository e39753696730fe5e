//===- MoecMain.h - moec's command line -------------------------*- C++ -*-===//
//
// The whole `moec` tool as a function (tools/moec/moec.cpp is its main), like
// MlirOptMain for moec-opt.
//
//===----------------------------------------------------------------------===//

#ifndef MOEC_DRIVER_MOECMAIN_H
#define MOEC_DRIVER_MOECMAIN_H

namespace moec::driver {

/// Parses the command line, compiles and writes the output. Returns the exit
/// code: 0 success, 1 compile or I/O failure, 2 bad spec or bad usage
/// (flags, plugins, pass pipelines).
int moecMain(int argc, char **argv);

} // namespace moec::driver

#endif // MOEC_DRIVER_MOECMAIN_H
