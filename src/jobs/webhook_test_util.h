// Test helper: a webhook receiver, a real HTTP/1.1 server on 127.0.0.1 with an ephemeral port
// that records every request and answers with a status the test chooses. One thread accepts,
// one thread serves each connection (keep-alive honoured) with Beast's blocking calls.
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace megaserve::jobs::testing {

class WebhookReceiver {
 public:
  // One request as received.
  struct Request {
    std::string method;
    std::string target;
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;

    std::string Header(const std::string& lower_name) const {
      auto it = headers.find(lower_name);
      return it == headers.end() ? "" : it->second;
    }
  };
  // The status to answer the `index`-th request (from 0) with.
  using Responder = std::function<int(const Request& request, int index)>;

  explicit WebhookReceiver(Responder respond = [](const Request&, int) { return 200; })
      : respond_(std::move(respond)),
        acceptor_(ioc_, tcp::endpoint(boost::asio::ip::address_v4::loopback(), 0)) {
    port_ = acceptor_.local_endpoint().port();
    accept_thread_ = std::thread([this] { AcceptLoop(); });
  }

  ~WebhookReceiver() {
    stopping_ = true;
    {
      tcp::socket wake(ioc_);
      boost::system::error_code ignored;
      wake.connect(tcp::endpoint(boost::asio::ip::address_v4::loopback(), port_), ignored);
    }
    accept_thread_.join();
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& socket : sockets_) ::shutdown(socket->native_handle(), SHUT_RDWR);
      threads.swap(threads_);
    }
    for (auto& thread : threads) thread.join();
  }

  WebhookReceiver(const WebhookReceiver&) = delete;
  WebhookReceiver& operator=(const WebhookReceiver&) = delete;

  // http://127.0.0.1:PORT<path>
  std::string Url(const std::string& path = "/hook") const {
    return "http://127.0.0.1:" + std::to_string(port_) + path;
  }

  // Connections accepted so far.
  int connections() const { return connections_.load(); }

  // The requests received so far, in order.
  std::vector<Request> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

  // Waits until at least `n` requests arrived or `timeout` passed; true in the first case.
  bool WaitFor(std::size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return requests_.size() >= n; });
  }

 private:
  using tcp = boost::asio::ip::tcp;

  void AcceptLoop() {
    for (;;) {
      auto socket = std::make_unique<tcp::socket>(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(*socket, ec);
      if (stopping_ || ec) return;
      ++connections_;
      tcp::socket* raw = socket.get();
      std::lock_guard<std::mutex> lock(mu_);
      sockets_.push_back(std::move(socket));
      threads_.emplace_back([this, raw] { Serve(*raw); });
    }
  }

  void Serve(tcp::socket& socket) {
    namespace http = boost::beast::http;
    boost::beast::flat_buffer buffer;
    for (;;) {
      http::request<http::string_body> req;
      boost::system::error_code ec;
      http::read(socket, buffer, req, ec);
      if (ec) break;
      Request got;
      got.method = std::string(req.method_string());
      got.target = std::string(req.target());
      for (const auto& field : req) {
        std::string name(field.name_string());
        for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        got.headers[name] = std::string(field.value());
      }
      got.body = req.body();
      int index;
      {
        std::lock_guard<std::mutex> lock(mu_);
        index = static_cast<int>(requests_.size());
      }
      const int status = respond_(got, index);
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(std::move(got));
      }
      cv_.notify_all();
      http::response<http::string_body> res{static_cast<http::status>(status), req.version()};
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      http::write(socket, res, ec);
      if (ec || !res.keep_alive()) break;
    }
    ::shutdown(socket.native_handle(), SHUT_RDWR);
  }

  Responder respond_;
  boost::asio::io_context ioc_;
  tcp::acceptor acceptor_;
  unsigned short port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> connections_{0};
  std::thread accept_thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Request> requests_;                      // guarded by mu_
  std::vector<std::unique_ptr<tcp::socket>> sockets_;  // guarded by mu_
  std::vector<std::thread> threads_;                   // guarded by mu_
};

}  // namespace megaserve::jobs::testing
