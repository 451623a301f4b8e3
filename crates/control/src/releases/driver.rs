//! The task that drives releases: on the leader only, every tick, each
//! running Release is advanced by the state machine; a new status is
//! committed as a revision by `release/NAME` and so published.

use crate::clock::unix_ms;
use crate::releases::analysis::Figures;
use crate::releases::gates;
use crate::releases::machine::{act, advance, Action};
use crate::releases::spec::{check, Phase, Status};
use crate::remote::shards;
use crate::resources::kind::Kind;
use crate::resources::resource::of_kind;
use crate::state::apply::ApplyError;
use crate::state::controller::Controller;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long a release waits for proxies to hold its version clusters
/// before it starts anyway.
pub const WARM_LIMIT: Duration = Duration::from_secs(10);

/// What the driver remembers between ticks, per release: since when it
/// has waited to start (its clusters warming), and since when its next
/// step has waited for its gates.
#[derive(Default)]
pub struct Waiting {
    warm: BTreeMap<String, u64>,
    gates: BTreeMap<String, u64>,
}

/// Advances every running release once; returns how many changed.
pub fn tick(ctrl: &Controller, figures: &dyn Figures, now_ms: u64, waiting: &mut Waiting) -> usize {
    let state = ctrl.stored();
    let mut changed = 0;
    let warm = clusters_held(ctrl, state.revision);
    let exists = |name: &String| state.resources.contains_key(&(Kind::Release, name.clone()));
    waiting.warm.retain(|name, _| exists(name));
    waiting.gates.retain(|name, _| exists(name));
    for (name, r) in of_kind(&state.resources, Kind::Release) {
        let Ok(release) = check(&r.doc) else { continue };
        let status = Status::of(&r.doc);
        let since = *waiting.warm.entry(name.clone()).or_insert(now_ms);
        let ready = warm || now_ms.saturating_sub(since) >= WARM_LIMIT.as_millis() as u64;
        let Some(mut next) = advance(&release, &status, figures, now_ms, ready) else { continue };
        let starts_step = next.phase == Phase::Progressing && next.step_started_ms != status.step_started_ms;
        if starts_step && !release.gates.is_empty() {
            match gates::ask(&release, &next) {
                Ok(()) => {
                    waiting.gates.remove(name);
                }
                Err(why) => {
                    let since = *waiting.gates.entry(name.clone()).or_insert(now_ms);
                    if now_ms.saturating_sub(since) < release.max_wait.as_millis() as u64 {
                        tracing::info!(release = name.as_str(), "step {} waits: {why}", next.step + 1);
                        continue;
                    }
                    // Waited long enough: the release pauses where it was.
                    waiting.gates.remove(name);
                    let step = next.step + 1;
                    next = status.clone();
                    next.phase = Phase::Paused;
                    next.message = format!("paused before step {step}: {why}");
                }
            }
        }
        let author = format!("release/{name}");
        match ctrl.set_status(Kind::Release, name, next.to_value(), &author, &next.message) {
            Ok(_) => {
                tracing::info!(release = name.as_str(), phase = ?next.phase, weight = next.weight, "{}", next.message);
                changed += 1;
            }
            Err(e) => tracing::warn!(release = name.as_str(), "cannot record the release's step: {e}"),
        }
    }
    changed
}

/// True when every connected proxy has ACKed revision `revision`'s clusters
/// and endpoints (so a release's new version clusters are warm).
fn clusters_held(ctrl: &Controller, revision: u64) -> bool {
    ctrl.fleet.list().iter().all(|p| {
        [Kind::Cluster, Kind::ClusterLoadAssignment]
            .iter()
            .all(|k| p.types.get(k.name()).is_none_or(|t| t.acked_revision >= revision))
    })
}

/// An operator's action on release `name`, committed by `author`.
pub fn operate(ctrl: &Controller, name: &str, action: Action, author: &str) -> Result<Status, OperateError> {
    let state = ctrl.stored();
    let r = state
        .resources
        .get(&(Kind::Release, name.to_string()))
        .ok_or_else(|| OperateError::NotFound(format!("Release/{name}")))?;
    let next = act(&Status::of(&r.doc), action, unix_ms()).map_err(OperateError::Refused)?;
    ctrl.set_status(Kind::Release, name, next.to_value(), author, &next.message)?;
    Ok(next)
}

#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// What the running releases' analyses read: the longest window, and the
/// stable and candidate clusters; `None` when no release is running.
fn ask_for(ctrl: &Controller) -> Option<shards::Ask> {
    let state = ctrl.stored();
    let mut ask = shards::Ask::default();
    for (_, r) in of_kind(&state.resources, Kind::Release) {
        let Ok(release) = check(&r.doc) else { continue };
        if Status::of(&r.doc).phase != Phase::Progressing {
            continue;
        }
        ask.window = ask.window.max(release.window);
        ask.services.extend([release.stable_cluster(), release.candidate_cluster()]);
    }
    (!ask.services.is_empty()).then_some(ask)
}

/// Drives releases every `period` until the process ends (only the leader acts).
pub fn start(ctrl: Arc<Controller>, period: Duration) {
    tokio::spawn(async move {
        let mut waiting = Waiting::default();
        let mut every = tokio::time::interval(period.max(Duration::from_millis(50)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if ctrl.is_leader() {
                // With other replicas, their proxies' figures too.
                let fleet = match ask_for(&ctrl) {
                    Some(ask) => shards::fleet_monitor(&ctrl, &ask).await,
                    None => None,
                };
                // Commits go to the store (SQLite or etcd): off the async workers.
                let c = ctrl.clone();
                let mut w = std::mem::take(&mut waiting);
                if let Ok(back) = tokio::task::spawn_blocking(move || {
                    let figures: &dyn Figures = match &fleet {
                        Some(m) => m,
                        None => c.as_ref(),
                    };
                    tick(&c, figures, unix_ms(), &mut w);
                    w
                })
                .await
                {
                    waiting = back;
                }
            }
        }
    });
}
