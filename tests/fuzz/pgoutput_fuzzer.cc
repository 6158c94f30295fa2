// The pgoutput decoder on arbitrary messages: one decoder per input, fed a sequence of messages
// (see fuzz_input.h) so that relations decoded by one message are used by the changes after
// it, as on a real stream. Every datum the decoder hands out is read whole. A malformed message
// must come back as a status, never as a crash, a leak or undefined behaviour.
//
// Seeds (corpus/pgoutput) are real streams recorded from PostgreSQL by make_pgoutput_seeds:
// txn-* in protocol 1, stream-* in protocol 2 with streamed transactions.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/source/pgoutput_decoder.h"
#include "tests/fuzz/fuzz_input.h"

namespace walshift {
namespace {

// Reads everything a change carries, so that a datum pointing outside its message is found.
class ReadingHandler : public ChangeHandler {
 public:
  absl::Status OnBegin(const TransactionBegin& begin) override {
    Mix(begin.final_lsn);
    return absl::OkStatus();
  }
  absl::Status OnRelation(std::shared_ptr<const SourceRelation> relation) override {
    for (const SourceColumn& c : relation->columns) Mix(c.name.size() + c.type_oid);
    Mix(relation->schema.size() + relation->name.size());
    return absl::OkStatus();
  }
  absl::Status OnChange(const RowChange& change) override {
    if (change.relation == nullptr) __builtin_trap();
    for (const Tuple* t : {change.old_tuple, change.new_tuple}) {
      if (t == nullptr) continue;
      for (const Datum& d : *t) {
        for (char c : d.view()) Mix(static_cast<unsigned char>(c));
        if (d.kind == DatumKind::kText && d.data[d.length] != '\0') __builtin_trap();  // texts are terminated
      }
    }
    Mix(change.lsn);
    return absl::OkStatus();
  }
  absl::Status OnTruncate(const TruncateChange& truncate) override {
    for (const SourceRelation* r : truncate.relations) Mix(r->oid);
    return absl::OkStatus();
  }
  absl::Status OnCommit(const TransactionCommit& commit) override {
    Mix(commit.end_lsn);
    return absl::OkStatus();
  }
  absl::Status OnMessage(const LogicalMessage& message) override {
    for (char c : message.prefix) Mix(static_cast<unsigned char>(c));
    for (char c : message.content) Mix(static_cast<unsigned char>(c));
    return absl::OkStatus();
  }

 private:
  void Mix(uint64_t v) { sum_ = sum_ * 31 + v; }
  uint64_t sum_ = 0;
};

}  // namespace
}  // namespace walshift

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Every input through both protocol versions: 1, and 2 with its stream blocks (messages
  // spooled to disk and replayed at Stream Commit, dropped at Stream Abort).
  for (int version : {1, 2}) {
    walshift::PgOutputDecoder decoder;
    decoder.set_protocol_version(version);
    walshift::ReadingHandler handler;
    walshift::fuzz::Messages messages(data, size);
    std::vector<char> message;
    walshift::Lsn lsn = 0x1000000;
    while (messages.Next(&message)) {
      // Errors are expected for most inputs; what is checked is that they are statuses.
      (void)decoder.Decode(message.data(), message.size() - 1, lsn, handler);
      lsn += message.size();
    }
  }
  return 0;
}
