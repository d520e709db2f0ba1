//! The finish script (`lua/finish.lua`), the only way anything held by a
//! worker leaves its hands: postbacks delivered, scheduled again or
//! dead-lettered, each recorded in its entry so that it happens once, and
//! entries removed with their last postback. The script's header states the
//! rules; `schemas/wire-format.md` the keys it keeps.

use bytes::Bytes;
use fred::prelude::*;
use postback_common::keys::Keys;
use postback_common::records::dead_letter::DeadLetter;
use postback_common::records::request::EndpointRef;
use postback_common::records::stream_entry::StreamEntry;
use postback_common::redis::id_order;
use postback_common::script::Script;
use uuid::Uuid;

/// A stream entry this worker holds, as the script needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    /// Its stream entry id.
    pub(crate) id: String,
    /// Postbacks in it (1 for a single postback, or for an entry that is
    /// not one).
    pub(crate) postbacks: usize,
    /// The endpoint record it refers to (versions 3 and 5).
    pub(crate) endpoint: Option<EndpointRef>,
    /// The id its postbacks' ids count from (versions 3 and 5), which a
    /// version 5 value of some of them keeps.
    pub(crate) first_id: Option<Uuid>,
}

/// Which postbacks of an entry a step finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Position {
    /// The postback at this index (from 0).
    At(usize),
    /// All of them: the entry as a whole.
    Whole,
}

/// What happens to the postbacks of an operation.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Delivered: nothing to keep.
    Delivered,
    /// Scheduled again: one entry of the schedule's level of `delay_ms`
    /// (a delay of [`postback_common::records::schedule::LADDER`]) with
    /// these fields, holding `postbacks` postbacks and referring to
    /// `endpoint`.
    Scheduled {
        /// The level.
        delay_ms: u64,
        /// How much later than now the level entry's id is set, so that it
        /// is due that much after its level's delay (0: now).
        later_ms: u64,
        /// The level entry's fields (those of the stream entry it becomes).
        entry: StreamEntry,
        /// Postbacks it holds.
        postbacks: usize,
        /// The record its value refers to, if any.
        endpoint: Option<EndpointRef>,
    },
    /// Appended to the dead-letter stream; `endpoint` is the record its
    /// payload refers to, when that is a reference of its own (a letter of
    /// a whole entry keeps the entry's).
    Dead {
        /// The letter.
        letter: DeadLetter,
        /// The record its payload refers to.
        endpoint: Option<EndpointRef>,
    },
}

/// One step for some postbacks of an entry.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    /// Which: positions, or [`Position::Whole`] alone.
    pub(crate) positions: Vec<Position>,
    /// What happens to them.
    pub(crate) step: Step,
}

impl Op {
    /// `step` for the postback at `position`.
    pub(crate) fn one(position: Position, step: Step) -> Self {
        Self { positions: vec![position], step }
    }
}

/// What a call did besides its steps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Entries removed from the stream (their last postback finished).
    pub(crate) deleted: u64,
    /// Entries left alone: another worker took them over meanwhile.
    pub(crate) taken: Vec<String>,
    /// Entries left alone: no longer pending at all (finished already, or
    /// deleted).
    pub(crate) gone: Vec<String>,
    /// Entries finished although no consumer held them: Redis had lost
    /// their read (a failover), and this call finished all their postbacks.
    pub(crate) forgotten: Vec<String>,
}

/// Runs the finish script for one consumer.
pub(crate) struct Ledger {
    redis: Client,
    keys: Keys,
    consumer: String,
    script: Script,
}

impl Ledger {
    /// The ledger of `consumer` on the command client.
    /// Reconnects of the client the script runs on.
    pub(crate) fn reconnects(&self) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
        self.redis.reconnect_rx()
    }

    pub(crate) fn new(redis: Client, keys: Keys, consumer: String) -> Self {
        Self { redis, keys, consumer, script: Script::new(include_str!("lua/finish.lua")) }
    }

    /// Records `ops` for the entries they belong to, in one call.
    pub(crate) async fn record<'a, I>(&self, ops: I) -> Result<Recorded, Error>
    where
        I: IntoIterator<Item = (&'a Held, Vec<Op>)>,
    {
        let ops: Vec<_> = ops.into_iter().collect();
        let order = |(entry, _): &&(&Held, _)| id_order(&entry.id);
        let (Some(low), Some(high)) = (ops.iter().min_by_key(order), ops.iter().max_by_key(order)) else {
            return Ok(Recorded::default());
        };
        let mut args: Vec<Value> = vec![
            self.keys.group.as_str().into(),
            self.consumer.as_str().into(),
            low.0.id.as_str().into(),
            high.0.id.as_str().into(),
            (ops.len() as i64).into(),
        ];
        let address =
            |endpoint: Option<EndpointRef>| -> Value { endpoint.map_or_else(String::new, |e| e.to_string()).into() };
        for (entry, ops) in ops {
            args.push(entry.id.as_str().into());
            args.push((entry.postbacks as i64).into());
            args.push(address(entry.endpoint));
            args.push((ops.len() as i64).into());
            for op in ops {
                let positions: Vec<u8> = if op.positions.contains(&Position::Whole) {
                    Vec::new()
                } else {
                    op.positions
                        .iter()
                        .filter_map(|p| match p {
                            Position::At(i) => u8::try_from(*i).ok(),
                            Position::Whole => None,
                        })
                        .collect()
                };
                args.push(Value::Bytes(positions.into()));
                let fields = |args: &mut Vec<Value>, fields: Vec<(&'static str, Bytes)>| {
                    args.push((2 * fields.len() as i64).into());
                    for (name, value) in fields {
                        args.push(name.into());
                        args.push(Value::Bytes(value));
                    }
                };
                match op.step {
                    Step::Delivered => args.push("a".into()),
                    Step::Scheduled { delay_ms, later_ms, entry, postbacks, endpoint } => {
                        args.push("r".into());
                        args.push((delay_ms as i64).into());
                        args.push((later_ms as i64).into());
                        args.push((postbacks as i64).into());
                        args.push(address(endpoint));
                        fields(&mut args, entry.fields());
                    }
                    Step::Dead { letter, endpoint } => {
                        args.push("d".into());
                        args.push(address(endpoint));
                        fields(&mut args, letter.fields());
                    }
                }
            }
        }
        let keys = &self.keys;
        let script_keys = [
            keys.stream.as_str(),
            &keys.schedule,
            &keys.dead,
            &keys.endpoints,
            &keys.endpoint_refs,
            &keys.batched,
            &keys.finished,
            &keys.scheduled,
        ];
        let (deleted, taken, gone, forgotten): (u64, Vec<String>, Vec<String>, Vec<String>) =
            self.script.call(&self.redis, &script_keys, args).await?;
        Ok(Recorded { deleted, taken, gone, forgotten })
    }
}

#[cfg(test)]
mod tests {
    use postback_testkit::RedisServer;

    use super::*;

    /// A redis-server of the test's own, and a client of it.
    struct Setup {
        redis: RedisServer,
        client: Client,
    }

    impl Setup {
        async fn start() -> Self {
            let redis = RedisServer::start();
            let client = redis.client().await;
            Self { redis, client }
        }

        /// Queues one request of `items` postbacks through ingest's own
        /// code, lets consumer `w` take it, and returns it as held.
        async fn held(&self, items: usize) -> Held {
            let client = &self.client;
            let mut config = postback_ingest::Config::defaults();
            config.redis.redis_url = self.redis.url();
            let layout = postback_common::layout::Layout::seed("postbacks", 1, false);
            let views = postback_ingest::partitions::Views::fixed(layout, "postbacks");
            let state = postback_ingest::state::AppState::new(client.clone(), config, views);
            let data: Vec<_> = (0..items).map(|i| serde_json::json!({"i": i})).collect();
            let body = serde_json::json!({"endpoint": {"method": "GET", "url": "http://h.example/{i}"}, "data": data});
            let mut buf = body.to_string().into_bytes();
            let parsed = postback_ingest::json::parse(&mut buf).expect("json");
            let postbacks =
                postback_ingest::request::postbacks(&parsed, postback_common::time::now_ms(), &Default::default())
                    .expect("valid");
            let keys = postback_common::keys::Keys::default();
            let target = postback_ingest::enqueue::Target { keys: &keys, earlier: &[], epoch: 1 };
            state.enqueuer.enqueue(client, target, &postbacks, None).await.expect("enqueue");
            // BUSYGROUP from the second entry on.
            let _: Result<(), _> = client.xgroup_create("postbacks", "deliver", "0", true).await;
            let reply: Value =
                client.xreadgroup("deliver", "w", Some(1), None, false, "postbacks", ">").await.expect("read");
            let entry = crate::reply::from_reply(reply).pop().expect("an entry");
            let (endpoint, first_id) =
                match postback_common::records::postback::decode_entry(entry.payload.as_deref().expect("p")) {
                    Ok(postback_common::records::postback::Decoded::Request(request)) => {
                        (Some(request.endpoint), Some(request.first_id))
                    }
                    _ => (None, None),
                };
            Held { id: entry.id, postbacks: items, endpoint, first_id }
        }

        /// The ledger of `consumer`.
        fn ledger(&self, consumer: &str) -> Ledger {
            Ledger::new(self.client.clone(), Keys::default(), consumer.into())
        }
    }

    fn retry() -> Step {
        let entry = StreamEntry::again(Bytes::from_static(b"x"), 1, None);
        Step::Scheduled { delay_ms: 60_000, later_ms: 0, entry, postbacks: 1, endpoint: None }
    }

    fn dead() -> Step {
        let letter = DeadLetter {
            category: postback_common::records::dead_letter::Category::Rejected,
            reason: "rejected: HTTP 404".into(),
            postback_id: None,
            attempts: 1,
            first_attempt_ms: None,
            last_attempt_ms: None,
            last_status: Some(404),
            last_error: None,
            entry_id: "0-1".into(),
            payload: Some(Bytes::from_static(b"x")),
        };
        Step::Dead { letter, endpoint: None }
    }

    async fn numbers(client: &Client) -> (u64, u64, u64, Option<i64>) {
        let len: u64 = client.xlen("postbacks").await.expect("XLEN");
        let dead: u64 = client.xlen("postbacks:dead").await.expect("XLEN");
        let scheduled: Option<u64> = client.get("postbacks:scheduled").await.expect("GET");
        let scheduled = scheduled.unwrap_or(0);
        let batched: Option<i64> = client.get("postbacks:batched").await.expect("GET");
        (len, dead, scheduled, batched)
    }

    #[tokio::test]
    async fn each_postback_is_finished_once_and_the_entry_with_the_last() {
        let setup = Setup::start().await;
        let Setup { redis, client } = &setup;
        let entry = setup.held(4).await;
        let ledger = setup.ledger("w");
        let one = |position, step| ledger.record([(&entry, vec![Op::one(Position::At(position), step)])]);
        assert_eq!(numbers(client).await, (1, 0, 0, Some(3)));

        one(0, Step::Delivered).await.expect("record");
        assert_eq!(numbers(client).await, (1, 0, 0, Some(2)));
        let bits: Bytes = client.hget("postbacks:finished", &entry.id).await.expect("HGET");
        assert_eq!(
            postback_common::records::finished::FinishedPositions::from_bytes(&bits).flags(4),
            [true, false, false, false]
        );
        redis.assert_counts_exact().await;

        // Every step again, as after a reply lost on the way back: nothing more.
        for _ in 0..2 {
            one(0, Step::Delivered).await.expect("record");
            one(1, retry()).await.expect("record");
            one(2, dead()).await.expect("record");
            assert_eq!(numbers(client).await, (1, 1, 1, None));
            redis.assert_counts_exact().await;
        }

        let recorded = one(3, Step::Delivered).await.expect("record");
        assert_eq!(recorded, Recorded { deleted: 1, ..Recorded::default() });
        assert_eq!(numbers(client).await, (0, 1, 1, None));
        redis.assert_no_records_left().await;
        let again = one(3, Step::Delivered).await.expect("record");
        assert_eq!(again.gone, std::slice::from_ref(&entry.id), "finished already");
        assert_eq!(numbers(client).await, (0, 1, 1, None));
    }

    #[tokio::test]
    async fn a_worker_that_no_longer_holds_an_entry_changes_nothing() {
        let setup = Setup::start().await;
        let Setup { redis, client } = &setup;
        let entry = setup.held(3).await;
        let other = setup.ledger("other");
        for step in [Step::Delivered, retry(), dead()] {
            let recorded = other.record([(&entry, vec![Op::one(Position::At(0), step)])]).await.expect("record");
            assert_eq!(recorded.taken, std::slice::from_ref(&entry.id));
        }
        let whole = other.record([(&entry, vec![Op::one(Position::Whole, dead())])]).await.expect("record");
        assert_eq!(whole.taken, std::slice::from_ref(&entry.id));
        assert_eq!(numbers(client).await, (1, 0, 0, Some(2)));
        let bits: Option<Bytes> = client.hget("postbacks:finished", &entry.id).await.expect("HGET");
        assert_eq!(bits, None);
        redis.assert_counts_exact().await;
    }

    /// A read Redis lost (a failover to a replica that had not received
    /// it): the entry is in the stream, no consumer holds it. Steps that
    /// would leave it part finished change nothing; the steps that finish
    /// all of its postbacks are recorded, and it leaves the stream.
    #[tokio::test]
    async fn an_entry_whose_read_was_lost_is_finished_by_steps_that_finish_it_all() {
        let setup = Setup::start().await;
        let Setup { redis, client } = &setup;
        let entry = setup.held(3).await;
        let _: i64 = client.xack("postbacks", "deliver", entry.id.as_str()).await.expect("XACK");
        let ledger = setup.ledger("w");
        let part = ledger.record([(&entry, vec![Op::one(Position::At(0), Step::Delivered)])]).await.expect("record");
        assert_eq!(part.gone, std::slice::from_ref(&entry.id), "part finished: left alone");
        assert_eq!(numbers(client).await, (1, 0, 0, Some(2)));
        let ops = vec![
            Op::one(Position::At(0), Step::Delivered),
            Op::one(Position::At(1), retry()),
            Op::one(Position::At(2), dead()),
        ];
        let all = ledger.record([(&entry, ops)]).await.expect("record");
        assert_eq!(all, Recorded { deleted: 1, forgotten: vec![entry.id.clone()], ..Recorded::default() });
        assert_eq!(numbers(client).await, (0, 1, 1, None));
        redis.assert_counts_exact().await;
        // Held by another consumer: that one's.
        let other = setup.held(1).await;
        let _: Value = client
            .xclaim("postbacks", "deliver", "x", 0, other.id.as_str(), None, None, None, false, true)
            .await
            .expect("XCLAIM");
        let step = vec![Op::one(Position::At(0), Step::Delivered)];
        let taken = ledger.record([(&other, step)]).await.expect("record");
        assert_eq!(taken.taken, std::slice::from_ref(&other.id));
    }

    #[tokio::test]
    async fn an_entry_dead_lettered_whole_keeps_its_record_for_the_letter() {
        let setup = Setup::start().await;
        let client = &setup.client;
        let entry = setup.held(5).await;
        let ledger = setup.ledger("w");
        ledger.record([(&entry, vec![Op::one(Position::At(4), Step::Delivered)])]).await.expect("record");
        let whole = Step::Dead {
            letter: match dead() {
                Step::Dead { letter, .. } => letter,
                _ => unreachable!(),
            },
            endpoint: entry.endpoint,
        };
        let recorded = ledger.record([(&entry, vec![Op::one(Position::Whole, whole)])]).await.expect("record");
        assert_eq!(recorded.deleted, 1);
        assert_eq!(numbers(client).await, (0, 1, 0, None));
        let refs: Option<i64> =
            client.hget("postbacks:endpoints:refs", entry.endpoint.expect("v3").to_string()).await.expect("HGET");
        assert_eq!(refs, Some(1));
        let finished: u64 = client.hlen("postbacks:finished").await.expect("HLEN");
        assert_eq!(finished, 0);
    }

    #[tokio::test]
    async fn after_flushall_nothing_is_held_and_nothing_is_written() {
        let setup = Setup::start().await;
        let client = &setup.client;
        let entry = setup.held(2).await;
        let _: () = client.flushall(false).await.expect("FLUSHALL");
        let ledger = setup.ledger("w");
        for step in [Step::Delivered, retry(), dead()] {
            let recorded = ledger.record([(&entry, vec![Op::one(Position::At(0), step)])]).await.expect("record");
            assert_eq!(recorded.gone, std::slice::from_ref(&entry.id));
        }
        let keys: u64 = client.dbsize().await.expect("DBSIZE");
        assert_eq!(keys, 0, "no key was created");
    }

    #[tokio::test]
    async fn many_entries_are_recorded_in_one_call_whoever_else_holds_some() {
        let setup = Setup::start().await;
        let Setup { redis, client } = &setup;
        let a = setup.held(2).await;
        let b = setup.held(1).await;
        // A third entry between them, held by another worker.
        let c = setup.held(1).await;
        let _: Value = client
            .xclaim("postbacks", "deliver", "other", 0, c.id.as_str(), None, None, None, false, true)
            .await
            .expect("XCLAIM");
        let ledger = setup.ledger("w");
        let delivered = |entry| (entry, vec![Op::one(Position::At(0), Step::Delivered)]);
        let recorded = ledger.record([delivered(&a), delivered(&c), delivered(&b)]).await.expect("record");
        assert_eq!(recorded, Recorded { deleted: 1, taken: vec![c.id.clone()], ..Recorded::default() });
        assert_eq!(numbers(client).await.0, 2, "a (one postback left) and c stay");
        redis.assert_counts_exact().await;
    }

    #[tokio::test]
    async fn ownership_is_found_past_pages_of_other_entries_held() {
        let setup = Setup::start().await;
        let redis = &setup.redis;
        let mut held = Vec::new();
        for _ in 0..150 {
            held.push(setup.held(1).await);
        }
        let ledger = setup.ledger("w");
        let (first, last) = (&held[0], &held[149]);
        let steps = [first, last].map(|entry| (entry, vec![Op::one(Position::At(0), Step::Delivered)]));
        let recorded = ledger.record(steps).await.expect("record");
        assert_eq!(recorded, Recorded { deleted: 2, ..Recorded::default() }, "148 held entries lie between them");
        redis.assert_counts_exact().await;
    }
}
