// Maps (method, path) to a handler.
//
// Patterns are '/'-separated segments; a segment may hold parameters in braces, alone or mixed
// with literal text: "/v1/jobs/{id}/events", "/v1/artifacts/{sha256}.{ext}". A parameter matches
// one or more characters up to the next literal text of its segment (or the segment's end) and
// never spans a '/'. Patterns without parameters are found with one hash lookup; the others are
// tried in registration order, literal patterns first.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "net/http.h"

namespace megaserve::net {

// One registered pattern with its handlers per method.
struct Route {
  std::string pattern;  // also the "route" label of metrics
  std::size_t id = 0;   // dense index, 0..route_count-1
  std::array<SyncHandler, kMethodCount> sync{};
  std::array<AsyncHandler, kMethodCount> async{};
  std::array<HybridHandler, kMethodCount> hybrid{};
  std::string allow;  // "GET, HEAD, POST": the Allow header for 405 and OPTIONS

  bool Handles(Method m) const {
    auto i = static_cast<std::size_t>(m);
    return sync[i] != nullptr || async[i] != nullptr || hybrid[i] != nullptr;
  }
};

class Router {
 public:
  Router() = default;
  Router(const Router&) = delete;  // No copying allowed: routes are referenced by pointer.
  Router& operator=(const Router&) = delete;

  // Registers a handler; a GET handler also answers HEAD (the body is dropped on the way out).
  // Registering the same method and pattern twice replaces the earlier handler.
  void Add(Method method, std::string_view pattern, SyncHandler handler);
  void AddAsync(Method method, std::string_view pattern, AsyncHandler handler);
  // Replaces whatever handler the method had (the gateway wraps routes in filter chains).
  void AddHybrid(Method method, std::string_view pattern, HybridHandler handler);

  struct Match {
    const Route* route = nullptr;  // null: no pattern matches the path (404)
    bool method_allowed = false;   // false with a route: 405, answer with route->allow
  };
  // Finds the route for req.path, filling req's path parameters. Does not allocate.
  Match Find(Request& req) const;

  // Every registered route, in registration order.
  const std::vector<std::unique_ptr<Route>>& routes() const { return routes_; }

 private:
  struct Piece {
    bool param;
    std::string text;  // literal text, or the parameter's name
  };
  using Segment = std::vector<Piece>;
  struct Pattern {
    Route* route;
    std::vector<Segment> segments;
  };

  Route& RouteFor(std::string_view pattern);
  static bool MatchSegment(const Segment& seg, std::string_view text, Request& req);

  struct Hash {
    using is_transparent = void;
    std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::vector<std::unique_ptr<Route>> routes_;
  std::unordered_map<std::string, Route*, Hash, std::equal_to<>> literal_;
  std::vector<Pattern> patterns_;
};

}  // namespace megaserve::net
