// A server with Envoy's event pattern, for netdrift's handler tests:
// class Envoy::Event::FileEventImpl whose assignEvents() registers a lambda
// with libevent; TCP on loopback; one dispatcher thread.
//   envoy_like PORT   -> prints "ready PORT" once listening
#include <arpa/inet.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>

namespace Envoy {
namespace Event {

enum FileReadyType : uint32_t { Read = 0x1, Write = 0x2, Closed = 0x4 };

class FileEventImpl {
public:
  using Cb = std::function<void(uint32_t)>;
  FileEventImpl(event_base* base, int fd, Cb cb, uint32_t events, bool edge)
      : fd_(fd), cb_(std::move(cb)), edge_(edge) {
    assignEvents(events, base);
    event_add(&raw_event_, nullptr);
  }
  ~FileEventImpl() { event_del(&raw_event_); }

  __attribute__((noinline)) void assignEvents(uint32_t events, event_base* base) {
    short what = EV_PERSIST | (edge_ ? EV_ET : 0) | ((events & Read) ? EV_READ : 0) |
                 ((events & Write) ? EV_WRITE : 0) | ((events & Closed) ? EV_CLOSED : 0);
    event_assign(
        &raw_event_, base, fd_, what,
        [](evutil_socket_t, short what, void* arg) -> void {
          auto* event = static_cast<FileEventImpl*>(arg);
          uint32_t events = 0;
          if (what & EV_READ) events |= Read;
          if (what & EV_WRITE) events |= Write;
          if (what & EV_CLOSED) events |= Closed;
          event->cb_(events);
        },
        this);
  }

private:
  int fd_;
  Cb cb_;
  bool edge_;
  struct event raw_event_;
};

} // namespace Event
} // namespace Envoy

static event_base* base;
static std::unordered_map<int, std::unique_ptr<Envoy::Event::FileEventImpl>> conns;

static void on_conn(int fd) {
  char buf[4096];
  std::string req;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n > 0) { req.append(buf, n); continue; }
    if (n < 0 && errno == EAGAIN && req.find("\r\n\r\n") == std::string::npos) return;
    break;
  }
  if (req.find("\r\n\r\n") != std::string::npos) {
    static const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
    (void)!write(fd, resp, sizeof resp - 1);
  }
  conns.erase(fd);
  close(fd);
}

int main(int argc, char** argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (sockaddr*)&a, sizeof a) || listen(lfd, 128)) { perror("bind/listen"); return 1; }
  socklen_t len = sizeof a;
  getsockname(lfd, (sockaddr*)&a, &len);
  base = event_base_new();
  Envoy::Event::FileEventImpl listener(
      base, lfd,
      [lfd](uint32_t) {
        int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        conns[fd] = std::make_unique<Envoy::Event::FileEventImpl>(
            base, fd, [fd](uint32_t) { on_conn(fd); }, Envoy::Event::Read, true);
      },
      Envoy::Event::Read, false);
  printf("ready %d\n", ntohs(a.sin_port));
  fflush(stdout);
  event_base_dispatch(base);
  return 0;
}
