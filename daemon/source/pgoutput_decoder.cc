#include "daemon/source/pgoutput_decoder.h"

#include <atomic>
#include <cctype>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/origin.h"
#include "daemon/core/status_macros.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {

// Process-wide so that a relation version is never reused, not even by the decoder of a new
// connection: a handler that caches per (oid, version) can never mistake a new RELATION for an
// old one.
std::atomic<uint64_t> next_relation_version{1};

const char* MessageName(uint8_t type) {
  switch (type) {
    case 'B':
      return "Begin";
    case 'C':
      return "Commit";
    case 'O':
      return "Origin";
    case 'R':
      return "Relation";
    case 'Y':
      return "Type";
    case 'I':
      return "Insert";
    case 'U':
      return "Update";
    case 'D':
      return "Delete";
    case 'T':
      return "Truncate";
    case 'M':
      return "Message";
    case 'S':
      return "Stream Start";
    case 'E':
      return "Stream Stop";
    case 'c':
      return "Stream Commit";
    case 'A':
      return "Stream Abort";
    default:
      return "unknown";
  }
}

// "'Z' (0x5a)" for printable bytes, "0x01" otherwise.
std::string DescribeByte(uint8_t b) {
  if (std::isprint(b)) return absl::StrFormat("'%c' (0x%02x)", static_cast<char>(b), b);
  return absl::StrFormat("0x%02x", b);
}

absl::Status UnknownRelation(Oid oid, Lsn lsn) {
  return absl::DataLossError(absl::StrCat("pgoutput: change for relation oid ", oid,
                                          " before its RELATION message (LSN ", FormatLsn(lsn), ")"));
}

// NUL-terminates every text value of `tuple` in place, at data[length].
//
// Why this is safe: a text value is the last field of its column, so the byte after it is
// either the next column's kind byte, the 'N' marker between an old and a new tuple, or, for
// the last value of the message, data[len] of the whole message, the NUL byte the caller of
// Decode() guarantees (PQgetCopyData buffers have one). Decode() rejects trailing bytes, so
// there is no fourth case. All of those bytes have already been consumed, and this runs only
// after the whole message was decoded and bounds-checked, so no byte is overwritten before it
// is read. The written byte is never part of another value.
void TerminateTexts(Tuple& tuple) {
  for (Datum& d : tuple) {
    if (d.kind == DatumKind::kText) const_cast<char*>(d.data)[d.length] = '\0';
  }
}

}  // namespace

// A cursor over one message. Every read checks bounds first; a failed read leaves the cursor
// where the failed field starts and returns false, and status() then describes the failure.
class PgOutputDecoder::Reader {
 public:
  Reader(const char* data, size_t len, Lsn lsn) : data_(data), len_(len), lsn_(lsn) {}

  void set_type(uint8_t type) { type_ = type; }
  uint8_t type() const { return type_; }
  Lsn lsn() const { return lsn_; }
  size_t remaining() const { return len_ - pos_; }

  bool U8(uint8_t* v) {
    if (!Need(1)) return false;
    *v = static_cast<uint8_t>(data_[pos_++]);
    return true;
  }
  bool I16(int16_t* v) {
    uint64_t x;
    if (!BigEndian(2, &x)) return false;
    *v = static_cast<int16_t>(static_cast<uint16_t>(x));
    return true;
  }
  bool U32(uint32_t* v) {
    uint64_t x;
    if (!BigEndian(4, &x)) return false;
    *v = static_cast<uint32_t>(x);
    return true;
  }
  bool I32(int32_t* v) {
    uint32_t x;
    if (!U32(&x)) return false;
    *v = static_cast<int32_t>(x);
    return true;
  }
  bool U64(uint64_t* v) { return BigEndian(8, v); }
  bool I64(int64_t* v) {
    uint64_t x;
    if (!BigEndian(8, &x)) return false;
    *v = static_cast<int64_t>(x);
    return true;
  }
  // A NUL-terminated string; the NUL must lie inside the message (data[len] does not count).
  bool String(absl::string_view* s) {
    const void* nul = std::memchr(data_ + pos_, '\0', remaining());
    if (nul == nullptr) {
      problem_ = "unterminated string in";
      return false;
    }
    size_t n = static_cast<const char*>(nul) - (data_ + pos_);
    *s = absl::string_view(data_ + pos_, n);
    pos_ += n + 1;
    return true;
  }
  bool Bytes(size_t n, const char** p) {
    if (!Need(n)) return false;
    *p = data_ + pos_;
    pos_ += n;
    return true;
  }

  // The failure of the last read: "pgoutput: truncated Insert message at offset 13 (length 20,
  // LSN 0/16B3748)".
  absl::Status status() const { return absl::DataLossError(absl::StrCat("pgoutput: ", problem_, " ", Where())); }
  // A semantic problem found at the current offset.
  absl::Status Error(absl::string_view problem) const {
    return absl::DataLossError(absl::StrCat("pgoutput: ", problem, " in ", Where()));
  }
  // kDataLoss unless the whole message was consumed.
  absl::Status ExpectEnd() const {
    if (pos_ == len_) return absl::OkStatus();
    return Error(absl::StrCat(remaining(), " unexpected trailing byte(s)"));
  }

 private:
  bool Need(size_t n) {
    if (n <= remaining()) return true;
    problem_ = "truncated";
    return false;
  }
  bool BigEndian(size_t n, uint64_t* v) {
    if (!Need(n)) return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; ++i) x = (x << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    pos_ += n;
    *v = x;
    return true;
  }
  std::string Where() const {
    return absl::StrFormat("%s message at offset %d (length %d, LSN %s)", MessageName(type_), pos_, len_,
                           FormatLsn(lsn_));
  }

  const char* data_;
  size_t len_;
  size_t pos_ = 0;
  Lsn lsn_;
  uint8_t type_ = 0;
  const char* problem_ = "malformed";
};

absl::Status PgOutputDecoder::Decode(char* data, size_t len, Lsn lsn, ChangeHandler& handler) {
  if (data == nullptr || len == 0) {
    return absl::DataLossError(absl::StrCat("pgoutput: empty message at LSN ", FormatLsn(lsn)));
  }
  Reader r(data, len, lsn);
  uint8_t type = 0;
  r.U8(&type);  // cannot fail: len > 0
  r.set_type(type);
  const bool streams = protocol_version_ >= 2;
  if (in_stream_) {
    // Inside a stream block: a message of the streamed transaction (its xid first), kept until
    // the transaction's Stream Commit or Abort; or the block's end.
    switch (type) {
      case 'E':
        RETURN_IF_ERROR(r.ExpectEnd());
        in_stream_ = false;
        return absl::OkStatus();
      case 'O':
        return DecodeStreamOrigin(r);
      case 'R':
      case 'Y':
      case 'I':
      case 'U':
      case 'D':
      case 'T':
      case 'M': {
        uint32_t subxid;
        if (!r.U32(&subxid)) return r.status();
        RETURN_IF_ERROR(spool_.Append(stream_xid_, subxid, lsn, data, len));
        CrashPoint("source.stream_spooled");
        return absl::OkStatus();
      }
      default:
        return r.Error("message that does not belong inside a stream block");
    }
  }
  switch (type) {
    case 'S':
      if (streams) return DecodeStreamStart(r);
      break;
    case 'E':
      if (streams) return r.Error("Stream Stop outside a stream block");
      break;
    case 'c':
      if (streams) return DecodeStreamCommit(r, handler);
      break;
    case 'A':
      if (streams) return DecodeStreamAbort(r);
      break;
    case 'B':
      return DecodeBegin(r, handler);
    case 'C':
      return DecodeCommit(r, handler);
    case 'O':
      return DecodeOrigin(r);
    default:
      return DecodeChange(r, handler);
  }
  return absl::DataLossError(absl::StrCat("pgoutput: ", MessageName(type), " message ", DescribeByte(type),
                                          " in protocol version 1 (length ", len, ", LSN ", FormatLsn(lsn), ")"));
}

absl::Status PgOutputDecoder::DecodeChange(Reader& r, ChangeHandler& handler) {
  uint8_t type = r.type();
  if (replaying_) {
    uint32_t xid;  // the (sub)transaction's, already accounted for by the spool
    if (!r.U32(&xid)) return r.status();
  }
  if (ignoring_ && type != 'R' && type != 'Y') {
    if (!in_transaction_) return r.Error("change outside a transaction");
    return absl::OkStatus();  // a change of an ignored origin's transaction
  }
  switch (type) {
    case 'R':
      return DecodeRelation(r, handler);
    case 'Y':
      return DecodeType(r);
    case 'I':
      return DecodeInsert(r, handler);
    case 'U':
      return DecodeUpdate(r, handler);
    case 'D':
      return DecodeDelete(r, handler);
    case 'T':
      return DecodeTruncate(r, handler);
    case 'M':
      return DecodeMessage(r, handler);
    default:
      return r.Error(absl::StrCat("unknown message type ", DescribeByte(type)));
  }
}

// Stream Start: Int32 xid, Int8 first segment (1) or a continuation (0).
absl::Status PgOutputDecoder::DecodeStreamStart(Reader& r) {
  uint32_t xid;
  uint8_t first;
  if (!r.U32(&xid) || !r.U8(&first)) return r.status();
  RETURN_IF_ERROR(r.ExpectEnd());
  if (in_transaction_) return r.Error("Stream Start inside a transaction that has not committed");
  RETURN_IF_ERROR(spool_.Start(xid, first == 1));
  in_stream_ = true;
  stream_xid_ = xid;
  return absl::OkStatus();
}

// Stream Commit: Int32 xid, Int8 flags (unused), Int64 commit_lsn, Int64 end_lsn, Int64
// commit_time. The transaction's messages are dispatched now, between a Begin and a Commit.
absl::Status PgOutputDecoder::DecodeStreamCommit(Reader& r, ChangeHandler& handler) {
  uint32_t xid;
  uint8_t flags;
  TransactionCommit commit;
  if (!r.U32(&xid) || !r.U8(&flags) || !r.U64(&commit.commit_lsn) || !r.U64(&commit.end_lsn) ||
      !r.I64(&commit.commit_time)) {
    return r.status();
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  if (in_transaction_) return r.Error("Stream Commit inside a transaction that has not committed");
  TransactionBegin begin;
  begin.final_lsn = commit.commit_lsn;
  begin.commit_time = commit.commit_time;
  begin.xid = xid;
  in_transaction_ = true;
  ignoring_ = ignored_streams_.erase(xid) > 0;
  RETURN_IF_ERROR(handler.OnBegin(begin));
  replaying_ = true;
  absl::Status st = spool_.Replay(xid, [&](Lsn lsn, char* data, size_t len) {
    Reader m(data, len, lsn);
    uint8_t type = 0;
    if (!m.U8(&type)) return m.status();
    m.set_type(type);
    CrashPoint("source.stream_replayed");
    return DecodeChange(m, handler);
  });
  replaying_ = false;
  RETURN_IF_ERROR(st);
  in_transaction_ = false;
  if (ignoring_) ++ignored_transactions_;
  ignoring_ = false;
  return handler.OnCommit(commit);
}

// Stream Abort: Int32 xid, Int32 subxid (== xid: the whole transaction).
absl::Status PgOutputDecoder::DecodeStreamAbort(Reader& r) {
  uint32_t xid, subxid;
  if (!r.U32(&xid) || !r.U32(&subxid)) return r.status();
  RETURN_IF_ERROR(r.ExpectEnd());
  if (in_transaction_) return r.Error("Stream Abort inside a transaction that has not committed");
  if (xid == subxid) ignored_streams_.erase(xid);
  return spool_.Abort(xid, subxid);
}

const SourceRelation* PgOutputDecoder::FindRelation(Oid oid) const {
  auto it = relations_.find(oid);
  return it == relations_.end() ? nullptr : it->second.get();
}

// Begin: Int64 final_lsn, Int64 commit_time, Int32 xid.
absl::Status PgOutputDecoder::DecodeBegin(Reader& r, ChangeHandler& handler) {
  TransactionBegin begin;
  if (!r.U64(&begin.final_lsn) || !r.I64(&begin.commit_time) || !r.U32(&begin.xid)) {
    return r.status();
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  if (in_transaction_) return r.Error("Begin inside a transaction that has not committed");
  in_transaction_ = true;
  ignoring_ = false;
  return handler.OnBegin(begin);
}

// Commit: Int8 flags (unused), Int64 commit_lsn, Int64 end_lsn, Int64 commit_time.
absl::Status PgOutputDecoder::DecodeCommit(Reader& r, ChangeHandler& handler) {
  uint8_t flags;
  TransactionCommit commit;
  if (!r.U8(&flags) || !r.U64(&commit.commit_lsn) || !r.U64(&commit.end_lsn) || !r.I64(&commit.commit_time)) {
    return r.status();
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  if (!in_transaction_) return r.Error("Commit without a Begin");
  in_transaction_ = false;
  if (ignoring_) ++ignored_transactions_;
  ignoring_ = false;
  return handler.OnCommit(commit);
}

// Origin: Int64 origin commit lsn, String name; right after the Begin of a transaction that was
// applied by a replication origin's session.
absl::Status PgOutputDecoder::DecodeOrigin(Reader& r) {
  uint64_t origin_lsn;
  absl::string_view name;
  if (!r.U64(&origin_lsn) || !r.String(&name)) return r.status();
  RETURN_IF_ERROR(r.ExpectEnd());
  if (!in_transaction_) return r.Error("Origin outside a transaction");
  ignoring_ = ignored_origins_.contains(OriginFamily(name));
  spdlog::debug("pgoutput: origin {} (commit {}) at {}{}", std::string(name), FormatLsn(origin_lsn),
                FormatLsn(r.lsn()), ignoring_ ? ": its changes are ignored" : "");
  return absl::OkStatus();
}

absl::Status PgOutputDecoder::DecodeStreamOrigin(Reader& r) {
  uint64_t origin_lsn;
  absl::string_view name;
  if (!r.U64(&origin_lsn) || !r.String(&name)) return r.status();
  RETURN_IF_ERROR(r.ExpectEnd());
  if (ignored_origins_.contains(OriginFamily(name))) ignored_streams_.insert(stream_xid_);
  return absl::OkStatus();
}

// Relation: Int32 oid, String namespace ("" = pg_catalog), String name, Int8 replica identity,
// Int16 ncols, then per column Int8 flags (1 = key), String name, Int32 type oid, Int32 typmod.
absl::Status PgOutputDecoder::DecodeRelation(Reader& r, ChangeHandler& handler) {
  auto relation = std::make_shared<SourceRelation>();
  absl::string_view schema, name;
  uint8_t identity;
  int16_t ncols;
  if (!r.U32(&relation->oid) || !r.String(&schema) || !r.String(&name) || !r.U8(&identity) || !r.I16(&ncols)) {
    return r.status();
  }
  if (identity != 'd' && identity != 'n' && identity != 'f' && identity != 'i') {
    return r.Error(absl::StrCat("unknown replica identity ", DescribeByte(identity)));
  }
  if (ncols < 0) return r.Error(absl::StrCat("negative column count ", ncols));
  // Each column takes at least 10 bytes; checked before reserving so garbage cannot make us
  // allocate.
  if (static_cast<size_t>(ncols) * 10 > r.remaining()) {
    return r.Error(absl::StrCat("column count ", ncols, " exceeds the message"));
  }
  relation->schema = schema.empty() ? "pg_catalog" : std::string(schema);
  relation->name = std::string(name);
  relation->replica_identity = static_cast<char>(identity);
  relation->columns.resize(ncols);
  for (SourceColumn& column : relation->columns) {
    uint8_t flags;
    absl::string_view column_name;
    if (!r.U8(&flags) || !r.String(&column_name) || !r.U32(&column.type_oid) || !r.I32(&column.type_modifier)) {
      return r.status();
    }
    column.name = std::string(column_name);
    column.part_of_key = (flags & 1) != 0;
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  relation->version = next_relation_version.fetch_add(1, std::memory_order_relaxed);
  spdlog::debug("pgoutput: relation {} oid {} version {} ({} columns)", relation->QualifiedName(), relation->oid,
                relation->version, relation->columns.size());
  std::shared_ptr<const SourceRelation> published = std::move(relation);
  relations_[published->oid] = published;
  return handler.OnRelation(std::move(published));
}

// Type: Int32 oid, String namespace, String name. Logged only.
absl::Status PgOutputDecoder::DecodeType(Reader& r) {
  uint32_t oid;
  absl::string_view schema, name;
  if (!r.U32(&oid) || !r.String(&schema) || !r.String(&name)) return r.status();
  RETURN_IF_ERROR(r.ExpectEnd());
  spdlog::debug("pgoutput: type {}.{} oid {}", std::string(schema), std::string(name), oid);
  return absl::OkStatus();
}

absl::Status PgOutputDecoder::ReadChangeRelation(Reader& r, const SourceRelation** relation) {
  uint32_t oid;
  if (!r.U32(&oid)) return r.status();
  if (!in_transaction_) {
    return r.Error(absl::StrCat(MessageName(r.type()), " outside a transaction"));
  }
  *relation = FindRelation(oid);
  if (*relation == nullptr) return UnknownRelation(oid, r.lsn());
  return absl::OkStatus();
}

// TupleData: Int16 ncols, then per column 'n' (null), 'u' (unchanged TOAST) or
// 't' Int32 length + bytes. 'b' (binary) is never requested and is an error.
absl::Status PgOutputDecoder::ReadTuple(Reader& r, const SourceRelation& relation, Tuple* tuple) {
  int16_t ncols;
  if (!r.I16(&ncols)) return r.status();
  if (ncols < 0 || static_cast<size_t>(ncols) != relation.columns.size()) {
    return r.Error(absl::StrCat("tuple of ", relation.QualifiedName(), " has ", ncols,
                                " columns, its RELATION message announced ", relation.columns.size()));
  }
  tuple->resize(ncols);  // no allocation once the capacity has been reached
  for (int i = 0; i < ncols; ++i) {
    Datum& d = (*tuple)[i];
    uint8_t kind;
    if (!r.U8(&kind)) return r.status();
    switch (kind) {
      case 'n':
        d = Datum{DatumKind::kNull, 0, nullptr};
        break;
      case 'u':
        d = Datum{DatumKind::kUnchangedToast, 0, nullptr};
        break;
      case 't': {
        uint32_t length;
        const char* bytes;
        if (!r.U32(&length) || !r.Bytes(length, &bytes)) return r.status();
        d = Datum{DatumKind::kText, length, bytes};
        break;
      }
      case 'b':
        return r.Error(absl::StrCat("binary value for column ", relation.columns[i].name, " of ",
                                    relation.QualifiedName(), " (binary transfer is never requested)"));
      default:
        return r.Error(absl::StrCat("unknown value kind ", DescribeByte(kind), " for column ", relation.columns[i].name,
                                    " of ", relation.QualifiedName()));
    }
  }
  return absl::OkStatus();
}

// Insert: Int32 oid, 'N', TupleData.
absl::Status PgOutputDecoder::DecodeInsert(Reader& r, ChangeHandler& handler) {
  const SourceRelation* relation;
  RETURN_IF_ERROR(ReadChangeRelation(r, &relation));
  uint8_t marker;
  if (!r.U8(&marker)) return r.status();
  if (marker != 'N') return r.Error(absl::StrCat("expected 'N', got ", DescribeByte(marker)));
  RETURN_IF_ERROR(ReadTuple(r, *relation, &new_tuple_));
  RETURN_IF_ERROR(r.ExpectEnd());
  TerminateTexts(new_tuple_);
  return handler.OnChange(
      RowChange{.kind = ChangeKind::kInsert, .relation = relation, .new_tuple = &new_tuple_, .lsn = r.lsn()});
}

// Update: Int32 oid, optionally 'K' or 'O' + TupleData (old key / old row), 'N' + TupleData.
absl::Status PgOutputDecoder::DecodeUpdate(Reader& r, ChangeHandler& handler) {
  const SourceRelation* relation;
  RETURN_IF_ERROR(ReadChangeRelation(r, &relation));
  uint8_t marker;
  if (!r.U8(&marker)) return r.status();
  char old_kind = 0;
  if (marker == 'K' || marker == 'O') {
    old_kind = static_cast<char>(marker);
    RETURN_IF_ERROR(ReadTuple(r, *relation, &old_tuple_));
    if (!r.U8(&marker)) return r.status();
  }
  if (marker != 'N') {
    return r.Error(absl::StrCat("expected 'N'", old_kind ? "" : ", 'K' or 'O'", ", got ", DescribeByte(marker)));
  }
  RETURN_IF_ERROR(ReadTuple(r, *relation, &new_tuple_));
  RETURN_IF_ERROR(r.ExpectEnd());
  if (old_kind != 0) TerminateTexts(old_tuple_);
  TerminateTexts(new_tuple_);
  return handler.OnChange(RowChange{.kind = ChangeKind::kUpdate,
                                    .relation = relation,
                                    .old_tuple = old_kind != 0 ? &old_tuple_ : nullptr,
                                    .old_tuple_kind = old_kind,
                                    .new_tuple = &new_tuple_,
                                    .lsn = r.lsn()});
}

// Delete: Int32 oid, 'K' or 'O', TupleData.
absl::Status PgOutputDecoder::DecodeDelete(Reader& r, ChangeHandler& handler) {
  const SourceRelation* relation;
  RETURN_IF_ERROR(ReadChangeRelation(r, &relation));
  uint8_t marker;
  if (!r.U8(&marker)) return r.status();
  if (marker != 'K' && marker != 'O') {
    return r.Error(absl::StrCat("expected 'K' or 'O', got ", DescribeByte(marker)));
  }
  RETURN_IF_ERROR(ReadTuple(r, *relation, &old_tuple_));
  RETURN_IF_ERROR(r.ExpectEnd());
  TerminateTexts(old_tuple_);
  return handler.OnChange(RowChange{.kind = ChangeKind::kDelete,
                                    .relation = relation,
                                    .old_tuple = &old_tuple_,
                                    .old_tuple_kind = static_cast<char>(marker),
                                    .lsn = r.lsn()});
}

// Truncate: Int32 nrels, Int8 options (1 cascade, 2 restart identity), nrels x Int32 oid.
absl::Status PgOutputDecoder::DecodeTruncate(Reader& r, ChangeHandler& handler) {
  uint32_t nrels;
  uint8_t options;
  if (!r.U32(&nrels) || !r.U8(&options)) return r.status();
  if (!in_transaction_) return r.Error("Truncate outside a transaction");
  if (static_cast<uint64_t>(nrels) * 4 > r.remaining()) {
    return r.Error(absl::StrCat("relation count ", nrels, " exceeds the message"));
  }
  TruncateChange truncate;
  truncate.cascade = (options & 1) != 0;
  truncate.restart_identity = (options & 2) != 0;
  truncate.lsn = r.lsn();
  truncate.relations.reserve(nrels);
  for (uint32_t i = 0; i < nrels; ++i) {
    uint32_t oid;
    if (!r.U32(&oid)) return r.status();
    const SourceRelation* relation = FindRelation(oid);
    if (relation == nullptr) return UnknownRelation(oid, r.lsn());
    truncate.relations.push_back(relation);
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  return handler.OnTruncate(truncate);
}

// Message (protocol v1, no xid): Int8 flags (1 = transactional), Int64 lsn, String prefix,
// Int32 length, content bytes. Content is a view and is not NUL-terminated.
absl::Status PgOutputDecoder::DecodeMessage(Reader& r, ChangeHandler& handler) {
  uint8_t flags;
  LogicalMessage message;
  uint32_t length;
  const char* content;
  if (!r.U8(&flags) || !r.U64(&message.lsn) || !r.String(&message.prefix) || !r.U32(&length) ||
      !r.Bytes(length, &content)) {
    return r.status();
  }
  RETURN_IF_ERROR(r.ExpectEnd());
  message.transactional = (flags & 1) != 0;
  message.content = absl::string_view(content, length);
  if (message.transactional && !in_transaction_) {
    return r.Error("transactional Message outside a transaction");
  }
  return handler.OnMessage(message);
}

}  // namespace walshift
