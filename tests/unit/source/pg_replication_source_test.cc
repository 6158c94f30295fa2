// PgReplicationSource against a real PostgreSQL 15 cluster (tests/testing/pg_cluster.h).

#include "daemon/source/pg_replication_source.h"

#include <signal.h>

#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/core/lsn.h"
#include "daemon/pg/pg_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/pg_cluster.h"

namespace walshift {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;
using walshift::testing::PgCluster;

constexpr char kToast[] = "<unchanged toast>";

// A copy of one row change; values as text, nullopt for NULL, kToast for unchanged TOAST.
struct Row {
  ChangeKind kind;
  std::string table;
  char old_kind;
  std::vector<std::optional<std::string>> old_values;
  std::vector<std::optional<std::string>> new_values;
};

class CollectingHandler : public ChangeHandler {
 public:
  absl::Status OnBegin(const TransactionBegin& begin) override {
    begins.push_back(begin);
    return absl::OkStatus();
  }
  absl::Status OnRelation(std::shared_ptr<const SourceRelation> relation) override {
    relations.push_back(std::move(relation));
    return absl::OkStatus();
  }
  absl::Status OnChange(const RowChange& change) override {
    Row row{change.kind, change.relation->QualifiedName(), change.old_tuple_kind, {}, {}};
    if (change.old_tuple != nullptr) row.old_values = Copy(*change.old_tuple);
    if (change.new_tuple != nullptr) row.new_values = Copy(*change.new_tuple);
    rows.push_back(std::move(row));
    return absl::OkStatus();
  }
  absl::Status OnTruncate(const TruncateChange& truncate) override {
    std::vector<std::string> names;
    for (const SourceRelation* r : truncate.relations) names.push_back(r->QualifiedName());
    truncates.push_back(std::move(names));
    return absl::OkStatus();
  }
  absl::Status OnCommit(const TransactionCommit& commit) override {
    commits.push_back(commit);
    return absl::OkStatus();
  }
  absl::Status OnMessage(const LogicalMessage& message) override {
    messages.push_back(absl::StrCat(message.transactional ? "tx:" : "nontx:", message.prefix, ":", message.content));
    return absl::OkStatus();
  }

  std::vector<TransactionBegin> begins;
  std::vector<std::shared_ptr<const SourceRelation>> relations;
  std::vector<Row> rows;
  std::vector<std::vector<std::string>> truncates;
  std::vector<TransactionCommit> commits;
  std::vector<std::string> messages;

 private:
  static std::vector<std::optional<std::string>> Copy(const Tuple& tuple) {
    std::vector<std::optional<std::string>> out;
    for (const Datum& d : tuple) {
      if (d.is_null()) {
        out.push_back(std::nullopt);
      } else if (d.is_unchanged_toast()) {
        out.push_back(kToast);
      } else {
        out.push_back(std::string(d.view()));
      }
    }
    return out;
  }
};

class PgReplicationSourceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    walshift::testing::PgClusterOptions options;
    options.name = "source";
    absl::StatusOr<std::unique_ptr<PgCluster>> c = PgCluster::Start(options);
    ASSERT_TRUE(c.ok()) << c.status();
    cluster_ = std::move(c).value().release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  // A fresh database per test (named after the test) with two mapped tables.
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    db_ = absl::AsciiStrToLower(::testing::UnitTest::GetInstance()->current_test_info()->name());
    ASSERT_TRUE(cluster_->CreateDatabase(db_).ok());
    ASSERT_TRUE(cluster_
                    ->Exec(db_,
                           "CREATE SCHEMA legacy;"
                           "CREATE TABLE public.users (id int PRIMARY KEY, name text, bio text);"
                           "CREATE TABLE legacy.orders (id bigint PRIMARY KEY, note text);"
                           "ALTER TABLE legacy.orders REPLICA IDENTITY FULL;"
                           "CREATE TABLE public.unmapped (id int PRIMARY KEY);")
                    .ok());
  }

  PgReplicationSourceOptions Options() const {
    PgReplicationSourceOptions o;
    o.dsn = cluster_->Dsn(db_);
    o.slot = "slot_" + db_;
    o.publication = "pub " + db_;  // needs quoting
    o.tables = {"public.users", "legacy.orders"};
    return o;
  }

  absl::StatusOr<std::string> Value(const std::string& sql) const { return cluster_->QueryValue(db_, sql); }

  // Polls until `done` holds; fails the test after 30 s.
  static void PollUntil(PgReplicationSource& source, CollectingHandler& handler, const std::function<bool()>& done) {
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!done()) {
      ASSERT_LT(absl::Now(), deadline) << "timed out waiting for the replication stream";
      absl::StatusOr<int> n = source.Poll(handler, absl::Milliseconds(200));
      ASSERT_TRUE(n.ok()) << n.status();
      ASSERT_TRUE(source.SendFeedback(kInvalidLsn, false).ok());
    }
  }

  // Waits until the slot's confirmed_flush_lsn equals `lsn` (the walsender applies feedback
  // asynchronously).
  void ExpectConfirmedFlushBecomes(Lsn lsn) {
    absl::Time deadline = absl::Now() + absl::Seconds(30);
    std::string want = FormatLsn(lsn);
    std::string got;
    while (absl::Now() < deadline) {
      absl::StatusOr<std::string> v = Value(
          absl::StrCat("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'slot_", db_, "'"));
      ASSERT_TRUE(v.ok()) << v.status();
      got = *v;
      if (got == want) return;
      absl::SleepFor(absl::Milliseconds(20));
    }
    FAIL() << "confirmed_flush_lsn is " << got << ", expected " << want;
  }

  static PgCluster* cluster_;
  std::string db_;
};

PgCluster* PgReplicationSourceTest::cluster_ = nullptr;

TEST_F(PgReplicationSourceTest, CreatesPublicationAndSlotOnceOnly) {
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  absl::StatusOr<walshift::testing::PgRows> tables =
      cluster_->Query(db_, absl::StrCat("SELECT schemaname || '.' || tablename FROM pg_publication_tables "
                                        "WHERE pubname = 'pub ",
                                        db_, "'"));
  ASSERT_TRUE(tables.ok()) << tables.status();
  std::vector<std::string> names;
  for (const auto& row : *tables) names.push_back(*row[0]);
  EXPECT_THAT(names, UnorderedElementsAre("public.users", "legacy.orders"));
  absl::StatusOr<std::string> plugin =
      Value(absl::StrCat("SELECT plugin FROM pg_replication_slots WHERE slot_name = 'slot_", db_, "'"));
  ASSERT_TRUE(plugin.ok()) << plugin.status();
  EXPECT_EQ(*plugin, "pgoutput");
  source->reset();

  // A second Create finds both and changes nothing.
  source = PgReplicationSource::Create(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(*Value(absl::StrCat("SELECT count(*) FROM pg_publication_tables WHERE pubname = "
                                "'pub ",
                                db_, "'")),
            "2");
}

TEST_F(PgReplicationSourceTest, AddsMissingTablesToExistingPublication) {
  ASSERT_TRUE(cluster_->Exec(db_, absl::StrCat("CREATE PUBLICATION \"pub ", db_, "\" FOR TABLE users")).ok());
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  EXPECT_EQ(*Value(absl::StrCat("SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY "
                                "schemaname, tablename) FROM pg_publication_tables "
                                "WHERE pubname = 'pub ",
                                db_, "'")),
            "legacy.orders,public.users");
}

TEST_F(PgReplicationSourceTest, PublicationWithoutDeletesIsRejected) {
  ASSERT_TRUE(cluster_
                  ->Exec(db_, absl::StrCat("CREATE PUBLICATION \"pub ", db_,
                                           "\" FOR TABLE users WITH (publish = 'insert, update')"))
                  .ok());
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(Options());
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(), HasSubstr("does not publish deletes"));
}

TEST_F(PgReplicationSourceTest, MissingTableIsFailedPrecondition) {
  PgReplicationSourceOptions options = Options();
  options.tables.push_back("legacy.nope");
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(options);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(), HasSubstr("legacy.nope"));
}

TEST_F(PgReplicationSourceTest, UnreachableServerIsUnavailable) {
  PgReplicationSourceOptions options = Options();
  options.dsn = "host=127.0.0.1 port=1 dbname=x user=walshift password=s3cret connect_timeout=5";
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(options);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(source.status().message()), ::testing::Not(HasSubstr("s3cret")));
}

TEST_F(PgReplicationSourceTest, StreamsChangesAndConfirmsOnlyWhatWasFlushed) {
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> created = PgReplicationSource::Create(Options());
  ASSERT_TRUE(created.ok()) << created.status();
  PgReplicationSource& source = **created;
  absl::StatusOr<std::string> slot_start =
      Value(absl::StrCat("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'slot_", db_, "'"));
  ASSERT_TRUE(slot_start.ok());
  ASSERT_TRUE(source.Start(kInvalidLsn).ok());

  // A bio large enough to be stored out of line (TOAST), and hard to compress.
  const std::string big_bio = "(SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i)";
  // One Exec per transaction (a multi-statement string would be one implicit transaction).
  const std::vector<std::string> transactions = {
      absl::StrCat("INSERT INTO users VALUES (1, 'ann', ", big_bio, ")"),
      "UPDATE users SET name = 'anna' WHERE id = 1",
      "UPDATE users SET id = 2 WHERE id = 1",
      "INSERT INTO unmapped VALUES (1)",  // not published: no transaction is sent
      "BEGIN;"
      "INSERT INTO legacy.orders VALUES (10, 'a''b');"
      "UPDATE legacy.orders SET note = NULL WHERE id = 10;"
      "SELECT pg_logical_emit_message(true, 'walshift', 'tx');"
      "COMMIT",
      "DELETE FROM users WHERE id = 2",
      "DELETE FROM legacy.orders",
      "TRUNCATE users, legacy.orders",
      "SELECT pg_logical_emit_message(false, 'walshift', 'hb')",
  };
  for (const std::string& sql : transactions) ASSERT_TRUE(cluster_->Exec(db_, sql).ok()) << sql;

  CollectingHandler handler;
  // 7 transactions touch mapped tables; the non-transactional message comes last.
  PollUntil(source, handler, [&] { return handler.commits.size() >= 7 && handler.messages.size() >= 2; });
  ASSERT_EQ(handler.commits.size(), 7u);
  EXPECT_EQ(handler.begins.size(), 7u);
  EXPECT_THAT(handler.messages, ElementsAre("tx:walshift:tx", "nontx:walshift:hb"));

  ASSERT_EQ(handler.rows.size(), 7u);
  const std::string bio = *Value("SELECT string_agg(md5(i::text), '') FROM generate_series(1, 200) i");
  const Row& insert = handler.rows[0];
  EXPECT_EQ(insert.kind, ChangeKind::kInsert);
  EXPECT_EQ(insert.table, "public.users");
  EXPECT_THAT(insert.new_values, ElementsAre("1", "ann", bio));
  const Row& rename = handler.rows[1];
  EXPECT_EQ(rename.kind, ChangeKind::kUpdate);
  EXPECT_EQ(rename.old_kind, 0);  // key unchanged: no old tuple
  EXPECT_THAT(rename.new_values, ElementsAre("1", "anna", kToast));
  const Row& rekey = handler.rows[2];
  EXPECT_EQ(rekey.old_kind, 'K');
  EXPECT_THAT(rekey.old_values, ElementsAre("1", std::nullopt, std::nullopt));
  EXPECT_THAT(rekey.new_values, ElementsAre("2", "anna", kToast));
  EXPECT_EQ(handler.rows[3].table, "legacy.orders");
  EXPECT_THAT(handler.rows[3].new_values, ElementsAre("10", "a'b"));
  EXPECT_EQ(handler.rows[4].old_kind, 'O');  // REPLICA IDENTITY FULL
  EXPECT_THAT(handler.rows[4].old_values, ElementsAre("10", "a'b"));
  EXPECT_THAT(handler.rows[4].new_values, ElementsAre("10", std::nullopt));
  EXPECT_EQ(handler.rows[5].kind, ChangeKind::kDelete);
  EXPECT_THAT(handler.rows[5].old_values, ElementsAre("2", std::nullopt, std::nullopt));
  EXPECT_EQ(handler.rows[6].old_kind, 'O');
  EXPECT_THAT(handler.rows[6].old_values, ElementsAre("10", std::nullopt));
  ASSERT_EQ(handler.truncates.size(), 1u);
  EXPECT_THAT(handler.truncates[0], UnorderedElementsAre("public.users", "legacy.orders"));

  for (size_t i = 1; i < handler.commits.size(); ++i) {
    EXPECT_GT(handler.commits[i].end_lsn, handler.commits[i - 1].end_lsn);
  }
  EXPECT_GE(source.received_lsn(), handler.commits.back().end_lsn);

  // Nothing durable yet: whatever was received, the slot does not move.
  ASSERT_TRUE(source.SendFeedback(kInvalidLsn, /*force=*/true).ok());
  absl::StatusOr<int> n = source.Poll(handler, absl::Milliseconds(100));
  ASSERT_TRUE(n.ok()) << n.status();
  ExpectConfirmedFlushBecomes(*ParseLsn(*slot_start));

  // Confirming the third transaction moves the slot exactly there.
  const Lsn third = handler.commits[2].end_lsn;
  ASSERT_TRUE(source.SendFeedback(third, /*force=*/true).ok());
  ExpectConfirmedFlushBecomes(third);
  // Not forced and within the feedback interval: not sent.
  ASSERT_TRUE(source.SendFeedback(handler.commits[3].end_lsn, /*force=*/false).ok());
  // A lower value later never moves the slot back.
  ASSERT_TRUE(source.SendFeedback(handler.commits[1].end_lsn, /*force=*/true).ok());
  ExpectConfirmedFlushBecomes(handler.commits[3].end_lsn);

  // A new connection resumes after the confirmed position. The old walsender may still hold
  // the slot for a moment: that is kUnavailable, and retrying works.
  created->reset();
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> resumed = PgReplicationSource::Create(Options());
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  for (;;) {
    absl::Status st = (*resumed)->Start(kInvalidLsn);
    if (st.ok()) break;
    ASSERT_EQ(st.code(), absl::StatusCode::kUnavailable) << st;
    ASSERT_LT(absl::Now(), deadline) << st;
    absl::SleepFor(absl::Milliseconds(50));
  }
  CollectingHandler again;
  PollUntil(**resumed, again, [&] { return !again.messages.empty(); });
  // Transactions 5 to 7 and the non-transactional message, nothing confirmed before.
  ASSERT_EQ(again.commits.size(), 3u);
  EXPECT_EQ(again.commits[0].end_lsn, handler.commits[4].end_lsn);
  EXPECT_THAT(again.messages, ElementsAre("nontx:walshift:hb"));
}

TEST_F(PgReplicationSourceTest, TerminatedWalsenderIsUnavailable) {
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE((*source)->Start(kInvalidLsn).ok());
  CollectingHandler handler;
  ASSERT_TRUE((*source)->Poll(handler, absl::Milliseconds(10)).ok());
  ASSERT_TRUE(cluster_
                  ->Exec(db_, absl::StrCat("SELECT pg_terminate_backend(active_pid) FROM "
                                           "pg_replication_slots WHERE slot_name = 'slot_",
                                           db_, "' AND active_pid IS NOT NULL"))
                  .ok());
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  absl::StatusOr<int> n = 0;
  while (n.ok() && absl::Now() < deadline) n = (*source)->Poll(handler, absl::Milliseconds(200));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable) << n.status();
}

TEST_F(PgReplicationSourceTest, AnswersKeepalivesThatRequestAReply) {
  // The walsender asks for a reply after wal_sender_timeout / 2 of silence and gives up after
  // wal_sender_timeout. Periodic feedback is far off (10 s), so only the replies to keepalive
  // requests keep this stream alive.
  ASSERT_TRUE(cluster_->Exec(db_, absl::StrCat("ALTER DATABASE ", db_, " SET wal_sender_timeout = '1s'")).ok());
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(Options());
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE((*source)->Start(kInvalidLsn).ok());
  CollectingHandler handler;
  absl::Time until = absl::Now() + absl::Seconds(4);
  while (absl::Now() < until) {
    absl::StatusOr<int> n = (*source)->Poll(handler, absl::Milliseconds(100));
    ASSERT_TRUE(n.ok()) << n.status();
  }
  // Still streaming.
  ASSERT_TRUE(cluster_->Exec(db_, "INSERT INTO users VALUES (1, 'x', 'y')").ok());
  PollUntil(**source, handler, [&] { return !handler.commits.empty(); });
  EXPECT_EQ(handler.rows.size(), 1u);
}

TEST_F(PgReplicationSourceTest, IdleSourceIsAskedForAReplyBeforeTheReceiveTimeout) {
  // Nothing is written and the walsender has no reason to send anything for 30 s; the reader
  // asks it for a reply after half the receive timeout, so the stream stays up.
  PgReplicationSourceOptions o = Options();
  o.receive_timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(o);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE((*source)->Start(kInvalidLsn).ok());
  CollectingHandler handler;
  absl::Time until = absl::Now() + absl::Seconds(5);
  while (absl::Now() < until) {
    absl::StatusOr<int> n = (*source)->Poll(handler, absl::Milliseconds(100));
    ASSERT_TRUE(n.ok()) << n.status();
  }
}

TEST_F(PgReplicationSourceTest, HungWalsenderIsNoticedByTheReceiveTimeout) {
  // A stopped walsender: its kernel still acknowledges every packet, so no TCP timeout fires;
  // only the receive timeout notices that nothing comes.
  PgReplicationSourceOptions o = Options();
  o.receive_timeout = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(o);
  ASSERT_TRUE(source.ok()) << source.status();
  ASSERT_TRUE((*source)->Start(kInvalidLsn).ok());
  CollectingHandler handler;
  ASSERT_TRUE((*source)->Poll(handler, absl::Milliseconds(10)).ok());
  absl::StatusOr<std::string> pid;
  absl::Time deadline = absl::Now() + absl::Seconds(10);
  do {
    pid = Value(absl::StrCat("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'slot_", db_, "'"));
  } while (!pid.ok() && absl::Now() < deadline);
  ASSERT_TRUE(pid.ok()) << pid.status();
  ASSERT_EQ(kill(std::stoi(*pid), SIGSTOP), 0);
  absl::Time stopped = absl::Now();
  absl::StatusOr<int> n = 0;
  while (n.ok() && absl::Now() < stopped + absl::Seconds(20)) n = (*source)->Poll(handler, absl::Milliseconds(200));
  absl::Duration took = absl::Now() - stopped;
  kill(std::stoi(*pid), SIGCONT);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable) << n.status();
  EXPECT_THAT(std::string(n.status().message()), HasSubstr("considered dead")) << n.status();
  std::cout << "a stopped walsender noticed after " << absl::ToDoubleSeconds(took) << " s\n";
}

TEST_F(PgReplicationSourceTest, ConnectionDefaultsApplyUnlessTheDsnSetsThem) {
  ASSERT_TRUE(pg::SetConnectionDefaults("keepalives_idle=7 tcp_user_timeout=1234").ok());
  auto setting = [](PGconn* conn, const std::string& key) {
    std::string out;
    PQconninfoOption* opts = PQconninfo(conn);
    for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o)
      if (key == o->keyword && o->val != nullptr) out = o->val;
    PQconninfoFree(opts);
    return out;
  };
  absl::StatusOr<pg::ConnPtr> plain = pg::Connect(cluster_->Dsn(db_), "source");
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(setting(plain->get(), "keepalives_idle"), "7");
  EXPECT_EQ(setting(plain->get(), "tcp_user_timeout"), "1234");
  absl::StatusOr<pg::ConnPtr> own = pg::Connect(cluster_->Dsn(db_) + " keepalives_idle=9", "source");
  ASSERT_TRUE(own.ok()) << own.status();
  EXPECT_EQ(setting(own->get(), "keepalives_idle"), "9");
  EXPECT_EQ(setting(own->get(), "tcp_user_timeout"), "1234");
  EXPECT_FALSE(pg::SetConnectionDefaults("keepalives_idle").ok());
  ASSERT_TRUE(pg::SetConnectionDefaults("").ok());
}

TEST(PgReplicationSourceWalLevelTest, ReplicaWalLevelIsFailedPrecondition) {
  walshift::testing::PgClusterOptions options;
  options.name = "replica";
  options.extra_conf = {"wal_level = replica"};
  absl::StatusOr<std::unique_ptr<PgCluster>> cluster = PgCluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  ASSERT_TRUE((*cluster)->Exec("postgres", "CREATE TABLE t (id int PRIMARY KEY)").ok());
  PgReplicationSourceOptions o;
  o.dsn = (*cluster)->Dsn("postgres");
  o.slot = "s";
  o.publication = "p";
  o.tables = {"public.t"};
  absl::StatusOr<std::unique_ptr<PgReplicationSource>> source = PgReplicationSource::Create(o);
  EXPECT_EQ(source.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(source.status().message(), HasSubstr("wal_level"));
}

}  // namespace
}  // namespace walshift
