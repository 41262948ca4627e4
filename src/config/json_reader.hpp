#pragma once
// JSON text (what `kubectl get -o json` writes and the API server sends) into a JsonTreeBuilder,
// with Boost.JSON's parser: no YAML machinery, and the input may arrive in chunks (a file read
// piece by piece is never held whole). Positions in messages are lines and columns of the text.

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "config/json_tree_builder.hpp"
#include "config/k8s_decoder.hpp"

namespace dsproxy::config {

// The text is not JSON at all (the caller may try it as YAML, which JSON-looking text can be).
class JsonSyntaxError : public ConfigError {
 public:
  using ConfigError::ConfigError;
};

class JsonReader {
 public:
  // `source` names the input in messages and must outlive the reader.
  JsonReader(JsonTreeBuilder& builder, std::string_view source, const DecodeLimits& limits);
  ~JsonReader();
  JsonReader(const JsonReader&) = delete;
  JsonReader& operator=(const JsonReader&) = delete;

  // Throws ConfigError for a limit, JsonSyntaxError for anything that is not one JSON value.
  void write(std::string_view chunk);
  void finish();

 private:
  struct Parser;
  [[noreturn]] void fail(std::size_t offset_in_chunk, std::string_view chunk, const std::string& message, bool syntax);
  void advance(std::string_view chunk);

  JsonTreeBuilder& builder_;
  std::string_view source_;
  std::unique_ptr<Parser> parser_;
  std::size_t line_ = 1;        // the line the next chunk starts on
  std::size_t line_start_ = 0;  // offset of that line's first byte
  std::size_t offset_ = 0;      // offset of the next chunk's first byte
  bool done_ = false;           // the value is complete; only whitespace may follow
};

}  // namespace dsproxy::config
