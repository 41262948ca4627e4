#include "fake_apiserver/objects_file.hpp"

#include <yaml-cpp/yaml.h>

#include <boost/json/parse.hpp>
#include <charconv>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace dsproxy::fake_api {

namespace json = boost::json;

namespace {

// YAML 1.2 core schema for plain scalars; quoted scalars (tag "!") stay strings, so "80" does not
// become a number where a manifest quoted it.
json::value scalar_to_json(const YAML::Node& node) {
  const std::string& text = node.Scalar();
  if (node.Tag() == "!") return json::string(text);
  if (text == "true" || text == "True" || text == "TRUE") return true;
  if (text == "false" || text == "False" || text == "FALSE") return false;
  if (text == "null" || text == "Null" || text == "NULL" || text == "~" || text.empty()) return nullptr;
  std::int64_t integer = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), integer);
  if (ec == std::errc() && ptr == text.data() + text.size()) return integer;
  double number = 0;
  auto [fptr, fec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (fec == std::errc() && fptr == text.data() + text.size()) return number;
  return json::string(text);
}

json::value yaml_to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      json::object object;
      for (const auto& member : node) object[member.first.as<std::string>()] = yaml_to_json(member.second);
      return object;
    }
    case YAML::NodeType::Sequence: {
      json::array array;
      for (const auto& element : node) array.push_back(yaml_to_json(element));
      return array;
    }
    case YAML::NodeType::Scalar:
      return scalar_to_json(node);
    default:
      return nullptr;
  }
}

void collect(json::value value, std::vector<json::object>& out) {
  if (value.is_null()) return;
  if (value.is_array()) {
    for (auto& element : value.as_array()) collect(std::move(element), out);
    return;
  }
  if (!value.is_object()) throw std::runtime_error("an object file holds something that is not an object");
  json::object& object = value.as_object();
  if (auto items = object.find("items"); items != object.end() && items->value().is_array()) {
    // kind: List, or a typed list (ServiceList) whose items may lack kind: take it from the list.
    std::string item_kind;
    if (auto kind = object.find("kind"); kind != object.end() && kind->value().is_string()) {
      std::string_view list_kind = kind->value().get_string();
      if (list_kind != "List" && list_kind.ends_with("List"))
        item_kind = std::string(list_kind.substr(0, list_kind.size() - 4));
    }
    for (auto& item : items->value().as_array()) {
      if (item.is_object() && !item_kind.empty() && !item.as_object().contains("kind"))
        item.as_object()["kind"] = item_kind;
      collect(std::move(item), out);
    }
    return;
  }
  out.push_back(std::move(object));
}

}  // namespace

std::vector<json::object> parse_objects(std::string_view text) {
  std::vector<json::object> out;
  auto first = text.find_first_not_of(" \t\r\n");
  if (first != std::string_view::npos && (text[first] == '{' || text[first] == '[')) {
    collect(json::parse(text), out);
    return out;
  }
  for (const auto& document : YAML::LoadAll(std::string(text))) collect(yaml_to_json(document), out);
  return out;
}

std::vector<json::object> load_objects_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  std::ostringstream text;
  text << in.rdbuf();
  try {
    return parse_objects(text.str());
  } catch (const std::exception& e) {
    throw std::runtime_error(path.string() + ": " + e.what());
  }
}

}  // namespace dsproxy::fake_api
