//! Webhook gates: before a release starts a step (the first included), each
//! of its `analysis.gates` URLs gets a POST of the release's name, service,
//! step and weight, and must answer 2xx; until all do, the step waits.
//! `https://` gates are verified as every webhook is (`remote::webhook`).

use crate::releases::spec::{Release, Status};
use hyper::body::Bytes;
use std::time::Duration;

/// How long one gate may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks every gate of `release` about the step `next` starts: Ok when all
/// answered 2xx, otherwise the first refusal (URL and answer). Called on a
/// blocking thread of the runtime.
pub fn ask(release: &Release, next: &Status) -> Result<(), String> {
    let body = serde_json::json!({
        "release": release.name,
        "service": release.service,
        "step": next.step + 1,
        "steps": release.steps.len(),
        "weight": next.weight,
    });
    let handle = tokio::runtime::Handle::try_current().map_err(|_| "no runtime to call the gates from".to_string())?;
    for url in &release.gates {
        let bytes = Bytes::from(body.to_string());
        let post = crate::remote::webhook::post(url, bytes, "legate-releases");
        let answer = handle.block_on(async { tokio::time::timeout(TIMEOUT, post).await });
        match answer {
            Ok(Ok(status)) if (200..300).contains(&status) => {}
            Ok(Ok(status)) => return Err(format!("gate {url} answered {status}")),
            Ok(Err(e)) => return Err(format!("gate {url}: {e}")),
            Err(_) => return Err(format!("gate {url} did not answer within {TIMEOUT:?}")),
        }
    }
    Ok(())
}
