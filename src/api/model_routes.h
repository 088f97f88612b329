// The model repository API: GET /v1/models, GET /v1/models/{name}, POST /v1/models/{name}/load
// and POST /v1/models/{name}/unload.
//
// Loading reads files and runs backends, and unloading waits for requests in flight, so every
// handler runs on the blocking pool; a full pool answers 503 with Retry-After.
#pragma once

#include <string>

#include "core/blocking_pool.h"
#include "models/repository.h"
#include "net/router.h"

namespace megaserve::api {

struct ModelsContext {
  models::Repository* repository = nullptr;
  core::BlockingPool* pool = nullptr;
};

// Registers the model routes. The context's pointers must outlive the router.
void RegisterModelRoutes(net::Router& router, const ModelsContext& context);

// The model as its JSON API object: name, version, status, memory_bytes, last_error, reloading
// and config.
std::string ModelJson(const models::ModelInfo& info);

}  // namespace megaserve::api
