//! The access log: one line per request, written when its response is done,
//! in nginx's `combined` format (plus upstream and timing fields) or as JSON.
//! Lines go through a bounded channel to one writer task, so the request
//! path never waits on a disk; when the writer falls behind, lines are
//! dropped and counted rather than slowing requests.

use crate::compile::AccessLogTarget;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Lines waiting for the writer at most; past this they are dropped.
const QUEUE: usize = 16 * 1024;

/// Where lines go: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<String>>,
    json: bool,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// A log that writes nothing (`access_log: {path: off}`, and tests).
    pub fn off() -> Self {
        AccessLog {
            tx: None,
            json: false,
            dropped: Arc::default(),
        }
    }

    /// Start the writer task for `target`. Must run inside the runtime.
    pub fn start(target: &AccessLogTarget, json: bool) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(Self::off()),
            AccessLogTarget::Stdout => Box::new(std::io::stdout()),
            AccessLogTarget::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        std::io::Error::new(e.kind(), format!("access log {}: {e}", path.display()))
                    })?,
            ),
        };
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        // A blocking thread owns the writer: file writes never run on the runtime's threads.
        tokio::task::spawn_blocking(move || {
            let mut buffered = std::io::BufWriter::with_capacity(64 * 1024, &mut out);
            while let Some(line) = rx.blocking_recv() {
                let _ = buffered.write_all(line.as_bytes());
                // Write out whenever the queue is empty, so the log is current.
                while let Ok(more) = rx.try_recv() {
                    let _ = buffered.write_all(more.as_bytes());
                }
                let _ = buffered.flush();
            }
        });
        Ok(AccessLog {
            tx: Some(tx),
            json,
            dropped: Arc::default(),
        })
    }

    pub fn is_on(&self) -> bool {
        self.tx.is_some()
    }

    pub fn write(&self, entry: &Entry) {
        let Some(tx) = &self.tx else { return };
        let line = if self.json {
            entry.json()
        } else {
            entry.combined()
        };
        if tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// Everything one line says.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub remote: Option<SocketAddr>,
    pub time: Option<SystemTime>,
    /// `GET /path HTTP/1.1`
    pub request: String,
    pub status: u16,
    pub bytes_sent: u64,
    pub referer: String,
    pub user_agent: String,
    pub host: String,
    pub request_time: Duration,
    pub upstream_addr: Option<SocketAddr>,
    pub upstream_status: Option<u16>,
    pub upstream_response_time: Option<Duration>,
    /// Why ginx answered itself (e.g. "no location matches"), if it did.
    pub reason: Option<String>,
}

impl Entry {
    /// nginx's combined format, then `rt= ua= us= urt=` as in common nginx
    /// `log_format`s for upstream timing.
    pub fn combined(&self) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.replace('"', "\\x22")
            }
        };
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".to_string());
        format!(
            "{} - - [{}] \"{}\" {} {} \"{}\" \"{}\" rt={:.3} ua=\"{}\" us={} urt={}\n",
            self.remote.map_or("-".to_string(), |r| r.ip().to_string()),
            self.time.map_or("-".to_string(), clf_time),
            self.request.replace('"', "\\x22"),
            self.status,
            self.bytes_sent,
            dash(&self.referer),
            dash(&self.user_agent),
            self.request_time.as_secs_f64(),
            opt(self.upstream_addr.map(|a| a.to_string())),
            opt(self.upstream_status.map(|s| s.to_string())),
            opt(self
                .upstream_response_time
                .map(|t| format!("{:.3}", t.as_secs_f64()))),
        )
    }

    pub fn json(&self) -> String {
        let value = serde_json::json!({
            "time": self.time.map(clf_time),
            "remote_addr": self.remote.map(|r| r.ip().to_string()),
            "request": self.request,
            "host": self.host,
            "status": self.status,
            "bytes_sent": self.bytes_sent,
            "referer": self.referer,
            "user_agent": self.user_agent,
            "request_time": (self.request_time.as_secs_f64() * 1000.0).round() / 1000.0,
            "upstream_addr": self.upstream_addr.map(|a| a.to_string()),
            "upstream_status": self.upstream_status,
            "upstream_response_time": self.upstream_response_time.map(|t| (t.as_secs_f64() * 1000.0).round() / 1000.0),
            "reason": self.reason,
        });
        let mut line = value.to_string();
        line.push('\n');
        line
    }
}

/// `24/Nov/2026:16:58:01 +0000` (UTC), as nginx's `$time_local` on a UTC host.
pub fn clf_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let (y, m, d) = civil_from_days(days as i64);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_539_481); // 2026-11-24 16:58:01 UTC
        assert_eq!(clf_time(t), "24/Nov/2026:16:58:01 +0000");
        assert_eq!(
            clf_time(SystemTime::UNIX_EPOCH),
            "01/Jan/1970:00:00:00 +0000"
        );
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(clf_time(leap), "29/Feb/2000:00:00:00 +0000");
    }

    #[test]
    fn combined_line() {
        let e = Entry {
            remote: Some("10.0.0.7:5555".parse().unwrap()),
            time: Some(SystemTime::UNIX_EPOCH),
            request: "GET /a?b=1 HTTP/1.1".into(),
            status: 200,
            bytes_sent: 12,
            user_agent: "curl/8".into(),
            request_time: Duration::from_millis(3),
            upstream_addr: Some("127.0.0.1:9001".parse().unwrap()),
            upstream_status: Some(200),
            upstream_response_time: Some(Duration::from_millis(2)),
            ..Entry::default()
        };
        assert_eq!(
            e.combined(),
            "10.0.0.7 - - [01/Jan/1970:00:00:00 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \"curl/8\" rt=0.003 ua=\"127.0.0.1:9001\" us=200 urt=0.002\n"
        );
        let j: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(j["upstream_addr"], "127.0.0.1:9001");
        assert_eq!(j["status"], 200);
    }
}
