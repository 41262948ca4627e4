#include "config/json_tree_builder.hpp"

#include <utility>

#include "config/field_path.hpp"

namespace dsproxy::config {

namespace json = boost::json;

JsonTreeBuilder::JsonTreeBuilder(TreeSink& sink, const DecodeLimits& limits) : sink_(sink), limits_(limits) {
  frames_.reserve(32);
}

void JsonTreeBuilder::begin_document() {
  ++document_;
  frames_.clear();
  document_has_value_ = false;
  items_seen_ = false;
  unit_nodes_ = 0;
  root_nodes_ = 0;
  root_duplicate_.reset();
  item_duplicate_.reset();
}

void JsonTreeBuilder::end_document() {
  // A document's value is attached (handed out) when it completes; frames left open mean the
  // reader stopped early, and it reports that itself.
  if (!document_has_value_ && frames_.empty()) {
    document_has_value_ = true;
    sink_.document(document_, json::value(nullptr), std::nullopt);
  }
  frames_.clear();
  root_resource_.release();
  item_resource_.release();
}

void JsonTreeBuilder::count_nodes(std::size_t n) {
  nodes_ = nodes_ > limits_.max_nodes ? nodes_ : nodes_ + n;
  if (nodes_ > limits_.max_nodes)
    throw InputLimitError("more than " + std::to_string(limits_.max_nodes) + " nodes (the config node limit)");
}

void JsonTreeBuilder::count_node() {
  count_nodes(1);
  if (++unit_nodes_ > limits_.max_object_nodes)
    throw InputLimitError("one object holds more than " + std::to_string(limits_.max_object_nodes) +
                          " nodes (the config object-size limit)");
}

void JsonTreeBuilder::open(json::value&& container) {
  if (frames_.size() >= limits_.max_depth)
    throw InputLimitError("nested deeper than " + std::to_string(limits_.max_depth) +
                          " levels (the config nesting limit)");
  count_node();
  Frame f;
  // The document root's first "items" list: its elements are objects of their own.
  if (frames_.size() == 1 && container.is_array() && frames_[0].value.is_object() && frames_[0].key == "items" &&
      !items_seen_) {
    items_seen_ = true;
    f.items = true;
  }
  f.value = std::move(container);
  frames_.push_back(std::move(f));
  if (frames_.back().items) {
    root_nodes_ = unit_nodes_;
    unit_nodes_ = 0;
  }
}

void JsonTreeBuilder::begin_object() {
  if (frames_.empty() && document_has_value_) throw InputLimitError("more than one value in a document");
  open(json::value(json::object(storage())));
}

void JsonTreeBuilder::begin_array() {
  if (frames_.empty() && document_has_value_) throw InputLimitError("more than one value in a document");
  open(json::value(json::array(storage())));
}

void JsonTreeBuilder::end_container(json::value* copy) {
  Frame f = std::move(frames_.back());
  frames_.pop_back();
  if (copy) *copy = json::value(f.value, json::storage_ptr());
  if (f.items) {
    unit_nodes_ = root_nodes_;
    // The root keeps an empty "items", so that it still reads as a List.
    attach(json::value(json::array(storage())));
    return;
  }
  attach(std::move(f.value));
}

void JsonTreeBuilder::key(std::string_view k) {
  count_node();
  Frame& f = frames_.back();
  f.key.assign(k.data(), k.size());
  f.has_key = true;
}

void JsonTreeBuilder::value(json::value&& v) {
  if (frames_.empty() && document_has_value_) throw InputLimitError("more than one value in a document");
  count_node();
  attach(std::move(v));
}

void JsonTreeBuilder::copy_of(const json::value& v, std::size_t nodes) {
  if (frames_.empty() && document_has_value_) throw InputLimitError("more than one value in a document");
  unit_nodes_ += nodes;
  if (unit_nodes_ > limits_.max_object_nodes)
    throw InputLimitError("one object holds more than " + std::to_string(limits_.max_object_nodes) +
                          " nodes (the config object-size limit)");
  attach(json::value(v, storage()));
}

std::string JsonTreeBuilder::duplicate_path(std::string_view key) const {
  // From the root of the object being built: the item inside a List, else the document.
  std::size_t first = in_item() ? 2 : 0;
  std::string path;
  for (std::size_t i = first; i + 1 < frames_.size(); ++i) {
    const Frame& f = frames_[i];
    if (f.value.is_object()) path = key_path(path, f.key);
    else path = index_path(path, f.value.get_array().size());
  }
  return key_path(path, key);
}

void JsonTreeBuilder::attach(json::value&& v) {
  if (frames_.empty()) {
    document_has_value_ = true;
    {
      json::value root = std::move(v);
      sink_.document(document_, std::move(root), root_duplicate_);
    }
    root_duplicate_.reset();
    root_resource_.release();
    return;
  }
  Frame& top = frames_.back();
  if (top.items) {
    {
      json::value item = std::move(v);
      sink_.item(document_, top.handed_out++, std::move(item), unit_nodes_, item_duplicate_, frames_[0].value.get_object());
    }
    item_duplicate_.reset();
    unit_nodes_ = 0;
    item_resource_.release();
    return;
  }
  if (top.value.is_object()) {
    json::object& o = top.value.get_object();
    if (!o.emplace(top.key, std::move(v)).second) {
      std::optional<std::string>& dup = in_item() ? item_duplicate_ : root_duplicate_;
      if (!dup) dup = duplicate_path(top.key);
    }
    top.has_key = false;
    return;
  }
  top.value.get_array().push_back(std::move(v));
}

}  // namespace dsproxy::config
