#pragma once
// Part of `walshiftd --check` (and of every start): each privilege a run needs on the source,
// named with the statement that grants it, or the object to create in advance as its owner.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "daemon/config/config.h"
#include "daemon/pg/pg_util.h"

namespace walshift {

// On the source, as the connection's role: wal_level = logical; REPLICATION (the slot and the
// stream); a free replication slot and WAL sender when the slot is still to be made; the
// publication, or the ownership and CREATE that making it (or adding mapped tables to it)
// needs; USAGE on the schema and SELECT on each mapped table (copy, row completion, verify,
// backfill); EXECUTE on pg_logical_emit_message (heartbeats, backfill watermarks). Each missing
// one is added to `problems`. kUnavailable when the source cannot be read.
absl::Status CheckSourcePrivileges(PGconn* source, const config::Settings& settings,
                                   const std::vector<std::string>& tables, std::vector<std::string>* problems);

}  // namespace walshift
