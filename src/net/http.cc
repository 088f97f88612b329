#include "net/http.h"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cctype>

namespace megaserve::net {

Method ParseMethod(std::string_view t) {
  switch (t.size()) {
    case 3:
      if (t == "GET") return Method::kGet;
      if (t == "PUT") return Method::kPut;
      break;
    case 4:
      if (t == "HEAD") return Method::kHead;
      if (t == "POST") return Method::kPost;
      break;
    case 5:
      if (t == "PATCH") return Method::kPatch;
      break;
    case 6:
      if (t == "DELETE") return Method::kDelete;
      break;
    case 7:
      if (t == "OPTIONS") return Method::kOptions;
      break;
  }
  return Method::kOther;
}

std::string_view MethodName(Method m) {
  static constexpr std::string_view kNames[kMethodCount] = {"GET",    "HEAD",  "POST",    "PUT",
                                                            "DELETE", "PATCH", "OPTIONS", "OTHER"};
  return kNames[static_cast<std::size_t>(m)];
}

std::string_view Request::Param(std::string_view name) const {
  for (std::size_t i = 0; i < param_count_; ++i) {
    if (params_[i].first == name) return params_[i].second;
  }
  return {};
}

void Request::AddParam(std::string_view name, std::string_view value) {
  if (param_count_ < kMaxParams) params_[param_count_++] = {name, value};
}

std::string_view Request::QueryParam(std::string_view name) const {
  std::string_view q = query;
  while (!q.empty()) {
    std::size_t amp = q.find('&');
    std::string_view pair = q.substr(0, amp);
    std::size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name) return eq == std::string_view::npos ? "" : pair.substr(eq + 1);
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return {};
}

namespace {

// Finds `name` in "\r\nName: value" lines.
std::string_view FindInLines(std::string_view lines, std::string_view name) {
  while (!lines.empty()) {
    if (lines.starts_with("\r\n")) lines.remove_prefix(2);
    std::size_t end = lines.find("\r\n");
    std::string_view line = lines.substr(0, end);
    std::size_t colon = line.find(':');
    if (colon != std::string_view::npos && EqualsIgnoreCase(line.substr(0, colon), name)) {
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      return value;
    }
    if (end == std::string_view::npos) break;
    lines.remove_prefix(end);
  }
  return {};
}

}  // namespace

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

std::string_view Response::HeaderValue(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (EqualsIgnoreCase(n, name)) return v;
  }
  if (header_lines) {
    if (std::string_view v = FindInLines(*header_lines, name); !v.empty()) return v;
  }
  return FindInLines(more_header_lines, name);
}

Response ErrorResponse(int status, std::string_view code, std::string_view message,
                       std::string_view param) {
  std::string_view type = status == 429   ? "rate_limit_error"
                          : status >= 500 ? "server_error"
                                          : "invalid_request_error";
  rapidjson::StringBuffer sb;
  rapidjson::Writer<rapidjson::StringBuffer> w(sb);
  w.StartObject();
  w.Key("error");
  w.StartObject();
  w.Key("type");
  w.String(type.data(), type.size());
  w.Key("code");
  w.String(code.data(), code.size());
  w.Key("message");
  w.String(message.data(), message.size());
  w.Key("param");
  if (param.empty()) {
    w.Null();
  } else {
    w.String(param.data(), param.size());
  }
  w.EndObject();
  w.EndObject();
  return JsonResponse(status, std::string(sb.GetString(), sb.GetSize()));
}

void Response::ProduceBody() {
  if (!make_body) return;
  body.clear();
  make_body(body);
  make_body = nullptr;
}

Response JsonResponse(int status, std::string body) {
  Response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

std::string_view ReasonPhrase(int s) {
  switch (s) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 206:
      return "Partial Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 411:
      return "Length Required";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 416:
      return "Range Not Satisfiable";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
  }
  return "Unknown";
}

}  // namespace megaserve::net
