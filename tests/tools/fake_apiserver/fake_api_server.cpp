#include "fake_apiserver/fake_api_server.hpp"

#include <openssl/rand.h>
#include <sys/stat.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <atomic>
#include <charconv>
#include <map>
#include <sstream>
#include <cstdio>
#include <deque>
#include <fstream>
#include <future>
#include <iostream>
#include <set>
#include <stdexcept>
#include <thread>

#include "fake_apiserver/object_store.hpp"
#include "fake_apiserver/objects_file.hpp"
#include "fake_apiserver/tls_material.hpp"

namespace dsproxy::fake_api {

namespace asio = boost::asio;
namespace ssl = asio::ssl;
namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

namespace {

constexpr auto as_values = asio::as_tuple(asio::use_awaitable);
using TlsStream = ssl::stream<tcp::socket>;

std::string percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%' && i + 2 < text.size()) {
      unsigned value = 0;
      auto [ptr, ec] = std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16);
      if (ec == std::errc() && ptr == text.data() + i + 3) {
        out += static_cast<char>(value);
        i += 2;
      } else {
        out += c;
      }
    } else {
      out += c;
    }
  }
  return out;
}

std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> params;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    auto eq = pair.find('=');
    if (!pair.empty())
      params[percent_decode(pair.substr(0, eq))] =
          eq == std::string_view::npos ? std::string() : percent_decode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return params;
}

std::vector<std::string_view> path_segments(std::string_view path) {
  std::vector<std::string_view> segments;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    auto slash = path.find('/');
    segments.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash);
  }
  return segments;
}

std::optional<std::uint64_t> parse_u64(std::string_view text) {
  std::uint64_t value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

json::object status_object(unsigned code, std::string_view reason, std::string_view message) {
  return json::object{{"kind", "Status"},       {"apiVersion", "v1"}, {"metadata", json::object{}},
                      {"status", "Failure"},    {"message", message}, {"reason", reason},
                      {"code", code}};
}


void write_file(const std::filesystem::path& path, std::string_view content, mode_t mode) {
  // Written aside and renamed: a client re-reading the file (token rotation) never sees half of it.
  std::filesystem::path temporary = path;
  temporary += ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error("fake apiserver: cannot write " + temporary.string());
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    if (!out) throw std::runtime_error("fake apiserver: cannot write " + temporary.string());
  }
  ::chmod(temporary.c_str(), mode);
  std::filesystem::rename(temporary, path);
}

std::string yaml_quote(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
  return out;
}

std::string random_token() {
  unsigned char bytes[24];
  if (RAND_bytes(bytes, sizeof bytes) != 1) throw std::runtime_error("fake apiserver: RAND_bytes failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string token = "fake-";
  for (unsigned char b : bytes) {
    token += kHex[b >> 4];
    token += kHex[b & 15];
  }
  return token;
}

struct FailureRule {
  int remaining;
  unsigned status;
  FailOptions options;
};

// One open WATCH stream. Shared with the callback that notices the client closing it.
struct Watch {
  explicit Watch(asio::any_io_executor executor) : wake(std::move(executor)) {}
  const ResourceInfo* resource = nullptr;
  std::string namespace_filter;
  Selector fields;
  Selector labels;
  bool bookmarks = false;
  std::deque<std::string> pending;  // complete event lines, "\n"-terminated
  asio::steady_timer wake;          // cancelled to wake the stream's coroutine
  bool cut = false;
  bool client_gone = false;

  bool selects(const json::object& object) const {
    if (!namespace_filter.empty() && namespace_of(object) != namespace_filter) return false;
    return fields.matches(object) && labels.matches(object);
  }
};

std::string event_line(std::string_view type, const json::object& object) {
  std::string line = "{\"type\":\"";
  line += type;
  line += "\",\"object\":";
  line += json::serialize(object);
  line += "}\n";
  return line;
}

}  // namespace

struct FakeApiServer::Impl {
  explicit Impl(FakeApiServerOptions o)
      : options(std::move(o)), store(options.initial_resource_version, options.history_limit) {}

  FakeApiServerOptions options;
  ObjectStore store;
  std::string token;
  std::deque<FailureRule> failures;
  std::vector<RecordedRequest> log;
  bool stalled = false;
  bool stopping = false;
  bool wrong_certificate = false;
  bool paused = false;
  ChunkMode chunk_mode = ChunkMode::one_per_event;
  std::set<tcp::socket*> sockets;          // open API connections
  std::set<tcp::socket*> control_sockets;  // open control connections
  std::set<std::shared_ptr<Watch>> watches;
  tcp::endpoint endpoint;                  // bound (port filled in)
  std::uint64_t accept_generation = 0;
  std::uint16_t control_port = 0;
  std::filesystem::path dir;

  ssl::context tls{ssl::context::tls_server};
  ssl::context wrong_tls{ssl::context::tls_server};
  std::string ca_pem;

  // Declared after everything the coroutines touch: destroyed first, so a coroutine frame that
  // is destroyed with the io_context (never the case after a clean stop()) still finds them.
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  tcp::acceptor acceptor{io};
  tcp::acceptor control_acceptor{io};
  asio::steady_timer pause_timer{io};
  asio::steady_timer bookmark_timer{io};
  std::thread thread;
  std::atomic<bool> running{false};

  // Runs f on the server thread and waits for it (inline before start / after stop / on it).
  template <typename F>
  auto call(F&& f) -> decltype(f()) {
    if (!running.load() || io.get_executor().running_in_this_thread()) return f();
    using Result = decltype(f());
    std::packaged_task<Result()> task(std::forward<F>(f));
    auto future = task.get_future();
    asio::post(io, [&task] { task(); });
    return future.get();
  }

  // ---- files ----
  std::string kubeconfig(bool inline_data, bool wrong_ca) const {
    std::string server = url();
    std::string text = "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: " +
                       yaml_quote(server) + "\n";
    if (inline_data)
      text += "    certificate-authority-data: " + base64_encode(ca_pem) + "\n";
    else
      text += "    certificate-authority: " + yaml_quote((dir / (wrong_ca ? "wrong-ca.crt" : "ca.crt")).string()) +
              "\n";
    text += "users:\n- name: fake\n  user:\n";
    if (inline_data)
      text += "    token: " + yaml_quote(token) + "\n";
    else
      text += "    tokenFile: " + yaml_quote((dir / "token").string()) + "\n";
    text +=
        "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n"
        "current-context: fake\npreferences: {}\n";
    return text;
  }

  void write_token_files() {
    write_file(dir / "token", token, 0600);
    write_file(dir / "serviceaccount" / "token", token, 0600);
    write_file(dir / "kubeconfig-inline", kubeconfig(true, false), 0600);
  }

  std::string url() const {
    auto address = endpoint.address();
    if (address.is_unspecified())
      address = address.is_v6() ? asio::ip::address(asio::ip::address_v6::loopback())
                                : asio::ip::address(asio::ip::address_v4::loopback());
    std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
    return "https://" + host + ":" + std::to_string(endpoint.port());
  }

  // ---- listening ----
  void open_acceptor() {
    acceptor.open(endpoint.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    if (endpoint.address().is_v6()) acceptor.set_option(asio::ip::v6_only(true));
    acceptor.bind(endpoint);
    acceptor.listen(128);
    endpoint = acceptor.local_endpoint();
    asio::co_spawn(io, accept_loop(++accept_generation), asio::detached);
  }

  asio::awaitable<void> accept_loop(std::uint64_t generation) {
    for (;;) {
      auto [ec, socket] = co_await acceptor.async_accept(as_values);
      if (generation != accept_generation || stopping || !acceptor.is_open()) co_return;
      if (ec) {
        asio::steady_timer backoff(io, std::chrono::milliseconds(20));
        co_await backoff.async_wait(as_values);
        continue;
      }
      asio::co_spawn(io, serve_connection(std::move(socket)), asio::detached);
    }
  }

  // ---- control of connections ----
  void close_all_sockets(std::set<tcp::socket*>& set) {
    for (tcp::socket* socket : set) {
      boost::system::error_code ignored;
      // SO_LINGER 0 would send a RST; a plain close is what a crashed process's kernel does (FIN).
      socket->close(ignored);
    }
    // A watch waiting for events would only notice at its next write: wake it to unregister now.
    wake_watches();
  }

  void wake_watches() {
    for (const auto& watch : watches) watch->wake.cancel();
  }

  void do_pause(std::chrono::milliseconds duration) {
    paused = true;
    ++accept_generation;
    boost::system::error_code ignored;
    acceptor.close(ignored);
    close_all_sockets(sockets);
    pause_timer.expires_after(duration);
    pause_timer.async_wait([this](boost::system::error_code ec) {
      if (ec || stopping) return;
      do_resume();
    });
  }

  void do_resume() {
    if (!paused || stopping) return;
    pause_timer.cancel();
    try {
      open_acceptor();
      paused = false;
    } catch (const std::exception& e) {
      // The port may still be held (another process took it): try again shortly.
      std::cerr << "fake apiserver: cannot listen again on " << endpoint << ": " << e.what() << "\n";
      boost::system::error_code ignored;
      acceptor.close(ignored);
      pause_timer.expires_after(std::chrono::milliseconds(100));
      pause_timer.async_wait([this](boost::system::error_code ec) {
        if (!ec) do_resume();
      });
    }
  }

  void do_shutdown() {
    stopping = true;
    boost::system::error_code ignored;
    acceptor.close(ignored);
    control_acceptor.close(ignored);
    pause_timer.cancel();
    bookmark_timer.cancel();
    close_all_sockets(sockets);
    close_all_sockets(control_sockets);
    wake_watches();
  }

  // ---- objects ----
  static const ResourceInfo& resource_or_throw(std::string_view plural) {
    const ResourceInfo* resource = find_resource(plural);
    if (!resource) throw std::invalid_argument("fake apiserver: unknown resource " + std::string(plural));
    return *resource;
  }

  void publish(const StoredEvent& event) {
    for (const auto& watch : watches) {
      if (watch->resource != event.resource) continue;
      bool was = event.previous && watch->selects(*event.previous);
      bool is = event.type != EventType::deleted && watch->selects(*event.object);
      std::string_view type;
      if (was && is)
        type = "MODIFIED";
      else if (is)
        type = "ADDED";
      else if (was)
        type = "DELETED";
      else
        continue;
      watch->pending.push_back(event_line(type, *event.object));
      watch->wake.cancel();
    }
  }

  std::uint64_t do_upsert(std::string_view plural, json::object object) {
    const StoredEvent& event = store.upsert(resource_or_throw(plural), std::move(object));
    publish(event);
    return event.resource_version;
  }

  std::optional<std::uint64_t> do_erase(std::string_view plural, std::string_view ns, std::string_view name) {
    const StoredEvent* event = store.erase(resource_or_throw(plural), ns, name);
    if (!event) return std::nullopt;
    publish(*event);
    return event->resource_version;
  }

  std::string bookmark_line(const ResourceInfo& resource) const {
    json::object object{{"kind", resource.kind},
                        {"apiVersion", resource.api_version},
                        {"metadata", json::object{{"resourceVersion", std::to_string(store.resource_version())}}}};
    return event_line("BOOKMARK", object);
  }

  void do_send_bookmarks() {
    for (const auto& watch : watches) {
      if (!watch->bookmarks) continue;
      watch->pending.push_back(bookmark_line(*watch->resource));
      watch->wake.cancel();
    }
  }

  void schedule_bookmarks() {
    if (options.bookmark_interval.count() <= 0) return;
    bookmark_timer.expires_after(options.bookmark_interval);
    bookmark_timer.async_wait([this](boost::system::error_code ec) {
      if (ec || stopping) return;
      do_send_bookmarks();
      schedule_bookmarks();
    });
  }

  // ---- requests ----
  struct Route {
    const ResourceInfo* resource = nullptr;
    std::string namespace_filter;
    std::string name;
  };

  // /api/v1/{r}, /api/v1/{r}/{name}, /api/v1/namespaces/{ns}/{r}[/{name}], and the same under
  // /apis/{group}/{version}. nullopt: no such path.
  static std::optional<Route> route(std::string_view path) {
    auto segments = path_segments(path);
    std::size_t at;
    std::string_view group;
    if (segments.size() >= 3 && segments[0] == "api" && segments[1] == "v1") {
      at = 2;
    } else if (segments.size() >= 4 && segments[0] == "apis") {
      group = segments[1];
      if (segments[2] != "v1") return std::nullopt;
      at = 3;
    } else {
      return std::nullopt;
    }
    Route route;
    if (segments.size() > at + 2 && segments[at] == "namespaces") {
      route.namespace_filter = std::string(segments[at + 1]);
      at += 2;
    }
    route.resource = find_resource(segments[at]);
    if (!route.resource || route.resource->group != group) return std::nullopt;
    if (!route.namespace_filter.empty() && !route.resource->namespaced) return std::nullopt;
    if (segments.size() == at + 2)
      route.name = std::string(segments[at + 1]);
    else if (segments.size() != at + 1)
      return std::nullopt;
    return route;
  }

  std::optional<FailureRule> take_failure(std::string_view path, bool watch) {
    for (auto it = failures.begin(); it != failures.end(); ++it) {
      if (!path.starts_with(it->options.path_prefix)) continue;
      if (it->options.watch && *it->options.watch != watch) continue;
      FailureRule rule = *it;
      if (--it->remaining <= 0) failures.erase(it);
      return rule;
    }
    return std::nullopt;
  }

  using Response = http::response<http::string_body>;

  static Response json_response(unsigned status, const json::object& body, bool keep_alive) {
    Response response{static_cast<http::status>(status), 11};
    response.set(http::field::content_type, "application/json");
    response.keep_alive(keep_alive);
    response.body() = json::serialize(body);
    response.prepare_payload();
    return response;
  }

  static Response failure_response(unsigned status, const FailOptions& options, const std::optional<Route>& route,
                                   bool watch, bool keep_alive) {
    std::string reason;
    std::string message = options.message;
    std::optional<int> retry_after = options.retry_after;
    switch (status) {
      case 401:
        reason = "Unauthorized";
        if (message.empty()) message = "Unauthorized";
        break;
      case 403: {
        reason = "Forbidden";
        if (message.empty()) {
          std::string resource = route && route->resource ? std::string(route->resource->plural) : "";
          std::string group = route && route->resource ? std::string(route->resource->group) : "";
          std::string verb = watch ? "watch" : (route && !route->name.empty() ? "get" : "list");
          std::string scope = route && !route->namespace_filter.empty()
                                  ? "in the namespace \"" + route->namespace_filter + "\""
                                  : "at the cluster scope";
          message = resource + " is forbidden: User \"system:serviceaccount:kube-system:dsproxy\" cannot " + verb +
                    " resource \"" + resource + "\" in API group \"" + group + "\" " + scope;
        }
        break;
      }
      case 410:
        reason = "Expired";
        if (message.empty()) message = "The provided continue parameter is too old to display a consistent list result.";
        break;
      case 429:
        reason = "TooManyRequests";
        if (message.empty()) message = "Too many requests, please try again later.";
        if (!retry_after) retry_after = 1;
        break;
      case 500:
        reason = "InternalError";
        if (message.empty()) message = "Internal error occurred: injected by the fake apiserver";
        break;
      case 503:
        reason = "ServiceUnavailable";
        if (message.empty()) message = "The server is currently unable to handle the request";
        break;
      case 504:
        reason = "Timeout";
        if (message.empty()) message = "The server was unable to return a response in the time allotted";
        break;
      default:
        if (message.empty()) message = "injected by the fake apiserver";
        break;
    }
    json::object body = status_object(status, reason, message);
    if (status == 403 && route && route->resource)
      body["details"] = json::object{{"kind", route->resource->plural}};
    if (retry_after) body["details"] = json::object{{"retryAfterSeconds", *retry_after}};
    Response response = json_response(status, body, keep_alive);
    if (retry_after) response.set(http::field::retry_after, std::to_string(*retry_after));
    return response;
  }

  json::value list_body(const ResourceInfo& resource, const ListPage& page) const {
    json::object metadata{{"resourceVersion", std::to_string(page.resource_version)}};
    if (!page.continue_token.empty()) metadata["continue"] = page.continue_token;
    if (page.remaining_items) metadata["remainingItemCount"] = *page.remaining_items;
    json::array items;
    items.reserve(page.items.size());
    for (const auto& object : page.items) {
      // Items of a typed list carry no kind/apiVersion on the real server.
      json::object item = *object;
      item.erase("kind");
      item.erase("apiVersion");
      items.emplace_back(std::move(item));
    }
    std::string list_kind = std::string(resource.kind) + "List";
    return json::object{{"kind", list_kind},
                        {"apiVersion", resource.api_version},
                        {"metadata", std::move(metadata)},
                        {"items", std::move(items)}};
  }

  // GCC 12 mishandles temporaries with destructors inside co_await expressions (double frees
  // seen here), so every coroutine below awaits on named locals only, and the decisions are made
  // by plain functions.
  template <typename Stream>
  static asio::awaitable<bool> send(Stream& stream, Response& response) {
    bool keep_alive = response.keep_alive();
    auto [ec, n] = co_await http::async_write(stream, response, as_values);
    co_return !ec && keep_alive;
  }

  // A watch about to stream: its events so far, or the ERROR line that ends it at once.
  struct WatchStart {
    std::shared_ptr<Watch> watch;
    std::optional<std::string> error_line;
    std::chrono::seconds timeout{0};
    bool keep_alive = true;
  };
  struct Outcome {
    std::optional<Response> response;
    std::optional<WatchStart> watch;
  };

  asio::awaitable<void> serve_connection(tcp::socket socket) {
    boost::system::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    TlsStream stream(std::move(socket), wrong_certificate ? wrong_tls : tls);
    tcp::socket* raw = &stream.next_layer();
    sockets.insert(raw);
    struct Unregister {
      std::set<tcp::socket*>& set;
      tcp::socket* socket;
      ~Unregister() { set.erase(socket); }
    } unregister{sockets, raw};

    auto [handshake_ec] = co_await stream.async_handshake(ssl::stream_base::server, as_values);
    if (handshake_ec) co_return;
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(1 << 20);
      auto [read_ec, n] = co_await http::async_read(stream, buffer, parser, as_values);
      if (read_ec || stopping) break;
      Outcome outcome = decide(parser.get());
      bool keep_alive = false;
      if (outcome.response) {
        keep_alive = co_await send(stream, *outcome.response);
      } else {
        keep_alive = co_await serve_watch(stream, *outcome.watch);
      }
      if (!keep_alive || stopping || !raw->is_open()) break;
    }
    raw->close(ignored);
  }

  Outcome decide(const http::request<http::string_body>& request) {
    std::string target(request.target());
    std::string_view path = target;
    std::string_view query;
    if (auto q = path.find('?'); q != std::string_view::npos) {
      query = path.substr(q + 1);
      path = path.substr(0, q);
    }
    auto params = parse_query(query);
    bool watch = params.count("watch") && (params["watch"] == "1" || params["watch"] == "true");
    auto authorization = request.find(http::field::authorization);
    bool has_authorization = authorization != request.end();
    bool authorized = !options.require_token || (has_authorization && authorization->value() == "Bearer " + token);
    bool keep_alive = request.keep_alive();
    log.push_back({std::string(request.method_string()), target, has_authorization, authorized, watch, 0});
    std::size_t log_index = log.size() - 1;
    auto answer = [&](Response response) {
      log[log_index].status = response.result_int();
      Outcome outcome;
      outcome.response = std::move(response);
      return outcome;
    };
    auto bad_request = [&](const std::string& message) {
      return answer(json_response(400, status_object(400, "BadRequest", message), keep_alive));
    };

    if (path == "/healthz" || path == "/livez" || path == "/readyz") {
      Response response{http::status::ok, 11};
      response.set(http::field::content_type, "text/plain");
      response.keep_alive(keep_alive);
      response.body() = "ok";
      response.prepare_payload();
      return answer(std::move(response));
    }
    std::optional<Route> where = route(path);
    if (auto failure = take_failure(path, watch))
      return answer(failure_response(failure->status, failure->options, where, watch, keep_alive));
    if (request.method() != http::verb::get)
      return answer(
          json_response(405, status_object(405, "MethodNotAllowed", "the fake apiserver only serves GET"), keep_alive));
    if (path == "/version") {
      json::object version{{"major", "1"},
                           {"minor", "29"},
                           {"gitVersion", "v1.29.0-dsproxy-fake"},
                           {"platform", "linux/amd64"}};
      return answer(json_response(200, version, keep_alive));
    }
    if (!authorized) return answer(failure_response(401, FailOptions{}, where, watch, keep_alive));
    if (!where)
      return answer(json_response(
          404, status_object(404, "NotFound", "the server could not find the requested resource"), keep_alive));
    const ResourceInfo& resource = *where->resource;

    if (!where->name.empty() && !watch) {
      ObjectPtr object = store.get(resource, where->namespace_filter, where->name);
      if (!object) {
        json::object body =
            status_object(404, "NotFound", std::string(resource.plural) + " \"" + where->name + "\" not found");
        body["details"] = json::object{{"name", where->name}, {"kind", resource.plural}};
        return answer(json_response(404, body, keep_alive));
      }
      return answer(json_response(200, *object, keep_alive));
    }

    ListRequest list;
    list.namespace_filter = where->namespace_filter;
    try {
      if (auto it = params.find("fieldSelector"); it != params.end()) list.fields = Selector::parse_fields(it->second);
      if (auto it = params.find("labelSelector"); it != params.end()) list.labels = Selector::parse_labels(it->second);
      if (!where->name.empty()) list.fields = Selector::parse_fields("metadata.name=" + where->name);
      if (auto it = params.find("limit"); it != params.end() && !it->second.empty()) {
        auto limit = parse_u64(it->second);
        if (!limit) throw std::invalid_argument("limit must be a number");
        list.limit = *limit;
      }
    } catch (const std::invalid_argument& e) {
      return bad_request(e.what());
    }

    if (watch) {
      auto start = start_watch(resource, std::move(list), params, keep_alive);
      if (!start) return bad_request("invalid resourceVersion: " + params["resourceVersion"]);
      log[log_index].status = 200;
      Outcome outcome;
      outcome.watch = std::move(start);
      return outcome;
    }

    if (auto it = params.find("continue"); it != params.end()) list.continue_token = it->second;
    std::variant<ListPage, ListExpired> result;
    try {
      result = store.list(resource, list);
    } catch (const std::invalid_argument& e) {
      return bad_request(e.what());
    }
    if (std::holds_alternative<ListExpired>(result))
      return answer(failure_response(410, FailOptions{}, where, false, keep_alive));
    return answer(json_response(200, list_body(resource, std::get<ListPage>(result)).get_object(), keep_alive));
  }

  // nullopt: an unparsable resourceVersion (400).
  std::optional<WatchStart> start_watch(const ResourceInfo& resource, ListRequest filter,
                                        std::map<std::string, std::string>& params, bool keep_alive) {
    WatchStart start;
    start.keep_alive = keep_alive;
    auto watch = std::make_shared<Watch>(io.get_executor());
    start.watch = watch;
    watch->resource = &resource;
    watch->namespace_filter = filter.namespace_filter;
    watch->fields = std::move(filter.fields);
    watch->labels = std::move(filter.labels);
    auto bookmarks = params.find("allowWatchBookmarks");
    watch->bookmarks = bookmarks != params.end() && (bookmarks->second == "true" || bookmarks->second == "1");
    start.timeout = options.default_watch_timeout;
    if (auto it = params.find("timeoutSeconds"); it != params.end()) {
      if (auto seconds = parse_u64(it->second)) start.timeout = std::chrono::seconds(*seconds);
    }

    std::string since_text = params.count("resourceVersion") ? params["resourceVersion"] : "";
    if (since_text.empty() || since_text == "0") {
      // "Any version": the current state as ADDED events, then the changes.
      for (const auto& object : store.current(resource))
        if (watch->selects(*object)) watch->pending.push_back(event_line("ADDED", *object));
      return start;
    }
    auto since = parse_u64(since_text);
    if (!since) return std::nullopt;
    auto events = store.events_since(resource, *since);
    if (!events) {
      // The real server answers 200 and reports the expiry inside the stream.
      start.error_line = event_line(
          "ERROR", status_object(410, "Expired",
                                 "too old resource version: " + since_text + " (" +
                                     std::to_string(store.compacted_version() + 1) + ")"));
      return start;
    }
    for (const StoredEvent* event : *events) {
      bool was = event->previous && watch->selects(*event->previous);
      bool is = event->type != EventType::deleted && watch->selects(*event->object);
      if (was && is)
        watch->pending.push_back(event_line("MODIFIED", *event->object));
      else if (is)
        watch->pending.push_back(event_line("ADDED", *event->object));
      else if (was)
        watch->pending.push_back(event_line("DELETED", *event->object));
    }
    return start;
  }

  template <typename Buffers>
  static asio::awaitable<bool> write_chunk(TlsStream& stream, const Buffers& buffers) {
    auto chunk = http::make_chunk(buffers);
    auto [ec, n] = co_await asio::async_write(stream, chunk, as_values);
    co_return !ec;
  }

  static asio::awaitable<bool> write_last_chunk(TlsStream& stream) {
    auto last = http::make_chunk_last();
    auto [ec, n] = co_await asio::async_write(stream, last, as_values);
    co_return !ec;
  }

  // Writes the queued lines of a watch, framed as the chunk mode says.
  static asio::awaitable<bool> write_pending(TlsStream& stream, Watch& watch, ChunkMode mode) {
    while (!watch.pending.empty() && !watch.cut) {
      std::string data;
      if (mode == ChunkMode::coalesced) {
        while (!watch.pending.empty()) {
          data += watch.pending.front();
          watch.pending.pop_front();
        }
      } else {
        data = std::move(watch.pending.front());
        watch.pending.pop_front();
      }
      if (mode == ChunkMode::split && data.size() > 1) {
        std::size_t half = data.size() / 2;
        asio::const_buffer first(data.data(), half);
        asio::const_buffer second(data.data() + half, data.size() - half);
        if (!co_await write_chunk(stream, first)) co_return false;
        if (!co_await write_chunk(stream, second)) co_return false;
      } else {
        asio::const_buffer whole(data.data(), data.size());
        if (!co_await write_chunk(stream, whole)) co_return false;
      }
    }
    co_return true;
  }

  asio::awaitable<bool> serve_watch(TlsStream& stream, WatchStart& start) {
    std::shared_ptr<Watch> watch = start.watch;
    bool keep_alive = start.keep_alive;
    http::response<http::empty_body> header{http::status::ok, 11};
    header.set(http::field::content_type, "application/json");
    header.keep_alive(keep_alive);
    header.chunked(true);
    http::response_serializer<http::empty_body> serializer{header};
    auto [header_ec, header_n] = co_await http::async_write_header(stream, serializer, as_values);
    if (header_ec) co_return false;

    if (start.error_line) {
      asio::const_buffer line(start.error_line->data(), start.error_line->size());
      if (!co_await write_chunk(stream, line)) co_return false;
      bool ended = co_await write_last_chunk(stream);
      co_return ended && keep_alive;
    }

    watches.insert(watch);
    struct Unregister {
      std::set<std::shared_ptr<Watch>>& set;
      std::shared_ptr<Watch> watch;
      ~Unregister() { set.erase(watch); }
    } unregister{watches, watch};

    // A client ends a watch by closing the connection; notice it while idle, so open_watches()
    // is accurate. Nothing else arrives on a streaming HTTP/1.1 connection.
    tcp::socket& socket = stream.next_layer();
    socket.async_wait(tcp::socket::wait_read, [watch](boost::system::error_code ec) {
      if (ec == asio::error::operation_aborted) return;
      watch->client_gone = true;
      watch->wake.cancel();
    });

    auto deadline = std::chrono::steady_clock::now() + start.timeout;
    bool ok = true;
    for (;;) {
      if (stopping || watch->client_gone || !socket.is_open()) {
        ok = false;
        break;
      }
      if (watch->cut) {
        // Half an event line under a chunk header that promised all of it, then the connection drops.
        std::string line = watch->pending.empty() ? bookmark_line(*watch->resource) : watch->pending.front();
        std::ostringstream size;
        size << std::hex << line.size();
        std::string raw = size.str() + "\r\n" + line.substr(0, line.size() / 2);
        asio::const_buffer partial(raw.data(), raw.size());
        [[maybe_unused]] auto [cut_ec, cut_n] = co_await asio::async_write(stream, partial, as_values);
        ok = false;
        break;
      }
      if (!stalled && !watch->pending.empty()) {
        bool written = co_await write_pending(stream, *watch, chunk_mode);
        if (!written) {
          ok = false;
          break;
        }
        continue;
      }
      if (!stalled && std::chrono::steady_clock::now() >= deadline) break;
      watch->wake.expires_at(stalled ? asio::steady_timer::time_point::max() : deadline);
      [[maybe_unused]] auto [wait_ec] = co_await watch->wake.async_wait(as_values);
    }
    boost::system::error_code ignored;
    if (!ok) {
      socket.close(ignored);
      co_return false;
    }
    socket.cancel(ignored);  // the wait_read above
    bool ended = co_await write_last_chunk(stream);
    co_return ended && keep_alive;
  }

  // ---- control API (plain HTTP on loopback) ----
  asio::awaitable<void> control_accept_loop() {
    for (;;) {
      auto [ec, socket] = co_await control_acceptor.async_accept(as_values);
      if (stopping || !control_acceptor.is_open()) co_return;
      if (ec) continue;
      asio::co_spawn(io, serve_control(std::move(socket)), asio::detached);
    }
  }

  asio::awaitable<void> serve_control(tcp::socket socket) {
    control_sockets.insert(&socket);
    struct Unregister {
      std::set<tcp::socket*>& set;
      tcp::socket* socket;
      ~Unregister() { set.erase(socket); }
    } unregister{control_sockets, &socket};
    beast::flat_buffer buffer;
    for (;;) {
      http::request_parser<http::string_body> parser;
      parser.body_limit(64 << 20);
      auto [read_ec, n] = co_await http::async_read(socket, buffer, parser, as_values);
      if (read_ec || stopping) break;
      auto request = parser.release();
      Response response = handle_control(request);
      bool keep_alive = co_await send(socket, response);
      if (!keep_alive) break;
    }
    boost::system::error_code ignored;
    socket.close(ignored);
  }

  Response handle_control(const http::request<http::string_body>& request);
};

namespace {

json::object control_state(const FakeApiServer::Impl& impl) {
  json::object counts;
  for (std::string_view plural : {"services", "pods", "nodes", "endpointslices"})
    counts[plural] = impl.store.current(*find_resource(plural)).size();
  return json::object{{"resourceVersion", std::to_string(impl.store.resource_version())},
                      {"compactedResourceVersion", std::to_string(impl.store.compacted_version())},
                      {"openWatches", impl.watches.size()},
                      {"paused", impl.paused},
                      {"stalled", impl.stalled},
                      {"objects", std::move(counts)}};
}

}  // namespace

FakeApiServer::Impl::Response FakeApiServer::Impl::handle_control(const http::request<http::string_body>& request) {
  std::string target(request.target());
  std::string_view path = target;
  std::string_view query;
  if (auto q = path.find('?'); q != std::string_view::npos) {
    query = path.substr(q + 1);
    path = path.substr(0, q);
  }
  auto params = parse_query(query);
  auto param = [&](const char* name) -> std::string {
    auto it = params.find(name);
    return it == params.end() ? std::string() : it->second;
  };
  auto number = [&](const char* name, std::uint64_t fallback) -> std::uint64_t {
    auto it = params.find(name);
    if (it == params.end()) return fallback;
    auto value = parse_u64(it->second);
    if (!value) throw std::invalid_argument(std::string(name) + " must be a number");
    return *value;
  };
  bool keep_alive = request.keep_alive();
  auto ok = [&](json::object body) { return json_response(200, body, keep_alive); };
  try {
    if (path == "/control/state") return ok(control_state(*this));
    if (path == "/control/requests") {
      json::array entries;
      for (const auto& r : log)
        entries.push_back(json::object{{"method", r.method},
                                       {"target", r.target},
                                       {"hasAuthorization", r.has_authorization},
                                       {"authorized", r.authorized},
                                       {"watch", r.watch},
                                       {"status", r.status}});
      return ok(json::object{{"requests", std::move(entries)}});
    }
    if (request.method() != http::verb::post)
      return json_response(405, json::object{{"error", "control commands are POST"}}, keep_alive);
    if (path == "/control/upsert") {
      // JSON or YAML: one object, several documents, a List or an array.
      std::vector<json::object> objects = parse_objects(request.body());
      std::uint64_t version = 0;
      for (auto& object : objects) {
        std::string plural = param("resource");
        if (plural.empty()) {
          auto kind = object.find("kind");
          const ResourceInfo* resource =
              kind != object.end() && kind->value().is_string() ? find_resource_by_kind(kind->value().get_string())
                                                                : nullptr;
          if (!resource) throw std::invalid_argument("no resource= and no known kind in the object");
          plural = resource->plural;
        }
        version = do_upsert(plural, std::move(object));
      }
      return ok(json::object{{"resourceVersion", std::to_string(version)}});
    }
    if (path == "/control/delete") {
      auto version = do_erase(param("resource"), param("ns"), param("name"));
      if (!version) return json_response(404, json::object{{"error", "no such object"}}, keep_alive);
      return ok(json::object{{"resourceVersion", std::to_string(*version)}});
    }
    if (path == "/control/compact") {
      store.compact();
      return ok(control_state(*this));
    }
    if (path == "/control/expire-continue") {
      store.expire_continue_tokens();
      return ok({});
    }
    if (path == "/control/fail") {
      FailOptions fail;
      fail.path_prefix = param("path");
      if (params.count("retry_after")) fail.retry_after = static_cast<int>(number("retry_after", 1));
      if (params.count("watch")) fail.watch = param("watch") == "1" || param("watch") == "true";
      fail.message = param("message");
      auto count = static_cast<int>(number("count", 1));
      auto status = static_cast<unsigned>(number("status", 500));
      if (count > 0) failures.push_back({count, status, std::move(fail)});
      return ok({});
    }
    if (path == "/control/clear-failures") {
      failures.clear();
      return ok({});
    }
    if (path == "/control/pause") {
      std::uint64_t ms = params.count("ms") ? number("ms", 0) : number("seconds", 10) * 1000;
      do_pause(std::chrono::milliseconds(ms));
      return ok({});
    }
    if (path == "/control/resume") {
      do_resume();
      return ok({});
    }
    if (path == "/control/stall") {
      stalled = param("on") != "0" && param("on") != "false";
      wake_watches();
      return ok({});
    }
    if (path == "/control/cut") {
      for (const auto& watch : watches) {
        watch->cut = true;
        watch->wake.cancel();
      }
      return ok({});
    }
    if (path == "/control/close") {
      close_all_sockets(sockets);
      return ok({});
    }
    if (path == "/control/bookmark") {
      do_send_bookmarks();
      return ok({});
    }
    if (path == "/control/token") {
      std::string value = param("value");
      if (value.empty()) value = request.body();
      if (value.empty()) value = random_token();
      token = value;
      write_token_files();
      return ok({});
    }
    if (path == "/control/clear-requests") {
      log.clear();
      return ok({});
    }
    return json_response(404, json::object{{"error", "no such control command"}}, keep_alive);
  } catch (const std::exception& e) {
    return json_response(400, json::object{{"error", e.what()}}, keep_alive);
  }
}

FakeApiServer::FakeApiServer(FakeApiServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  if (impl_->options.dir.empty()) throw std::invalid_argument("FakeApiServerOptions.dir is required");
}

FakeApiServer::~FakeApiServer() { stop(); }

void FakeApiServer::start() {
  Impl& s = *impl_;
  if (s.running) return;
  s.dir = std::filesystem::absolute(s.options.dir);
  std::filesystem::create_directories(s.dir / "serviceaccount");
  auto address = asio::ip::make_address(s.options.listen_address);
  s.endpoint = tcp::endpoint(address, s.options.port);

  std::vector<std::string> sans{"127.0.0.1", "::1"};
  if (!address.is_unspecified() && !address.is_loopback()) sans.push_back(address.to_string());
  for (const auto& extra : s.options.extra_san_addresses) sans.push_back(extra);
  TlsMaterial material = generate_tls_material(sans);
  s.ca_pem = material.ca.certificate_pem;
  auto configure = [](ssl::context& context, const CertifiedKey& key) {
    context.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                        ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1);
    context.use_certificate_chain(asio::buffer(key.certificate_pem));
    context.use_private_key(asio::buffer(key.private_key_pem), ssl::context::pem);
  };
  configure(s.tls, material.server);
  configure(s.wrong_tls, material.wrong_server);

  s.token = s.options.token.empty() ? random_token() : s.options.token;
  s.open_acceptor();
  write_file(s.dir / "ca.crt", material.ca.certificate_pem, 0644);
  write_file(s.dir / "wrong-ca.crt", material.wrong_ca.certificate_pem, 0644);
  write_file(s.dir / "serviceaccount" / "ca.crt", material.ca.certificate_pem, 0644);
  write_file(s.dir / "serviceaccount" / "namespace", "kube-system", 0644);
  s.write_token_files();
  write_file(s.dir / "kubeconfig", s.kubeconfig(false, false), 0600);
  write_file(s.dir / "kubeconfig-wrong-ca", s.kubeconfig(false, true), 0600);
  // Last: a harness waiting for this file finds everything else in place.
  write_file(s.dir / "port", std::to_string(s.endpoint.port()) + "\n", 0644);

  s.stopping = false;
  s.schedule_bookmarks();
  s.work.emplace(s.io.get_executor());
  s.running = true;
  s.thread = std::thread([&s] { s.io.run(); });
}

void FakeApiServer::stop() {
  Impl& s = *impl_;
  if (!s.thread.joinable()) return;
  asio::post(s.io, [&s] { s.do_shutdown(); });
  s.work.reset();
  s.thread.join();
  s.running = false;
}

// Through the server thread: a pause's timer re-binds (and rewrites the endpoint) there.
std::uint16_t FakeApiServer::port() const {
  return impl_->call([this] { return impl_->endpoint.port(); });
}
std::string FakeApiServer::url() const {
  return impl_->call([this] { return impl_->url(); });
}
std::filesystem::path FakeApiServer::ca_file() const { return impl_->dir / "ca.crt"; }
std::filesystem::path FakeApiServer::wrong_ca_file() const { return impl_->dir / "wrong-ca.crt"; }
std::filesystem::path FakeApiServer::token_file() const { return impl_->dir / "token"; }
std::filesystem::path FakeApiServer::kubeconfig_file() const { return impl_->dir / "kubeconfig"; }
std::filesystem::path FakeApiServer::inline_kubeconfig_file() const { return impl_->dir / "kubeconfig-inline"; }
std::filesystem::path FakeApiServer::wrong_ca_kubeconfig_file() const { return impl_->dir / "kubeconfig-wrong-ca"; }
std::filesystem::path FakeApiServer::service_account_dir() const { return impl_->dir / "serviceaccount"; }
std::string FakeApiServer::token() const {
  return impl_->call([this] { return impl_->token; });
}

std::uint64_t FakeApiServer::upsert(std::string_view resource, json::object object) {
  return impl_->call([&] { return impl_->do_upsert(resource, std::move(object)); });
}

std::optional<std::uint64_t> FakeApiServer::erase(std::string_view resource, std::string_view ns,
                                                  std::string_view name) {
  return impl_->call([&] { return impl_->do_erase(resource, ns, name); });
}

std::optional<json::object> FakeApiServer::get(std::string_view resource, std::string_view ns,
                                               std::string_view name) const {
  return impl_->call([&]() -> std::optional<json::object> {
    ObjectPtr object = impl_->store.get(Impl::resource_or_throw(resource), ns, name);
    if (!object) return std::nullopt;
    return *object;
  });
}

std::uint64_t FakeApiServer::resource_version() const {
  return impl_->call([this] { return impl_->store.resource_version(); });
}

void FakeApiServer::compact() {
  impl_->call([this] { impl_->store.compact(); });
}

void FakeApiServer::expire_continue_tokens() {
  impl_->call([this] { impl_->store.expire_continue_tokens(); });
}

void FakeApiServer::fail_next(int count, unsigned status, FailOptions options) {
  if (count <= 0) return;
  impl_->call([&] { impl_->failures.push_back({count, status, std::move(options)}); });
}

void FakeApiServer::clear_failures() {
  impl_->call([this] { impl_->failures.clear(); });
}

void FakeApiServer::stall_watches(bool on) {
  impl_->call([this, on] {
    impl_->stalled = on;
    impl_->wake_watches();
  });
}

void FakeApiServer::cut_streams() {
  impl_->call([this] {
    for (const auto& watch : impl_->watches) {
      watch->cut = true;
      watch->wake.cancel();
    }
  });
}

void FakeApiServer::close_connections() {
  impl_->call([this] { impl_->close_all_sockets(impl_->sockets); });
}

void FakeApiServer::pause(std::chrono::milliseconds duration) {
  impl_->call([this, duration] { impl_->do_pause(duration); });
}

void FakeApiServer::resume() {
  impl_->call([this] { impl_->do_resume(); });
}

void FakeApiServer::set_token(std::string token) {
  impl_->call([&] {
    impl_->token = std::move(token);
    if (!impl_->dir.empty()) impl_->write_token_files();
  });
}

void FakeApiServer::send_bookmarks() {
  impl_->call([this] { impl_->do_send_bookmarks(); });
}

void FakeApiServer::set_chunk_mode(ChunkMode mode) {
  impl_->call([this, mode] { impl_->chunk_mode = mode; });
}

void FakeApiServer::present_wrong_certificate(bool on) {
  impl_->call([this, on] { impl_->wrong_certificate = on; });
}

std::vector<RecordedRequest> FakeApiServer::requests() const {
  return impl_->call([this] { return impl_->log; });
}

void FakeApiServer::clear_requests() {
  impl_->call([this] { impl_->log.clear(); });
}

std::size_t FakeApiServer::open_watches() const {
  return impl_->call([this] { return impl_->watches.size(); });
}

bool FakeApiServer::wait_for_watches(std::size_t count, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (open_watches() >= count) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    sleep_briefly();
  }
}

void FakeApiServer::sleep_briefly() { std::this_thread::sleep_for(std::chrono::milliseconds(5)); }

std::uint16_t FakeApiServer::start_control(std::uint16_t port) {
  return impl_->call([this, port] {
    Impl& s = *impl_;
    tcp::endpoint endpoint(asio::ip::address_v4::loopback(), port);
    s.control_acceptor.open(endpoint.protocol());
    s.control_acceptor.set_option(tcp::acceptor::reuse_address(true));
    s.control_acceptor.bind(endpoint);
    s.control_acceptor.listen(16);
    s.control_port = s.control_acceptor.local_endpoint().port();
    asio::co_spawn(s.io, s.control_accept_loop(), asio::detached);
    return s.control_port;
  });
}

}  // namespace dsproxy::fake_api
