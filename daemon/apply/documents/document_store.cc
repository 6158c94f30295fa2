#include "daemon/apply/documents/document_store.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "daemon/apply/documents/json_value.h"
#include "daemon/core/lsn.h"
#include "daemon/core/status_macros.h"

namespace walshift::documents {
namespace {

constexpr size_t kMaxNameBytes = 200;
constexpr size_t kKeptNameBytes = 180;
constexpr size_t kMaxShownValue = 64;

void AppendEscaped(char c, std::string* out) { absl::StrAppendFormat(out, "%%%02X", static_cast<unsigned char>(c)); }

uint64_t Fnv1a64(absl::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

std::string Shorten(absl::string_view v) {
  if (v.size() <= kMaxShownValue) return std::string(v);
  return absl::StrCat(v.substr(0, kMaxShownValue), "... (", v.size(), " bytes)");
}

// The field an element is sorted by first: `sort_by`, else the first key field.
const std::string& SortField(const ArraySpec& a) {
  if (!a.sort_by.empty()) return a.sort_by;
  return a.element[a.element_key.empty() ? 0 : a.element_key[0]].column;
}

std::vector<std::string> KeyFields(const ArraySpec& a) {
  std::vector<std::string> out;
  for (int k : a.element_key) out.push_back(a.element[k].column);
  return out;
}

// Orders by one field as ORDER BY e -> 'field' does: jsonb order, an absent field last.
int CompareField(const Json& a, const Json& b, const std::string& field) {
  const Json* x = a.Find(field);
  const Json* y = b.Find(field);
  if (x == nullptr || y == nullptr) return (x == nullptr ? 1 : 0) - (y == nullptr ? 1 : 0);
  return Json::Compare(*x, *y);
}

bool Written(const TargetOp& op, const TargetValue& v) {
  return !(v.param >= 0 && op.params[v.param].is_unchanged_toast());
}

std::string SqlRefusal(const std::string& target, absl::string_view what) {
  return absl::StrCat("target ", target, " is a document store, which cannot evaluate SQL: ", what);
}

}  // namespace

std::string CollectionName(absl::string_view table) {
  absl::string_view t = table;
  absl::ConsumePrefix(&t, "public.");
  std::string out;
  for (size_t i = 0; i < t.size(); ++i) {
    char c = t[i];
    bool plain = absl::ascii_isalnum(c) || c == '_' || c == '-' || (c == '.' && i > 0);
    if (i == 0 && c == '_' && t == "_walshift") plain = false;
    if (plain) {
      out.push_back(c);
    } else {
      AppendEscaped(c, &out);
    }
  }
  return out;
}

std::string DocumentFileName(const std::vector<std::string>& key_values) {
  std::string name;
  for (size_t i = 0; i < key_values.size(); ++i) {
    if (i > 0) name.push_back(',');
    for (char c : key_values[i]) {
      if (absl::ascii_isalnum(c) || c == '_' || c == '-') {
        name.push_back(c);
      } else {
        AppendEscaped(c, &name);
      }
    }
  }
  if (name.size() > kMaxNameBytes) {
    name = absl::StrCat(name.substr(0, kKeptNameBytes), "~", absl::StrFormat("%016x", Fnv1a64(name)));
  }
  name.append(".json");
  return name;
}

DocumentApplier::DocumentApplier(std::string target, DocumentStorage* storage)
    : target_(std::move(target)), storage_(storage) {}

absl::Status DocumentApplier::ValidateShape(const OpShape& shape) const {
  if (!shape.condition.empty()) {
    return absl::FailedPreconditionError(
        SqlRefusal(target_, absl::StrCat("table ", shape.table, " (from ", shape.source_table, ") has a row filter (",
                                         Shorten(shape.condition),
                                         "): remove the row filter from the mapping, or add a generated column to the "
                                         "legacy table")));
  }
  auto check = [&](const std::vector<TargetValue>& values, bool need_params) -> absl::Status {
    for (const TargetValue& v : values) {
      if (!v.sql.empty()) {
        return absl::FailedPreconditionError(SqlRefusal(
            target_, absl::StrCat("map column ", v.column, " of ", shape.table, " (from ", shape.source_table,
                                  ") from a source column or a constant, or add a generated column to the legacy "
                                  "table")));
      }
      if (need_params && (v.param < 0 || v.param >= shape.num_params)) {
        return absl::InvalidArgumentError(absl::StrCat("target ", shape.target, ": column ", v.column, " of ",
                                                       shape.table, " has no parameter (shape ", shape.id, ")"));
      }
    }
    return absl::OkStatus();
  };
  bool params = shape.kind != OpKind::kTruncate && shape.kind != OpKind::kClearColumns;
  RETURN_IF_ERROR(check(shape.values, params));
  RETURN_IF_ERROR(check(shape.match, params));
  RETURN_IF_ERROR(check(shape.array.element, params));
  for (int k : shape.key) {
    if (k < 0 || k >= static_cast<int>(shape.values.size())) {
      return absl::InvalidArgumentError(absl::StrCat("target ", shape.target, ": ", shape.table, ": key index ", k,
                                                     " out of range (shape ", shape.id, ")"));
    }
  }
  if (shape.kind == OpKind::kArrayUpsert || shape.kind == OpKind::kArrayRemove) {
    const ArraySpec& a = shape.array;
    auto bad = [&](int i) { return i < 0 || i >= static_cast<int>(a.element.size()); };
    bool ok = !a.column.empty() && !a.element_key.empty();
    for (int k : a.element_key) ok = ok && !bad(k);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat("target ", shape.target, ": ", shape.table,
                                                     ": malformed array spec for column ", a.column, " (shape ",
                                                     shape.id, ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status DocumentApplier::Context(const TargetOp& op, absl::string_view key_text,
                                      const absl::Status& status) const {
  const OpShape& s = *op.shape;
  return absl::Status(status.code(),
                      absl::StrCat("target ", target_, ": ", OpKindName(s.kind), " of ", s.table,
                                   key_text.empty() ? "" : absl::StrCat(" key (", key_text, ")"), " at LSN ",
                                   FormatLsn(op.lsn), " (source ", s.source_table, "): ", status.message()));
}

absl::Status DocumentApplier::Apply(const TargetOp& op) {
  const OpShape& shape = *op.shape;
  if (!validated_.contains(shape.id)) {
    RETURN_IF_ERROR(ValidateShape(shape));
    validated_.insert(shape.id);
  }
  const std::string collection = CollectionName(shape.table);
  switch (shape.kind) {
    case OpKind::kUpsert:
      return ApplyUpsert(op, collection);
    case OpKind::kDelete:
      return ApplyDelete(op, collection);
    case OpKind::kUpdateOnly:
      return ApplyUpdateOnly(op, collection);
    case OpKind::kTruncate:
      return ApplyTruncate(op, collection);
    case OpKind::kClearColumns:
      return ApplyClearColumns(op, collection);
    case OpKind::kArrayUpsert:
      return ApplyArrayUpsert(op, collection);
    case OpKind::kArrayRemove:
      return ApplyArrayRemove(op, collection);
  }
  return absl::InvalidArgumentError("unknown operation kind");
}

absl::StatusOr<std::string> DocumentApplier::FileOf(const TargetOp& op, const std::vector<TargetValue>& values,
                                                    const std::vector<int>* indices, std::string* key_text) const {
  std::vector<std::string> raw;
  size_t n = indices ? indices->size() : values.size();
  for (size_t i = 0; i < n; ++i) {
    const TargetValue& v = values[indices ? (*indices)[i] : i];
    const Datum& d = op.params[v.param];
    if (!key_text->empty()) key_text->append(", ");
    if (d.is_null()) {
      absl::StrAppend(key_text, v.column, "=NULL");
    } else {
      absl::StrAppend(key_text, v.column, "=", Shorten(d.view()));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const TargetValue& v = values[indices ? (*indices)[i] : i];
    const Datum& d = op.params[v.param];
    if (d.is_unchanged_toast()) {
      return Context(
          op, *key_text,
          absl::DataLossError(absl::StrCat("key column ", v.column, " arrived as an unchanged TOAST value")));
    }
    if (d.is_null()) {
      return Context(
          op, *key_text,
          absl::InvalidArgumentError(absl::StrCat("key column ", v.column, " is NULL: a document needs a key")));
    }
    raw.emplace_back(d.view());
  }
  return DocumentFileName(raw);
}

absl::StatusOr<Json> DocumentApplier::ValueOf(const TargetOp& op, const TargetValue& v) const {
  auto j = DatumToJson(op.params[v.param], v.type);
  if (!j.ok()) {
    return absl::Status(
        j.status().code(),
        absl::StrCat("column ", v.column, " (from ", v.origin.empty() ? "?" : v.origin, "): ", j.status().message()));
  }
  return j;
}

absl::Status DocumentApplier::SetValues(const TargetOp& op, const std::vector<TargetValue>& values, Json* doc) const {
  for (const TargetValue& v : values) {
    if (!Written(op, v)) continue;
    ASSIGN_OR_RETURN(Json j, ValueOf(op, v));
    doc->Set(v.column, std::move(j));
  }
  return absl::OkStatus();
}

absl::StatusOr<Json> DocumentApplier::Element(const TargetOp& op, bool key_only) const {
  const ArraySpec& a = op.shape->array;
  Json element = Json::MakeObject();
  for (size_t i = 0; i < a.element.size(); ++i) {
    if (key_only && std::find(a.element_key.begin(), a.element_key.end(), static_cast<int>(i)) == a.element_key.end()) {
      continue;
    }
    ASSIGN_OR_RETURN(Json j, ValueOf(op, a.element[i]));
    element.Set(a.element[i].column, std::move(j));
  }
  return element;
}

absl::Status DocumentApplier::ApplyUpsert(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  std::string key_text;
  ASSIGN_OR_RETURN(std::string file, FileOf(op, s.values, &s.key, &key_text));
  auto doc = storage_->Modify(collection, file);
  if (!doc.ok()) return Context(op, key_text, doc.status());
  if (*doc == nullptr) {
    Json fresh = Json::MakeObject();
    absl::Status st = SetValues(op, s.values, &fresh);
    if (!st.ok()) return Context(op, key_text, st);
    Reindex(collection, file, &fresh);
    st = storage_->Put(collection, file, std::move(fresh));
    return st.ok() ? st : Context(op, key_text, st);
  }
  bool indexed = Indexed(collection);
  if (indexed) Unindex(collection, file, *doc);
  absl::Status st = SetValues(op, s.values, *doc);
  if (indexed) Reindex(collection, file, *doc);
  return st.ok() ? st : Context(op, key_text, st);
}

absl::Status DocumentApplier::ApplyDelete(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  std::string key_text;
  ASSIGN_OR_RETURN(std::string file, FileOf(op, s.values, s.key.empty() ? nullptr : &s.key, &key_text));
  auto doc = storage_->Read(collection, file);
  if (!doc.ok()) return Context(op, key_text, doc.status());
  if (*doc == nullptr) return absl::OkStatus();
  for (const std::string& field : s.keep_if_any) {
    const Json* v = (*doc)->Find(field);
    if (v != nullptr && !v->is_null()) return absl::OkStatus();
  }
  Unindex(collection, file, *doc);
  absl::Status st = storage_->Erase(collection, file);
  return st.ok() ? st : Context(op, key_text, st);
}

absl::Status DocumentApplier::ApplyUpdateOnly(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  std::string key_text;
  ASSIGN_OR_RETURN(std::string file, FileOf(op, s.values, &s.key, &key_text));
  std::string from = file;
  if (!s.match.empty()) {
    std::string match_text;
    ASSIGN_OR_RETURN(from, FileOf(op, s.match, nullptr, &match_text));
    if (from != file) key_text = absl::StrCat(match_text, " → ", key_text);
  }
  if (from == file) {
    auto mut = storage_->Modify(collection, file);
    if (!mut.ok()) return Context(op, key_text, mut.status());
    if (*mut == nullptr) return absl::OkStatus();
    bool indexed = Indexed(collection);
    if (indexed) Unindex(collection, file, *mut);
    absl::Status st = SetValues(op, s.values, *mut);
    if (indexed) Reindex(collection, file, *mut);
    return st.ok() ? st : Context(op, key_text, st);
  }
  // A key change: the document moves to its new key unless that key is taken.
  auto old_doc = storage_->Read(collection, from);
  if (!old_doc.ok()) return Context(op, key_text, old_doc.status());
  if (*old_doc == nullptr) return absl::OkStatus();
  auto taken = storage_->Read(collection, file);
  if (!taken.ok()) return Context(op, key_text, taken.status());
  if (*taken != nullptr) return absl::OkStatus();
  Json moved = **old_doc;
  absl::Status st = SetValues(op, s.values, &moved);
  if (!st.ok()) return Context(op, key_text, st);
  Unindex(collection, from, *old_doc);
  Reindex(collection, file, &moved);
  st = storage_->Put(collection, file, std::move(moved));
  if (st.ok()) st = storage_->Erase(collection, from);
  return st.ok() ? st : Context(op, key_text, st);
}

absl::Status DocumentApplier::ApplyTruncate(const TargetOp& op, const std::string& collection) {
  auto it = indexes_.find(collection);
  if (it != indexes_.end()) {
    for (auto& index : it->second) index->files_by_key.clear();
  }
  absl::Status st = storage_->EraseAll(collection);
  return st.ok() ? st : Context(op, "", st);
}

absl::Status DocumentApplier::ApplyClearColumns(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  auto files = storage_->Files(collection);
  if (!files.ok()) return Context(op, "", files.status());
  for (const std::string& file : *files) {
    auto doc = storage_->Modify(collection, file);
    if (!doc.ok()) return Context(op, "", doc.status());
    if (*doc == nullptr) continue;
    for (const TargetValue& v : s.values) (*doc)->Set(v.column, Json());
  }
  auto it = indexes_.find(collection);
  if (it != indexes_.end()) {
    for (auto& index : it->second) {
      for (const TargetValue& v : s.values)
        if (v.column == index->column) index->files_by_key.clear();
    }
  }
  return absl::OkStatus();
}

std::string DocumentApplier::ElementKey(const Json& element, const std::vector<std::string>& key_fields) {
  Json key = Json::MakeObject();
  for (const std::string& f : key_fields) {
    const Json* v = element.Find(f);
    key.Set(f, v ? *v : Json());
  }
  return key.CanonicalText();
}

absl::StatusOr<DocumentApplier::ArrayIndex*> DocumentApplier::IndexFor(const OpShape& shape,
                                                                       const std::string& collection) {
  std::vector<std::string> key_fields = KeyFields(shape.array);
  auto& list = indexes_[collection];
  for (auto& index : list) {
    if (index->column == shape.array.column && index->key_fields == key_fields) return index.get();
  }
  auto index = std::make_unique<ArrayIndex>();
  index->column = shape.array.column;
  index->key_fields = std::move(key_fields);
  ArrayIndex* raw = index.get();
  auto files = storage_->Files(collection);
  if (!files.ok()) {
    if (list.empty()) indexes_.erase(collection);
    return files.status();
  }
  for (const std::string& file : *files) {
    auto doc = storage_->Read(collection, file);
    if (!doc.ok()) {
      if (list.empty()) indexes_.erase(collection);
      return doc.status();
    }
    if (*doc == nullptr) continue;
    const Json* array = (*doc)->Find(raw->column);
    if (array == nullptr || !array->is_array()) continue;
    for (const Json& e : array->array()) raw->files_by_key[ElementKey(e, raw->key_fields)].insert(file);
  }
  list.push_back(std::move(index));
  return raw;
}

void DocumentApplier::Unindex(const std::string& collection, const std::string& file, const Json* doc) {
  auto it = indexes_.find(collection);
  if (it == indexes_.end() || doc == nullptr) return;
  for (auto& index : it->second) {
    const Json* array = doc->Find(index->column);
    if (array == nullptr || !array->is_array()) continue;
    for (const Json& e : array->array()) {
      auto found = index->files_by_key.find(ElementKey(e, index->key_fields));
      if (found == index->files_by_key.end()) continue;
      found->second.erase(file);
      if (found->second.empty()) index->files_by_key.erase(found);
    }
  }
}

void DocumentApplier::Reindex(const std::string& collection, const std::string& file, const Json* doc) {
  auto it = indexes_.find(collection);
  if (it == indexes_.end() || doc == nullptr) return;
  for (auto& index : it->second) {
    const Json* array = doc->Find(index->column);
    if (array == nullptr || !array->is_array()) continue;
    for (const Json& e : array->array()) index->files_by_key[ElementKey(e, index->key_fields)].insert(file);
  }
}

bool DocumentApplier::RemoveElement(Json* doc, const std::string& column, const std::vector<std::string>& key_fields,
                                    const std::string& key) {
  Json* array = doc->is_object() ? &doc->mutable_object()[column] : nullptr;
  if (array == nullptr || !array->is_array()) return false;
  auto& elements = array->mutable_array();
  auto end =
      std::remove_if(elements.begin(), elements.end(), [&](const Json& e) { return ElementKey(e, key_fields) == key; });
  bool removed = end != elements.end();
  elements.erase(end, elements.end());
  return removed;
}

absl::Status DocumentApplier::ApplyArrayUpsert(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  const ArraySpec& a = s.array;
  std::string key_text;
  // An owned element whose parent key is NULL has no parent to join (its owner cannot have
  // written one): it only leaves the parents it was in.
  bool no_parent = false;
  for (const TargetValue& v : s.values) no_parent |= a.owned && v.param >= 0 && op.params[v.param].is_null();
  std::string parent;
  if (!no_parent) {
    ASSIGN_OR_RETURN(parent, FileOf(op, s.values, nullptr, &key_text));
  }
  auto element = Element(op, false);
  if (!element.ok()) return Context(op, key_text, element.status());
  const std::vector<std::string> key_fields = KeyFields(a);
  const std::string key = ElementKey(*element, key_fields);

  if (a.leave_others) {
    auto index = IndexFor(s, collection);
    if (!index.ok()) return Context(op, key_text, index.status());
    auto found = (*index)->files_by_key.find(key);
    if (found != (*index)->files_by_key.end()) {
      std::vector<std::string> holders(found->second.begin(), found->second.end());
      for (const std::string& other : holders) {
        if (other == parent) continue;
        auto doc = storage_->Modify(collection, other);
        if (!doc.ok()) return Context(op, key_text, doc.status());
        if (*doc == nullptr) continue;
        Unindex(collection, other, *doc);
        RemoveElement(*doc, a.column, key_fields, key);
        Reindex(collection, other, *doc);
      }
    }
  }

  if (no_parent) return absl::OkStatus();
  auto doc = storage_->Modify(collection, parent);
  if (!doc.ok()) return Context(op, key_text, doc.status());
  if (*doc == nullptr) {
    if (a.owned) return absl::OkStatus();
    Json fresh = Json::MakeObject();
    absl::Status st = SetValues(op, s.values, &fresh);
    if (!st.ok()) return Context(op, key_text, st);
    fresh.Set(a.column, Json::MakeArray({*std::move(element)}));
    Reindex(collection, parent, &fresh);
    st = storage_->Put(collection, parent, std::move(fresh));
    return st.ok() ? st : Context(op, key_text, st);
  }
  Json* array = &(*doc)->mutable_object()[a.column];
  if (array->is_null()) *array = Json::MakeArray();
  if (!array->is_array()) {
    return Context(op, key_text,
                   absl::FailedPreconditionError(
                       absl::StrCat("field ", a.column, " of document ", collection, "/", parent, " is not an array")));
  }
  Unindex(collection, parent, *doc);
  RemoveElement(*doc, a.column, key_fields, key);
  auto& elements = array->mutable_array();
  const std::string& sort_field = SortField(a);
  auto less = [&](const Json& x, const Json& y) {
    int c = CompareField(x, y, sort_field);
    for (size_t i = 0; c == 0 && i < key_fields.size(); ++i) c = CompareField(x, y, key_fields[i]);
    return c < 0;
  };
  if (std::is_sorted(elements.begin(), elements.end(), less)) {
    elements.insert(std::upper_bound(elements.begin(), elements.end(), *element, less), *std::move(element));
  } else {
    elements.push_back(*std::move(element));
    std::stable_sort(elements.begin(), elements.end(), less);
  }
  Reindex(collection, parent, *doc);
  return absl::OkStatus();
}

absl::Status DocumentApplier::ApplyArrayRemove(const TargetOp& op, const std::string& collection) {
  const OpShape& s = *op.shape;
  const ArraySpec& a = s.array;
  auto element = Element(op, true);
  if (!element.ok()) return Context(op, "", element.status());
  const std::vector<std::string> key_fields = KeyFields(a);
  const std::string key = ElementKey(*element, key_fields);
  auto index = IndexFor(s, collection);
  if (!index.ok()) return Context(op, key, index.status());
  auto found = (*index)->files_by_key.find(key);
  if (found == (*index)->files_by_key.end()) return absl::OkStatus();
  std::vector<std::string> holders(found->second.begin(), found->second.end());
  for (const std::string& file : holders) {
    auto doc = storage_->Modify(collection, file);
    if (!doc.ok()) return Context(op, key, doc.status());
    if (*doc == nullptr) continue;
    Unindex(collection, file, *doc);
    RemoveElement(*doc, a.column, key_fields, key);
    Reindex(collection, file, *doc);
  }
  return absl::OkStatus();
}

// DocumentSet.

DocumentSet::DocumentSet(std::string target) : applier_(std::move(target), &storage_) {}

const Json* DocumentSet::Find(const std::string& collection, const std::string& file) const {
  auto c = storage_.docs.find(collection);
  if (c == storage_.docs.end()) return nullptr;
  auto d = c->second.find(file);
  return d == c->second.end() ? nullptr : &d->second;
}

absl::StatusOr<const Json*> DocumentSet::MemoryStorage::Read(const std::string& collection, const std::string& file) {
  auto c = docs.find(collection);
  if (c == docs.end()) return nullptr;
  auto d = c->second.find(file);
  return d == c->second.end() ? nullptr : &d->second;
}

absl::StatusOr<Json*> DocumentSet::MemoryStorage::Modify(const std::string& collection, const std::string& file) {
  auto c = docs.find(collection);
  if (c == docs.end()) return nullptr;
  auto d = c->second.find(file);
  return d == c->second.end() ? nullptr : &d->second;
}

absl::Status DocumentSet::MemoryStorage::Put(const std::string& collection, const std::string& file, Json doc) {
  docs[collection][file] = std::move(doc);
  return absl::OkStatus();
}

absl::Status DocumentSet::MemoryStorage::Erase(const std::string& collection, const std::string& file) {
  auto c = docs.find(collection);
  if (c != docs.end()) c->second.erase(file);
  return absl::OkStatus();
}

absl::Status DocumentSet::MemoryStorage::EraseAll(const std::string& collection) {
  auto c = docs.find(collection);
  if (c != docs.end()) c->second.clear();
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> DocumentSet::MemoryStorage::Files(const std::string& collection) {
  std::vector<std::string> out;
  auto c = docs.find(collection);
  if (c == docs.end()) return out;
  for (const auto& [file, doc] : c->second) out.push_back(file);
  return out;
}

}  // namespace walshift::documents
