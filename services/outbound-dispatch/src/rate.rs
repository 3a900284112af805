//! Sending rates: a pacing token bucket per sender and one for the account. A send reserves the
//! next free slot of both and waits for it, so a sender never exceeds its rate, not even in a
//! burst. Throttling from Twilio's API (429, 20429) halves the sender's rate (WhatsApp's 63018,
//! often about one recipient, retries that send only); each send that
//! goes through wins back a step, up to the configured rate (additive increase, multiplicative
//! decrease).
//!
//! Several dispatch instances share a sender's conversations (they are spread over every
//! partition), so each instance paces at `rate / instances` (`DISPATCH_INSTANCES`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Rates per second.
#[derive(Debug, Clone)]
pub struct Rates {
    /// Per sender unless overridden.
    pub per_sender: f64,
    /// Overrides by sender address.
    pub senders: HashMap<String, f64>,
    /// For the whole account; 0 for none.
    pub account: f64,
}

impl Rates {
    /// Parses `whatsapp:+14155238886=20,whatsapp:+14155238887=200`.
    pub fn parse_overrides(text: &str) -> Result<HashMap<String, f64>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| {
                let (sender, rate) = item.rsplit_once('=').ok_or_else(|| format!("{item:?} is not sender=rate"))?;
                let rate: f64 = rate.trim().parse().map_err(|_| format!("{rate:?} is not a rate"))?;
                let sender = wa_schemas::WhatsAppAddress::parse(sender)
                    .map(String::from)
                    .map_err(|error| format!("{sender:?} is not a WhatsApp address: {error}"))?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err(format!("the rate of {sender} must be a positive number"));
                }
                Ok((sender, rate))
            })
            .collect()
    }

    /// The same rates divided among `instances` dispatch instances.
    pub fn per_instance(&self, instances: u32) -> Self {
        let share = f64::from(instances.max(1));
        Self {
            per_sender: self.per_sender / share,
            senders: self.senders.iter().map(|(sender, rate)| (sender.clone(), rate / share)).collect(),
            account: self.account / share,
        }
    }
}

#[derive(Debug)]
struct Pace {
    configured: f64,
    current: f64,
    next_free: Instant,
}

impl Pace {
    fn new(rate: f64, now: Instant) -> Self {
        Self { configured: rate, current: rate, next_free: now }
    }

    fn interval(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.current)
    }
}

/// The buckets of one dispatch instance.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rates: Rates,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    senders: HashMap<String, Pace>,
    account: Option<Pace>,
}

impl RateLimiter {
    pub(crate) fn new(rates: Rates) -> Self {
        let account = (rates.account > 0.0).then(|| Pace::new(rates.account, Instant::now()));
        Self { rates, inner: Mutex::new(Inner { senders: HashMap::new(), account }) }
    }

    /// Reserves the next slot for `sender` (and the account) and returns when it comes.
    pub(crate) fn reserve(&self, sender: &str, now: Instant) -> Instant {
        let mut inner = self.inner.lock().expect("rate lock");
        let rate = self.rates.senders.get(sender).copied().unwrap_or(self.rates.per_sender);
        let Inner { senders, account } = &mut *inner;
        let pace = senders.entry(sender.to_owned()).or_insert_with(|| Pace::new(rate, now));
        let mut slot = pace.next_free.max(now);
        if let Some(account) = account.as_ref() {
            slot = slot.max(account.next_free);
        }
        pace.next_free = slot + pace.interval();
        if let Some(account) = account.as_mut() {
            account.next_free = slot + account.interval();
        }
        slot
    }

    /// Waits for the next slot of `sender`.
    pub(crate) async fn acquire(&self, sender: &str) {
        let slot = self.reserve(sender, Instant::now());
        tokio::time::sleep_until(slot).await;
    }

    /// Twilio said slow down: halve `sender`'s pace (at least 1 per second).
    pub(crate) fn throttled(&self, sender: &str) {
        let mut inner = self.inner.lock().expect("rate lock");
        if let Some(pace) = inner.senders.get_mut(sender) {
            pace.current = (pace.current / 2.0).max(1.0_f64.min(pace.configured));
            metrics::gauge!(wa_platform::metrics::DISPATCH_SENDER_RATE, "sender" => sender.to_owned())
                .set(pace.current);
        }
    }

    /// A send went through: win back a twentieth of the configured rate.
    pub(crate) fn succeeded(&self, sender: &str) {
        let mut inner = self.inner.lock().expect("rate lock");
        if let Some(pace) = inner.senders.get_mut(sender) {
            if pace.current < pace.configured {
                pace.current = (pace.current + pace.configured / 20.0).min(pace.configured);
                metrics::gauge!(wa_platform::metrics::DISPATCH_SENDER_RATE, "sender" => sender.to_owned())
                    .set(pace.current);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sender: f64, account: f64) -> RateLimiter {
        RateLimiter::new(Rates { per_sender, senders: HashMap::new(), account })
    }

    #[test]
    fn slots_are_paced_per_sender_and_never_closer_than_the_rate() {
        let limiter = limiter(80.0, 0.0);
        let start = Instant::now();
        let slots: Vec<Instant> = (0..160).map(|_| limiter.reserve("a", start)).collect();
        assert!(slots.windows(2).all(|w| w[1] - w[0] >= Duration::from_secs_f64(1.0 / 80.0) - Duration::from_nanos(1)));
        // 160 messages at 80/s take two seconds, whatever the burst.
        assert!(slots[159] - start >= Duration::from_millis(1987));
        assert_eq!(limiter.reserve("b", start), start, "another sender has its own bucket");
    }

    #[test]
    fn the_account_bucket_bounds_all_senders_together() {
        let limiter = limiter(80.0, 100.0);
        let start = Instant::now();
        let last = (0..200).map(|i| limiter.reserve(if i % 2 == 0 { "a" } else { "b" }, start)).last().unwrap();
        assert!(last - start >= Duration::from_millis(1980), "200 at 100/s: {:?}", last - start);
    }

    #[test]
    fn throttling_halves_the_pace_and_success_wins_it_back() {
        let limiter = limiter(80.0, 0.0);
        let start = Instant::now();
        limiter.reserve("a", start);
        limiter.throttled("a");
        limiter.throttled("a");
        let pace = |l: &RateLimiter| l.inner.lock().unwrap().senders["a"].current;
        assert_eq!(pace(&limiter), 20.0);
        for _ in 0..100 {
            limiter.succeeded("a");
        }
        assert_eq!(pace(&limiter), 80.0);
    }

    #[test]
    fn overrides_parse_and_divide_among_instances() {
        let senders = Rates::parse_overrides("whatsapp:+1 415 523 8886=20, +14155238887=200").unwrap();
        assert_eq!(senders["whatsapp:+14155238886"], 20.0);
        let rates = Rates { per_sender: 80.0, senders, account: 0.0 }.per_instance(4);
        assert_eq!(rates.per_sender, 20.0);
        assert_eq!(rates.senders["whatsapp:+14155238887"], 50.0);
        assert!(Rates::parse_overrides("whatsapp:+1=0").is_err());
        assert!(Rates::parse_overrides("nonsense").is_err());
        assert!(Rates::parse_overrides("whatsapp:+14155238886=NaN").is_err());
    }
}
