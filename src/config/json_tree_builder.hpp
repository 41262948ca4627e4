#pragma once
// Builds Boost.JSON values from the events of a parser (the JSON reader and the YAML reader both
// drive it), one Kubernetes object at a time: the elements of a document's "items" list (a
// `kind: List`, what kubectl prints) are handed to the sink as each one completes and then freed,
// so decoding a 50 MB cluster dump holds one object's tree at a time, never the whole input's.
// `kubectl get -o json|yaml` sorts keys, so "items" comes before "kind": whether the document is
// a List is known only at its end, and the sink decides what to do with items meanwhile.
//
// Limits are enforced as the values are built, before memory is spent: nesting depth, the total
// number of nodes (CPU), and the nodes of one object's tree (memory). A repeated key keeps its
// first value (what yaml-cpp lookups saw) and its path is reported with the object, because
// kubectl rejects such input and using half of it would hide the mistake.

#include <boost/json/monotonic_resource.hpp>
#include <boost/json/value.hpp>

#include <array>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "config/k8s_decoder.hpp"

namespace dsproxy::config {

// A limit was hit; the reader adds the input position and turns it into a ConfigError.
class InputLimitError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class TreeSink {
 public:
  virtual ~TreeSink() = default;
  // Element `index` (from 0) of the document root's first "items" list, of `nodes` nodes.
  // `root` is the root mapping as read so far (without its items). `duplicate` is the path,
  // inside the element, of the first repeated key. `v` lives in storage the builder reuses after
  // the call returns. May throw InputLimitError.
  virtual void item(std::size_t document, std::size_t index, boost::json::value&& v, std::size_t nodes,
                    const std::optional<std::string>& duplicate, const boost::json::object& root) = 0;
  // A whole document (1-based `index`); a root's streamed "items" list is left in it empty.
  virtual void document(std::size_t index, boost::json::value&& root, const std::optional<std::string>& duplicate) = 0;
};

class JsonTreeBuilder {
 public:
  JsonTreeBuilder(TreeSink& sink, const DecodeLimits& limits);
  JsonTreeBuilder(const JsonTreeBuilder&) = delete;
  JsonTreeBuilder& operator=(const JsonTreeBuilder&) = delete;

  void begin_document();
  void end_document();  // a document without any value is a null document
  void begin_object();
  void begin_array();
  // Ends the innermost object or array; with `copy`, also copies it there (default storage)
  // before it is attached or handed out: how the YAML reader keeps an anchored node.
  void end_container(boost::json::value* copy = nullptr);
  bool expecting_key() const { return !frames_.empty() && frames_.back().value.is_object() && !frames_.back().has_key; }
  void key(std::string_view k);
  // A complete value: a scalar (1 node), or a copy of an earlier one (an alias, `nodes` nodes,
  // which count towards the object's memory but not the total: the YAML reader bounds them).
  void value(boost::json::value&& v);
  void copy_of(const boost::json::value& v, std::size_t nodes);
  // Where the next value must be built, so that it is freed with its object.
  boost::json::storage_ptr storage() const { return in_item() ? item_storage_ : root_storage_; }
  std::size_t depth() const { return frames_.size(); }
  std::size_t document_index() const { return document_; }
  // Nodes built outside the tree (the YAML reader's copies of anchored nodes) count towards the total.
  void count_nodes(std::size_t n);

 private:
  struct Frame {
    boost::json::value value;  // object or array under construction
    std::string key;           // object: the key of the value being read
    bool has_key = false;
    bool items = false;        // the root's "items": elements go to the sink
    std::size_t handed_out = 0;
  };

  bool in_item() const { return frames_.size() >= 2 && frames_[1].items; }
  void count_node();
  void open(boost::json::value&& container);
  void attach(boost::json::value&& v);
  std::string duplicate_path(std::string_view key) const;

  TreeSink& sink_;
  const DecodeLimits& limits_;
  std::vector<Frame> frames_;
  std::size_t document_ = 0;
  bool document_has_value_ = false;
  bool items_seen_ = false;
  std::size_t nodes_ = 0;       // over the whole input
  std::size_t unit_nodes_ = 0;  // of the tree being built: the current item, else the document
  std::size_t root_nodes_ = 0;  // of the document root while items are streamed
  std::optional<std::string> root_duplicate_;
  std::optional<std::string> item_duplicate_;
  // Most objects fit in the first buffer: building one then costs no malloc at all, and
  // release() frees a large one's blocks at once.
  // The storage pointers do not own their resource: values in them skip destruction entirely
  // (monotonic deallocation is a no-op), which is why a handed-out value must not outlive the call.
  std::array<unsigned char, 16384> item_buffer_;
  std::array<unsigned char, 4096> root_buffer_;
  boost::json::monotonic_resource item_resource_{item_buffer_.data(), item_buffer_.size()};
  boost::json::monotonic_resource root_resource_{root_buffer_.data(), root_buffer_.size()};
  boost::json::storage_ptr item_storage_{&item_resource_};
  boost::json::storage_ptr root_storage_{&root_resource_};
};

}  // namespace dsproxy::config
