// The SQL of every kind of target operation for PostgreSQL targets (daemon/apply/pg_statements):
// pure rendering, no server. Integration tests run these statements; here the text itself is
// pinned so a change of shape is a visible change.

#include "daemon/apply/pg_statements.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace walshift {
namespace {

using ::testing::HasSubstr;

TargetValue V(std::string column, int param, std::string type = "") {
  TargetValue v;
  v.column = std::move(column);
  v.param = param;
  v.type = std::move(type);
  return v;
}

OpShape Shape(OpKind kind, std::vector<TargetValue> values, std::vector<int> key, int params) {
  OpShape s;
  s.kind = kind;
  s.table = "app.orders";
  s.source_table = "public.orders";
  s.values = std::move(values);
  s.key = std::move(key);
  s.num_params = params;
  s.id = NextOpShapeId();
  return s;
}

std::string Render(const OpShape& shape, int rows = 1, bool plain = false, std::string omit = "",
                   const std::map<std::string, std::string>* types = nullptr) {
  PgStatementPlan plan;
  if (omit.empty()) omit.assign(shape.values.size(), '0');
  PlanStatement(shape, omit, &plan);
  plan.column_types = types;
  return RenderStatement(plan, rows, plain);
}

TEST(PgStatementsTest, UpsertOfSeveralRowsUpdatesTheNonKeyColumns) {
  OpShape s = Shape(OpKind::kUpsert, {V("id", 0), V("total", 1)}, {0}, 2);
  EXPECT_EQ(Render(s, 2),
            "INSERT INTO \"app\".\"orders\" (\"id\", \"total\") VALUES ($1, $2), ($3, $4) ON CONFLICT (\"id\") "
            "DO UPDATE SET \"total\" = EXCLUDED.\"total\"");
  EXPECT_EQ(Render(s, 1, /*plain=*/true), "INSERT INTO \"app\".\"orders\" (\"id\", \"total\") VALUES ($1, $2)");
}

TEST(PgStatementsTest, AnUnchangedToastValueIsLeftOut) {
  OpShape s = Shape(OpKind::kUpsert, {V("id", 0), V("body", 1), V("n", 2)}, {0}, 3);
  EXPECT_EQ(Render(s, 1, false, "010"),
            "INSERT INTO \"app\".\"orders\" (\"id\", \"n\") VALUES ($1, $2) ON CONFLICT (\"id\") DO UPDATE SET "
            "\"n\" = EXCLUDED.\"n\"");
}

TEST(PgStatementsTest, SqlExpressionsReadTheirInputsAsTyped) {
  OpShape s = Shape(OpKind::kUpsert, {V("id", 0)}, {0}, 2);
  TargetValue cents;
  cents.column = "cents";
  cents.sql = "(amount * 100)::bigint";
  cents.sql_inputs = {0};
  s.values.push_back(cents);
  s.inputs.push_back({"amount", "numeric", 1});
  EXPECT_THAT(Render(s),
              HasSubstr("VALUES ($1, (SELECT (amount * 100)::bigint FROM (SELECT $2::numeric AS \"amount\") AS s))"));
}

TEST(PgStatementsTest, KeyMoveOnlyIntoAFreeKeyWithTypedComparisons) {
  OpShape s = Shape(OpKind::kUpdateOnly, {V("id", 0), V("total", 1)}, {0}, 3);
  s.match = {V("id", 2)};
  std::map<std::string, std::string> types = {{"id", "bigint"}};
  EXPECT_EQ(Render(s, 1, false, "", &types),
            "UPDATE \"app\".\"orders\" SET \"id\" = $1, \"total\" = $2 WHERE \"id\" = $3::bigint AND NOT EXISTS "
            "(SELECT 1 FROM \"app\".\"orders\" AS x WHERE x.\"id\" = $1::bigint)");
}

TEST(PgStatementsTest, DeleteKeepsARowOtherSourcesStillFill) {
  OpShape s = Shape(OpKind::kDelete, {V("id", 0)}, {0}, 1);
  s.keep_if_any = {"email", "score"};
  EXPECT_EQ(Render(s), "DELETE FROM \"app\".\"orders\" WHERE \"id\" = $1 AND num_nonnulls(\"email\", \"score\") = 0");
}

TEST(PgStatementsTest, ClearColumnsEmptiesThemInEveryRow) {
  OpShape s = Shape(OpKind::kClearColumns, {V("email", -1), V("score", -1)}, {}, 0);
  EXPECT_EQ(Render(s), "UPDATE \"app\".\"orders\" SET \"email\" = NULL, \"score\" = NULL");
}

// customers(id) holds orders: [{order_id, amount}] sorted by amount, then order_id.
OpShape ArrayShape(OpKind kind) {
  OpShape s;
  s.kind = kind;
  s.table = "public.customers";
  s.source_table = "public.orders";
  s.array.column = "orders";
  s.array.parent_columns = {"id"};
  if (kind == OpKind::kArrayUpsert) {
    s.values = {V("id", 0, "integer")};
    s.key = {0};
    s.array.element = {V("amount", 1, "numeric"), V("order_id", 2, "integer")};
    s.array.element_key = {1};
    s.num_params = 3;
  } else {
    s.array.element = {V("order_id", 0, "integer")};
    s.array.element_key = {0};
    s.num_params = 1;
  }
  s.array.sort_by = "amount";
  s.id = NextOpShapeId();
  return s;
}

TEST(PgStatementsTest, ArrayUpsertReplacesTheElementAndKeepsTheArraySorted) {
  OpShape s = ArrayShape(OpKind::kArrayUpsert);
  std::string sql = Render(s);
  EXPECT_THAT(sql, HasSubstr("INSERT INTO \"public\".\"customers\" AS t (\"id\", \"orders\") VALUES ($1::integer, "
                             "jsonb_build_array(jsonb_build_object('amount', $2::numeric, 'order_id', $3::integer)))"));
  EXPECT_THAT(sql, HasSubstr("ORDER BY e -> 'amount', e -> 'order_id'"));
  EXPECT_THAT(sql, HasSubstr("WHERE jsonb_build_object('order_id', e -> 'order_id') <> "
                             "jsonb_build_object('order_id', $3::integer)"));
  // Owned: never creates the parent.
  s.array.owned = true;
  EXPECT_THAT(Render(s), ::testing::StartsWith("UPDATE \"public\".\"customers\" AS t SET \"orders\" = "));
  // Moved from another parent: it leaves the others first, in the same statement.
  s.array.owned = false;
  s.array.leave_others = true;
  EXPECT_THAT(Render(s), ::testing::StartsWith("WITH leave AS (UPDATE \"public\".\"customers\" AS t SET \"orders\""));
  std::vector<std::string> run = RenderArrayRun(s);
  ASSERT_EQ(run.size(), 2u);
  EXPECT_THAT(run[0], HasSubstr("unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS i(p1, p2, p3, n)"));
  EXPECT_THAT(run[1], HasSubstr("ON CONFLICT (\"id\") DO UPDATE SET \"orders\""));
}

TEST(PgStatementsTest, ArrayRemovalFindsParentsByTheElementAndStaysSorted) {
  OpShape s = ArrayShape(OpKind::kArrayRemove);
  EXPECT_THAT(Render(s),
              HasSubstr("WHERE t.\"orders\" @> jsonb_build_array(jsonb_build_object('order_id', $1::integer))"));
  std::vector<std::string> run = RenderArrayRun(s);
  ASSERT_EQ(run.size(), 1u);
  EXPECT_THAT(run[0], HasSubstr("hit AS (SELECT DISTINCT h.\"id\" FROM k JOIN \"public\".\"customers\" AS h ON "
                                "h.\"orders\" @> jsonb_build_array(k.ws_key))"));
  EXPECT_THAT(run[0], HasSubstr("ORDER BY e -> 'amount', e -> 'order_id'"));
}

TEST(PgStatementsTest, ArrayCheckAnswersPresentEqualExpectedActualKey) {
  std::string check = RenderArrayCheck(ArrayShape(OpKind::kArrayUpsert), /*run=*/true);
  EXPECT_THAT(check, ::testing::StartsWith("SELECT i.n, x.e IS NOT NULL, x.e IS NOT DISTINCT FROM "));
  EXPECT_THAT(check, HasSubstr("ORDER BY i.n"));
}

}  // namespace
}  // namespace walshift
