#pragma once
// Value types of the capture side: a source relation as pgoutput describes it, tuple values as
// views into the message that carried them, and one decoded row change.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/string_view.h"
#include "daemon/core/lsn.h"

namespace walshift {

using Oid = uint32_t;

struct SourceColumn {
  std::string name;
  Oid type_oid = 0;
  int32_t type_modifier = -1;
  bool part_of_key = false;  // part of the relation's replica identity
};

// A source table as announced by a pgoutput RELATION message. Immutable once published;
// a new RELATION message for the same oid produces a new object with a higher `version`.
struct SourceRelation {
  Oid oid = 0;
  std::string schema;
  std::string name;
  char replica_identity = 'd';  // d default, n nothing, f full, i index
  std::vector<SourceColumn> columns;
  uint64_t version = 0;

  std::string QualifiedName() const { return schema + "." + name; }
  // Index of the named column, or -1.
  int ColumnIndex(absl::string_view column) const {
    for (size_t i = 0; i < columns.size(); ++i)
      if (columns[i].name == column) return static_cast<int>(i);
    return -1;
  }
};

// `table` qualified as PostgreSQL resolves a configured name: "orders" is "public.orders".
inline std::string QualifiedTableName(const std::string& table) {
  return table.find('.') == std::string::npos ? "public." + table : table;
}

enum class DatumKind : uint8_t { kNull, kUnchangedToast, kText };

// One column value. `data` points into the message buffer and is NUL-terminated there, so it
// can be handed to libpq as a text parameter without a copy. Valid until the next message.
struct Datum {
  DatumKind kind = DatumKind::kNull;
  uint32_t length = 0;
  const char* data = nullptr;

  absl::string_view view() const { return {data ? data : "", length}; }
  bool is_null() const { return kind == DatumKind::kNull; }
  bool is_unchanged_toast() const { return kind == DatumKind::kUnchangedToast; }
};

using Tuple = std::vector<Datum>;

enum class ChangeKind : uint8_t { kInsert, kUpdate, kDelete };

// One row change of a source transaction. Views are valid for the duration of the call that
// receives it.
struct RowChange {
  ChangeKind kind = ChangeKind::kInsert;
  const SourceRelation* relation = nullptr;
  // kUpdate: the old key ('K') or old row ('O', REPLICA IDENTITY FULL) when the server sent
  // one, else null. kDelete: always set.
  const Tuple* old_tuple = nullptr;
  char old_tuple_kind = 0;  // 'K', 'O' or 0
  // kInsert, kUpdate: the new row.
  const Tuple* new_tuple = nullptr;
  Lsn lsn = kInvalidLsn;  // WAL position of the XLogData message that carried the change
  // A row of the initial copy rather than a change: kInsert, `lsn` is the snapshot's position.
  bool snapshot = false;
};

struct TransactionBegin {
  Lsn final_lsn = kInvalidLsn;  // LSN of the commit record
  PgTimestamp commit_time = 0;
  uint32_t xid = 0;
};

struct TransactionCommit {
  Lsn commit_lsn = kInvalidLsn;
  Lsn end_lsn = kInvalidLsn;  // the position after the commit record: what a checkpoint stores
  PgTimestamp commit_time = 0;
};

struct TruncateChange {
  std::vector<const SourceRelation*> relations;
  bool cascade = false;
  bool restart_identity = false;
  Lsn lsn = kInvalidLsn;
};

struct LogicalMessage {
  bool transactional = false;
  Lsn lsn = kInvalidLsn;
  absl::string_view prefix;
  absl::string_view content;
};

}  // namespace walshift
