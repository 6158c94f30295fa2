#pragma once
// The HTTP endpoint (status.listen, default 127.0.0.1:9187): /status (JSON, the whole state),
// /metrics (Prometheus text), /healthz (the pipeline loop ticked within 30 s), /readyz
// (snapshotting or streaming).

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "daemon/observe/status.h"

namespace httplib {
class Server;
}

namespace walshift {

class StatusServer {
 public:
  // `listen`: host:port (port 0: any free port). kUnavailable when it cannot bind. A non-empty
  // `token`: /status and /metrics require "Authorization: Bearer <token>".
  static absl::StatusOr<std::unique_ptr<StatusServer>> Start(const std::string& listen, PipelineStatus* status,
                                                             const std::string& token = "");
  ~StatusServer();
  int port() const { return port_; }

 private:
  StatusServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace walshift
