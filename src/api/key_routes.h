// The API-key admin API:
//   POST   /v1/admin/keys       {"name", "scopes": [...], "quota"} -> 201 the key with "key", the
//                               token, which no later response shows again
//   GET    /v1/admin/keys       -> {"object": "list", "data": [keys]}
//   GET    /v1/admin/keys/{id}  -> the key (404 key_not_found)
//   DELETE /v1/admin/keys/{id}  -> 200 the revoked key (404 key_not_found)
// Keys are shown without secrets or hashes (gateway::ApiKey::ToJson). The routes do not check
// who calls them: the gateway's auth filter guards them with scope "admin".
//
// Store calls block, so every handler runs on the blocking pool; a full pool answers 503.
#pragma once

#include "core/blocking_pool.h"
#include "gateway/api_keys.h"
#include "net/router.h"

namespace megaserve::api {

struct KeysContext {
  gateway::ApiKeyStore* store = nullptr;
  core::BlockingPool* pool = nullptr;
};

// Largest accepted key quota (requests per minute).
inline constexpr std::int64_t kMaxKeyQuota = 1'000'000'000;

// Registers the admin key routes. The context's pointers must outlive the router.
void RegisterKeyRoutes(net::Router& router, const KeysContext& context);

}  // namespace megaserve::api
