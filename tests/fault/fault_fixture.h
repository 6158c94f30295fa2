#pragma once
// What the fault tests share: one mapped table under a pgbench load (upserts and deletes of
// `events` into `events_v2` with an `sql:` column), and the proof at the end that the target
// equals the mapped source, compared in both directions.

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "tests/integration/daemon_fixture.h"

namespace walshift::testing {

class FaultTest : public DaemonTest {
 protected:
  // Creates `events` in the source and `events_v2` in the target.
  void CreateTables();
  // The config of the mapping with `extra` (YAML keys: apply, network, snapshot...) appended;
  // {SOURCE}/{TARGET} unless other DSNs are given; `source_keys` go into the source section.
  std::string EventsConfig(const std::string& extra, const std::string& source_dsn = "{SOURCE}",
                           const std::string& target_dsn = "{TARGET}", const std::string& source_keys = "");
  // pgbench arguments: `clients` clients upserting (9 in 10) and deleting rows of keys
  // 1..max_id, for `duration` (-T) at `rate` transactions/s in all (-R; 0: as fast as it goes).
  std::vector<std::string> Workload(int clients, absl::Duration duration, int rate = 0, int max_id = 3000);
  // The target equals the mapped source: no row missing, extra or different.
  void ExpectExact();

  // walshiftd's whole log, and its size now (an offset for WaitForLog).
  std::string FullLog() const;
  size_t LogSize() const { return FullLog().size(); }
  // Waits until `needle` appears in the log after byte `from`; false after `timeout`.
  bool WaitForLog(const std::string& needle, size_t from, absl::Duration timeout) const;
  // How often `needle` appears in the log after byte `from`.
  int CountInLog(const std::string& needle, size_t from = 0) const;
};

}  // namespace walshift::testing
