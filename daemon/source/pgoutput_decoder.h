#pragma once
// Decoder of the pgoutput logical replication protocol, versions 1 and 2 (PostgreSQL docs,
// "Logical Replication Message Formats"). One `switch` on the message byte, one handler per
// message type. Every read is bounds-checked: truncated or malformed input is a kDataLoss
// status naming the message type and byte offset, never a crash.
//
// Protocol 2 streams large transactions before they commit: between Stream Start and Stream
// Stop, every message carries its (sub)transaction's xid and goes to a StreamSpool unread; at
// Stream Commit the transaction's messages are decoded and dispatched as one ordinary
// transaction (Begin .. Commit, with the commit's LSN as its final LSN), at Stream Abort they
// are dropped (a subtransaction's only). Blocks of several transactions may interleave.
//
// Replication origins: a transaction whose Origin message (after its Begin, or after the first
// Stream Start of a streamed one) names one of `ignored_origins` is dispatched as an empty
// transaction (Begin, Commit): its changes were applied to this database by a pipeline that
// must not see them come back (a forward and a reverse pipeline). Relation and type messages
// are still read, so later transactions decode against the current relations.

#include <cstddef>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "daemon/core/change.h"
#include "daemon/core/interfaces.h"
#include "daemon/source/stream_spool.h"

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

  // 1 (the default) or 2: which messages are accepted (Stream Start/Stop/Commit/Abort, the xid
  // of messages inside a stream).
  void set_protocol_version(int version) { protocol_version_ = version; }
  // Streamed transactions waiting for their commit or abort.
  const StreamSpool& spool() const { return spool_; }
  // Transactions of these replication origins are dispatched without their changes.
  void set_ignored_origins(absl::flat_hash_set<std::string> origins) { ignored_origins_ = std::move(origins); }
  // Transactions dispatched without their changes because of their origin, since construction.
  uint64_t ignored_transactions() const { return ignored_transactions_; }

 private:
  class Reader;  // bounds-checked cursor over one message, defined in the .cc

  absl::Status DecodeBegin(Reader& r, ChangeHandler& handler);
  absl::Status DecodeCommit(Reader& r, ChangeHandler& handler);
  absl::Status DecodeOrigin(Reader& r);
  // Inside a stream block: the Origin message after a transaction's first Stream Start.
  absl::Status DecodeStreamOrigin(Reader& r);
  absl::Status DecodeRelation(Reader& r, ChangeHandler& handler);
  absl::Status DecodeType(Reader& r);
  absl::Status DecodeInsert(Reader& r, ChangeHandler& handler);
  absl::Status DecodeUpdate(Reader& r, ChangeHandler& handler);
  absl::Status DecodeDelete(Reader& r, ChangeHandler& handler);
  absl::Status DecodeTruncate(Reader& r, ChangeHandler& handler);
  absl::Status DecodeMessage(Reader& r, ChangeHandler& handler);
  // Dispatches a message of a transaction's own (not a stream's control message) by its type.
  absl::Status DecodeChange(Reader& r, ChangeHandler& handler);
  absl::Status DecodeStreamStart(Reader& r);
  absl::Status DecodeStreamCommit(Reader& r, ChangeHandler& handler);
  absl::Status DecodeStreamAbort(Reader& r);
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
  int protocol_version_ = 1;
  // Inside a Stream Start .. Stream Stop block, of transaction stream_xid_.
  bool in_stream_ = false;
  uint32_t stream_xid_ = 0;
  // Replaying a streamed transaction at its commit: its messages carry an xid.
  bool replaying_ = false;
  StreamSpool spool_;
  absl::flat_hash_set<std::string> ignored_origins_;
  // The transaction being dispatched has an ignored origin: its changes are passed over.
  bool ignoring_ = false;
  // Streamed transactions (top-level xids) whose origin is ignored, until their commit or abort.
  absl::flat_hash_set<uint32_t> ignored_streams_;
  uint64_t ignored_transactions_ = 0;
};

}  // namespace walshift
