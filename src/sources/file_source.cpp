#include "sources/file_source.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <string_view>

#include "config/k8s_decoder.hpp"

namespace dsproxy::sources {

namespace {

std::size_t object_count(const config::ClusterObjects& o) {
  return o.services.size() + o.pods.size() + o.endpoint_slices.size() + o.nodes.size() + o.namespaces.size() + o.fqdn_slices.size();
}

// A descriptor closed on every way out of load(), exceptions included.
class Descriptor {
 public:
  explicit Descriptor(int fd) : fd_(fd) {}
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  ~Descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

struct ContentHash {
  std::array<unsigned char, 32> digest{};
  bool blank = true;  // nothing but whitespace: "the file is empty" rather than "no Service..."
};

// SHA-256 of the file, read from `fd` 64 KB at a time up to one byte past the decoder's size
// limit (an oversized file is refused without being read whole, as the decoder would refuse it).
//
// Why SHA-256 through OpenSSL's EVP rather than a fast non-cryptographic hash: OpenSSL is already
// linked (TLS to the API server), its streaming interface is what this needs, and with the SHA
// extensions every x86-64 and ARMv8 server CPU of the last years has, it runs at about 1.4 GB/s
// here (`openssl speed -evp sha256`): 75 ms for the 104 MB JSON dump of a 10,000-Service cluster
// whose decode takes seconds, so a faster hash would save nothing that shows. A 64-bit
// non-cryptographic hash would also need a library not in the build (std::hash does not stream),
// and SHA-256 leaves no doubt that "same hash" means "same bytes", even for a file whose writer
// chooses its content.
ContentHash hash_file(int fd, const std::string& path) {
  const std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    throw config::ConfigError(path + ": cannot hash the file: OpenSSL has no SHA-256");
  ContentHash out;
  std::array<char, 64 * 1024> chunk;
  std::size_t total = 0;
  for (;;) {
    const ssize_t got = ::read(fd, chunk.data(), chunk.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      throw config::ConfigError(path + ": read failed: " + std::strerror(errno));
    }
    if (got == 0) break;
    total += static_cast<std::size_t>(got);
    if (total > config::kMaxConfigBytes)
      throw config::ConfigError(path + ": more than " + std::to_string(config::kMaxConfigBytes) +
                                " bytes (the config size limit)");
    const std::string_view piece(chunk.data(), static_cast<std::size_t>(got));
    if (out.blank && piece.find_first_not_of(" \t\r\n") != std::string_view::npos) out.blank = false;
    EVP_DigestUpdate(ctx.get(), piece.data(), piece.size());
  }
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx.get(), out.digest.data(), &length) != 1 || length != out.digest.size())
    throw config::ConfigError(path + ": cannot hash the file (SHA-256 failed)");
  return out;
}

std::string renamed(std::string text, const std::string& alias, const std::string& path) {
  for (std::size_t at = text.find(alias); at != std::string::npos; at = text.find(alias, at + path.size()))
    text.replace(at, alias.size(), path);
  return text;
}

// Decodes the inode `fd` is open on, whatever `path` names by now: /proc/self/fd/N opens the
// file the descriptor refers to (a new open file description, from offset 0, even if the file
// was renamed over or unlinked since), and the decoder's messages name `path`, as the user knows it.
config::ClusterObjects decode_inode(int fd, ino_t inode, const std::string& path) {
  const std::string alias = "/proc/self/fd/" + std::to_string(fd);
  struct stat st {};
  if (::stat(alias.c_str(), &st) != 0 || st.st_ino != inode)
    throw config::ConfigError(path + ": cannot reopen it through " + alias + " (is /proc mounted?)");
  try {
    config::ClusterObjects objects = config::load_objects_file(alias);
    for (auto& w : objects.warnings) w = renamed(std::move(w), alias, path);
    return objects;
  } catch (const config::ConfigError& e) {
    throw config::ConfigError(renamed(e.what(), alias, path));
  }
}

}  // namespace

FileSource::FileSource(boost::asio::io_context& io, FileSourceOptions options, ObjectSink& sink)
    : io_(io), options_(std::move(options)), sink_(sink), timer_(io) {}

FileSource::~FileSource() { stop(); }

std::optional<FileSource::Stamp> FileSource::stamp_of(const std::string& path, int& error) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    error = errno;
    return std::nullopt;
  }
  error = 0;
  return Stamp{st.st_mtim, st.st_size, st.st_ino};
}

void FileSource::start() {
  stopped_ = false;
  load("start", true);
  if (!synced()) {
    // Nothing to serve yet: as `dsproxy run` always did, a bad first file stops the start.
    std::string error;
    {
      std::lock_guard lock(status_mutex_);
      error = last_error_;
    }
    sink_.failed(*this, error, 2);
    return;
  }
  schedule_poll();
}

void FileSource::stop() {
  stopped_ = true;
  timer_.cancel();
}

void FileSource::resync(std::string_view why) {
  if (stopped_) return;
  load(why, true);
}

void FileSource::schedule_poll() {
  timer_.expires_after(options_.poll);
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || stopped_) return;
    poll();
    schedule_poll();
  });
}

void FileSource::poll() {
  int error = 0;
  const auto now = stamp_of(options_.path, error);
  if (!now) {
    if (!missing_) {
      missing_ = true;
      const std::string what = error == ENOENT ? "was deleted" : std::string("cannot be read: ") + std::strerror(error);
      spdlog::error("config file {} {}: keeping the last good configuration; waiting for it to come back",
                    options_.path, what);
      count_failure(options_.path + " " + what);
    }
    return;
  }
  if (missing_) {
    missing_ = false;
    spdlog::info("config file {} is back", options_.path);
  }
  if (stamp_ && *now == *stamp_) return;
  load("file changed", false);
}

void FileSource::load(std::string_view why, bool force) {
  // The file is opened once, and both the hash and the decode read that descriptor's inode: the
  // hash pass reads the descriptor, the decode reopens the same inode through /proc/self/fd (the
  // decoder reads by path, in 64 KB pieces). Reading the path twice would race with the writers
  // a config file has: `kubectl get ... > tmp && mv tmp FILE`, and a ConfigMap volume, whose
  // kubelet writes a new timestamped directory and swaps the `..data` symlink. A rename between
  // the hash and the decode would decode file B while recording the hash of file A, and once A's
  // content came back (a generator flapping between two states, an edit undone) that content
  // would be skipped as "already delivered" although B is in force. Renames never change an
  // inode that is open: the replaced file stays readable through the descriptor, unchanged, so
  // hash, content and stamp all describe one file; the poll then sees the path's new inode and
  // loads it.
  //
  // What a descriptor cannot pin is a writer that rewrites the same inode in place (`> FILE`,
  // an editor without a backup copy): the two passes, or a single one, may see a half-written
  // file. The stamp is taken with fstat before the hash and again after the decode; if it moved
  // (size or mtime), the result is thrown away and the file read again (a few times, then left to
  // the next poll, which sees the changed stamp). This catches most in-place rewrites, not all:
  // mtime moves in ticks of the kernel's coarse clock (a few ms), so a same-size rewrite within
  // one tick goes unseen; atomic rename is what writers should use, and every generator and
  // kubelet does.
  //
  // Whatever triggered it, this load reads the file as it is now: the poll must not read the
  // same contents again, hence stamp_ is the stamp of the inode read.
  constexpr int kAttempts = 3;
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  Clock::duration hashing{};
  config::ClusterObjects objects;
  std::optional<Digest> digest;
  try {
    for (int attempt = 1;; ++attempt) {
      const Descriptor fd(::open(options_.path.c_str(), O_RDONLY | O_CLOEXEC));
      if (fd.get() < 0) {
        const int error = errno;
        // The path's stamp, if it has one (a file without read permission): the poll reads it
        // again when it changes, not at every tick.
        int stat_error = 0;
        stamp_ = stamp_of(options_.path, stat_error);
        throw config::ConfigError(options_.path + ": cannot open: " + std::strerror(error));
      }
      struct stat before {};
      if (::fstat(fd.get(), &before) != 0)
        throw config::ConfigError(options_.path + ": cannot stat: " + std::strerror(errno));
      stamp_ = Stamp{before.st_mtim, before.st_size, before.st_ino};
      if (S_ISDIR(before.st_mode))
        throw config::ConfigError(options_.path + ": is a directory, expected a YAML or JSON file");
      // Only a regular file can be read twice; anything else (a FIFO) is decoded as it streams,
      // with no hash, so it is never skipped as unchanged.
      const bool regular = S_ISREG(before.st_mode);
      bool blank = false;
      if (regular) {
        const auto hash_started = Clock::now();
        const ContentHash h = hash_file(fd.get(), options_.path);
        hashing += Clock::now() - hash_started;
        digest = h.digest;
        blank = h.blank;
        if (!force && delivered_ && *delivered_ == *digest) {
          std::lock_guard lock(status_mutex_);
          ++unchanged_;
          spdlog::debug("config file {} rewritten with the same content: nothing to reload", options_.path);
          return;
        }
      }
      if (options_.test_after_hash) options_.test_after_hash();
      objects = decode_inode(fd.get(), before.st_ino, options_.path);
      if (regular) {
        struct stat after {};
        if (::fstat(fd.get(), &after) != 0)
          throw config::ConfigError(options_.path + ": cannot stat: " + std::strerror(errno));
        if (!(Stamp{after.st_mtim, after.st_size, after.st_ino} == *stamp_)) {
          if (attempt < kAttempts) {
            spdlog::debug("config file {} changed while it was read: reading it again", options_.path);
            continue;
          }
          throw config::ConfigError(options_.path + ": rewritten in place while it was being read, " +
                                    std::to_string(kAttempts) +
                                    " times in a row; write it to another name and rename it over " + options_.path);
        }
      }
      if (object_count(objects) == 0)
        throw config::ConfigError(options_.path + ": " +
                                  (blank ? "the file is empty" : "no Service, Pod, EndpointSlice or Node in the file") +
                                  "; refusing it rather than removing every capture and refusal rule");
      break;
    }
  } catch (const std::exception& e) {
    count_failure(e.what());
    if (synced())
      spdlog::error("config reload ({}) failed, keeping the last good configuration: {}", why, e.what());
    else
      spdlog::error("config: {}", e.what());
    return;
  }
  for (const auto& w : objects.warnings) spdlog::warn("config: {}", w);
  delivered_ = digest;
  const std::size_t count = object_count(objects);
  {
    std::lock_guard lock(status_mutex_);
    ++loads_;
    objects_ = count;
    last_error_.clear();
  }
  // The times say where a slow reload goes (reading vs. the snapshot build the sink logs next).
  const auto ms = [](Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); };
  // Policies are counted apart: they are not what the emptiness guard above accepts a file for.
  spdlog::info("config file read ({}): {} object(s) and {} AuthorizationPolicy(ies) in {} ms ({} ms of it hashing)", why,
               count, objects.authorization_policies.size(), ms(Clock::now() - started), ms(hashing));
  sink_.replace_all(*this, std::move(objects));
  if (!synced_.exchange(true, std::memory_order_acq_rel)) sink_.synced(*this);
}

void FileSource::count_failure(const std::string& error) {
  std::lock_guard lock(status_mutex_);
  ++failures_;
  last_error_ = error;
}

boost::json::object FileSource::status() const {
  std::lock_guard lock(status_mutex_);
  return boost::json::object{{"type", "file"},
                             {"path", options_.path},
                             {"synced", synced()},
                             {"loads", loads_},
                             {"unchangedSkips", unchanged_},
                             {"failures", failures_},
                             {"objects", objects_},
                             {"lastError", last_error_}};
}

}  // namespace dsproxy::sources
