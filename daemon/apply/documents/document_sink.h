#pragma once
// Applies target operations to a JSON document store on local disk:
//
//   <dir>/<collection>/<document>.json         one JSON object per row, compact, "\n"-terminated
//   <dir>/_walshift/checkpoint.<pipeline>.json {"commit_time","lsn","pipeline","written_at"}
//   <dir>/_walshift/copy_chunks.<pipeline>.json [{"hi","key_column","lo","rows","snapshot_lsn",
//                                                "source_table"}, ...]
//   <dir>/_walshift/commit.<sink>.json          a group being committed (see below)
//   <dir>/_walshift/lock                        flock()ed by the walshiftd using the store
//
// Operations of the open group change an overlay of the documents they touch (read from disk
// once, on first touch); Flush makes the group durable as one unit: every changed document is
// written to a temporary file and fsynced, then a commit record listing the renames, removals
// and the new checkpoint is written atomically, and only then are documents renamed into place
// and the checkpoint written. A crash before the commit record leaves the store before the
// group; after it, the next Create() finishes the group. Replaying a group from the older
// checkpoint converges as well, since every operation is idempotent.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "daemon/apply/documents/document_store.h"
#include "daemon/apply/documents/json.h"
#include "daemon/core/interfaces.h"

namespace walshift::documents {

struct DocumentSinkOptions {
  std::string name;       // target name from the config
  std::string directory;  // the store's root; created when absent
  std::string pipeline;   // names the checkpoint and copy-chunk files
};

class DocumentSink : public Sink {
 public:
  // Creates the directory tree when absent, locks the store (sinks of one process share the
  // lock; another process holding it → kFailedPrecondition), finishes a commit a crash
  // interrupted and reads the pipeline's checkpoint. kFailedPrecondition with path and
  // reason when the directory cannot be created or used; kDataLoss for a malformed
  // checkpoint or commit record.
  static absl::StatusOr<std::unique_ptr<DocumentSink>> Create(const DocumentSinkOptions& options);
  // Discards the open group (the rollback) and releases the lock.
  ~DocumentSink() override;

  // The layout's names (see document_store.h).
  static std::string CollectionName(absl::string_view table) { return documents::CollectionName(table); }
  static std::string DocumentFileName(const std::vector<std::string>& key_values) {
    return documents::DocumentFileName(key_values);
  }

  // Read helpers for the verifier and walshiftctl; they take no lock and see only committed
  // documents. ForEachDocument calls `fn` for every document of `collection` in file name
  // order (none when the collection does not exist), stopping at its first error.
  // kDataLoss naming the file for a malformed document; kFailedPrecondition for I/O errors.
  static absl::Status ForEachDocument(const std::string& dir, const std::string& collection,
                                      const std::function<absl::Status(const std::string& file, const Json& doc)>& fn);
  // The document, or nullopt when there is none.
  static absl::StatusOr<std::optional<Json>> ReadDocument(const std::string& dir, const std::string& collection,
                                                          const std::string& file);
  // The pipeline's durable checkpoint: kInvalidLsn when there is none; kDataLoss naming the
  // file when it is malformed.
  static absl::StatusOr<Lsn> ReadCheckpoint(const std::string& dir, const std::string& pipeline);
  // The copy chunks recorded for the pipeline (every source table when `source_table` is
  // empty).
  static absl::StatusOr<std::vector<CopyChunk>> ReadCopyChunks(const std::string& dir, const std::string& pipeline,
                                                               const std::string& source_table);

  const std::string& name() const override { return options_.name; }
  // kFailedPrecondition naming target, table and column, with the fix, for a shape that needs
  // SQL (an sql: value, a row filter); every other shape is accepted.
  absl::Status ValidateShape(const OpShape& shape) override { return applier_.ValidateShape(shape); }
  // Applies `op` to the open group. After an error the group cannot be committed: Flush and
  // CommitChunk return that error until the sink is destroyed.
  absl::Status Apply(const TargetOp& op) override;
  void EndTransaction(const TransactionCommit& commit) override;
  // Makes the open group and the checkpoint of its last transaction durable (see above).
  // Returns durable_lsn() (unchanged when no group is open).
  absl::StatusOr<Lsn> Flush() override;
  // Makes the open group durable with `chunk` appended to the copy-chunk file instead of a
  // checkpoint. Sinks of one process serialize their chunk-file updates.
  absl::Status CommitChunk(const CopyChunk& chunk) override;
  absl::StatusOr<std::vector<CopyChunk>> CopyChunks(const std::string& source_table) override;
  Lsn durable_lsn() const override { return durable_lsn_; }
  size_t pending_changes() const override { return group_changes_; }
  uint64_t applied_changes() const override { return applied_changes_; }

  // Internal: the process's hold on one store's lock (document_sink.cc).
  struct StoreLock;

 private:
  // The open group's documents over the files on disk.
  class Overlay : public DocumentStorage {
   public:
    explicit Overlay(const DocumentSink* sink) : sink_(sink) {}
    absl::StatusOr<const Json*> Read(const std::string& collection, const std::string& file) override;
    absl::StatusOr<Json*> Modify(const std::string& collection, const std::string& file) override;
    absl::Status Put(const std::string& collection, const std::string& file, Json doc) override;
    absl::Status Erase(const std::string& collection, const std::string& file) override;
    absl::Status EraseAll(const std::string& collection) override;
    absl::StatusOr<std::vector<std::string>> Files(const std::string& collection) override;

    struct Entry {
      std::optional<Json> doc;  // nullopt: no document
      bool dirty = false;
    };
    struct Collection {
      std::unordered_map<std::string, Entry> docs;  // node-based: pointers stay valid
      bool truncated = false;                       // the documents on disk are gone unless `docs` has them
    };
    std::map<std::string, Collection> collections;

   private:
    Collection& CollectionOf(const std::string& collection) { return collections[collection]; }
    absl::StatusOr<Entry*> Load(const std::string& collection, const std::string& file);
    const DocumentSink* sink_;
  };

  explicit DocumentSink(DocumentSinkOptions options);
  // Writes the open group durably with `meta` (name in _walshift → content) written
  // atomically after the documents, then resets the group.
  absl::Status Commit(const std::vector<std::pair<std::string, std::string>>& meta, bool crash_points);
  void ResetGroup();
  std::string CheckpointName() const { return absl::StrCat("checkpoint.", options_.pipeline, ".json"); }
  std::string ChunksName() const { return absl::StrCat("copy_chunks.", options_.pipeline, ".json"); }

  DocumentSinkOptions options_;
  std::string root_;           // canonical path of the directory
  StoreLock* lock_ = nullptr;  // shared with the process's other sinks of the store
  std::string instance_;       // unique per sink in this process: names its temporary files
  Overlay overlay_;
  DocumentApplier applier_;
  absl::Status first_error_;
  bool have_commit_ = false;
  TransactionCommit last_commit_;
  size_t group_changes_ = 0;
  Lsn durable_lsn_ = kInvalidLsn;
  uint64_t applied_changes_ = 0;
};

}  // namespace walshift::documents
