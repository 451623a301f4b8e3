//! Every network filter Legate runs, by the type of its config, with its
//! place in a chain. Adding a filter in front is its own module (a
//! `ConnectionFilter`) and one line here; a terminal filter also needs its
//! `NetFilter` variant and its serving in the listener.

use crate::http::context::CompileContext;
use crate::listener::network::api::ConnectionFilter;
use crate::listener::network::http_connection_manager::{self, HttpChain};
use crate::listener::network::{ext_authz, local_ratelimit, rbac, tcp_proxy, NetFilter};
use legate_api::pb::envoy::config::listener::v3::{filter, Filter as PbFilter};
use legate_api::pb::google::protobuf::Any;
use std::sync::Arc;

/// Compiles a filter in front from its `typed_config`; `path`
/// (`filters[i].typed_config`) names it in errors.
pub type CompileFront = fn(&Any, &CompileContext, &str) -> Result<Arc<dyn ConnectionFilter>, String>;

/// Compiles a terminal filter, likewise.
pub type CompileTerminal = fn(&Any, &CompileContext, &str) -> Result<NetFilter, String>;

/// Where a filter may stand in a chain.
pub enum Role {
    /// Before the last filter.
    Front(CompileFront),
    /// The last filter, which serves the connection.
    Terminal(CompileTerminal),
}

pub struct Registration {
    pub type_url: &'static str,
    /// Envoy's name for the filter, for errors.
    pub name: &'static str,
    pub role: Role,
}

pub static NETWORK_FILTERS: &[Registration] = &[
    Registration {
        type_url: http_connection_manager::TYPE,
        name: "envoy.filters.network.http_connection_manager",
        role: Role::Terminal(|any, ctx, path| HttpChain::compile_filter(any, ctx, path).map(NetFilter::Http)),
    },
    Registration {
        type_url: tcp_proxy::TYPE,
        name: "envoy.filters.network.tcp_proxy",
        role: Role::Terminal(|any, ctx, path| {
            tcp_proxy::TcpProxyConfig::compile_filter(any, ctx, path).map(NetFilter::Tcp)
        }),
    },
    Registration {
        type_url: local_ratelimit::TYPE,
        name: "envoy.filters.network.local_ratelimit",
        role: Role::Front(local_ratelimit::NetRateLimit::compile_filter),
    },
    Registration {
        type_url: rbac::TYPE,
        name: "envoy.filters.network.rbac",
        role: Role::Front(rbac::NetRbac::compile_filter),
    },
    Registration {
        type_url: ext_authz::TYPE,
        name: "envoy.filters.network.ext_authz",
        role: Role::Front(ext_authz::NetExtAuthz::compile_filter),
    },
];

/// A chain's `filters`, compiled: those in front, in order, and the terminal one.
pub struct ChainFilters {
    pub front: Vec<Arc<dyn ConnectionFilter>>,
    pub terminal: NetFilter,
}

/// Compiles a chain's `filters`: any number of filters that may stand in
/// front, then one terminal filter.
pub fn compile(filters: &[PbFilter], ctx: &CompileContext) -> Result<ChainFilters, String> {
    let Some((last, front)) = filters.split_last() else {
        return Err("filters: a network filter (http_connection_manager or tcp_proxy) is required".into());
    };
    let mut compiled = Vec::with_capacity(front.len());
    for (i, f) in front.iter().enumerate() {
        let as_front = |r: &Role| match r {
            Role::Front(compile) => Some(*compile),
            Role::Terminal(_) => None,
        };
        let (any, compile) = lookup(f, i, as_front, |_| {
            format!("filters[{i}]: only {} may come before the last filter", front_names())
        })?;
        compiled.push(compile(any, ctx, &format!("filters[{i}].typed_config"))?);
    }
    let i = front.len();
    let as_terminal = |r: &Role| match r {
        Role::Terminal(compile) => Some(*compile),
        Role::Front(_) => None,
    };
    let (any, compile) =
        lookup(last, i, as_terminal, |type_url| format!("filters[{i}]: network filter {type_url} is not supported"))?;
    let terminal = compile(any, ctx, &format!("filters[{i}].typed_config"))?;
    Ok(ChainFilters { front: compiled, terminal })
}

/// Filter `i`'s config and the compile function its type has in the role
/// `role` picks; `unsupported` words the error for a type without one.
fn lookup<C>(
    f: &PbFilter,
    i: usize,
    role: impl Fn(&Role) -> Option<C>,
    unsupported: impl FnOnce(&str) -> String,
) -> Result<(&Any, C), String> {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(format!("filters[{i}].typed_config is required"));
    };
    let type_url = legate_api::any::type_name(any);
    match NETWORK_FILTERS.iter().filter(|r| r.type_url == type_url).find_map(|r| role(&r.role)) {
        Some(compile) => Ok((any, compile)),
        None => Err(unsupported(type_url)),
    }
}

/// The names of the filters that may stand in front: "a and b", "a, b and c".
fn front_names() -> String {
    let names: Vec<&str> =
        NETWORK_FILTERS.iter().filter(|r| matches!(r.role, Role::Front(_))).map(|r| r.name).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_config_type_is_supported_and_registered_once() {
        let mut seen = Vec::new();
        for r in NETWORK_FILTERS {
            assert!(legate_api::support::SUPPORTED_EXTENSIONS.contains(&r.type_url), "{}", r.type_url);
            assert!(!seen.contains(&r.type_url), "{} is registered twice", r.type_url);
            seen.push(r.type_url);
        }
    }

    #[test]
    fn the_front_filters_are_named_as_before() {
        assert_eq!(
            front_names(),
            "envoy.filters.network.local_ratelimit, envoy.filters.network.rbac and envoy.filters.network.ext_authz"
        );
    }
}
