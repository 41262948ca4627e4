#include "resolver/dns_message.hpp"

#include <algorithm>
#include <cstring>
#include <map>

namespace dsproxy::resolver {

std::string_view to_string(Rcode r) {
  switch (r) {
    case Rcode::NoError: return "NOERROR";
    case Rcode::FormErr: return "FORMERR";
    case Rcode::ServFail: return "SERVFAIL";
    case Rcode::NxDomain: return "NXDOMAIN";
    case Rcode::NotImp: return "NOTIMP";
    case Rcode::Refused: return "REFUSED";
  }
  return "RCODE?";
}

std::string ascii_lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return out;
}

bool in_zone(std::string_view name_key, std::string_view zone_key) {
  if (zone_key.empty()) return true;
  if (name_key.size() == zone_key.size()) return name_key == zone_key;
  if (name_key.size() < zone_key.size() + 1) return false;
  // A label boundary must precede the zone: "xcluster.local" is not in "cluster.local". An
  // escaped dot ("\.") in the name is not a boundary.
  const std::size_t at = name_key.size() - zone_key.size();
  if (name_key.substr(at) != zone_key || name_key[at - 1] != '.') return false;
  std::size_t backslashes = 0;
  for (std::size_t i = at - 1; i > 0 && name_key[i - 1] == '\\'; --i) ++backslashes;
  return backslashes % 2 == 0;
}

namespace {

void append_label_text(std::string& out, const std::string& label) {
  for (unsigned char c : label) {
    if (c == '.' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c <= 0x20 || c >= 0x7f) {
      char buf[5];
      buf[0] = '\\';
      buf[1] = static_cast<char>('0' + c / 100);
      buf[2] = static_cast<char>('0' + (c / 10) % 10);
      buf[3] = static_cast<char>('0' + c % 10);
      buf[4] = 0;
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
}

std::uint16_t get16(ByteView w, std::size_t at) {
  return static_cast<std::uint16_t>((w[at] << 8) | w[at + 1]);
}
std::uint32_t get32(ByteView w, std::size_t at) {
  return (std::uint32_t{w[at]} << 24) | (std::uint32_t{w[at + 1]} << 16) | (std::uint32_t{w[at + 2]} << 8) |
         std::uint32_t{w[at + 3]};
}
void put16(Bytes& b, std::uint16_t v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}
void put32(Bytes& b, std::uint32_t v) {
  put16(b, static_cast<std::uint16_t>(v >> 16));
  put16(b, static_cast<std::uint16_t>(v));
}
void set16(Bytes& b, std::size_t at, std::uint16_t v) {
  b[at] = static_cast<std::uint8_t>(v >> 8);
  b[at + 1] = static_cast<std::uint8_t>(v);
}

// Reads a possibly compressed name starting at `pos`. On success `pos` is moved past the name
// as it appears at that place (a pointer counts two octets). Compression pointers must point
// strictly before the octet that holds them, so following them always goes backwards and ends.
struct NameReader {
  ByteView wire;
  bool allow_compression = true;
  std::string error;

  std::optional<Name> read(std::size_t& pos) {
    Name name;
    std::size_t at = pos;
    std::size_t total = 1;  // the root label
    bool jumped = false;
    int pointers = 0;
    std::size_t min_target = at;  // every pointer must land before this
    for (;;) {
      if (at >= wire.size()) return fail("name runs past the end of the message");
      const std::uint8_t len = wire[at];
      if ((len & 0xc0) == 0xc0) {
        if (!allow_compression) return fail("compression pointer where none may be");
        if (at + 1 >= wire.size()) return fail("truncated compression pointer");
        const std::size_t target = static_cast<std::size_t>(((len & 0x3f) << 8) | wire[at + 1]);
        if (target >= min_target) return fail("compression pointer does not point backwards");
        if (++pointers > 64) return fail("too many compression pointers");
        if (!jumped) pos = at + 2;
        jumped = true;
        at = target;
        min_target = target;
        continue;
      }
      if ((len & 0xc0) != 0) return fail("reserved label type");
      if (len == 0) {
        if (!jumped) pos = at + 1;
        return name;
      }
      if (at + 1 + len > wire.size()) return fail("label runs past the end of the message");
      total += 1 + len;
      if (total > kMaxNameLength) return fail("name longer than 255 octets");
      name.labels.emplace_back(reinterpret_cast<const char*>(wire.data() + at + 1), len);
      at += 1 + len;
    }
  }

  std::optional<Name> fail(const char* why) {
    error = why;
    return std::nullopt;
  }
};

// Writes messages with name compression against every name already written.
class Writer {
 public:
  explicit Writer(Bytes& out) : out_(out) {}

  // Registers the (uncompressed) name that starts at `offset` of the output, e.g. the question
  // copied from the query, so later names can point into it.
  void remember(const Name& name, std::size_t offset) {
    std::size_t at = offset;
    for (std::size_t i = 0; i < name.labels.size(); ++i) {
      if (at <= 0x3fff) offsets_.emplace(suffix_key(name, i), at);
      at += 1 + name.labels[i].size();
    }
  }

  void name(const Name& name) {
    for (std::size_t i = 0; i < name.labels.size(); ++i) {
      const std::string key = suffix_key(name, i);
      if (auto it = offsets_.find(key); it != offsets_.end()) {
        put16(out_, static_cast<std::uint16_t>(0xc000 | it->second));
        return;
      }
      if (out_.size() <= 0x3fff) offsets_.emplace(key, out_.size());
      const auto& label = name.labels[i];
      out_.push_back(static_cast<std::uint8_t>(label.size()));
      out_.insert(out_.end(), label.begin(), label.end());
    }
    out_.push_back(0);
  }

  void record(const Record& r) {
    name(r.name);
    put16(out_, r.type);
    put16(out_, kClassIN);
    put32(out_, r.ttl);
    const std::size_t length_at = out_.size();
    put16(out_, 0);
    if (const auto* ip = std::get_if<net::IpAddress>(&r.data)) {
      const auto& b = ip->bytes();
      out_.insert(out_.end(), b.begin(), b.begin() + (ip->is_v4() ? 4 : 16));
    } else if (const auto* target = std::get_if<Name>(&r.data)) {
      name(*target);
    } else if (const auto* soa = std::get_if<SoaData>(&r.data)) {
      name(soa->mname);
      name(soa->rname);
      put32(out_, soa->serial);
      put32(out_, soa->refresh);
      put32(out_, soa->retry);
      put32(out_, soa->expire);
      put32(out_, soa->minimum);
    }
    set16(out_, length_at, static_cast<std::uint16_t>(out_.size() - length_at - 2));
  }

 private:
  static std::string suffix_key(const Name& name, std::size_t from) {
    Name suffix;
    suffix.labels.assign(name.labels.begin() + static_cast<std::ptrdiff_t>(from), name.labels.end());
    return suffix.key();
  }

  Bytes& out_;
  std::map<std::string, std::size_t> offsets_;
};

void put_opt(Bytes& out) {
  out.push_back(0);  // root owner
  put16(out, rrtype::OPT);
  put16(out, kEdnsUdpSize);
  put32(out, 0);  // extended rcode 0, version 0, no DO
  put16(out, 0);  // no options
}

std::uint16_t response_flags(std::uint16_t query_flags, Rcode rcode, bool authoritative) {
  std::uint16_t flags = 0x8000;                // QR
  flags |= query_flags & 0x7800;               // opcode
  if (authoritative) flags |= 0x0400;          // AA
  flags |= query_flags & 0x0100;               // RD
  flags |= 0x0080;                             // RA: we recurse (forward) for clients
  flags |= query_flags & 0x0010;               // CD
  flags |= static_cast<std::uint16_t>(rcode);  // rcode
  return flags;
}

// Header + question (+ OPT) with TC set: the "retry over TCP" answer.
Bytes truncated(ByteView raw, const Query& query, std::uint16_t flags) {
  if (raw.size() < kHeaderSize) return {};
  const bool with_question = query.question_end > kHeaderSize && query.question_end <= raw.size();
  Bytes out(raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(with_question ? query.question_end : kHeaderSize));
  set16(out, 2, static_cast<std::uint16_t>(flags | 0x0200));
  set16(out, 4, with_question ? 1 : 0);
  set16(out, 6, 0);
  set16(out, 8, 0);
  set16(out, 10, query.edns ? 1 : 0);
  if (query.edns) put_opt(out);
  return out;
}

}  // namespace

std::string Name::to_text() const {
  std::string out;
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (i) out += '.';
    append_label_text(out, labels[i]);
  }
  return out;
}

std::string Name::key() const { return ascii_lower(to_text()); }

std::optional<Name> Name::from_text(std::string_view text) {
  if (!text.empty() && text.back() == '.') text.remove_suffix(1);
  Name name;
  if (text.empty()) return name;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = text.find('.', start);
    const std::string_view label = text.substr(start, dot == std::string_view::npos ? dot : dot - start);
    if (label.empty() || label.size() > kMaxLabelLength) return std::nullopt;
    name.labels.emplace_back(label);
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  if (name.wire_length() > kMaxNameLength) return std::nullopt;
  return name;
}

std::size_t Name::wire_length() const {
  std::size_t n = 1;
  for (const auto& l : labels) n += 1 + l.size();
  return n;
}

std::optional<Header> read_header(ByteView w) {
  if (w.size() < kHeaderSize) return std::nullopt;
  return Header{get16(w, 0), get16(w, 2), get16(w, 4), get16(w, 6), get16(w, 8), get16(w, 10)};
}

ParsedQuery parse_query(ByteView wire) {
  ParsedQuery out;
  auto header = read_header(wire);
  if (!header) {
    out.error = "shorter than a DNS header";
    return out;
  }
  out.query.header = *header;
  if (header->qr()) {
    out.error = "a response, not a query";
    return out;
  }
  auto fail = [&](QueryStatus status, std::string why) {
    out.status = status;
    out.error = std::move(why);
    return out;
  };
  if (header->opcode() != 0) return fail(QueryStatus::notimp, "opcode " + std::to_string(header->opcode()));
  if (header->qdcount != 1) return fail(QueryStatus::formerr, "qdcount " + std::to_string(header->qdcount));
  if (header->ancount != 0 || header->nscount != 0) return fail(QueryStatus::formerr, "records in a query");

  std::size_t pos = kHeaderSize;
  NameReader reader{wire, /*allow_compression=*/false, {}};
  auto name = reader.read(pos);
  if (!name) return fail(QueryStatus::formerr, "question: " + reader.error);
  if (pos + 4 > wire.size()) return fail(QueryStatus::formerr, "question: truncated type/class");
  out.query.question = Question{std::move(*name), get16(wire, pos), get16(wire, pos + 2)};
  pos += 4;
  out.query.question_end = pos;

  // Additional section: only OPT matters; others (TSIG, cookies' carriers...) are skipped.
  reader.allow_compression = true;
  for (std::uint16_t i = 0; i < header->arcount; ++i) {
    auto owner = reader.read(pos);
    if (!owner) return fail(QueryStatus::formerr, "additional record: " + reader.error);
    if (pos + 10 > wire.size()) return fail(QueryStatus::formerr, "additional record: truncated");
    const std::uint16_t type = get16(wire, pos);
    const std::uint16_t klass = get16(wire, pos + 2);
    const std::uint32_t ttl = get32(wire, pos + 4);
    const std::uint16_t rdlength = get16(wire, pos + 8);
    pos += 10;
    if (pos + rdlength > wire.size()) return fail(QueryStatus::formerr, "additional record: rdata past the end");
    if (type == rrtype::OPT) {
      if (out.query.edns) return fail(QueryStatus::formerr, "more than one OPT record");
      if (!owner->labels.empty()) return fail(QueryStatus::formerr, "OPT record not owned by the root");
      out.query.edns = true;
      out.query.udp_size = std::max<std::uint16_t>(klass, kClassicUdpSize);
      out.query.edns_version = static_cast<std::uint8_t>(ttl >> 16);
      out.query.dnssec_ok = (ttl & 0x8000) != 0;
    }
    pos += rdlength;
  }
  out.status = QueryStatus::ok;
  return out;
}

Bytes build_response(const Query& query, ByteView raw, const ResponseSpec& spec, std::size_t max_size) {
  if (query.question_end < kHeaderSize || query.question_end > raw.size()) return build_error(raw, Rcode::ServFail);
  Bytes out;
  out.reserve(512);
  out.resize(kHeaderSize);
  const std::uint16_t flags = response_flags(query.header.flags, spec.rcode, spec.authoritative);
  set16(out, 0, query.header.id);
  set16(out, 2, flags);
  set16(out, 4, 1);
  set16(out, 6, static_cast<std::uint16_t>(spec.answers.size()));
  set16(out, 8, static_cast<std::uint16_t>(spec.authority.size()));
  set16(out, 10, query.edns ? 1 : 0);
  out.insert(out.end(), raw.begin() + kHeaderSize, raw.begin() + static_cast<std::ptrdiff_t>(query.question_end));
  Writer writer(out);
  writer.remember(query.question.name, kHeaderSize);
  for (const auto& r : spec.answers) writer.record(r);
  for (const auto& r : spec.authority) writer.record(r);
  if (query.edns) put_opt(out);
  if (out.size() > max_size) return truncated(raw, query, flags);
  return out;
}

Bytes build_error(ByteView raw, Rcode rcode, std::size_t question_end) {
  auto header = read_header(raw);
  if (!header) return {};
  const bool with_question = question_end > kHeaderSize && question_end <= raw.size();
  Bytes out(raw.begin(), raw.begin() + static_cast<std::ptrdiff_t>(with_question ? question_end : kHeaderSize));
  // Opcode kept (NOTIMP names the one we do not do); AA, TC, RA off; RD copied.
  const std::uint16_t flags =
      static_cast<std::uint16_t>(0x8000 | (header->flags & 0x7900) | 0x0080 | static_cast<std::uint16_t>(rcode));
  set16(out, 2, flags);
  set16(out, 4, with_question ? 1 : 0);
  set16(out, 6, 0);
  set16(out, 8, 0);
  set16(out, 10, 0);
  return out;
}

ParsedMessage parse_message(ByteView wire) {
  ParsedMessage out;
  auto header = read_header(wire);
  if (!header) {
    out.error = "shorter than a DNS header";
    return out;
  }
  MessageInfo info;
  info.header = *header;
  NameReader reader{wire, true, {}};
  std::size_t pos = kHeaderSize;
  for (std::uint16_t i = 0; i < header->qdcount; ++i) {
    auto name = reader.read(pos);
    if (!name) {
      out.error = "question: " + reader.error;
      return out;
    }
    if (pos + 4 > wire.size()) {
      out.error = "question: truncated type/class";
      return out;
    }
    if (i == 0) info.question = Question{std::move(*name), get16(wire, pos), get16(wire, pos + 2)};
    pos += 4;
  }
  info.question_end = pos;
  const std::uint32_t sections[3] = {header->ancount, header->nscount, header->arcount};
  for (int section = 0; section < 3; ++section) {
    for (std::uint32_t i = 0; i < sections[section]; ++i) {
      auto owner = reader.read(pos);
      if (!owner) {
        out.error = "record: " + reader.error;
        return out;
      }
      if (pos + 10 > wire.size()) {
        out.error = "record: truncated";
        return out;
      }
      const std::uint16_t type = get16(wire, pos);
      const std::uint16_t klass = get16(wire, pos + 2);
      const std::uint32_t ttl = get32(wire, pos + 4);
      const std::uint16_t rdlength = get16(wire, pos + 8);
      const std::size_t rdata = pos + 10;
      if (rdata + rdlength > wire.size()) {
        out.error = "record: rdata past the end";
        return out;
      }
      if (type != rrtype::OPT) info.ttl_offsets.push_back(pos + 4);
      if (section == 0) info.answer_types.push_back(type);
      if (section == 1) info.authority_types.push_back(type);
      if (section == 0 && type == rrtype::CNAME) {
        std::size_t at = rdata;
        auto target = reader.read(at);
        if (!target || at != rdata + rdlength) {
          out.error = "CNAME record: malformed rdata";
          return out;
        }
        info.cnames.push_back(std::move(*target));
      }
      if (section == 0 && type != rrtype::OPT) {
        info.min_answer_ttl = std::min(info.min_answer_ttl.value_or(ttl), ttl);
        if (klass == kClassIN && type == rrtype::A && rdlength == 4)
          info.addresses.push_back(net::IpAddress::v4({wire[rdata], wire[rdata + 1], wire[rdata + 2], wire[rdata + 3]}));
        if (klass == kClassIN && type == rrtype::AAAA && rdlength == 16) {
          std::array<std::uint8_t, 16> b;
          std::memcpy(b.data(), wire.data() + rdata, 16);
          info.addresses.push_back(net::IpAddress::v6(b));
        }
      }
      if (section == 1 && type == rrtype::SOA) {
        // mname, rname, then five 32-bit values; MINIMUM is the last.
        std::size_t at = rdata;
        if (!reader.read(at) || !reader.read(at) || at + 20 != rdata + rdlength) {
          out.error = "SOA record: malformed rdata";
          return out;
        }
        const std::uint32_t minimum = get32(wire, at + 16);
        info.negative_ttl = std::min(ttl, minimum);
      }
      pos = rdata + rdlength;
    }
  }
  out.info = std::move(info);
  return out;
}

Bytes adapt_response(ByteView response, const MessageInfo& info, ByteView query_raw, const Query& query,
                     std::uint32_t age_s, std::size_t max_size) {
  Bytes out(response.begin(), response.end());
  if (out.size() < kHeaderSize) return out;
  set16(out, 0, query.header.id);
  if (info.question_end == query.question_end && info.question_end > kHeaderSize &&
      info.question_end <= out.size() && query.question_end <= query_raw.size())
    std::copy(query_raw.begin() + kHeaderSize, query_raw.begin() + static_cast<std::ptrdiff_t>(query.question_end),
              out.begin() + kHeaderSize);
  if (age_s > 0) {
    for (std::size_t at : info.ttl_offsets) {
      if (at + 4 > out.size()) continue;
      const std::uint32_t ttl = get32(out, at);
      const std::uint32_t aged = ttl > age_s ? ttl - age_s : 0;
      out[at] = static_cast<std::uint8_t>(aged >> 24);
      out[at + 1] = static_cast<std::uint8_t>(aged >> 16);
      out[at + 2] = static_cast<std::uint8_t>(aged >> 8);
      out[at + 3] = static_cast<std::uint8_t>(aged);
    }
  }
  if (out.size() > max_size) return truncated(query_raw, query, get16(out, 2));
  return out;
}

Bytes build_query(std::uint16_t id, const Name& name, std::uint16_t type, bool edns) {
  Bytes out;
  put16(out, id);
  put16(out, 0x0100);
  put16(out, 1);
  put16(out, 0);
  put16(out, 0);
  put16(out, edns ? 1 : 0);
  for (const auto& l : name.labels) {
    out.push_back(static_cast<std::uint8_t>(l.size()));
    out.insert(out.end(), l.begin(), l.end());
  }
  out.push_back(0);
  put16(out, type);
  put16(out, kClassIN);
  if (edns) put_opt(out);
  return out;
}

}  // namespace dsproxy::resolver
