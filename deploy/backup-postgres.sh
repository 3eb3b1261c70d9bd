#!/usr/bin/env bash
# Back up a defi-realtime PostgreSQL database: the event store and what cannot be derived
# from it, in one consistent snapshot (pg_dump runs in one transaction).
#
#   DATABASE_URL=postgresql://user:pass@host:5432/db deploy/backup-postgres.sh FILE
#
# PG_DUMP is the pg_dump command (default: pg_dump; its major version must be at least the
# server's). With compose, the server's own, in its container:
#   PG_DUMP="docker compose -f deploy/compose.yaml exec -T postgres pg_dump" \
#   DATABASE_URL=postgresql://defi:PASSWORD@127.0.0.1:5432/defi_realtime deploy/backup-postgres.sh FILE
#
# Kept whole: the event store (defirealtime_events and its sequence), the followers'
# positions (log_follower_positions: relay, alert evaluator, notification dispatcher), the
# delivery record (delivery_attempts, pending_notifications) and Alembic's version table.
# The history read model's tables keep their schema but not their rows: they are folds of
# the event store, rebuilt after a restore (deploy/restore-postgres.sh, docs/deployment.md).
# WITH_READ_MODELS=true keeps their rows too: a larger backup, a faster restore (no history
# rebuild; restore with REBUILD=hot).
set -euo pipefail

out=${1:?usage: DATABASE_URL=postgresql://... $0 BACKUP_FILE}
url=${DATABASE_URL:?set DATABASE_URL to the database to back up}
# libpq takes postgresql:// URLs; SQLAlchemy-style driver suffixes are dropped.
url=$(sed -E 's#^postgres(ql)?(\+[A-Za-z0-9_]+)?://#postgresql://#' <<<"$url")

# The history projection's tables (src/adapters/sql_history.py, rebuilt by
# `defi-realtime projections rebuild history`) and its tracking rows. The raw observations
# are partitioned by week on PostgreSQL (ADR 0047): their partitions go by pattern.
# history_retention (how far detail was dropped) is kept: a rebuild must not bring back
# what retention dropped.
REBUILDABLE=(
  protocol_observations 'protocol_observations_w*' price_observations 'price_observations_w*'
  protocols protocol_listings alert_events alert_rules anomalies mev_detections wallet_moves
  series_states series_days group_days projection_tracking
)
exclude=()
if [[ "${WITH_READ_MODELS:-false}" != true ]]; then
  for table in "${REBUILDABLE[@]}"; do
    exclude+=("--exclude-table-data=${table}")
  done
fi

# To stdout, so that PG_DUMP may run in a container; the file only appears when complete.
# shellcheck disable=SC2086  # PG_DUMP may be a command with arguments
${PG_DUMP:-pg_dump} --dbname="$url" --format=custom --no-owner --no-privileges \
  ${exclude[@]+"${exclude[@]}"} >"$out.partial"
mv "$out.partial" "$out"
echo "backed up to $out" >&2
