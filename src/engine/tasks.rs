//! The engine's long-running tasks: one scheduler per token, one worker per
//! sink, and one watchdog for wall-clock jumps.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::watch;

use super::{Entry, Inner, Trigger, lock, refresh, sync_outcome};
use crate::policy::retry_delay;
use crate::sink::Sink;

/// Maximum single sleep; the scheduler re-reads the wall clock after it.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 3600);
/// How often the watchdog compares the wall clock with the monotonic clock.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(5);
/// A difference beyond this between the two clocks counts as a jump.
const JUMP_THRESHOLD: Duration = Duration::from_secs(2);

/// Sleeps until the planned refresh time, refreshes, and repeats.
///
/// The plan is a wall-clock time, turned into a tokio sleep at each pass. A
/// refresh from elsewhere (a reactive one, say) wakes the scheduler through
/// `entry.wake`, and a wall-clock jump (suspend, NTP step) through the
/// watchdog, so the sleep is always recomputed from the current plan.
pub(super) async fn scheduler(inner: Arc<Inner>, entry: Arc<Entry>) {
    let mut stop = entry.stop.subscribe();
    let mut clock_jumps = inner.clock_jumps.subscribe();
    let mut changes = entry.spec.source.as_ref().and_then(|source| source.watch_changes());
    loop {
        let now = inner.clock.now();
        let planned = lock(&entry.status).next_refresh_at.unwrap_or(now);
        let wait = (planned - now).to_std().unwrap_or(Duration::ZERO).min(MAX_SLEEP);

        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = entry.wake.notified() => continue,
            _ = clock_jumps.changed() => continue,
            _ = stop.changed() => return,
            changed = source_changed(&mut changes) => {
                if changed {
                    let _ = refresh::refresh(&inner, &entry, Trigger::Proactive).await;
                } else {
                    changes = None;
                }
                continue;
            }
        }
        let now = inner.clock.now();
        if lock(&entry.status).next_refresh_at.is_some_and(|next| next > now) {
            continue;
        }

        let trigger = scheduled_trigger(&entry, now);
        // The outcome is recorded and logged inside; the loop only reschedules.
        let _ = refresh::refresh(&inner, &entry, trigger).await;
    }
}

/// Waits for a change notice from the source; returns false when the source
/// stopped watching. Never returns for a source that does not watch.
async fn source_changed(changes: &mut Option<watch::Receiver<u64>>) -> bool {
    match changes {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// Returns the trigger of a scheduled attempt: `initial` until this process has
/// obtained a token (unless a valid one was restored), `reactive` when the
/// token has expired anyway, else `proactive`.
fn scheduled_trigger(entry: &Entry, now: chrono::DateTime<chrono::Utc>) -> Trigger {
    let token = entry.current.load_full();
    let expired = token.as_ref().is_none_or(|token| token.is_expired(now));
    let never_refreshed = lock(&entry.status).last_success_at.is_none();
    match (expired, never_refreshed) {
        (true, true) => Trigger::Initial,
        (true, false) => Trigger::Reactive,
        (false, _) => Trigger::Proactive,
    }
}

/// Writes every new token to one sink, retrying a failed write with backoff
/// until it succeeds or a newer token supersedes it.
pub(super) async fn sink_worker(inner: Arc<Inner>, entry: Arc<Entry>, sink: Arc<dyn Sink>, index: usize) {
    let mut tokens = entry.published.subscribe();
    let mut stop = entry.stop.subscribe();
    let name = entry.spec.name.clone();
    let mut pending = tokens.borrow_and_update().clone();

    loop {
        let token = match pending.take() {
            Some(token) => token,
            None => {
                tokio::select! {
                    changed = tokens.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                match tokens.borrow_and_update().clone() {
                    Some(token) => token,
                    None => continue,
                }
            }
        };

        let mut failures = 0;
        loop {
            let outcome = sink.sync(&name, &token).await;
            entry.record_sync(index, inner.clock.now(), &outcome);
            inner.observer.sync_finished(&name, sink.id(), sync_outcome(&outcome));
            let Err(error) = outcome else {
                tracing::debug!(token = %name, sink = sink.id(), "token synced");
                break;
            };

            failures += 1;
            let delay = retry_delay(failures, &entry.spec.backoff, rand::random()).max(Duration::from_millis(100));
            tracing::warn!(
                token = %name,
                sink = sink.id(),
                reason = %error.reason,
                consecutive_failures = failures,
                retry_in_ms = delay.as_millis() as u64,
                error = %error,
                "sync failed"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                changed = tokens.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Superseded: the outer loop writes the newer token instead.
                    pending = tokens.borrow_and_update().clone();
                    break;
                }
                _ = stop.changed() => return,
            }
        }
    }
}

/// Detects wall-clock jumps and wakes the schedulers to recompute.
///
/// tokio timers run on the monotonic clock, which does not advance during a
/// suspend, while expiry is a wall-clock time. Comparing how far each clock
/// moved in one period catches suspends and clock steps with one timer for
/// the whole process instead of one per token.
pub(super) async fn watch_clock_jumps(inner: Weak<Inner>) {
    let Some(clock) = inner.upgrade().map(|inner| inner.clock.clone()) else { return };
    let mut last = (Instant::now(), clock.now());
    let mut interval = tokio::time::interval(WATCHDOG_PERIOD);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let now = (Instant::now(), clock.now());
        let monotonic = now.0.duration_since(last.0);
        let wall = (now.1 - last.1).to_std().unwrap_or(Duration::ZERO);
        let skew = if wall > monotonic { wall - monotonic } else { monotonic - wall };
        if skew > JUMP_THRESHOLD {
            tracing::info!(skew_ms = skew.as_millis() as u64, "wall clock jumped; recomputing refresh times");
            notify_jump(&inner.clock_jumps);
        }
        last = now;
    }
}

fn notify_jump(sender: &watch::Sender<u64>) {
    sender.send_modify(|generation| *generation = generation.wrapping_add(1));
}
