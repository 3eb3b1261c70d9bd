#!/usr/bin/env bash
# Restore a backup made by deploy/backup-postgres.sh into an EMPTY database, then rebuild
# the read models from the restored event store.
#
#   DATABASE_URL=postgresql://user:pass@host:5432/newdb deploy/restore-postgres.sh FILE
#
# Run it with every defi-realtime process stopped, and with the settings the deployment
# uses (REDIS_URL, REDIS_PREFIX, ...): the rebuild writes the hot projection to that Redis.
# PG_RESTORE (default: pg_restore) and DEFI_REALTIME (default: defi-realtime) are the
# commands to run; with compose:
#   PG_RESTORE="docker compose -f deploy/compose.yaml exec -T postgres pg_restore" \
#   DEFI_REALTIME="docker compose -f deploy/compose.yaml run --rm --no-deps api-1" \
#   DATABASE_URL=postgresql://defi:PASSWORD@127.0.0.1:5432/defi_realtime deploy/restore-postgres.sh FILE
# REBUILD: what to rebuild after the restore, `all` (default) or, for a backup made with
# WITH_READ_MODELS=true, `hot` (Redis is not in the backup: its projection always is).
set -euo pipefail

in=${1:?usage: DATABASE_URL=postgresql://... $0 BACKUP_FILE}
url=${DATABASE_URL:?set DATABASE_URL to the (empty) database to restore into}
url=$(sed -E 's#^postgres(ql)?(\+[A-Za-z0-9_]+)?://#postgresql://#' <<<"$url")

# One transaction: a failed restore leaves the database as it was (empty).
# From stdin, so that PG_RESTORE may run in a container.
# shellcheck disable=SC2086  # PG_RESTORE may be a command with arguments
${PG_RESTORE:-pg_restore} --dbname="$url" --no-owner --no-privileges --single-transaction \
  --exit-on-error <"$in"
echo "restored $in; rebuilding the read models" >&2
# shellcheck disable=SC2086  # DEFI_REALTIME may be a command with arguments
${DEFI_REALTIME:-defi-realtime} projections rebuild "${REBUILD:-all}"
