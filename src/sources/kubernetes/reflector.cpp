#include "sources/kubernetes/reflector.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <mutex>
#include <random>

#include "proxy/log_throttle.hpp"

namespace dsproxy::sources::kubernetes {

namespace asio = boost::asio;
namespace json = boost::json;

const char* to_string(WatchEventType type) {
  switch (type) {
    case WatchEventType::added: return "ADDED";
    case WatchEventType::modified: return "MODIFIED";
    case WatchEventType::deleted: return "DELETED";
  }
  return "?";
}

json::object ReflectorStatus::to_json() const {
  json::object o;
  o["resource"] = resource;
  o["synced"] = synced;
  o["resource_version"] = resource_version;
  o["lists"] = lists;
  o["relists"] = relists;
  o["watch_restarts"] = watch_restarts;
  o["events"] = events;
  o["bookmarks"] = bookmarks;
  o["last_list_items"] = last_list_items;
  if (absent) o["absent"] = true;
  json::object e;
  for (const auto& [kind, count] : errors) e[kind] = count;
  o["errors"] = std::move(e);
  o["last_error"] = last_error;
  return o;
}

namespace {

const json::object* object_at(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v ? v->if_object() : nullptr;
}

std::string string_at(const json::object* o, std::string_view key) {
  if (!o) return {};
  const auto* v = o->if_contains(key);
  if (!v || !v->is_string()) return {};
  return std::string(v->get_string());
}

std::string resource_version_of(const json::object& object) {
  return string_at(object_at(object, "metadata"), "resourceVersion");
}

// The `message` of a Status body ("endpointslices.discovery.k8s.io is forbidden: User ... cannot
// list ..."), shortened: it helps the operator and holds nothing secret.
std::string status_message(const std::string& body) {
  boost::system::error_code ec;
  const json::value v = json::parse(body, ec);
  if (ec || !v.is_object()) return {};
  std::string m = string_at(&v.get_object(), "message");
  if (m.size() > 300) m = m.substr(0, 300) + "...";
  return m;
}

std::string http_error_kind(unsigned status) {
  switch (status) {
    case 401: return "http_401";
    case 403: return "http_403";
    case 404: return "http_404";
    case 410: return "gone";
    case 429: return "http_429";
    default: return status >= 500 && status < 600 ? "http_5xx" : "http_other";
  }
}

std::string seconds_text(std::chrono::milliseconds d) {
  return fmt::format("{:.1f} s", static_cast<double>(d.count()) / 1000.0);
}

}  // namespace

struct Reflector::State {
  Resource resource;
  std::string name;  // resource.display_name()
  ReflectorSink& sink;
  ReflectorOptions options;
  std::string origin;
  ApiClient client;
  asio::steady_timer timer;
  Backoff backoff;
  // Relists that follow a watch which delivered nothing (410 at once) wait on this one: a server
  // whose watch cache lags its LIST would otherwise be relisted in a tight loop. Reset only when
  // a watch makes progress (an event or a bookmark), not by the LIST succeeding.
  Backoff relist_backoff;
  bool watch_progressed = false;
  std::mt19937_64 random{std::random_device{}()};
  proxy::LogThrottle log_throttle;
  bool stopped = false;
  bool running = false;
  std::string resource_version;  // where the next WATCH starts

  std::atomic<bool> synced{false};
  mutable std::mutex status_mutex;
  ReflectorStatus status;

  State(asio::any_io_executor executor, const ApiServerConfig& config, Resource r, ReflectorSink& s,
        ReflectorOptions o)
      : resource(std::move(r)),
        name(resource.display_name()),
        sink(s),
        options(o),
        origin(config.origin),
        client(executor, config, o.client),
        timer(executor),
        backoff(o.backoff),
        relist_backoff(o.backoff),
        log_throttle(o.log_interval) {
    status.resource = name;
  }

  template <class F>
  void update_status(F&& f) {
    std::lock_guard lock(status_mutex);
    f(status);
  }

  void count_error(const std::string& kind, const std::string& description) {
    update_status([&](ReflectorStatus& s) {
      ++s.errors[kind];
      s.last_error = description;
    });
  }

  // Warnings that repeat while the API server is failing pass at most once per log_interval.
  void warn(const std::string& line) {
    if (auto suppressed = log_throttle.admit(proxy::LogThrottle::Clock::now())) {
      if (*suppressed > 0)
        spdlog::warn("{} ({} similar lines suppressed)", line, *suppressed);
      else
        spdlog::warn("{}", line);
    }
  }

  asio::awaitable<void> sleep(std::chrono::milliseconds d) {
    timer.expires_after(d);
    co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
  }

  // Logs and counts a failed request, then waits as its kind demands.
  asio::awaitable<void> after_failure(const char* verb, const ApiResult& r) {
    std::chrono::milliseconds wait = backoff.next();
    std::string kind;
    std::string line = fmt::format("kubernetes: {} {}: ", verb, name);
    if (r.error != ApiErrorKind::none) {
      kind = to_string(r.error);
      line += r.describe();
    } else {
      kind = http_error_kind(r.status);
      line += fmt::format("{} {}", r.status, r.reason);
      const std::string message = status_message(r.body);
      if (r.status == 401) {
        // A rotated token the file watch has not caught yet (or an in-place rewrite): read it again.
        if (client.token()) client.token()->invalidate();
        line += client.token() && client.token()->file_backed()
                    ? " — the API server rejected the bearer token from " + client.token()->path() + " (re-reading it)"
                    : " — the API server rejected the credentials of " + origin;
      } else if (r.status == 403) {
        line += " — dsproxy's service account needs: " + resource.rbac_rule() + " (see deploy/)";
      } else if (r.status == 429 && r.retry_after) {
        wait = std::min<std::chrono::milliseconds>(*r.retry_after, options.max_retry_after);
      }
      if (!message.empty()) line += "; the server says: " + message;
    }
    count_error(kind, line);
    warn(line + "; retrying in " + seconds_text(wait));
    co_await sleep(wait);
  }

  bool deliver(const char* what, const auto& call) {
    try {
      call();
      return true;
    } catch (const std::exception& e) {
      const std::string line = fmt::format("kubernetes: {} {}: the sink refused an object: {}", what, name, e.what());
      count_error("sink", line);
      warn(line);
      return false;
    }
  }

  enum class ListOutcome { done, stopped, absent };
  bool absent_logged = false;

  // An optional resource the server does not serve (its CRD is not installed): as an empty
  // LIST, so whatever was known of it goes and the resource counts as synced (readiness does not
  // wait for a CRD that may never come). Logged once, until it is served again.
  ListOutcome absent_list() {
    if (!absent_logged) {
      spdlog::info("kubernetes: list {}: 404, the server does not serve it (CRD not installed?): treating it as "
                   "empty, asking again every {}",
                   name, seconds_text(options.absent_retry));
      absent_logged = true;
    }
    deliver("list", [&] { sink.begin_list(resource); });
    deliver("list", [&] { sink.end_list(resource); });
    synced.store(true);
    update_status([](ReflectorStatus& s) {
      s.synced = true;
      s.absent = true;
      s.last_list_items = 0;
    });
    return ListOutcome::absent;
  }

  // One complete paginated LIST, retried until it completes (or stop()).
  asio::awaitable<ListOutcome> list_all() {
    std::string continue_token;
    std::uint64_t items = 0;
    for (;;) {
      const std::string target = list_target(client.base_path(), resource, options.page_size, continue_token);
      ApiResult r = co_await client.get(target);
      if (stopped) co_return ListOutcome::stopped;
      if (!r.ok()) {
        if (r.error == ApiErrorKind::none && r.status == 410 && !continue_token.empty()) {
          // The continue token outlived the server's history (about 5 minutes): only a fresh LIST
          // gives a consistent set again.
          const std::string line = fmt::format(
              "kubernetes: list {}: the continue token expired (410 Gone) after {} items; listing again from the start",
              name, items);
          count_error("gone", line);
          update_status([](ReflectorStatus& s) { ++s.relists; });
          spdlog::info("{}", line);
          continue_token.clear();
          items = 0;
          continue;
        }
        if (resource.optional && r.error == ApiErrorKind::none && r.status == 404) co_return absent_list();
        co_await after_failure("list", r);
        if (stopped) co_return ListOutcome::stopped;
        continue;
      }
      if (absent_logged) {
        spdlog::info("kubernetes: {} is served now", name);
        absent_logged = false;
        update_status([](ReflectorStatus& s) { s.absent = false; });
      }
      boost::system::error_code ec;
      json::value page = json::parse(r.body, ec);
      r.body = std::string();  // the parsed page is all that is needed now
      const json::object* page_object = ec ? nullptr : page.if_object();
      const json::array* page_items = nullptr;
      if (page_object) {
        if (const auto* v = page_object->if_contains("items"))
          page_items = v->if_array();
        if (!page_items && page_object->contains("items") && page_object->at("items").is_null()) {
          static const json::array empty;
          page_items = &empty;  // "items": null is how an empty list is sometimes serialised
        }
      }
      if (!page_items) {
        ApiResult bad;
        bad.error = ApiErrorKind::protocol;
        bad.detail = ec ? "the LIST body is not JSON: " + ec.message() : "the LIST body has no items array";
        count_error("decode", bad.describe());
        co_await after_failure("list", bad);
        if (stopped) co_return ListOutcome::stopped;
        continue;
      }
      backoff.reset();
      if (continue_token.empty()) deliver("list", [&] { sink.begin_list(resource); });
      for (const auto& item : *page_items) {
        if (stopped) co_return ListOutcome::stopped;
        if (const auto* object = item.if_object()) {
          deliver("list", [&] { sink.listed(resource, *object); });
          ++items;
        }
      }
      const json::object* metadata = object_at(*page_object, "metadata");
      continue_token = string_at(metadata, "continue");
      if (!continue_token.empty()) continue;
      resource_version = string_at(metadata, "resourceVersion");
      deliver("list", [&] { sink.end_list(resource); });
      const bool first = !synced.exchange(true);
      update_status([&](ReflectorStatus& s) {
        s.synced = true;
        ++s.lists;
        s.resource_version = resource_version;
        s.last_list_items = items;
      });
      if (first)
        spdlog::info("kubernetes: {} synced: {} objects at resourceVersion {}", name, items, resource_version);
      else
        spdlog::info("kubernetes: {} relisted: {} objects at resourceVersion {}", name, items, resource_version);
      co_return ListOutcome::done;
    }
  }

  enum class WatchOutcome { resume, relist, stopped };

  // One WATCH request from resource_version; says what to do next.
  asio::awaitable<WatchOutcome> watch_once() {
    const auto min_s = static_cast<std::uint32_t>(options.min_watch_timeout.count());
    const std::uint32_t timeout_seconds = std::uniform_int_distribution<std::uint32_t>(min_s, 2 * min_s)(random);
    bool gone = false;
    std::string failure_kind;  // set by the line handler when it ends the watch on an error
    std::string failure_line;
    const auto started = std::chrono::steady_clock::now();
    const std::string target = watch_target(client.base_path(), resource, resource_version, timeout_seconds);
    const ApiClient::LineHandler on_line = [&](std::string_view line) {
      if (stopped) return false;
      boost::system::error_code ec;
      json::value v = json::parse(line, ec);
      const json::object* event = ec ? nullptr : v.if_object();
      const std::string type = string_at(event, "type");
      const json::object* object = event ? object_at(*event, "object") : nullptr;
      if (!object || type.empty()) {
        failure_kind = "decode";
        failure_line = fmt::format("kubernetes: watch {}: an event that is not {{type, object}} JSON{}", name,
                                   ec ? ": " + ec.message() : "");
        return false;
      }
      if (type == "ERROR") {
        // A Status object; 410 = the resourceVersion is older than the server's history.
        const auto* code = object->if_contains("code");
        if (code && code->is_int64() && code->get_int64() == 410) {
          gone = true;
        } else {
          failure_kind = "watch_error";
          failure_line = fmt::format("kubernetes: watch {}: ERROR event: {}", name,
                                     string_at(object, "message").substr(0, 300));
        }
        return false;
      }
      const std::string rv = resource_version_of(*object);
      watch_progressed = true;
      if (type == "BOOKMARK") {
        if (!rv.empty()) resource_version = rv;
        update_status([&](ReflectorStatus& s) {
          ++s.bookmarks;
          s.resource_version = resource_version;
        });
        return true;
      }
      WatchEventType t;
      if (type == "ADDED") {
        t = WatchEventType::added;
      } else if (type == "MODIFIED") {
        t = WatchEventType::modified;
      } else if (type == "DELETED") {
        t = WatchEventType::deleted;
      } else {
        return true;  // a type from a newer server: nothing we can apply
      }
      deliver("watch", [&] { sink.event(resource, t, *object); });
      if (!rv.empty()) resource_version = rv;
      update_status([&](ReflectorStatus& s) {
        ++s.events;
        s.resource_version = resource_version;
      });
      return !stopped;
    };
    watch_progressed = false;
    ApiResult r = co_await client.watch(target, options.stall_timeout, on_line);
    if (stopped || r.error == ApiErrorKind::stopped) co_return WatchOutcome::stopped;
    if (r.lines > 0) backoff.reset();
    if (watch_progressed) relist_backoff.reset();
    if (gone || (r.error == ApiErrorKind::none && r.status == 410)) {
      const std::string line = fmt::format(
          "kubernetes: watch {}: resourceVersion {} is too old (410 Gone); relisting", name, resource_version);
      count_error("gone", line);
      spdlog::info("{}", line);
      co_return WatchOutcome::relist;
    }
    if (r.error == ApiErrorKind::none && r.status != 200) {
      co_await after_failure("watch", r);
      co_return stopped ? WatchOutcome::stopped : WatchOutcome::resume;
    }
    update_status([](ReflectorStatus& s) { ++s.watch_restarts; });
    if (!failure_kind.empty()) {
      count_error(failure_kind, failure_line);
      const auto wait = backoff.next();
      warn(failure_line + "; watching again in " + seconds_text(wait));
      co_await sleep(wait);
    } else if (r.error == ApiErrorKind::stalled) {
      // Silence, not failure: resume at once from where the stream stopped.
      const std::string line = fmt::format("kubernetes: watch {}: nothing received for {}; watching again from {}",
                                           name, seconds_text(options.stall_timeout), resource_version);
      count_error("stalled", line);
      spdlog::info("{}", line);
    } else if (r.error != ApiErrorKind::none) {
      co_await after_failure("watch", r);
    } else if (r.lines == 0 && std::chrono::steady_clock::now() - started < options.short_watch) {
      ApiResult short_watch;
      short_watch.error = ApiErrorKind::io;
      short_watch.detail = "the server ended the watch at once";
      co_await after_failure("watch", short_watch);
    } else {
      spdlog::debug("kubernetes: watch {} ended; watching again from {}", name, resource_version);
    }
    co_return stopped ? WatchOutcome::stopped : WatchOutcome::resume;
  }

  asio::awaitable<void> run() {
    bool need_list = true;
    bool listed_once = false;
    while (!stopped) {
      bool failed = false;
      try {
        if (need_list) {
          if (listed_once) update_status([](ReflectorStatus& s) { ++s.relists; });
          const ListOutcome listed = co_await list_all();
          if (listed == ListOutcome::stopped) break;
          if (listed == ListOutcome::absent) {
            co_await sleep(options.absent_retry);
            continue;  // need_list stays: list again
          }
          need_list = false;
          listed_once = true;
        }
        const WatchOutcome w = co_await watch_once();
        if (w == WatchOutcome::stopped) break;
        need_list = w == WatchOutcome::relist;
        if (need_list && !watch_progressed) {
          // A second relist in a row without a single event or bookmark in between (the watch
          // from a fresh LIST's version was refused at once): give the server time.
          const auto wait = relist_backoff.next();
          if (relist_backoff.attempts() > 1) co_await sleep(wait);
        }
      } catch (const std::exception& e) {
        // Not expected (allocation failure, a bug); the reflector must outlive it.
        const std::string line = fmt::format("kubernetes: {}: unexpected error: {}", name, e.what());
        count_error("internal", line);
        warn(line);
        failed = true;
      }
      if (failed) {  // (no co_await inside a handler)
        co_await sleep(backoff.next());
        need_list = true;
      }
    }
    running = false;
  }
};

Reflector::Reflector(asio::any_io_executor executor, const ApiServerConfig& config, Resource resource,
                     ReflectorSink& sink, ReflectorOptions options)
    : state_(std::make_shared<State>(std::move(executor), config, std::move(resource), sink, options)) {}

Reflector::~Reflector() { stop(); }

void Reflector::start() {
  if (state_->running || state_->stopped) return;
  state_->running = true;
  auto state = state_;
  // The lambda's copy of the shared_ptr lives in the coroutine frame: the state outlives the
  // Reflector until the loop has seen stop().
  asio::co_spawn(
      state->timer.get_executor(), [state]() -> asio::awaitable<void> { co_await state->run(); }, [name = state->name](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      spdlog::error("kubernetes: the {} reflector stopped: {}", name, ex.what());
    }
  });
}

void Reflector::stop() {
  state_->stopped = true;
  state_->client.stop();
  state_->timer.cancel();
}

const Resource& Reflector::resource() const { return state_->resource; }
bool Reflector::synced() const { return state_->synced.load(); }
ReflectorStatus Reflector::status() const {
  std::lock_guard lock(state_->status_mutex);
  return state_->status;
}

}  // namespace dsproxy::sources::kubernetes
