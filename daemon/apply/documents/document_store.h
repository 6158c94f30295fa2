#pragma once
// The document store's semantics of target operations (target_op.h), once, over two storage
// backends: the sink's overlay of the open group over the files on disk (document_sink.h) and
// a memory-only set the verifier uses to compute expected documents (DocumentSet).
//
// A target table is a collection; a row is a document, a JSON object of the columns written
// to it (key columns included), named after its key values (DocumentFileName). Every
// operation is idempotent when a group is replayed in order on the state before or after it.

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "daemon/apply/documents/json.h"
#include "daemon/core/interfaces.h"
#include "daemon/core/target_op.h"

namespace walshift::documents {

// The collection (directory) of target table `table` ("schema.table"): "public." is dropped
// ("public.users" → "users", "app.users" → "app.users"). Bytes outside [A-Za-z0-9_.-] are
// written %XX, as is a leading '.' and the '_' of a collection that would be "_walshift", so
// every collection is one safe directory name beside the store's own.
std::string CollectionName(absl::string_view table);

// The file of the document with these key values (raw text, in key order): each value
// percent-encoded (every byte outside [A-Za-z0-9_-] as %XX), joined with ','; a name longer
// than 200 bytes becomes its first 180 bytes, '~' and the 16 hex digits of the FNV-1a-64 of
// the whole name. Ends with ".json"; never starts with '.'.
std::string DocumentFileName(const std::vector<std::string>& key_values);

// Where the documents of one store live while operations are applied. Pointers returned stay
// valid until the next call that changes the same collection.
class DocumentStorage {
 public:
  virtual ~DocumentStorage() = default;
  // The document, or nullptr when there is none.
  virtual absl::StatusOr<const Json*> Read(const std::string& collection, const std::string& file) = 0;
  // The same, to be changed in place (the document counts as written).
  virtual absl::StatusOr<Json*> Modify(const std::string& collection, const std::string& file) = 0;
  virtual absl::Status Put(const std::string& collection, const std::string& file, Json doc) = 0;
  virtual absl::Status Erase(const std::string& collection, const std::string& file) = 0;
  virtual absl::Status EraseAll(const std::string& collection) = 0;
  // The files of the collection's documents, sorted (a full scan: truncates, clears and the
  // first array index of a collection only).
  virtual absl::StatusOr<std::vector<std::string>> Files(const std::string& collection) = 0;
};

// Applies target operations to a DocumentStorage. Keeps, per (collection, array column), an
// index of which documents hold which element key, built by one scan when an operation first
// needs it and kept up to date by every change made through this applier (it must be the
// storage's only writer). Not thread-safe.
class DocumentApplier {
 public:
  // `target` names the target in messages; `storage` must outlive the applier.
  DocumentApplier(std::string target, DocumentStorage* storage);

  // kFailedPrecondition naming target, table and column, with the fix, when `shape` needs SQL
  // (a value with an sql: expression, a row filter); kInvalidArgument when a value that must
  // be read has no parameter. Every other shape of every kind is accepted.
  absl::Status ValidateShape(const OpShape& shape) const;
  // Applies one operation (validating its shape the first time it is seen). Errors name the
  // target, table (collection), key and the operation's LSN.
  absl::Status Apply(const TargetOp& op);
  // Forgets the array indexes (after the storage was changed behind the applier's back).
  void ResetIndexes() { indexes_.clear(); }

 private:
  // Which documents of a collection hold an element with a given key in `column`.
  struct ArrayIndex {
    std::string column;
    std::vector<std::string> key_fields;
    absl::flat_hash_map<std::string, std::set<std::string>> files_by_key;  // CanonicalText of key
  };

  absl::Status ApplyUpsert(const TargetOp& op, const std::string& collection);
  absl::Status ApplyDelete(const TargetOp& op, const std::string& collection);
  absl::Status ApplyUpdateOnly(const TargetOp& op, const std::string& collection);
  absl::Status ApplyTruncate(const TargetOp& op, const std::string& collection);
  absl::Status ApplyClearColumns(const TargetOp& op, const std::string& collection);
  absl::Status ApplyArrayUpsert(const TargetOp& op, const std::string& collection);
  absl::Status ApplyArrayRemove(const TargetOp& op, const std::string& collection);

  // The file named by the values `indices` of `values` select (all when `indices` is null).
  absl::StatusOr<std::string> FileOf(const TargetOp& op, const std::vector<TargetValue>& values,
                                     const std::vector<int>* indices, std::string* key_text) const;
  // Sets every written value of `values` in `doc` (an unchanged TOAST value is not written).
  absl::Status SetValues(const TargetOp& op, const std::vector<TargetValue>& values, Json* doc) const;
  absl::StatusOr<Json> ValueOf(const TargetOp& op, const TargetValue& v) const;
  // The JSON object of the element fields of an array operation (only the key fields when
  // `key_only`).
  absl::StatusOr<Json> Element(const TargetOp& op, bool key_only) const;

  // The index for the shape's array, built on first use.
  absl::StatusOr<ArrayIndex*> IndexFor(const OpShape& shape, const std::string& collection);
  static std::string ElementKey(const Json& element, const std::vector<std::string>& key_fields);
  // Keeps the collection's indexes in step with a document change: call Unindex with the
  // document as it was before changing it and Reindex with it as it is after.
  void Unindex(const std::string& collection, const std::string& file, const Json* doc);
  void Reindex(const std::string& collection, const std::string& file, const Json* doc);
  bool Indexed(const std::string& collection) const { return indexes_.count(collection) > 0; }
  // Removes the elements with key `key` from `doc`'s array `column`; true when one was.
  static bool RemoveElement(Json* doc, const std::string& column, const std::vector<std::string>& key_fields,
                            const std::string& key);

  absl::Status Context(const TargetOp& op, absl::string_view key_text, const absl::Status& status) const;

  std::string target_;
  DocumentStorage* storage_;
  mutable absl::flat_hash_set<uint32_t> validated_;
  std::map<std::string, std::vector<std::unique_ptr<ArrayIndex>>> indexes_;
};

// A memory-only document store: the same operations as the sink, applied to a map, with no
// disk at all (the verifier's expected documents). Not thread-safe.
class DocumentSet {
 public:
  using Documents = std::map<std::string, std::map<std::string, Json>>;  // collection → file → doc

  explicit DocumentSet(std::string target = "documents");
  DocumentSet(const DocumentSet&) = delete;
  DocumentSet& operator=(const DocumentSet&) = delete;

  absl::Status ValidateShape(const OpShape& shape) const { return applier_.ValidateShape(shape); }
  absl::Status Apply(const TargetOp& op) { return applier_.Apply(op); }
  // Every document, by collection and file (collections may be empty).
  const Documents& documents() const { return storage_.docs; }
  // The document, or nullptr.
  const Json* Find(const std::string& collection, const std::string& file) const;

 private:
  struct MemoryStorage : DocumentStorage {
    absl::StatusOr<const Json*> Read(const std::string& collection, const std::string& file) override;
    absl::StatusOr<Json*> Modify(const std::string& collection, const std::string& file) override;
    absl::Status Put(const std::string& collection, const std::string& file, Json doc) override;
    absl::Status Erase(const std::string& collection, const std::string& file) override;
    absl::Status EraseAll(const std::string& collection) override;
    absl::StatusOr<std::vector<std::string>> Files(const std::string& collection) override;
    Documents docs;
  };
  MemoryStorage storage_;
  DocumentApplier applier_;
};

}  // namespace walshift::documents
