#include "gateway/filter.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <span>

namespace megaserve::gateway {

// A request copied out of the connection's buffers, for background revalidations that outlive
// the client's request.
struct OwnedRequest {
  std::string method_text, target, body, request_id, remote_addr;
  std::vector<std::pair<std::string, std::string>> headers;  // as received
  std::vector<std::pair<std::string, std::string>> params;
  net::Request request;

  explicit OwnedRequest(const net::Request& from)
      : method_text(from.method_text),
        target(from.target),
        body(from.body),
        request_id(from.request_id),
        remote_addr(from.remote_addr) {
    from.ForEachHeader([this](std::string_view name, std::string_view value) {
      headers.emplace_back(std::string(name), std::string(value));
    });
    request.method = from.method;
    request.method_text = method_text;
    request.SetTarget(target);
    request.body = body;
    request.request_id = request_id;
    request.remote_addr = remote_addr;
    request.version = from.version;
    request.SetHeaderSource(this, &Find, &Each);
  }
  // Path parameters are copied after construction (they point into `target`'s copy only when
  // re-matched, so they are kept as owned strings).
  void CopyParams(const net::Request& from, std::span<const std::string> names) {
    for (const std::string& name : names) {
      std::string_view v = from.Param(name);
      if (!v.empty()) params.emplace_back(name, std::string(v));
    }
    for (const auto& [name, value] : params) request.AddParam(name, value);
  }

  static std::string_view Find(const void* self, std::string_view name) {
    for (const auto& [n, v] : static_cast<const OwnedRequest*>(self)->headers) {
      if (net::EqualsIgnoreCase(n, name)) return v;
    }
    return {};
  }
  static void Each(const void* self, net::Request::HeaderVisitor visit, void* fn) {
    for (const auto& [n, v] : static_cast<const OwnedRequest*>(self)->headers) visit(fn, n, v);
  }
};

namespace {

// The parameter names of a route pattern ("/v1/jobs/{id}" -> {"id"}).
std::vector<std::string> ParamNames(std::string_view pattern) {
  std::vector<std::string> names;
  for (std::size_t open = pattern.find('{'); open != std::string_view::npos;
       open = pattern.find('{', open + 1)) {
    std::size_t close = pattern.find('}', open);
    if (close == std::string_view::npos) break;
    names.emplace_back(pattern.substr(open + 1, close - open - 1));
  }
  return names;
}

}  // namespace

Exchange::~Exchange() = default;

const RoutePolicy& Exchange::policy() const { return chain_->policy(); }

void Exchange::Next() {
  ++position_;
  if (position_ < chain_->filters_.size()) {
    chain_->filters_[position_]->OnRequest(*this);
  } else {
    chain_->RunOrigin(*this);
  }
}

void Exchange::Respond(net::Response response) {
  Unwind(response, position_);
  Finish(std::move(response));
}

void Exchange::Unwind(net::Response& response, std::size_t from) {
  // OnResponse for the filters before `from` that passed the request on, last first.
  for (std::size_t i = from; i-- > stop_at_;) {
    position_ = i;
    chain_->filters_[i]->OnResponse(*this, response);
  }
}

void Exchange::Suspend() {
  if (suspended_) return;
  suspended_ = true;
  refs_.fetch_add(1, std::memory_order_relaxed);
  if (!background_) reply_ = defer_->Defer();
}

void Exchange::Finish(net::Response response) {
  if (!background_ && !extra_headers_.empty()) {
    response.headers.reserve(response.headers.size() + extra_headers_.size());
    for (auto& header : extra_headers_) response.headers.push_back(std::move(header));
    extra_headers_.clear();
  }
  if (!background_ && !extra_lines_.empty()) {
    // Appended rather than swapped: the pooled exchange keeps its buffer for the next request.
    response.more_header_lines += extra_lines_;
    extra_lines_.clear();
  }
  answered_ = true;
  if (!suspended_) {
    if (!background_) *out_ = std::move(response);
    return;  // Chain::Handle or SpawnBackground releases the caller's reference
  }
  if (!background_) reply_(std::move(response));
  Release();
}

namespace {

// Finished exchanges kept per thread for reuse: a request then allocates no Exchange.
struct ExchangePool {
  static constexpr std::size_t kMax = 256;
  std::vector<Exchange*> free;
  ~ExchangePool();
};

}  // namespace

// Defined here, where Exchange's destructor is reachable through the friend below.
struct ExchangeRecycler {
  static Exchange* Get();
  static void Put(Exchange* ex);
  static void Destroy(Exchange* ex) { delete ex; }
};

namespace {

thread_local ExchangePool pool;

ExchangePool::~ExchangePool() {
  for (Exchange* ex : free) ExchangeRecycler::Destroy(ex);
}

}  // namespace

Exchange* ExchangeRecycler::Get() {
  if (pool.free.empty()) return new Exchange();
  Exchange* ex = pool.free.back();
  pool.free.pop_back();
  return ex;
}

void ExchangeRecycler::Put(Exchange* ex) {
  if (pool.free.size() >= ExchangePool::kMax) return Destroy(ex);
  ex->Reset();
  pool.free.push_back(ex);
}

void Exchange::Reset() {
  chain_ = nullptr;
  request_ = nullptr;
  owned_.reset();
  identity_.key_id.clear();
  identity_.key_name.clear();
  identity_.scopes = 0;
  identity_.quota = 0;
  extra_headers_.clear();
  extra_lines_.clear();
  for (auto& s : states_) s.reset();
  position_ = 0;
  stop_at_ = 0;
  out_ = nullptr;
  defer_ = nullptr;
  reply_ = nullptr;
  refs_.store(1, std::memory_order_relaxed);
  background_ = false;
  answered_ = false;
  suspended_ = false;
}

void Exchange::Release() {
  if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) ExchangeRecycler::Put(this);
}

void Exchange::SpawnBackground(std::shared_ptr<void> state) {
  auto* copy = ExchangeRecycler::Get();
  copy->chain_ = chain_;
  copy->owned_ = std::make_unique<OwnedRequest>(*request_);
  copy->owned_->CopyParams(*request_, ParamNames(chain_->policy_.pattern));
  copy->request_ = &copy->owned_->request;
  copy->identity_ = identity_;
  copy->states_[position_] = std::move(state);
  copy->position_ = position_;
  copy->stop_at_ = position_;
  copy->background_ = true;
  copy->Next();
  copy->Release();
}

Chain::Chain(RoutePolicy policy, std::vector<Filter*> filters, net::SyncHandler sync,
             net::AsyncHandler async)
    : policy_(std::move(policy)),
      filters_(std::move(filters)),
      sync_(std::move(sync)),
      async_(std::move(async)) {
  if (filters_.size() > kMaxFilters) {
    spdlog::error("gateway: route {} has {} filters; only the first {} run", policy_.pattern,
                  filters_.size(), kMaxFilters);
    filters_.resize(kMaxFilters);
  }
}

bool Chain::Handle(const net::Request& request, net::Response& out, net::Deferrer& defer) {
  auto* ex = ExchangeRecycler::Get();
  ex->chain_ = this;
  ex->request_ = &request;
  ex->out_ = &out;
  ex->defer_ = &defer;
  ex->position_ = 0;
  if (filters_.empty()) {
    RunOrigin(*ex);
  } else {
    filters_[0]->OnRequest(*ex);
  }
  bool suspended = ex->suspended_;
  if (!suspended && !ex->answered_) {
    spdlog::error("gateway: a filter on {} neither answered nor suspended the request",
                  policy_.pattern);
    out = net::ErrorResponse(500, "internal_error", "the gateway lost this request");
  }
  ex->defer_ = nullptr;
  ex->Release();
  return !suspended;
}

void Chain::RunOrigin(Exchange& ex) {
  ex.position_ = filters_.size();
  if (sync_) {
    ex.Respond(sync_(ex.request()));
    return;
  }
  if (!async_) {
    ex.Respond(net::ErrorResponse(502, "no_origin",
                                  "route " + policy_.pattern + " has no handler or upstream"));
    return;
  }
  ex.Suspend();
  // If the handler drops its Reply without calling it, the exchange still ends (with a 503), so
  // filters waiting on it (collapsed cache followers) are answered and nothing leaks.
  struct Pending {
    Exchange* ex = nullptr;
    bool answered = false;
    ~Pending() {
      if (ex != nullptr && !answered) {
        ex->Respond(net::ErrorResponse(503, "handler_gone",
                                       "the request's handler ended without answering"));
      }
    }
  };
  auto pending = std::make_shared<Pending>();
  pending->ex = &ex;
  async_(ex.request(), [pending](net::Response r) {
    pending->answered = true;
    pending->ex->Respond(std::move(r));
  });
}

}  // namespace megaserve::gateway
