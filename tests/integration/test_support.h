// Helpers for tests that talk to a real server over real sockets: a blocking raw HTTP client
// (so tests can send malformed, partial or pipelined bytes) and an in-process server fixture.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "api/app.h"
#include "core/config.h"
#include "metrics/registry.h"
#include "net/router.h"
#include "net/server.h"

namespace megaserve::testing {

struct RawResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;

  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? "" : it->second;
  }
};

// A blocking loopback TCP client with a receive timeout, reading HTTP/1.1 responses.
class RawClient {
 public:
  explicit RawClient(unsigned short port,
                     std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    timeval tv{static_cast<time_t>(timeout.count() / 1000),
               static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return connected_; }

  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<std::size_t>(n));
    }
    return true;
  }

  // Reads one response (Content-Length framed; HEAD responses when head is true). nullopt on
  // timeout, connection close before a whole response, or garbage.
  std::optional<RawResponse> Read(bool head = false) {
    std::size_t end;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!Fill()) return std::nullopt;
    }
    RawResponse r;
    std::string head_text = buf_.substr(0, end);
    buf_.erase(0, end + 4);
    std::size_t line_end = head_text.find("\r\n");
    std::string status_line = head_text.substr(0, line_end);
    if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) return std::nullopt;
    r.status = std::stoi(status_line.substr(9, 3));
    std::size_t pos = line_end == std::string::npos ? head_text.size() : line_end + 2;
    while (pos < head_text.size()) {
      std::size_t next = head_text.find("\r\n", pos);
      if (next == std::string::npos) next = head_text.size();
      std::string line = head_text.substr(pos, next - pos);
      std::size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string name = line.substr(0, colon);
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::size_t v = line.find_first_not_of(' ', colon + 1);
        r.headers[name] = v == std::string::npos ? "" : line.substr(v);
      }
      pos = next + 2;
    }
    if (r.status == 100) return r;  // interim response: no body, the final one follows
    std::size_t length = 0;
    if (!head && r.headers.count("content-length"))
      length = std::stoul(r.headers["content-length"]);
    while (buf_.size() < length) {
      if (!Fill()) return std::nullopt;
    }
    r.body = buf_.substr(0, length);
    buf_.erase(0, length);
    return r;
  }

  // Sends a request and reads its response.
  std::optional<RawResponse> Roundtrip(std::string_view request, bool head = false) {
    if (!Send(request)) return std::nullopt;
    return Read(head);
  }

  // Reads one chunk of a chunked body: its data, "" for the last chunk, nullopt on error.
  std::optional<std::string> ReadChunk() {
    std::size_t eol;
    while ((eol = buf_.find("\r\n")) == std::string::npos) {
      if (!Fill()) return std::nullopt;
    }
    std::size_t size = std::stoul(buf_.substr(0, eol), nullptr, 16);
    buf_.erase(0, eol + 2);
    while (buf_.size() < size + 2) {
      if (!Fill()) return std::nullopt;
    }
    std::string data = buf_.substr(0, size);
    buf_.erase(0, size + 2);
    return data;
  }

  // Closes the client's side of the connection.
  void Disconnect() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  // True when the server has closed the connection (read returns 0) within the timeout.
  bool WaitClosed() {
    char c;
    while (true) {
      ssize_t n = ::recv(fd_, &c, 1, 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

 private:
  bool Fill() {
    char tmp[8192];
    ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf_.append(tmp, static_cast<std::size_t>(n));
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

inline std::string Get(std::string_view path, std::string_view extra_headers = "") {
  std::string r = "GET ";
  r += path;
  r += " HTTP/1.1\r\nHost: localhost\r\n";
  r += extra_headers;
  r += "\r\n";
  return r;
}

// A fresh, empty folder for one test's data (its SQLite job store).
inline std::string FreshDataDir() {
  std::string pattern = ::testing::TempDir() + "/megaserve_test_XXXXXX";
  char* dir = mkdtemp(pattern.data());
  return dir ? std::string(dir) : ::testing::TempDir();
}

// Test-friendly defaults: an ephemeral loopback port, two I/O threads, short timeouts, a
// throwaway data folder.
inline core::Config TestConfig() {
  core::Config c;
  c.data_dir = FreshDataDir();
  c.server.listen = "127.0.0.1:0";
  c.server.threads = 2;
  c.server.header_timeout = std::chrono::milliseconds(400);
  c.server.body_timeout = std::chrono::milliseconds(400);
  c.server.idle_timeout = std::chrono::milliseconds(2000);
  c.server.drain_timeout = std::chrono::milliseconds(3000);
  c.log.access = false;
  return c;
}

// The whole `serve` process (api::App) in this test process. Tests may add routes to `router`
// before calling Start().
class TestServer {
 public:
  explicit TestServer(core::Config config = TestConfig()) : config_(std::move(config)) {
    auto app = api::App::Create(config_, registry);
    if (!app.ok()) throw std::runtime_error(app.status().ToString());
    app_ = std::move(*app);
  }
  ~TestServer() { app_->Shutdown(); }

  void Start() {
    auto s = app_->Start();
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }

  unsigned short port() { return app_->server().port(); }
  net::Server& server() { return app_->server(); }
  api::StatusCache& status() { return app_->status(); }
  api::App& app() { return *app_; }
  const core::Config& config() const { return config_; }

  net::Router& router() { return app_->router(); }

  metrics::Registry registry;

 private:
  core::Config config_;
  std::unique_ptr<api::App> app_;
};

// The megaserve binary under test (MEGASERVE_BINARY, set by ctest).
inline std::string Binary() {
  const char* b = std::getenv("MEGASERVE_BINARY");
  return b ? b : "megaserve";
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// A child megaserve process with stdout and stderr going to files.
class Process {
 public:
  Process(std::vector<std::string> args, std::vector<std::string> env = {}) {
    static int counter = 0;
    out_ = ::testing::TempDir() + "/megaserve_" + std::to_string(getpid()) + "_" +
           std::to_string(++counter);
    // Emptied before the child starts: a file left by an earlier test process with the same
    // pid would otherwise be read (its old port) until the child truncates it.
    for (const char* ext : {".out", ".err"}) {
      int fd = open((out_ + ext).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      if (fd >= 0) close(fd);
    }
    pid_ = fork();
    if (pid_ == 0) {
      int o = open((out_ + ".out").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      int e = open((out_ + ".err").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
      dup2(o, 1);
      dup2(e, 2);
      for (auto& kv : env) putenv(kv.data());
      std::vector<char*> argv;
      std::string bin = Binary();
      argv.push_back(bin.data());
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    unlink((out_ + ".out").c_str());
    unlink((out_ + ".err").c_str());
  }

  // Waits for exit; returns the exit code, or -1 on timeout, 128+N for signal N.
  int Wait(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return -1;
  }

  // Waits until stderr says the server is ready and returns its port (0 on failure).
  unsigned short WaitReady(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::regex re("listening on \\S+ \\(port (\\d+)");
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      std::smatch m;
      std::string err = Stderr();
      if (std::regex_search(err, m, re)) return static_cast<unsigned short>(std::stoi(m[1]));
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return 0;
  }

  void Signal(int sig) { kill(pid_, sig); }
  std::string Stdout() const { return ReadFile(out_ + ".out"); }
  std::string Stderr() const { return ReadFile(out_ + ".err"); }

 private:
  pid_t pid_ = -1;
  bool exited_ = false;
  std::string out_;
};

}  // namespace megaserve::testing
