// Configuration loading: strict keys, every problem reported with its key path, exit code 2
// from the real walshiftd binary, and no secret in any message.

#include "daemon/config/config.h"

#include <array>
#include <cstdio>
#include <filesystem>
#include <unistd.h>

#include <fstream>
#include <map>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transforms/registry.h"
#include <sys/wait.h>

namespace walshift::config {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string SourceDir() {
  const char* d = std::getenv("WALSHIFT_SOURCE_DIR");
  return d ? d : WALSHIFT_SOURCE_DIR_DEFAULT;
}
std::string BinDir() {
  const char* d = std::getenv("WALSHIFT_BIN_DIR");
  return d ? d : WALSHIFT_BIN_DIR_DEFAULT;
}

// Runs a command, returns {exit code, stdout+stderr}.
std::pair<int, std::string> RunCommand(const std::string& cmd) {
  std::string out;
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

TEST(ConfigTest, FullExampleLoadsWithDefaults) {
  auto s = LoadSettingsText(R"(
pipeline: orders-v2
source: {dsn: "host=/tmp dbname=legacy user=app password=s3cret"}
targets: [{name: main, dsn: "host=/tmp dbname=new"}]
mappings:
  - source: orders
    table: app.orders_v2
    key: [order_id]
    columns:
      order_id: id
      total_cents: {sql: "round(amount * 100)::bigint"}
      origin: {const: legacy}
    truncate: ignore
)",
                            "test.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->slot, "walshift_orders_v2");
  EXPECT_EQ(s->publication, "walshift_orders_v2");
  ASSERT_EQ(s->mappings.size(), 1u);
  EXPECT_EQ(s->mappings[0].common.source(), "public.orders");
  EXPECT_EQ(s->mappings[0].common.target(), "main");
  EXPECT_EQ(s->mappings[0].common.module(), "columns");
  EXPECT_EQ(s->mappings[0].common.truncate(), v1::TRUNCATE_IGNORE);
  auto modules = transforms::BuildModules(*s, "test.yaml");
  ASSERT_TRUE(modules.ok()) << modules.status();
  EXPECT_EQ((*modules)[0]->source_table(), "public.orders");
}

TEST(ConfigTest, ReportsEveryProblemAtOnce) {
  auto s = LoadSettingsText(R"(
pipeline: p
sorce: {dsn: x}
targets: [{name: a}]
mappings: [{source: t, bogus: 1}]
extra: 1
)",
                            "multi.yaml");
  ASSERT_FALSE(s.ok());
  std::string m(s.status().message());
  EXPECT_THAT(m, HasSubstr("sorce: unknown key"));
  EXPECT_THAT(m, HasSubstr("extra: unknown key"));
  EXPECT_THAT(m, HasSubstr("source: required key missing"));
  EXPECT_THAT(m, HasSubstr("targets[0]: one of dsn, dsn_env or dsn_file is required"));
}

TEST(ConfigTest, OnErrorIsStopOrDeadLetterAndDeadLetterOnlyForPostgresTargets) {
  const std::string base = R"(
pipeline: p
source: {dsn: x}
targets: [{name: db, dsn: y}, {name: docs, kind: documents, path: /tmp/d}]
)";
  auto ok = LoadSettingsText(base + R"(apply: {on_error: dead_letter, dead_letter: {max_parked: 50}}
mappings: [{source: a, target: db, on_error: stop}, {source: b, target: docs}]
)",
                             "ok.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->proto.apply().on_error(), v1::ON_ERROR_DEAD_LETTER);
  EXPECT_EQ(ok->mappings[0].common.on_error(), v1::ON_ERROR_STOP);
  auto bad = LoadSettingsText(base + R"(apply: {on_error: park, dead_letter: {max_percent: 0}}
mappings: [{source: b, target: docs, on_error: dead_letter}]
)",
                              "bad.yaml");
  ASSERT_FALSE(bad.ok());
  std::string m(bad.status().message());
  EXPECT_THAT(m, HasSubstr("apply.on_error: 'park' is not one of stop, dead_letter"));
  EXPECT_THAT(m, HasSubstr("mappings[0].on_error: dead_letter parks rejected changes in a PostgreSQL target's "
                           "walshift.dead_letter table; target docs is a documents target"));
  EXPECT_THAT(m, HasSubstr("apply.dead_letter.max_percent: 0 is out of range (1..100)"));
}

TEST(ConfigTest, NetworkTimeoutsHaveDefaultsAndBadValuesAreRefusedByKeyPath) {
  const std::string base =
      "pipeline: p\nsource: {dsn: \"host=/tmp\"}\ntargets: [{name: a, dsn: \"host=/tmp\"}]\n"
      "mappings: [{source: t}]\n";
  auto defaults = LoadSettingsText(base, "defaults.yaml");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->connection_defaults,
            "connect_timeout=10 keepalives=1 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 "
            "tcp_user_timeout=60000");
  EXPECT_EQ(defaults->receive_timeout_s, 60u);

  auto set = LoadSettingsText(base +
                                  "network: {connect_timeout_s: 0, keepalives: false, keepalives_idle_s: 5, "
                                  "keepalives_interval_s: 2, keepalives_count: 4, tcp_user_timeout_ms: 0}\n",
                              "set.yaml");
  ASSERT_TRUE(set.ok()) << set.status();
  EXPECT_EQ(set->connection_defaults,
            "connect_timeout=0 keepalives=0 keepalives_idle=5 keepalives_interval=2 keepalives_count=4 "
            "tcp_user_timeout=0");
  auto off = LoadSettingsText(
      "pipeline: p\nsource: {dsn: \"host=/tmp\", receive_timeout_s: 0}\ntargets: [{name: a, dsn: x}]\n"
      "mappings: [{source: t}]\n",
      "off.yaml");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_EQ(off->receive_timeout_s, 0u);

  auto bad = LoadSettingsText(
      "pipeline: p\nsource: {dsn: \"host=/tmp\", receive_timeout_s: 1}\ntargets: [{name: a, dsn: x}]\n"
      "network: {connect_timeout_s: 1, keepalives_idle_s: 0, keepalives_interval_s: soon, keepalives_count: 101,\n"
      "          tcp_user_timeout_ms: 3600001, keepalives: maybe, keepalive_idle_s: 3}\n"
      "mappings: [{source: t}]\n",
      "bad.yaml");
  ASSERT_FALSE(bad.ok());
  std::string m(bad.status().message());
  EXPECT_THAT(m, HasSubstr("source.receive_timeout_s: 1 is out of range: 0 (off) or 2..3600 seconds"));
  EXPECT_THAT(m, HasSubstr("network.connect_timeout_s: 1 is out of range"));
  EXPECT_THAT(m, HasSubstr("network.keepalives_idle_s: 0 is out of range (1..86400)"));
  EXPECT_THAT(m, HasSubstr("network.keepalives_interval_s: 'soon' is not a non-negative whole number"));
  EXPECT_THAT(m, HasSubstr("network.keepalives_count: 101 is out of range (1..100)"));
  EXPECT_THAT(m, HasSubstr("network.tcp_user_timeout_ms: 3600001 is out of range (0..3600000)"));
  EXPECT_THAT(m, HasSubstr("network.keepalives: 'maybe' is not true or false"));
  EXPECT_THAT(m, HasSubstr("network.keepalive_idle_s: unknown key"));
}

TEST(ConfigTest, DsnFromEnvAndFile) {
  setenv("WALSHIFT_TEST_DSN", "host=/tmp dbname=from_env", 1);
  std::string file = testing::TempDir() + "/walshift_dsn";
  std::ofstream(file) << "host=/tmp dbname=from_file\n";
  auto s = LoadSettingsText("pipeline: p\nsource: {dsn_env: WALSHIFT_TEST_DSN}\ntargets: [{name: a, dsn_file: " + file +
                                "}]\nmappings: [{source: t}]\n",
                            "env.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->source_dsn, "host=/tmp dbname=from_env");
  EXPECT_EQ(s->targets[0].dsn, "host=/tmp dbname=from_file");
  // Under systemd a relative dsn_file is a credential (LoadCredential=target-dsn:...).
  std::string dir = testing::TempDir() + "/walshift_credentials";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/target-dsn") << "host=/tmp dbname=from_credential\n";
  setenv("CREDENTIALS_DIRECTORY", dir.c_str(), 1);
  auto c = LoadSettingsText("pipeline: p\nsource: {dsn: x}\ntargets: [{name: a, dsn_file: target-dsn}]\n"
                            "mappings: [{source: t}]\n",
                            "credentials.yaml");
  unsetenv("CREDENTIALS_DIRECTORY");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->targets[0].dsn, "host=/tmp dbname=from_credential");
}

// Kafka secrets come from the environment or a file, like DSNs, and stay out of the proto (which
// is what a dump or a fingerprint would show).
TEST(ConfigTest, KafkaSecretPropertiesFromEnvAndFile) {
  setenv("WALSHIFT_TEST_KAFKA_PASSWORD", "hunter2-env", 1);
  std::string file = testing::TempDir() + "/walshift_kafka_key_password";
  std::ofstream(file) << "hunter2-file\n";
  auto s = LoadSettingsText(
      "pipeline: p\nsource: {dsn: x}\ntargets: [{name: a, dsn: y}]\nmappings: [{source: t}]\n"
      "kafka: {brokers: \"k:9092\", properties: {security.protocol: sasl_ssl, sasl.username: walshift,\n"
      "        sasl.password_env: WALSHIFT_TEST_KAFKA_PASSWORD, ssl.key.password_file: " +
          file + "}}\n",
      "kafka.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  std::map<std::string, std::string> secrets(s->kafka_secrets.begin(), s->kafka_secrets.end());
  EXPECT_EQ(secrets, (std::map<std::string, std::string>{{"sasl.password", "hunter2-env"},
                                                         {"ssl.key.password", "hunter2-file"}}));
  EXPECT_EQ(s->proto.kafka().properties().size(), 2u);
  EXPECT_EQ(s->proto.kafka().properties().at("sasl.username"), "walshift");
  EXPECT_THAT(s->proto.DebugString(), Not(HasSubstr("hunter2")));
  auto bad = LoadSettingsText(
      "pipeline: p\nsource: {dsn: x}\ntargets: [{name: a, dsn: y}]\nmappings: [{source: t}]\n"
      "kafka: {brokers: \"k:9092\", properties: {sasl.password: a, sasl.password_env: NOT_SET_ANYWHERE_42,\n"
      "        ssl.key.password_env: NOT_SET_ANYWHERE_42, _file: x}}\n",
      "bad.yaml");
  ASSERT_FALSE(bad.ok());
  std::string m(bad.status().message());
  EXPECT_THAT(m, HasSubstr("kafka.properties.sasl.password_env: give only one of sasl.password, "
                           "sasl.password_env and sasl.password_file"));
  EXPECT_THAT(m, HasSubstr("kafka.properties.ssl.key.password_env: environment variable NOT_SET_ANYWHERE_42 is "
                           "not set or empty"));
  EXPECT_THAT(m, HasSubstr("kafka.properties._file: names no property"));
  unsetenv("WALSHIFT_TEST_KAFKA_PASSWORD");
}

// ha: the node defaults to the host name; a documents target and out-of-range timings are refused.
TEST(ConfigTest, HaNeedsPostgresTargetsAndSaneTimings) {
  auto s = LoadSettingsText(
      "pipeline: p\nsource: {dsn: x}\ntargets: [{name: a, dsn: y}]\nmappings: [{source: t}]\nha: {enabled: true}\n",
      "ha.yaml");
  ASSERT_TRUE(s.ok()) << s.status();
  char host[256] = {0};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(s->proto.ha().node(), host);
  auto bad = LoadSettingsText(
      "pipeline: p\nsource: {dsn: x}\ntargets: [{name: a, dsn: y}, {name: docs, kind: documents, path: /tmp/d}]\n"
      "mappings: [{source: t, target: a}]\nha: {enabled: true, lease_s: 1, poll_ms: 5}\n",
      "bad.yaml");
  ASSERT_FALSE(bad.ok());
  std::string m(bad.status().message());
  EXPECT_THAT(m, HasSubstr("ha.enabled: active/standby fences a replaced leader inside each PostgreSQL target's "
                           "transactions; target docs is a documents target"));
  EXPECT_THAT(m, HasSubstr("ha.lease_s: 1 is out of range (2..3600)"));
  EXPECT_THAT(m, HasSubstr("ha.poll_ms: 5 is out of range (10..60000)"));
}

// Every file in malformed/ starts with "# expect: <text>"; walshiftd must exit 2 and say it.
TEST(ConfigTest, MalformedConfigsExitTwoNamingTheProblem) {
  std::string dir = SourceDir() + "/tests/unit/config/malformed";
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path());
    std::string first;
    std::getline(in, first);
    ASSERT_EQ(first.rfind("# expect: ", 0), 0u) << entry.path();
    std::string expect = first.substr(10);
    auto [code, out] = RunCommand(BinDir() + "/walshiftd --config " + entry.path().string());
    EXPECT_EQ(code, 2) << entry.path() << "\n" << out;
    EXPECT_THAT(out, HasSubstr(expect)) << entry.path();
    EXPECT_THAT(out, Not(HasSubstr("hunter2"))) << "a password leaked: " << entry.path();
    ++count;
  }
  EXPECT_GE(count, 10);
}

TEST(ConfigTest, MissingFileAndBadArgumentsExitTwo) {
  EXPECT_EQ(RunCommand(BinDir() + "/walshiftd --config /nonexistent.yaml").first, 2);
  EXPECT_EQ(RunCommand(BinDir() + "/walshiftd --frobnicate").first, 2);
  EXPECT_EQ(RunCommand(BinDir() + "/walshiftd").first, 2);
}

TEST(ConfigTest, DocumentTargetsTakeAPathNotADsn) {
  auto ok = LoadSettingsText(R"(
pipeline: p
source: {dsn: x}
targets: [{name: docs, kind: documents, path: /var/lib/walshift/docs}]
mappings: [{source: users}]
)",
                             "t.yaml");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_TRUE(ok->targets[0].documents());
  EXPECT_EQ(ok->targets[0].path, "/var/lib/walshift/docs");
  setenv("WALSHIFT_TEST_DOCS", "/tmp/docs-from-env", 1);
  auto env = LoadSettingsText(R"(
pipeline: p
source: {dsn: x}
targets: [{name: docs, kind: documents, path_env: WALSHIFT_TEST_DOCS}]
mappings: [{source: users}]
)",
                              "t.yaml");
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->targets[0].path, "/tmp/docs-from-env");
  auto bad = LoadSettingsText(R"(
pipeline: p
source: {dsn: x}
targets:
  - {name: a, kind: documents}
  - {name: b, kind: documents, path: /x, dsn: "host=y"}
  - {name: c, path: /x, dsn: "host=y"}
  - {name: d, kind: documents, path_env: WALSHIFT_TEST_UNSET_VARIABLE}
  - {name: e, kind: couchdb, path: /x}
mappings: [{source: users, target: a}]
)",
                              "t.yaml");
  ASSERT_FALSE(bad.ok());
  std::string msg(bad.status().message());
  EXPECT_THAT(msg, HasSubstr("targets[0]: a documents target needs exactly one of path or path_env"));
  EXPECT_THAT(msg, HasSubstr("targets[1]: a documents target has a path, not a dsn"));
  EXPECT_THAT(msg, HasSubstr("targets[2].path: only for kind documents"));
  EXPECT_THAT(msg, HasSubstr("WALSHIFT_TEST_UNSET_VARIABLE is not set"));
  EXPECT_THAT(msg, HasSubstr("targets[4].kind"));
}

}  // namespace
}  // namespace walshift::config
