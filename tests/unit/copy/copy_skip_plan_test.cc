// CopySkipPlan: which snapshot decides whether streaming skips a change of a copied key.

#include <string>

#include "daemon/pipeline/initial_copy.h"
#include "gtest/gtest.h"

namespace walshift {
namespace {

Datum Text(const std::string& s) { return Datum{DatumKind::kText, static_cast<uint32_t>(s.size()), s.c_str()}; }

CopyRange Range(std::optional<int64_t> lo, std::optional<int64_t> hi, Lsn snapshot) {
  CopyRange r;
  r.lo = lo;
  r.hi = hi;
  r.snapshot_lsn = snapshot;
  return r;
}

TEST(CopySkipPlanTest, KeyTakesTheSnapshotOfItsRange) {
  CopySkipPlan::Table t;
  t.key_column = "id";
  t.ranges = {Range(std::nullopt, 100, 10), Range(100, std::nullopt, 20)};
  std::string k1 = "5", k2 = "100", bad = "x";
  Datum d1 = Text(k1), d2 = Text(k2), d3 = Text(bad);
  EXPECT_EQ(CopySkipPlan::SnapshotFor(t, &d1), 10u);
  EXPECT_EQ(CopySkipPlan::SnapshotFor(t, &d2), 20u);
  EXPECT_EQ(CopySkipPlan::SnapshotFor(t, &d3), kInvalidLsn);
  EXPECT_EQ(CopySkipPlan::SnapshotFor(t, nullptr), kInvalidLsn);
}

// A range copied twice (a run killed while the range's commit was on its way, and the next run
// copying it again under a later snapshot): the earlier snapshot decides, in either order.
TEST(CopySkipPlanTest, RangeCopiedTwiceTakesTheEarlierSnapshot) {
  CopySkipPlan::Table t;
  t.key_column = "id";
  t.ranges = {Range(0, 100, 30), Range(0, 100, 10), Range(100, 200, 20)};
  std::string k = "50";
  Datum d = Text(k);
  EXPECT_EQ(CopySkipPlan::SnapshotFor(t, &d), 10u);
  CopySkipPlan::Table whole;
  whole.ranges = {Range(std::nullopt, std::nullopt, 40), Range(std::nullopt, std::nullopt, 25)};
  EXPECT_EQ(CopySkipPlan::SnapshotFor(whole, nullptr), 25u);
}

}  // namespace
}  // namespace walshift
