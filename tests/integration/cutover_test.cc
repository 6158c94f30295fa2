// The end of a migration on real clusters: the forward pipeline streams under an application's
// load, walshiftctl cutover stops the legacy writes, drains, gates, moves the sequences and
// starts the reverse pipeline; the application moves to the new schema and the reverse pipeline
// keeps the legacy schema equal to it; walshiftctl rollback moves it back and the forward
// pipeline, which never stopped, goes on. Replication origins keep the two pipelines from
// sending each other's changes back: every increment the application made is in both schemas
// exactly once, and once the load stops nothing moves any more.

#include <libpq-fe.h>

#include <signal.h>

#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

// The same in both schemas (an identity mapping).
constexpr char kLedger[] = R"sql(
CREATE TABLE ledger (
  id         bigserial PRIMARY KEY,
  account_id bigint NOT NULL,
  amount     bigint NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now());
)sql";

constexpr char kLegacy[] = R"sql(
CREATE TABLE accounts (
  id      bigserial PRIMARY KEY,
  owner   text NOT NULL,
  balance numeric(12,2) NOT NULL,
  status  text NOT NULL DEFAULT 'open',
  note    text);
)sql";

constexpr char kNew[] = R"sql(
CREATE SCHEMA app;
CREATE TABLE app.accounts (
  account_id    bigserial PRIMARY KEY,
  holder        text NOT NULL,
  balance_cents bigint NOT NULL,
  state         text NOT NULL,
  origin        text NOT NULL);
)sql";

// rename + cast + an expression with its declared reverse + a constant (one-way) + identity.
constexpr char kForward[] = R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}", ignore_origins: [walshift_{PIPELINE}-reverse_legacy]}
targets: [{name: main, dsn: "{TARGET}"}]
monitor: {heartbeat_interval_s: 1}
mappings:
  - source: public.accounts
    table: app.accounts
    key: [account_id]
    columns:
      account_id: id
      holder: owner
      balance_cents: {sql: "(balance * 100)::bigint"}
      state: status
      origin: {const: legacy}
    reverse:
      columns: {balance: "balance_cents / 100.0"}
      one_way_columns: [origin]
  - source: public.ledger
)";

// The application: increments account balances by one cent and appends ledger rows, on
// whichever schema it is pointed at; counts what committed.
class Application {
 public:
  Application(std::string legacy_dsn, std::string new_dsn) : dsn_{std::move(legacy_dsn), std::move(new_dsn)} {}
  ~Application() { Stop(); }

  void Start() {
    thread_ = std::thread([this] { Loop(); });
  }
  // 0: legacy, 1: new.
  void PointAt(int side) { side_.store(side); }
  void Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
  }
  uint64_t committed(int side) const { return committed_[side].load(); }
  uint64_t refused() const { return refused_.load(); }
  // Increments per account id, as committed.
  std::map<int64_t, int64_t> increments() {
    std::lock_guard<std::mutex> lock(mu_);
    return increments_;
  }
  // Seconds between the last write that committed on one side and the first on the other.
  std::vector<double> switches() {
    std::lock_guard<std::mutex> lock(mu_);
    return switches_;
  }

 private:
  void Loop() {
    PGconn* conn[2] = {PQconnectdb(dsn_[0].c_str()), PQconnectdb(dsn_[1].c_str())};
    std::mt19937 rng(7);
    int last_side = 0;
    absl::Time last_commit = absl::Now();
    while (!stop_.load()) {
      int side = side_.load();
      int64_t id = 1 + static_cast<int64_t>(rng() % 20);
      std::string sql =
          side == 0 ? absl::StrCat("BEGIN; UPDATE accounts SET balance = balance + 0.01 WHERE id = ", id,
                                   "; INSERT INTO ledger (account_id, amount) VALUES (", id, ", 1); COMMIT")
                    : absl::StrCat("BEGIN; UPDATE app.accounts SET balance_cents = balance_cents + 1 WHERE account_id = ",
                                   id, "; INSERT INTO ledger (account_id, amount) VALUES (", id, ", 1); COMMIT");
      PGresult* r = PQexec(conn[side], sql.c_str());
      bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
      PQclear(r);
      if (ok) {
        absl::Time now = absl::Now();
        std::lock_guard<std::mutex> lock(mu_);
        if (side != last_side) switches_.push_back(absl::ToDoubleSeconds(now - last_commit));
        last_side = side;
        last_commit = now;
        ++increments_[id];
        ++committed_[side];
      } else {
        PQclear(PQexec(conn[side], "ROLLBACK"));
        ++refused_;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    PQfinish(conn[0]);
    PQfinish(conn[1]);
  }

  std::string dsn_[2];
  std::atomic<int> side_{0};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> committed_[2] = {0, 0};
  std::atomic<uint64_t> refused_{0};
  std::mutex mu_;
  std::map<int64_t, int64_t> increments_;
  std::vector<double> switches_;
  std::thread thread_;
};

class CutoverTest : public DaemonTest {
 protected:
  void SetUp() override {
    DaemonTest::SetUp();
    role_ = "app_" + pipeline_.substr(0, 30);
    Source(std::string(kLegacy) + kLedger);
    Target(std::string(kNew) + kLedger);
    // Transactions past 64 kB stream (protocol 2) before they commit: the origin filter must
    // pass over them too.
    for (PgCluster* c : {source_cluster_, target_cluster_}) {
      (void)c->Exec("postgres", "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
      (void)c->Exec("postgres", "SELECT pg_reload_conf()");
    }
    for (PgCluster* c : {source_cluster_, target_cluster_}) {
      (void)c->Exec("postgres", absl::StrCat("CREATE ROLE ", role_, " LOGIN"));
    }
    Source(absl::StrCat("GRANT ALL ON ALL TABLES IN SCHEMA public TO ", role_,
                        "; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO ", role_));
    Target(absl::StrCat("GRANT USAGE ON SCHEMA app TO ", role_, "; GRANT ALL ON ALL TABLES IN SCHEMA app, public TO ",
                        role_, "; GRANT ALL ON ALL SEQUENCES IN SCHEMA app, public TO ", role_));
    Source("INSERT INTO accounts (owner, balance) SELECT 'owner ' || g, 100 FROM generate_series(1, 20) g");
    forward_ = WriteConfig(kForward);
    reverse_ = dir_ + "/reverse.yaml";
  }
  void TearDown() override {
    if (reverse_daemon_ && reverse_daemon_->Running()) reverse_daemon_->Kill();
    if (HasFailure()) std::cerr << "---- reverse walshiftd log ----\n" << ReadFile(dir_ + "/reverse.log").value_or("");
    DaemonTest::TearDown();
    (void)target_cluster_->Exec("postgres",
                                absl::StrCat("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                             "WHERE slot_name = 'walshift_",
                                             pipeline_, "_reverse' AND NOT active"));
  }

  std::string AppDsn(PgCluster* c, const std::string& db) { return absl::StrCat(c->Dsn(db), " user=", role_); }

  void StartReverse() {
    SubprocessOptions o;
    o.argv = {BinaryPath("walshiftd"), "--config", reverse_};
    o.stdout_to = Output::File(dir_ + "/reverse.log", true);
    o.stderr_to = Output::File(dir_ + "/reverse.log", true);
    auto p = Subprocess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status();
    reverse_daemon_ = *std::move(p);
  }

  // The forward pipeline caught up, the reverse config derived, and the reverse walshiftd started.
  void StartBoth() {
    ASSERT_TRUE(StartDaemon(forward_).ok());
    ASSERT_TRUE(WaitCaughtUp().ok());
    ASSERT_EQ(Ctl({"reverse", "--config", forward_, "--output", reverse_}).status.exit_code(), 0);
    StartReverse();
  }

  // walshiftctl cutover or rollback on this pair.
  std::vector<std::string> Step(const char* verb) {
    return {verb, "--config", forward_, "--reverse-config", reverse_, "--settle", "60"};
  }

  RunResult Ctl(const std::vector<std::string>& args, const std::map<std::string, std::string>& env = {}) {
    RunResult r = Walshiftctl(args, env);
    std::cerr << "$ walshiftctl " << absl::StrJoin(args, " ") << "\n" << r.stdout_text << r.stderr_text;
    return r;
  }

  // Rows of both schemas as the forward mapping relates them (balance in cents), and the ledger.
  std::string LegacyImage() {
    return source_cluster_->QueryValue(source_db_,
                                       "SELECT md5((SELECT string_agg(id || ':' || owner || ':' || (balance * 100)::bigint || "
                                       "':' || status, ',' ORDER BY id) FROM accounts) || '|' || (SELECT "
                                       "string_agg(id || ':' || account_id || ':' || amount, ',' ORDER BY id) FROM "
                                       "ledger))")
        .value_or("?");
  }
  std::string NewImage() {
    return target_cluster_->QueryValue(target_db_,
                                       "SELECT md5((SELECT string_agg(account_id || ':' || holder || ':' || balance_cents || "
                                       "':' || state, ',' ORDER BY account_id) FROM app.accounts) || '|' || (SELECT "
                                       "string_agg(id || ':' || account_id || ':' || amount, ',' ORDER BY id) FROM "
                                       "ledger))")
        .value_or("?");
  }
  // Every row version of both schemas: a change sent round in a loop rewrites rows.
  std::string Versions() {
    return source_cluster_->QueryValue(source_db_,
                                       "SELECT md5((SELECT string_agg(xmin::text, ',' ORDER BY id) FROM accounts) || "
                                       "'|' || (SELECT string_agg(xmin::text, ',' ORDER BY id) FROM ledger))")
               .value_or("?") +
           "/" +
           target_cluster_->QueryValue(target_db_,
                                       "SELECT md5((SELECT string_agg(xmin::text, ',' ORDER BY account_id) FROM "
                                       "app.accounts) || '|' || (SELECT string_agg(xmin::text, ',' ORDER BY id) FROM "
                                       "ledger))")
               .value_or("?");
  }

  void WaitEqual() {
    absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (LegacyImage() != NewImage() && absl::Now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    EXPECT_EQ(LegacyImage(), NewImage());
  }

  void ExpectIncrements(Application& app) {
    // Every committed increment is in both schemas once: 100.00 + n cents.
    for (const auto& [id, n] : app.increments()) {
      std::string q = absl::StrCat(id);
      EXPECT_EQ(source_cluster_->QueryValue(source_db_, "SELECT (balance * 100)::bigint FROM accounts WHERE id = " + q)
                    .value_or("?"),
                absl::StrCat(10000 + n))
          << "legacy account " << id;
      EXPECT_EQ(target_cluster_
                    ->QueryValue(target_db_, "SELECT balance_cents FROM app.accounts WHERE account_id = " + q)
                    .value_or("?"),
                absl::StrCat(10000 + n))
          << "new account " << id;
    }
  }

  // After the load stopped: both schemas equal, every increment in both once, nothing going
  // round (no row is written again on either side), and both verifiers see no drift.
  void ExpectEndedExact(Application& app) {
    ASSERT_TRUE(WaitCaughtUp().ok());
    WaitEqual();
    ExpectIncrements(app);
    std::string before = Versions();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    EXPECT_EQ(Versions(), before);
    EXPECT_EQ(Ctl({"verify", "--config", forward_}).status.exit_code(), 0);
    EXPECT_EQ(Ctl({"verify", "--config", reverse_}).status.exit_code(), 0);
  }

  std::string role_, forward_, reverse_;
  std::unique_ptr<Subprocess> reverse_daemon_;
};

TEST_F(CutoverTest, CutoverUnderLoadReverseStreamsRollbackAndBothSchemasEndExactWithoutLoops) {
  ASSERT_TRUE(StartDaemon(forward_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok());
  RunResult derived = Ctl({"reverse", "--config", forward_, "--output", reverse_});
  ASSERT_EQ(derived.status.exit_code(), 0) << derived.stdout_text << derived.stderr_text;
  EXPECT_TRUE(absl::StrContains(derived.stdout_text, "not replicated back (reverse.one_way_columns): origin"));
  // The reverse pipeline may run before the cutover: it passes over what the forward one applies.
  StartReverse();

  Application app(AppDsn(source_cluster_, source_db_), AppDsn(target_cluster_, target_db_));
  app.Start();
  std::this_thread::sleep_for(std::chrono::seconds(3));
  ASSERT_GT(app.committed(0), 50u);

  RunResult cut = Ctl(Step("cutover"));
  ASSERT_EQ(cut.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "no drift"));
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "app.accounts_account_id_seq: next value"));
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "public.ledger_id_seq: next value"));
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "cut over at LSN"));
  // The legacy tables refuse the application now.
  EXPECT_GT(app.refused(), 0u);
  uint64_t legacy_writes = app.committed(0);
  app.PointAt(1);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(app.committed(0), legacy_writes);
  ASSERT_GT(app.committed(1), 50u);
  // While the application writes the new schema, the reverse pipeline keeps legacy equal to it:
  // the verifier sees no drift either way.
  RunResult rv = Ctl({"verify", "--config", reverse_});
  EXPECT_EQ(rv.status.exit_code(), 0);
  RunResult fv = Ctl({"verify", "--config", forward_});
  EXPECT_EQ(fv.status.exit_code(), 0);
  // One large transaction on the new schema: the reverse pipeline applies it to legacy in
  // transactions far past logical_decoding_work_mem, which reach the forward pipeline streamed,
  // and which it passes over (their first Stream Start carries the origin), not written back.
  const std::string bulk_xid =
      target_cluster_
          ->QueryValue(target_db_, "WITH i AS (INSERT INTO ledger (account_id, amount) SELECT 1 + g % 20, 0 FROM "
                                   "generate_series(1, 5000) g RETURNING 1) SELECT pg_current_xact_id()::xid::text "
                                   "FROM i LIMIT 1")
          .value_or("?");
  ASSERT_TRUE(WaitCaughtUp().ok());
  auto caught = absl::Now() + absl::Seconds(60);
  while (source_cluster_->QueryValue(source_db_, "SELECT count(*) FROM ledger WHERE amount = 0").value_or("") != "5000" &&
         absl::Now() < caught)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(source_cluster_->QueryValue(source_db_, "SELECT count(*) FROM ledger WHERE amount = 0").value_or(""),
            "5000");
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_NE(source_cluster_
                ->QueryValue(source_db_, absl::StrCat("SELECT stream_txns FROM pg_stat_replication_slots WHERE "
                                                      "slot_name = 'walshift_", pipeline_, "'"))
                .value_or("0"),
            "0")
      << "the write-back reached the forward pipeline streamed";
  EXPECT_EQ(target_cluster_->QueryValue(target_db_, "SELECT string_agg(DISTINCT xmin::text, ',') FROM ledger WHERE amount = 0")
                .value_or(""),
            bulk_xid)
      << "the large transaction came back to the new schema";

  RunResult back = Ctl(Step("rollback"));
  ASSERT_EQ(back.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(back.stdout_text, "rolled back at LSN"));
  EXPECT_TRUE(absl::StrContains(back.stdout_text, "public.accounts_id_seq: next value"));
  uint64_t new_writes = app.committed(1);
  app.PointAt(0);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  app.Stop();
  EXPECT_EQ(app.committed(1), new_writes) << "the new schema's tables refuse the application after the rollback";
  EXPECT_GT(app.committed(0), legacy_writes + 20);
  ExpectEndedExact(app);
  auto sw = app.switches();
  ASSERT_EQ(sw.size(), 2u);
  std::cerr << "application writes paused " << sw[0] << " s at the cutover and " << sw[1] << " s at the rollback\n";
  RunResult status = Ctl({"cutover", "--config", forward_, "--reverse-config", reverse_, "--status"});
  EXPECT_TRUE(absl::StrContains(status.stdout_text, "rolled_back")) << status.stdout_text;
}


// Every step of both commands killed (walshiftctl -9 right after it recorded the step), the
// walshiftd of the pipeline being drained killed -9 and restarted meanwhile, an abort in the
// middle of a first attempt: each run continues where the last stopped, and both schemas end
// exact with every increment once.
TEST_F(CutoverTest, KilledAtEveryStepOfCutoverAndRollbackResumesAndEndsExact) {
  ASSERT_TRUE(StartDaemon(forward_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok());
  ASSERT_EQ(Ctl({"reverse", "--config", forward_, "--output", reverse_}).status.exit_code(), 0);
  Application app(AppDsn(source_cluster_, source_db_), AppDsn(target_cluster_, target_db_));
  app.Start();
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const std::vector<std::string> cutover = Step("cutover");
  auto killed_at = [&](const std::string& point, const std::vector<std::string>& args) {
    RunResult r = Ctl(args, {{"WALSHIFT_CRASH_AT", point + ":1"}});
    EXPECT_TRUE(r.status.signaled() && r.status.term_signal() == SIGKILL) << point << ": " << r.status.ToString();
  };
  auto status_says = [&](const std::string& text) {
    RunResult st = Ctl({"cutover", "--config", forward_, "--reverse-config", reverse_, "--status"});
    EXPECT_TRUE(absl::StrContains(st.stdout_text, text)) << st.stdout_text;
  };

  // A first attempt stops after the writes stopped, and is aborted: the application writes again.
  killed_at("cutover.writes_stopped", cutover);
  status_says("cutting_over, last step writes_stopped");
  RunResult abort = Ctl({"cutover", "--config", forward_, "--reverse-config", reverse_, "--abort"});
  ASSERT_EQ(abort.status.exit_code(), 0);
  uint64_t before_abort = app.committed(0);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_GT(app.committed(0), before_abort) << "legacy writes resume after --abort";
  status_says("aborted");

  // The second attempt, killed after every step; the forward walshiftd killed once as well.
  for (const std::string step : {"preflight", "revoking", "writes_stopped", "drained", "verified", "sequences"}) {
    killed_at("cutover." + step, cutover);
    status_says("cutting_over, last step " + step);
    if (step == "writes_stopped") {
      daemon_->Kill();
      ASSERT_TRUE(StartDaemon(forward_).ok());
    }
  }
  StartReverse();
  killed_at("cutover.reverse_slot", cutover);
  status_says("cutting_over, last step reverse_slot");
  RunResult late = Ctl({"cutover", "--config", forward_, "--reverse-config", reverse_, "--abort"});
  EXPECT_EQ(late.status.exit_code(), 1) << "no abort once the new schema's writes may be granted";
  EXPECT_TRUE(absl::StrContains(late.stdout_text, "finish it")) << late.stdout_text;
  killed_at("cutover.reverse_started", cutover);
  reverse_daemon_->Kill();
  StartReverse();
  RunResult cut = Ctl(cutover);
  ASSERT_EQ(cut.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "continuing the cutover"));
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "cut over at LSN"));

  app.PointAt(1);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  ASSERT_GT(app.committed(1), 20u);
  const std::vector<std::string> rollback = Step("rollback");
  // A first rollback stops after the drain and is aborted: the application writes the new schema
  // again and the cutover stands.
  killed_at("rollback.drained", rollback);
  status_says("rolling_back, last step drained");
  RunResult rollback_abort = Ctl({"rollback", "--config", forward_, "--reverse-config", reverse_, "--abort"});
  ASSERT_EQ(rollback_abort.status.exit_code(), 0) << rollback_abort.stdout_text;
  uint64_t before_rollback_abort = app.committed(1);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_GT(app.committed(1), before_rollback_abort) << "new-schema writes resume after rollback --abort";
  status_says("cut_over");
  for (const std::string step : {"preflight", "revoking", "writes_stopped", "drained", "verified", "sequences",
                                 "resuming", "writes_resumed"}) {
    killed_at("rollback." + step, rollback);
    status_says("rolling_back, last step " + step);
    if (step == "writes_stopped") {
      reverse_daemon_->Kill();
      StartReverse();
    }
  }
  RunResult back = Ctl(rollback);
  ASSERT_EQ(back.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(back.stdout_text, "rolled back at LSN"));
  app.PointAt(0);
  std::this_thread::sleep_for(std::chrono::seconds(2));
  app.Stop();
  ExpectEndedExact(app);
}


// A reverse pipeline may start before the forward one has copied the existing rows: the copy's
// sessions carry the forward pipeline's origin too (one per worker), so the reverse pipeline
// passes over them and no legacy row is written again.
TEST_F(CutoverTest, ReversePipelineRunningDuringTheInitialCopyPassesOverIt) {
  Source("INSERT INTO ledger (account_id, amount) SELECT 1 + g % 20, 1 FROM generate_series(1, 3000) g");
  ASSERT_EQ(Ctl({"reverse", "--config", forward_, "--output", reverse_}).status.exit_code(), 0);
  auto legacy_versions = [&] {
    std::string v = Versions();
    return v.substr(0, v.find('/'));
  };
  const std::string before = legacy_versions();
  StartReverse();
  auto deadline = absl::Now() + absl::Seconds(30);
  const std::string active = absl::StrCat("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walshift_",
                                          pipeline_, "_reverse' AND active");
  // Streaming, not creating its slot (the walsender that creates a slot holds it active too).
  auto streaming = [&] {
    return absl::StrContains(ReadFile(dir_ + "/reverse.log").value_or(""), " -> STREAMING");
  };
  while ((!streaming() || target_cluster_->QueryValue("postgres", active).value_or("") != "1") &&
         absl::Now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(streaming()) << ReadFile(dir_ + "/reverse.log").value_or("");
  ASSERT_EQ(target_cluster_->QueryValue("postgres", active).value_or(""), "1");
  ASSERT_TRUE(StartDaemon(forward_).ok());
  ASSERT_TRUE(WaitCaughtUp().ok());
  WaitEqual();
  EXPECT_NE(target_cluster_
                ->QueryValue("postgres", absl::StrCat("SELECT count(*) FROM pg_replication_origin WHERE roname LIKE "
                                                      "'walshift_",
                                                      pipeline_, "_main/copy-%'"))
                .value_or("0"),
            "0")
      << "the copy workers write with their own origins";
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_EQ(legacy_versions(), before) << "the reverse pipeline wrote the copied rows back";
}

// A revoke must stop every writer: a role that writes through pg_write_all_data keeps writing
// after it, so the cutover stops and names it; a role granted single columns loses them with
// the cutover and gets them back with the rollback, as does one that may grant its privilege on.
TEST_F(CutoverTest, RevokeProvesNobodyCanStillWriteNamingWhoCan) {
  const std::string member = role_ + "_all", columns = role_ + "_cols";
  (void)source_cluster_->Exec("postgres", absl::StrCat("DROP ROLE IF EXISTS ", member));
  (void)source_cluster_->Exec("postgres", absl::StrCat("DROP ROLE IF EXISTS ", columns));
  ASSERT_TRUE(source_cluster_->Exec("postgres", absl::StrCat("CREATE ROLE ", member, " LOGIN IN ROLE pg_write_all_data"))
                  .ok());
  ASSERT_TRUE(source_cluster_->Exec("postgres", absl::StrCat("CREATE ROLE ", columns, " LOGIN")).ok());
  Source(absl::StrCat("GRANT UPDATE (note, status) ON accounts TO ", columns, "; GRANT INSERT ON accounts TO ", columns,
                      " WITH GRANT OPTION"));
  auto grant_option = [&] {
    return source_cluster_
        ->QueryValue(source_db_, absl::StrCat("SELECT has_table_privilege('", columns, "', 'accounts', "
                                              "'INSERT WITH GRANT OPTION')::text"))
        .value_or("?");
  };
  auto column_privilege = [&] {
    return source_cluster_
        ->QueryValue(source_db_, absl::StrCat("SELECT has_column_privilege('", columns, "', 'accounts', 'note', "
                                              "'UPDATE')::text"))
        .value_or("?");
  };
  StartBoth();
  const std::vector<std::string> cutover = Step("cutover");
  RunResult refused = Ctl(cutover);
  EXPECT_EQ(refused.status.exit_code(), 1);
  EXPECT_TRUE(absl::StrContains(refused.stdout_text, "can still write"));
  EXPECT_TRUE(absl::StrContains(refused.stdout_text, member + " on accounts (INSERT, UPDATE, DELETE")) << refused.stdout_text;
  EXPECT_EQ(column_privilege(), "false") << "the column grant is revoked with the table ones";

  ASSERT_TRUE(source_cluster_->Exec("postgres", absl::StrCat("REVOKE pg_write_all_data FROM ", member)).ok());
  RunResult cut = Ctl(cutover);
  ASSERT_EQ(cut.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "no role but walshift's and superusers can write"));
  EXPECT_EQ(column_privilege(), "false");
  EXPECT_EQ(grant_option(), "false");
  RunResult back = Ctl(Step("rollback"));
  ASSERT_EQ(back.status.exit_code(), 0);
  EXPECT_EQ(column_privilege(), "true") << "granted back column by column";
  EXPECT_EQ(grant_option(), "true") << "granted back with the grant option it had";
  EXPECT_EQ(source_cluster_
                ->QueryValue(source_db_, absl::StrCat("SELECT has_column_privilege('", columns, "', 'accounts', "
                                                      "'balance', 'UPDATE')::text"))
                .value_or("?"),
            "false")
      << "and no wider than before";
}

// Finishing. rollback --finish retires the reverse pipeline (its slot stops keeping WAL on the
// new database) and a later cutover creates it again; cutover --finish retires both pipelines
// once the migration is final, and no cutover or rollback continues it. Both refuse while a
// walshiftd still streams what they would drop.
TEST_F(CutoverTest, FinishRetiresThePipelinesSoNothingKeepsWal) {
  StartBoth();
  const std::vector<std::string> cutover = Step("cutover");
  const std::vector<std::string> rollback = Step("rollback");
  auto with = [](std::vector<std::string> args, const char* flag) {
    args.push_back(flag);
    return args;
  };
  const std::string slot = "walshift_" + pipeline_, reverse_slot = slot + "_reverse";
  auto count = [&](PgCluster* c, const std::string& sql) {
    return c->QueryValue(c == source_cluster_ ? source_db_ : target_db_, sql).value_or("?");
  };
  auto slots = [&](PgCluster* c) {
    return count(c, absl::StrCat("SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('", slot, "', '",
                                 reverse_slot, "')"));
  };
  auto origins = [&](PgCluster* c) {
    return count(c, absl::StrCat("SELECT count(*) FROM pg_replication_origin WHERE starts_with(roname, 'walshift_",
                                 pipeline_, "')"));
  };
  auto publications = [&](PgCluster* c) {
    return count(c, absl::StrCat("SELECT count(*) FROM pg_publication WHERE starts_with(pubname, '", slot, "')"));
  };
  ASSERT_EQ(Ctl(cutover).status.exit_code(), 0);
  RunResult early = Ctl(with(rollback, "--finish"));
  EXPECT_EQ(early.status.exit_code(), 1);
  EXPECT_TRUE(absl::StrContains(early.stdout_text, "is cut_over; only a rollback that is done")) << early.stdout_text;
  ASSERT_EQ(Ctl(rollback).status.exit_code(), 0);
  ASSERT_NE(origins(source_cluster_), "0") << "the reverse pipeline applied with its origin";

  RunResult busy = Ctl(with(rollback, "--finish"));
  EXPECT_EQ(busy.status.exit_code(), 1);
  EXPECT_TRUE(absl::StrContains(busy.stdout_text, "still streams its slot " + reverse_slot)) << busy.stdout_text;
  ASSERT_TRUE(reverse_daemon_->Signal(SIGTERM).ok());
  ASSERT_TRUE(reverse_daemon_->Wait(absl::Seconds(30)).ok());
  RunResult retired = Ctl(with(rollback, "--finish"));
  ASSERT_EQ(retired.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(retired.stdout_text, "slot " + reverse_slot + " dropped")) << retired.stdout_text;
  EXPECT_EQ(slots(target_cluster_), "0");
  EXPECT_EQ(publications(target_cluster_), "0");
  EXPECT_EQ(origins(source_cluster_), "0");
  EXPECT_EQ(slots(source_cluster_), "1") << "the forward pipeline streams on";

  // A second cutover creates the reverse slot again; its walshiftd starts once step 6 asks.
  Source("UPDATE accounts SET balance = balance + 1 WHERE id = 1");
  auto second = std::async(std::launch::async, [&] { return Ctl(cutover); });
  for (absl::Time until = absl::Now() + absl::Seconds(60); slots(target_cluster_) != "1" && absl::Now() < until;)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  StartReverse();
  RunResult again = second.get();
  ASSERT_EQ(again.status.exit_code(), 0) << again.stdout_text;
  Target("UPDATE app.accounts SET balance_cents = balance_cents + 1 WHERE account_id = 2");
  ASSERT_TRUE(WaitCaughtUp().ok());
  WaitEqual();

  RunResult running = Ctl(with(cutover, "--finish"));
  EXPECT_EQ(running.status.exit_code(), 1);
  EXPECT_TRUE(absl::StrContains(running.stdout_text, "still streams its slot")) << running.stdout_text;
  EXPECT_TRUE(StopDaemon().success());
  ASSERT_TRUE(reverse_daemon_->Signal(SIGTERM).ok());
  ASSERT_TRUE(reverse_daemon_->Wait(absl::Seconds(30)).ok());
  RunResult finished = Ctl(with(cutover, "--finish"));
  ASSERT_EQ(finished.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(finished.stdout_text, "is finished")) << finished.stdout_text;
  for (PgCluster* c : {source_cluster_, target_cluster_}) {
    EXPECT_EQ(slots(c), "0");
    EXPECT_EQ(publications(c), "0");
    EXPECT_EQ(origins(c), "0") << "apply and copy origins of both pipelines";
  }
  RunResult twice = Ctl(with(cutover, "--finish"));
  EXPECT_EQ(twice.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(twice.stdout_text, "slot " + slot + " already gone")) << twice.stdout_text;
  for (const auto& args : {cutover, rollback}) {
    RunResult after = Ctl(args);
    EXPECT_EQ(after.status.exit_code(), 1);
    EXPECT_TRUE(absl::StrContains(after.stdout_text, "is finished (walshiftctl cutover --finish)")) << after.stdout_text;
  }
  RunResult status = Ctl(with(cutover, "--status"));
  EXPECT_TRUE(absl::StrContains(status.stdout_text, ": finished, last step done")) << status.stdout_text;
  // The forward walshiftd started again refuses: its slot is gone.
  ASSERT_TRUE(StartDaemon(forward_).ok());
  auto st = daemon_->Wait(absl::Seconds(60));
  ASSERT_TRUE(st.ok());
  EXPECT_FALSE(st->success());
  EXPECT_TRUE(absl::StrContains(DaemonLog(), "cutover --finish or rollback --finish retired the pipeline"));
  EXPECT_EQ(LegacyImage(), NewImage());
}

// Two legacy tables merged into one row go back as a split: each part only while the new row
// holds something of it, so a profile the new schema clears leaves the legacy table and one it
// fills appears there. The application stops its writes itself (--stop-writes application).
TEST_F(CutoverTest, MergedRowsGoBackSplitAndRollBack) {
  Source(R"sql(
    CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL);
    CREATE TABLE profiles (user_id bigint PRIMARY KEY, bio text, city text);
    INSERT INTO users (email) SELECT 'u' || g || '@x' FROM generate_series(1, 5) g;
    INSERT INTO profiles SELECT g, 'bio ' || g, 'city ' || g FROM generate_series(1, 3) g;
    CREATE SEQUENCE invoice_no START 500;)sql");
  Target("CREATE TABLE app.people (person_id bigint PRIMARY KEY, email text, bio text, city text);"
         "CREATE SEQUENCE app.invoice_no");
  std::string forward = WriteConfig(R"(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}", ignore_origins: [walshift_{PIPELINE}-reverse_legacy]}
targets: [{name: main, dsn: "{TARGET}"}]
monitor: {heartbeat_interval_s: 1}
mappings:
  - {source: users, module: merge, table: app.people, key: [person_id], on_delete: delete_when_last,
     columns: {person_id: id, email: email}}
  - {source: profiles, module: merge, table: app.people, key: [person_id], on_delete: delete_when_last,
     columns: {person_id: user_id, bio: bio, city: city}}
cutover: {sequences: [{source: invoice_no, target: app.invoice_no}]}
)");
  ASSERT_TRUE(StartDaemon(forward).ok());
  ASSERT_TRUE(WaitCaughtUp().ok());
  RunResult derived = Ctl({"reverse", "--config", forward, "--output", reverse_});
  ASSERT_EQ(derived.status.exit_code(), 0);
  std::string yaml = ReadFile(reverse_).value_or("");
  EXPECT_TRUE(absl::StrContains(yaml, "module: split")) << yaml;
  EXPECT_TRUE(absl::StrContains(yaml, R"(num_nonnulls("bio", "city") > 0)")) << yaml;
  EXPECT_TRUE(absl::StrContains(yaml, R"(num_nonnulls("email") = 1)")) << yaml;
  StartReverse();
  const std::vector<std::string> cutover = {"cutover", "--config", forward, "--reverse-config", reverse_,
                                            "--stop-writes", "application", "--settle", "60"};
  RunResult cut = Ctl(cutover);
  ASSERT_EQ(cut.status.exit_code(), 0);
  EXPECT_TRUE(absl::StrContains(cut.stdout_text, "app.people.person_id has no sequence"));
  // A sequence no column is behind, listed in the config: past the legacy one (500) + margin.
  EXPECT_EQ(target_cluster_->QueryValue(target_db_, "SELECT nextval('app.invoice_no')::text").value_or(""), "1500")
      << cut.stdout_text;

  Target(R"sql(
    UPDATE app.people SET bio = 'now has one' WHERE person_id = 4;
    UPDATE app.people SET bio = NULL, city = NULL WHERE person_id = 1;
    UPDATE app.people SET email = 'renamed@x' WHERE person_id = 3;
    INSERT INTO app.people VALUES (100, 'new@x', 'new bio', NULL);
    DELETE FROM app.people WHERE person_id = 2;)sql");
  const std::string users = "SELECT string_agg(id || '=' || email, ',' ORDER BY id) FROM users";
  const std::string profiles =
      "SELECT string_agg(user_id || '=' || coalesce(bio, '-') || '/' || coalesce(city, '-'), ',' ORDER BY user_id) "
      "FROM profiles";
  const std::string want_users = "1=u1@x,3=renamed@x,4=u4@x,5=u5@x,100=new@x";
  const std::string want_profiles = "3=bio 3/city 3,4=now has one/-,100=new bio/-";
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (absl::Now() < deadline && (source_cluster_->QueryValue(source_db_, users).value_or("") != want_users ||
                                    source_cluster_->QueryValue(source_db_, profiles).value_or("") != want_profiles))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(source_cluster_->QueryValue(source_db_, users).value_or(""), want_users);
  EXPECT_EQ(source_cluster_->QueryValue(source_db_, profiles).value_or(""), want_profiles);
  EXPECT_EQ(Ctl({"verify", "--config", reverse_}).status.exit_code(), 0);
  EXPECT_EQ(Ctl({"verify", "--config", forward}).status.exit_code(), 0);

  RunResult back = Ctl({"rollback", "--config", forward, "--reverse-config", reverse_, "--stop-writes", "application",
                        "--settle", "60"});
  ASSERT_EQ(back.status.exit_code(), 0);
  // users.id has a sequence, app.people.person_id none: the legacy sequence is set past the
  // highest key, 100, which the new schema's application wrote.
  EXPECT_TRUE(absl::StrContains(back.stdout_text, "the highest public.users.id is 100")) << back.stdout_text;
  EXPECT_EQ(source_cluster_->QueryValue(source_db_, "SELECT (nextval('users_id_seq') > 100)::text").value_or(""),
            "true");
  // And back: the legacy invoice_no past the new one (1500 handed out) + margin.
  EXPECT_EQ(source_cluster_->QueryValue(source_db_, "SELECT nextval('invoice_no')::text").value_or(""), "2501")
      << back.stdout_text;
  Source("UPDATE profiles SET city = 'moved' WHERE user_id = 4; INSERT INTO profiles VALUES (5, NULL, 'c5');"
         "DELETE FROM users WHERE id = 1");
  ASSERT_TRUE(WaitCaughtUp().ok());
  EXPECT_EQ(target_cluster_
                ->QueryValue(target_db_,
                             "SELECT string_agg(person_id || '=' || coalesce(email, '-') || '/' || coalesce(bio, '-') || "
                             "'/' || coalesce(city, '-'), ',' ORDER BY person_id) FROM app.people")
                .value_or(""),
            "3=renamed@x/bio 3/city 3,4=u4@x/now has one/moved,5=u5@x/-/c5,100=new@x/new bio/-");
  EXPECT_EQ(Ctl({"verify", "--config", forward}).status.exit_code(), 0);
  EXPECT_EQ(Ctl({"verify", "--config", reverse_}).status.exit_code(), 0);
}

// What cannot go back is refused before anything streams, each with the mapping, the table,
// the column and the fix.
TEST_F(CutoverTest, ReverseRefusesWhatCannotGoBackNamingTheFix) {
  Source(R"sql(
    CREATE TABLE items (id bigint PRIMARY KEY, qty integer NOT NULL, label text NOT NULL, code text NOT NULL);
    CREATE TABLE notes (id bigint PRIMARY KEY, item_id bigint, body text);)sql");
  Target(R"sql(
    CREATE TABLE app.items (id bigint PRIMARY KEY, qty numeric NOT NULL, label text, code text NOT NULL,
                            tag text NOT NULL, extra text);
    CREATE TABLE app.item_notes (id bigint PRIMARY KEY, notes jsonb);)sql");
  std::string forward = WriteConfig(R"yaml(
pipeline: {PIPELINE}
source: {dsn: "{SOURCE}"}
targets: [{name: main, dsn: "{TARGET}"}]
mappings:
  - source: items
    table: app.items
    columns: {id: id, qty: qty, label: label, code: {sql: "upper(code)"}, tag: {const: legacy}}
  - source: notes
    module: json_array
    table: app.item_notes
    parent_key: {id: item_id}
    column: notes
    element: {id: id, body: body}
    element_key: [id]
)yaml");
  RunResult r = Ctl({"reverse", "--config", forward, "--check"});
  EXPECT_EQ(r.status.exit_code(), 1);
  const std::string& out = r.stdout_text;
  for (const char* want : {
           "columns.qty: copying app.items.qty (numeric) back into public.items.qty (integer) rounds fractions away",
           "columns.label: app.items.label may be NULL and public.items.label is NOT NULL",
           "columns.code: app.items.code is computed (upper(code))",
           "reads public.items.code, which nothing writes back: declare reverse.columns.code",
           "columns.tag: app.items.tag is the constant 'legacy'",
           "list tag in reverse.one_way_columns",
           "app.items.extra is a column only the new schema has",
           "mappings[1] (public.notes): walshift does not derive the reverse of module json_array",
           "source.ignore_origins must list walshift_" ,
       }) {
    EXPECT_TRUE(absl::StrContains(out, want)) << "missing: " << want << "\n" << out;
  }
}

}  // namespace
}  // namespace walshift::testing
