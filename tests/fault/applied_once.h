#pragma once
// Counting what walshiftd applied, to prove that no change was applied twice. On the legacy
// side every row change gets a unique stamp (one sequence, set by a BEFORE trigger); the mappings
// carry the stamps into the target rows; on the target a counting trigger logs, per row write,
// each stamp the write set, and all of the row's stamps for a write that changed nothing (a row
// rewritten as it was). A write that changed other columns only (a JSON array of the row) logs
// none. The legacy side never reuses a stamp, so a stamp logged twice for one
// key means a change that was committed once was committed again. (Mappings that read legacy
// rows back, such as owner fills or unchanged TOAST values, can legitimately write a stamp
// twice: the tests using this avoid them. So can a table that receives JSON array writes: a run
// of array changes may leave a row as it was, e.g. an element added and removed in one group.
// Such tables are checked for effect, not counted.)

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace walshift::testing {

// Legacy side, once per database: the sequence and the trigger function.
inline const std::string kStampFunctionSql = R"sql(
CREATE SEQUENCE stamps;
CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.stamp := nextval('stamps'); RETURN NEW; END$$;
)sql";

// Legacy side: `table` (with a bigint column `stamp`) gets a new stamp on every insert and update.
inline std::string StampTriggerSql(const std::string& table) {
  return absl::StrCat("CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON ", table,
                      " FOR EACH ROW EXECUTE FUNCTION stamp();");
}

// Target side, once per database: the log and the counting trigger function (arguments: the
// key column, then the stamp columns).
inline const std::string kCountingFunctionSql = R"sql(
CREATE TABLE applied_log (tbl text NOT NULL, key text NOT NULL, part text NOT NULL, stamp bigint NOT NULL);
CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  key_column text := TG_ARGV[0];
  p text;
  new_stamp bigint;
  old_stamp bigint;
  changed boolean := false;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    changed := NEW IS DISTINCT FROM OLD;
  END IF;
  FOR i IN 1 .. TG_NARGS - 1 LOOP
    p := TG_ARGV[i];
    EXECUTE format('SELECT ($1).%I', p) INTO new_stamp USING NEW;
    CONTINUE WHEN new_stamp IS NULL;
    IF TG_OP = 'UPDATE' AND changed THEN
      EXECUTE format('SELECT ($1).%I', p) INTO old_stamp USING OLD;
      CONTINUE WHEN new_stamp IS NOT DISTINCT FROM old_stamp;
    END IF;
    INSERT INTO applied_log VALUES (TG_TABLE_NAME, row_to_json(NEW)->>key_column, p, new_stamp);
  END LOOP;
  RETURN NULL;
END$$;
)sql";

// Target side: count the writes of `table`, whose key column is `key` and whose stamp columns
// are `stamps`.
inline std::string CountingTriggerSql(const std::string& table, const std::string& key,
                                      const std::vector<std::string>& stamps) {
  return absl::StrCat("CREATE TRIGGER count_writes AFTER INSERT OR UPDATE ON ", table,
                      " FOR EACH ROW EXECUTE FUNCTION count_writes('", key, "', '", absl::StrJoin(stamps, "', '"),
                      "');");
}

// Target side: the stamps written more than once (table, key, stamp column, stamp, times).
inline const std::string kAppliedTwiceSql =
    "SELECT tbl, key, part, stamp::text, count(*)::text FROM applied_log GROUP BY 1, 2, 3, 4 HAVING count(*) > 1 "
    "ORDER BY 1, 2 LIMIT 10";

// Target side: how many of `table`'s current stamps in `stamp` the log lacks (must be 0: the
// counting trigger saw walshiftd's writes at all).
inline std::string UnloggedStampsSql(const std::string& table, const std::string& key, const std::string& stamp) {
  return absl::StrCat("SELECT count(*)::text FROM ", table, " t WHERE t.", stamp,
                      " IS NOT NULL AND NOT EXISTS (SELECT 1 FROM applied_log l WHERE l.tbl = '", table,
                      "' AND l.key = t.", key, "::text AND l.part = '", stamp, "' AND l.stamp = t.", stamp, ")");
}

}  // namespace walshift::testing
