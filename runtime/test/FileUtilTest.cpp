//===- FileUtilTest.cpp - atomic writes, devices, pipes and links ---------===//

#include "moec/Runtime/FileUtil.h"

#include "TestUtil.h"

#include <gtest/gtest.h>

#include <fcntl.h>
#include <filesystem>
#include <sys/stat.h>
#include <unistd.h>

using namespace moec::rt;
using namespace moec::rt::test;
namespace fs = std::filesystem;

namespace {

std::string readText(const std::string &path) {
  std::vector<uint8_t> bytes = readBytes(path);
  return std::string(bytes.begin(), bytes.end());
}

// A regular file is replaced whole, leaving no temporary behind.
TEST(FileUtil, RegularFileIsReplaced) {
  TempDir dir;
  std::string path = dir / "out.txt";
  ASSERT_FALSE(writeFileAtomic(path, "old", 3));
  ASSERT_FALSE(writeFileAtomic(path, "new!", 4));
  EXPECT_EQ(readText(path), "new!");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()),
                          fs::directory_iterator()),
            1);
}

// A symbolic link stays a link: its target is replaced atomically.
TEST(FileUtil, SymlinkKeepsTheLink) {
  TempDir dir;
  std::string target = dir / "target.txt", link = dir / "link.txt";
  ASSERT_FALSE(writeFileAtomic(target, "old", 3));
  fs::create_symlink(target, link);
  ASSERT_FALSE(writeFileAtomic(link, "new", 3));
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(readText(target), "new");

  // A link to a device writes through to it (and stays a link).
  std::string null = dir / "null";
  fs::create_symlink("/dev/null", null);
  ASSERT_FALSE(writeFileAtomic(null, "gone", 4));
  EXPECT_TRUE(fs::is_symlink(null));
  EXPECT_TRUE(fs::is_character_file("/dev/null"));

  // A link whose target does not exist yet creates it.
  std::string later = dir / "later", created = dir / "created.txt";
  fs::create_symlink("created.txt", later);
  ASSERT_FALSE(writeFileAtomic(later, "made", 4));
  EXPECT_TRUE(fs::is_symlink(later));
  EXPECT_EQ(readText(created), "made");

  // A link into a missing directory is an Io error naming the output.
  std::string dangling = dir / "dangling";
  fs::create_symlink(dir / "missing/file", dangling);
  Error e = writeFileAtomic(dangling, "x", 1);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.code(), ErrorCode::Io);
  EXPECT_NE(e.message().find(": cannot create: No such file or directory"),
            std::string::npos)
      << e.message();
  EXPECT_TRUE(fs::is_symlink(dangling));

  // A loop of links is an Io error.
  fs::create_symlink(dir / "loop2", dir / "loop1");
  fs::create_symlink(dir / "loop1", dir / "loop2");
  e = writeFileAtomic(dir / "loop1", "x", 1);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(), dir / "loop1" + ": too many levels of symbolic links");
}

// A FIFO is written through, not replaced by a regular file.
TEST(FileUtil, FifoIsWrittenThrough) {
  TempDir dir;
  std::string fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  int reader = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(reader, 0);
  ASSERT_FALSE(writeFileAtomic(fifo, "through", 7));
  char got[16] = {};
  EXPECT_EQ(::read(reader, got, sizeof(got)), 7);
  ::close(reader);
  EXPECT_EQ(std::string(got), "through");
  EXPECT_TRUE(fs::is_fifo(fifo));
}

TEST(FileUtil, DirectoryIsAnError) {
  TempDir dir;
  Error e = writeFileAtomic(dir.path(), "x", 1);
  ASSERT_TRUE(e);
  EXPECT_EQ(e.message(),
            dir.path() + ": cannot write: is a directory, not a file");
}

} // namespace
