#include "config/yaml_reader.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/parser.h>

#include <charconv>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace dsproxy::config {

namespace json = boost::json;

namespace {

constexpr std::string_view kNonSpecificTag = "?";  // a plain scalar without a tag: the schema decides

std::size_t saturating_add(std::size_t a, std::size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

// Core-schema integers in canonical decimal only, so the number prints back as the text it came from.
bool canonical_int(const std::string& s, std::int64_t& out) {
  if (s.empty() || s.size() > 20) return false;
  const char* b = s.data();
  const char* e = b + s.size();
  if (*b == '-' && s.size() > 1 && s[1] == '0') return false;  // "-0", "-01"
  if (*b == '0' && s.size() > 1) return false;                 // "01"
  auto [ptr, ec] = std::from_chars(b, e, out);
  return ec == std::errc{} && ptr == e;
}

class Converter final : public YAML::EventHandler {
 public:
  Converter(JsonTreeBuilder& b, std::string_view source, const DecodeLimits& limits)
      : builder_(b), source_(source), limits_(limits) {}

  void OnDocumentStart(const YAML::Mark& mark) override {
    // yaml-cpp 0.7 can stop consuming input after some malformed flow collections and then
    // report empty documents at the same place forever (found by the config fuzzer: 381 bytes
    // of broken JSON, endless CPU and memory). Every real document starts past the last one.
    ++document_;
    if (document_ > 1 && mark.pos == last_start_)
      fail(mark, "invalid YAML: the parser stopped advancing here (check the brackets and quotes before this point)");
    last_start_ = mark.pos;
    // Anchors are scoped to their document (yaml-cpp numbers them afresh in each).
    anchors_.clear();
    open_.clear();
    builder_.begin_document();
  }
  void OnDocumentEnd() override { builder_.end_document(); }

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    if (builder_.expecting_key()) fail(mark, "a mapping key must be a string, got null");
    leaf(mark, anchor, json::value(nullptr, builder_.storage()));
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& text) override {
    if (builder_.expecting_key()) {
      guarded(mark, [&] { builder_.key(text); });
      if (anchor != YAML::NullAnchor) anchors_[anchor] = Anchor{json::value(text), 1};
      add_to_parent(1);
      return;
    }
    json::value v;
    std::int64_t n = 0;
    if (tag == kNonSpecificTag && text == "true") v = json::value(true, builder_.storage());
    else if (tag == kNonSpecificTag && text == "false") v = json::value(false, builder_.storage());
    else if (tag == kNonSpecificTag && canonical_int(text, n)) v = json::value(n, builder_.storage());
    else v = json::value(json::string(text, builder_.storage()));
    leaf(mark, anchor, std::move(v));
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    open(mark, anchor, false);
  }
  void OnSequenceEnd() override { close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    open(mark, anchor, true);
  }
  void OnMapEnd() override { close(); }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    // yaml-cpp rejects an alias to an undefined anchor, so one not yet complete is an alias to a
    // mapping or list that contains it: a cycle, which no Kubernetes object has.
    const auto it = anchors_.find(anchor);
    if (it == anchors_.end()) fail(mark, "an alias refers to a mapping or list that contains it (a cycle)");
    alias_nodes_ = saturating_add(alias_nodes_, it->second.nodes);
    if (alias_nodes_ > limits_.max_alias_nodes)
      fail(mark, "aliases repeat more than " + std::to_string(limits_.max_alias_nodes) +
                     " nodes in total (the config alias-expansion limit)");
    const json::value& v = it->second.value;
    if (builder_.expecting_key()) {
      // The anchored scalar's text: a key is text whatever the schema made of the value.
      std::string text;
      if (v.is_string()) text = v.get_string();
      else if (v.is_int64()) text = std::to_string(v.get_int64());
      else if (v.is_bool()) text = v.get_bool() ? "true" : "false";
      else fail(mark, std::string("a mapping key must be a string, got ") + (v.is_null() ? "null" : v.is_object() ? "a mapping" : "a list"));
      guarded(mark, [&] { builder_.key(text); });
    } else {
      guarded(mark, [&] { builder_.copy_of(v, it->second.nodes); });
    }
    add_to_parent(it->second.nodes);
  }

 private:
  struct Anchor {
    json::value value;  // a copy in default storage: the tree it came from may be freed first
    std::size_t nodes;  // its size with aliases expanded
  };
  struct Open {
    YAML::anchor_t anchor;
    std::size_t nodes;  // expanded size so far, the collection itself included
    YAML::Mark mark;
  };

  [[noreturn]] void fail(const YAML::Mark& mark, const std::string& message) const {
    std::string s(source_);
    s += ": document " + std::to_string(document_);
    if (!mark.is_null()) s += ": line " + std::to_string(mark.line + 1) + ", column " + std::to_string(mark.column + 1);
    throw ConfigError(s + ": " + message);
  }

  template <typename F>
  void guarded(const YAML::Mark& mark, F&& f) {
    try {
      f();
    } catch (const InputLimitError& e) {
      fail(mark, e.what());
    }
  }

  void add_to_parent(std::size_t n) {
    if (!open_.empty()) open_.back().nodes = saturating_add(open_.back().nodes, n);
  }

  void leaf(const YAML::Mark& mark, YAML::anchor_t anchor, json::value&& v) {
    if (anchor != YAML::NullAnchor) {
      anchors_[anchor] = Anchor{json::value(v, json::storage_ptr()), 1};
      guarded(mark, [&] { builder_.count_nodes(1); });
    }
    guarded(mark, [&] { builder_.value(std::move(v)); });
    add_to_parent(1);
  }

  void open(const YAML::Mark& mark, YAML::anchor_t anchor, bool mapping) {
    if (builder_.expecting_key())
      fail(mark, std::string("a mapping key must be a string, got a ") + (mapping ? "mapping" : "list"));
    guarded(mark, [&] {
      if (mapping) builder_.begin_object();
      else builder_.begin_array();
    });
    open_.push_back({anchor, 1, mark});
  }

  void close() {
    const Open done = open_.back();
    open_.pop_back();
    if (done.anchor != YAML::NullAnchor) {
      // The copy is memory and time like any node built.
      guarded(done.mark, [&] { builder_.count_nodes(done.nodes); });
      json::value copy;
      builder_.end_container(&copy);
      anchors_[done.anchor] = Anchor{std::move(copy), done.nodes};
    } else {
      builder_.end_container();
    }
    add_to_parent(done.nodes);
  }

  JsonTreeBuilder& builder_;
  std::string_view source_;
  const DecodeLimits& limits_;
  std::size_t document_ = 0;
  int last_start_ = 0;           // where the last document started (YAML::Mark::pos)
  std::size_t alias_nodes_ = 0;  // nodes repeated through aliases, over all documents
  std::unordered_map<YAML::anchor_t, Anchor> anchors_;
  std::vector<Open> open_;
};

}  // namespace

void read_yaml(std::istream& in, JsonTreeBuilder& builder, std::string_view source, const DecodeLimits& limits) {
  try {
    YAML::Parser parser(in);
    Converter converter(builder, source, limits);
    while (parser.HandleNextDocument(converter)) {
    }
  } catch (const YAML::Exception& e) {
    std::string s(source);
    if (!e.mark.is_null())
      s += ": line " + std::to_string(e.mark.line + 1) + ", column " + std::to_string(e.mark.column + 1);
    throw ConfigError(s + ": invalid YAML: " + e.msg);
  }
}

}  // namespace dsproxy::config
