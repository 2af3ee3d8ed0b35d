#!/bin/sh
# What Postgres itself can do for a claim on this machine, and how close buildd comes.
#
# pgbench (shipped with Postgres) drives the bare SQL of a claim with 32 clients, as
# `cargo bench --bench claim` has 32 claimers: in one transaction, select the first
# pending task by priority with FOR UPDATE SKIP LOCKED, mark it assigned, insert a
# worker row, commit. The schema is buildd's own (migrations/postgres), on a fresh
# database, with as many pending tasks as the claim benchmark queues (6,000).
# Then `cargo bench --bench claim` runs, and the script prints buildd's claims per
# second on one Postgres server as a share of pgbench's transactions per second.
#
#   BUILDD_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres bench/pg_limit.sh
#   PG_LIMIT_SKIP_CLAIM=1 …     # pgbench only
set -eu
export PGOPTIONS="-c client_min_messages=warning"
cd "$(dirname "$0")/.."
base=${BUILDD_TEST_DATABASE_URL:?set BUILDD_TEST_DATABASE_URL to a Postgres server}
clients=32
per_client=${PG_LIMIT_PER_CLIENT:-188}
tasks=$((clients * per_client))
db=buildd_pg_limit
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$base" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT

psql "$base" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
psql "$base" -qc "CREATE DATABASE $db" >/dev/null
url=$(printf '%s' "$base" | sed "s#/[^/]*\$#/$db#")
for migration in migrations/postgres/*.sql; do
    psql "$url" -q -v ON_ERROR_STOP=1 -f "$migration" >/dev/null
done
psql "$url" -q -v ON_ERROR_STOP=1 <<SQL >/dev/null
INSERT INTO accounts (id, type, name, auth_type, max_concurrent_workers, key_hash, created_at)
    VALUES ('acc-bench', 'service', 'bench', 'api', 1000000, 'x', now());
INSERT INTO workspaces (id, name, default_branch, created_at) VALUES ('ws-bench', 'bench', 'main', now());
INSERT INTO account_workspaces VALUES ('acc-bench', 'ws-bench', true, false);
INSERT INTO tasks (id, workspace_id, title, description, runner_preference, priority, status,
                   attempts, max_attempts, created_at)
    SELECT 'task-' || n, 'ws-bench', 'task ' || n, '', 'any', 0, 'pending', 0, 3,
           now() + n * interval '1 microsecond'
    FROM generate_series(1, $tasks) AS n;
VACUUM ANALYZE;
SQL

# The claim, as buildd's does it at its core (src/store/queries.rs, `claim`), without
# the account's lock, limits and events: the floor under what buildd can reach. Task
# ids are `task-N`; pgbench substitutes N (a number) where `:n` stands.
cat >"$work/claim.sql" <<'SQL'
BEGIN;
SELECT substr(id, 6)::int AS n FROM tasks WHERE status = 'pending' AND runner_preference IN ('any', 'service')
    AND workspace_id IN (SELECT workspace_id FROM account_workspaces WHERE account_id = 'acc-bench' AND can_claim)
    ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED \gset
UPDATE tasks SET status = 'assigned', attempts = attempts + 1, claimed_by = 'acc-bench',
    worker_id = 'wrk-' || :n, claimed_at = now() WHERE id = 'task-' || :n;
INSERT INTO workers (id, task_id, workspace_id, account_id, status, cost_usd, turns, started_at, heartbeat_at)
    VALUES ('wrk-' || :n, 'task-' || :n, 'ws-bench', 'acc-bench', 'idle', 0, 0, now(), now());
COMMIT;
SQL

echo "pg_limit: the bare SQL of a claim, pgbench, $clients clients, $tasks claims"
pgbench -n -c "$clients" -j 2 -t "$per_client" -f "$work/claim.sql" "$url" >"$work/pgbench.out" 2>&1 || {
    cat "$work/pgbench.out"
    exit 1
}
tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out" | head -n 1)
latency=$(sed -n 's/^latency average = \(.*\)$/\1/p' "$work/pgbench.out")
claimed=$(psql "$url" -Atc "SELECT count(*) FROM workers")
echo "pgbench                {$tps} transactions/s   latency average $latency   ($claimed workers inserted)" | tr -d '{}'
[ "$claimed" = "$tasks" ] || { echo "expected $tasks workers, found $claimed"; exit 1; }

[ -z "${PG_LIMIT_SKIP_CLAIM:-}" ] || exit 0
BUILDD_BENCH_TASKS=$tasks cargo bench --quiet --bench claim 2>/dev/null | tee "$work/claim.out"
claims=$(sed -n 's/^postgres, 1 server *\([0-9]*\) claims\/s.*/\1/p' "$work/claim.out")
[ -n "$claims" ] || { echo "the claim benchmark printed no Postgres figure"; exit 1; }
awk -v c="$claims" -v t="$tps" 'BEGIN { printf "buildd on 1 Postgres server: %d claims/s = %.0f%% of the bare SQL'"'"'s %.0f/s\n", c, 100 * c / t, t }'
