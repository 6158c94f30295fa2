#include "daemon/observe/http.h"

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace walshift {

namespace {
// Compares in time independent of where they differ.
bool SameSecret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() != b.size();
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}
}  // namespace

absl::StatusOr<std::unique_ptr<StatusServer>> StatusServer::Start(const std::string& listen, PipelineStatus* status,
                                                                  const std::string& token) {
  size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("status.listen: '", listen, "' is not host:port"));
  }
  std::string host = listen.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::unique_ptr<StatusServer> s(new StatusServer());
  s->server_ = std::make_unique<httplib::Server>();
  httplib::Server& svr = *s->server_;
  if (!token.empty()) {
    const std::string expected = absl::StrCat("Bearer ", token);
    svr.set_pre_routing_handler([expected](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/healthz" || req.path == "/readyz") return httplib::Server::HandlerResponse::Unhandled;
      if (SameSecret(req.get_header_value("Authorization"), expected)) return httplib::Server::HandlerResponse::Unhandled;
      res.status = 401;
      res.set_header("WWW-Authenticate", "Bearer");
      res.set_content("a bearer token is required (status.token_file)\n", "text/plain");
      return httplib::Server::HandlerResponse::Handled;
    });
  }
  svr.Get("/status", [status](const httplib::Request&, httplib::Response& res) {
    status->RefreshSource(absl::Seconds(1));
    res.set_content(status->StatusJson(), "application/json");
  });
  svr.Get("/metrics", [status](const httplib::Request&, httplib::Response& res) {
    status->RefreshSource(absl::Seconds(1));
    res.set_content(status->PrometheusText(), "text/plain; version=0.0.4");
  });
  svr.Get("/healthz", [status](const httplib::Request&, httplib::Response& res) {
    absl::Duration since = absl::Now() - status->last_tick();
    bool ok = since < absl::Seconds(30);
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ok\n" : absl::StrCat("pipeline loop stuck for ", absl::ToInt64Seconds(since), " s\n"),
                    "text/plain");
  });
  svr.Get("/readyz", [status](const httplib::Request&, httplib::Response& res) {
    v1::PipelineState st = status->state();
    // A standby (ha) is ready: it takes over on its own, and a rollout must not wait on it.
    bool ok = st == v1::STREAMING || st == v1::SNAPSHOTTING || st == v1::STANDBY;
    res.status = ok ? 200 : 503;
    res.set_content(absl::StrCat(v1::PipelineState_Name(st), "\n"), "text/plain");
  });
  s->port_ = port == 0 ? svr.bind_to_any_port(host) : (svr.bind_to_port(host, port) ? port : -1);
  if (s->port_ <= 0) {
    return absl::UnavailableError(absl::StrCat("status.listen ", listen, ": cannot bind (in use, or no such address)"));
  }
  s->thread_ = std::thread([&svr] { svr.listen_after_bind(); });
  spdlog::info("status: http://{}:{}/status, /metrics, /healthz, /readyz", host, s->port_);
  return s;
}

StatusServer::~StatusServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace walshift
