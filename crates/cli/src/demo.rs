//! `legate demo`: sample upstreams and a proxy in front of them, on loopback.

use crate::echo::{serve, EchoArgs};
use std::sync::Arc;
use std::time::Duration;

const DEMO_BOOTSTRAP: &str = include_str!("demo.yaml");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Worker threads for the proxy.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    // Sample upstreams on their own thread.
    let upstreams = [("service-v1-a", 18081u16), ("service-v1-b", 18082), ("service-v2", 18083)];
    let mut bound = Vec::new();
    for (name, port) in upstreams {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| anyhow::anyhow!("cannot start sample upstream {name} on 127.0.0.1:{port}: {e}"))?;
        l.set_nonblocking(true)?;
        bound.push((name, l));
    }
    std::thread::Builder::new().name("upstreams".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            for (name, l) in bound {
                let Ok(l) = tokio::net::TcpListener::from_std(l) else { continue };
                let args =
                    Arc::new(EchoArgs { listen: l.local_addr().expect("bound"), name: name.into(), plain: false });
                tokio::spawn(serve(l, args));
            }
            std::future::pending::<()>().await
        });
    })?;

    let loaded = legate_api::load::load_bootstrap(DEMO_BOOTSTRAP)?;
    println!(
        "\nLegate demo: a proxy on 127.0.0.1:10000 in front of three sample upstreams.\n\
         \n  curl -s http://127.0.0.1:10000/hello          # a direct response\
         \n  curl -si http://127.0.0.1:10000/anything      # round robin over service_v1 (see x-upstream)\
         \n  curl -si http://127.0.0.1:10000/v2/x          # service_v2, path rewritten to /x\
         \n  curl -si http://127.0.0.1:10000/split         # 80/20 split between v1 and v2\
         \n  curl --http2-prior-knowledge -s http://127.0.0.1:10000/h2\
         \n\nAdmin (Envoy's admin API): http://127.0.0.1:9901/  (try /stats, /clusters, /config_dump, /ready)\
         \nThe bootstrap is an Envoy v3 config; `envoy -c` runs it too. Ctrl-C stops the demo.\n"
    );
    let options = legate_proxy::server::Options {
        concurrency: args.concurrency.max(1),
        drain_time: Duration::from_secs(2),
        base_id: 0,
        log_level: "info".into(),
        service_node: None,
        service_cluster: None,
        config_path: None,
    };
    legate_proxy::server::run(loaded, options)?;
    Ok(())
}
