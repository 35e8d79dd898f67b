// glibc compatibility for the statically linked libstdc++ (CMakeLists.txt, binding.gyp).
// Debian 12's libstdc++.a calls arc4random, new in glibc 2.36, from std::random_device, which the
// project never uses but which comes along with std::runtime_error. This private definition
// satisfies that reference, so the addon's glibc floor stays at 2.34 (see README: "Installing").
#if defined(__linux__)
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/random.h>
#include <unistd.h>

extern "C" __attribute__((visibility("hidden"))) uint32_t arc4random(void) {
  uint32_t v = 0;
  ssize_t n;
  do n = getrandom(&v, sizeof v, 0);
  while (n < 0 && errno == EINTR);
  if (n == ssize_t(sizeof v)) return v;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);  // a kernel without getrandom (< 3.17)
  if (fd >= 0) {
    if (read(fd, &v, sizeof v) != ssize_t(sizeof v)) v = 0;
    close(fd);
  }
  return v;
}
#endif
