//! The inbound barrier of one partition, as a pure state machine.
//!
//! A CRM reply and the customer message it answers travel on different topics
//! (`wa.outbound.requested.v1` and `wa.inbound.v1`), so the consumer may read the reply first.
//! A request is therefore decided only once the partition's inbound records have been applied
//! up to the high watermark the broker reported *after the request was received*: whatever the
//! customer wrote before the agent answered is then in the session state.
//!
//! The barrier owns no IO. The projector tells it what happened (a request received, an inbound
//! record applied, a watermark query answered) and asks it what to do next ([`Barrier::next`]):
//! release the oldest request, send a watermark query, or wait. One query serves every request
//! received before it was sent; requests are released in the order they were received.

use std::collections::VecDeque;

/// What the projector should do for this partition now.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next<T> {
    /// Decide this request: every inbound record it may depend on is applied.
    Release(T),
    /// Ask the broker for the inbound high watermark, and report the answer with
    /// [`Barrier::answered`] and this sequence number.
    Query {
        /// The receive sequence number at the time the query is sent.
        seq: u64,
    },
    /// Nothing to do until an inbound record is applied or a query is answered.
    Wait,
}

/// Requests waiting for one partition's inbound records to be applied.
#[derive(Debug)]
pub(crate) struct Barrier<T> {
    /// The next inbound offset to apply: every record before it is in the state.
    applied: i64,
    /// Requests in the order received, with their receive sequence number.
    waiting: VecDeque<(u64, T)>,
    /// The latest answered query: (sequence number when it was sent, high watermark).
    confirmed: Option<(u64, i64)>,
    /// A query is out.
    querying: bool,
}

impl<T> Barrier<T> {
    /// A barrier whose partition has been applied up to (not including) `applied`.
    pub(crate) fn new(applied: i64) -> Self {
        Self { applied, waiting: VecDeque::new(), confirmed: None, querying: false }
    }

    /// A request received as the `seq`-th record (sequence numbers grow with every record the
    /// consumer receives, of any topic).
    pub(crate) fn push(&mut self, seq: u64, request: T) {
        self.waiting.push_back((seq, request));
    }

    /// The inbound record at `offset` has been applied.
    pub(crate) fn applied(&mut self, offset: i64) {
        self.applied = self.applied.max(offset + 1);
    }

    /// The query sent at `seq` was answered: the high watermark, or `None` when it failed (the
    /// next call to [`Barrier::next`] asks again).
    pub(crate) fn answered(&mut self, seq: u64, high_watermark: Option<i64>) {
        self.querying = false;
        if let Some(high) = high_watermark {
            // A late answer to an older query never replaces a newer one.
            if self.confirmed.is_none_or(|(confirmed, _)| confirmed <= seq) {
                self.confirmed = Some((seq, high));
            }
        }
    }

    /// What to do now, `seq` being the receive sequence number of the latest record.
    pub(crate) fn next(&mut self, seq: u64) -> Next<T> {
        let Some((front, _)) = self.waiting.front() else { return Next::Wait };
        match self.confirmed {
            // The watermark was asked for after this request was received.
            Some((asked_at, high)) if *front <= asked_at => {
                if self.applied < high {
                    return Next::Wait;
                }
            }
            _ if self.querying => return Next::Wait,
            _ => {
                self.querying = true;
                return Next::Query { seq };
            }
        }
        let (_, request) = self.waiting.pop_front().expect("a front");
        Next::Release(request)
    }

    /// The requests still waiting, oldest first.
    pub(crate) fn waiting(&self) -> impl Iterator<Item = &T> {
        self.waiting.iter().map(|(_, request)| request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_waits_for_the_inbound_records_before_it() {
        let mut barrier = Barrier::new(0);
        barrier.push(1, "reply");
        assert_eq!(barrier.next(1), Next::Query { seq: 1 });
        assert_eq!(barrier.next(1), Next::Wait, "one query at a time");
        barrier.answered(1, Some(3));
        assert_eq!(barrier.next(1), Next::Wait, "offsets 0..3 are not applied yet");
        barrier.applied(0);
        barrier.applied(1);
        assert_eq!(barrier.next(3), Next::Wait);
        barrier.applied(2);
        assert_eq!(barrier.next(4), Next::Release("reply"));
        assert_eq!(barrier.next(4), Next::Wait);
    }

    #[test]
    fn a_query_sent_before_a_request_arrived_does_not_release_it() {
        let mut barrier = Barrier::new(0);
        barrier.push(1, "first");
        assert_eq!(barrier.next(1), Next::Query { seq: 1 });
        barrier.push(2, "second");
        barrier.answered(1, Some(0));
        assert_eq!(barrier.next(2), Next::Release("first"));
        assert_eq!(barrier.next(2), Next::Query { seq: 2 }, "second arrived after the query");
        barrier.answered(2, Some(0));
        assert_eq!(barrier.next(2), Next::Release("second"));
    }

    #[test]
    fn a_failed_query_is_asked_again() {
        let mut barrier = Barrier::new(5);
        barrier.push(7, ());
        assert_eq!(barrier.next(7), Next::Query { seq: 7 });
        barrier.answered(7, None);
        assert_eq!(barrier.next(8), Next::Query { seq: 8 });
        barrier.answered(8, Some(5));
        assert_eq!(barrier.next(8), Next::Release(()));
    }

    /// What happens to one partition, in a random order.
    #[derive(Debug, Clone)]
    enum Step {
        /// A customer message is appended to the inbound partition.
        CustomerWrites,
        /// The consumer receives the next inbound record (if any is unread) and applies it.
        ConsumerReadsInbound,
        /// The consumer receives a request (produced after everything appended so far).
        RequestArrives,
        /// The broker answers the query that is out, with the high watermark at the time it
        /// was sent or any later one; or the query fails.
        BrokerAnswers { later: bool, fails: bool },
        /// The projector asks the barrier what to do.
        Drive,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => Just(Step::CustomerWrites),
            3 => Just(Step::ConsumerReadsInbound),
            2 => Just(Step::RequestArrives),
            2 => (any::<bool>(), prop::bool::weighted(0.1))
                .prop_map(|(later, fails)| Step::BrokerAnswers { later, fails }),
            4 => Just(Step::Drive),
        ]
    }

    /// A model of the partition and the broker around one barrier.
    struct World {
        barrier: Barrier<usize>,
        /// High watermark of the inbound partition (records appended).
        high: i64,
        /// Inbound records received and applied by the consumer.
        read: i64,
        /// Receive sequence number of the latest record.
        seq: u64,
        /// Per request (by index): the high watermark when it arrived.
        high_at_arrival: Vec<i64>,
        /// The query that is out: (seq it was sent at, high watermark then).
        query: Option<(u64, i64)>,
        released: Vec<usize>,
    }

    impl World {
        fn drive(&mut self) {
            loop {
                match self.barrier.next(self.seq) {
                    Next::Release(request) => {
                        assert!(
                            self.read >= self.high_at_arrival[request],
                            "request {request} released with inbound applied to {} but {} records were written before it",
                            self.read,
                            self.high_at_arrival[request]
                        );
                        self.released.push(request);
                    }
                    Next::Query { seq } => {
                        assert!(self.query.is_none(), "a second query while one is out");
                        self.query = Some((seq, self.high));
                    }
                    Next::Wait => return,
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever the interleaving: no request is released before every customer message
        /// written before it is applied, requests are released in order, none twice, and once
        /// the consumer has caught up and the broker answers, every request is released.
        #[test]
        fn requests_see_every_message_written_before_them(steps in prop::collection::vec(step(), 0..200)) {
            let mut world = World {
                barrier: Barrier::new(0),
                high: 0,
                read: 0,
                seq: 0,
                high_at_arrival: Vec::new(),
                query: None,
                released: Vec::new(),
            };
            for step in steps {
                match step {
                    Step::CustomerWrites => world.high += 1,
                    Step::ConsumerReadsInbound => {
                        if world.read < world.high {
                            world.seq += 1;
                            world.barrier.applied(world.read);
                            world.read += 1;
                            world.drive();
                        }
                    }
                    Step::RequestArrives => {
                        world.seq += 1;
                        let request = world.high_at_arrival.len();
                        world.high_at_arrival.push(world.high);
                        world.barrier.push(world.seq, request);
                        world.drive();
                    }
                    Step::BrokerAnswers { later, fails } => {
                        if let Some((seq, high_then)) = world.query.take() {
                            let answer = if later { world.high } else { high_then };
                            world.barrier.answered(seq, (!fails).then_some(answer));
                            world.drive();
                        }
                    }
                    Step::Drive => world.drive(),
                }
            }
            // The consumer catches up and the broker answers every query.
            while world.read < world.high {
                world.seq += 1;
                world.barrier.applied(world.read);
                world.read += 1;
            }
            world.drive();
            for _ in 0..=world.high_at_arrival.len() {
                if let Some((seq, _)) = world.query.take() {
                    world.barrier.answered(seq, Some(world.high));
                }
                world.drive();
            }
            let expected: Vec<usize> = (0..world.high_at_arrival.len()).collect();
            prop_assert_eq!(world.released, expected);
            prop_assert_eq!(world.barrier.waiting().count(), 0);
        }
    }
}
