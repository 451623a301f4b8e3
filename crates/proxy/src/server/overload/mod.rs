//! The bootstrap's `overload_manager`, as Envoy's: resource monitors
//! sampled every `refresh_interval` on the main thread, triggers that turn
//! their pressure into each action's state, and the actions' states written
//! where the request and accept paths read them (`common::overload`).
//!
//! The global downstream connection limit is Envoy's proactive resource:
//! exact at accept time (`common::conn_limit`), never sampled, and no
//! trigger's resource.

mod monitors;
mod timers;

use crate::common::conn_limit::ConnLimit;
use crate::common::overload::{self as state, Action};
use crate::stats::{Counter, Gauge, Store};
use legate_api::pb::envoy::config::bootstrap::v3::Bootstrap;
use legate_api::pb::envoy::config::overload::v3::{
    resource_monitor::ConfigType, trigger::TriggerOneof, OverloadManager,
};
use legate_api::pb::envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig;
use monitors::Monitor;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONNECTIONS: &str = "envoy.resource_monitors.global_downstream_max_connections";
/// Envoy's default `refresh_interval`.
const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// How often a saturated `shrink_heap` gives free heap back (Envoy's default).
const SHRINK_EVERY: Duration = Duration::from_secs(10);

type ConfigError = (String, String);

/// What the bootstrap's `overload_manager` builds.
pub struct Built {
    /// The global connection limit (unlimited without one).
    pub conn_limit: Arc<ConnLimit>,
    /// The sampled monitors and the actions, when there are any.
    pub manager: Option<Manager>,
}

/// The sampled resource monitors and the actions they trigger.
pub struct Manager {
    interval: Duration,
    resources: Vec<Resource>,
    actions: Vec<ActionSlot>,
    shrink_count: Option<Arc<Counter>>,
}

struct Resource {
    name: String,
    monitor: Monitor,
    /// The last pressure read (none before the first success).
    pressure: Option<f64>,
    pressure_gauge: Arc<Gauge>,
    failed_updates: Arc<Counter>,
    // Created as Envoy creates it; a sampling here never overlaps the next.
    _skipped_updates: Arc<Counter>,
}

#[derive(Clone, Copy)]
enum Trigger {
    Threshold(f64),
    Scaled { scaling: f64, saturation: f64 },
}

impl Trigger {
    /// Envoy's trigger state for a pressure: 0, a scaled value, or 1.
    fn value(self, pressure: f64) -> f64 {
        match self {
            Trigger::Threshold(v) => f64::from(u8::from(pressure >= v)),
            Trigger::Scaled { scaling, .. } if pressure < scaling => 0.0,
            Trigger::Scaled { saturation, .. } if pressure >= saturation => 1.0,
            Trigger::Scaled { scaling, saturation } => (pressure - scaling) / (saturation - scaling),
        }
    }
}

struct ActionSlot {
    action: Action,
    triggers: Vec<(usize, Trigger)>,
    /// None for a load shed point (Envoy keeps only its `scale_percent`).
    active: Option<Arc<Gauge>>,
    scale_percent: Arc<Gauge>,
}

/// Reads `overload_manager`; errors name the field and the reason.
pub fn build(b: &Bootstrap, store: &Store) -> Result<Built, ConfigError> {
    let Some(om) = b.overload_manager.as_ref() else {
        return Ok(Built { conn_limit: ConnLimit::new(None), manager: None });
    };
    let mut max = None;
    let mut resources: Vec<Resource> = Vec::new();
    for (i, m) in om.resource_monitors.iter().enumerate() {
        let path = format!("overload_manager.resource_monitors[{i}]");
        let Some(ConfigType::TypedConfig(any)) = m.config_type.as_ref() else {
            return Err((path, "typed_config is required".into()));
        };
        if m.name == CONNECTIONS || any.type_url.ends_with("DownstreamConnectionsConfig") {
            let cfg: DownstreamConnectionsConfig = legate_api::any::unpack(any).map_err(|r| (path.clone(), r))?;
            if max.is_some() {
                return Err((path, "a second global connection limit".into()));
            }
            max = Some(usize::try_from(cfg.max_active_downstream_connections).unwrap_or(usize::MAX));
            continue;
        }
        if resources.iter().any(|r| r.name == m.name) {
            return Err((format!("{path}.name"), format!("duplicate resource monitor {}", m.name)));
        }
        let monitor = Monitor::compile(&m.name, any).map_err(|r| (path, r))?;
        let stat = |what: &str| format!("overload.{}.{what}", m.name);
        resources.push(Resource {
            name: m.name.clone(),
            monitor,
            pressure: None,
            pressure_gauge: store.gauge(&stat("pressure")),
            failed_updates: store.counter(&stat("failed_updates")),
            _skipped_updates: store.counter(&stat("skipped_updates")),
        });
    }
    let mut actions = compile_actions(om, &resources, store)?;
    actions.extend(compile_points(om, &resources, store)?);
    let conn_limit = ConnLimit::new(max);
    if resources.is_empty() && actions.is_empty() {
        return Ok(Built { conn_limit, manager: None });
    }
    let shrink_count = actions
        .iter()
        .any(|a| a.action == Action::ShrinkHeap)
        .then(|| store.counter("overload.envoy.overload_actions.shrink_heap.shrink_count"));
    let accept_side = [Action::StopAcceptingConnections, Action::RejectIncomingConnections, Action::ShedListenerAccept];
    if actions.iter().any(|a| accept_side.contains(&a.action)) {
        state::watch_accepts();
    }
    let interval = om.refresh_interval.as_ref().map_or(DEFAULT_REFRESH, legate_api::duration::from_pb);
    Ok(Built { conn_limit, manager: Some(Manager { interval, resources, actions, shrink_count }) })
}

fn compile_actions(
    om: &OverloadManager,
    resources: &[Resource],
    store: &Store,
) -> Result<Vec<ActionSlot>, ConfigError> {
    let mut actions: Vec<ActionSlot> = Vec::new();
    for (i, a) in om.actions.iter().enumerate() {
        let path = format!("overload_manager.actions[{i}]");
        let Some(action) = Action::from_name(&a.name) else {
            return Err((format!("{path}.name"), format!("unknown or unsupported overload action {}", a.name)));
        };
        if actions.iter().any(|s| s.action == action) {
            return Err((format!("{path}.name"), format!("duplicate overload action {}", a.name)));
        }
        let triggers = compile_triggers(&a.triggers, resources, &path, &format!("overload action {}", a.name))?;
        match (&a.typed_config, action) {
            (Some(any), Action::ReduceTimeouts) => {
                let min =
                    timers::idle_min(any).map_err(|(field, reason)| (format!("{path}.typed_config{field}"), reason))?;
                state::scale_idle_timer(min);
            }
            (None, Action::ReduceTimeouts) => {
                return Err((
                    format!("{path}.typed_config"),
                    "reduce_timeouts needs a ScaleTimersOverloadActionConfig".into(),
                ))
            }
            (Some(_), _) => return Err((format!("{path}.typed_config"), format!("{} takes no typed_config", a.name))),
            (None, _) => {}
        }
        let stat = |what: &str| format!("overload.{}.{what}", a.name);
        actions.push(ActionSlot {
            action,
            triggers,
            active: Some(store.gauge(&stat("active"))),
            scale_percent: store.gauge(&stat("scale_percent")),
        });
    }
    Ok(actions)
}

/// `loadshed_points`: each a named point on the request or accept path
/// with triggers, its state drawn as an action's.
fn compile_points(om: &OverloadManager, resources: &[Resource], store: &Store) -> Result<Vec<ActionSlot>, ConfigError> {
    let mut points: Vec<ActionSlot> = Vec::new();
    for (i, p) in om.loadshed_points.iter().enumerate() {
        let path = format!("overload_manager.loadshed_points[{i}]");
        let Some(action) = Action::from_point_name(&p.name) else {
            let known: Vec<&str> = Action::POINTS.iter().map(|(_, n)| *n).collect();
            return Err((
                format!("{path}.name"),
                format!("unknown or unsupported load shed point {} (Legate has {})", p.name, known.join(", ")),
            ));
        };
        if points.iter().any(|s| s.action == action) {
            return Err((format!("{path}.name"), format!("duplicate load shed point {}", p.name)));
        }
        let triggers = compile_triggers(&p.triggers, resources, &path, &format!("load shed point {}", p.name))?;
        let scale_percent = store.gauge(&format!("overload.{}.scale_percent", p.name));
        action.count_sheds(store.counter(&format!("overload.{}.shed_load_count", p.name)));
        points.push(ActionSlot { action, triggers, active: None, scale_percent });
    }
    Ok(points)
}

/// An action's or a load shed point's triggers, by resource index; `what`
/// names it in errors.
fn compile_triggers(
    list: &[legate_api::pb::envoy::config::overload::v3::Trigger],
    resources: &[Resource],
    path: &str,
    what: &str,
) -> Result<Vec<(usize, Trigger)>, ConfigError> {
    let mut triggers = Vec::new();
    for (j, t) in list.iter().enumerate() {
        let tpath = format!("{path}.triggers[{j}]");
        let Some(r) = resources.iter().position(|r| r.name == t.name) else {
            return Err((tpath, format!("unknown trigger resource {} for {what}", t.name)));
        };
        if triggers.iter().any(|(k, _)| *k == r) {
            return Err((tpath, format!("duplicate trigger resource for {what}")));
        }
        let trigger = match t.trigger_oneof {
            Some(TriggerOneof::Threshold(th)) => Trigger::Threshold(th.value),
            Some(TriggerOneof::Scaled(s)) if s.scaling_threshold < s.saturation_threshold => {
                Trigger::Scaled { scaling: s.scaling_threshold, saturation: s.saturation_threshold }
            }
            Some(TriggerOneof::Scaled(_)) => {
                return Err((
                    format!("{tpath}.scaled"),
                    "scaling_threshold must be less than saturation_threshold".into(),
                ))
            }
            None => return Err((tpath, "a threshold or scaled trigger is required".into())),
        };
        triggers.push((r, trigger));
    }
    Ok(triggers)
}

impl Manager {
    /// Samples the monitors every `refresh_interval` for the process's life.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_shrink: Option<Instant> = None;
        loop {
            tick.tick().await;
            self.refresh(&mut last_shrink);
        }
    }

    /// One sampling: each monitor's pressure, then each action's state.
    fn refresh(&mut self, last_shrink: &mut Option<Instant>) {
        for r in &mut self.resources {
            match r.monitor.pressure() {
                Ok(p) => {
                    r.pressure = Some(p);
                    // Envoy's gauge: the pressure in percent, truncated.
                    r.pressure_gauge.set((p * 100.0) as i64);
                }
                Err(reason) => {
                    tracing::debug!("failed to update resource {}: {reason}", r.name);
                    r.failed_updates.inc();
                }
            }
        }
        for a in &self.actions {
            let value = a
                .triggers
                .iter()
                .filter_map(|(r, t)| self.resources[*r].pressure.map(|p| t.value(p)))
                .fold(0.0_f64, f64::max);
            if let Some(active) = &a.active {
                active.set(i64::from(value >= 1.0));
            }
            a.scale_percent.set((value * 100.0) as i64);
            state::set(a.action, state::encode(value));
            if a.action == Action::ShrinkHeap && value >= 1.0 && last_shrink.is_none_or(|t| t.elapsed() >= SHRINK_EVERY)
            {
                *last_shrink = Some(Instant::now());
                crate::server::memory::release_free();
                if let Some(c) = &self.shrink_count {
                    c.inc();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::server::overload::Trigger;

    #[test]
    fn triggers_turn_pressure_into_envoys_states() {
        let t = Trigger::Threshold(0.9);
        assert_eq!((t.value(0.89), t.value(0.9), t.value(1.5)), (0.0, 1.0, 1.0));
        let s = Trigger::Scaled { scaling: 0.5, saturation: 0.9 };
        assert_eq!(s.value(0.49), 0.0);
        assert!((s.value(0.7) - 0.5).abs() < 1e-9);
        assert_eq!((s.value(0.9), s.value(2.0)), (1.0, 1.0));
    }
}
