//! On request headers: counts the request in the `requests` counter, logs
//! the path, answers 403 itself when `x-wasm-deny` is present, else adds the
//! header its plugin configuration names (`name: value`) and
//! `x-wasm-method` from the `request.method` property; panics (a trap: the
//! VM fails) when `x-wasm-panic` is present. On response headers: adds
//! `x-wasm-response`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { header: ("x-wasm".into(), "none".into()), counter: 0 })
    });
}}

struct Root {
    header: (String, String),
    counter: u32,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        let text = String::from_utf8_lossy(&config).into_owned();
        if let Some((name, value)) = text.split_once(':') {
            self.header = (name.trim().to_string(), value.trim().to_string());
        }
        match proxy_wasm::hostcalls::define_metric(MetricType::Counter, "requests") {
            Ok(id) => self.counter = id,
            Err(_) => return false,
        }
        log::info!("headers-plugin configured: {}", self.header.0);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http { header: self.header.clone(), counter: self.counter }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    header: (String, String),
    counter: u32,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let _ = proxy_wasm::hostcalls::increment_metric(self.counter, 1);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        log::warn!("headers-plugin request to {path}");
        if self.get_http_request_header("x-wasm-panic").is_some() {
            panic!("asked to panic");
        }
        if self.get_http_request_header("x-wasm-deny").is_some() {
            self.send_http_response(403, vec![("x-wasm-denied", "yes")], Some(b"denied by wasm\n"));
            return Action::Pause;
        }
        self.add_http_request_header(&self.header.0, &self.header.1);
        let method = self.get_property(vec!["request", "method"]).unwrap_or_default();
        self.set_http_request_header("x-wasm-method", Some(&String::from_utf8_lossy(&method)));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-wasm-response", &self.header.1);
        Action::Continue
    }
}
