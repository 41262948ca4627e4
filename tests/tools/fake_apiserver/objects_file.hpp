// Initial objects for the standalone fake API server: a JSON or YAML file (several YAML documents,
// `kind: List` or `kind: ServiceList`-style lists, or a JSON array) turned into JSON objects.
#pragma once

#include <boost/json/object.hpp>
#include <filesystem>
#include <string_view>
#include <vector>

namespace dsproxy::fake_api {

// Throws std::runtime_error naming the file on a read or parse error.
std::vector<boost::json::object> load_objects_file(const std::filesystem::path& path);
// The same from text (JSON if it starts with '{' or '[', YAML otherwise).
std::vector<boost::json::object> parse_objects(std::string_view text);

}  // namespace dsproxy::fake_api
