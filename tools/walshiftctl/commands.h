#pragma once
// walshiftctl's commands that talk to walshiftd's outputs rather than to the databases: the
// events it publishes to Kafka (events.cc) and its HTTP status endpoint (status_http.cc), plus
// the formatting helpers every command shares.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "daemon/observe/format.h"
#include "google/protobuf/struct.pb.h"

namespace walshift::ctl {

using walshift::HumanBytes;  // daemon/observe/format.h
using walshift::JsonString;

// walshiftctl events --brokers B --topic T [--from-beginning] [--follow] [--json]
// Prints walshiftd's events from a Kafka topic. Exit 0 once every partition is read to its
// end (or on SIGINT/SIGTERM with --follow); 2 for usage errors, unreachable brokers or an
// unknown topic.
int EventsCommand(int argc, char** argv);

// walshiftctl verify --config FILE [--table T] [--repair] [--gate] [--settle S] (verify.cc)
int VerifyCommand(int argc, char** argv);

// walshiftctl dead-letter list|show|retry|discard --config FILE ... (dead_letter.cc)
int DeadLetterCommand(int argc, char** argv);

// walshiftctl cutover / rollback --config FORWARD --reverse-config REVERSE ... (cutover.cc)
int CutoverCommand(int argc, char** argv);
int RollbackCommand(int argc, char** argv);

// When a pipeline counts as unhealthy (exit code 1 of `status`).
struct LagLimits {
  double max_lag_bytes = 64.0 * 1024 * 1024;
  double max_lag_seconds = 300;
};

struct HttpStatusOptions {
  bool json = false;
  double watch = 0;  // seconds between redraws; 0 prints once
  LagLimits limits;
};

// GET /status from `url` ("http://host:port", "host:port", optionally with a path prefix), with
// a 2 s connection timeout. Returns the body. kInvalidArgument for a malformed URL,
// kUnavailable when nothing answers, kFailedPrecondition for an answer other than 200.
absl::StatusOr<std::string> FetchStatus(const std::string& url);
// The bearer token FetchStatus sends (status.token_file, or walshiftctl status --token-file).
void SetStatusToken(std::string token);

// Parses a /status body. kInvalidArgument when it is not a JSON object.
absl::StatusOr<google::protobuf::Struct> ParseStatus(absl::string_view body);

// 0 healthy; 1 when the state is ERROR, an alarm is raised or a target lags past `limits`;
// kExitSlotLost (3) when the slot lost changes (alarm SLOT_LOST or SLOT_MISSING). Missing
// fields count as zero (proto3 JSON leaves out zero values).
int StatusExitCode(const google::protobuf::Struct& status, const LagLimits& limits);

// The /status document for a person: header, source and slot, a table of targets, progress
// bars of an unfinished copy, Kafka. Ends with a newline.
std::string RenderStatus(const google::protobuf::Struct& status, const LagLimits& limits);

// `walshiftctl status` over HTTP: prints (or with options.watch, redraws) the status of the
// walshiftd serving `url` and returns the exit code (0/1/3 as StatusExitCode, 2 when `url` is
// unreachable or does not answer with a status document; while watching, that is shown and
// the loop goes on). `first_body`, when given, is used instead of the first fetch.
int HttpStatusCommand(const std::string& url, const HttpStatusOptions& options,
                      std::optional<std::string> first_body = std::nullopt);

}  // namespace walshift::ctl
