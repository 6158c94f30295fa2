// walshift-bench-probe: the time until a change committed on the source is visible to a reader
// of the target. Used by tools/bench/steady for both walshiftd and native logical replication.
//
// One thread inserts a probe row (id, autocommit) into a table on the source at a fixed rate and
// notes when each commit returned. Another reads the target every --poll-ms over its own
// session (`SELECT id FROM <table> WHERE id > last ORDER BY id`, a new snapshot each time, so a
// row is seen exactly when its target transaction has committed) and notes when each id first
// appears. Visible lag = seen - committed. Prints one line:
//   probes=N missing=M p50_ms=.. p90_ms=.. p99_ms=.. max_ms=.. mean_ms=..
// and exits 1 when a probe never appeared within --settle-s after the last insert.
//
// Usage: walshift-bench-probe --source DSN --target DSN [--table bench_probe] [--rate 20]
//          [--seconds 30] [--poll-ms 2] [--settle-s 30] [--first-id 1]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "libpq-fe.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string source, target, table = "bench_probe";
  double rate = 20;
  double seconds = 30;
  double poll_ms = 2;
  double settle_s = 30;
  long long first_id = 1;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "walshift-bench-probe: %s\n", what.c_str());
  std::exit(2);
}

PGconn* Connect(const std::string& dsn, const char* what) {
  PGconn* c = PQconnectdb(dsn.c_str());
  if (PQstatus(c) != CONNECTION_OK) Die(std::string(what) + ": " + PQerrorMessage(c));
  return c;
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--source") o.source = value();
    else if (a == "--target") o.target = value();
    else if (a == "--table") o.table = value();
    else if (a == "--rate") o.rate = std::atof(value().c_str());
    else if (a == "--seconds") o.seconds = std::atof(value().c_str());
    else if (a == "--poll-ms") o.poll_ms = std::atof(value().c_str());
    else if (a == "--settle-s") o.settle_s = std::atof(value().c_str());
    else if (a == "--first-id") o.first_id = std::atoll(value().c_str());
    else Die("unknown argument " + a);
  }
  if (o.source.empty() || o.target.empty()) Die("--source and --target are required");
  if (o.rate <= 0 || o.seconds <= 0 || o.poll_ms <= 0) Die("--rate, --seconds and --poll-ms must be positive");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  const long long count = std::max(1LL, static_cast<long long>(o.rate * o.seconds));
  // Nanoseconds since `epoch`; 0 = not yet.
  std::vector<std::atomic<long long>> committed(count), seen(count);
  for (long long i = 0; i < count; ++i) committed[i] = seen[i] = 0;
  const Clock::time_point epoch = Clock::now();
  auto since = [&] { return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - epoch).count(); };
  std::atomic<bool> inserting{true};

  PGconn* src = Connect(o.source, "source");
  PGconn* tgt = Connect(o.target, "target");
  const std::string insert = "INSERT INTO " + o.table + " (id) VALUES ($1)";
  const std::string select = "SELECT id FROM " + o.table + " WHERE id > $1 ORDER BY id";

  std::thread poller([&] {
    long long last = o.first_id - 1;
    const auto interval = std::chrono::microseconds(static_cast<long long>(o.poll_ms * 1000));
    Clock::time_point settle_until = Clock::time_point::max();
    for (;;) {
      Clock::time_point started = Clock::now();
      std::string arg = std::to_string(last);
      const char* params[1] = {arg.c_str()};
      PGresult* r = PQexecParams(tgt, select.c_str(), 1, nullptr, params, nullptr, nullptr, 0);
      if (PQresultStatus(r) != PGRES_TUPLES_OK) Die(std::string("target: ") + PQerrorMessage(tgt));
      long long now = since();
      for (int row = 0; row < PQntuples(r); ++row) {
        long long id = std::atoll(PQgetvalue(r, row, 0));
        long long k = id - o.first_id;
        if (k >= 0 && k < count && seen[k].load() == 0) seen[k] = now;
        last = std::max(last, id);
      }
      PQclear(r);
      if (last >= o.first_id + count - 1) return;
      if (!inserting.load() && settle_until == Clock::time_point::max())
        settle_until = Clock::now() + std::chrono::milliseconds(static_cast<long long>(o.settle_s * 1000));
      if (Clock::now() >= settle_until) return;
      std::this_thread::sleep_until(started + interval);
    }
  });

  const auto period = std::chrono::nanoseconds(static_cast<long long>(1e9 / o.rate));
  Clock::time_point next = Clock::now();
  for (long long k = 0; k < count; ++k) {
    std::this_thread::sleep_until(next);
    next += period;
    std::string arg = std::to_string(o.first_id + k);
    const char* params[1] = {arg.c_str()};
    PGresult* r = PQexecParams(src, insert.c_str(), 1, nullptr, params, nullptr, nullptr, 0);
    long long t = since();
    if (PQresultStatus(r) != PGRES_COMMAND_OK) Die(std::string("source: ") + PQerrorMessage(src));
    PQclear(r);
    committed[k] = t;
  }
  inserting = false;
  poller.join();
  PQfinish(src);
  PQfinish(tgt);

  std::vector<double> lags;
  long long missing = 0;
  for (long long k = 0; k < count; ++k) {
    if (seen[k].load() == 0) {
      ++missing;
      continue;
    }
    // A row can be seen before the source's acknowledgement reached the inserter: lag 0.
    lags.push_back(std::max(0LL, seen[k].load() - committed[k].load()) / 1e6);
  }
  std::sort(lags.begin(), lags.end());
  auto pct = [&](double p) {
    if (lags.empty()) return 0.0;
    size_t i = static_cast<size_t>(p * (lags.size() - 1) + 0.5);
    return lags[std::min(i, lags.size() - 1)];
  };
  double sum = 0;
  for (double l : lags) sum += l;
  std::printf("probes=%lld missing=%lld p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f mean_ms=%.2f\n", count,
              missing, pct(0.5), pct(0.9), pct(0.99), lags.empty() ? 0.0 : lags.back(),
              lags.empty() ? 0.0 : sum / lags.size());
  return missing == 0 ? 0 : 1;
}
