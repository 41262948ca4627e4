#pragma once
// The config file as a source (`dsproxy run --config FILE`): Kubernetes objects in YAML or JSON,
// decoded by config::load_objects_file (in 64 KB pieces, one object's tree at a time), delivered
// whole (replace_all) to the control plane.
//
// The file is polled: every `poll` its stamp (mtime, size, inode: an editor or `kubectl ... >
// tmp && mv tmp FILE` both change it) is compared; a changed stamp hashes the file in a streaming
// pass (SHA-256, 64 KB at a time: the text is never held whole), and a hash equal to the last one
// delivered skips the decode and the rebuild (a `touch`, or a generator rewriting the same
// cluster every few seconds, costs one read). resync() (SIGHUP) reads and delivers even
// unchanged content. The hash and the decode read the same inode, opened once (see load()).
//
// What keeps the last good state (logged, the snapshot in force stays, the poll goes on):
//   - a file that fails to decode or validate (the error names the document and field);
//   - an empty file, or one with no object dsproxy understands: taken as a truncated write or a
//     generator that lost its cluster, never as "the cluster is empty" (which would remove every
//     capture and refusal rule of the node);
//   - a file rewritten in place while it was being read (the read may be torn): read again at
//     the next poll;
//   - a deleted (or unreadable) file: said once when it disappears and once when it is back.
// The first load is different: without a good file there is nothing to serve, so it is reported
// to the sink as failed (exit 2), as `dsproxy run` always did.

#include <array>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <ctime>
#include <mutex>
#include <optional>
#include <string>
#include <sys/types.h>

#include "sources/config_source.hpp"

namespace dsproxy::sources {

struct FileSourceOptions {
  std::string path;
  std::chrono::milliseconds poll{1000};
  // Tests only: called between the hash pass and the decode, where a writer can race the read.
  std::function<void()> test_after_hash = {};
};

class FileSource final : public ConfigSource {
 public:
  FileSource(boost::asio::io_context& io, FileSourceOptions options, ObjectSink& sink);
  ~FileSource() override;

  std::string name() const override { return "file " + options_.path; }
  void start() override;
  void stop() override;
  void resync(std::string_view why) override;
  bool synced() const override { return synced_.load(std::memory_order_acquire); }
  boost::json::object status() const override;

 private:
  struct Stamp {
    timespec mtime{};
    off_t size = -1;
    ino_t inode = 0;
    bool operator==(const Stamp& o) const {
      return mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec && size == o.size && inode == o.inode;
    }
  };
  static std::optional<Stamp> stamp_of(const std::string& path, int& error);
  using Digest = std::array<unsigned char, 32>;  // SHA-256

  void schedule_poll();
  void poll();
  // Reads, decodes and delivers; `force` delivers unchanged content too.
  void load(std::string_view why, bool force);
  void count_failure(const std::string& error);

  boost::asio::io_context& io_;
  FileSourceOptions options_;
  ObjectSink& sink_;
  boost::asio::steady_timer timer_;
  bool stopped_ = false;
  std::optional<Stamp> stamp_;               // of the last read, good or bad
  std::optional<Digest> delivered_;          // content hash of the last file delivered
  bool missing_ = false;                     // said that the file is gone; say when it is back
  std::atomic<bool> synced_{false};

  mutable std::mutex status_mutex_;  // the fields below are read by the front thread
  std::uint64_t loads_ = 0;          // files delivered
  std::uint64_t unchanged_ = 0;      // reads skipped because the content was the same
  std::uint64_t failures_ = 0;
  std::size_t objects_ = 0;          // in the last file delivered
  std::string last_error_;
};

}  // namespace dsproxy::sources
