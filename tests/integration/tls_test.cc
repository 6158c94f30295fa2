// Source and target over TLS with a server certificate the test makes (openssl: a CA, a server
// certificate for 127.0.0.1 and localhost) and sslmode=verify-full; every secret in a file (DSNs
// with passwords, the status token, a Kafka SASL password); and none of them anywhere a person or
// another process can read: walshiftd's log, /status, /metrics, Kafka events, walshiftctl's
// output, the process arguments.

#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "httplib.h"
#include "tests/integration/daemon_fixture.h"
#include "tests/testing/kafka_broker.h"
#include "tests/testing/subprocess.h"
#include "tests/testing/test_paths.h"

namespace walshift::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Makes a CA and a certificate it signed for the server in `dir` (ca.crt, server.crt,
// server.key), and a second CA that signed nothing (other-ca.crt). Empty on success.
std::string MakeCertificates(const std::string& dir) {
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  std::string script = absl::StrCat(
      "set -e; cd '", dir, "'\n",
      "openssl req -x509 ", ec, " -keyout ca.key -out ca.crt -days 2 -subj /CN=walshift-test-ca\n",
      "openssl req -x509 ", ec, " -keyout other-ca.key -out other-ca.crt -days 2 -subj /CN=walshift-other-ca\n",
      "openssl req ", ec, " -keyout server.key -out server.csr -subj /CN=localhost\n",
      "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext\n",
      "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 2 "
      "-extfile san.ext\n");
  SubprocessOptions o;
  o.argv = {"/bin/sh", "-c", script};
  auto r = Subprocess::Run(o);
  if (!r.ok()) return std::string(r.status().message());
  if (!r->status.success()) return absl::StrCat("openssl failed: ", r->stderr_text);
  return "";
}

std::string g_certs;  // the directory of the certificates

class TlsTest : public DaemonTest {
 protected:
  static void SetUpTestSuite() {
    auto dir = MakeTempDir("walshift-tls-");
    ASSERT_TRUE(dir.ok()) << dir.status();
    g_certs = *dir;
    std::string made = MakeCertificates(g_certs);
    if (!made.empty()) GTEST_SKIP() << "cannot make test certificates with openssl: " << made;
    PgClusterOptions o;
    o.data_files = {{"server.crt", ReadAll(g_certs + "/server.crt")}, {"server.key", ReadAll(g_certs + "/server.key")}};
    o.extra_conf = {"ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'"};
    StartClusters(o, o);
  }
};

constexpr char kDsnPassword[] = "dsn-secret-7f3a";
constexpr char kToken[] = "token-secret-91c2";
constexpr char kKafkaPassword[] = "kafka-secret-5d0e";

TEST_F(TlsTest, SourceAndTargetOverVerifiedTlsWithNoSecretAnywhere) {
  StartKafka();
  Source("CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL)");
  Target("CREATE TABLE accounts_v2 (id bigint PRIMARY KEY, mail text NOT NULL)");
  Source("INSERT INTO accounts SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 200) g");
  const std::string tls = absl::StrCat(" sslmode=verify-full sslrootcert=", g_certs, "/ca.crt password=", kDsnPassword);
  std::ofstream(dir_ + "/source.dsn") << source_cluster_->Dsn(source_db_) << tls << "\n";
  std::ofstream(dir_ + "/target.dsn") << target_cluster_->Dsn(target_db_) << tls << "\n";
  std::ofstream(dir_ + "/token") << kToken << "\n";
  std::ofstream(dir_ + "/kafka-password") << kKafkaPassword << "\n";
  const std::string mapping = R"(
mappings:
  - source: public.accounts
    table: public.accounts_v2
    key: [id]
    columns: {id: id, mail: email}
)";
  std::string config = WriteConfig(absl::StrCat(
      "pipeline: {PIPELINE}\nsource: {dsn_file: ", dir_, "/source.dsn}\n", "targets: [{name: main, dsn_file: ", dir_,
      "/target.dsn}]\n", "status: {listen: \"127.0.0.1:0\", token_file: ", dir_, "/token}\n",
      "kafka: {brokers: \"", kafka_->bootstrap(), "\", properties: {sasl.username: walshift, sasl.password_file: ",
      dir_, "/kafka-password}}\n", "monitor: {lag_interval_s: 1}\n", mapping));
  RunResult check = RunWalshiftd({"--config", config, "--check"});
  EXPECT_TRUE(check.status.success()) << check.stdout_text << check.stderr_text;
  ASSERT_TRUE(StartDaemon(config).ok());
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  Source("UPDATE accounts SET email = 'changed@example.com' WHERE id <= 10; DELETE FROM accounts WHERE id > 190");
  ASSERT_TRUE(WaitCaughtUp().ok()) << DaemonLog();
  EXPECT_EQ(TargetRows("SELECT count(*)::text, count(*) FILTER (WHERE mail = 'changed@example.com')::text "
                       "FROM accounts_v2"),
            (PgRows{{"190", "10"}}));

  // Every session walshiftd holds on either server is encrypted (the walsender included).
  const std::string sessions =
      "SELECT count(*) FILTER (WHERE s.ssl)::text, count(*) FILTER (WHERE NOT s.ssl)::text "
      "FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'walshiftd%'";
  PgRows on_source = SourceRows(sessions), on_target = TargetRows(sessions);
  ASSERT_EQ(on_source.size(), 1u);
  EXPECT_NE(on_source[0][0], "0");
  EXPECT_EQ(on_source[0][1], "0");
  EXPECT_NE(on_target[0][0], "0");
  EXPECT_EQ(on_target[0][1], "0");

  // No secret anywhere it could be read.
  int port = StatusPort();
  httplib::Client c("127.0.0.1", port);
  httplib::Headers auth = {{"Authorization", absl::StrCat("Bearer ", kToken)}};
  auto status = c.Get("/status", auth);
  auto metrics = c.Get("/metrics", auth);
  ASSERT_TRUE(status && status->status == 200);
  ASSERT_TRUE(metrics && metrics->status == 200);
  RunResult ctl_databases = Walshiftctl({"status", "--config", config});
  RunResult ctl_json = Walshiftctl({"status", "--config", config, "--json"});
  std::string cmdline = ReadAll(absl::StrCat("/proc/", daemon_->pid(), "/cmdline"));
  std::string events;
  for (const char* topic : {"walshift.lag", "walshift.state"})
    for (const KafkaRecord& r : ReadTopic(kafka_->bootstrap(), topic)) events += r.value;
  EXPECT_FALSE(events.empty()) << "no events arrived";
  EXPECT_TRUE(StopDaemon().success());
  const std::string log = ReadAll(dir_ + "/walshiftd.log");
  struct Place {
    const char* name;
    std::string text;
  };
  for (const Place& p : {Place{"the log", log}, Place{"/status", status->body}, Place{"/metrics", metrics->body},
                         Place{"walshiftctl status", ctl_databases.stdout_text + ctl_databases.stderr_text},
                         Place{"walshiftctl status --json", ctl_json.stdout_text + ctl_json.stderr_text},
                         Place{"the process arguments", cmdline}, Place{"Kafka events", events},
                         Place{"walshiftd --check", check.stdout_text + check.stderr_text}}) {
    for (const char* secret : {kDsnPassword, kToken, kKafkaPassword}) {
      EXPECT_THAT(p.text, Not(HasSubstr(secret))) << secret << " appears in " << p.name;
    }
  }
  EXPECT_THAT(log, HasSubstr("sslmode=verify-full"));  // the DSN is shown, its password is not
}

// verify-full refuses a server whose certificate another CA signed: walshiftd names the source
// and the reason, and never falls back to an unverified connection.
TEST_F(TlsTest, AServerCertificateFromAnotherCaIsRefused) {
  Source("CREATE TABLE accounts (id bigint PRIMARY KEY)");
  Target("CREATE TABLE accounts_v2 (id bigint PRIMARY KEY)");
  std::string config = WriteConfig(absl::StrCat(
      "pipeline: {PIPELINE}\nsource: {dsn: \"{SOURCE} sslmode=verify-full sslrootcert=", g_certs,
      "/other-ca.crt\"}\ntargets: [{name: main, dsn: \"{TARGET} sslmode=verify-full sslrootcert=", g_certs,
      "/ca.crt\"}]\nmappings: [{source: public.accounts, table: public.accounts_v2}]\n"));
  RunResult check = RunWalshiftd({"--config", config, "--check"});
  EXPECT_FALSE(check.status.success());
  std::string out = check.stdout_text + check.stderr_text;
  EXPECT_THAT(out, HasSubstr("source"));
  EXPECT_THAT(out, HasSubstr("certificate verify failed"));
}

}  // namespace
}  // namespace walshift::testing
