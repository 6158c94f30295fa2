#pragma once
// The reverse pipeline of a cutover: after writes move to the new schema, it reads the new
// database's WAL and applies to the legacy schema through the inverse of every forward mapping,
// so that a rollback loses nothing. DeriveReverse builds its config from the forward config and
// both live schemas: rename and lossless casts invert by themselves, merge becomes split and
// split becomes merge (the first part owning the legacy rows); an SQL expression, a constant or
// a column only the new schema has needs the mapping's `reverse:` (columns: legacy column → SQL
// over the new row; one_way_columns; one_way), and everything else is refused, naming the
// mapping, table and column with the fix.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/config/config.h"

namespace walshift::ctl {

struct ColumnInfo {
  std::string name;
  std::string type;  // format_type(), e.g. "numeric(12,2)"
  bool not_null = false;
  bool has_default = false;  // a default, an identity or a generated column
};

struct TableInfo {
  std::vector<ColumnInfo> columns;
  std::vector<std::string> primary_key;  // or the replica identity index's columns
  const ColumnInfo* Find(const std::string& name) const {
    for (const ColumnInfo& c : columns)
      if (c.name == name) return &c;
    return nullptr;
  }
};

// A table of one database by schema.table; nullopt when there is none.
using TableLookup = std::function<absl::StatusOr<std::optional<TableInfo>>(const std::string& qualified)>;

struct ReverseOptions {
  std::string target;    // the forward target whose database the reverse pipeline reads ("": the only one)
  std::string pipeline;  // "": <forward pipeline>-reverse
  std::string legacy_target = "legacy";  // the reverse pipeline's name for the legacy database
};

struct ReverseConfig {
  std::string yaml;                   // the reverse pipeline's config
  std::vector<std::string> problems;  // what prevents it, each with its fix
  std::vector<std::string> notes;     // what the derived config does not carry back, and why
  std::string pipeline;
  std::string forward_origin;         // the origin the forward pipeline applies with (reverse ignores it)
  std::string reverse_origin;         // the origin the reverse pipeline applies with (forward must ignore it)
};

// `legacy` looks tables up in the forward source, `fresh` in the forward target `options.target`.
// `redact_dsn`: a literal DSN is written without its password (the config printed to a terminal).
absl::StatusOr<ReverseConfig> DeriveReverse(const config::Settings& forward, const std::string& forward_file,
                                            const ReverseOptions& options, const TableLookup& legacy,
                                            const TableLookup& fresh, bool redact_dsn);

// Why copying a value of new-schema type `from` into a legacy column of type `to` would change
// it without an error ("" when it cannot: the same type, a wider one, or one whose input rejects
// what it cannot hold).
std::string SilentLoss(const std::string& from, const std::string& to);

// A TableLookup over a live connection's catalog.
TableLookup CatalogLookup(const std::string& dsn, const std::string& what);

// walshiftctl reverse --config FILE [--target NAME] [--pipeline NAME] [--output FILE] [--check]
int ReverseCommand(int argc, char** argv);

}  // namespace walshift::ctl
