//! The operator's console: the page at `/` and the files it loads, all
//! embedded in the binary (no network needed to show it). The chart library,
//! uPlot, is vendored under `ui/vendor/uplot` with its licence and version.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// The page, its script and style, and the vendored chart library.
const FILES: &[(&str, &str, &str)] = &[
    ("/ui/console.js", "text/javascript; charset=utf-8", include_str!("ui/console.js")),
    ("/ui/console.css", "text/css; charset=utf-8", include_str!("ui/console.css")),
    ("/ui/uplot.min.js", "text/javascript; charset=utf-8", include_str!("ui/vendor/uplot/uPlot.iife.min.js")),
    ("/ui/uplot.min.css", "text/css; charset=utf-8", include_str!("ui/vendor/uplot/uPlot.min.css")),
    ("/ui/uplot.LICENSE", "text/plain; charset=utf-8", include_str!("ui/vendor/uplot/LICENSE")),
];

const PAGE: &str = include_str!("ui/index.html");

fn page() -> Response {
    ([(CONTENT_TYPE, "text/html; charset=utf-8"), (CACHE_CONTROL, "no-cache")], PAGE).into_response()
}

/// `/`, `/ui` and every file of the console.
pub fn routes<S: Clone + Send + Sync + 'static>(mut router: Router<S>) -> Router<S> {
    router = router.route("/", get(|| async { page() })).route("/ui", get(|| async { page() }));
    for &(path, kind, body) in FILES {
        router =
            router.route(path, get(move || async move { ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")], body) }));
    }
    router
}
