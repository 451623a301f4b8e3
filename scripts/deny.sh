#!/usr/bin/env bash
# Supply-chain checks with cargo-deny, policy in deny.toml: licenses, bans
# (duplicate versions, wildcards), sources, and RustSec advisories.
#
# The advisory database is a git repository that cargo-deny clones. Where that
# repository cannot be reached, the advisories are checked against the snapshot
# in supply-chain/advisory-db (see its SNAPSHOT file); where there is no
# snapshot either, the other three checks still run and a line says that
# advisories were not checked. LEGATE_ADVISORY_DB=snapshot uses the snapshot
# even when the live database is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
ADVISORY_DB_URL=https://github.com/rustsec/advisory-db
SNAPSHOT_DIR=supply-chain/advisory-db

if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  # A few minutes on a 2-core machine, once per machine.
  cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi

live_db_reachable() {
  [ "${LEGATE_ADVISORY_DB:-}" != snapshot ] &&
    GIT_TERMINAL_PROMPT=0 timeout 20 git ls-remote --exit-code "$ADVISORY_DB_URL" HEAD >/dev/null 2>&1
}

if live_db_reachable; then
  echo "cargo-deny: advisories against the live RustSec database"
  exec cargo deny check
fi

if [ ! -d "$SNAPSHOT_DIR/crates" ]; then
  echo "cargo-deny: ADVISORIES NOT CHECKED: the RustSec database cannot be fetched and there is no snapshot at $SNAPSHOT_DIR/crates; checking licenses, bans and sources only"
  exec cargo deny check licenses bans sources
fi

snapshot_commit=$(sed -n 's/^commit=//p' "$SNAPSHOT_DIR/SNAPSHOT")
snapshot_date=$(sed -n 's/^date=//p' "$SNAPSHOT_DIR/SNAPSHOT")
age_days=$((($(date +%s) - $(date -d "$snapshot_date" +%s)) / 86400))
echo "cargo-deny: the RustSec database cannot be fetched; advisories against the snapshot of $snapshot_date (commit ${snapshot_commit:0:12}, $age_days days old)"
if [ "$age_days" -gt 90 ]; then
  echo "cargo-deny: WARNING: the advisory snapshot is over 90 days old: advisories published since $snapshot_date are not checked; refresh $SNAPSHOT_DIR"
fi

# cargo-deny reads a database from <db-path>/<name>-<hash of its URL>, a git
# work tree whose .git/FETCH_HEAD time is the fetch time. The directory name is
# the one cargo-deny $CARGO_DENY_VERSION derives for the default URL; with a
# different name the check fails loudly (no database found), never silently.
db_root=$(mktemp -d)
trap 'rm -rf "$db_root"' EXIT
db="$db_root/advisory-db-3157b0e258782691"
mkdir "$db"
cp -R "$SNAPSHOT_DIR/crates" "$db/"
git -C "$db" init -q
touch -d "$snapshot_date" "$db/.git/FETCH_HEAD"
# The snapshot's age is reported above instead of failing on cargo-deny's
# 90-day staleness limit: an old snapshot still catches every older advisory.
sed "/^\[advisories\]\$/a db-path = \"$db_root\"\\nmaximum-db-staleness = \"P3650D\"" deny.toml >"$db_root/deny.toml"

# --offline keeps cargo-deny from fetching the database, and cargo metadata
# from the network too, so the crates (every platform's) are fetched first.
cargo fetch --quiet
cargo deny --offline --config "$db_root/deny.toml" check
