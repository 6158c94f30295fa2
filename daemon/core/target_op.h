#pragma once
// Target operations: the small closed set a mapping module may produce and every sink applies.
// A module builds the immutable `OpShape`s it needs once per bound relation; per row it only
// fills parameters. A shape describes what to do, never how: each sink renders it (the
// PostgreSQL sink into SQL, the document sink into file writes).

#include <cstdint>
#include <string>
#include <vector>

#include "daemon/core/change.h"
#include "daemon/core/lsn.h"

namespace walshift {

enum class OpKind : uint8_t {
  kUpsert,        // INSERT ... ON CONFLICT (key) DO UPDATE of the listed columns
  kDelete,        // DELETE by key
  kUpdateOnly,    // UPDATE of the listed columns by key; no row is created
  kTruncate,      // empty the table
  kClearColumns,  // set the listed columns to NULL in every row of the table (no parameters)
  // One element of the JSON array column `array.column` of a parent row, found by the parent
  // key `values` (all of them the key). The element is a JSON object of `array.element`; the
  // array stays sorted by `array.sort_by`, then by the element key.
  kArrayUpsert,  // replaces the element with the same element key (or adds it); the parent row
                 // is created when absent unless `array.owned`; with `array.leave_others`, the
                 // element first leaves every other parent's array
  kArrayRemove,  // removes the element with this element key (`array.element` holds only the
                 // key fields) from every parent's array; `values` is empty
};

const char* OpKindName(OpKind kind);
inline bool IsArrayOp(OpKind kind) { return kind == OpKind::kArrayUpsert || kind == OpKind::kArrayRemove; }

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
  std::string sql;              // non-empty: an expression, evaluated by the target
  std::vector<int> sql_inputs;  // indices into OpShape::inputs the expression references
  // For error messages: the source column (or "const"/"sql") this value comes from.
  std::string origin;
  // The type the parameter is read as: the source column's type (format_type), or `text`
  // where the target lacks it or the value is a constant. Sinks that type values themselves
  // (JSON elements, documents) go by it; empty where unknown (then text).
  std::string type;
};

// kArrayUpsert / kArrayRemove: the array and its element.
struct ArraySpec {
  std::string column;                // the JSON array column of the parent table
  std::vector<TargetValue> element;  // element fields (`column` is the field name), by name
  std::vector<int> element_key;      // indices into `element` identifying an element
  // The field elements are sorted by first, then by the element key (empty: the first key
  // field). kArrayRemove too: the array it leaves stays sorted.
  std::string sort_by;
  bool owned = false;         // parents are created by their owner's mapping only
  bool leave_others = false;  // kArrayUpsert: the element may come from another parent
  // The parent table's key columns (kArrayUpsert: those of `values`); kArrayRemove finds its
  // parents by the element and reaches them by these.
  std::vector<std::string> parent_columns;
};

struct OpShape {
  OpKind kind = OpKind::kUpsert;
  std::string target;               // target database name from the config
  std::string table;                // schema-qualified target table, unquoted "schema.table"
  std::string source_table;         // schema-qualified source table, for messages
  std::vector<TargetValue> values;  // kUpsert/kUpdateOnly: all written columns, key included;
                                    // kDelete: the key columns
  std::vector<int> key;             // indices into `values` forming the key
  // kUpdateOnly only: when not empty, the row is found by these values (typically the old key
  // of a key change) instead of by `key`, and every written value is set, key columns
  // included. A key change applied this way keeps the values the change did not carry
  // (unchanged TOAST values), as an UPDATE in the source did.
  std::vector<TargetValue> match;
  std::vector<ExprInput> inputs;
  // kArrayUpsert / kArrayRemove only.
  ArraySpec array;
  // kDelete only: the row stays when one of these target columns still holds a value (a merged
  // row other sources still fill).
  std::vector<std::string> keep_if_any;
  // A row filter: an SQL predicate over `inputs`, evaluated by the target (a target without
  // SQL refuses the shape when it binds). kUpsert writes only when it is true, kDelete deletes
  // only when it is not (NULL counts as false). Statements with a condition are sent one row at
  // a time, with every value cast to `casts[i]` (the target column's type without modifier).
  std::string condition;
  std::vector<int> condition_inputs;  // indices into `inputs`
  std::vector<std::string> casts;
  int num_params = 0;  // parameter slots of an op of this shape
  uint32_t id = 0;     // unique per process; the sink caches prepared statements by it
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
