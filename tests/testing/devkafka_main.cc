// walshift-devkafka: an embedded Kafka-protocol broker for the demo and tests.
//
//   walshift-devkafka [--partitions N] [--brokers N] topic...
//
// Starts the broker, creates the topics, prints the bootstrap address as the first line of
// stdout, then runs until SIGTERM or SIGINT and exits 0. Messages live in memory only.
// Exit code 2 for bad arguments, 1 when the broker cannot start.

#include <signal.h>
#include <stdio.h>

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "tests/testing/kafka_broker.h"

namespace {

constexpr char kUsage[] = "usage: walshift-devkafka [--partitions N] [--brokers N] topic...\n";

// Parses a positive integer flag value; prints usage and returns false on anything else.
bool ParseCount(const char* flag, const char* value, int* out) {
  if (value == nullptr || !absl::SimpleAtoi(value, out) || *out < 1) {
    fprintf(stderr, "walshift-devkafka: %s needs a positive number\n%s", flag, kUsage);
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  int partitions = 1;
  int brokers = 1;
  std::vector<std::string> topics;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--partitions" || arg == "--brokers") {
      const char* value = i + 1 < argc ? argv[++i] : nullptr;
      if (!ParseCount(arg.c_str(), value, arg == "--partitions" ? &partitions : &brokers)) {
        return 2;
      }
    } else if (arg.rfind("--partitions=", 0) == 0) {
      if (!ParseCount("--partitions", arg.c_str() + 13, &partitions)) return 2;
    } else if (arg.rfind("--brokers=", 0) == 0) {
      if (!ParseCount("--brokers", arg.c_str() + 10, &brokers)) return 2;
    } else if (arg == "-h" || arg == "--help") {
      fputs(kUsage, stdout);
      return 0;
    } else if (!arg.empty() && arg[0] == '-') {
      fprintf(stderr, "walshift-devkafka: unknown flag %s\n%s", arg.c_str(), kUsage);
      return 2;
    } else {
      topics.push_back(arg);
    }
  }

  // Block the stop signals before librdkafka starts its threads so only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  absl::StatusOr<std::unique_ptr<walshift::testing::EmbeddedKafka>> kafka =
      walshift::testing::EmbeddedKafka::Start(brokers);
  if (!kafka.ok()) {
    fprintf(stderr, "walshift-devkafka: %s\n", kafka.status().ToString().c_str());
    return 1;
  }
  for (const std::string& topic : topics) {
    absl::Status st = (*kafka)->CreateTopic(topic, partitions);
    if (!st.ok()) {
      fprintf(stderr, "walshift-devkafka: %s\n", st.ToString().c_str());
      return 1;
    }
  }
  printf("%s\n", (*kafka)->bootstrap().c_str());
  fflush(stdout);
  fprintf(stderr, "walshift-devkafka: %d broker(s) at %s, %zu topic(s) with %d partition(s)\n", brokers,
          (*kafka)->bootstrap().c_str(), topics.size(), partitions);

  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  fprintf(stderr, "walshift-devkafka: %s, stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  kafka->reset();
  return 0;
}
