#include "sources/file_source.hpp"

#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "config/k8s_decoder.hpp"

namespace dsproxy::sources {

namespace {

std::size_t object_count(const config::ClusterObjects& o) {
  return o.services.size() + o.pods.size() + o.endpoint_slices.size() + o.nodes.size() + o.fqdn_slices.size();
}

struct Fingerprint {
  std::uint64_t hash = 14695981039346656037ull;  // FNV-1a 64
  bool blank = true;                             // only whitespace (or nothing) in it
};

// The file's content hash, read in pieces (the decoder, too, never holds the text whole: a big
// cluster's file costs one buffer here, not its size). Reads at most one byte past the
// decoder's size limit; load_objects_file reports an oversized file.
Fingerprint fingerprint(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw config::ConfigError(path + ": is a directory, expected a YAML or JSON file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw config::ConfigError(path + ": cannot open: " + std::strerror(errno));
  Fingerprint f;
  std::array<char, 64 * 1024> chunk;
  std::size_t total = 0;
  while (total <= config::kMaxConfigBytes) {
    in.read(chunk.data(), chunk.size());
    const auto got = static_cast<std::size_t>(in.gcount());
    if (got == 0) break;
    total += got;
    for (std::size_t i = 0; i < got; ++i) {
      const auto c = static_cast<unsigned char>(chunk[i]);
      f.hash = (f.hash ^ c) * 1099511628211ull;
      if (f.blank && c != ' ' && c != '\t' && c != '\r' && c != '\n') f.blank = false;
    }
  }
  if (in.bad()) throw config::ConfigError(path + ": read failed: " + std::strerror(errno));
  return f;
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
  // Whatever triggered it, this load reads the file as it is now: the poll must not read the
  // same contents again.
  int stat_error = 0;
  stamp_ = stamp_of(options_.path, stat_error);
  config::ClusterObjects objects;
  std::uint64_t hash = 0;
  try {
    const auto print = fingerprint(options_.path);
    hash = print.hash;
    if (!force && delivered_ && *delivered_ == hash) {
      std::lock_guard lock(status_mutex_);
      ++unchanged_;
      spdlog::debug("config file {} rewritten with the same content: nothing to reload", options_.path);
      return;
    }
    if (print.blank)
      throw config::ConfigError(options_.path +
                                ": the file is empty; refusing it rather than removing every capture and refusal rule");
    // Read a second time, by the decoder: a write between the two reads changes the stamp, so
    // the next poll reads it again.
    objects = config::load_objects_file(options_.path);
    if (object_count(objects) == 0)
      throw config::ConfigError(options_.path +
                                ": no Service, Pod, EndpointSlice or Node in the file; refusing it rather than "
                                "removing every capture and refusal rule");
  } catch (const std::exception& e) {
    count_failure(e.what());
    if (synced())
      spdlog::error("config reload ({}) failed, keeping the last good configuration: {}", why, e.what());
    else
      spdlog::error("config: {}", e.what());
    return;
  }
  for (const auto& w : objects.warnings) spdlog::warn("config: {}", w);
  delivered_ = hash;
  const std::size_t count = object_count(objects);
  {
    std::lock_guard lock(status_mutex_);
    ++loads_;
    objects_ = count;
    last_error_.clear();
  }
  if (synced()) spdlog::info("config file read ({}): {} object(s)", why, count);
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
