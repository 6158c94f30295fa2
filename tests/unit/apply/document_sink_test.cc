// DocumentSink and DocumentSet: the operations' semantics on documents, the file layout, group
// commit and checkpoint, replay, copy chunks, the store lock. Hermetic: temp dirs only.

#include "daemon/apply/documents/document_sink.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "daemon/apply/documents/document_store.h"
#include "gtest/gtest.h"
#include <sys/wait.h>

namespace walshift::documents {
namespace {

namespace fs = std::filesystem;

// A parameter: text, NULL or an unchanged TOAST value.
struct P {
  enum Kind { kText, kNull, kToast } kind = kText;
  std::string text;
  P(const char* t) : text(t) {}             // NOLINT: literals read as text
  P(std::string t) : text(std::move(t)) {}  // NOLINT
  static P Null() {
    P p("");
    p.kind = kNull;
    return p;
  }
  static P Toast() {
    P p("");
    p.kind = kToast;
    return p;
  }
};

TargetValue V(std::string column, int param, std::string type = "text") {
  TargetValue v;
  v.column = std::move(column);
  v.param = param;
  v.type = std::move(type);
  v.origin = v.column;
  return v;
}

OpShape Shape(OpKind kind, std::string table, std::vector<TargetValue> values, std::vector<int> key) {
  OpShape s;
  s.kind = kind;
  s.target = "docs";
  s.table = std::move(table);
  s.source_table = "public.src";
  s.values = std::move(values);
  s.key = std::move(key);
  s.id = NextOpShapeId();
  for (const auto& v : s.values) s.num_params = std::max(s.num_params, v.param + 1);
  return s;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file under `dir` except the lock, with its bytes.
std::map<std::string, std::string> Snapshot(const std::string& dir, bool with_meta = false) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    std::string rel = fs::relative(e.path(), dir).string();
    if (rel == "_walshift/lock" || (!with_meta && rel.rfind("_walshift/", 0) == 0)) continue;
    out[rel] = ReadAll(e.path());
  }
  return out;
}

class DocumentSinkTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tmp = getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/walshift-docs-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    dir_ = root_ + "/store";
  }
  void TearDown() override {
    sink_.reset();
    fs::remove_all(root_);
  }

  std::unique_ptr<DocumentSink> Open(const std::string& pipeline = "p1") {
    auto s = DocumentSink::Create({"docs", dir_, pipeline});
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *std::move(s) : nullptr;
  }

  TargetOp Op(const OpShape& shape, std::vector<P> params, Lsn lsn = 0x100) {
    auto& datums = datums_.emplace_back();
    for (const P& p : params) {
      auto& text = texts_.emplace_back(p.text);
      Datum d;
      d.kind = p.kind == P::kText   ? DatumKind::kText
               : p.kind == P::kNull ? DatumKind::kNull
                                    : DatumKind::kUnchangedToast;
      d.data = text.c_str();
      d.length = static_cast<uint32_t>(text.size());
      datums.push_back(d);
    }
    TargetOp op;
    op.shape = &shape;
    op.params = datums.data();
    op.lsn = lsn;
    return op;
  }

  void Apply(const OpShape& shape, std::vector<P> params) {
    absl::Status st = sink_->Apply(Op(shape, std::move(params)));
    ASSERT_TRUE(st.ok()) << st;
  }

  Lsn Commit(Lsn end_lsn) {
    TransactionCommit c;
    c.commit_lsn = end_lsn - 1;
    c.end_lsn = end_lsn;
    c.commit_time = 777;
    sink_->EndTransaction(c);
    auto lsn = sink_->Flush();
    EXPECT_TRUE(lsn.ok()) << lsn.status();
    return lsn.ok() ? *lsn : kInvalidLsn;
  }

  // The document's compact text, or "<none>".
  std::string Doc(const std::string& collection, const std::string& file) {
    auto d = DocumentSink::ReadDocument(dir_, collection, file);
    EXPECT_TRUE(d.ok()) << d.status();
    if (!d.ok() || !*d) return "<none>";
    return (*d)->Serialize();
  }

  std::string root_, dir_;
  std::unique_ptr<DocumentSink> sink_;
  std::deque<std::string> texts_;
  std::deque<std::vector<Datum>> datums_;
};

// public.users: id integer key; one shape writes name, another email (two mappings merged).
struct UserShapes {
  OpShape names = Shape(OpKind::kUpsert, "public.users", {V("id", 0, "integer"), V("name", 1)}, {0});
  OpShape emails = Shape(OpKind::kUpsert, "public.users", {V("id", 0, "integer"), V("email", 1)}, {0});
  OpShape del = Shape(OpKind::kDelete, "public.users", {V("id", 0, "integer")}, {0});
  OpShape update = Shape(OpKind::kUpdateOnly, "public.users", {V("id", 0, "integer"), V("name", 1)}, {0});
  OpShape move = [] {
    OpShape s = Shape(OpKind::kUpdateOnly, "public.users", {V("id", 0, "integer"), V("name", 1)}, {0});
    s.match = {V("id", 2, "integer")};
    s.num_params = 3;
    return s;
  }();
  OpShape truncate = Shape(OpKind::kTruncate, "public.users", {}, {});
  OpShape clear = [] {
    OpShape s = Shape(OpKind::kClearColumns, "public.users", {}, {});
    TargetValue v;
    v.column = "email";
    s.values = {v};
    return s;
  }();
};

TEST_F(DocumentSinkTest, UpsertMergesFieldsOfTwoShapesIntoOneDocument) {
  sink_ = Open();
  UserShapes u;
  Apply(u.names, {"1", "ann"});
  Apply(u.emails, {"1", "ann@example.com"});
  Apply(u.names, {"2", P::Null()});
  EXPECT_EQ(sink_->pending_changes(), 3u);
  EXPECT_EQ(Commit(0x200), Lsn{0x200});
  EXPECT_EQ(sink_->applied_changes(), 3u);
  EXPECT_EQ(Doc("users", "1.json"), R"({"email":"ann@example.com","id":1,"name":"ann"})");
  EXPECT_EQ(Doc("users", "2.json"), R"({"id":2,"name":null})");
  EXPECT_EQ(ReadAll(fs::path(dir_) / "users" / "1.json"), R"({"email":"ann@example.com","id":1,"name":"ann"})"
                                                          "\n");
  // An unchanged TOAST value is not written; the other fields are.
  Apply(u.names, {"1", P::Toast()});
  Apply(u.emails, {"1", "a@x"});
  Commit(0x300);
  EXPECT_EQ(Doc("users", "1.json"), R"({"email":"a@x","id":1,"name":"ann"})");
}

TEST_F(DocumentSinkTest, DeleteAndKeepIfAny) {
  sink_ = Open();
  UserShapes u;
  OpShape keep = u.del;
  keep.id = NextOpShapeId();
  keep.keep_if_any = {"email"};
  Apply(u.names, {"1", "ann"});
  Apply(u.emails, {"1", "a@x"});
  Apply(u.names, {"2", "bob"});
  Commit(0x200);
  Apply(keep, {"1"});   // email still set: stays
  Apply(keep, {"2"});   // no email: goes
  Apply(u.del, {"3"});  // absent: nothing
  Commit(0x300);
  EXPECT_EQ(Doc("users", "1.json"), R"({"email":"a@x","id":1,"name":"ann"})");
  EXPECT_EQ(Doc("users", "2.json"), "<none>");
  Apply(u.emails, {"1", P::Null()});
  Apply(keep, {"1"});
  Commit(0x400);
  EXPECT_EQ(Doc("users", "1.json"), "<none>");
  Apply(u.names, {"5", "eve"});
  Apply(u.del, {"5"});  // created and deleted in one group
  Commit(0x500);
  EXPECT_EQ(Doc("users", "5.json"), "<none>");
}

TEST_F(DocumentSinkTest, UpdateOnlyAbsentAndPresent) {
  sink_ = Open();
  UserShapes u;
  Apply(u.update, {"1", "nobody"});
  Apply(u.emails, {"2", "b@x"});
  Apply(u.update, {"2", "bob"});
  Commit(0x200);
  EXPECT_EQ(Doc("users", "1.json"), "<none>");
  EXPECT_EQ(Doc("users", "2.json"), R"({"email":"b@x","id":2,"name":"bob"})");
}

TEST_F(DocumentSinkTest, KeyMoveWithMatch) {
  sink_ = Open();
  UserShapes u;
  Apply(u.names, {"1", "ann"});
  Apply(u.emails, {"1", "a@x"});
  Apply(u.names, {"3", "cy"});
  Commit(0x200);
  Apply(u.move, {"2", "ann2", "1"});      // 1 → 2: free
  Apply(u.move, {"3", "bob", "2"});       // 2 → 3: taken, nothing happens
  Apply(u.move, {"9", "x", "8"});         // 8 absent: nothing
  Apply(u.move, {"3", P::Toast(), "3"});  // same key, TOASTed name: unchanged
  Commit(0x300);
  EXPECT_EQ(Doc("users", "1.json"), "<none>");
  EXPECT_EQ(Doc("users", "2.json"), R"({"email":"a@x","id":2,"name":"ann2"})");
  EXPECT_EQ(Doc("users", "3.json"), R"({"id":3,"name":"cy"})");
  EXPECT_EQ(Doc("users", "9.json"), "<none>");
}

TEST_F(DocumentSinkTest, TruncateAndClearColumns) {
  sink_ = Open();
  UserShapes u;
  Apply(u.emails, {"1", "a@x"});
  Apply(u.emails, {"2", "b@x"});
  Commit(0x200);
  Apply(u.emails, {"3", "c@x"});
  Apply(u.names, {"1", "ann"});
  Apply(u.clear, {});
  Commit(0x300);
  EXPECT_EQ(Doc("users", "1.json"), R"({"email":null,"id":1,"name":"ann"})");
  EXPECT_EQ(Doc("users", "2.json"), R"({"email":null,"id":2})");
  EXPECT_EQ(Doc("users", "3.json"), R"({"email":null,"id":3})");
  Apply(u.names, {"4", "dan"});
  Apply(u.truncate, {});
  Apply(u.names, {"2", "bo"});  // after the truncate: stays
  Commit(0x400);
  std::map<std::string, std::string> docs;
  ASSERT_TRUE(DocumentSink::ForEachDocument(dir_, "users", [&](const std::string& f, const Json& d) {
                docs[f] = d.Serialize();
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(docs, (std::map<std::string, std::string>{{"2.json", R"({"id":2,"name":"bo"})"}}));
}

// public.customers holds orders: [{order_id, amount}] sorted by amount, then order_id.
struct OrderShapes {
  OpShape upsert = [] {
    OpShape s = Shape(OpKind::kArrayUpsert, "public.customers", {V("customer_id", 0, "integer")}, {0});
    s.array.column = "orders";
    s.array.element = {V("order_id", 1, "integer"), V("amount", 2, "numeric(10,2)")};
    s.array.element_key = {0};
    s.array.sort_by = "amount";
    s.num_params = 3;
    return s;
  }();
  OpShape owned = [this] {
    OpShape s = upsert;
    s.id = NextOpShapeId();
    s.array.owned = true;
    return s;
  }();
  OpShape moving = [this] {
    OpShape s = upsert;
    s.id = NextOpShapeId();
    s.array.leave_others = true;
    return s;
  }();
  OpShape remove = [] {
    OpShape s = Shape(OpKind::kArrayRemove, "public.customers", {}, {});
    s.array.column = "orders";
    s.array.element = {V("order_id", 0, "integer")};
    s.array.element_key = {0};
    s.num_params = 1;
    return s;
  }();
};

TEST_F(DocumentSinkTest, ArrayUpsertSortsReplacesAndMovesElements) {
  sink_ = Open();
  OrderShapes o;
  UserShapes u;
  OpShape name = Shape(OpKind::kUpsert, "public.customers", {V("customer_id", 0, "integer"), V("name", 1)}, {0});
  Apply(o.upsert, {"1", "10", "5.00"});
  Apply(o.upsert, {"1", "11", "2.50"});
  Apply(o.upsert, {"1", "12", "2.5"});   // equal amount: by order_id
  Apply(o.upsert, {"1", "10", "1.00"});  // replaces 10, re-sorted
  Apply(o.owned, {"2", "20", "1"});      // owned, parent absent: nothing
  Apply(name, {"3", "cy"});
  Apply(o.owned, {"3", "30", "1"});  // owned, parent present
  Commit(0x200);
  EXPECT_EQ(Doc("customers", "1.json"),
            R"({"customer_id":1,"orders":[{"amount":1.00,"order_id":10},{"amount":2.50,"order_id":11},)"
            R"({"amount":2.5,"order_id":12}]})");
  EXPECT_EQ(Doc("customers", "2.json"), "<none>");
  EXPECT_EQ(Doc("customers", "3.json"), R"({"customer_id":3,"name":"cy","orders":[{"amount":1,"order_id":30}]})");

  // The element moves from parent 1 to parent 3 (built index), then again within the group
  // (index kept up to date), then leaves every parent.
  Apply(o.moving, {"3", "11", "9"});
  Commit(0x300);
  EXPECT_EQ(Doc("customers", "1.json"),
            R"({"customer_id":1,"orders":[{"amount":1.00,"order_id":10},{"amount":2.5,"order_id":12}]})");
  EXPECT_EQ(Doc("customers", "3.json"),
            R"({"customer_id":3,"name":"cy","orders":[{"amount":1,"order_id":30},{"amount":9,"order_id":11}]})");
  Apply(o.moving, {"4", "11", "8"});
  Apply(o.moving, {"1", "11", "7"});
  Apply(o.remove, {"12"});
  Commit(0x400);
  EXPECT_EQ(Doc("customers", "1.json"),
            R"({"customer_id":1,"orders":[{"amount":1.00,"order_id":10},{"amount":7,"order_id":11}]})");
  EXPECT_EQ(Doc("customers", "3.json"), R"({"customer_id":3,"name":"cy","orders":[{"amount":1,"order_id":30}]})");
  EXPECT_EQ(Doc("customers", "4.json"), R"({"customer_id":4,"orders":[]})");
  Apply(o.remove, {"30"});
  Apply(o.remove, {"99"});
  Commit(0x500);
  EXPECT_EQ(Doc("customers", "3.json"), R"({"customer_id":3,"name":"cy","orders":[]})");
  (void)u;
}

TEST_F(DocumentSinkTest, ArrayOperationsFindElementsWrittenBeforeTheSinkStarted) {
  sink_ = Open();
  OrderShapes o;
  Apply(o.upsert, {"1", "10", "5"});
  Apply(o.upsert, {"2", "20", "5"});
  Commit(0x200);
  sink_.reset();
  sink_ = Open();  // the index is built from the files
  Apply(o.moving, {"2", "10", "6"});
  Apply(o.remove, {"20"});
  Commit(0x300);
  EXPECT_EQ(Doc("customers", "1.json"), R"({"customer_id":1,"orders":[]})");
  EXPECT_EQ(Doc("customers", "2.json"), R"({"customer_id":2,"orders":[{"amount":6,"order_id":10}]})");
}

TEST_F(DocumentSinkTest, FileAndCollectionNames) {
  EXPECT_EQ(DocumentSink::CollectionName("public.users"), "users");
  EXPECT_EQ(DocumentSink::CollectionName("app.users"), "app.users");
  EXPECT_EQ(DocumentSink::CollectionName("walshift.backfill"), "walshift.backfill");
  EXPECT_EQ(DocumentSink::CollectionName("public.a/b"), "a%2Fb");
  EXPECT_EQ(DocumentSink::CollectionName("public._walshift"), "%5Fwalshift");
  EXPECT_EQ(DocumentSink::CollectionName("public..x"), "%2Ex");
  EXPECT_EQ(DocumentSink::DocumentFileName({"42"}), "42.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({"a/b"}), "a%2Fb.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({".x"}), "%2Ex.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({"a,b", "c"}), "a%2Cb,c.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({"a", "b,c"}), "a,b%2Cc.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({"\xC3\xA9 t"}), "%C3%A9%20t.json");
  EXPECT_EQ(DocumentSink::DocumentFileName({"A-z_9%"}), "A-z_9%25.json");
  std::string long_a(300, 'x'), long_b = long_a + "y";
  std::string fa = DocumentSink::DocumentFileName({long_a});
  std::string fb = DocumentSink::DocumentFileName({long_b});
  EXPECT_EQ(fa.size(), 180u + 1 + 16 + 5);
  EXPECT_EQ(fa.substr(0, 181), std::string(180, 'x') + "~");
  EXPECT_NE(fa, fb);
  EXPECT_EQ(fa, DocumentSink::DocumentFileName({long_a}));
  EXPECT_EQ(DocumentSink::DocumentFileName({std::string(200, 'x')}), std::string(200, 'x') + ".json");

  sink_ = Open();
  OpShape s = Shape(OpKind::kUpsert, "app.things", {V("k1", 0), V("k2", 1), V("v", 2)}, {0, 1});
  Apply(s, {"a/b", ".hidden,", "1"});
  Apply(s, {long_a, "\xE2\x82\xAC", "2"});
  Commit(0x200);
  EXPECT_EQ(Doc("app.things", "a%2Fb,%2Ehidden%2C.json"), R"({"k1":"a/b","k2":".hidden,","v":"1"})");
  EXPECT_EQ(Doc("app.things", DocumentSink::DocumentFileName({long_a, "\xE2\x82\xAC"})),
            absl::StrCat(R"({"k1":")", long_a, R"(","k2":"€","v":"2"})"));
  // A NULL key is refused as a rejected value (the pipeline isolates its transaction), naming
  // target, table, key and LSN.
  absl::Status st = sink_->Apply(Op(s, {P::Null(), "x", "3"}, 0x1234));
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("target docs"), std::string::npos) << st;
  EXPECT_NE(st.message().find("app.things"), std::string::npos) << st;
  EXPECT_NE(st.message().find("k1=NULL"), std::string::npos) << st;
  EXPECT_NE(st.message().find("0/1234"), std::string::npos) << st;
  // The group cannot be committed after an error.
  EXPECT_FALSE(sink_->Flush().ok());
}

TEST_F(DocumentSinkTest, FlushWritesTheCheckpointAndReopeningReadsIt) {
  sink_ = Open();
  EXPECT_EQ(sink_->durable_lsn(), kInvalidLsn);
  EXPECT_EQ(*DocumentSink::ReadCheckpoint(dir_, "p1"), kInvalidLsn);
  EXPECT_EQ(*sink_->Flush(), kInvalidLsn);  // nothing open
  UserShapes u;
  Apply(u.names, {"1", "ann"});
  EXPECT_EQ(Commit(0x16B3748), Lsn{0x16B3748});
  auto cp = Json::Parse(ReadAll(fs::path(dir_) / "_walshift" / "checkpoint.p1.json"));
  ASSERT_TRUE(cp.ok());
  EXPECT_EQ(cp->Find("pipeline")->string_value(), "p1");
  EXPECT_EQ(cp->Find("lsn")->string_value(), "0/16B3748");
  EXPECT_EQ(cp->Find("commit_time")->number_text(), "777");
  EXPECT_EQ(cp->Find("written_at")->type(), Json::Type::kNumber);
  // An empty transaction still moves the checkpoint.
  TransactionCommit c;
  c.end_lsn = 0x2000000;
  sink_->EndTransaction(c);
  EXPECT_EQ(*sink_->Flush(), Lsn{0x2000000});
  sink_.reset();
  sink_ = Open();
  EXPECT_EQ(sink_->durable_lsn(), Lsn{0x2000000});
  EXPECT_EQ(*DocumentSink::ReadCheckpoint(dir_, "p1"), Lsn{0x2000000});
  EXPECT_EQ(*DocumentSink::ReadCheckpoint(dir_, "other"), kInvalidLsn);
  // No temporary files or commit records are left behind.
  for (const auto& [file, bytes] : Snapshot(dir_, true)) EXPECT_EQ(file.find(".tmp"), std::string::npos) << file;
  EXPECT_EQ(Snapshot(dir_, true).size(), 2u);
}

TEST_F(DocumentSinkTest, DestroyingWithoutFlushWritesNothing) {
  sink_ = Open();
  UserShapes u;
  Apply(u.names, {"1", "ann"});
  Commit(0x200);
  auto before = Snapshot(dir_, true);
  Apply(u.names, {"1", "changed"});
  Apply(u.names, {"2", "new"});
  Apply(u.truncate, {});
  sink_->EndTransaction(TransactionCommit{0x2ff, 0x300, 1});
  sink_.reset();
  EXPECT_EQ(Snapshot(dir_, true), before);
  sink_ = Open();
  EXPECT_EQ(sink_->durable_lsn(), Lsn{0x200});
}

TEST_F(DocumentSinkTest, ReplayingAGroupConvergesAndMatchesDocumentSet) {
  UserShapes u;
  OrderShapes o;
  struct Step {
    const OpShape* shape;
    std::vector<P> params;
  };
  std::vector<Step> group = {
      {&u.names, {"1", "ann"}},
      {&u.emails, {"1", "a@x"}},
      {&u.move, {"3", "bob3", "2"}},
      {&u.del, {"1"}},
      {&u.names, {"1", "ann again"}},
      {&u.clear, {}},
      {&u.emails, {"3", "c@x"}},
      {&o.upsert, {"1", "10", "5"}},
      {&o.upsert, {"2", "11", "1"}},
      {&o.moving, {"2", "10", "4"}},
      {&o.remove, {"11"}},
      {&o.upsert, {"1", "12", "0.5"}},
  };
  // Replayed on the state after it (Flush commits a group atomically, so a replay normally
  // starts from the state before it). A group that recreates a key it then moves away is not
  // idempotent that way (the second move finds the new key taken), hence 2 exists before.
  sink_ = Open();
  Apply(u.names, {"7", "before"});
  Apply(u.names, {"2", "bob"});
  Commit(0x100);
  auto run = [&](Lsn end) {
    for (const Step& s : group) Apply(*s.shape, s.params);
    Commit(end);
  };
  run(0x200);
  auto once = Snapshot(dir_);
  sink_.reset();
  sink_ = Open();
  run(0x200);
  EXPECT_EQ(Snapshot(dir_), once);
  sink_.reset();
  sink_ = Open();
  run(0x200);
  EXPECT_EQ(Snapshot(dir_), once);

  DocumentSet set("docs");
  ASSERT_TRUE(set.Apply(Op(u.names, {"7", "before"})).ok());
  ASSERT_TRUE(set.Apply(Op(u.names, {"2", "bob"})).ok());
  for (const Step& s : group) ASSERT_TRUE(set.Apply(Op(*s.shape, s.params)).ok());
  std::map<std::string, std::string> expected;
  for (const auto& [collection, docs] : set.documents()) {
    for (const auto& [file, doc] : docs) expected[collection + "/" + file] = doc.Serialize() + "\n";
  }
  EXPECT_EQ(expected, once);
  EXPECT_EQ(set.Find("users", "3.json")->Serialize(), R"({"email":"c@x","id":3,"name":"bob3"})");
}

TEST_F(DocumentSinkTest, CommitChunkAndCopyChunks) {
  sink_ = Open();
  UserShapes u;
  EXPECT_TRUE(sink_->CopyChunks("")->empty());
  Apply(u.names, {"1", "ann"});
  CopyChunk a{"public.users", "id", 0, 1000, 0x500, 1};
  ASSERT_TRUE(sink_->CommitChunk(a).ok());
  EXPECT_EQ(Doc("users", "1.json"), R"({"id":1,"name":"ann"})");
  EXPECT_EQ(sink_->durable_lsn(), kInvalidLsn);  // the checkpoint is not touched
  EXPECT_EQ(*DocumentSink::ReadCheckpoint(dir_, "p1"), kInvalidLsn);
  CopyChunk b{"public.users", "id", 1000, std::nullopt, 0x500, 0};
  CopyChunk c{"public.orders", "", std::nullopt, std::nullopt, 0x600, 12345678901};
  ASSERT_TRUE(sink_->CommitChunk(b).ok());
  ASSERT_TRUE(sink_->CommitChunk(c).ok());
  sink_.reset();
  sink_ = Open();
  auto users = sink_->CopyChunks("public.users");
  ASSERT_TRUE(users.ok()) << users.status();
  ASSERT_EQ(users->size(), 2u);
  EXPECT_EQ((*users)[0].lo, 0);
  EXPECT_EQ((*users)[0].hi, 1000);
  EXPECT_EQ((*users)[0].key_column, "id");
  EXPECT_EQ((*users)[0].rows, 1u);
  EXPECT_EQ((*users)[1].lo, 1000);
  EXPECT_FALSE((*users)[1].hi.has_value());
  EXPECT_EQ((*users)[1].snapshot_lsn, Lsn{0x500});
  auto all = sink_->CopyChunks("");
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[2].source_table, "public.orders");
  EXPECT_EQ((*all)[2].key_column, "");
  EXPECT_FALSE((*all)[2].lo.has_value());
  EXPECT_EQ((*all)[2].rows, 12345678901u);
  auto file = Json::Parse(ReadAll(fs::path(dir_) / "_walshift" / "copy_chunks.p1.json"));
  ASSERT_TRUE(file.ok());
  EXPECT_EQ(file->array()[0].Serialize(),
            R"({"hi":1000,"key_column":"id","lo":0,"rows":1,"snapshot_lsn":"0/500","source_table":"public.users"})");
  // A second sink of the same store in this process (the copy beside streaming) is allowed.
  auto second = DocumentSink::Create({"docs", dir_, "p1"});
  EXPECT_TRUE(second.ok()) << second.status();
}

TEST_F(DocumentSinkTest, AStoreLockedByAnotherProcessIsRefused) {
  int ready[2], done[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(done), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto s = DocumentSink::Create({"docs", dir_, "p1"});
    char c = s.ok() ? 'y' : 'n';
    (void)!write(ready[1], &c, 1);
    (void)!read(done[0], &c, 1);
    _exit(0);
  }
  char c = 0;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  auto refused = DocumentSink::Create({"docs", dir_, "p1"});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(refused.status().message().find("is in use by another walshiftd (lock _walshift/lock)"), std::string::npos)
      << refused.status();
  (void)!write(done[1], "x", 1);
  int wstatus;
  waitpid(child, &wstatus, 0);
  EXPECT_TRUE(DocumentSink::Create({"docs", dir_, "p1"}).ok());
}

TEST_F(DocumentSinkTest, ValidateShapeRefusesSql) {
  sink_ = Open();
  UserShapes u;
  OpShape sql = u.names;
  sql.id = NextOpShapeId();
  sql.values[1].sql = "upper($1)";
  absl::Status st = sink_->ValidateShape(sql);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(st.message(),
            "target docs is a document store, which cannot evaluate SQL: map column name of public.users (from "
            "public.src) from a source column or a constant, or add a generated column to the legacy table");
  EXPECT_EQ(sink_->Apply(Op(sql, {"1", "x"})).code(), absl::StatusCode::kFailedPrecondition);
  OpShape filtered = u.names;
  filtered.id = NextOpShapeId();
  filtered.condition = "$1 > 0";
  st = sink_->ValidateShape(filtered);
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("row filter"), std::string::npos) << st;
  OrderShapes o;
  OpShape element_sql = o.upsert;
  element_sql.array.element[1].sql = "$1 * 2";
  EXPECT_EQ(sink_->ValidateShape(element_sql).code(), absl::StatusCode::kFailedPrecondition);
  for (const OpShape* s : {&u.names, &u.emails, &u.del, &u.update, &u.move, &u.truncate, &u.clear, &o.upsert, &o.owned,
                           &o.moving, &o.remove}) {
    EXPECT_TRUE(sink_->ValidateShape(*s).ok()) << OpKindName(s->kind);
  }
}

TEST_F(DocumentSinkTest, MalformedFilesAreDataLoss) {
  sink_ = Open();
  UserShapes u;
  fs::create_directories(fs::path(dir_) / "users");
  std::ofstream(fs::path(dir_) / "users" / "1.json") << "{\"id\":1";
  absl::Status st = sink_->Apply(Op(u.names, {"1", "ann"}, 0x42));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(st.message().find("users/1.json"), std::string::npos) << st;
  EXPECT_NE(st.message().find("0/42"), std::string::npos) << st;
  sink_.reset();
  std::ofstream(fs::path(dir_) / "_walshift" / "checkpoint.p1.json") << "{\"lsn\":\"nope\"}";
  auto bad = DocumentSink::Create({"docs", dir_, "p1"});
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("checkpoint.p1.json"), std::string::npos) << bad.status();
}

TEST_F(DocumentSinkTest, CreateFinishesAnInterruptedCommit) {
  // The state a crash leaves after the commit record became durable, before any rename.
  fs::create_directories(fs::path(dir_) / "_walshift");
  fs::create_directories(fs::path(dir_) / "users");
  std::ofstream(fs::path(dir_) / "users" / "1.json") << "{\"id\":1}\n";
  std::ofstream(fs::path(dir_) / "users" / "2.json") << "{\"id\":2}\n";
  std::ofstream(fs::path(dir_) / "users" / ".1.json.9-0.tmp") << "{\"id\":1,\"name\":\"new\"}\n";
  std::ofstream(fs::path(dir_) / "_walshift" / "commit.9-0.json")
      << R"({"files":[["checkpoint.p1.json","{\"lsn\":\"0/300\",\"pipeline\":\"p1\"}\n"]],)"
      << R"("renames":[["users","1.json",".1.json.9-0.tmp"]],"unlinks":[["users","2.json"]]})";
  sink_ = Open();
  EXPECT_EQ(sink_->durable_lsn(), Lsn{0x300});
  EXPECT_EQ(Doc("users", "1.json"), R"({"id":1,"name":"new"})");
  EXPECT_EQ(Doc("users", "2.json"), "<none>");
  EXPECT_FALSE(fs::exists(fs::path(dir_) / "_walshift" / "commit.9-0.json"));
}

// Run by CrashBeforeCommitLeavesTheStoreBeforeTheGroup in a child process.
TEST_F(DocumentSinkTest, CrashChild) {
  const char* dir = getenv("WALSHIFT_DOCS_CRASH_DIR");
  if (dir == nullptr) GTEST_SKIP() << "run by CrashBeforeCommitLeavesTheStoreBeforeTheGroup";
  fs::remove_all(root_);  // this process dies without TearDown
  dir_ = dir;
  sink_ = Open();
  UserShapes u;
  Apply(u.names, {"1", "changed"});
  Apply(u.names, {"2", "new"});
  Commit(0x300);  // killed at apply.before_commit
  _exit(3);
}

TEST_F(DocumentSinkTest, CrashBeforeCommitLeavesTheStoreBeforeTheGroup) {
  sink_ = Open();
  UserShapes u;
  Apply(u.names, {"1", "ann"});
  Commit(0x200);
  sink_.reset();
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    setenv("WALSHIFT_CRASH_AT", "apply.before_commit:1", 1);
    setenv("WALSHIFT_DOCS_CRASH_DIR", dir_.c_str(), 1);
    execl("/proc/self/exe", "document_sink_test", "--gtest_filter=DocumentSinkTest.CrashChild", nullptr);
    _exit(127);
  }
  int wstatus = 0;
  waitpid(child, &wstatus, 0);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "child exit status " << wstatus;
  EXPECT_EQ(WTERMSIG(wstatus), SIGKILL);
  sink_ = Open();
  EXPECT_EQ(sink_->durable_lsn(), Lsn{0x200});
  EXPECT_EQ(Doc("users", "1.json"), R"({"id":1,"name":"ann"})");
  EXPECT_EQ(Doc("users", "2.json"), "<none>");
  // Replaying the group from the checkpoint converges.
  Apply(u.names, {"1", "changed"});
  Apply(u.names, {"2", "new"});
  Commit(0x300);
  EXPECT_EQ(Doc("users", "1.json"), R"({"id":1,"name":"changed"})");
  EXPECT_EQ(Doc("users", "2.json"), R"({"id":2,"name":"new"})");
}

}  // namespace
}  // namespace walshift::documents
