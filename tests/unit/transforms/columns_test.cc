// The columns module without a database: expression inputs, binding checks and the operations
// a change produces.

#include "daemon/config/config.h"
#include "daemon/core/lsn.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "transforms/columns/columns_module.h"
#include "transforms/registry.h"

namespace walshift::transforms::columns {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

TEST(ExpressionInputsTest, FindsColumnNamesOnly) {
  std::vector<std::string> cols = {"amount", "qty", "Name", "status", "round"};
  EXPECT_THAT(ExpressionInputs("round(amount * 100)::bigint", cols), ElementsAre("amount"));
  EXPECT_THAT(ExpressionInputs("amount * qty + 'qty' ", cols), ElementsAre("amount", "qty"));
  EXPECT_THAT(ExpressionInputs("\"Name\" || name", cols), ElementsAre("Name"));
  EXPECT_THAT(ExpressionInputs("upper(status::text) -- qty", cols), ElementsAre("status"));
  EXPECT_THAT(ExpressionInputs("x.amount + E'it''s qty'", cols), ElementsAre());
  EXPECT_THAT(ExpressionInputs("now()", cols), ElementsAre());
  EXPECT_THAT(ExpressionInputs("AMOUNT::numeric(10,2)", cols), ElementsAre("amount"));
}

class FakeInspector : public SchemaInspector {
 public:
  absl::StatusOr<std::map<std::string, std::string>> TargetColumnTypes(const std::string&,
                                                                       const std::string&) override {
    return std::map<std::string, std::string>{};
  }
  absl::StatusOr<SourceTableInfo> Describe(const SourceRelation& rel, const std::string&) override {
    SourceTableInfo info;
    info.qualified_name = rel.QualifiedName();
    info.replica_identity = rel.replica_identity;
    info.primary_key = {"id"};
    for (const auto& c : rel.columns) {
      SourceColumnInfo ci;
      ci.name = c.name;
      ci.type = c.name == "amount" ? "numeric" : c.name == "id" ? "integer" : "text";
      ci.toastable = ci.type != "integer";
      ci.in_target = ci.type != "text" || c.name != "status";
      info.columns.push_back(ci);
    }
    return info;
  }
};

SourceRelation Orders(char identity = 'd') {
  SourceRelation r;
  r.oid = 16400;
  r.schema = "public";
  r.name = "orders";
  r.replica_identity = identity;
  r.columns = {{"id", 23, -1, true},
               {"customer_id", 25, -1, false},
               {"amount", 1700, -1, false},
               {"status", 25, -1, false},
               {"note", 25, -1, false}};
  r.version = 1;
  return r;
}

std::shared_ptr<const MappingModule> Build(const std::string& yaml) {
  auto s = config::LoadSettingsText(
      "pipeline: p\nsource: {dsn: x}\ntargets: [{name: main, dsn: y}]\nmappings:\n" + yaml, "t.yaml");
  EXPECT_TRUE(s.ok()) << s.status();
  auto modules = BuildModules(*s, "t.yaml");
  EXPECT_TRUE(modules.ok()) << modules.status();
  if (!modules.ok()) return nullptr;
  return (*modules)[0];
}

Datum Text(const char* s) { return Datum{DatumKind::kText, static_cast<uint32_t>(strlen(s)), s}; }
Datum Null() { return Datum{}; }
Datum Toast() { return Datum{DatumKind::kUnchangedToast, 0, nullptr}; }

struct Captured {
  OpKind kind;
  std::string table;
  std::vector<std::string> params;
};

std::vector<Captured> MapOne(const BoundMapping& b, const RowChange& c) {
  std::vector<Captured> out;
  auto st = b.Map(c, [&](const TargetOp& op) {
    Captured cap{op.shape->kind, op.shape->table, {}};
    for (int i = 0; i < op.shape->num_params; ++i) {
      const Datum& d = op.params[i];
      cap.params.push_back(d.is_null() ? "NULL" : d.is_unchanged_toast() ? "TOAST" : std::string(d.view()));
    }
    out.push_back(cap);
    return absl::OkStatus();
  });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

TEST(ColumnsModuleTest, RenameConstSqlUpsertAndDelete) {
  auto m = Build(R"(  - source: public.orders
    table: app.orders_v2
    key: [order_id]
    columns:
      order_id: id
      customer: customer_id
      total_cents: {sql: "round(amount * 100)::bigint"}
      origin: {const: legacy}
)");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_TRUE(bound.ok()) << bound.status();
  Tuple row = {Text("7"), Text("c1"), Text("12.34"), Text("new"), Null()};
  RowChange ins{ChangeKind::kInsert, &rel, nullptr, 0, &row, 0x10};
  auto ops = MapOne(**bound, ins);
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].kind, OpKind::kUpsert);
  EXPECT_EQ(ops[0].table, "app.orders_v2");
  // Columns sorted by name: customer, order_id, origin, total_cents(sql input amount).
  EXPECT_THAT(ops[0].params, ElementsAre("c1", "7", "legacy", "12.34"));

  Tuple key = {Text("7"), Null(), Null(), Null(), Null()};
  RowChange del{ChangeKind::kDelete, &rel, &key, 'K', nullptr, 0x20};
  ops = MapOne(**bound, del);
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_EQ(ops[0].kind, OpKind::kDelete);
  EXPECT_THAT(ops[0].params, ElementsAre("7"));
}

// A key change moves the target row (UPDATE ... SET key WHERE old key), so the values the update
// did not carry (unchanged TOAST) stay; the upsert after it creates the row if it was missing.
TEST(ColumnsModuleTest, KeyChangeMovesTheRowThenUpserts) {
  auto m = Build("  - source: public.orders\n");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_TRUE(bound.ok()) << bound.status();
  Tuple old_key = {Text("1"), Null(), Null(), Null(), Null()};
  Tuple row = {Text("2"), Text("c"), Text("1"), Text("s"), Toast()};
  RowChange upd{ChangeKind::kUpdate, &rel, &old_key, 'K', &row, 0x30};
  auto ops = MapOne(**bound, upd);
  ASSERT_EQ(ops.size(), 3u);
  EXPECT_EQ(ops[0].kind, OpKind::kUpdateOnly);
  EXPECT_THAT(ops[0].params, ElementsAre("2", "c", "1", "s", "TOAST", "1"));  // new values, then the old key
  EXPECT_EQ(ops[1].kind, OpKind::kDelete);  // what a taken new key left under the old one
  EXPECT_THAT(ops[1].params, ElementsAre("1"));
  EXPECT_EQ(ops[2].kind, OpKind::kUpsert);
  EXPECT_THAT(ops[2].params, ElementsAre("2", "c", "1", "s", "TOAST"));
}

TEST(ColumnsModuleTest, FullIdentityFillsUnchangedToastFromOldRow) {
  auto m = Build("  - source: public.orders\n");
  FakeInspector insp;
  SourceRelation rel = Orders('f');
  auto bound = m->Bind(rel, insp);
  ASSERT_TRUE(bound.ok()) << bound.status();
  Tuple old_row = {Text("1"), Text("c"), Text("1"), Text("s"), Text("big")};
  Tuple row = {Text("1"), Text("c"), Text("2"), Text("s"), Toast()};
  RowChange upd{ChangeKind::kUpdate, &rel, &old_row, 'O', &row, 0x30};
  auto ops = MapOne(**bound, upd);
  ASSERT_EQ(ops.size(), 1u);
  EXPECT_THAT(ops[0].params, ElementsAre("1", "c", "2", "s", "big"));
}

TEST(ColumnsModuleTest, RejectsMissingSourceColumn) {
  auto m = Build("  - source: public.orders\n    key: [id]\n    columns: {id: id, x: nope}\n");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_FALSE(bound.ok());
  EXPECT_THAT(std::string(bound.status().message()), HasSubstr("source column 'nope' does not exist in public.orders"));
}

TEST(ColumnsModuleTest, RejectsKeyOutsideReplicaIdentity) {
  auto m = Build("  - source: public.orders\n    key: [c]\n    columns: {c: customer_id}\n");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_FALSE(bound.ok());
  EXPECT_THAT(std::string(bound.status().message()), HasSubstr("not part of the source's replica identity"));
  SourceRelation full = Orders('f');
  EXPECT_TRUE(m->Bind(full, insp).ok());
}

TEST(ColumnsModuleTest, RejectsMixedToastableExpressionWithoutFullIdentity) {
  auto m = Build("  - source: public.orders\n    key: [id]\n    columns: {id: id, label: {sql: \"note || status\"}}\n");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_FALSE(bound.ok());
  EXPECT_THAT(std::string(bound.status().message()), HasSubstr("REPLICA IDENTITY FULL"));
  SourceRelation full = Orders('f');
  EXPECT_TRUE(m->Bind(full, insp).ok());
}

TEST(ColumnsModuleTest, SourceTypeMissingInTargetArrivesAsText) {
  auto m = Build("  - source: public.orders\n    key: [id]\n    columns: {id: id, s: {sql: \"upper(status)\"}}\n");
  FakeInspector insp;
  SourceRelation rel = Orders();
  auto bound = m->Bind(rel, insp);
  ASSERT_TRUE(bound.ok()) << bound.status();
  const OpShape* shape = nullptr;
  Tuple row = {Text("1"), Null(), Null(), Text("x"), Null()};
  RowChange ins{ChangeKind::kInsert, &rel, nullptr, 0, &row, 1};
  ASSERT_TRUE((*bound)
                  ->Map(ins,
                        [&](const TargetOp& op) {
                          shape = op.shape;
                          return absl::OkStatus();
                        })
                  .ok());
  ASSERT_NE(shape, nullptr);
  ASSERT_EQ(shape->inputs.size(), 1u);
  EXPECT_EQ(shape->inputs[0].name, "status");
  EXPECT_EQ(shape->inputs[0].type, "text");
}

TEST(LsnTest, FormatAndParse) {
  EXPECT_EQ(FormatLsn(0x16B374D848ULL), "16/B374D848");
  EXPECT_EQ(ParseLsn("16/B374D848"), 0x16B374D848ULL);
  EXPECT_EQ(ParseLsn("0/0"), 0u);
  EXPECT_FALSE(ParseLsn("16B374D848").has_value());
  EXPECT_FALSE(ParseLsn("x/1").has_value());
  EXPECT_FALSE(ParseLsn("/1").has_value());
}

}  // namespace
}  // namespace walshift::transforms::columns
