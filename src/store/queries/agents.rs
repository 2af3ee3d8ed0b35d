//! Connected agents ([`crate::core::agents`]): their reports, refreshed while their
//! streams are open, listed while alive, forgotten a lease after.

use super::*;
use crate::core::RuleError;
use crate::core::model::Agent;

const AGENT_COLUMNS: &str = "id, account_id, hostname, version, runners, state, running, \
     connected_at, last_seen_at";

fn agent_from_row(r: &mut Reader) -> Result<Agent> {
    Ok(Agent {
        id: r.get()?,
        account_id: r.get()?,
        hostname: r.get()?,
        version: r.get()?,
        runners: r.list()?,
        state: r.parse()?,
        running: r.list()?,
        connected_at: r.get()?,
        last_seen_at: r.get()?,
    })
}

/// See [`crate::store::Store::report_agent`]. An agent alive under another account
/// keeps its id; a gone one's id may be taken (its row is anyone's to reuse).
pub(super) async fn report<T: Tx>(
    tx: &mut T,
    report: &Agent,
    seen_after: Timestamp,
) -> Result<Agent> {
    let sql = "SELECT account_id, connected_at, last_seen_at FROM agents WHERE id = $1";
    let known: Option<(String, Timestamp, Timestamp)> = tx
        .query_optional(sql, args![&report.id], |r: &mut Reader| {
            Ok((r.get()?, r.get()?, r.get()?))
        })
        .await?;
    let mut agent = report.clone();
    if let Some((account, connected_at, last_seen)) = known
        && last_seen >= seen_after
    {
        if account != report.account_id {
            return Err(RuleError::Forbidden(format!(
                "agent id {} is in use by another account's agent",
                report.id
            ))
            .into());
        }
        agent.connected_at = connected_at;
    }
    let sql = format!(
        "INSERT INTO agents ({AGENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (id) DO UPDATE SET account_id = excluded.account_id, \
         hostname = excluded.hostname, version = excluded.version, \
         runners = excluded.runners, state = excluded.state, running = excluded.running, \
         connected_at = excluded.connected_at, last_seen_at = excluded.last_seen_at"
    );
    let values = args![
        &agent.id,
        &agent.account_id,
        &agent.hostname,
        &agent.version,
        agent.runners.as_slice(),
        agent.state.as_str(),
        agent.running.as_slice(),
        agent.connected_at,
        agent.last_seen_at,
    ];
    tx.execute(&sql, values).await?;
    Ok(agent)
}

/// See [`crate::store::Store::touch_agents`].
pub(super) async fn touch<T: Tx>(
    tx: &mut T,
    agents: &[(String, String)],
    now: Timestamp,
) -> Result<u64> {
    let mut touched = 0;
    // A statement per few hundred agents, not one each: ten thousand connected agents
    // are 20 statements every refresh.
    for batch in agents.chunks(TOUCH_BATCH) {
        let rows: Vec<String> = (0..batch.len())
            .map(|n| format!("(${}, ${})", 2 * n + 2, 2 * n + 3))
            .collect();
        let sql = format!(
            "UPDATE agents SET last_seen_at = $1 WHERE (id, account_id) IN (VALUES {})",
            rows.join(", ")
        );
        let mut values = args![now];
        for (id, account) in batch {
            values.extend(args![id, account]);
        }
        touched += tx.execute(&sql, values).await?;
    }
    Ok(touched)
}

/// Agents refreshed per statement.
const TOUCH_BATCH: usize = 500;

pub(super) fn list_sql() -> String {
    format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE last_seen_at >= $1 \
         AND (CAST($2 AS TEXT) IS NULL OR account_id = $2) ORDER BY account_id, hostname, id"
    )
}

pub(super) fn read(r: &mut Reader) -> Result<Agent> {
    agent_from_row(r)
}
