#pragma once
// Where the messages of large transactions that the walsender streams before they commit
// (pgoutput protocol 2, `streaming 'on'`) wait until their Stream Commit or Stream Abort: one
// file per transaction in a private directory, so memory stays bounded whatever the
// transaction's size. At Stream Commit the messages are replayed in order as one ordinary
// transaction (as PostgreSQL's own apply worker does with its stream files); at Stream Abort of
// the transaction its file goes, and at the abort of a subtransaction the file is cut back to
// where that subtransaction's first message began (later subtransactions nested in it go with
// it). Nothing in here is needed after the process: after a crash or reconnect the walsender
// streams every transaction that had not committed again from its first segment. A process
// killed before it removed its directory leaves it behind; the next spool made on the machine
// removes the directories of walshiftd processes that no longer run.

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "daemon/core/lsn.h"

namespace walshift {

class StreamSpool {
 public:
  // The directory is made on first use under $TMPDIR (else /tmp): walshift-stream-<pid>-XXXXXX.
  StreamSpool() = default;
  ~StreamSpool();  // removes every file and the directory
  StreamSpool(const StreamSpool&) = delete;
  StreamSpool& operator=(const StreamSpool&) = delete;

  // Stream Start of `xid`: the first segment opens its file; a later one must find it.
  absl::Status Start(uint32_t xid, bool first_segment);
  // One message of `xid` (`subxid`: the (sub)transaction the message carries), its bytes as
  // received, starting with the message type.
  absl::Status Append(uint32_t xid, uint32_t subxid, Lsn lsn, const char* data, size_t len);
  // Stream Abort: the whole transaction (subxid == xid) or one subtransaction.
  absl::Status Abort(uint32_t xid, uint32_t subxid);
  // Stream Commit: `message` is called for every message of `xid` in the order received, with a
  // writable buffer that has a NUL byte at data[len]; then the transaction's file is removed.
  absl::Status Replay(uint32_t xid, const std::function<absl::Status(Lsn lsn, char* data, size_t len)>& message);

  size_t transactions() const { return files_.size(); }
  // Bytes held on disk now, for all transactions.
  uint64_t bytes() const;

 private:
  struct File {
    std::FILE* f = nullptr;
    std::string path;
    uint64_t size = 0;
    std::map<uint32_t, uint64_t> subxact_start;  // offset of each subtransaction's first message
  };
  absl::Status EnsureDir();
  void Close(uint32_t xid);

  std::string dir_;
  std::map<uint32_t, File> files_;
};

}  // namespace walshift
