//! Coarse time, for what is measured in seconds: a connection's idle and
//! head deadlines, the upstream pool's idle stamps, a peer's fail_timeout
//! marks (`balance`), and the `date` field.
//!
//! The kernel's coarse clocks (CLOCK_MONOTONIC_COARSE, CLOCK_REALTIME_COARSE)
//! return the time of the last scheduler tick, so they are only as fine as
//! the tick (4 ms on a 250 Hz kernel), but a read is a load from the vDSO
//! page: 5 ns where the precise clock takes 23 on the benchmark's VM, and a
//! kept-alive request stamps the time about five times. Precise time
//! (`Instant`) stays where it is measured, not compared against seconds:
//! `$request_time`, the upstream response-time histogram.
//!
//! Not a crate (`coarsetime` reads the same clock) because the deadlines
//! made here end in tokio timers, which take a std `Instant`: the mapping
//! below is the part that matters, and it needs the clock's resolution.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds on the coarse monotonic clock; never 0, so that 0 can mean
/// "not set" in a stamp.
pub fn coarse_ms() -> u64 {
    let (secs, nanos) = read(libc::CLOCK_MONOTONIC_COARSE);
    secs * 1000 + nanos / 1_000_000 + 1
}

/// Whole seconds since the Unix epoch, on the coarse real-time clock (the
/// `date` field's second).
pub fn coarse_unix_secs() -> u64 {
    read(libc::CLOCK_REALTIME_COARSE).0
}

/// The instant to wake at for the deadline `ms`: when [`coarse_ms`] will
/// have reached it if the ticks come on time. A timer set for `ms` itself
/// could wake while the coarse clock still reads an earlier tick, find its
/// deadline not yet due, and be set again for a moment already past: a spin
/// until the tick. So the instant is pushed out by the clock's resolution:
/// a deadline fires up to two ticks late. A tick that comes late (a busy or
/// preempted CPU) can still leave the clock short at the wake-up; the
/// caller then looks again a millisecond later (`serve::watch_connection`).
pub fn instant_at(ms: u64) -> Instant {
    let base = base();
    base.instant + Duration::from_millis(ms.saturating_sub(base.ms)) + base.slack
}

/// One reading of both clocks, the coarse one first: `ms` is then no later
/// than `instant`, which is what keeps [`instant_at`] from being early
/// while the ticks come on time.
struct Base {
    ms: u64,
    instant: Instant,
    slack: Duration,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let ms = coarse_ms();
        let instant = Instant::now();
        let mut res = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `res` is a valid, writable timespec.
        let known = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0;
        let resolution = if known {
            Duration::new(res.tv_sec as u64, res.tv_nsec as u32)
        } else {
            Duration::from_millis(10) // a 100 Hz kernel's tick, the coarsest
        };
        // Whole milliseconds, rounded up, plus the millisecond `coarse_ms` drops.
        let slack = Duration::from_millis(resolution.as_nanos().div_ceil(1_000_000) as u64 + 1);
        Base { ms, instant, slack }
    })
}

fn read(clock: libc::clockid_t) -> (u64, u64) {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the coarse clocks exist
    // on every Linux since 2.6.32, and a failure leaves `now` at 0 (never
    // taken for a deadline: stamps are compared by difference).
    unsafe { libc::clock_gettime(clock, &mut now) };
    (now.tv_sec as u64, now.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The coarse clock's tick can come late on a loaded or preempted CPU
    // (seen: 6 ms behind while the tests ran in parallel), so these check
    // units and directions with room for that, not the tick's punctuality.

    #[test]
    fn the_coarse_clock_counts_milliseconds_as_the_precise_one_does() {
        let started = Instant::now();
        let first = coarse_ms();
        std::thread::sleep(Duration::from_millis(200));
        let later = coarse_ms();
        let precise = started.elapsed().as_millis() as u64;
        assert!(first > 0 && later >= first);
        let moved = later - first;
        assert!(
            moved + 100 >= precise && moved <= precise + 100,
            "coarse moved {moved} ms while the precise clock moved {precise} ms"
        );
    }

    #[test]
    fn a_deadline_is_pushed_out_by_the_resolution_and_kept_in_step() {
        let base = base();
        // The slack covers the resolution (4 ms on a 250 Hz kernel) and
        // the millisecond coarse_ms drops.
        assert!(base.slack >= Duration::from_millis(2), "{:?}", base.slack);
        assert_eq!(instant_at(base.ms), base.instant + base.slack);
        assert_eq!(
            instant_at(base.ms + 1500) - instant_at(base.ms + 500),
            Duration::from_millis(1000)
        );
        // A stamp from before the base (none is made) maps to the base, not
        // to a panic.
        assert_eq!(instant_at(0), base.instant + base.slack);
    }

    #[test]
    fn a_timer_set_for_a_deadline_finds_the_coarse_clock_there() {
        for step in [0, 1, 3, 7, 20] {
            let due = coarse_ms() + step;
            let at = instant_at(due);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // Normally already there; a late tick may need a little more.
            let give_up = Instant::now() + Duration::from_secs(1);
            while coarse_ms() < due && Instant::now() < give_up {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(coarse_ms() >= due, "still at {} for {due}", coarse_ms());
        }
    }

    #[test]
    fn the_coarse_real_time_is_the_current_second() {
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let coarse = coarse_unix_secs();
        assert!(
            coarse + 2 >= precise && coarse <= precise + 1,
            "{coarse} against {precise}"
        );
    }
}
