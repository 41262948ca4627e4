#include "proxy/pipe_pool.hpp"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace dsproxy::proxy {
namespace pipe_pool_test {  // named: unity builds put several test files in one translation unit

TEST(PipePool, ReusesDrainedPipesAndClosesOnesThatMayHoldData) {
  PipePool pool(64 * 1024, 2, 8);
  Pipe a = pool.acquire();
  ASSERT_TRUE(a.valid());
  const int a_read = a.read_fd;
  pool.release(a);
  EXPECT_EQ(pool.idle(), 1u);
  Pipe again = pool.acquire();
  EXPECT_EQ(again.read_fd, a_read) << "a drained pipe is reused";
  ASSERT_EQ(::write(again.write_fd, "x", 1), 1);
  pool.release(again, false);
  EXPECT_EQ(pool.idle(), 0u) << "a pipe that may hold bytes is never handed to another connection";
  EXPECT_EQ(pool.in_use(), 0u);
}

TEST(PipePool, LendsAtMostTheCap) {
  PipePool pool(64 * 1024, 2, 3);
  std::vector<Pipe> lent;
  for (int i = 0; i < 3; ++i) lent.push_back(pool.acquire());
  for (const auto& p : lent) EXPECT_TRUE(p.valid());
  EXPECT_FALSE(pool.acquire().valid()) << "past the cap the relay must copy instead";
  pool.release(lent.back());
  lent.pop_back();
  lent.push_back(pool.acquire());
  EXPECT_TRUE(lent.back().valid());
  for (auto& p : lent) pool.release(p);
}

// Whether F_SETPIPE_SZ is granted depends on the machine: /proc/sys/fs/pipe-max-size, the
// user's fs/pipe-user-pages-soft budget (shared with every other pipe that user holds: with
// proxies of other tests running as root, the budget can be spent) and CAP_SYS_RESOURCE, which
// overrides both. So each test runs in a child process that switches to a user id of its own:
// no capabilities and an untouched pipe budget, whatever else runs on the machine. Needs root
// (CAP_SETUID), as scripts/test.sh runs the tests; without it the test fails, never skips.
std::size_t pipe_max_size() {
  std::ifstream in("/proc/sys/fs/pipe-max-size");
  std::size_t v = 0;
  in >> v;
  return v;
}

// In the child: become an otherwise unused user, or exit 2 saying why.
void become_fresh_user() {
  const auto uid = static_cast<uid_t>(1'900'000'000u + static_cast<unsigned>(::getpid()) % 1'000'000u);
  if (::setgroups(0, nullptr) != 0 || ::setgid(uid) != 0 || ::setuid(uid) != 0) {
    std::fprintf(stderr, "cannot switch to uid %u (needs root): %s\n", uid, std::strerror(errno));
    std::exit(2);
  }
}

// Exits 0 when `ok`, else prints `what` and exits 1: the child's verdict, read by EXPECT_EXIT.
void check(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "FAILED: %s\n", what.c_str());
  std::exit(1);
}

TEST(PipePool, EachPipeReportsWhatItReallyHolds) {
  // The relay reads a splice shorter than the pipe's capacity as "socket drained", so the
  // capacity must be the kernel's figure, not the size asked for: 100,000 bytes come back as
  // a power-of-two number of pages (32 pages of 4 KiB).
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::size_t want = std::min<std::size_t>(100000, pipe_max_size());
  ASSERT_GT(want, 0u);
  EXPECT_EXIT(
      {
        become_fresh_user();
        PipePool pool(want, 2, 3);
        Pipe p = pool.acquire();
        check(p.valid(), "acquire");
        const auto kernel = static_cast<std::size_t>(::fcntl(p.write_fd, F_GETPIPE_SZ));
        const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
        std::size_t pages = 1;
        while (pages * page < want) pages *= 2;
        check(p.capacity == kernel, "capacity " + std::to_string(p.capacity) + " != F_GETPIPE_SZ " +
                                        std::to_string(kernel));
        check(p.capacity == pages * page, "capacity " + std::to_string(p.capacity) + ", expected " +
                                              std::to_string(pages * page));
        pool.release(p);
        Pipe again = pool.acquire();
        check(again.capacity == p.capacity, "a reused pipe keeps its capacity");
        pool.release(again);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(PipePool, ARefusedSizeLeavesThePipesOwnCapacity) {
  // Without CAP_SYS_RESOURCE a size above pipe-max-size is always refused (EPERM): the pipe
  // keeps what it had, and says so instead of claiming the size asked for.
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  const std::size_t max = pipe_max_size();
  ASSERT_GT(max, 0u);
  EXPECT_EXIT(
      {
        become_fresh_user();
        PipePool pool(2 * max, 2, 3);
        Pipe p = pool.acquire();
        check(p.valid(), "acquire");
        const auto kernel = static_cast<std::size_t>(::fcntl(p.write_fd, F_GETPIPE_SZ));
        check(p.capacity == kernel, "capacity " + std::to_string(p.capacity) + " != F_GETPIPE_SZ " +
                                        std::to_string(kernel));
        check(p.capacity > 0 && p.capacity <= max, "capacity " + std::to_string(p.capacity) + " past pipe-max-size");
        pool.release(p);
        std::exit(0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace pipe_pool_test
}  // namespace dsproxy::proxy
