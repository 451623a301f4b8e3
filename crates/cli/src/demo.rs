//! `legate demo`: the control plane, sample upstreams, and a proxy attached to
//! the control plane over ADS, all on loopback, with the example config applied.

use crate::echo::{serve, EchoArgs};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEMO_RESOURCES: &str = include_str!("demo_resources.yaml");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the demo's control plane keeps its store.
    #[arg(long, default_value = "./legate-data/demo")]
    pub data_dir: std::path::PathBuf,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub seconds: u64,
}

const XDS: &str = "127.0.0.1:18000";
const API: &str = "127.0.0.1:9900";
const ADMIN_PORT: u16 = 9901;

fn start_upstreams() -> anyhow::Result<()> {
    let upstreams = [("service-v1-a", 18081u16), ("service-v1-b", 18082), ("service-v2", 18083)];
    let mut bound = Vec::new();
    for (name, port) in upstreams {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("cannot start sample upstream {name} on 127.0.0.1:{port}"))?;
        l.set_nonblocking(true)?;
        bound.push((name, l));
    }
    std::thread::Builder::new().name("upstreams".into()).spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        rt.block_on(async move {
            for (name, l) in bound {
                let Ok(l) = tokio::net::TcpListener::from_std(l) else { continue };
                let Ok(listen) = l.local_addr() else { continue };
                tokio::spawn(serve(
                    l,
                    Arc::new(EchoArgs {
                        listen,
                        name: name.into(),
                        plain: false,
                        status: None,
                        delay_ms: None,
                        log_requests: false,
                        grpc_health: "SERVING".into(),
                        refuse_h2_streams: false,
                        tcp: false,
                    }),
                ));
            }
            std::future::pending::<()>().await
        });
    })?;
    Ok(())
}

/// Kills the proxy child when the demo ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    start_upstreams()?;

    // The control plane, with the example config applied as one revision.
    let ctrl = legate_control::controller(&args.data_dir)?;
    let docs = legate_control::resources::document::parse_documents(DEMO_RESOURCES).map_err(anyhow::Error::msg)?;
    ctrl.apply(&docs, "demo", "the demo's example config", false).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let opts = legate_control::Options {
        xds_addr: XDS.parse()?,
        api_addr: API.parse()?,
        data_dir: args.data_dir.clone(),
        store: None,
        store_settings: Default::default(),
        watch: None,
        tls: None,
        alert_period: None,
        scrape_period: None,
        metrics_retention: Default::default(),
        fault: Default::default(),
        auth_lockout: Default::default(),
        webhook_ca: None,
        advertise_api: None,
        xds_max_connections_per_address: legate_control::serve::xds::limits::MAX_CONNECTIONS_PER_ADDRESS,
        peer_ca: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let cp = rt.spawn(legate_control::serve(ctrl, opts));

    // A proxy attached over ADS, as its own process (as in production).
    let boot = crate::ctl::bootstrap_yaml("demo-proxy", "demo", "127.0.0.1", "18000", false, ADMIN_PORT);
    std::fs::create_dir_all(&args.data_dir)?;
    let boot_path = args.data_dir.join("proxy-bootstrap.yaml");
    std::fs::write(&boot_path, boot)?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["proxy", "--concurrency", "1", "--drain-time-s", "1", "-l", "warn", "-c"]).arg(&boot_path);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe; it asks the kernel to end the proxy
    // when the demo dies, however it dies (Drop does not run on SIGKILL).
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _proxy = Child(cmd.spawn().context("cannot start the proxy")?);

    // Wait until the proxy serves the demo config.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", 10000)).is_err() {
        if cp.is_finished() {
            return Err(anyhow::anyhow!("the control plane stopped: {:?}", rt.block_on(cp)));
        }
        anyhow::ensure!(Instant::now() < deadline, "the proxy did not start serving within 20s");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "\nLegate demo is running: a control plane, three sample upstreams, and a proxy that\n\
         took its whole config over ADS (bootstrap: {boot}).\n\
         \n  curl -s http://127.0.0.1:10000/hello              # a direct response\
         \n  curl -si http://127.0.0.1:10000/anything          # round robin over service_v1 (see x-upstream)\
         \n  curl -si http://127.0.0.1:10000/v2/x              # service_v2, path rewritten to /x\
         \n  curl -si http://127.0.0.1:10000/split             # 80/20 between v1 and v2\
         \n  legate ctl proxies                                # the fleet: what each proxy ACKed\
         \n  legate ctl get routes; legate ctl history         # the config and its revisions\
         \n  legate ctl bootstrap --node-id my-envoy --admin-port 9902 > b.yaml && envoy -c b.yaml\
         \n\nDashboard: http://{API}/   API: http://{API}/v1/proxies   xDS: {XDS}\
         \nProxy admin (Envoy's admin API): http://127.0.0.1:{ADMIN_PORT}/  (/stats, /clusters, /config_dump)\
         \nCtrl-C stops the demo.\n",
        boot = boot_path.display()
    );
    rt.block_on(async {
        let stop = async {
            if args.seconds > 0 {
                tokio::time::sleep(Duration::from_secs(args.seconds)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = stop => {}
            r = cp => eprintln!("control plane stopped: {r:?}"),
        }
    });
    Ok(())
}
