#include "config/json_reader.hpp"

#include <boost/json/basic_parser_impl.hpp>

#include <charconv>
#include <cstring>
#include <cstdint>
#include <optional>

namespace dsproxy::config {

namespace json = boost::json;

namespace {

// Scalars keep the text the input spelled (yaml-cpp's view, which the decoder's messages and
// rules are written against): an integer becomes a number only if printing it gives the same
// text back, so `"port": 80` is the number 80 but `1.50`, `1e3` or `-0` stay what they were.
template <typename T>
bool canonical(T v, std::string_view text) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc{} && std::string_view(buf, static_cast<std::size_t>(end - buf)) == text;
}

struct Handler {
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);

  explicit Handler(JsonTreeBuilder& b) : builder(b) {}

  JsonTreeBuilder& builder;
  std::string key_buf, string_buf, number_buf;
  std::optional<std::string> limit_message;
  std::size_t token_length = 0;  // of the number just read: a limit names where it starts

  template <typename F>
  bool guard(json::error_code& ec, F&& f) {
    try {
      f();
      return true;
    } catch (const InputLimitError& e) {
      limit_message = e.what();
      ec = json::error::exception;
      return false;
    }
  }

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_object_begin(json::error_code& ec) { return guard(ec, [&] { builder.begin_object(); }); }
  bool on_object_end(std::size_t, json::error_code& ec) { return guard(ec, [&] { builder.end_container(); }); }
  bool on_array_begin(json::error_code& ec) { return guard(ec, [&] { builder.begin_array(); }); }
  bool on_array_end(std::size_t, json::error_code& ec) { return guard(ec, [&] { builder.end_container(); }); }

  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    key_buf.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    token_length = 0;
    if (key_buf.empty()) return guard(ec, [&] { builder.key({s.data(), s.size()}); });
    key_buf.append(s.data(), s.size());
    const bool ok = guard(ec, [&] { builder.key(key_buf); });
    key_buf.clear();
    return ok;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    string_buf.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    token_length = 0;
    if (!string_buf.empty()) {
      string_buf.append(s.data(), s.size());
      s = string_buf;
    }
    const bool ok = guard(ec, [&] { builder.value(json::value(json::string(s, builder.storage()))); });
    string_buf.clear();
    return ok;
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    number_buf.append(s.data(), s.size());
    return true;
  }
  template <typename T>
  bool number(std::optional<T> v, json::string_view s, json::error_code& ec) {
    std::string_view text(s.data(), s.size());
    if (!number_buf.empty()) {
      number_buf.append(s.data(), s.size());
      text = number_buf;
    }
    token_length = text.size();
    const bool ok = guard(ec, [&] {
      if (v && canonical(*v, text)) builder.value(json::value(*v, builder.storage()));
      else builder.value(json::value(json::string(text, builder.storage())));
    });
    number_buf.clear();
    return ok;
  }
  bool on_int64(std::int64_t v, json::string_view s, json::error_code& ec) { return number(std::optional(v), s, ec); }
  bool on_uint64(std::uint64_t v, json::string_view s, json::error_code& ec) { return number(std::optional(v), s, ec); }
  bool on_double(double, json::string_view s, json::error_code& ec) {
    return number(std::optional<std::int64_t>(), s, ec);
  }
  bool on_bool(bool b, json::error_code& ec) {
    token_length = 0;
    return guard(ec, [&] { builder.value(json::value(b, builder.storage())); });
  }
  bool on_null(json::error_code& ec) {
    token_length = 0;
    return guard(ec, [&] { builder.value(json::value(nullptr, builder.storage())); });
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }
};

json::parse_options options(const DecodeLimits& limits) {
  json::parse_options o;
  // The builder enforces the nesting limit with its own message; Boost's default of 32 would
  // refuse real objects first.
  o.max_depth = limits.max_depth + 1;
  return o;
}

}  // namespace

struct JsonReader::Parser {
  Parser(const DecodeLimits& limits, JsonTreeBuilder& b) : p(options(limits), b) {}
  json::basic_parser<Handler> p;
};

JsonReader::JsonReader(JsonTreeBuilder& builder, std::string_view source, const DecodeLimits& limits)
    : builder_(builder), source_(source), parser_(std::make_unique<Parser>(limits, builder)) {
  builder_.begin_document();
}

JsonReader::~JsonReader() = default;

void JsonReader::advance(std::string_view chunk) {
  // Only line numbers for messages, but over every byte: memchr's speed, not a byte loop's.
  if (chunk.empty()) return;  // finish() has no chunk, and memchr no null pointer (found by the fuzzer)
  for (const char* p = chunk.data(); const void* nl = std::memchr(p, '\n', static_cast<std::size_t>(chunk.data() + chunk.size() - p));) {
    p = static_cast<const char*>(nl) + 1;
    ++line_;
    line_start_ = offset_ + static_cast<std::size_t>(p - chunk.data());
  }
  offset_ += chunk.size();
}

void JsonReader::fail(std::size_t at, std::string_view chunk, const std::string& message, bool syntax) {
  advance(chunk.substr(0, at));
  std::string s(source_);
  if (!syntax) s += ": document " + std::to_string(builder_.document_index());
  s += ": line " + std::to_string(line_) + ", column " + std::to_string(offset_ - line_start_ + 1) + ": " + message;
  if (syntax) throw JsonSyntaxError(s);
  throw ConfigError(s);
}

void JsonReader::write(std::string_view chunk) {
  if (done_) {
    // After the value, whitespace only: a second value is another format (JSON lines, YAML).
    const std::size_t at = chunk.find_first_not_of(" \t\r\n");
    if (at != std::string_view::npos) fail(at, chunk, "invalid JSON: text after the end of the value", true);
    advance(chunk);
    return;
  }
  json::error_code ec;
  const std::size_t used = parser_->p.write_some(true, chunk.data(), chunk.size(), ec);
  Handler& h = parser_->p.handler();
  if (h.limit_message) {
    const std::size_t at = used >= h.token_length ? used - h.token_length : 0;
    fail(at, chunk, *h.limit_message, false);
  }
  if (ec) fail(used, chunk, "invalid JSON: " + ec.message(), true);
  if (parser_->p.done()) {
    done_ = true;
    advance(chunk.substr(0, used));
    write(chunk.substr(used));
    return;
  }
  advance(chunk);
}

void JsonReader::finish() {
  if (!done_) {
    json::error_code ec;
    parser_->p.write_some(false, nullptr, 0, ec);
    Handler& h = parser_->p.handler();
    if (h.limit_message) fail(0, {}, *h.limit_message, false);
    if (ec) fail(0, {}, "invalid JSON: " + ec.message(), true);
  }
  builder_.end_document();
}

}  // namespace dsproxy::config
