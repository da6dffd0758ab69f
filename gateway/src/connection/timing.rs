//! The timing decisions of an open connection: the heartbeat (a client that sends no text frame
//! for `heartbeat_timeout` is closed), the token re-check schedule, the inbound rate window
//! (text and control frames alike) and when the connection's task must next wake. A plain state
//! machine: the socket loop in [`super`] reports each event with the [`Instant`] it happened at
//! and gets a decision back. It reads no clock and does no I/O, so tests drive it with exact
//! instants or tokio's paused clock.

use crate::close::CloseReason;
use std::time::Duration;
use tokio::time::Instant;

/// The durations and limit a connection runs with (`limits` and `auth` of the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Silence (no client text frame) that closes with `HEARTBEAT_TIMEOUT`.
    pub heartbeat_timeout: Duration,
    /// Between token re-checks: staff and diners have their own.
    pub recheck_every: Duration,
    /// Inbound frames admitted per rate window; one more closes with `RATE_LIMITED`.
    pub rate_limit: u32,
    pub rate_window: Duration,
}

/// What a wake-up of the timer calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Woken early or for nothing; wait again until [`Timing::wake_at`].
    Nothing,
    Close(CloseReason),
    /// Re-validate the token, then report [`Timing::rechecked`].
    Recheck,
}

/// A connection's timers and rate window.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    settings: Settings,
    /// The last client text frame, or the start.
    last_seen: Instant,
    next_recheck: Instant,
    rate: RateWindow,
}

impl Timing {
    /// A connection that starts at `now`: the first re-check is one interval away, the heartbeat
    /// one timeout, and the first rate window starts now.
    pub fn new(now: Instant, settings: Settings) -> Self {
        Timing { settings, last_seen: now, next_recheck: now + settings.recheck_every, rate: RateWindow::new(now) }
    }

    /// When the task must wake if nothing else happens: the earlier of the heartbeat deadline
    /// and the next re-check.
    pub fn wake_at(&self) -> Instant {
        self.next_recheck.min(self.heartbeat_deadline())
    }

    /// A client text frame: it is liveness, and it counts against the rate limit.
    pub fn on_text(&mut self, now: Instant) -> Result<(), CloseReason> {
        self.last_seen = now;
        self.admit(now)
    }

    /// A ping or pong control frame: not liveness, but it costs a reply, so it counts against
    /// the rate limit (browsers cannot send them; only tools and abusers do).
    pub fn on_control_frame(&mut self, now: Instant) -> Result<(), CloseReason> {
        self.admit(now)
    }

    /// The timer fired at `now`. The heartbeat takes precedence over a re-check due as well.
    pub fn on_wake(&self, now: Instant) -> Due {
        if now >= self.heartbeat_deadline() {
            Due::Close(CloseReason::HEARTBEAT_TIMEOUT)
        } else if now >= self.next_recheck {
            Due::Recheck
        } else {
            Due::Nothing
        }
    }

    /// The re-check that [`Due::Recheck`] called for at `now` passed: the next one is an
    /// interval after `now` (the wake-up that ran it, not when it was due).
    pub fn rechecked(&mut self, now: Instant) {
        self.next_recheck = now + self.settings.recheck_every;
    }

    fn heartbeat_deadline(&self) -> Instant {
        self.last_seen + self.settings.heartbeat_timeout
    }

    fn admit(&mut self, now: Instant) -> Result<(), CloseReason> {
        if self.rate.admit(now, self.settings.rate_limit, self.settings.rate_window) {
            Ok(())
        } else {
            Err(CloseReason::RATE_LIMITED)
        }
    }
}

/// Fixed window counter: at most `limit` messages in each window. The first window starts with
/// the connection, each later one at the first message after the previous one ended.
#[derive(Debug, Clone, Copy)]
struct RateWindow {
    started: Instant,
    count: u32,
}

impl RateWindow {
    fn new(now: Instant) -> Self {
        RateWindow { started: now, count: 0 }
    }

    /// Counts one message; `false` when it exceeds the limit.
    fn admit(&mut self, now: Instant, limit: u32, window: Duration) -> bool {
        if now.duration_since(self.started) >= window {
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
        self.count <= limit
    }
}

#[cfg(test)]
mod tests {
    //! On tokio's paused clock: `Instant::now()` moves only with `advance` (or, in the select
    //! loop, to the next timer when the runtime is idle), so every instant asserted is exact.

    use super::*;
    use tokio::time::{advance, sleep, sleep_until};

    const HEARTBEAT: Duration = Duration::from_secs(60);
    const RECHECK: Duration = Duration::from_secs(25);
    const NS: Duration = Duration::from_nanos(1);
    const HEARTBEAT_CLOSE: Due = Due::Close(CloseReason::HEARTBEAT_TIMEOUT);
    const RATE_LIMITED: Result<(), CloseReason> = Err(CloseReason::RATE_LIMITED);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn settings(recheck_every: Duration, rate_limit: u32) -> Settings {
        Settings { heartbeat_timeout: HEARTBEAT, recheck_every, rate_limit, rate_window: secs(1) }
    }

    /// No re-check before the heartbeat, and no rate limit to speak of.
    fn heartbeat_only() -> Settings {
        settings(secs(3600), u32::MAX)
    }

    /// Moves the paused clock to `t0 + at` and returns that instant.
    async fn at(t0: Instant, at: Duration) -> Instant {
        advance((t0 + at).duration_since(Instant::now())).await;
        let now = Instant::now();
        assert_eq!(now, t0 + at, "the clock is paused");
        now
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_closes_exactly_after_the_timeout_of_silence() {
        let t0 = Instant::now();
        let timing = Timing::new(t0, heartbeat_only());
        assert_eq!(timing.wake_at(), t0 + HEARTBEAT);
        assert_eq!(timing.on_wake(t0), Due::Nothing);
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT - NS).await), Due::Nothing, "not a nanosecond before");
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT).await), HEARTBEAT_CLOSE);
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT + secs(5)).await), HEARTBEAT_CLOSE, "a late wake-up closes too");
    }

    #[tokio::test(start_paused = true)]
    async fn a_text_frame_resets_the_heartbeat() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, heartbeat_only());
        assert_eq!(timing.on_text(at(t0, secs(40)).await), Ok(()));
        assert_eq!(timing.wake_at(), t0 + secs(100));
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT).await), Due::Nothing, "the old deadline passes harmlessly");
        assert_eq!(timing.on_wake(at(t0, secs(100) - NS).await), Due::Nothing);
        assert_eq!(timing.on_wake(at(t0, secs(100)).await), HEARTBEAT_CLOSE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_frame_is_not_liveness() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, heartbeat_only());
        assert_eq!(timing.on_control_frame(at(t0, secs(40)).await), Ok(()));
        assert_eq!(timing.on_control_frame(at(t0, secs(59)).await), Ok(()));
        assert_eq!(timing.wake_at(), t0 + HEARTBEAT);
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT).await), HEARTBEAT_CLOSE);
    }

    #[tokio::test(start_paused = true)]
    async fn rechecks_come_every_interval_counted_from_when_they_ran() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, settings(RECHECK, u32::MAX));
        assert_eq!(timing.wake_at(), t0 + secs(25));
        assert_eq!(timing.on_wake(at(t0, secs(25) - NS).await), Due::Nothing);
        let now = at(t0, secs(25)).await;
        assert_eq!(timing.on_wake(now), Due::Recheck);
        timing.rechecked(now);
        assert_eq!(timing.wake_at(), t0 + secs(50));
        assert_eq!(timing.on_wake(at(t0, secs(50) - NS).await), Due::Nothing);
        // The client keeps the connection alive; the next wake-up comes late (a busy runtime):
        // still due until reported done, and the one after is an interval from when it ran.
        assert_eq!(timing.on_text(at(t0, secs(50) - NS).await), Ok(()));
        let now = at(t0, secs(53)).await;
        assert_eq!(timing.on_wake(now), Due::Recheck);
        assert_eq!(timing.on_wake(at(t0, secs(56)).await), Due::Recheck, "not done yet");
        timing.rechecked(now);
        assert_eq!(timing.wake_at(), t0 + secs(78));
        assert_eq!(timing.on_wake(at(t0, secs(78) - NS).await), Due::Nothing);
        assert_eq!(timing.on_wake(at(t0, secs(78)).await), Due::Recheck);
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_wins_over_a_recheck_due_at_the_same_time() {
        let t0 = Instant::now();
        let timing = Timing::new(t0, settings(HEARTBEAT, u32::MAX));
        assert_eq!(timing.wake_at(), t0 + HEARTBEAT);
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT - NS).await), Due::Nothing);
        assert_eq!(timing.on_wake(at(t0, HEARTBEAT).await), HEARTBEAT_CLOSE);
        // And when the re-check was due first but the wake-up came only after both deadlines.
        let timing = Timing::new(t0, settings(RECHECK, u32::MAX));
        assert_eq!(timing.on_wake(t0 + HEARTBEAT - NS), Due::Recheck);
        assert_eq!(timing.on_wake(t0 + HEARTBEAT), HEARTBEAT_CLOSE);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_admits_the_limit_per_window_then_refuses() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, settings(RECHECK, 3));
        let mut twin = timing;
        for offset in [0, 300, 600] {
            let now = at(t0, ms(offset)).await;
            assert_eq!(timing.on_text(now), Ok(()));
            assert_eq!(twin.on_text(now), Ok(()));
        }
        assert_eq!(timing.on_text(at(t0, secs(1) - NS).await), RATE_LIMITED);
        assert_eq!(twin.on_text(at(t0, secs(1)).await), Ok(()), "a new window starts when the first ends");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_window_starts_at_its_first_frame() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, settings(RECHECK, 2));
        // The first window is [0, 1 s), from the start; the next one starts with the frame at 1.5 s.
        for offset in [900, 1500, 1900] {
            assert_eq!(timing.on_text(at(t0, ms(offset)).await), Ok(()));
        }
        let mut twin = timing;
        assert_eq!(timing.on_text(at(t0, ms(2500) - NS).await), RATE_LIMITED);
        let now = at(t0, ms(2500)).await;
        assert_eq!(twin.on_text(now), Ok(()), "fixed windows, not a sliding one");
        assert_eq!(twin.on_text(now), Ok(()));
        assert_eq!(twin.on_text(now), RATE_LIMITED);
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_count_against_the_rate() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, settings(RECHECK, 3));
        let mut pings_only = timing;
        assert_eq!(timing.on_control_frame(at(t0, ms(1)).await), Ok(()));
        assert_eq!(timing.on_text(at(t0, ms(2)).await), Ok(()));
        assert_eq!(timing.on_control_frame(at(t0, ms(3)).await), Ok(()));
        assert_eq!(timing.on_control_frame(at(t0, ms(4)).await), RATE_LIMITED);
        for _ in 0..3 {
            assert_eq!(pings_only.on_control_frame(t0 + ms(4)), Ok(()));
        }
        assert_eq!(pings_only.on_text(t0 + ms(4)), RATE_LIMITED);
    }

    /// What the loop below saw, and when (from its start).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Step {
        Text,
        Control,
        Woke(Due),
    }

    /// The shape of `Session::serve`: a biased select of the client's frames before the timer
    /// at `wake_at`. The client sends a text frame at 50 s and a ping at 70 s, then nothing; a
    /// re-check takes 2 s. The paused clock jumps from timer to timer.
    #[tokio::test(start_paused = true)]
    async fn a_select_loop_wakes_at_the_right_instants() {
        let t0 = Instant::now();
        let mut timing = Timing::new(t0, settings(RECHECK, u32::MAX));
        let mut frames = [(secs(50), Step::Text), (secs(70), Step::Control)].into_iter().peekable();
        let mut seen = Vec::new();
        // Bounded: a wake-up that finds nothing to do would otherwise spin at one instant.
        for _ in 0..20 {
            let next_frame = frames.peek().map(|&(offset, _)| t0 + offset);
            tokio::select! {
                biased;
                _ = sleep_until(next_frame.unwrap_or(t0)), if next_frame.is_some() => {
                    let (_, step) = frames.next().expect("peeked");
                    let now = Instant::now();
                    let admitted = match step {
                        Step::Text => timing.on_text(now),
                        _ => timing.on_control_frame(now),
                    };
                    assert_eq!(admitted, Ok(()));
                    seen.push((now - t0, step));
                }
                _ = sleep_until(timing.wake_at()) => {
                    let now = Instant::now();
                    let due = timing.on_wake(now);
                    seen.push((now - t0, Step::Woke(due)));
                    match due {
                        Due::Nothing => {}
                        Due::Close(_) => break,
                        Due::Recheck => {
                            sleep(secs(2)).await;
                            timing.rechecked(now);
                        }
                    }
                }
            }
        }
        let recheck = Step::Woke(Due::Recheck);
        assert_eq!(
            seen,
            [
                (secs(25), recheck),
                // The frame and the re-check are due together: the frame first, as in `serve`.
                (secs(50), Step::Text),
                (secs(50), recheck),
                (secs(70), Step::Control),
                (secs(75), recheck),
                (secs(100), recheck),
                // 60 s after the text frame (the ping did not count); the re-check due at 125 s
                // never comes.
                (secs(110), Step::Woke(HEARTBEAT_CLOSE)),
            ]
        );
    }

    /// A few instants and counters: every idle connection's task holds one.
    #[test]
    fn stays_small() {
        let instant = size_of::<Instant>();
        assert!(size_of::<Timing>() <= 3 * instant + 3 * size_of::<Duration>() + 16, "{}", size_of::<Timing>());
    }

    mod wake_at {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone, Copy)]
        enum Event {
            Text,
            Control,
            Wake,
        }

        fn event() -> impl Strategy<Value = (Event, u64)> {
            (prop_oneof![Just(Event::Text), Just(Event::Control), Just(Event::Wake)], 0..40_000u64)
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::with_cases(512) })]

            /// Whatever happened, `wake_at` is the earlier of the two deadlines (tracked here on
            /// their own), and exactly the first instant at which a wake-up finds work. Frames
            /// come `gap` ms after the previous event (before the timer), wake-ups up to 99 ms
            /// late. Explicit instants: the property needs no clock.
            #[test]
            fn is_the_earliest_deadline(
                recheck_ms in 1..120_000u64,
                events in proptest::collection::vec(event(), 0..40),
            ) {
                let t0 = Instant::now();
                let recheck = ms(recheck_ms);
                let mut timing = Timing::new(t0, settings(recheck, u32::MAX));
                let (mut now, mut last_text, mut last_recheck) = (t0, t0, t0);
                for (event, gap_ms) in events {
                    let wake = timing.wake_at();
                    prop_assert_eq!(wake, (last_text + HEARTBEAT).min(last_recheck + recheck));
                    prop_assert_eq!(timing.on_wake(wake - NS), Due::Nothing);
                    prop_assert_ne!(timing.on_wake(wake), Due::Nothing);
                    match event {
                        Event::Text => {
                            now = (now + ms(gap_ms)).min(wake - NS);
                            prop_assert_eq!(timing.on_text(now), Ok(()));
                            last_text = now;
                        }
                        Event::Control => {
                            now = (now + ms(gap_ms)).min(wake - NS);
                            prop_assert_eq!(timing.on_control_frame(now), Ok(()));
                        }
                        Event::Wake => {
                            now = wake + ms(gap_ms % 100);
                            match timing.on_wake(now) {
                                Due::Recheck => {
                                    timing.rechecked(now);
                                    last_recheck = now;
                                }
                                due => {
                                    prop_assert_eq!(due, HEARTBEAT_CLOSE);
                                    prop_assert!(now >= last_text + HEARTBEAT);
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
