// Pipeline: the retry loop (reconnect with backoff, replays that isolate a failing
// transaction), one attempt's wiring, and the initial copy before streaming.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/core/crash_point.h"
#include "daemon/core/slot_loss.h"
#include "daemon/core/status_macros.h"
#include "daemon/pg/pg_util.h"
#include "daemon/pipeline/pipeline.h"
#include "daemon/source/pg_replication_source.h"
#include "daemon/state/pg_state.h"
#include "spdlog/spdlog.h"

namespace walshift {
namespace {
// How often a quiet pipeline reads the targets' WAL flush position (asynchronous commits).
constexpr absl::Duration kFlushPollInterval = absl::Milliseconds(100);
// Catching up (the last transaction received committed on the source longer ago than
// kCatchingUp): a group closes after the stream was quiet for kIdleFlush, or at its size or age
// bound, so that a backlog goes out in large groups; the target's commits would otherwise slow
// the walsender it competes with. Caught up, a group closes as soon as the stream is drained.
constexpr int64_t kCatchingUpMicros = 100 * 1000;
constexpr absl::Duration kIdleFlush = absl::Milliseconds(10);
}  // namespace
absl::Status Pipeline::Run(const std::atomic<bool>& stop) {
  const auto& apply = settings_.proto.apply();
  absl::Duration initial = absl::Milliseconds(apply.reconnect_initial_ms() ? apply.reconnect_initial_ms() : 250);
  absl::Duration ceiling = absl::Milliseconds(apply.reconnect_max_ms() ? apply.reconnect_max_ms() : 30000);
  absl::Duration backoff = initial;
  std::mt19937_64 rng(std::random_device{}());
  int attempt = 0;  // consecutive retries without durable progress
  absl::Time failing_since = absl::InfinitePast();
  for (;;) {
    if (leadership_) {
      // A standby (or a leader replaced in the attempt before, see below) waits to lead.
      bool stopped = false;
      RETURN_IF_ERROR(AwaitLeadership(stop, &stopped));
      if (stopped) return absl::OkStatus();
    }
    bool progress = false;
    absl::Status st = RunOnce(stop, &progress);
    Lsn received = source_ ? source_->received_lsn() : kInvalidLsn;
    // A table whose plain INSERT met a row the target had: its new rows are upserted from now
    // on, so the replay below happens once per table, not once per conflict.
    for (const auto& sink : sinks_)
      if (!sink->conflict_table().empty()) upsert_tables_.insert(sink->conflict_table());
    // Connections of this attempt are closed before deciding: an open group rolls back.
    source_.reset();
    sinks_.clear();
    emit_.clear();
    bindings_.clear();
    fill_bindings_.clear();
    retired_.clear();
    backfill_bindings_.clear();
    windows_.clear();
    progress_shapes_.clear();
    inspector_.reset();
    // A backfill chunk handed over in this attempt may not have committed: the backfill starts
    // again from the progress its targets recorded, and the replayed watermarks are ignored.
    backfiller_.reset();
    in_transaction_ = false;
    group_changes_ = 0;
    if (st.ok()) return st;
    // ha: a leader replaced meanwhile (WS002, a lost lock) stands by at once, without a backoff
    // or a stop: the error was the replacement's.
    if (leadership_ && (!leadership_->leading() || !RenewLeadership(/*force=*/true).ok())) {
      spdlog::info("pipeline {}: the attempt ended as this walshiftd stopped leading ({})", settings_.proto.pipeline(),
                   std::string(st.message()));
      continue;
    }
    if (st.code() == absl::StatusCode::kAlreadyExists && received != kInvalidLsn) {
      status_->CountError("replay");
      // Rows the target already had (drift, rows copied before): replay with upserts.
      spdlog::warn("{}; replaying with upserts", std::string(st.message()));
      isolate_until_ = std::max(isolate_until_, received);
      replayed_for_ = absl::OkStatus();  // not an error to name if the replay fails otherwise
      continue;
    }
    if (st.code() == absl::StatusCode::kFailedPrecondition && isolate_until_ == kInvalidLsn &&
        received != kInvalidLsn) {
      // Replay once with one source transaction per group: the transactions before the
      // failing one are committed, and the error is raised again by the failing one alone.
      spdlog::warn("{}; replaying one transaction at a time to commit everything before it", std::string(st.message()));
      isolate_until_ = received;
      replayed_for_ = st;
      status_->CountError("replay");
      continue;
    }
    if (st.code() != absl::StatusCode::kUnavailable && st.code() != absl::StatusCode::kAborted) {
      status_->CountError("data");
      if (!replayed_for_.ok() && isolate_until_ != kInvalidLsn && !streamed_ && !IsSlotLost(st)) {
        // The replay stopped before it streamed anything (a check at reconnect): the stop names
        // the error that started it first.
        return absl::Status(
            replayed_for_.code(),
            absl::StrCat(replayed_for_.message(), " (replaying up to it then failed: ", st.message(), ")"));
      }
      // A value a target rejects in one of this attempt's transactions: the operator may leave
      // that one source transaction out there.
      if ((absl::StrContains(st.message(), "(SQLSTATE 22") || absl::StrContains(st.message(), "(SQLSTATE 23")) &&
          st.code() != absl::StatusCode::kResourceExhausted && streamed_ && begin_.final_lsn != kInvalidLsn && rejected_by_ >= 0 &&
          !settings_.targets[rejected_by_].documents()) {
        const std::string& rejected_by = settings_.targets[rejected_by_].name;
        stopped_at_ = begin_.final_lsn;
        return absl::Status(
            st.code(),
            absl::StrCat(st.message(), "; to go on without source transaction ", begin_.xid, " (committed at LSN ",
                         FormatLsn(begin_.final_lsn), ") in target ", rejected_by,
                         ": walshiftctl skip --config <config> --lsn ", FormatLsn(begin_.final_lsn),
                         settings_.targets.size() > 1 ? absl::StrCat(" --target ", rejected_by) : "",
                         ", then start walshiftd (its changes are listed in walshift.skipped; a backfill "
                         "of their tables heals them once the target takes them)"));
      }
      return st;
    }
    // A retry. Only an attempt that made a checkpoint durable resets the backoff: an error
    // that comes back at every attempt (a full disk) waits longer each time.
    if (progress) {
      backoff = initial;
      attempt = 0;
    }
    if (attempt++ == 0) failing_since = absl::Now();
    const bool resources = absl::StrContains(st.message(), "(SQLSTATE 53");
    status_->CountError(resources ? "resources" : "reconnect");
    status_->SetRetry(attempt, failing_since);
    std::string hint;
    if (absl::StrContains(st.message(), "(SQLSTATE 53100)")) {
      hint = " (a disk is full: nothing was committed past the checkpoint; free space there and walshiftd goes on)";
    } else if (resources) {
      hint = " (the server ran out of a resource: nothing was committed past the checkpoint)";
    }
    status_->SetState(v1::RECONNECTING, absl::StrCat(st.message(), hint));
    if (stop.load()) return absl::OkStatus();
    std::uniform_real_distribution<double> jitter(0.5, 1.0);
    absl::Duration wait = backoff * jitter(rng);
    spdlog::warn("{}{}; retrying in {} ms from the last checkpoint (attempt {}, failing since {})",
                 std::string(st.message()), hint, absl::ToInt64Milliseconds(wait), attempt,
                 absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", failing_since, absl::UTCTimeZone()));
    absl::Time until = absl::Now() + wait;
    while (absl::Now() < until && !stop.load()) {
      status_->Tick();
      if (leadership_ && !RenewLeadership(/*force=*/false).ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (stop.load()) return absl::OkStatus();
    backoff = std::min(backoff * 2, ceiling);
  }
}

int64_t Pipeline::EpochOf(size_t t) const {
  return leadership_ && t < leadership_->epochs().size() ? leadership_->epochs()[t] : 0;
}

void Pipeline::ReportLeadership() {
  HaView ha;
  ha.enabled = true;
  ha.node = leadership_->node();
  ha.leader = leadership_->leading();
  ha.leader_node = leadership_->leader();
  ha.epoch = leadership_->leader_epoch();
  if (ha.leader) ha.since = leadership_->since();
  status_->SetHa(ha);
}

absl::Status Pipeline::RenewLeadership(bool force) {
  absl::Status st = leadership_->Renew(force);
  if (!st.ok()) ReportLeadership();
  return st;
}

absl::Status Pipeline::AwaitLeadership(const std::atomic<bool>& stop, bool* stopped) {
  const auto& cfg = settings_.proto.ha();
  const absl::Duration poll = absl::Milliseconds(cfg.poll_ms() ? cfg.poll_ms() : 1000);
  std::string announced;
  absl::Time next_warning = absl::InfinitePast();
  status_->SetRetry(0, absl::InfinitePast());  // a standby is not failing
  while (!stop.load()) {
    absl::StatusOr<bool> leading = leadership_->TryLead();
    ReportLeadership();
    if (leading.ok() && *leading) return absl::OkStatus();
    if (!leading.ok()) {
      // Everything is retried but what a person must fix: a newer state schema, privileges.
      const absl::string_view m = leading.status().message();
      if (absl::StrContains(m, "newer than this walshiftd knows") || absl::StrContains(m, "SQLSTATE 42501")) {
        return leading.status();
      }
      status_->SetState(v1::RECONNECTING, std::string(leading.status().message()));
      if (absl::Now() >= next_warning) {
        spdlog::warn("{}; standing by, retrying", std::string(leading.status().message()));
        next_warning = absl::Now() + absl::Seconds(30);
      }
    } else {
      const std::string& leader = leadership_->leader();
      std::string who = absl::StrCat("walshiftd ", leader.empty() ? "(unnamed)" : leader, " leads pipeline ",
                                     settings_.proto.pipeline(), " (epoch ", leadership_->leader_epoch(), ")");
      status_->SetState(v1::STANDBY, who);
      if (who != announced) {
        spdlog::info("{}; walshiftd {} stands by, ready to take over", who, leadership_->node());
        announced = who;
      }
    }
    for (absl::Time until = absl::Now() + poll; absl::Now() < until && !stop.load();) {
      status_->Tick();
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<int64_t>(50, absl::ToInt64Milliseconds(poll))));
    }
  }
  *stopped = true;
  return absl::OkStatus();
}

absl::Status Pipeline::RunOnce(const std::atomic<bool>& stop, bool* made_progress) {
  const auto& apply = settings_.proto.apply();
  streamed_ = false;
  stop_ = &stop;
  rejected_by_ = -1;
  stopped_at_ = kInvalidLsn;
  // What an earlier run (a walshiftd that was killed, this process before it reconnected) still
  // has on its way to a target is committed or rolled back before this run reads the target's
  // checkpoint and copied ranges: otherwise a range whose commit lands late is copied again.
  for (const auto& t : settings_.targets) {
    if (t.documents()) continue;
    std::string what = absl::StrCat("target ", t.name);
    ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(t.dsn, what, "application_name=walshiftd-catalog"));
    RETURN_IF_ERROR(state::SettleEarlierWriters(conn.get(), settings_.proto.pipeline(), what, absl::Seconds(30)));
  }
  for (const auto& t : settings_.targets) {
    SinkOptions o;
    o.pipeline = settings_.proto.pipeline();
    o.max_pending_statements = apply.pipeline_max_statements();
    o.max_pending_bytes = apply.pipeline_max_bytes();
    // As PostgreSQL's apply worker: a commit is visible at once and confirmed to the source only
    // once the target flushed it (MinFlushed).
    o.synchronous_commit = false;
    o.epoch = EpochOf(sinks_.size());
    o.replication_origin = ApplyOrigin(t);
    ASSIGN_OR_RETURN(auto sink, OpenSink(t, o));
    // Isolating a failing transaction: one upsert per row, so the error names its row.
    if (isolate_until_ != kInvalidLsn) sink->set_batching(false);
    sink->set_upsert_tables(upsert_tables_);
    sinks_.push_back(std::move(sink));
    emit_.push_back([this, i = sinks_.size() - 1](const TargetOp& op) { return EmitOp(i, op); });
  }
  RETURN_IF_ERROR(LoadParked());
  for (auto& limit : dead_letter_limits_) limit.Tick(absl::Now());  // the window counts from here
  skip_.assign(sinks_.size(), 0);
  RETURN_IF_ERROR(ReadSkipRequests());
  group_transactions_.assign(sinks_.size(), 0);
  for (size_t i = 0; i < sinks_.size(); ++i)
    status_->OnApplied(i, sinks_[i]->durable_lsn(), 0, 0, absl::ZeroDuration());
  inspector_ = std::make_unique<PgSchemaInspector>(settings_.source_dsn, settings_.targets);

  PgReplicationSourceOptions so;
  so.dsn = settings_.source_dsn;
  so.slot = settings_.slot;
  so.publication = settings_.publication;
  so.pipeline = settings_.proto.pipeline();
  for (const std::string& t : settings_.proto.source().ignore_tables())
    so.ignore_tables.push_back(QualifiedTableName(t));
  for (const std::string& o : settings_.proto.source().ignore_origins()) so.ignore_origins.push_back(o);
  for (const auto& m : modules_) {
    if (std::find(so.tables.begin(), so.tables.end(), m->source_table()) == so.tables.end())
      so.tables.push_back(m->source_table());
  }
  if (settings_.proto.source().feedback_interval_s())
    so.feedback_interval = absl::Seconds(settings_.proto.source().feedback_interval_s());
  so.receive_timeout = absl::Seconds(settings_.receive_timeout_s);
  const auto& src = settings_.proto.source();
  so.stream_large_transactions = !src.has_stream_large_transactions() || src.stream_large_transactions();
  // The leader takes the slot from a replaced leader's walsender, which may not have noticed yet.
  so.take_over_slot = leadership_ != nullptr;
  // Targets without a checkpoint get the rows the source already has first.
  std::vector<size_t> to_copy;
  if (settings_.proto.snapshot().mode() == v1::SNAPSHOT_INITIAL) {
    for (size_t i = 0; i < sinks_.size(); ++i)
      if (sinks_[i]->durable_lsn() == kInvalidLsn) to_copy.push_back(i);
  }
  so.export_snapshot = !to_copy.empty();
  // With a checkpoint somewhere, a missing slot means lost changes: never recreate it silently.
  for (const auto& sink : sinks_) so.slot_must_exist |= sink->durable_lsn() != kInvalidLsn;
  ASSIGN_OR_RETURN(auto source, PgReplicationSource::Create(so));
  source_ = std::move(source);
  ignored_origins_seen_ = 0;
  // Mapped tables are followed by oid: a table renamed or moved to another schema keeps its
  // mapping.
  ASSIGN_OR_RETURN(mapped_oids_, inspector_->SourceOids(so.tables));
  ignored_tables_ = std::set<std::string>(so.ignore_tables.begin(), so.ignore_tables.end());
  if (!to_copy.empty()) {
    bool stopped = false;
    RETURN_IF_ERROR(CopyExistingRows(to_copy, stop, &stopped, made_progress));
    if (stopped) return absl::OkStatus();
  }
  copy_skip_ = CopySkipPlan();
  for (size_t i = 0; i < sinks_.size(); ++i) RETURN_IF_ERROR(copy_skip_.Load(*sinks_[i], i, sinks_[i]->durable_lsn()));
  RETURN_IF_ERROR(ResumeBackfills());
  Lsn start = MinDurable();
  spdlog::info("pipeline {}: streaming slot {} from {}", settings_.proto.pipeline(), settings_.slot,
               start == kInvalidLsn ? "the slot's confirmed position" : FormatLsn(start));
  // ha: still the leader right before taking the slot (a replaced one must not take it back).
  if (leadership_) RETURN_IF_ERROR(RenewLeadership(/*force=*/true));
  RETURN_IF_ERROR(source_->Start(start));
  const Lsn attempt_start = start;
  status_->SetState(v1::STREAMING);

  bool catching_up = false;
  while (!stop.load()) {
    // A group of complete transactions commits as soon as nothing more is waiting to be read:
    // the stream is drained at a transaction boundary. Under load, what arrived while the
    // previous group committed is already waiting, so groups grow by themselves (up to
    // group_max_changes / group_max_ms, see OnCommit) and a change waits for at most one commit
    // before its own. Catching up on a backlog, see kCatchingUpMicros. Otherwise (nothing open,
    // or inside a transaction) wait for data.
    bool commit_waiting = group_started_ != absl::InfinitePast() && !in_transaction_;
    absl::Duration wait = absl::Seconds(1);
    if (commit_waiting) wait = catching_up ? kIdleFlush : absl::ZeroDuration();
    ASSIGN_OR_RETURN(int n, source_->Poll(*this, wait));
    // Catching up while data keeps coming and it is old; a stream that ran dry is caught up, so
    // the next change after a quiet spell is handed over at once.
    bool now_catching_up = n > 0 && PgNow() - last_commit_time_ > kCatchingUpMicros;
    if (now_catching_up != catching_up) {
      catching_up = now_catching_up;
      source_->set_catching_up(catching_up);
    }
    if (n == 0 && !in_transaction_) {
      RETURN_IF_ERROR(FlushAll());
      // Where the targets' WAL flush stands, so the slot follows while the stream is quiet.
      for (auto& sink : sinks_) RETURN_IF_ERROR(sink->PollFlushed(kFlushPollInterval));
      if (MinFlushed() == MinDurable()) {
        Lsn idle = source_->ConfirmIdle();
        if (idle != kInvalidLsn) status_->SetCaughtUp(idle);
      }
    }
    if (!*made_progress && MinDurable() != attempt_start) {
      *made_progress = true;  // a checkpoint moved: this attempt is no longer failing
      status_->SetRetry(0, absl::InfinitePast());
    }
    RETURN_IF_ERROR(source_->SendFeedback(MinFlushed(), /*force=*/false));
    status_->SetReceivedLsn(source_->received_lsn());
    if (uint64_t n = source_->ignored_origin_transactions(); n != ignored_origins_seen_) {
      status_->AddIgnoredOriginTransactions(n - ignored_origins_seen_);
      ignored_origins_seen_ = n;
    }
    status_->Tick();
    if (leadership_) RETURN_IF_ERROR(RenewLeadership(/*force=*/false));
    if (any_dead_letter_)
      for (auto& limit : dead_letter_limits_) limit.Tick(absl::Now());
  }
  status_->SetState(v1::STOPPING);
  // Stopping: a transaction still open is dropped (its group rolls back with the connection)
  // and will be streamed again from the checkpoint.
  if (!in_transaction_) RETURN_IF_ERROR(FlushAll());
  // The last groups reach the targets' disks within a few wal_writer_delay: confirmed too, so a
  // restart does not stream them again.
  for (absl::Time until = absl::Now() + absl::Seconds(5); MinFlushed() != MinDurable() && absl::Now() < until;) {
    for (auto& sink : sinks_) RETURN_IF_ERROR(sink->PollFlushed(absl::ZeroDuration()));
    if (MinFlushed() != MinDurable()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  RETURN_IF_ERROR(source_->SendFeedback(MinFlushed(), /*force=*/true));
  spdlog::info("pipeline {}: stopped at checkpoint {}", settings_.proto.pipeline(), FormatLsn(MinDurable()));
  return absl::OkStatus();
}

std::string Pipeline::ApplyOrigin(const config::TargetSettings& t) const {
  const auto& apply = settings_.proto.apply();
  if (apply.has_replication_origin() && !apply.replication_origin()) return "";
  return state::ReplicationOriginName(settings_.proto.pipeline(), t.name);
}

absl::Status Pipeline::CopyExistingRows(const std::vector<size_t>& targets, const std::atomic<bool>& stop,
                                        bool* stopped, bool* made_progress) {
  InitialCopyOptions o;
  o.settings = &settings_;
  o.modules = &modules_;
  o.module_target = module_sink_;
  o.targets = targets;
  const auto& cfg = settings_.proto.snapshot();
  o.workers = cfg.workers() ? static_cast<int>(cfg.workers()) : 2;
  o.chunk_rows = cfg.chunk_rows() ? cfg.chunk_rows() : 100000;
  // Streaming starts where the slot stands. A slot created just now exported the snapshot of
  // exactly that position; an existing one (a copy that was interrupted, a target added later)
  // gets a snapshot from a temporary slot, later than its position: what streaming replays
  // from before that snapshot is skipped by range (CopySkipPlan).
  std::unique_ptr<PgReplicationSource::TemporarySnapshot> temporary;
  Lsn stream_from = kInvalidLsn;
  if (source_->exported_snapshot()) {
    o.snapshot = *source_->exported_snapshot();
    stream_from = o.snapshot.lsn;
  } else {
    ASSIGN_OR_RETURN(pg::ConnPtr conn, pg::Connect(settings_.source_dsn, "source", "application_name=walshiftd"));
    ASSIGN_OR_RETURN(
        pg::ResultPtr r,
        pg::ExecParams(conn.get(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                       {settings_.slot.c_str()}, "source: reading the slot's position"));
    if (PQntuples(r.get()) != 1 || PQgetisnull(r.get(), 0, 0)) {
      return absl::FailedPreconditionError(
          absl::StrCat("source: replication slot ", settings_.slot, " has no confirmed position"));
    }
    stream_from = ParseLsn(PQgetvalue(r.get(), 0, 0)).value_or(kInvalidLsn);
    ASSIGN_OR_RETURN(temporary, PgReplicationSource::ExportTemporarySnapshot(settings_.source_dsn,
                                                                             absl::StrCat(settings_.slot, "_copy")));
    o.snapshot = temporary->snapshot();
    spdlog::info(
        "pipeline {}: the slot {} exists but the copy is not complete (interrupted, or a target added): "
        "resuming it; ranges already committed (walshift.copy_chunk) are kept, the others are copied under a new "
        "snapshot",
        settings_.proto.pipeline(), settings_.slot);
  }
  std::vector<std::string> names;
  for (size_t t : targets) names.push_back(settings_.targets[t].name);
  spdlog::info("pipeline {}: initial copy into {} under snapshot {} ({}), then streaming from {}",
               settings_.proto.pipeline(), absl::StrJoin(names, ", "), o.snapshot.name, FormatLsn(o.snapshot.lsn),
               FormatLsn(stream_from));
  o.tick = [this] {
    status_->Tick();
    // A leader replaced meanwhile: its copy's next range fails the fence and ends the copy.
    if (leadership_ && leadership_->leading()) (void)RenewLeadership(/*force=*/false);
  };
  for (size_t t = 0; t < settings_.targets.size(); ++t) o.epochs.push_back(EpochOf(t));
  for (const auto& t : settings_.targets) o.origins.push_back(ApplyOrigin(t));
  InitialCopy copy(o);
  status_->SetState(v1::SNAPSHOTTING);
  status_->SetCopyProgress([&copy] { return copy.Report(); });
  absl::Status st = copy.Run(stop);
  if (copy.committed() > 0) *made_progress = true;
  std::vector<CopyUnitReport> final_report = copy.Report();
  status_->SetCopyProgress([final_report] { return final_report; });
  if (st.code() == absl::StatusCode::kCancelled) {
    spdlog::info("pipeline {}: stopped during the initial copy; finished ranges are kept", settings_.proto.pipeline());
    *stopped = true;
    return absl::OkStatus();
  }
  if (!st.ok()) {
    uint64_t done = 0, total = 0;
    for (const CopyUnitReport& r : final_report) {
      done += r.chunks_done;
      total += r.chunks_total;
    }
    if (st.code() == absl::StatusCode::kUnavailable || st.code() == absl::StatusCode::kAborted) {
      spdlog::warn(
          "pipeline {}: initial copy interrupted with {} of {} ranges committed; they are kept and the copy resumes "
          "with the others after reconnecting",
          settings_.proto.pipeline(), done, total);
    }
    return st;
  }
  temporary.reset();
  // The copy is complete: the checkpoint marks where streaming takes over.
  TransactionCommit at;
  at.end_lsn = stream_from;
  at.commit_lsn = stream_from;
  at.commit_time = PgNow();
  for (size_t t : targets) {
    sinks_[t]->EndTransaction(at);
    RETURN_IF_ERROR(sinks_[t]->Flush().status());
  }
  spdlog::info("pipeline {}: initial copy complete", settings_.proto.pipeline());
  return absl::OkStatus();
}

}  // namespace walshift
