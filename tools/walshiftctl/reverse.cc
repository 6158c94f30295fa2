#include "tools/walshiftctl/reverse.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/config/yaml_proto.h"
#include "daemon/core/change.h"
#include "daemon/core/status_macros.h"
#include "daemon/pipeline/live_check.h"
#include "daemon/pg/pg_util.h"
#include "daemon/state/pg_state.h"
#include "tools/walshiftctl/load_config.h"
#include "transforms/columns/columns.pb.h"
#include "transforms/columns/columns_module.h"
#include "transforms/merge/merge.pb.h"
#include "transforms/registry.h"
#include "transforms/split/split.pb.h"

namespace walshift::ctl {
namespace {

using transforms::columns::ColumnSource;

// One forward write of a target table: target column → where its value comes from.
struct Written {
  std::string target_column;
  ColumnSource from;
};

// Whether the SQL expression `expression` names `column` (as the columns module reads it).
bool Mentions(const std::string& expression, const std::string& column) {
  return !transforms::columns::ExpressionInputs(expression, {column}).empty();
}

int IntegerRank(const std::string& t) {
  if (t == "smallint") return 1;
  if (t == "integer") return 2;
  if (t == "bigint") return 3;
  return 0;
}

// numeric(p,s) → s; numeric → -1 (unconstrained); not numeric → -2.
int NumericScale(const std::string& t) {
  if (t == "numeric") return -1;
  if (!absl::StartsWith(t, "numeric(")) return -2;
  size_t comma = t.find(',');
  int s = 0;
  if (comma != std::string::npos) (void)absl::SimpleAtoi(t.substr(comma + 1, t.size() - comma - 2), &s);
  return s;
}

// The mapping's target columns with their sources, in name order; identity when none are given.
std::vector<Written> WritesOf(const google::protobuf::Map<std::string, ColumnSource>& columns,
                              const TableInfo* source) {
  std::vector<Written> out;
  if (columns.empty() && source != nullptr) {
    for (const ColumnInfo& c : source->columns) {
      ColumnSource s;
      s.set_column(c.name);
      out.push_back({c.name, s});
    }
    return out;
  }
  for (const auto& [name, from] : columns) out.push_back({name, from});
  std::sort(out.begin(), out.end(), [](const Written& a, const Written& b) { return a.target_column < b.target_column; });
  return out;
}

// A DSN field set of the config (source or target) written into `node`.
void CopyDsn(const std::string& dsn, const std::string& dsn_env, const std::string& dsn_file, bool redact,
             YAML::Node node) {
  if (!dsn_env.empty()) {
    node["dsn_env"] = dsn_env;
  } else if (!dsn_file.empty()) {
    node["dsn_file"] = dsn_file;
  } else {
    node["dsn"] = redact ? pg::RedactDsn(dsn) : dsn;
  }
}

// One reverse mapping in the making, with the checks every shape shares.
class Inverter {
 public:
  Inverter(const config::MappingSettings& m, const std::string& legacy_target, const TableLookup& legacy,
           const TableLookup& fresh, std::vector<std::string>* problems, std::vector<std::string>* notes)
      : m_(m), legacy_target_(legacy_target), legacy_(legacy), fresh_(fresh), problems_(problems), notes_(notes) {}

  // The columns map of a reverse mapping that writes legacy table `legacy_table` from new table
  // `new_table`, which the forward mapping filled with `writes` (target column → source).
  // `legacy_key`: the legacy columns the reverse mapping keys its rows by. Empty node on a problem.
  // `new_whole`: the mapping fills the whole new row (else other mappings fill the rest: a merge);
  // `legacy_whole`: it writes back the whole legacy row (else other parts do: a split). Where it
  // is not, the caller checks the row over all mappings (NewOnlyColumns, UnwrittenLegacyColumns)
  // with what `forward_written` and `written_back` collect.
  absl::StatusOr<std::optional<YAML::Node>> Columns(const std::string& legacy_table, const std::string& new_table,
                                                    const std::vector<Written>& writes,
                                                    std::vector<std::string>* legacy_key, bool new_whole,
                                                    bool legacy_whole, std::vector<std::string>* presence = nullptr,
                                                    std::set<std::string>* forward_written_out = nullptr,
                                                    std::set<std::string>* written_back_out = nullptr) {
    ASSIGN_OR_RETURN(std::optional<TableInfo> lt, legacy_(legacy_table));
    ASSIGN_OR_RETURN(std::optional<TableInfo> nt, fresh_(new_table));
    std::string where = absl::StrCat(m_.path, " (", m_.common.source(), " -> ", new_table, ")");
    if (!lt || !nt) {
      Problem(absl::StrCat(where, ": the ", !lt ? "legacy" : "new", " database has no table ",
                           !lt ? legacy_table : new_table));
      return std::nullopt;
    }
    const v1::ReverseSpec& rev = m_.common.reverse();
    std::set<std::string> one_way(rev.one_way_columns().begin(), rev.one_way_columns().end());
    YAML::Node cols(YAML::NodeType::Map);
    std::set<std::string> written_back;  // legacy columns the reverse writes
    std::set<std::string> forward_written;  // new columns the forward writes
    bool ok = true;
    for (const auto& [legacy_col, expr] : rev.columns()) {
      if (!lt->Find(legacy_col)) {
        ok = Problem(absl::StrCat(where, ".reverse.columns.", legacy_col, ": ", legacy_table, " has no column ",
                                  legacy_col));
        continue;
      }
      YAML::Node sql;
      sql["sql"] = expr;
      cols[legacy_col] = sql;
      written_back.insert(legacy_col);
    }
    for (const Written& w : writes) {
      forward_written.insert(w.target_column);
      const ColumnInfo* nc = nt->Find(w.target_column);
      if (nc == nullptr) {
        ok = Problem(absl::StrCat(where, ": ", new_table, " has no column ", w.target_column));
        continue;
      }
      bool mentioned = false;
      for (const auto& [_, expr] : rev.columns()) mentioned |= Mentions(expr, w.target_column);
      if (w.from.value_case() == ColumnSource::kColumn) {
        const std::string& legacy_col = w.from.column();
        const ColumnInfo* lc = lt->Find(legacy_col);
        if (lc == nullptr) {
          ok = Problem(absl::StrCat(where, ".columns.", w.target_column, ": ", legacy_table, " has no column ",
                                    legacy_col));
          continue;
        }
        if (written_back.count(legacy_col)) continue;  // declared in reverse.columns
        if (one_way.count(w.target_column)) continue;
        std::string loss = SilentLoss(nc->type, lc->type);
        if (!loss.empty()) {
          ok = Problem(absl::StrCat(where, ".columns.", w.target_column, ": copying ", new_table, ".",
                                    w.target_column, " (", nc->type, ") back into ", legacy_table, ".", legacy_col,
                                    " (", lc->type, ") ", loss, "; declare reverse.columns.", legacy_col,
                                    " (an SQL expression over the new row), or list ", w.target_column,
                                    " in reverse.one_way_columns"));
          continue;
        }
        if (lc->not_null && !nc->not_null && presence != nullptr) {
          // A merged source: its row goes back only while these columns hold values.
          presence->push_back(w.target_column);
        } else if (lc->not_null && !nc->not_null) {
          ok = Problem(absl::StrCat(where, ".columns.", w.target_column, ": ", new_table, ".", w.target_column,
                                    " may be NULL and ", legacy_table, ".", legacy_col,
                                    " is NOT NULL: a row the new schema gives no value there could not go back; "
                                    "declare reverse.columns.",
                                    legacy_col, " (e.g. \"coalesce(", w.target_column, ", ...)\"), or make ",
                                    new_table, ".", w.target_column, " NOT NULL"));
          continue;
        }
        if (nc->type == "jsonb" && lc->type == "json") {
          notes_->push_back(absl::StrCat(where, ".columns.", w.target_column, ": ", legacy_table, ".", legacy_col,
                                         " (json) gets jsonb's text back: the same value, its keys in jsonb's order, "
                                         "duplicate keys and spacing dropped"));
        }
        cols[legacy_col] = w.target_column;
        written_back.insert(legacy_col);
        continue;
      }
      // A constant or an SQL expression: the legacy columns it came from need an expression back.
      if (one_way.count(w.target_column) || mentioned) continue;
      const bool constant = w.from.value_case() == ColumnSource::kConst;
      ok = Problem(absl::StrCat(
          where, ".columns.", w.target_column, ": ", new_table, ".", w.target_column, " is ",
          constant ? absl::StrCat("the constant '", w.from.const_(), "'")
                   : absl::StrCat("computed (", w.from.sql(), ")"),
          ", which walshift cannot invert: ",
          constant ? absl::StrCat("list ", w.target_column, " in reverse.one_way_columns (the legacy table does not "
                                  "keep it)")
                   : absl::StrCat("declare reverse.columns for the legacy columns it reads (SQL over the new row, "
                                  "naming ",
                                  w.target_column, "), or list it in reverse.one_way_columns")));
    }
    // Legacy columns the forward mapping reads through an expression must come back.
    for (const Written& w : writes) {
      if (w.from.value_case() != ColumnSource::kSql) continue;
      for (const ColumnInfo& lc : lt->columns) {
        if (Mentions(w.from.sql(), lc.name) && !written_back.count(lc.name) && !one_way.count(w.target_column)) {
          ok = Problem(absl::StrCat(where, ".columns.", w.target_column, ": reads ", legacy_table, ".", lc.name,
                                    ", which nothing writes back: declare reverse.columns.", lc.name,
                                    " (SQL over the new row), or list ", w.target_column,
                                    " in reverse.one_way_columns"));
          written_back.insert(lc.name);  // once
        }
      }
    }
    // Columns only the new schema has.
    if (new_whole) ok &= NewOnlyColumns(where, new_table, *nt, forward_written, {&rev});
    // The legacy key, from the new table's key, so that deletes (which carry only the key) map.
    legacy_key->clear();
    std::set<std::string> new_key(nt->primary_key.begin(), nt->primary_key.end());
    for (const std::string& k : lt->primary_key) {
      const YAML::Node v = static_cast<const YAML::Node&>(cols)[k];
      if (!v || !v.IsScalar() || !new_key.count(v.as<std::string>())) {
        ok = Problem(absl::StrCat(where, ": the legacy key column ", legacy_table, ".", k,
                                  " is not a copy of a key column of ", new_table, " (",
                                  absl::StrJoin(nt->primary_key, ", "),
                                  "): a delete in the new schema could not name its legacy row; map it from a key "
                                  "column, or mark the mapping reverse.one_way"));
        continue;
      }
      legacy_key->push_back(k);
    }
    if (lt->primary_key.empty()) {
      ok = Problem(absl::StrCat(where, ": ", legacy_table, " has no primary key: the reverse pipeline could not "
                                "name its rows; add one, or mark the mapping reverse.one_way"));
    }
    // Legacy columns nothing writes back must be able to do without a value.
    if (legacy_whole) ok &= UnwrittenLegacyColumns(where, legacy_table, *lt, written_back);
    if (forward_written_out != nullptr) forward_written_out->insert(forward_written.begin(), forward_written.end());
    if (written_back_out != nullptr) written_back_out->insert(written_back.begin(), written_back.end());
    if (!one_way.empty()) {
      notes_->push_back(absl::StrCat(m_.path, ": not replicated back (reverse.one_way_columns): ",
                                     absl::StrJoin(one_way, ", ")));
    }
    if (!ok) return std::nullopt;
    return cols;
  }

  bool Problem(std::string p) {
    problems_->push_back(std::move(p));
    return false;
  }

  // Columns of new table `nt` that no forward mapping writes (`forward_written`) and that no
  // reverse spec of `specs` names or marks one-way: their values would be lost on a rollback.
  bool NewOnlyColumns(const std::string& where, const std::string& new_table, const TableInfo& nt,
                      const std::set<std::string>& forward_written,
                      const std::vector<const v1::ReverseSpec*>& specs) {
    bool ok = true;
    for (const ColumnInfo& nc : nt.columns) {
      if (forward_written.count(nc.name)) continue;
      bool kept = false;
      for (const v1::ReverseSpec* rev : specs) {
        for (const auto& c : rev->one_way_columns()) kept |= c == nc.name;
        for (const auto& [_, expr] : rev->columns()) kept |= Mentions(expr, nc.name);
      }
      if (kept) continue;
      ok = Problem(absl::StrCat(where, ": ", new_table, ".", nc.name,
                                " is a column only the new schema has; its values would be lost on a rollback: "
                                "write it back with reverse.columns (legacy column: SQL naming ",
                                nc.name, "), or list it in reverse.one_way_columns"));
    }
    return ok;
  }

  // Legacy columns of `lt` nothing writes back (`written_back`) must do without a value.
  bool UnwrittenLegacyColumns(const std::string& where, const std::string& legacy_table, const TableInfo& lt,
                              const std::set<std::string>& written_back) {
    bool ok = true;
    for (const ColumnInfo& lc : lt.columns) {
      if (written_back.count(lc.name)) continue;
      if (lc.not_null && !lc.has_default) {
        ok = Problem(absl::StrCat(where, ": ", legacy_table, ".", lc.name,
                                  " is NOT NULL without a default and the new schema gives it no value: declare "
                                  "reverse.columns.",
                                  lc.name, " (SQL over the new row, or a literal such as \"''\")"));
      } else {
        notes_->push_back(absl::StrCat(m_.path, ": ", legacy_table, ".", lc.name,
                                       " has no counterpart in the new schema: rows the new schema creates get ",
                                       lc.has_default ? "its default" : "NULL", " there; updates leave it as it is"));
      }
    }
    return ok;
  }

 private:
  const config::MappingSettings& m_;
  const std::string& legacy_target_;
  const TableLookup& legacy_;
  const TableLookup& fresh_;
  std::vector<std::string>* problems_;
  std::vector<std::string>* notes_;
};

YAML::Node Keys(const std::vector<std::string>& key) {
  YAML::Node n(YAML::NodeType::Sequence);
  for (const auto& k : key) n.push_back(k);
  n.SetStyle(YAML::EmitterStyle::Flow);
  return n;
}

}  // namespace

std::string SilentLoss(const std::string& from, const std::string& to) {
  if (from == to) return "";
  const int fi = IntegerRank(from), ti = IntegerRank(to);
  const int fs = NumericScale(from), ts = NumericScale(to);
  const bool ffloat = from == "real" || from == "double precision";
  const bool tfloat = to == "real" || to == "double precision";
  if (ti > 0 && (fs != -2 || ffloat)) return "rounds fractions away";
  if (ts >= 0 && (ffloat || fs == -1 || fs > ts)) return absl::StrCat("rounds to ", ts, " decimal places");
  // real keeps 24 bits of a mantissa, double precision 53: integers past them are rounded.
  if (to == "real" && (from == "double precision" || fs != -2 || fi >= 2)) return "loses precision";
  if (tfloat && (fs != -2 || fi == 3)) return "loses precision";
  if (to == "\"char\"") return "keeps only its first byte";
  if (to == "date" && absl::StartsWith(from, "timestamp")) return "drops the time of day";
  if (absl::StartsWith(to, "character(") || to == "character") return "pads it with blanks";
  if (absl::StartsWith(to, "timestamp(") || absl::StartsWith(to, "time(")) return "may round its fractional seconds";
  if ((absl::StartsWith(to, "timestamp without") && absl::StartsWith(from, "timestamp with time zone")))
    return "drops the time zone (converted in the pipeline's time zone)";
  return "";
}

absl::StatusOr<ReverseConfig> DeriveReverse(const config::Settings& f, const std::string& forward_file,
                                            const ReverseOptions& options, const TableLookup& legacy,
                                            const TableLookup& fresh, bool redact_dsn) {
  ReverseConfig out;
  // The forward target the reverse pipeline reads.
  const config::TargetSettings* target = nullptr;
  const v1::TargetConfig* target_proto = nullptr;
  for (int i = 0; i < f.proto.targets_size(); ++i) {
    const auto& t = f.proto.targets(i);
    if (t.kind() != v1::TARGET_POSTGRES) continue;
    if (options.target.empty() ? target == nullptr : t.name() == options.target) {
      if (options.target.empty() && target_proto != nullptr) {
        return absl::InvalidArgumentError(absl::StrCat("pipeline ", f.proto.pipeline(),
                                                       " has several PostgreSQL targets: name the one the reverse "
                                                       "pipeline reads with --target"));
      }
      target_proto = &t;
      target = &f.targets[i];
    }
  }
  if (target == nullptr) {
    return absl::InvalidArgumentError(options.target.empty()
                                          ? "the forward pipeline has no PostgreSQL target"
                                          : absl::StrCat("the forward pipeline has no PostgreSQL target named ",
                                                         options.target));
  }
  out.pipeline = options.pipeline.empty() ? f.proto.pipeline() + "-reverse" : options.pipeline;
  out.forward_origin = state::ReplicationOriginName(f.proto.pipeline(), target->name);
  out.reverse_origin = state::ReplicationOriginName(out.pipeline, options.legacy_target);

  YAML::Node root;
  root["pipeline"] = out.pipeline;
  YAML::Node source(YAML::NodeType::Map);
  CopyDsn(target_proto->dsn(), target_proto->dsn_env(), target_proto->dsn_file(), redact_dsn, source);
  YAML::Node ignore(YAML::NodeType::Sequence);
  ignore.push_back(out.forward_origin);
  ignore.SetStyle(YAML::EmitterStyle::Flow);
  source["ignore_origins"] = ignore;
  if (!f.proto.source().timezone().empty()) source["timezone"] = f.proto.source().timezone();
  root["source"] = source;
  YAML::Node legacy_target(YAML::NodeType::Map);
  legacy_target["name"] = options.legacy_target;
  const auto& src = f.proto.source();
  CopyDsn(src.dsn(), src.dsn_env(), src.dsn_file(), redact_dsn, legacy_target);
  root["targets"].push_back(legacy_target);
  // Both sides are equal at the cutover: nothing to copy.
  root["snapshot"]["mode"] = "never";

  std::vector<std::string>& problems = out.problems;
  YAML::Node mappings(YAML::NodeType::Sequence);
  // merge: every forward mapping of one target table becomes one part of a split.
  std::map<std::string, YAML::Node> merged;  // new table → its split mapping
  std::vector<std::string> merged_order;
  // What the merges into each new table write, to find the new table's columns none of them does.
  struct MergedTable {
    const config::MappingSettings* first = nullptr;
    std::set<std::string> forward_written;
    std::vector<const v1::ReverseSpec*> specs;
  };
  std::map<std::string, MergedTable> merged_writes;
  std::map<std::string, std::string> written_by;  // new table → the columns mapping that writes it
  // reverse.unverified_columns of `m` onto reverse mapping `r`.
  auto carry_unverified = [&](const config::MappingSettings& m, YAML::Node r) {
    if (m.common.reverse().unverified_columns_size() == 0) return;
    YAML::Node u = r["unverified_columns"];
    if (!u) u = YAML::Node(YAML::NodeType::Sequence);
    for (const auto& c : m.common.reverse().unverified_columns()) u.push_back(c);
    u.SetStyle(YAML::EmitterStyle::Flow);
    r["unverified_columns"] = u;
    out.notes.push_back(absl::StrCat(m.path, ": the reverse pipeline's verifier does not compare ", m.common.source(),
                                     ".", absl::StrJoin(m.common.reverse().unverified_columns(), ", "),
                                     " (reverse.unverified_columns)"));
  };
  for (const config::MappingSettings& m : f.mappings) {
    if (m.common.target() != target->name) continue;
    const std::string& module = m.common.module();
    if (m.common.reverse().one_way()) {
      out.notes.push_back(absl::StrCat(m.path, " (", m.common.source(), "): reverse.one_way, not replicated back"));
      continue;
    }
    if (!m.common.filter().empty()) {
      out.notes.push_back(absl::StrCat(m.path, " (", m.common.source(), "): the forward filter (", m.common.filter(),
                                       ") is not applied back: every row the new schema has goes to the legacy "
                                       "table"));
    }
    Inverter inv(m, options.legacy_target, legacy, fresh, &problems, &out.notes);
    std::vector<std::string> parse_problems;
    if (module == "columns") {
      transforms::columns::ColumnsConfig cfg;
      config::ParseYamlInto(m.module_node, &cfg, m.path, &parse_problems);
      if (!parse_problems.empty()) {
        problems.insert(problems.end(), parse_problems.begin(), parse_problems.end());
        continue;
      }
      std::string new_table = QualifiedTableName(cfg.table().empty() ? m.common.source() : cfg.table());
      // Two tables copied into one: every new row would go back into both.
      if (auto [it, first] = written_by.try_emplace(new_table, m.path); !first) {
        problems.push_back(absl::StrCat(m.path, " (", m.common.source(), " -> ", new_table, "): ", it->second,
                                        " writes ", new_table, " too; a reverse pipeline would write every row of ",
                                        new_table, " into both legacy tables: mark all but one of them reverse.one_way, "
                                        "or, if their rows are parts of one new row, map them with module merge"));
        continue;
      }
      ASSIGN_OR_RETURN(std::optional<TableInfo> st, legacy(m.common.source()));
      std::vector<std::string> key;
      ASSIGN_OR_RETURN(std::optional<YAML::Node> cols,
                       inv.Columns(m.common.source(), new_table, WritesOf(cfg.columns(), st ? &*st : nullptr), &key,
                                   /*new_whole=*/true, /*legacy_whole=*/true));
      if (!cols) continue;
      YAML::Node r;
      r["source"] = new_table;
      r["target"] = options.legacy_target;
      r["table"] = m.common.source();
      r["key"] = Keys(key);
      r["columns"] = *cols;
      carry_unverified(m, r);
      mappings.push_back(r);
    } else if (module == "merge") {
      transforms::merge::MergeConfig cfg;
      config::ParseYamlInto(m.module_node, &cfg, m.path, &parse_problems);
      if (!parse_problems.empty()) {
        problems.insert(problems.end(), parse_problems.begin(), parse_problems.end());
        continue;
      }
      std::string new_table = QualifiedTableName(cfg.table());
      std::vector<std::string> key, presence;
      MergedTable& mt = merged_writes[new_table];
      if (mt.first == nullptr) mt.first = &m;
      mt.specs.push_back(&m.common.reverse());
      ASSIGN_OR_RETURN(std::optional<YAML::Node> cols,
                       inv.Columns(m.common.source(), new_table, WritesOf(cfg.columns(), nullptr), &key,
                                   /*new_whole=*/false, /*legacy_whole=*/true, &presence, &mt.forward_written));
      if (!cols) continue;
      YAML::Node part(YAML::NodeType::Map);
      part["table"] = m.common.source();
      part["key"] = Keys(key);
      part["columns"] = *cols;
      // A merged source's row is absent where its columns are NULL in the new row: it goes back
      // only while the new row holds it. Its NOT NULL columns tell exactly (a legacy row always
      // has them); without any, one of its columns holding a value does.
      std::vector<std::string> owned;
      for (const Written& w : WritesOf(cfg.columns(), nullptr)) {
        if (std::find(cfg.key().begin(), cfg.key().end(), w.target_column) == cfg.key().end())
          owned.push_back(pg::QuoteIdent(w.target_column));
      }
      std::vector<std::string> required;
      for (const std::string& c : presence) required.push_back(pg::QuoteIdent(c));
      if (!required.empty()) {
        part["filter"] = absl::StrCat("num_nonnulls(", absl::StrJoin(required, ", "), ") = ", required.size());
        out.notes.push_back(absl::StrCat(m.path, " (merge of ", m.common.source(), " into ", new_table, "): a ",
                                         m.common.source(), " row goes back while ", absl::StrJoin(required, ", "),
                                         required.size() == 1 ? " is" : " are",
                                         " not NULL in the new row (NOT NULL in the legacy table)"));
      } else if (!owned.empty()) {
        part["filter"] = absl::StrCat("num_nonnulls(", absl::StrJoin(owned, ", "), ") > 0");
        out.notes.push_back(absl::StrCat(m.path, " (merge of ", m.common.source(), " into ", new_table, "): a ",
                                         m.common.source(), " row goes back while one of its columns (",
                                         absl::StrJoin(owned, ", "),
                                         ") is not NULL in the new row; a legacy row whose columns are all NULL "
                                         "there does not"));
      }
      auto [it, fresh_entry] = merged.try_emplace(new_table);
      if (fresh_entry) {
        it->second["source"] = new_table;
        it->second["target"] = options.legacy_target;
        it->second["module"] = "split";
        merged_order.push_back(new_table);
      }
      it->second["into"].push_back(part);
      carry_unverified(m, it->second);
    } else if (module == "split") {
      transforms::split::SplitConfig cfg;
      config::ParseYamlInto(m.module_node, &cfg, m.path, &parse_problems);
      if (!parse_problems.empty()) {
        problems.insert(problems.end(), parse_problems.begin(), parse_problems.end());
        continue;
      }
      // Each part goes back into the legacy row; the first part (the referenced table) owns
      // the legacy rows: it creates and deletes them, the others fill them in.
      std::string owner;
      std::set<std::string> written_back;  // over every part
      bool parts_ok = true;
      for (const auto& p : cfg.into()) {
        std::string new_table = QualifiedTableName(p.table());
        std::vector<std::string> key;
        if (!p.filter().empty()) {
          out.notes.push_back(absl::StrCat(m.path, " (split of ", m.common.source(), " into ", new_table,
                                           "): the part's filter is not applied back: every row the new schema has "
                                           "there goes to the legacy table"));
        }
        ASSIGN_OR_RETURN(std::optional<YAML::Node> cols,
                         inv.Columns(m.common.source(), new_table, WritesOf(p.columns(), nullptr), &key,
                                     /*new_whole=*/true, /*legacy_whole=*/false, nullptr, nullptr, &written_back));
        if (!cols) {
          parts_ok = false;
          continue;
        }
        YAML::Node r;
        r["source"] = new_table;
        r["target"] = options.legacy_target;
        if (owner.empty()) {
          r["table"] = m.common.source();
          r["key"] = Keys(key);
          owner = new_table;
        } else {
          r["module"] = "merge";
          r["table"] = m.common.source();
          r["key"] = Keys(key);
          r["owner"] = owner;
        }
        r["columns"] = *cols;
        carry_unverified(m, r);
        mappings.push_back(r);
      }
      // The legacy row as all parts write it back.
      ASSIGN_OR_RETURN(std::optional<TableInfo> lt, legacy(m.common.source()));
      if (parts_ok && lt) {
        inv.UnwrittenLegacyColumns(absl::StrCat(m.path, " (split of ", m.common.source(), ")"), m.common.source(), *lt,
                                   written_back);
      }
      out.notes.push_back(absl::StrCat(m.path, " (split of ", m.common.source(),
                                       "): a legacy row is written when its first part's row is, and deleted with it"));
    } else {
      problems.push_back(absl::StrCat(
          m.path, " (", m.common.source(), "): walshift does not derive the reverse of module ", module,
          module == "json_array"  ? " (child rows folded into a JSON array)"
          : module == "soft_delete" ? " (a delete in the new schema would have to set the legacy flag)"
                                    : "",
          ": mark it reverse.one_way (its legacy table keeps the rows it had at the cutover), or write the reverse "
          "mapping yourself in the reverse pipeline's config"));
    }
  }
  for (const std::string& t : merged_order) mappings.push_back(merged[t]);
  // The new row as all merges into it fill it.
  for (const auto& [new_table, mt] : merged_writes) {
    ASSIGN_OR_RETURN(std::optional<TableInfo> nt, fresh(new_table));
    if (!nt) continue;  // named by the merge's own check
    Inverter inv(*mt.first, options.legacy_target, legacy, fresh, &problems, &out.notes);
    inv.NewOnlyColumns(absl::StrCat("the merges into ", new_table), new_table, *nt, mt.forward_written, mt.specs);
  }
  if (!merged_writes.empty() && !written_by.empty()) {
    for (const auto& [new_table, mt] : merged_writes) {
      if (auto it = written_by.find(new_table); it != written_by.end()) {
        problems.push_back(absl::StrCat(it->second, " copies into ", new_table, ", which ", mt.first->path,
                                        " merges into: a reverse pipeline could not tell whose rows they are; mark "
                                        "one of them reverse.one_way"));
      }
    }
  }
  // Checked after the merges are grouped: every legacy column of a merged or split table.
  if (mappings.size() == 0 && problems.empty()) {
    problems.push_back(absl::StrCat("no mapping of pipeline ", f.proto.pipeline(), " into target ", target->name,
                                    " replicates back: nothing for a reverse pipeline to do"));
  }
  root["mappings"] = mappings;
  // Carried: kafka's brokers, network, monitor, log. Not: ha and verify (set them for the reverse
  // pipeline as it runs), nor the forward walshiftd's status port: the next one.
  if (f.proto.has_kafka()) {
    YAML::Node k;
    k["brokers"] = f.proto.kafka().brokers();
    root["kafka"] = k;
  }
  auto carry = [&](const char* key, const google::protobuf::Message& m) {
    std::string text;
    YAML::Node n(YAML::NodeType::Map);
    const auto* d = m.GetDescriptor();
    const auto* r = m.GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const auto* fd = d->field(i);
      if (fd->is_repeated() || !r->HasField(m, fd)) continue;
      switch (fd->cpp_type()) {
        case google::protobuf::FieldDescriptor::CPPTYPE_UINT32: n[fd->name()] = r->GetUInt32(m, fd); break;
        case google::protobuf::FieldDescriptor::CPPTYPE_UINT64: n[fd->name()] = r->GetUInt64(m, fd); break;
        case google::protobuf::FieldDescriptor::CPPTYPE_BOOL: n[fd->name()] = r->GetBool(m, fd); break;
        case google::protobuf::FieldDescriptor::CPPTYPE_STRING: n[fd->name()] = r->GetString(m, fd); break;
        default: break;
      }
    }
    if (n.size() > 0) root[key] = n;
  };
  if (f.proto.has_network()) carry("network", f.proto.network());
  if (f.proto.has_monitor()) carry("monitor", f.proto.monitor());
  if (f.proto.has_log()) carry("log", f.proto.log());
  {
    std::string listen = f.proto.status().listen().empty() ? "127.0.0.1:9187" : f.proto.status().listen();
    size_t colon = listen.rfind(':');
    int port = 0;
    if (colon != std::string::npos && absl::SimpleAtoi(listen.substr(colon + 1), &port) && port > 0) {
      root["status"]["listen"] = absl::StrCat(listen.substr(0, colon), ":", port + 1);
    } else if (!f.proto.status().listen().empty()) {
      root["status"]["listen"] = listen;  // port 0: any free one
    }
  }
  YAML::Emitter e;
  e << root;
  out.yaml = absl::StrCat("# The reverse pipeline of ", f.proto.pipeline(), " (", forward_file,
                          "), derived by walshiftctl reverse.\n# It reads target ", target->name,
                          " and applies to the legacy database; it ignores what ", f.proto.pipeline(),
                          " applied (origin ", out.forward_origin, "),\n# and ", f.proto.pipeline(),
                          " must ignore what this one applies: its source.ignore_origins lists ", out.reverse_origin,
                          ".\n", e.c_str(), "\n");
  // The forward pipeline must not replicate the reverse pipeline's writes back again.
  const auto& fi = f.proto.source().ignore_origins();
  if (std::find(fi.begin(), fi.end(), out.reverse_origin) == fi.end()) {
    problems.push_back(absl::StrCat(forward_file, ": source.ignore_origins must list ", out.reverse_origin,
                                    " (what the reverse pipeline applies to the legacy database), or the forward "
                                    "pipeline would send it back: add `ignore_origins: [",
                                    out.reverse_origin, "]` under source: and restart walshiftd"));
  }
  return out;
}

TableLookup CatalogLookup(const std::string& dsn, const std::string& what) {
  auto conn = std::make_shared<pg::ConnPtr>();
  return [conn, dsn, what](const std::string& qualified) -> absl::StatusOr<std::optional<TableInfo>> {
    if (!*conn) {
      ASSIGN_OR_RETURN(*conn, pg::Connect(dsn, what, "application_name=walshiftctl"));
    }
    std::string name = pg::QuoteQualified(qualified);
    ASSIGN_OR_RETURN(pg::ResultPtr r,
                     pg::ExecParams(conn->get(),
                                    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                                    "a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', "
                                    "coalesce(a.attnum = ANY (i.indkey), false) "
                                    "FROM pg_attribute a LEFT JOIN LATERAL (SELECT indkey FROM pg_index "
                                    "  WHERE indrelid = a.attrelid AND (indisprimary OR indisreplident) "
                                    "  ORDER BY indisprimary DESC LIMIT 1) i ON true "
                                    "WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped "
                                    "ORDER BY a.attnum",
                                    {name.c_str()}, absl::StrCat(what, ": reading ", qualified)));
    if (PQntuples(r.get()) == 0) return std::nullopt;
    TableInfo t;
    for (int i = 0; i < PQntuples(r.get()); ++i) {
      ColumnInfo c{PQgetvalue(r.get(), i, 0), PQgetvalue(r.get(), i, 1), *PQgetvalue(r.get(), i, 2) == 't',
                   *PQgetvalue(r.get(), i, 3) == 't'};
      if (*PQgetvalue(r.get(), i, 4) == 't') t.primary_key.push_back(c.name);
      t.columns.push_back(std::move(c));
    }
    return t;
  };
}

int ReverseCommand(int argc, char** argv) {
  std::string config_path, output;
  ReverseOptions o;
  bool check = false;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if ((a == "--config" || a == "-c") && i + 1 < argc)
      config_path = argv[++i];
    else if (a == "--target" && i + 1 < argc)
      o.target = argv[++i];
    else if (a == "--pipeline" && i + 1 < argc)
      o.pipeline = argv[++i];
    else if (a == "--legacy-target" && i + 1 < argc)
      o.legacy_target = argv[++i];
    else if (a == "--output" && i + 1 < argc)
      output = argv[++i];
    else if (a == "--check")
      check = true;
    else {
      std::fprintf(stderr,
                   "usage: walshiftctl reverse --config FORWARD.yaml [--target NAME] [--pipeline NAME] "
                   "[--legacy-target NAME] [--output FILE] [--check]\n"
                   "  derives the reverse pipeline (new schema -> legacy) from the forward pipeline's config and\n"
                   "  both live schemas; --check validates it and exits 1 when anything cannot go back\n");
      return 2;
    }
  }
  if (config_path.empty()) {
    std::fprintf(stderr, "walshiftctl reverse: --config is required\n");
    return 2;
  }
  auto settings = LoadCommandSettings(config_path);
  if (!settings) return 2;
  const config::TargetSettings* target = nullptr;
  for (const auto& t : settings->targets)
    if (!t.documents() && (o.target.empty() || t.name == o.target) && target == nullptr) target = &t;
  if (target == nullptr) {
    std::fprintf(stderr, "walshiftctl reverse: no PostgreSQL target%s%s\n", o.target.empty() ? "" : " named ",
                 o.target.c_str());
    return 2;
  }
  TableLookup legacy = CatalogLookup(settings->source_dsn, "source");
  TableLookup fresh = CatalogLookup(target->dsn, absl::StrCat("target ", target->name));
  auto derived = DeriveReverse(*settings, config_path, o, legacy, fresh, /*redact_dsn=*/false);
  if (!derived.ok()) {
    std::fprintf(stderr, "walshiftctl reverse: %s\n", std::string(derived.status().message()).c_str());
    return 2;
  }
  // The derived config must load as walshiftd would load it.
  if (derived->problems.empty()) {
    auto loaded = config::LoadSettingsText(derived->yaml, "(derived reverse config)");
    absl::Status st = loaded.status();
    if (loaded.ok()) {
      auto modules = transforms::BuildModules(*loaded, "(derived reverse config)");
      st = modules.status();
      // Against the live schemas, as walshiftd --check would: the new tables as its sources,
      // the legacy tables as its targets.
      if (modules.ok()) st = CheckLiveSchemas(*loaded, *modules, "(derived reverse config)");
    }
    if (!st.ok()) derived->problems.push_back(std::string(st.message()));
  }
  if (!output.empty()) {
    std::ofstream out(output, std::ios::trunc);
    out << derived->yaml;
    out.close();
    chmod(output.c_str(), 0600);
    if (!out) {
      std::fprintf(stderr, "walshiftctl reverse: cannot write %s\n", output.c_str());
      return 2;
    }
  } else if (!check) {
    // On a terminal a literal DSN is shown without its password.
    auto shown = DeriveReverse(*settings, config_path, o, legacy, fresh, /*redact_dsn=*/true);
    if (shown.ok()) std::fputs(shown->yaml.c_str(), stdout);
  }
  FILE* report = output.empty() && !check ? stderr : stdout;
  for (const auto& n : derived->notes) std::fprintf(report, "note: %s\n", n.c_str());
  for (const auto& p : derived->problems) std::fprintf(report, "cannot go back: %s\n", p.c_str());
  if (derived->problems.empty()) {
    std::fprintf(report, "reverse pipeline %s: valid; it ignores origin %s, and %s ignores origin %s%s%s\n",
                 derived->pipeline.c_str(), derived->forward_origin.c_str(), settings->proto.pipeline().c_str(),
                 derived->reverse_origin.c_str(), output.empty() ? "" : "; written to ", output.c_str());
  }
  return derived->problems.empty() ? 0 : 1;
}

}  // namespace walshift::ctl
