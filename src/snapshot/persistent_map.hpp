#pragma once
// A hash map whose copies share structure: copying is O(1), and changing a copy copies only the
// path to the changed entry (a 64-entry root, a 64-entry page and one small sorted leaf), never
// the whole map. Consecutive snapshots hold copies of the builder's maps, so one event costs a
// few hundred pointer copies per map however large the cluster is.
//
// Layout: a fixed two-level trie of 64 x 64 leaves chosen by the key's hash; a leaf is a sorted
// vector of (key, value), which keeps the map compact (no node per entry) and a lookup at one
// hash, two pointer hops and a binary search over a few entries.
//
// Threads: a map is changed on one thread only (the builder's); copies handed to other threads
// are only read. A part is changed in place only when this map holds the sole reference to it
// (use_count() == 1: no copy, so no reader, can see it); otherwise it is copied first.

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace dsproxy::snapshot {

template <typename K, typename V, typename Hash = std::hash<K>>
class PersistentMap {
 public:
  static constexpr std::size_t kFan = 64;
  using Entry = std::pair<K, V>;
  using Leaf = std::vector<Entry>;

  const V* find(const K& key) const {
    if (!root_) return nullptr;
    const auto [p, l] = slot(key);
    const auto& page = (*root_)[p];
    if (!page) return nullptr;
    const auto& leaf = (*page)[l];
    if (!leaf) return nullptr;
    auto it = lower(*leaf, key);
    return it != leaf->end() && !(key < it->first) ? &it->second : nullptr;
  }
  bool contains(const K& key) const { return find(key) != nullptr; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Inserts or replaces.
  void set(const K& key, V value) {
    Leaf& leaf = mutable_leaf(key);
    auto it = lower(leaf, key);
    if (it != leaf.end() && !(key < it->first)) {
      it->second = std::move(value);
      return;
    }
    leaf.insert(it, Entry{key, std::move(value)});
    ++size_;
  }
  // Returns whether the key was there.
  bool erase(const K& key) {
    if (!find(key)) return false;
    Leaf& leaf = mutable_leaf(key);
    leaf.erase(lower(leaf, key));
    --size_;
    return true;
  }
  // Changes the value in place (copying its path first); the key must be present.
  template <typename F>
  void update(const K& key, F&& change) {
    Leaf& leaf = mutable_leaf(key);
    auto it = lower(leaf, key);
    change(it->second);
  }

  template <typename F>
  void for_each(F&& visit) const {
    if (!root_) return;
    for (const auto& page : *root_)
      if (page)
        for (const auto& leaf : *page)
          if (leaf)
            for (const auto& [k, v] : *leaf) visit(k, v);
  }

  // Calls changed(key, before, after) for every key whose entry differs between `before` and
  // `after` (nullptr on the side it is missing from; present on both with unequal values by `eq`).
  // Parts the two maps share are skipped without being looked at.
  template <typename F, typename Eq = std::equal_to<V>>
  static void diff(const PersistentMap& before, const PersistentMap& after, F&& changed, Eq eq = Eq{}) {
    if (before.root_ == after.root_) return;
    for (std::size_t p = 0; p < kFan; ++p) {
      const auto* bp = before.root_ ? (*before.root_)[p].get() : nullptr;
      const auto* ap = after.root_ ? (*after.root_)[p].get() : nullptr;
      if (bp == ap) continue;
      for (std::size_t l = 0; l < kFan; ++l) {
        const Leaf* bl = bp ? (*bp)[l].get() : nullptr;
        const Leaf* al = ap ? (*ap)[l].get() : nullptr;
        if (bl == al) continue;
        static const Leaf kEmpty;
        const Leaf& b = bl ? *bl : kEmpty;
        const Leaf& a = al ? *al : kEmpty;
        auto bi = b.begin();
        auto ai = a.begin();
        while (bi != b.end() || ai != a.end()) {
          if (ai == a.end() || (bi != b.end() && bi->first < ai->first)) {
            changed(bi->first, &bi->second, static_cast<const V*>(nullptr));
            ++bi;
          } else if (bi == b.end() || ai->first < bi->first) {
            changed(ai->first, static_cast<const V*>(nullptr), &ai->second);
            ++ai;
          } else {
            if (!eq(bi->second, ai->second)) changed(ai->first, &bi->second, &ai->second);
            ++bi;
            ++ai;
          }
        }
      }
    }
  }

 private:
  using Page = std::array<std::shared_ptr<const Leaf>, kFan>;
  using Root = std::array<std::shared_ptr<const Page>, kFan>;

  static std::pair<std::size_t, std::size_t> slot(const K& key) {
    // splitmix64's finaliser: the leaves stay even whatever the quality of Hash.
    std::uint64_t h = static_cast<std::uint64_t>(Hash{}(key));
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return {h % kFan, (h / kFan) % kFan};
  }
  template <typename L>
  static auto lower(L& leaf, const K& key) {
    return std::lower_bound(leaf.begin(), leaf.end(), key, [](const Entry& e, const K& k) { return e.first < k; });
  }
  // Parts made by this map are created non-const, so writing through them after the const_cast
  // is defined; only parts no one else references are written.
  template <typename T>
  static T& own(std::shared_ptr<const T>& part) {
    if (!part) part = std::make_shared<T>();
    else if (part.use_count() != 1) part = std::make_shared<T>(*part);
    return const_cast<T&>(*part);
  }
  Leaf& mutable_leaf(const K& key) {
    const auto [p, l] = slot(key);
    Root& root = own(root_);
    Page& page = own(root[p]);
    return own(page[l]);
  }

  std::shared_ptr<const Root> root_;
  std::size_t size_ = 0;
};

}  // namespace dsproxy::snapshot
