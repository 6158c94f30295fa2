#include "tests/fault/fault_fixture.h"

#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"

namespace walshift::testing {

void FaultTest::CreateTables() {
  Source("CREATE TABLE events (id int PRIMARY KEY, n int NOT NULL, payload text)");
  Target("CREATE TABLE events_v2 (event_id int PRIMARY KEY, count int NOT NULL, digest text, doubled bigint)");
}

std::string FaultTest::EventsConfig(const std::string& extra, const std::string& source_dsn,
                                    const std::string& target_dsn, const std::string& source_keys) {
  return WriteConfig(absl::StrCat(R"(
pipeline: {PIPELINE}
source: {dsn: ")",
                                  source_dsn, "\"", source_keys.empty() ? "" : ", ", source_keys, R"(}
targets: [{name: main, dsn: ")",
                                  target_dsn, R"("}]
status: {listen: "127.0.0.1:0"}
mappings:
  - source: public.events
    table: public.events_v2
    key: [event_id]
    columns: {event_id: id, count: n, digest: payload, doubled: {sql: "n::bigint * 2"}}
)",
                                  extra));
}

std::vector<std::string> FaultTest::Workload(int clients, absl::Duration duration, int rate, int max_id) {
  std::string upsert = dir_ + "/upsert.sql";
  std::string remove = dir_ + "/delete.sql";
  std::ofstream(upsert) << "\\set id random(1, " << max_id
                        << ")\n"
                           "INSERT INTO events VALUES (:id, 1, md5(:id::text)) ON CONFLICT (id) DO "
                           "UPDATE SET n = events.n + 1, payload = md5(events.payload);\n";
  std::ofstream(remove) << "\\set id random(1, " << max_id << ")\nDELETE FROM events WHERE id = :id;\n";
  std::vector<std::string> args = {
      "-c", absl::StrCat(clients), "-j", "2",          "-T", absl::StrCat(absl::ToInt64Seconds(duration)),
      "-f", upsert + "@9",         "-f", remove + "@1"};
  if (rate > 0) {
    args.push_back("-R");
    args.push_back(absl::StrCat(rate));
  }
  return args;
}

void FaultTest::ExpectExact() {
  PgRows expected = SourceRows("SELECT id::text, n::text, payload, (n::bigint * 2)::text FROM events ORDER BY id");
  PgRows actual =
      TargetRows("SELECT event_id::text, count::text, digest, doubled::text FROM events_v2 ORDER BY event_id");
  EXPECT_GT(expected.size(), 100u);
  EXPECT_EQ(actual.size(), expected.size());
  // Both directions: every source row has its equal target row, and no target row lacks one.
  std::map<std::string, PgRow> by_key;
  for (const PgRow& r : actual) by_key[*r[0]] = r;
  int shown = 0;
  std::set<std::string> source_keys;
  for (const PgRow& r : expected) {
    source_keys.insert(*r[0]);
    auto it = by_key.find(*r[0]);
    if (it == by_key.end()) {
      ADD_FAILURE() << "missing in the target: id " << *r[0];
    } else if (it->second != r) {
      ADD_FAILURE() << "different in the target: id " << *r[0] << " count " << it->second[1].value_or("NULL")
                    << " (source n " << r[1].value_or("NULL") << ")";
    } else {
      continue;
    }
    if (++shown >= 5) break;
  }
  shown = 0;
  for (const PgRow& r : actual) {
    if (source_keys.count(*r[0])) continue;
    ADD_FAILURE() << "extra in the target: event_id " << *r[0];
    if (++shown >= 5) break;
  }
}

std::string FaultTest::FullLog() const {
  std::ifstream in(absl::StrCat(dir_, "/walshiftd.log"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool FaultTest::WaitForLog(const std::string& needle, size_t from, absl::Duration timeout) const {
  absl::Time deadline = absl::Now() + timeout;
  do {
    std::string log = FullLog();
    if (log.size() > from && log.find(needle, from) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (absl::Now() < deadline);
  return false;
}

int FaultTest::CountInLog(const std::string& needle, size_t from) const {
  std::string log = FullLog();
  int n = 0;
  for (size_t at = log.find(needle, from); at != std::string::npos; at = log.find(needle, at + needle.size())) ++n;
  return n;
}

}  // namespace walshift::testing
