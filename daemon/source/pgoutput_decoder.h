#pragma once
// Decoder of the pgoutput logical replication protocol, version 1 (PostgreSQL docs,
// "Logical Replication Message Formats"). One `switch` on the message byte, one handler per
// message type. Every read is bounds-checked: truncated or malformed input is a kDataLoss
// status naming the message type and byte offset, never a crash.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "daemon/core/change.h"
#include "daemon/core/interfaces.h"

namespace walshift {

class PgOutputDecoder {
 public:
  // Decodes one pgoutput message (the payload of an XLogData 'w' message) and dispatches it
  // to `handler`. `data` must be writable and have a NUL byte at data[len] (as libpq's
  // PQgetCopyData buffers do): text values are NUL-terminated in place so they can be bound
  // as libpq parameters without a copy. `lsn` is the XLogData start position.
  // kDataLoss for a malformed message (truncated, trailing bytes, unknown type or value kind,
  // binary values, column count different from the RELATION's), a change for an unknown
  // relation, or Begin/Commit/changes out of transaction order; the handler is then not
  // called. A handler error is returned as is.
  absl::Status Decode(char* data, size_t len, Lsn lsn, ChangeHandler& handler);

  // The cached relation for `oid`, or null.
  const SourceRelation* FindRelation(Oid oid) const;

 private:
  class Reader;  // bounds-checked cursor over one message, defined in the .cc

  absl::Status DecodeBegin(Reader& r, ChangeHandler& handler);
  absl::Status DecodeCommit(Reader& r, ChangeHandler& handler);
  absl::Status DecodeOrigin(Reader& r);
  absl::Status DecodeRelation(Reader& r, ChangeHandler& handler);
  absl::Status DecodeType(Reader& r);
  absl::Status DecodeInsert(Reader& r, ChangeHandler& handler);
  absl::Status DecodeUpdate(Reader& r, ChangeHandler& handler);
  absl::Status DecodeDelete(Reader& r, ChangeHandler& handler);
  absl::Status DecodeTruncate(Reader& r, ChangeHandler& handler);
  absl::Status DecodeMessage(Reader& r, ChangeHandler& handler);
  // Reads the relation oid of a change and returns the cached relation; kDataLoss when the
  // oid is unknown or the message is outside a transaction.
  absl::Status ReadChangeRelation(Reader& r, const SourceRelation** relation);
  // Reads one TupleData into `tuple` (resized, capacity reused). Datums point into the buffer
  // and are NOT yet NUL-terminated (see TerminateTexts in the .cc).
  absl::Status ReadTuple(Reader& r, const SourceRelation& relation, Tuple* tuple);

  // Relation versions come from one process-wide counter (see the .cc), so a version is never
  // reused even across decoders (reconnects).
  absl::flat_hash_map<Oid, std::shared_ptr<const SourceRelation>> relations_;
  // Reused per message so the hot path allocates nothing per row.
  Tuple old_tuple_;
  Tuple new_tuple_;
  bool in_transaction_ = false;
};

}  // namespace walshift
