//===- moec.cpp - the moec compiler driver --------------------------------===//
//
// `moec compile SPEC ...`: the command line and the compile flow live in the
// driver library (moec/Driver/MoecMain.h, moec/Driver/Driver.h), which the
// tests link too.
//
//===----------------------------------------------------------------------===//

#include "moec/Driver/MoecMain.h"

int main(int argc, char **argv) { return moec::driver::moecMain(argc, argv); }
