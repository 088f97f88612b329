#include "net/router.h"

#include <cassert>

namespace megaserve::net {
namespace {

void UpdateAllow(Route& r) {
  r.allow.clear();
  for (std::size_t i = 0; i < kMethodCount; ++i) {
    auto m = static_cast<Method>(i);
    bool has = r.Handles(m) || (m == Method::kHead && r.Handles(Method::kGet));
    if (!has || m == Method::kOther) continue;
    if (!r.allow.empty()) r.allow += ", ";
    r.allow += MethodName(m);
  }
  if (!r.allow.empty()) r.allow += ", OPTIONS";
}

}  // namespace

Route& Router::RouteFor(std::string_view pattern) {
  for (auto& r : routes_) {
    if (r->pattern == pattern) return *r;
  }
  auto route = std::make_unique<Route>();
  route->pattern = std::string(pattern);
  route->id = routes_.size();
  Route* raw = route.get();
  routes_.push_back(std::move(route));

  if (pattern.find('{') == std::string_view::npos) {
    literal_.emplace(std::string(pattern), raw);
    return *raw;
  }
  Pattern p{raw, {}};
  std::string_view rest = pattern.substr(1);  // patterns start with '/'
  while (true) {
    std::size_t slash = rest.find('/');
    std::string_view seg = rest.substr(0, slash);
    Segment pieces;
    while (!seg.empty()) {
      std::size_t open = seg.find('{');
      if (open != 0) {
        pieces.push_back({false, std::string(seg.substr(0, open))});
        if (open == std::string_view::npos) break;
        seg.remove_prefix(open);
      }
      std::size_t close = seg.find('}');
      assert(close != std::string_view::npos && "unbalanced '{' in route pattern");
      pieces.push_back({true, std::string(seg.substr(1, close - 1))});
      seg.remove_prefix(close + 1);
    }
    p.segments.push_back(std::move(pieces));
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  patterns_.push_back(std::move(p));
  return *raw;
}

void Router::Add(Method method, std::string_view pattern, SyncHandler handler) {
  Route& r = RouteFor(pattern);
  r.sync[static_cast<std::size_t>(method)] = std::move(handler);
  r.async[static_cast<std::size_t>(method)] = nullptr;
  r.hybrid[static_cast<std::size_t>(method)] = nullptr;
  UpdateAllow(r);
}

void Router::AddAsync(Method method, std::string_view pattern, AsyncHandler handler) {
  Route& r = RouteFor(pattern);
  r.async[static_cast<std::size_t>(method)] = std::move(handler);
  r.sync[static_cast<std::size_t>(method)] = nullptr;
  r.hybrid[static_cast<std::size_t>(method)] = nullptr;
  UpdateAllow(r);
}

void Router::AddHybrid(Method method, std::string_view pattern, HybridHandler handler) {
  Route& r = RouteFor(pattern);
  r.hybrid[static_cast<std::size_t>(method)] = std::move(handler);
  r.sync[static_cast<std::size_t>(method)] = nullptr;
  r.async[static_cast<std::size_t>(method)] = nullptr;
  UpdateAllow(r);
}

// Matches pieces left to right; a parameter takes the shortest non-empty run of characters that
// lets the next literal match (so "{sha}.{ext}" splits "ab.png" at the first '.').
bool Router::MatchSegment(const Segment& seg, std::string_view text, Request& req) {
  for (std::size_t i = 0; i < seg.size(); ++i) {
    const Piece& p = seg[i];
    if (!p.param) {
      if (text.substr(0, p.text.size()) != p.text) return false;
      text.remove_prefix(p.text.size());
      continue;
    }
    std::size_t end = text.size();
    if (i + 1 < seg.size()) {
      end = text.find(seg[i + 1].text, 1);
      if (end == std::string_view::npos) return false;
    }
    if (end == 0) return false;
    req.AddParam(p.text, text.substr(0, end));
    text.remove_prefix(end);
  }
  return text.empty();
}

Router::Match Router::Find(Request& req) const {
  auto allowed = [&req](const Route* r) {
    return r->Handles(req.method) || (req.method == Method::kHead && r->Handles(Method::kGet));
  };
  if (auto it = literal_.find(req.path); it != literal_.end()) {
    return {it->second, allowed(it->second)};
  }
  if (req.path.empty() || req.path[0] != '/') return {};
  for (const Pattern& p : patterns_) {
    req.ClearParams();
    std::string_view rest = req.path.substr(1);
    bool ok = true;
    for (std::size_t i = 0; i < p.segments.size() && ok; ++i) {
      std::size_t slash = rest.find('/');
      bool last = i + 1 == p.segments.size();
      if (last != (slash == std::string_view::npos)) {
        ok = false;
        break;
      }
      ok = MatchSegment(p.segments[i], rest.substr(0, slash), req);
      if (!last) rest.remove_prefix(slash + 1);
    }
    if (ok) return {p.route, allowed(p.route)};
  }
  req.ClearParams();
  return {};
}

}  // namespace megaserve::net
