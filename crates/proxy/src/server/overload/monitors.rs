//! The resource monitors the overload manager samples: `fixed_heap` (the
//! heap in use, counted by the process's allocator, against
//! `max_heap_size_bytes`) and `injected_resource` (a pressure read from a
//! file, as Envoy's tests drive the manager).

use legate_api::pb::envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig;
use legate_api::pb::envoy::extensions::resource_monitors::injected_resource::v3::InjectedResourceConfig;
use legate_api::pb::google::protobuf::Any;
use std::path::PathBuf;
use std::time::SystemTime;

pub enum Monitor {
    FixedHeap { max: u64 },
    Injected(Injected),
}

/// `injected_resource`: Envoy reads the file again when it is moved into
/// place and keeps the outcome (a pressure or an error) until the next move;
/// here the file is read again whenever its inode, size or modification
/// time changed since the last reading.
pub struct Injected {
    path: PathBuf,
    seen: Option<(u64, u64, SystemTime)>,
    last: Result<f64, String>,
}

impl Monitor {
    pub fn compile(name: &str, any: &Any) -> Result<Monitor, String> {
        if any.type_url.ends_with("/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig") {
            let c: FixedHeapConfig = legate_api::any::unpack(any)?;
            if c.max_heap_size_bytes == 0 {
                return Err("max_heap_size_bytes: must be greater than 0".into());
            }
            return Ok(Monitor::FixedHeap { max: c.max_heap_size_bytes });
        }
        if any.type_url.ends_with("/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig") {
            let c: InjectedResourceConfig = legate_api::any::unpack(any)?;
            if c.filename.is_empty() {
                return Err("filename: must not be empty".into());
            }
            let path = PathBuf::from(c.filename);
            return Ok(Monitor::Injected(Injected { path, seen: None, last: Err("not read yet".into()) }));
        }
        Err(format!("resource monitor {name}: unsupported type '{}'", any.type_url))
    }

    /// The resource's pressure now (1.0 is its limit), or why it has none.
    pub fn pressure(&mut self) -> Result<f64, String> {
        match self {
            Monitor::FixedHeap { max } => Ok(crate::server::memory::heap_allocated() as f64 / *max as f64),
            Monitor::Injected(i) => i.read(),
        }
    }
}

impl Injected {
    fn read(&mut self) -> Result<f64, String> {
        let meta = std::fs::metadata(&self.path).map_err(|e| format!("{}: {e}", self.path.display()));
        let now = meta.as_ref().ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.ino(), m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))
        });
        if now.is_none() || now != self.seen {
            self.seen = now;
            self.last = meta.and_then(|_| parse(&self.path));
        }
        self.last.clone()
    }
}

/// The file's pressure: a number in [0, 1], surrounding white space allowed.
fn parse(path: &std::path::Path) -> Result<f64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p: f64 = text.trim().parse().map_err(|_| "failed to parse injected resource pressure".to_string())?;
    if !(0.0..=1.0).contains(&p) {
        return Err("pressure out of range".into());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_pressure_is_read_when_the_file_changes_and_errors_persist() {
        let dir = std::env::temp_dir().join(format!("legate-injected-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("pressure");
        let mut m = Injected { path: path.clone(), seen: None, last: Err("not read yet".into()) };
        assert!(m.read().is_err(), "no file yet");
        let put = |text: &str| {
            let tmp = dir.join("tmp");
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, &path).expect("move");
        };
        put("0.75\n");
        assert_eq!(m.read(), Ok(0.75));
        put("1.5");
        assert_eq!(m.read(), Err("pressure out of range".into()));
        assert!(m.read().is_err(), "the error stays until the next change");
        put("x");
        assert!(m.read().is_err());
        put(" 1 ");
        assert_eq!(m.read(), Ok(1.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
