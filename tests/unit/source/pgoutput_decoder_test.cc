#include "daemon/source/pgoutput_decoder.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemon/core/origin.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace walshift {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Builds pgoutput messages in network byte order.
class Writer {
 public:
  explicit Writer(char type) { bytes_.push_back(type); }
  Writer& U8(uint8_t v) {
    bytes_.push_back(static_cast<char>(v));
    return *this;
  }
  Writer& I16(int16_t v) { return BigEndian(static_cast<uint16_t>(v), 2); }
  Writer& I32(int32_t v) { return BigEndian(static_cast<uint32_t>(v), 4); }
  Writer& I64(int64_t v) { return BigEndian(static_cast<uint64_t>(v), 8); }
  Writer& Str(std::string_view s) {
    bytes_.append(s);
    bytes_.push_back('\0');
    return *this;
  }
  Writer& Raw(std::string_view s) {
    bytes_.append(s);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  Writer& BigEndian(uint64_t v, int n) {
    for (int i = n - 1; i >= 0; --i) bytes_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::string bytes_;
};

// One column of a tuple to encode: its kind byte ('n', 'u', 't', 'b') and text.
struct Col {
  char kind;
  std::string text;
};
Col Text(std::string s) { return {'t', std::move(s)}; }
Col Null() { return {'n', ""}; }
Col Toast() { return {'u', ""}; }

Writer& AppendTuple(Writer& w, const std::vector<Col>& cols) {
  w.I16(static_cast<int16_t>(cols.size()));
  for (const Col& c : cols) {
    w.U8(c.kind);
    if (c.kind == 't' || c.kind == 'b') w.I32(static_cast<int32_t>(c.text.size())).Raw(c.text);
  }
  return w;
}

std::string Begin(Lsn final_lsn, int64_t time, uint32_t xid) {
  return Writer('B').I64(final_lsn).I64(time).I32(xid).bytes();
}
std::string Commit(Lsn commit_lsn, Lsn end_lsn, int64_t time) {
  return Writer('C').U8(0).I64(commit_lsn).I64(end_lsn).I64(time).bytes();
}
struct ColDef {
  uint8_t flags;
  std::string name;
  uint32_t type;
  int32_t typmod;
};
std::string Relation(uint32_t oid, std::string schema, std::string name, char identity,
                     const std::vector<ColDef>& cols) {
  Writer w('R');
  w.I32(oid).Str(schema).Str(name).U8(identity).I16(static_cast<int16_t>(cols.size()));
  for (const ColDef& c : cols) w.U8(c.flags).Str(c.name).I32(c.type).I32(c.typmod);
  return w.bytes();
}
// The relation most tests use: public.users (id int4 key, name text, bio text).
std::string UsersRelation(uint32_t oid = 16384) {
  return Relation(oid, "public", "users", 'd', {{1, "id", 23, -1}, {0, "name", 25, -1}, {0, "bio", 25, -1}});
}
std::string Insert(uint32_t oid, const std::vector<Col>& cols) {
  Writer w('I');
  w.I32(oid).U8('N');
  return AppendTuple(w, cols).bytes();
}
std::string Update(uint32_t oid, char old_kind, const std::vector<Col>& old_cols, const std::vector<Col>& new_cols) {
  Writer w('U');
  w.I32(oid);
  if (old_kind != 0) AppendTuple(w.U8(old_kind), old_cols);
  return AppendTuple(w.U8('N'), new_cols).bytes();
}
std::string Delete(uint32_t oid, char old_kind, const std::vector<Col>& old_cols) {
  Writer w('D');
  w.I32(oid).U8(old_kind);
  return AppendTuple(w, old_cols).bytes();
}

// A copy of a Datum that outlives the message.
struct Value {
  DatumKind kind;
  std::string text;
  bool operator==(const Value& o) const { return kind == o.kind && text == o.text; }
};
Value V(std::string s) { return {DatumKind::kText, std::move(s)}; }
Value VNull() { return {DatumKind::kNull, ""}; }
Value VToast() { return {DatumKind::kUnchangedToast, ""}; }
void PrintTo(const Value& v, std::ostream* os) {
  if (v.kind == DatumKind::kNull)
    *os << "NULL";
  else if (v.kind == DatumKind::kUnchangedToast)
    *os << "TOAST";
  else
    *os << '"' << v.text << '"';
}

struct RecordedChange {
  ChangeKind kind;
  const SourceRelation* relation;
  char old_kind;
  std::optional<std::vector<Value>> old_values;
  std::optional<std::vector<Value>> new_values;
  Lsn lsn;
  const Tuple* new_tuple;
};

// Records every callback; checks the NUL-termination promise while the views are valid.
class RecordingHandler : public ChangeHandler {
 public:
  absl::Status OnBegin(const TransactionBegin& begin) override {
    begins.push_back(begin);
    return next_status;
  }
  absl::Status OnRelation(std::shared_ptr<const SourceRelation> relation) override {
    relations.push_back(std::move(relation));
    return next_status;
  }
  absl::Status OnChange(const RowChange& change) override {
    RecordedChange r{change.kind,  change.relation, change.old_tuple_kind, std::nullopt,
                     std::nullopt, change.lsn,      change.new_tuple};
    if (change.old_tuple != nullptr) r.old_values = Copy(*change.old_tuple);
    if (change.new_tuple != nullptr) r.new_values = Copy(*change.new_tuple);
    changes.push_back(std::move(r));
    return next_status;
  }
  absl::Status OnTruncate(const TruncateChange& truncate) override {
    truncates.push_back(truncate);
    return next_status;
  }
  absl::Status OnCommit(const TransactionCommit& commit) override {
    commits.push_back(commit);
    return next_status;
  }
  absl::Status OnMessage(const LogicalMessage& message) override {
    messages.push_back({message.transactional, message.lsn, std::string(message.prefix), std::string(message.content)});
    return next_status;
  }
  size_t total() const {
    return begins.size() + relations.size() + changes.size() + truncates.size() + commits.size() + messages.size();
  }

  struct Message {
    bool transactional;
    Lsn lsn;
    std::string prefix;
    std::string content;
  };
  std::vector<TransactionBegin> begins;
  std::vector<std::shared_ptr<const SourceRelation>> relations;
  std::vector<RecordedChange> changes;
  std::vector<TruncateChange> truncates;
  std::vector<TransactionCommit> commits;
  std::vector<Message> messages;
  absl::Status next_status = absl::OkStatus();

 private:
  static std::vector<Value> Copy(const Tuple& tuple) {
    std::vector<Value> out;
    for (const Datum& d : tuple) {
      if (d.kind == DatumKind::kText) {
        // The promise: NUL-terminated in place, usable as a C string.
        EXPECT_EQ(d.data[d.length], '\0');
        EXPECT_EQ(std::strlen(d.data), d.length);
      }
      out.push_back({d.kind, std::string(d.view())});
    }
    return out;
  }
};

class DecoderTest : public ::testing::Test {
 protected:
  // Decodes `message` from an exactly sized heap buffer with the NUL libpq puts at data[len],
  // so any read past the end is caught by ASan/valgrind.
  absl::Status Decode(const std::string& message, Lsn lsn = 0x16B3748) {
    std::vector<char> buf(message.begin(), message.end());
    buf.push_back('\0');
    buf.shrink_to_fit();
    return decoder_.Decode(buf.data(), message.size(), lsn, handler_);
  }
  // Relation 16384 announced and a transaction open.
  void Prepare() {
    ASSERT_TRUE(Decode(UsersRelation()).ok());
    ASSERT_TRUE(Decode(Begin(0x2000, 1, 7)).ok());
  }

  PgOutputDecoder decoder_;
  RecordingHandler handler_;
};

TEST_F(DecoderTest, BeginAndCommitFields) {
  ASSERT_TRUE(Decode(Begin(0x100000200ULL, 751234567890LL, 4242)).ok());
  ASSERT_EQ(handler_.begins.size(), 1u);
  EXPECT_EQ(handler_.begins[0].final_lsn, 0x100000200ULL);
  EXPECT_EQ(handler_.begins[0].commit_time, 751234567890LL);
  EXPECT_EQ(handler_.begins[0].xid, 4242u);

  ASSERT_TRUE(Decode(Commit(0x100000200ULL, 0x100000230ULL, 751234567891LL)).ok());
  ASSERT_EQ(handler_.commits.size(), 1u);
  EXPECT_EQ(handler_.commits[0].commit_lsn, 0x100000200ULL);
  EXPECT_EQ(handler_.commits[0].end_lsn, 0x100000230ULL);
  EXPECT_EQ(handler_.commits[0].commit_time, 751234567891LL);
}

TEST_F(DecoderTest, RelationIsCachedAndPublished) {
  ASSERT_TRUE(Decode(Relation(99, "", "pg_thing", 'f', {{1, "a", 23, -1}, {0, "b", 1043, 36}})).ok());
  ASSERT_EQ(handler_.relations.size(), 1u);
  const SourceRelation& r = *handler_.relations[0];
  EXPECT_EQ(r.oid, 99u);
  EXPECT_EQ(r.schema, "pg_catalog");  // empty namespace means pg_catalog
  EXPECT_EQ(r.name, "pg_thing");
  EXPECT_EQ(r.replica_identity, 'f');
  ASSERT_EQ(r.columns.size(), 2u);
  EXPECT_EQ(r.columns[0].name, "a");
  EXPECT_TRUE(r.columns[0].part_of_key);
  EXPECT_EQ(r.columns[0].type_oid, 23u);
  EXPECT_EQ(r.columns[1].name, "b");
  EXPECT_FALSE(r.columns[1].part_of_key);
  EXPECT_EQ(r.columns[1].type_oid, 1043u);
  EXPECT_EQ(r.columns[1].type_modifier, 36);
  EXPECT_EQ(decoder_.FindRelation(99), handler_.relations[0].get());
  EXPECT_EQ(decoder_.FindRelation(100), nullptr);
}

TEST_F(DecoderTest, InsertWithTextNullAndUnchangedToast) {
  Prepare();
  ASSERT_TRUE(Decode(Insert(16384, {Text("42"), Null(), Toast()}), 0x3000).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text(""), Text("ünïcode"), Text("x")}), 0x3100).ok());
  ASSERT_EQ(handler_.changes.size(), 2u);
  const RecordedChange& c = handler_.changes[0];
  EXPECT_EQ(c.kind, ChangeKind::kInsert);
  EXPECT_EQ(c.relation, decoder_.FindRelation(16384));
  EXPECT_EQ(c.lsn, 0x3000u);
  EXPECT_FALSE(c.old_values.has_value());
  EXPECT_EQ(c.old_kind, 0);
  EXPECT_THAT(*c.new_values, ElementsAre(V("42"), VNull(), VToast()));
  EXPECT_THAT(*handler_.changes[1].new_values, ElementsAre(V(""), V("ünïcode"), V("x")));
  EXPECT_EQ(handler_.changes[1].lsn, 0x3100u);
  // The tuple object is reused from message to message.
  EXPECT_EQ(handler_.changes[0].new_tuple, handler_.changes[1].new_tuple);
}

TEST_F(DecoderTest, UpdateWithKeyOldTuple) {
  Prepare();
  ASSERT_TRUE(Decode(Update(16384, 'K', {Text("1"), Null(), Null()}, {Text("2"), Text("bob"), Toast()})).ok());
  ASSERT_EQ(handler_.changes.size(), 1u);
  const RecordedChange& c = handler_.changes[0];
  EXPECT_EQ(c.kind, ChangeKind::kUpdate);
  EXPECT_EQ(c.old_kind, 'K');
  EXPECT_THAT(*c.old_values, ElementsAre(V("1"), VNull(), VNull()));
  EXPECT_THAT(*c.new_values, ElementsAre(V("2"), V("bob"), VToast()));
}

TEST_F(DecoderTest, UpdateWithFullOldTuple) {
  Prepare();
  ASSERT_TRUE(
      Decode(Update(16384, 'O', {Text("1"), Text("al"), Text("old bio")}, {Text("1"), Text("alice"), Text("new bio")}))
          .ok());
  ASSERT_EQ(handler_.changes.size(), 1u);
  const RecordedChange& c = handler_.changes[0];
  EXPECT_EQ(c.old_kind, 'O');
  EXPECT_THAT(*c.old_values, ElementsAre(V("1"), V("al"), V("old bio")));
  EXPECT_THAT(*c.new_values, ElementsAre(V("1"), V("alice"), V("new bio")));
}

TEST_F(DecoderTest, UpdateWithoutOldTuple) {
  Prepare();
  ASSERT_TRUE(Decode(Update(16384, 0, {}, {Text("1"), Text("a"), Null()})).ok());
  ASSERT_EQ(handler_.changes.size(), 1u);
  EXPECT_EQ(handler_.changes[0].old_kind, 0);
  EXPECT_FALSE(handler_.changes[0].old_values.has_value());
  EXPECT_THAT(*handler_.changes[0].new_values, ElementsAre(V("1"), V("a"), VNull()));
}

TEST_F(DecoderTest, Delete) {
  Prepare();
  ASSERT_TRUE(Decode(Delete(16384, 'K', {Text("7"), Null(), Null()}), 0x4000).ok());
  ASSERT_TRUE(Decode(Delete(16384, 'O', {Text("8"), Text("n"), Text("b")}), 0x4100).ok());
  ASSERT_EQ(handler_.changes.size(), 2u);
  EXPECT_EQ(handler_.changes[0].kind, ChangeKind::kDelete);
  EXPECT_EQ(handler_.changes[0].old_kind, 'K');
  EXPECT_EQ(handler_.changes[0].lsn, 0x4000u);
  EXPECT_FALSE(handler_.changes[0].new_values.has_value());
  EXPECT_THAT(*handler_.changes[0].old_values, ElementsAre(V("7"), VNull(), VNull()));
  EXPECT_EQ(handler_.changes[1].old_kind, 'O');
  EXPECT_THAT(*handler_.changes[1].old_values, ElementsAre(V("8"), V("n"), V("b")));
}

TEST_F(DecoderTest, TruncateTwoRelationsWithOptions) {
  Prepare();
  ASSERT_TRUE(Decode(Relation(500, "legacy", "orders", 'd', {{1, "id", 20, -1}})).ok());
  ASSERT_TRUE(Decode(Writer('T').I32(2).U8(3).I32(16384).I32(500).bytes(), 0x5000).ok());
  ASSERT_TRUE(Decode(Writer('T').I32(1).U8(1).I32(500).bytes()).ok());
  ASSERT_TRUE(Decode(Writer('T').I32(1).U8(2).I32(500).bytes()).ok());
  ASSERT_EQ(handler_.truncates.size(), 3u);
  const TruncateChange& t = handler_.truncates[0];
  ASSERT_EQ(t.relations.size(), 2u);
  EXPECT_EQ(t.relations[0]->QualifiedName(), "public.users");
  EXPECT_EQ(t.relations[1]->QualifiedName(), "legacy.orders");
  EXPECT_TRUE(t.cascade);
  EXPECT_TRUE(t.restart_identity);
  EXPECT_EQ(t.lsn, 0x5000u);
  EXPECT_TRUE(handler_.truncates[1].cascade);
  EXPECT_FALSE(handler_.truncates[1].restart_identity);
  EXPECT_FALSE(handler_.truncates[2].cascade);
  EXPECT_TRUE(handler_.truncates[2].restart_identity);
}

TEST_F(DecoderTest, TruncateOfUnknownRelationIsError) {
  Prepare();
  absl::Status st = Decode(Writer('T').I32(2).U8(0).I32(16384).I32(777).bytes());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("relation oid 777 before its RELATION message"));
  EXPECT_TRUE(handler_.truncates.empty());
}

TEST_F(DecoderTest, LogicalMessageTransactionalAndNot) {
  ASSERT_TRUE(
      Decode(Writer('M').U8(0).I64(0x77).Str("walshift.heartbeat").I32(3).Raw(std::string_view("a\0b", 3)).bytes())
          .ok());
  Prepare();
  ASSERT_TRUE(Decode(Writer('M').U8(1).I64(0x88).Str("p").I32(5).Raw("hello").bytes()).ok());
  ASSERT_EQ(handler_.messages.size(), 2u);
  EXPECT_FALSE(handler_.messages[0].transactional);
  EXPECT_EQ(handler_.messages[0].lsn, 0x77u);
  EXPECT_EQ(handler_.messages[0].prefix, "walshift.heartbeat");
  EXPECT_EQ(handler_.messages[0].content, std::string("a\0b", 3));
  EXPECT_TRUE(handler_.messages[1].transactional);
  EXPECT_EQ(handler_.messages[1].lsn, 0x88u);
  EXPECT_EQ(handler_.messages[1].prefix, "p");
  EXPECT_EQ(handler_.messages[1].content, "hello");
}

TEST_F(DecoderTest, TransactionalMessageOutsideTransactionIsError) {
  EXPECT_EQ(Decode(Writer('M').U8(1).I64(1).Str("p").I32(0).bytes()).code(), absl::StatusCode::kDataLoss);
}

TEST_F(DecoderTest, OriginAndTypeAreAccepted) {
  Prepare();
  EXPECT_TRUE(Decode(Writer('O').I64(0x1234).Str("origin_a").bytes()).ok());
  EXPECT_TRUE(Decode(Writer('Y').I32(90001).Str("public").Str("mood").bytes()).ok());
  EXPECT_EQ(handler_.total(), 2u);  // the Relation and Begin of Prepare() only
}

std::string Origin(const std::string& name) { return Writer('O').I64(0x1234).Str(name).bytes(); }

TEST_F(DecoderTest, TransactionOfAnIgnoredOriginIsDispatchedWithoutItsChanges) {
  decoder_.set_ignored_origins({"walshift_orders_main"});
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  ASSERT_TRUE(Decode(Begin(0x2000, 1, 7)).ok());
  ASSERT_TRUE(Decode(Origin("walshift_orders_main")).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("1"), Text("looped"), Null()})).ok());
  ASSERT_TRUE(Decode(Relation(16385, "public", "other", 'd', {{1, "id", 20, -1}})).ok());
  ASSERT_TRUE(Decode(Writer('M').U8(1).I64(0x2010).Str("p").I32(1).Raw("x").bytes()).ok());
  ASSERT_TRUE(Decode(Commit(0x2000, 0x2030, 1)).ok());
  EXPECT_EQ(handler_.begins.size(), 1u);
  EXPECT_EQ(handler_.commits.size(), 1u) << "the checkpoint still moves past it";
  EXPECT_TRUE(handler_.changes.empty());
  EXPECT_TRUE(handler_.messages.empty());
  EXPECT_EQ(handler_.relations.size(), 2u) << "relations are read, for the transactions after it";
  EXPECT_EQ(decoder_.ignored_transactions(), 1u);
  // Another origin, and no origin: replicated.
  ASSERT_TRUE(Decode(Begin(0x3000, 1, 8)).ok());
  ASSERT_TRUE(Decode(Origin("pg_16400")).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("2"), Text("b"), Null()})).ok());
  ASSERT_TRUE(Decode(Commit(0x3000, 0x3030, 1)).ok());
  ASSERT_TRUE(Decode(Begin(0x4000, 1, 9)).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("3"), Text("c"), Null()})).ok());
  ASSERT_TRUE(Decode(Insert(16385, {Text("4")})).ok());
  ASSERT_TRUE(Decode(Commit(0x4000, 0x4030, 1)).ok());
  ASSERT_EQ(handler_.changes.size(), 3u);
  EXPECT_EQ(decoder_.ignored_transactions(), 1u);
  EXPECT_EQ(Decode(Origin("walshift_orders_main")).code(), absl::StatusCode::kDataLoss)
      << "an Origin outside a transaction";
}

// An initial-copy worker writes with "<origin>/copy-N": ignoring the origin ignores those too,
// and nothing else that merely starts like it.
TEST_F(DecoderTest, CopyWorkersOfAnIgnoredOriginAreIgnoredToo) {
  decoder_.set_ignored_origins({"walshift_orders_main"});
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  int xid = 10;
  auto with_origin = [&](const std::string& origin, const std::string& id) {
    uint64_t lsn = 0x5000 + 0x100 * xid;
    ASSERT_TRUE(Decode(Begin(lsn, 1, xid++)).ok());
    ASSERT_TRUE(Decode(Origin(origin)).ok());
    ASSERT_TRUE(Decode(Insert(16384, {Text(id), Text("x"), Null()})).ok());
    ASSERT_TRUE(Decode(Commit(lsn, lsn + 0x30, 1)).ok());
  };
  with_origin("walshift_orders_main/copy-0", "1");
  with_origin("walshift_orders_main/copy-12", "2");
  with_origin("walshift_orders_main/copy-", "3");
  with_origin("walshift_orders_main/copy-1x", "4");
  with_origin("walshift_orders_main_2/copy-1", "5");
  EXPECT_EQ(decoder_.ignored_transactions(), 2u);
  ASSERT_EQ(handler_.changes.size(), 3u);
  EXPECT_EQ(CopyOriginName("walshift_orders_main", 3), "walshift_orders_main/copy-3");
  EXPECT_EQ(OriginFamily(CopyOriginName("walshift_orders_main", 3)), "walshift_orders_main");
}

TEST_F(DecoderTest, ChangeBeforeRelationIsError) {
  ASSERT_TRUE(Decode(Begin(1, 1, 1)).ok());
  absl::Status st = Decode(Insert(4242, {Text("1")}));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("change for relation oid 4242 before its RELATION message"));
  EXPECT_TRUE(handler_.changes.empty());
}

TEST_F(DecoderTest, ChangeOutsideTransactionIsError) {
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  EXPECT_EQ(Decode(Insert(16384, {Text("1"), Null(), Null()})).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode(Writer('T').I32(1).U8(0).I32(16384).bytes()).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode(Commit(1, 2, 3)).code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(Decode(Begin(1, 1, 1)).ok());
  EXPECT_EQ(Decode(Begin(1, 1, 1)).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(handler_.changes.empty());
}

TEST_F(DecoderTest, SecondRelationForSameOidHasNewVersion) {
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  ASSERT_TRUE(Decode(Relation(16384, "public", "users", 'f', {{1, "id", 23, -1}, {0, "name", 25, -1}})).ok());
  ASSERT_EQ(handler_.relations.size(), 2u);
  EXPECT_GT(handler_.relations[1]->version, handler_.relations[0]->version);
  EXPECT_NE(handler_.relations[0].get(), handler_.relations[1].get());
  // The first version stays valid for whoever holds it.
  EXPECT_EQ(handler_.relations[0]->columns.size(), 3u);
  EXPECT_EQ(decoder_.FindRelation(16384), handler_.relations[1].get());
  ASSERT_TRUE(Decode(Begin(1, 1, 1)).ok());
  // Changes now follow the new column count.
  EXPECT_FALSE(Decode(Insert(16384, {Text("1"), Null(), Null()})).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("1"), Null()})).ok());
  EXPECT_EQ(handler_.changes[0].relation, handler_.relations[1].get());
}

TEST_F(DecoderTest, VersionsIncreaseAcrossDecoders) {
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  PgOutputDecoder other;
  std::string m = UsersRelation();
  std::vector<char> buf(m.begin(), m.end());
  buf.push_back('\0');
  ASSERT_TRUE(other.Decode(buf.data(), m.size(), 1, handler_).ok());
  ASSERT_EQ(handler_.relations.size(), 2u);
  EXPECT_GT(handler_.relations[1]->version, handler_.relations[0]->version);
}

TEST_F(DecoderTest, TruncatedUpdateAtEveryLengthIsError) {
  Prepare();
  const std::string full = Update(16384, 'O', {Text("1"), Text("al"), Null()}, {Text("1"), Text("alice"), Toast()});
  ASSERT_TRUE(Decode(full).ok());  // the whole message is valid
  ASSERT_EQ(handler_.changes.size(), 1u);
  for (size_t len = 0; len < full.size(); ++len) {
    absl::Status st = Decode(full.substr(0, len));
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << "length " << len;
  }
  EXPECT_EQ(handler_.changes.size(), 1u);
}

TEST_F(DecoderTest, TruncationErrorNamesMessageAndOffset) {
  Prepare();
  std::string m = Insert(16384, {Text("12345"), Null(), Null()});
  // 'I' oid 'N' ncols 't' at offsets 0, 1, 5, 6, 8; the value length starts at offset 9.
  absl::Status st = Decode(m.substr(0, 12));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("truncated Insert message at offset 9 (length 12"));
}

TEST_F(DecoderTest, EveryMessageTypeTruncatedIsError) {
  Prepare();
  ASSERT_TRUE(Decode(Relation(500, "legacy", "orders", 'd', {{1, "id", 20, -1}})).ok());
  const std::vector<std::string> messages = {
      Begin(1, 2, 3),
      Commit(1, 2, 3),
      Writer('O').I64(1).Str("o").bytes(),
      Relation(501, "s", "t", 'i', {{1, "c", 23, -1}}),
      Writer('Y').I32(1).Str("s").Str("t").bytes(),
      Insert(16384, {Text("1"), Null(), Toast()}),
      Delete(16384, 'K', {Text("1"), Null(), Null()}),
      Writer('T').I32(1).U8(0).I32(500).bytes(),
      Writer('M').U8(1).I64(1).Str("p").I32(2).Raw("ab").bytes(),
  };
  for (const std::string& m : messages) {
    for (size_t len = 0; len < m.size(); ++len) {
      EXPECT_EQ(Decode(m.substr(0, len)).code(), absl::StatusCode::kDataLoss) << "type " << m[0] << " length " << len;
    }
  }
}

TEST_F(DecoderTest, TrailingBytesAreError) {
  Prepare();
  EXPECT_EQ(Decode(Insert(16384, {Text("1"), Null(), Null()}) + "x").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode(Commit(1, 2, 3) + std::string(1, '\0')).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(handler_.changes.empty());
}

TEST_F(DecoderTest, UnterminatedStringIsError) {
  // The relation name runs to the end of the message: the NUL at data[len] must not count.
  std::string m = Writer('R').I32(1).Str("public").Raw("users").bytes();
  absl::Status st = Decode(m);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("unterminated string in Relation message"));
}

TEST_F(DecoderTest, RandomGarbageNeverCrashes) {
  std::mt19937 rng(20240611);
  const std::string types = "BCORYIUDTMZ";
  std::vector<std::string> valid = {
      Begin(1, 2, 3),
      Commit(1, 2, 3),
      UsersRelation(),
      Insert(16384, {Text("1"), Null(), Toast()}),
      Update(16384, 'K', {Text("1"), Null(), Null()}, {Text("2"), Text("b"), Toast()}),
      Update(16384, 'O', {Text("1"), Text("a"), Null()}, {Text("2"), Text("b"), Null()}),
      Delete(16384, 'O', {Text("1"), Text("a"), Null()}),
      Writer('T').I32(1).U8(3).I32(16384).bytes(),
      Writer('M').U8(1).I64(1).Str("p").I32(2).Raw("ab").bytes(),
      Writer('Y').I32(1).Str("s").Str("t").bytes(),
      Writer('O').I64(1).Str("o").bytes(),
  };
  int ok = 0;
  for (int i = 0; i < 10000; ++i) {
    std::string m;
    if (i % 2 == 0) {
      // Pure garbage behind a plausible type byte (or none at all).
      size_t len = rng() % 64;
      for (size_t j = 0; j < len; ++j) m.push_back(static_cast<char>(rng() & 0xff));
      if (!m.empty() && rng() % 4 != 0) m[0] = types[rng() % types.size()];
    } else {
      // A valid message with a few bytes mutated, sometimes cut or extended.
      m = valid[rng() % valid.size()];
      int flips = 1 + rng() % 3;
      for (int f = 0; f < flips; ++f) m[rng() % m.size()] = static_cast<char>(rng() & 0xff);
      if (rng() % 4 == 0) m.resize(rng() % (m.size() + 1));
      if (rng() % 8 == 0) m.push_back(static_cast<char>(rng() & 0xff));
    }
    absl::Status st = Decode(m);
    if (st.ok()) {
      ++ok;
    } else {
      EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    }
  }
  // Mutations of valid messages decode successfully now and then; the point is no crash.
  EXPECT_GT(ok, 0);
}

TEST_F(DecoderTest, ColumnCountMismatchIsError) {
  Prepare();
  absl::Status st = Decode(Insert(16384, {Text("1"), Null()}));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("public.users has 2 columns"));
  EXPECT_EQ(Decode(Update(16384, 'K', {Text("1")}, {Text("1"), Null(), Null()})).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode(Delete(16384, 'K', {Text("1"), Null(), Null(), Null()})).code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(handler_.changes.empty());
}

TEST_F(DecoderTest, UnknownMessageTypeIsError) {
  absl::Status st = Decode(Writer('Z').I32(1).bytes());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("pgoutput: unknown message type 'Z' (0x5a)"));
  EXPECT_EQ(Decode(std::string(1, '\x01')).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(Decode("").code(), absl::StatusCode::kDataLoss);
}

TEST_F(DecoderTest, BinaryColumnIsError) {
  Prepare();
  absl::Status st = Decode(Insert(16384, {Text("1"), {'b', "\x01\x02"}, Null()}));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.message(), HasSubstr("binary value for column name of public.users"));
  EXPECT_TRUE(handler_.changes.empty());
}

TEST_F(DecoderTest, UnknownValueKindIsError) {
  Prepare();
  EXPECT_EQ(Decode(Insert(16384, {Text("1"), {'q', ""}, Null()})).code(), absl::StatusCode::kDataLoss);
}

TEST_F(DecoderTest, HandlerErrorIsReturnedAsIs) {
  Prepare();
  handler_.next_status = absl::FailedPreconditionError("target rejected");
  absl::Status st = Decode(Insert(16384, {Text("1"), Null(), Null()}));
  EXPECT_EQ(st, absl::FailedPreconditionError("target rejected"));
}

}  // namespace
// Protocol 2: a message inside a stream block carries its (sub)transaction's xid after the type.
std::string InStream(const std::string& message, uint32_t xid) {
  Writer w(message[0]);
  w.I32(static_cast<int32_t>(xid)).Raw(message.substr(1));
  return w.bytes();
}
std::string StreamStart(uint32_t xid, bool first) { return Writer('S').I32(xid).U8(first ? 1 : 0).bytes(); }
std::string StreamStop() { return Writer('E').bytes(); }
std::string StreamCommit(uint32_t xid, Lsn commit_lsn, Lsn end_lsn, int64_t time) {
  return Writer('c').I32(xid).U8(0).I64(commit_lsn).I64(end_lsn).I64(time).bytes();
}
std::string StreamAbort(uint32_t xid, uint32_t subxid) { return Writer('A').I32(xid).I32(subxid).bytes(); }

class StreamDecoderTest : public DecoderTest {
 protected:
  void SetUp() override { decoder_.set_protocol_version(2); }
  std::vector<std::string> Names() const {
    std::vector<std::string> out;
    for (const RecordedChange& c : handler_.changes) out.push_back(c.new_values ? (*c.new_values)[1].text : "-");
    return out;
  }
};

TEST_F(StreamDecoderTest, InterleavedStreamsAreDispatchedWholeAtTheirCommitInCommitOrder) {
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("1"), Text("a1"), Null()}), 100), 0x5000).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamStart(200, true)).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 200)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("2"), Text("b1"), Null()}), 200)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamStart(100, false)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("3"), Text("a2"), Toast()}), 100)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  EXPECT_EQ(handler_.total(), 0u) << "nothing is dispatched before a commit";
  EXPECT_EQ(decoder_.spool().transactions(), 2u);

  ASSERT_TRUE(Decode(StreamCommit(200, 0x9000, 0x9030, 11)).ok());
  ASSERT_TRUE(Decode(StreamCommit(100, 0x9100, 0x9130, 12)).ok());
  ASSERT_EQ(handler_.begins.size(), 2u);
  EXPECT_EQ(handler_.begins[0].xid, 200u);
  EXPECT_EQ(handler_.begins[0].final_lsn, 0x9000u);
  EXPECT_EQ(handler_.begins[1].final_lsn, 0x9100u);
  ASSERT_EQ(handler_.commits.size(), 2u);
  EXPECT_EQ(handler_.commits[1].end_lsn, 0x9130u);
  EXPECT_EQ(Names(), (std::vector<std::string>{"b1", "a1", "a2"}));
  EXPECT_EQ(handler_.changes[1].lsn, 0x5000u) << "a change keeps the LSN it was received at";
  EXPECT_EQ((*handler_.changes[2].new_values)[2], VToast());
  EXPECT_EQ(decoder_.spool().transactions(), 0u);
}

TEST_F(StreamDecoderTest, AbortOfASubtransactionDropsItAndTheSubtransactionsNestedInIt) {
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("1"), Text("top"), Null()}), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("2"), Text("sub101"), Null()}), 101)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("3"), Text("sub102"), Null()}), 102)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamAbort(100, 101)).ok());  // 102 began inside 101
  ASSERT_TRUE(Decode(StreamAbort(100, 102)).ok());
  ASSERT_TRUE(Decode(StreamStart(100, false)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("4"), Text("sub103"), Null()}), 103)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("5"), Text("top again"), Null()}), 100)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamCommit(100, 0x9000, 0x9030, 1)).ok());
  EXPECT_EQ(Names(), (std::vector<std::string>{"top", "sub103", "top again"}));
}

TEST_F(StreamDecoderTest, AbortedTransactionLeavesNothing) {
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("1"), Text("x"), Null()}), 100)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamAbort(100, 100)).ok());
  EXPECT_EQ(decoder_.spool().transactions(), 0u);
  ASSERT_TRUE(Decode(StreamCommit(100, 0x9000, 0x9030, 1)).ok());  // nothing of it left
  EXPECT_TRUE(handler_.changes.empty());
  EXPECT_TRUE(handler_.relations.empty()) << "a Relation inside an aborted stream is not applied";
  // Ordinary transactions go on between and after streams.
  ASSERT_TRUE(Decode(UsersRelation()).ok());
  ASSERT_TRUE(Decode(Begin(0x9100, 1, 300)).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("9"), Text("plain"), Null()})).ok());
  ASSERT_TRUE(Decode(Commit(0x9100, 0x9130, 1)).ok());
  EXPECT_EQ(Names(), (std::vector<std::string>{"plain"}));
}

TEST_F(StreamDecoderTest, StreamedTransactionOfAnIgnoredOriginIsDispatchedWithoutItsChanges) {
  decoder_.set_ignored_origins({"walshift_orders_main"});
  // The origin follows the first Stream Start of its transaction only, without an xid.
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  ASSERT_TRUE(Decode(Origin("walshift_orders_main")).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("1"), Text("looped"), Null()}), 100)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamStart(200, true)).ok());
  ASSERT_TRUE(Decode(Origin("pg_16400")).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 200)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("2"), Text("kept"), Null()}), 200)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamStart(100, false)).ok());
  ASSERT_TRUE(Decode(InStream(Insert(16384, {Text("3"), Text("looped too"), Null()}), 101)).ok());
  ASSERT_TRUE(Decode(StreamStop()).ok());
  ASSERT_TRUE(Decode(StreamCommit(200, 0x9000, 0x9030, 11)).ok());
  ASSERT_TRUE(Decode(StreamCommit(100, 0x9100, 0x9130, 12)).ok());
  EXPECT_EQ(Names(), (std::vector<std::string>{"kept"}));
  EXPECT_EQ(handler_.commits.size(), 2u);
  EXPECT_EQ(handler_.relations.size(), 2u);
  EXPECT_EQ(decoder_.ignored_transactions(), 1u);
  // An ordinary transaction after it is replicated.
  ASSERT_TRUE(Decode(Begin(0x9200, 1, 300)).ok());
  ASSERT_TRUE(Decode(Insert(16384, {Text("9"), Text("plain"), Null()})).ok());
  ASSERT_TRUE(Decode(Commit(0x9200, 0x9230, 1)).ok());
  EXPECT_EQ(Names(), (std::vector<std::string>{"kept", "plain"}));
}

TEST_F(StreamDecoderTest, StreamMessagesOutOfPlaceAreErrors) {
  EXPECT_EQ(Decode(StreamStart(100, false)).code(), absl::StatusCode::kDataLoss) << "a continuation without its start";
  EXPECT_EQ(Decode(StreamStop()).code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  EXPECT_EQ(Decode(Begin(0x2000, 1, 7)).code(), absl::StatusCode::kDataLoss) << "a Begin inside a stream block";
  EXPECT_EQ(Decode(Writer('I').bytes()).code(), absl::StatusCode::kDataLoss) << "no xid";
  ASSERT_TRUE(Decode(StreamStop()).ok());
  EXPECT_EQ(Decode(StreamStart(100, true)).code(), absl::StatusCode::kDataLoss) << "a first segment twice";
  Prepare();
  EXPECT_EQ(Decode(StreamCommit(100, 0x9000, 0x9030, 1)).code(), absl::StatusCode::kDataLoss)
      << "inside an ordinary transaction";
  // Protocol 1 knows none of them.
  PgOutputDecoder v1;
  std::string m = StreamStart(5, true);
  std::vector<char> buf(m.begin(), m.end());
  buf.push_back('\0');
  absl::Status st = v1.Decode(buf.data(), m.size(), 0x10, handler_);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("Stream Start"));
}

TEST_F(StreamDecoderTest, MalformedMessageInsideAStreamIsAnErrorAtItsCommit) {
  ASSERT_TRUE(Decode(StreamStart(100, true)).ok());
  ASSERT_TRUE(Decode(InStream(UsersRelation(), 100)).ok());
  ASSERT_TRUE(Decode(InStream(Writer('I').I32(16384).U8('N').I16(3).bytes(), 100)).ok());  // kept unread
  ASSERT_TRUE(Decode(StreamStop()).ok());
  absl::Status st = Decode(StreamCommit(100, 0x9000, 0x9030, 1));
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), ::testing::HasSubstr("Insert"));
}

// A walshiftd killed mid-stream leaves its spool directory; the next spool on the machine
// removes those of processes that no longer run, and only those.
TEST(StreamSpoolTest, RemovesTheDirectoriesOfProcessesThatNoLongerRun) {
  char parent_buf[] = "/tmp/walshift-spool-test-XXXXXX";
  ASSERT_NE(mkdtemp(parent_buf), nullptr);
  std::string parent = parent_buf;
  pid_t child = fork();
  if (child == 0) _exit(0);
  ASSERT_GT(child, 0);
  waitpid(child, nullptr, 0);  // its pid now names no process
  std::string dead = absl::StrCat(parent, "/walshift-stream-", child, "-abcdef");
  std::string alive = absl::StrCat(parent, "/walshift-stream-", getppid(), "-abcdef");
  for (const std::string& d : {dead, alive}) {
    ASSERT_EQ(mkdir(d.c_str(), 0700), 0);
    std::ofstream(d + "/123") << "spooled";
  }
  const char* old = getenv("TMPDIR");
  std::string saved = old ? old : "";
  setenv("TMPDIR", parent.c_str(), 1);
  {
    StreamSpool spool;
    ASSERT_TRUE(spool.Start(7, true).ok());
    EXPECT_NE(access(dead.c_str(), F_OK), 0) << "the dead process's spool is still there";
    EXPECT_EQ(access((alive + "/123").c_str(), F_OK), 0) << "a running process's spool was removed";
  }
  if (old) {
    setenv("TMPDIR", saved.c_str(), 1);
  } else {
    unsetenv("TMPDIR");
  }
  std::filesystem::remove_all(parent);
}

}  // namespace walshift
