//! Per-connection limits: token-bucket rate limits (positions, pings) and the abuse window that
//! decides when a connection that keeps breaking limits is closed.

use std::time::{Duration, Instant};

use crate::config::Config;

/// What one connection may do.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Largest text frame accepted; 4x this closes the connection (1009).
    pub max_frame_bytes: usize,
    pub max_positions_per_frame: usize,
    /// Positions handed to Kafka and not yet acknowledged.
    pub max_in_flight: usize,
    /// Positions per second (0: unlimited) and the burst above it.
    pub rate_limit: f64,
    pub rate_burst: f64,
    /// Limit violations in 10 s that close the connection (1008).
    pub abuse_limit: u32,
    /// Ping and pong frames per second (0: unlimited); each beyond is a violation.
    pub ping_rate: f64,
    /// Longest wait to write an answer to a device that does not read; then the connection closes.
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    pub(crate) fn new(config: &Config) -> Self {
        ConnectionLimits {
            max_frame_bytes: config.max_frame_bytes,
            max_positions_per_frame: config.max_positions_per_frame,
            max_in_flight: config.max_in_flight_per_connection.max(1),
            rate_limit: config.rate_limit,
            rate_burst: config.rate_burst,
            abuse_limit: config.abuse_limit,
            ping_rate: config.ping_rate_limit,
            write_timeout: config.write_timeout,
        }
    }

    /// The hard cap on a WebSocket message, past which the connection is closed.
    pub(crate) fn hard_frame_cap(&self) -> usize {
        self.max_frame_bytes.saturating_mul(4).max(1024)
    }
}

/// Token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: Instant::now() }
    }

    /// Takes up to `n` tokens at `now`; returns how many were available.
    pub fn take(&mut self, n: usize, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let granted = (self.tokens.floor() as usize).min(n);
        self.tokens -= granted as f64;
        granted
    }
}

/// Counts limit violations in a fixed window; too many means abuse.
#[derive(Debug)]
pub struct AbuseWindow {
    limit: u32,
    window: Duration,
    started: Instant,
    count: u32,
}

impl AbuseWindow {
    pub fn new(limit: u32, window: Duration) -> Self {
        AbuseWindow { limit, window, started: Instant::now(), count: 0 }
    }

    pub fn record(&mut self) {
        let now = Instant::now();
        if now.duration_since(self.started) > self.window {
            self.started = now;
            self.count = 0;
        }
        self.count += 1;
    }

    pub fn exceeded(&self) -> bool {
        self.count > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_grants_burst_then_rate() {
        let start = Instant::now();
        let mut b = TokenBucket { rate: 10.0, burst: 5.0, tokens: 5.0, last: start };
        assert_eq!(b.take(8, start), 5);
        assert_eq!(b.take(1, start), 0);
        assert_eq!(b.take(3, start + Duration::from_millis(200)), 2);
        assert_eq!(b.take(100, start + Duration::from_secs(10)), 5, "never more than the burst");
    }

    #[test]
    fn abuse_is_more_than_the_limit_in_the_window() {
        let mut w = AbuseWindow::new(2, Duration::from_secs(10));
        w.record();
        w.record();
        assert!(!w.exceeded());
        w.record();
        assert!(w.exceeded());
    }
}
