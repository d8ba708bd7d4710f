//! Bounded waits on a condition for the bed's tests: read something again and again until it
//! says what the test needs or a deadline passes, then let the test judge the last reading.
//! Tests wait on what they need (a figure present, a plan in force, estimates settled), never
//! for a fixed time, and a slow machine only makes them take longer.

use std::time::{Duration, Instant};

use anyhow::Result;

/// The outcome of [`until`]: the last reading and whether `done` accepted it.
#[derive(Debug)]
pub struct Waited<T> {
    /// The reading `done` accepted, or the last one taken before the deadline.
    pub last: T,
    /// Whether `done` accepted `last`.
    pub done: bool,
    /// How many readings were taken.
    pub readings: usize,
    /// Time from the first reading to the last.
    pub waited: Duration,
}

/// Calls `read` every `every` until `done` accepts what it returned or `timeout` has passed
/// (at least one reading is taken). A `read` error ends the wait with that error.
pub fn until<T>(
    timeout: Duration,
    every: Duration,
    mut read: impl FnMut() -> Result<T>,
    done: impl Fn(&T) -> bool,
) -> Result<Waited<T>> {
    let start = Instant::now();
    let mut readings = 0;
    loop {
        let last = read()?;
        readings += 1;
        let ok = done(&last);
        if ok || start.elapsed() + every > timeout {
            return Ok(Waited {
                last,
                done: ok,
                readings,
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_first_accepted_reading_or_the_deadline() {
        let mut n = 0;
        let w = until(
            Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                Ok(n)
            },
            |&n| n == 3,
        )
        .unwrap();
        assert!(w.done && w.last == 3 && w.readings == 3);
        let w = until(
            Duration::from_millis(20),
            Duration::from_millis(5),
            || Ok(0),
            |_| false,
        )
        .unwrap();
        assert!(!w.done && w.readings >= 2 && w.waited < Duration::from_secs(1));
        assert!(
            until(
                Duration::from_secs(1),
                Duration::ZERO,
                || -> Result<u8> { anyhow::bail!("x") },
                |_| true
            )
            .is_err()
        );
    }
}
