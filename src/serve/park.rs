//! The parking lot: idle HTTP/1 keep-alive connections held without a task.
//!
//! A keep-alive connection idle for [`super::conn::PARK_AFTER`] gives up its
//! hyper connection (buffers and state) and then its task: what is left is
//! the socket and the few facts needed to serve it again ([`Parked`], under
//! 150 bytes), in one slab watched by one epoll instance of the lot's own.
//! When the client sends its next request (or closes), the socket goes back
//! to tokio and a new task serves it. nginx keeps an idle keep-alive
//! connection in a few hundred bytes; a task with its timers and tokio's
//! registration would take kilobytes for each of them.
//!
//! One task waits on the lot's epoll descriptor (itself registered with
//! tokio) and, while anything is parked, sweeps every [`SWEEP_EVERY`] for
//! connections past keepalive_timeout or whose listener was stopped: those
//! close up to that much late.

use super::conn::{HeadLimits, Idle};
use super::ConnSlot;
use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};

/// How often parked connections are checked for their deadlines.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// Readiness events taken from the lot's epoll instance at a time.
const EVENTS_AT_ONCE: usize = 256;

/// What a parked connection keeps.
/// (Its addresses are asked of the socket again when it is resumed.)
pub struct Parked {
    pub idle: Idle,
    pub limits: HeadLimits,
    /// Its listener's stop signal: set when the listener is removed or ginx stops.
    pub stop: watch::Receiver<bool>,
    pub slot: ConnSlot,
}

impl Parked {
    fn expired(&self, now: Instant) -> bool {
        now >= self.idle.close_at || *self.stop.borrow()
    }
}

pub struct ParkingLot {
    /// Registers parked sockets with the lot's epoll instance.
    registry: mio::Registry,
    lot: Mutex<Lot>,
    /// A connection was parked in an empty lot: the sweeps start again.
    first_parked: Notify,
    gauge: Gauge,
}

struct Lot {
    parked: Slab<Parked>,
    /// ginx is stopping: nothing more is parked.
    closed: bool,
}

/// The lot's epoll instance, for its task ([`run`]).
pub struct Waiter(mio::Poll);

impl ParkingLot {
    pub fn new(gauge: Gauge) -> io::Result<(ParkingLot, Waiter)> {
        let poll = mio::Poll::new()?;
        let lot = ParkingLot {
            registry: poll.registry().try_clone()?,
            lot: Mutex::new(Lot {
                parked: Slab::new(),
                closed: false,
            }),
            first_parked: Notify::new(),
            gauge,
        };
        Ok((lot, Waiter(poll)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lot> {
        self.lot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold `parked` until its client sends something. If that cannot be
    /// watched (or ginx is stopping), the connection is closed.
    pub fn park(&self, parked: Parked) {
        let mut lot = self.lock();
        if lot.closed {
            return;
        }
        let entry = lot.parked.vacant_entry();
        let fd = parked.idle.socket.as_raw_fd();
        // Registered while the lot is locked: the task that takes it on its
        // readiness event finds it in the slab.
        if let Err(e) =
            self.registry
                .register(&mut SourceFd(&fd), Token(entry.key()), Interest::READABLE)
        {
            tracing::warn!(error = %e, "cannot park an idle connection; closing it");
            return;
        }
        entry.insert(parked);
        self.gauge.set(lot.parked.len() as i64);
        if lot.parked.len() == 1 {
            self.first_parked.notify_one();
        }
    }

    /// The parked connection registered as `key`, out of the lot.
    fn take(&self, key: usize) -> Option<Parked> {
        let mut lot = self.lock();
        let parked = lot.parked.try_remove(key)?;
        self.gauge.set(lot.parked.len() as i64);
        drop(lot);
        let fd = parked.idle.socket.as_raw_fd();
        // The socket goes back to tokio's own epoll instance.
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        Some(parked)
    }

    /// Close the connections past keepalive_timeout or whose listener
    /// stopped (closing a socket also takes it out of the epoll instance).
    fn sweep(&self, now: Instant) {
        let mut lot = self.lock();
        lot.parked.retain(|_, p| !p.expired(now));
        self.gauge.set(lot.parked.len() as i64);
    }

    fn is_empty(&self) -> bool {
        self.lock().parked.is_empty()
    }

    /// Close every parked connection and park no more: ginx is stopping
    /// (an idle connection has nothing left to finish).
    pub fn close_all(&self) {
        let mut lot = self.lock();
        lot.closed = true;
        let parked = std::mem::take(&mut lot.parked);
        self.gauge.set(0);
        drop(lot);
        drop(parked);
    }
}

/// The lot's task: each connection whose client spoke again goes to
/// `resume`; the expired ones are closed. Runs until aborted.
pub async fn run(lot: std::sync::Arc<ParkingLot>, waiter: Waiter, resume: impl Fn(Parked)) {
    // SAFETY: the descriptor is mio::Poll's own epoll instance, which the
    // Poll owns and keeps open, unchanged, until it is dropped; the AsyncFd
    // owns the Poll, so the descriptor outlives the registration.
    let registered =
        unsafe { AsyncFd::register_with_interest(waiter.0, tokio::io::Interest::READABLE) };
    let mut poll = match registered {
        Ok(poll) => poll,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch parked connections; closing them");
            lot.close_all();
            return;
        }
    };
    let mut events = Events::with_capacity(EVENTS_AT_ONCE);
    let mut sweeps = tokio::time::interval(SWEEP_EVERY);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let any_parked = !lot.is_empty();
        tokio::select! {
            ready = poll.readable_mut() => {
                let Ok(mut ready) = ready else { continue };
                loop {
                    match ready.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::warn!(error = %e, "waiting on parked connections failed");
                            break;
                        }
                    }
                    let mut seen = 0;
                    for event in events.iter() {
                        seen += 1;
                        if let Some(parked) = lot.take(event.token().0) {
                            resume(parked);
                        }
                    }
                    if seen < EVENTS_AT_ONCE {
                        break;
                    }
                }
                ready.clear_ready();
            }
            _ = sweeps.tick(), if any_parked => lot.sweep(Instant::now()),
            _ = lot.first_parked.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs is mostly this: keep it small (nginx
    /// keeps an idle keep-alive connection in about 500 bytes).
    #[test]
    fn a_parked_connection_is_small() {
        assert!(
            std::mem::size_of::<Parked>() <= 160,
            "{} bytes",
            std::mem::size_of::<Parked>()
        );
    }
}
