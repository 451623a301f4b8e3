//! `reduce_timeouts`' config (`ScaleTimersOverloadActionConfig`): Legate
//! scales the HTTP connection idle timer (`HTTP_DOWNSTREAM_CONNECTION_IDLE`);
//! other timers are refused by name.

use crate::common::overload::IdleMin;
use legate_api::pb::envoy::config::overload::v3::scale_timers_overload_action_config::{
    scale_timer::OverloadAdjust, TimerType,
};
use legate_api::pb::envoy::config::overload::v3::ScaleTimersOverloadActionConfig;
use legate_api::pb::google::protobuf::Any;

/// The connection idle timer's floor; else the field (below
/// `typed_config`) and the reason.
pub fn idle_min(any: &Any) -> Result<IdleMin, (String, String)> {
    let c: ScaleTimersOverloadActionConfig = legate_api::any::unpack(any).map_err(|r| (String::new(), r))?;
    let mut min = None;
    for (i, t) in c.timer_scale_factors.iter().enumerate() {
        let path = format!(".timer_scale_factors[{i}]");
        let timer = TimerType::try_from(t.timer).unwrap_or(TimerType::Unspecified);
        if timer != TimerType::HttpDownstreamConnectionIdle {
            return Err((format!("{path}.timer"), format!("timer {} is not scaled by Legate", timer.as_str_name())));
        }
        if min.is_some() {
            return Err((format!("{path}.timer"), "a timer scaled twice".into()));
        }
        min = Some(match t.overload_adjust {
            Some(OverloadAdjust::MinTimeout(d)) => IdleMin::Timeout(legate_api::duration::from_pb(&d)),
            Some(OverloadAdjust::MinScale(p)) => IdleMin::Scale(p.value / 100.0),
            None => return Err((path, "min_timeout or min_scale is required".into())),
        });
    }
    min.ok_or_else(|| (".timer_scale_factors".into(), "no timer to scale".into()))
}
