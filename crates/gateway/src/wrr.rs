//! nginx's smooth weighted round-robin, with its passive health checks (`max_fails`,
//! `fail_timeout`), as a pure state machine: no I/O, no clock (time is passed in).
//!
//! Why nginx's algorithm and not a simpler one: the tier must behave exactly like the nginx
//! configuration `nginx-conf` prints, so a spread seen through the built-in gateway is the spread
//! an operator will see in production. The "smooth" variant interleaves: for weights 5:1:1 it
//! picks `a a b a c a a`, never five `a` in a row, so no node gets a burst.
//!
//! Each pick adds every eligible peer's effective weight to its current weight, picks the
//! highest current weight (the first on ties) and takes the total off the winner. A failure
//! lowers the peer's effective weight by `weight / max_fails` (it climbs back by one per pick,
//! nginx's gradual recovery) and counts towards `max_fails`; a peer with `max_fails` failures is
//! skipped until `fail_timeout` has passed since its last failure, then gets one request to prove
//! itself. All of this follows `ngx_http_upstream_round_robin.c`, including its quirks (the
//! failure count is cleared by a success only after a check point; a single peer is never
//! skipped).

use std::time::{Duration, Instant};

/// Most peers one balancer holds: the set of peers a request has tried is a `u64` bit set.
pub const PEERS_MAX: usize = 64;

/// The peers a request has already tried (bit `i` for peer `i`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn contains(self, peer: usize) -> bool {
        self.0 & (1 << peer) != 0
    }
    pub fn insert(&mut self, peer: usize) {
        self.0 |= 1 << peer;
    }
}

#[derive(Debug)]
struct Peer {
    weight: i64,
    effective_weight: i64,
    current_weight: i64,
    fails: u32,
    /// When the last failure was recorded (nginx's `accessed`).
    failed_at: Option<Instant>,
    /// When the peer was last checked: a failure, or a pick more than `fail_timeout` after the
    /// previous check (nginx's `checked`).
    checked_at: Option<Instant>,
}

/// The balancer's state. Not thread-safe by itself: the gateway keeps it under one mutex
/// (a pick is a loop over at most `PEERS_MAX` integers).
#[derive(Debug)]
pub struct SmoothWrr {
    peers: Vec<Peer>,
    max_fails: u32,
    fail_timeout: Duration,
}

impl SmoothWrr {
    /// A balancer over peers with these weights (each ≥ 1; at most `PEERS_MAX` peers).
    /// `max_fails == 0` turns the failure accounting off, as in nginx.
    pub fn new(weights: &[u32], max_fails: u32, fail_timeout: Duration) -> SmoothWrr {
        assert!(
            !weights.is_empty() && weights.len() <= PEERS_MAX,
            "1..={PEERS_MAX} peers"
        );
        assert!(weights.iter().all(|&w| w >= 1), "weights are at least 1");
        let peers = weights
            .iter()
            .map(|&w| Peer {
                weight: i64::from(w),
                effective_weight: i64::from(w),
                current_weight: 0,
                fails: 0,
                failed_at: None,
                checked_at: None,
            })
            .collect();
        SmoothWrr {
            peers,
            max_fails,
            fail_timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The next peer for a request that has already tried `tried`, or `None` if every peer is
    /// tried or temporarily down.
    pub fn pick(&mut self, tried: Tried, now: Instant) -> Option<usize> {
        if self.peers.len() == 1 {
            // nginx: "If there is only a single server in a group, max_fails, fail_timeout and
            // slow_start parameters are ignored, and such a server will never be considered
            // unavailable."
            return (!tried.contains(0)).then_some(0);
        }
        let mut best: Option<usize> = None;
        let mut total = 0;
        for i in 0..self.peers.len() {
            if tried.contains(i) || self.is_down(i, now) {
                continue;
            }
            let peer = &mut self.peers[i];
            peer.current_weight += peer.effective_weight;
            total += peer.effective_weight;
            if peer.effective_weight < peer.weight {
                peer.effective_weight += 1;
            }
            let better = match best {
                None => true,
                Some(b) => self.peers[i].current_weight > self.peers[b].current_weight,
            };
            if better {
                best = Some(i);
            }
        }
        let best = best?;
        let fail_timeout = self.fail_timeout;
        let peer = &mut self.peers[best];
        peer.current_weight -= total;
        if peer
            .checked_at
            .is_none_or(|c| now.saturating_duration_since(c) > fail_timeout)
        {
            peer.checked_at = Some(now);
        }
        Some(best)
    }

    /// Whether `peer` has `max_fails` failures and its `fail_timeout` has not passed since.
    pub fn is_down(&self, peer: usize, now: Instant) -> bool {
        let p = &self.peers[peer];
        self.max_fails != 0
            && p.fails >= self.max_fails
            && p.checked_at
                .is_some_and(|c| now.saturating_duration_since(c) <= self.fail_timeout)
    }

    /// Records that a request to `peer` failed (connection refused, timed out, broken).
    pub fn failed(&mut self, peer: usize, now: Instant) {
        let max_fails = self.max_fails;
        let p = &mut self.peers[peer];
        p.fails = p.fails.saturating_add(1);
        p.failed_at = Some(now);
        p.checked_at = Some(now);
        if max_fails != 0 {
            p.effective_weight -= p.weight / i64::from(max_fails);
        }
        p.effective_weight = p.effective_weight.max(0);
    }

    /// Records that `peer` answered. Clears its failures if it was checked after the last one
    /// (nginx: "mark peer live if check passed").
    pub fn succeeded(&mut self, peer: usize) {
        let p = &mut self.peers[peer];
        if p.fails != 0 && p.failed_at < p.checked_at {
            p.fails = 0;
        }
    }

    /// How much longer `peer` is skipped, if it is down now.
    pub fn down_for(&self, peer: usize, now: Instant) -> Option<Duration> {
        if !self.is_down(peer, now) {
            return None;
        }
        let checked = self.peers[peer].checked_at?;
        Some(
            self.fail_timeout
                .saturating_sub(now.saturating_duration_since(checked)),
        )
    }

    /// Weight of `peer` as configured.
    pub fn weight(&self, peer: usize) -> u32 {
        self.peers[peer].weight as u32
    }

    /// Failures on record for `peer` (cleared by a success after a check).
    pub fn fails(&self, peer: usize) -> u32 {
        self.peers[peer].fails
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[u8] = b"abcdefghij";

    fn sequence(weights: &[u32], picks: usize) -> String {
        let mut wrr = SmoothWrr::new(weights, 1, Duration::from_secs(10));
        let now = Instant::now();
        (0..picks)
            .map(|_| NAMES[wrr.pick(Tried::default(), now).unwrap()] as char)
            .collect()
    }

    #[test]
    fn five_one_one_is_nginx_documented_order() {
        // The sequence in nginx's commit introducing smooth WRR (52327e0627f4, 2012).
        assert_eq!(sequence(&[5, 1, 1], 7), "aabacaa");
        assert_eq!(sequence(&[5, 1, 1], 14), "aabacaaaabacaa");
    }

    #[test]
    fn one_two_three_four_has_exact_counts_and_interleaves() {
        // Worked by hand with the algorithm: current weights start at 0, each pick adds
        // 1,2,3,4 and takes 10 off the winner.
        let order = sequence(&[1, 2, 3, 4], 10);
        assert_eq!(order, "dcbdacdbcd");
        for (name, count) in [('a', 1), ('b', 2), ('c', 3), ('d', 4)] {
            assert_eq!(order.matches(name).count(), count, "{order}");
        }
        // Smooth: the heaviest peer never gets two in a row within a cycle of 10.
        assert!(!order.contains("dd"), "{order}");
        // And the cycle repeats exactly.
        assert_eq!(sequence(&[1, 2, 3, 4], 30), order.repeat(3));
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(sequence(&[1, 1, 1], 6), "abcabc");
        assert_eq!(sequence(&[3, 3], 4), "abab");
    }

    #[test]
    fn a_single_peer_is_never_down() {
        let mut wrr = SmoothWrr::new(&[3], 1, Duration::from_secs(10));
        let now = Instant::now();
        wrr.failed(0, now);
        assert_eq!(wrr.pick(Tried::default(), now), Some(0));
        let mut tried = Tried::default();
        tried.insert(0);
        assert_eq!(wrr.pick(tried, now), None);
    }

    #[test]
    fn tried_peers_are_skipped_for_the_same_request() {
        let mut wrr = SmoothWrr::new(&[1, 1, 1], 1, Duration::from_secs(10));
        let now = Instant::now();
        let mut tried = Tried::default();
        tried.insert(0);
        tried.insert(1);
        assert_eq!(wrr.pick(tried, now), Some(2));
        tried.insert(2);
        assert_eq!(wrr.pick(tried, now), None);
    }

    /// Picks up to `picks` times at `now`; answers whether `peer` was among them.
    fn picked_within(wrr: &mut SmoothWrr, peer: usize, picks: usize, now: Instant) -> bool {
        (0..picks).any(|_| wrr.pick(Tried::default(), now) == Some(peer))
    }

    #[test]
    fn a_failed_peer_is_skipped_until_fail_timeout_then_probed() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut wrr = SmoothWrr::new(&[1, 1], 1, timeout);
        wrr.failed(0, t0);
        for _ in 0..5 {
            assert_eq!(wrr.pick(Tried::default(), t0 + timeout), Some(1));
        }
        assert!(wrr.is_down(0, t0 + timeout));
        // Past the fail timeout it gets a request again; a failure takes it down for another
        // whole timeout.
        let t1 = t0 + timeout + Duration::from_millis(1);
        assert!(!wrr.is_down(0, t1));
        assert!(picked_within(&mut wrr, 0, 4, t1));
        wrr.failed(0, t1);
        assert!(wrr.is_down(0, t1 + timeout));
        assert!(!picked_within(&mut wrr, 0, 10, t1 + timeout));
        // A successful probe after the next timeout clears the failures for good.
        let t2 = t1 + timeout + Duration::from_millis(1);
        assert!(picked_within(&mut wrr, 0, 4, t2));
        wrr.succeeded(0);
        assert_eq!(wrr.fails(0), 0);
        assert!(!wrr.is_down(0, t2));
    }

    #[test]
    fn max_fails_counts_failures_before_taking_a_peer_down() {
        let t0 = Instant::now();
        let mut wrr = SmoothWrr::new(&[2, 1], 3, Duration::from_secs(10));
        wrr.failed(0, t0);
        wrr.failed(0, t0);
        assert!(!wrr.is_down(0, t0));
        wrr.failed(0, t0);
        assert!(wrr.is_down(0, t0));
        assert_eq!(wrr.pick(Tried::default(), t0), Some(1));
    }

    #[test]
    fn max_fails_zero_never_takes_a_peer_down() {
        let t0 = Instant::now();
        let mut wrr = SmoothWrr::new(&[1, 1], 0, Duration::from_secs(10));
        for _ in 0..100 {
            wrr.failed(0, t0);
        }
        assert!(!wrr.is_down(0, t0));
        let picks = (0..4)
            .map(|_| wrr.pick(Tried::default(), t0).unwrap())
            .collect::<Vec<_>>();
        assert_eq!(picks, [0, 1, 0, 1]);
    }

    #[test]
    fn a_recovered_peer_climbs_back_to_its_weight_gradually() {
        // nginx lowers the effective weight by weight / max_fails on a failure and raises it by
        // one per pick: a peer back from the dead does not take its full share at once.
        let t0 = Instant::now();
        let timeout = Duration::from_secs(1);
        let mut wrr = SmoothWrr::new(&[10, 10], 1, timeout);
        wrr.failed(0, t0);
        let t1 = t0 + timeout + Duration::from_millis(1);
        let first: Vec<usize> = (0..10)
            .map(|_| wrr.pick(Tried::default(), t1).unwrap())
            .collect();
        let share = first.iter().filter(|&&p| p == 0).count();
        assert!((1..5).contains(&share), "{first:?}");
        wrr.succeeded(0);
        // After enough picks both are back to equal shares.
        for _ in 0..40 {
            wrr.pick(Tried::default(), t1);
        }
        let even: Vec<usize> = (0..20)
            .map(|_| wrr.pick(Tried::default(), t1).unwrap())
            .collect();
        assert_eq!(even.iter().filter(|&&p| p == 0).count(), 10, "{even:?}");
    }
}
