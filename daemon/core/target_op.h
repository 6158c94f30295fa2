#pragma once
// Target operations: the small closed set a mapping module may produce. A module builds the
// immutable `OpShape`s it needs once per bound relation; per row it only fills parameters.

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/core/change.h"
#include "daemon/core/lsn.h"

namespace walshift {

enum class OpKind : uint8_t {
  kUpsert,      // INSERT ... ON CONFLICT (key) DO UPDATE of the listed columns
  kDelete,      // DELETE by key
  kUpdateOnly,  // UPDATE of the listed columns by key; no row is created
  kTruncate,    // empty the table
};

const char* OpKindName(OpKind kind);

// A source value an SQL expression can name. Bound as parameter `param` and cast to `type`
// (a type name the target understands; `text` where the target lacks the source's type).
struct ExprInput {
  std::string name;
  std::string type;
  int param = -1;
};

// How one target column gets its value: exactly one of a bound parameter (coerced by the
// target to the column's type) or an SQL expression over the shape's inputs.
struct TargetValue {
  std::string column;
  int param = -1;
  std::string sql;               // non-empty: an expression, evaluated by the target
  std::vector<int> sql_inputs;   // indices into OpShape::inputs the expression references
  // For error messages: the source column (or "const"/"sql") this value comes from.
  std::string origin;
};

struct OpShape {
  OpKind kind = OpKind::kUpsert;
  std::string target;        // target database name from the config
  std::string table;         // schema-qualified target table, unquoted "schema.table"
  std::string source_table;  // schema-qualified source table, for messages
  std::vector<TargetValue> values;  // kUpsert/kUpdateOnly: all written columns, key included;
                                    // kDelete: the key columns
  std::vector<int> key;             // indices into `values` forming the key
  // kUpdateOnly only: when not empty, the row is found by these values (typically the old key
  // of a key change) instead of by `key`, and every written value is set, key columns
  // included. A key change applied this way keeps the values the change did not carry
  // (unchanged TOAST values), as an UPDATE in the source did.
  std::vector<TargetValue> match;
  std::vector<ExprInput> inputs;
  // A row filter: kUpsert writes only when it is true, kDelete deletes only when it is not
  // (NULL counts as false). Statements with a condition are sent one row at a time, with every
  // value cast to `casts[i]` (the target column's type without modifier).
  std::string condition;
  std::vector<int> condition_inputs;  // indices into `inputs`
  std::vector<std::string> casts;
  // A statement the module renders itself (parameters $1..$num_params are the op's parameter
  // slots in order). Sent one row at a time unless batch_statements says how to send a run;
  // `values` may then only describe it for messages.
  std::string statement;
  int num_params = 0;
  // Optionally, a run of consecutive ops of this shape at once: statements sent in order, in
  // which every parameter $i is a text[] of the run's values of slot i, in op order (NULL
  // elements for NULL). Together they must leave the target as the ops one by one would. A
  // run of one op, and every op while a failing transaction is isolated, uses `statement`.
  std::vector<std::string> batch_statements;
  // For messages about a module-rendered statement: the name of each parameter slot (a source
  // column) and the slots that identify the row.
  std::vector<std::string> param_names;
  std::vector<int> key_params;
  // For a module-rendered statement, how the drift verifier checks its effect: a query over
  // the same parameters returning one row (present bool, equal bool, expected text, actual
  // text, key text). Empty: not verified.
  std::string verify;
  // The same for many ops at once: every parameter a text[] of the ops' values, one row per op
  // with its ordinal (from 1) before the five columns. Empty: `verify` op by op.
  std::string verify_batch;
  uint32_t id = 0;  // unique per process; the sink caches prepared statements by it
};

// One operation for one row: a shape and its `shape->num_params` parameter values. Views are
// valid until the emitting call returns.
struct TargetOp {
  const OpShape* shape = nullptr;
  const Datum* params = nullptr;
  Lsn lsn = kInvalidLsn;
  // kUpsert of a row a source INSERT created: the target may insert it without conflict
  // handling (a conflict then means the target already had it, and the sink says so).
  bool new_row = false;
  // kTruncate: the source's TRUNCATE ... RESTART IDENTITY. Consecutive truncates are applied as
  // one statement, as the source ran them (a table set with foreign keys between its members).
  bool restart_identity = false;
};

// Allocates a process-unique shape id.
uint32_t NextOpShapeId();

}  // namespace walshift
