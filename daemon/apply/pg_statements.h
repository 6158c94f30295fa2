#pragma once
// SQL rendering of the closed set of target operations for PostgreSQL targets: pure (no
// connection), so every statement the sink sends can be unit-tested without a server. Values
// are always parameters ($n), identifiers always quoted.

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "daemon/core/target_op.h"

namespace walshift {

// One (shape, written column set) combination: which values a statement writes and which op
// parameter slots feed its parameters.
struct PgStatementPlan {
  const OpShape* shape = nullptr;
  std::vector<int> written;        // indices of the shape values written
  std::vector<int> params;         // op parameter slot of each statement parameter of a row
  std::vector<int> key_positions;  // positions in `params` that feed the key
  // The target table's column types (format_type without modifier): parameters compared in a
  // WHERE clause are cast to them, as an untyped parameter cannot be read as every type (a
  // composite key). Null: not known.
  const std::map<std::string, std::string>* column_types = nullptr;
};

// Fills `plan` for `shape` with the values whose `omit` character is '1' left out (an
// unchanged TOAST value the target keeps). Array operations always read every slot.
void PlanStatement(const OpShape& shape, const std::string& omit, PgStatementPlan* plan);

// The statement of `rows` rows of `plan` (parameters $1..$(rows * params)); `plain_insert`:
// an INSERT without conflict handling (rows source INSERTs created). For kTruncate the
// statement --check validates (the sink sends truncate sets itself).
std::string RenderStatement(const PgStatementPlan& plan, int rows, bool plain_insert = false);

// An SQL expression over named inputs of `shape`, as a scalar subquery: each input is the
// parameter `ref(slot)` read as its type under its source column's name.
std::string ExpressionSql(const OpShape& shape, const std::string& sql, const std::vector<int>& inputs,
                          const std::function<std::string(int slot)>& ref);

// A run of array operations of one shape as statements sent in order, every parameter $i a
// text[] of the run's values of slot i (NULL elements for NULL): together they leave the
// target as the operations one by one would.
std::vector<std::string> RenderArrayRun(const OpShape& shape);

// For kArrayUpsert, how the drift verifier checks an element: a query over the op's slots
// ($1..$num_params; `run`: each a text[] of many ops' values, one answer row per op with its
// ordinal from 1 first) returning (present bool, equal bool, expected text, actual text, key
// text).
std::string RenderArrayCheck(const OpShape& shape, bool run);

}  // namespace walshift
