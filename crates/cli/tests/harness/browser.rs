//! A headless Chromium driven over the Chrome DevTools Protocol: navigate,
//! evaluate JavaScript, wait for a condition, click, take screenshots.
//!
//! CDP is JSON over one WebSocket, and the tests need five of its methods, so
//! this speaks it directly with the blocking `tungstenite` client (already in
//! the workspace under `tokio-tungstenite`) rather than pulling in a CDP
//! crate and its async runtime. Chromium listens on loopback only, on a port
//! it picks and writes to `DevToolsActivePort` in its profile directory.
//! Every read is bounded; the browser is closed over CDP and then killed by
//! its PID when the `Browser` is dropped.

use super::install::chromium_bin;
use super::process::{wait_for, Proc, LEGATE};
use base64::Engine;
use serde_json::{json, Value};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// How long one CDP call may take.
const CALL_LIMIT: Duration = Duration::from_secs(30);
pub const WIDTH: u32 = 1440;
pub const HEIGHT: u32 = 900;

pub struct Browser {
    proc_: Proc,
    page: WebSocket<TcpStream>,
    next_id: u64,
}

/// Where screenshots go: `<target dir>/console-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    let target = Path::new(LEGATE).parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

fn connect(port: u16, path: &str) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to Chromium's DevTools port");
    stream.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
    stream.set_write_timeout(Some(CALL_LIMIT)).expect("write timeout");
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, _) = tungstenite::client::client(url.as_str(), stream).expect("DevTools WebSocket handshake");
    ws
}

impl Browser {
    /// Headless Chromium with a fresh profile in `dir`, and one blank page.
    pub fn start(dir: &Path) -> Browser {
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        let mut proc_ = Proc::spawn(
            "chromium",
            Command::new(chromium_bin())
                .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check"])
                .args(["--disable-extensions", "--disable-background-networking", "--disable-component-update"])
                .args(["--disable-sync", "--disable-default-apps", "--mute-audio", "--hide-scrollbars"])
                .args(["--disable-features=Translate,MediaRouter,OptimizationHints", "--password-store=basic"])
                .args(["--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"])
                .arg(format!("--window-size={WIDTH},{HEIGHT}"))
                .arg(format!("--user-data-dir={}", profile.display()))
                .arg("about:blank"),
            dir,
        );
        let active = profile.join("DevToolsActivePort");
        let (port, browser_path) = wait_for("Chromium's DevToolsActivePort", Duration::from_secs(30), || {
            assert!(proc_.is_running(), "chromium exited:\n{}", proc_.output());
            let text = std::fs::read_to_string(&active).ok()?;
            let mut lines = text.lines();
            let port = lines.next()?.trim().parse::<u16>().ok()?;
            Some((port, lines.next()?.trim().to_string()))
        });
        let mut browser = connect(port, &browser_path);
        let target = call_on(&mut browser, 1, "Target.createTarget", json!({"url": "about:blank"}));
        let id = target["targetId"].as_str().expect("targetId").to_string();
        drop(browser);
        let page = connect(port, &format!("/devtools/page/{id}"));
        let mut b = Browser { proc_, page, next_id: 10 };
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// One CDP call on the page: its `result`.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        call_on(&mut self.page, self.next_id, method, params)
    }

    pub fn navigate(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url}));
        assert!(r.get("errorText").is_none(), "navigating to {url}: {r}");
    }

    /// The value of a JavaScript expression (promises awaited).
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true, "userGesture": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("JavaScript failed: {expr}\n{e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` every 200 ms until it gives something other than
    /// null, false or "": that value; panics after `limit`, with `state`'s
    /// value for the message.
    pub fn wait_js(&mut self, what: &str, expr: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expr);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            if start.elapsed() > limit {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 3000) : ''");
                panic!(
                    "timed out after {limit:?} waiting for {what} ({expr}); the page shows:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the first element `selector` matches (it must exist).
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).expect("selector");
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e) return false; e.click(); return true; }})()"
        ));
        assert_eq!(found, true, "nothing to click at {selector}");
    }

    /// A PNG of the whole page, saved as `<screenshot_dir>/<name>.png`.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let height = self
            .eval("Math.max(document.documentElement.scrollHeight, window.innerHeight)")
            .as_f64()
            .unwrap_or(HEIGHT as f64);
        let clip = json!({"x": 0, "y": 0, "width": WIDTH, "height": height.min(4000.0), "scale": 1});
        let shot =
            self.call("Page.captureScreenshot", json!({"format": "png", "clip": clip, "captureBeyondViewport": true}));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let file = screenshot_dir().join(format!("{name}.png"));
        std::fs::write(&file, png).expect("write screenshot");
        file
    }
}

/// Sends `method` with `id` and reads until its answer (events in between
/// are skipped), within `CALL_LIMIT`.
fn call_on(ws: &mut WebSocket<TcpStream>, id: u64, method: &str, params: Value) -> Value {
    let msg = json!({"id": id, "method": method, "params": params}).to_string();
    ws.send(Message::text(msg)).unwrap_or_else(|e| panic!("CDP {method}: {e}"));
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < CALL_LIMIT, "CDP {method}: no answer within {CALL_LIMIT:?}");
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
            {
                continue
            }
            Err(e) => panic!("CDP {method}: {e}"),
        };
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if v["id"] != id {
            continue;
        }
        if let Some(err) = v.get("error") {
            panic!("CDP {method} failed: {err}");
        }
        return v["result"].clone();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Close gracefully (Chromium ends its own helpers), then make sure by PID.
        self.next_id += 1;
        let msg = json!({"id": self.next_id, "method": "Browser.close", "params": {}}).to_string();
        let _ = self.page.send(Message::text(msg));
        let start = Instant::now();
        while self.proc_.is_running() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.proc_.kill();
    }
}
