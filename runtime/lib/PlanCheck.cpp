//===- PlanCheck.cpp - validating a plan and its kernels ------------------===//

#include "PlanCheck.h"

#include "JsonCheck.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

namespace moec::rt {

Error checkPlan(const Plan &plan, const Manifest &m, const std::string &where) {
  // The extent of each tensor of the parameter block, by its offset.
  std::map<uint64_t, uint64_t> tensors;
  for (const auto *specs : {&m.params, &m.state})
    for (const ParamSpec &p : *specs)
      tensors[p.offset] = uint64_t(p.count()) * 4;
  // Per kernel: its argument count and where it was first seen.
  std::map<std::string, std::pair<size_t, std::string>> kernels;
  for (const auto &[entry, dispatches] : plan.entries) {
    for (size_t i = 0; i < dispatches.size(); ++i) {
      const Dispatch &d = dispatches[i];
      const std::string at = jsonPointer(jsonPointer("/entries", entry), i);
      auto fail = [&](const std::string &pointer, const auto &...args) {
        return makeError(ErrorCode::Format, where, ": ", pointer, ": ",
                         args...);
      };
      const std::string argsAt = jsonPointer(at, "args");
      if (d.args.empty() || d.args.size() > kMaxDispatchArgs)
        return fail(argsAt, "expected 1 to ", kMaxDispatchArgs,
                    " arguments, got ", d.args.size());
      auto [known, inserted] = kernels.try_emplace(d.kernel, d.args.size(), at);
      if (!inserted && known->second.first != d.args.size())
        return fail(argsAt, d.args.size(), " arguments, but kernel '", d.kernel,
                    "' takes ", known->second.first, " (at ",
                    known->second.second, ")");
      if (d.parallel == Dispatch::Parallel::Images && d.tiles > m.batch)
        return fail(jsonPointer(at, "tiles"), d.tiles,
                    " tiles, but an images dispatch runs over at most the "
                    "batch (",
                    m.batch, ")");
      if (d.parallel == Dispatch::Parallel::Fixed && d.tiles > kMaxFixedTiles)
        return fail(jsonPointer(at, "tiles"), d.tiles,
                    " tiles, more than the limit of ", kMaxFixedTiles);
      // The largest range: `tiles` for both kinds (an images dispatch over
      // a full batch runs over its tiles).
      const uint64_t units = uint64_t(std::max<int64_t>(d.tiles, 1));
      if (d.scratchBytes > kMaxScratchBytes / units)
        return fail(jsonPointer(at, "scratch_bytes"), d.scratchBytes,
                    " bytes for each of up to ", units,
                    " units exceed the limit of ", kMaxScratchBytes,
                    " scratch bytes per dispatch");
      for (size_t k = 0; k < d.args.size(); ++k) {
        const BufferArg &arg = d.args[k];
        const std::string argAt = jsonPointer(argsAt, k);
        const bool param = arg.space == BufferArg::Space::Param;
        const uint64_t limit = param ? m.paramBytes : m.arenaBytes;
        uint64_t extent = arg.bytes;
        if (param) {
          auto tensor = tensors.find(arg.offset);
          if (tensor == tensors.end())
            return fail(jsonPointer(argAt, "offset"), arg.offset,
                        " is not the start of a parameter or state tensor");
          if (!arg.bytes)
            extent = tensor->second;
        }
        if (extent > limit || arg.offset > limit - extent)
          return fail(argAt, "bytes [", arg.offset, ", ", arg.offset + extent,
                      ") extend past the end of the ",
                      param ? "parameter block" : "arena", " (", limit,
                      " bytes)");
      }
    }
  }
  return Error::success();
}

namespace {

template <typename T> T field(const uint8_t *data, uint64_t at) {
  T value;
  std::memcpy(&value, data + at, sizeof(T));
  return value;
}

/// Whether [offset, offset + count * entry) lies within [0, size).
bool within(uint64_t offset, uint64_t count, uint64_t entry, uint64_t size) {
  return offset <= size && count <= (size - offset) / entry;
}

} // namespace

Error checkKernelsElf(const uint8_t *data, uint64_t size,
                      const std::string &path) {
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Format, path, ": the kernels section ",
                     args...);
  };
  if (size < 64 || std::memcmp(data,
                               "\x7f"
                               "ELF",
                               4) != 0)
    return fail("is not an ELF file");
  if (data[4] != 2 || data[5] != 1)
    return fail("is not a 64-bit little-endian ELF file");
  const auto type = field<uint16_t>(data, 16);
  const auto machine = field<uint16_t>(data, 18);
  if (type != 3 /*ET_DYN*/)
    return fail("is not an ELF shared object (e_type ", type, ")");
  if (machine != 62 /*EM_X86_64*/)
    return fail("is ELF code for machine ", machine, ", not x86-64");

  const auto phoff = field<uint64_t>(data, 32);
  const auto shoff = field<uint64_t>(data, 40);
  const auto phentsize = field<uint16_t>(data, 54);
  const auto phnum = field<uint16_t>(data, 56);
  const auto shentsize = field<uint16_t>(data, 58);
  const auto shnum = field<uint16_t>(data, 60);
  if (phnum == 0 || phentsize != 56)
    return fail("has ", phnum, " program headers of ", phentsize,
                " bytes (expected at least one of 56)");
  if (!within(phoff, phnum, 56, size))
    return fail("(", size, " bytes) is truncated: its ", phnum,
                " program headers at offset ", phoff, " lie past its end");
  if (shnum != 0 && (shentsize != 64 || !within(shoff, shnum, 64, size)))
    return fail("(", size, " bytes) is truncated: its ", shnum,
                " section headers at offset ", shoff, " lie past its end");
  for (uint16_t i = 0; i < phnum; ++i) {
    const uint64_t at = phoff + uint64_t(i) * 56;
    const auto ptype = field<uint32_t>(data, at);
    const auto offset = field<uint64_t>(data, at + 8);
    const auto filesz = field<uint64_t>(data, at + 32);
    const auto memsz = field<uint64_t>(data, at + 40);
    if (filesz != 0 && !within(offset, filesz, 1, size))
      return fail("(", size, " bytes) is truncated: program header ", i,
                  " (type ", ptype, ") covers bytes [", offset, ", ",
                  offset + filesz, ")");
    if (ptype == 1 /*PT_LOAD*/ && filesz > memsz)
      return fail("has a bad program header ", i, ": ", filesz,
                  " file bytes in a segment of ", memsz);
  }
  return Error::success();
}

static bool isPtxIdentifierChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_' || c == '$';
}

static bool isPtxSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/// Whether `text` holds `directive` (".version") as a whole word.
static bool hasDirective(std::string_view text, std::string_view directive) {
  for (size_t at = text.find(directive); at != std::string_view::npos;
       at = text.find(directive, at + 1)) {
    size_t end = at + directive.size();
    bool startsWord = at == 0 || !isPtxIdentifierChar(text[at - 1]);
    bool endsWord = end == text.size() || !isPtxIdentifierChar(text[end]);
    if (startsWord && endsWord)
      return true;
  }
  return false;
}

std::vector<std::string> ptxEntryNames(std::string_view text) {
  std::vector<std::string> names;
  const std::string_view directive = ".entry";
  for (size_t at = text.find(directive); at != std::string_view::npos;
       at = text.find(directive, at + 1)) {
    size_t end = at + directive.size();
    if ((at > 0 && isPtxIdentifierChar(text[at - 1])) || end == text.size() ||
        !isPtxSpace(text[end]))
      continue;
    while (end < text.size() && isPtxSpace(text[end]))
      ++end;
    size_t nameEnd = end;
    while (nameEnd < text.size() && isPtxIdentifierChar(text[nameEnd]))
      ++nameEnd;
    if (nameEnd > end)
      names.emplace_back(text.substr(end, nameEnd - end));
  }
  return names;
}

Error checkKernelsPtx(const uint8_t *data, uint64_t size,
                      const std::vector<std::string> &kernels,
                      const std::string &path) {
  auto fail = [&](const auto &...args) {
    return makeError(ErrorCode::Format, path,
                     ": the kernels section of this cuda artifact ", args...);
  };
  if (size >= 4 && std::memcmp(data,
                               "\x7f"
                               "ELF",
                               4) == 0)
    return fail("is an ELF file, not PTX text");
  if (size == 0 || data[size - 1] != 0)
    return fail("is not PTX text (it does not end in a NUL byte)");
  const char *chars = reinterpret_cast<const char *>(data);
  const size_t length = std::strlen(chars);
  if (length != size - 1)
    return fail("is not PTX text (a NUL byte at offset ", length,
                " before its end, ", size - 1, ")");
  std::string_view text(chars, length);
  for (const char *directive : {".version", ".target"})
    if (!hasDirective(text, directive))
      return fail("is not PTX text (no ", directive, " directive)");
  std::vector<std::string> entries = ptxEntryNames(text);
  std::set<std::string> defined(entries.begin(), entries.end());
  for (const std::string &kernel : kernels)
    if (!defined.count(kernel))
      return fail("has no '.entry ", kernel, "': kernel '", kernel,
                  "' named in the plan is not in the PTX");
  return Error::success();
}

} // namespace moec::rt
