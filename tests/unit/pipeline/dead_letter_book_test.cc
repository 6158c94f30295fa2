// The pure parts of on_error: dead_letter: which rows an operation writes (parking behind is by
// them), the source change as stored and rebuilt for a retry, the parked changes connected by
// their rows, the request format, and the flood limit.

#include "daemon/pipeline/dead_letter.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace walshift {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Datum Text(const std::string& s) { return Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()}; }

OpShape Upsert(const std::string& table) {
  OpShape s;
  s.kind = OpKind::kUpsert;
  s.table = table;
  s.values = {{"id", 0, "", {}, "id", "integer"}, {"name", 1, "", {}, "name", "text"}};
  s.key = {0};
  s.num_params = 2;
  return s;
}

TEST(DeadLetterBookTest, OperationsOfOneRowShareARowKeyWhateverElseTheyWrite) {
  OpShape a = Upsert("public.accounts");
  OpShape b = a;
  b.values[1] = {"plan", 1, "", {}, "plan", "text"};  // another merged source
  OpShape del;
  del.kind = OpKind::kDelete;
  del.table = "public.accounts";
  del.values = {{"id", 0, "", {}, "id", "integer"}};
  del.key = {0};
  del.num_params = 1;
  std::string id = "2", name = "bob", plan = "pro", other = "3";
  Datum pa[2] = {Text(id), Text(name)}, pb[2] = {Text(id), Text(plan)}, pd[1] = {Text(id)}, po[2] = {Text(other), Text(name)};
  TargetOp oa{&a, pa}, ob{&b, pb}, od{&del, pd}, oo{&a, po};
  EXPECT_EQ(OpRowKeys(oa), OpRowKeys(ob));
  EXPECT_EQ(OpRowKeys(oa), OpRowKeys(od));
  EXPECT_NE(OpRowKeys(oa), OpRowKeys(oo));
  EXPECT_EQ(OpKeyText(oa), "id=2");
  EXPECT_EQ(OpValuesJson(ob), "{\"id\":\"2\",\"plan\":\"pro\"}");
}

TEST(DeadLetterBookTest, AnArrayElementCountsForItsParentAndForItselfSoThatARemoveWaitsBehindItsUpsert) {
  OpShape up;
  up.kind = OpKind::kArrayUpsert;
  up.table = "public.accounts";
  up.values = {{"id", 0, "", {}, "customer_id", "integer"}};
  up.key = {0};
  up.array.column = "orders";
  up.array.element = {{"id", 1, "", {}, "id", "integer"}, {"amount", 2, "", {}, "amount", "integer"}};
  up.array.element_key = {0};
  up.num_params = 3;
  OpShape rm;
  rm.kind = OpKind::kArrayRemove;
  rm.table = "public.accounts";
  rm.array.column = "orders";
  rm.array.element = {{"id", 0, "", {}, "id", "integer"}};
  rm.array.element_key = {0};
  rm.num_params = 1;
  std::string parent = "2", order = "20", amount = "5";
  Datum pu[3] = {Text(parent), Text(order), Text(amount)}, pr[1] = {Text(order)};
  TargetOp ou{&up, pu}, orm{&rm, pr};
  std::vector<std::string> ku = OpRowKeys(ou), kr = OpRowKeys(orm);
  ASSERT_EQ(ku.size(), 2u);
  ASSERT_EQ(kr.size(), 1u);
  EXPECT_EQ(ku[1], kr[0]);
  EXPECT_EQ(OpKeyText(ou), "id=2 element id=20");
  EXPECT_EQ(OpKeyText(orm), "element id=20");
}

TEST(DeadLetterBookTest, TheStoredSourceChangeIsRebuiltAgainstTheRelationTheSourceHasNow) {
  SourceRelation then;
  then.columns = {{"id"}, {"name"}, {"note"}, {"gone"}};
  std::string id = "7", name = "x \"quoted\"", gone = "old";
  Tuple old_key = {Text(id), Datum{}, Datum{}, Datum{}};
  Tuple row = {Text(id), Text(name), Datum{DatumKind::kUnchangedToast, 0, nullptr}, Text(gone)};
  RowChange change;
  change.kind = ChangeKind::kUpdate;
  change.relation = &then;
  change.old_tuple = &old_key;
  change.old_tuple_kind = 'K';
  change.new_tuple = &row;
  std::string json = SourceChangeJson(change);
  EXPECT_THAT(json, HasSubstr("\"unchanged\":[\"note\"]"));

  SourceRelation now;  // `gone` dropped, `added` added
  now.columns = {{"id"}, {"added"}, {"name"}, {"note"}};
  RebuiltChange rebuilt;
  ASSERT_TRUE(RebuildChange(json, ChangeKind::kUpdate, now, &rebuilt).ok());
  const Tuple& t = *rebuilt.change.new_tuple;
  EXPECT_EQ(t[0].view(), "7");
  EXPECT_TRUE(t[1].is_unchanged_toast());  // not in the change: left as the target has it
  EXPECT_EQ(t[2].view(), "x \"quoted\"");
  EXPECT_TRUE(t[3].is_unchanged_toast());
  ASSERT_NE(rebuilt.change.old_tuple, nullptr);
  EXPECT_EQ(rebuilt.change.old_tuple_kind, 'K');
  EXPECT_EQ((*rebuilt.change.old_tuple)[0].view(), "7");
  EXPECT_FALSE(RebuildChange("{\"old\":{}}", ChangeKind::kInsert, now, &rebuilt).ok());
}

ParkedChange Parked(Lsn commit, int seq, std::vector<std::string> keys) {
  ParkedChange p;
  p.commit_lsn = commit;
  p.seq = seq;
  p.row_keys = std::move(keys);
  return p;
}

TEST(DeadLetterBookTest, ParkedChangesAreConnectedThroughTheRowsTheyShareInStreamOrder) {
  DeadLetterBook book;
  book.Add(Parked(300, 1, {"t|id=3"}));
  book.Add(Parked(100, 1, {"t|id=1"}));
  book.Add(Parked(200, 1, {"t|id=1", "t.a[]|id=9"}));  // row 1 and an element
  book.Add(Parked(200, 2, {"t|id=2"}));
  book.Add(Parked(400, 1, {"u|id=5", "t.a[]|id=9"}));  // reaches row 1 through the element
  ASSERT_NE(book.Blocking({"t|id=2", "t|id=1"}), nullptr);
  EXPECT_EQ(book.Blocking({"t|id=2", "t|id=1"})->commit_lsn, 100u);
  EXPECT_EQ(book.Blocking({"t|id=4"}), nullptr);
  std::vector<std::pair<Lsn, int>> got;
  for (const ParkedChange* p : book.Connected({{100, 1}})) got.push_back(p->position());
  EXPECT_THAT(got, ElementsAre(std::make_pair(Lsn{100}, 1), std::make_pair(Lsn{200}, 1), std::make_pair(Lsn{400}, 1)));
  book.Remove({100, 1});
  EXPECT_EQ(book.Blocking({"t|id=1"})->commit_lsn, 200u);
  EXPECT_EQ(book.size(), 4u);
}

TEST(DeadLetterBookTest, RequestsRoundTripAndUnknownActionsAreRefused) {
  DeadLetterRequest r{"p", "main", "discard", "ops@host", "a\treason", {{0x1A2B3C8, 2}, {0x2000000, 1}}};
  DeadLetterRequest back;
  ASSERT_TRUE(ParseDeadLetterRequest(FormatDeadLetterRequest(r), &back).ok());
  EXPECT_EQ(back.reason, "a reason");
  EXPECT_EQ(back.changes, r.changes);
  EXPECT_FALSE(ParseDeadLetterRequest("p\tmain\tdrop\tx\ty\t0/1/1", &back).ok());
  EXPECT_FALSE(ParseDeadLetterRequest("p\tmain\tretry\tx\ty\t0/1", &back).ok());
}

TEST(DeadLetterBookTest, TheFloodLimitCountsParkedChangesAndTheirShareOfTheWindow) {
  absl::Time t = absl::FromUnixSeconds(1000000);
  DeadLetterLimit total(2, 100, absl::Seconds(60));
  EXPECT_TRUE(total.Admit(0, "main", t).ok());
  EXPECT_TRUE(total.Admit(1, "main", t).ok());
  EXPECT_THAT(std::string(total.Admit(2, "main", t).message()), HasSubstr("max_parked"));

  DeadLetterLimit share(1000, 10, absl::Seconds(60));
  for (int i = 0; i < 1000; ++i) share.OnChange();
  share.Tick(t);
  for (int i = 0; i < 200; ++i) share.OnChange();
  // 9 rejections never stop it; the 10th of 200 changes received in the window is 5 %.
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(share.Admit(i, "main", t + absl::Seconds(1)).ok()) << i;
  // Of 20 more received, rejecting 20 more: 30 of 220 (13.6 %) is over the limit.
  for (int i = 0; i < 20; ++i) share.OnChange();
  absl::Status st;
  for (int i = 0; i < 20 && st.ok(); ++i) st = share.Admit(10 + i, "main", t + absl::Seconds(2));
  EXPECT_THAT(std::string(st.message()), HasSubstr("max_percent (10%)"));
  // A minute later the window has moved on.
  for (int i = 0; i < 1000; ++i) share.OnChange();
  share.Tick(t + absl::Seconds(70));
  EXPECT_TRUE(share.Admit(40, "main", t + absl::Seconds(70)).ok());
}

}  // namespace
}  // namespace walshift
