#include "identity/identity_error.hpp"

#include <openssl/err.h>

namespace dsproxy::identity {

std::string openssl_errors() {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    // Only the reason string: ERR_error_string's "error:...:lib:func:reason" adds nothing a
    // reader of our log can act on.
    const char* reason = ERR_reason_error_string(e);
    if (!out.empty()) out += "; ";
    out += reason ? reason : "unknown OpenSSL error";
  }
  return out;
}

}  // namespace dsproxy::identity
