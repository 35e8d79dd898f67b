// Errors: every failure is a la::Error with a message that names the problem; the bindings turn
// it into a JS exception (or a rejected Promise), never a crash.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace la {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void fail(const A&... parts) {
  std::ostringstream s;
  (s << ... << parts);
  throw Error(s.str());
}

#define LA_CHECK(cond, ...) \
  do {                      \
    if (!(cond)) ::la::fail(__VA_ARGS__); \
  } while (0)

}  // namespace la
