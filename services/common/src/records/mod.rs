//! Every value that more than one process or script reads or writes, each
//! owned by one type: the services, `postbackctl`, the test kit and the
//! tests build and read them only through these, and each Lua script that
//! touches one names, in its header, the type whose layout it mirrors.
//! `schemas/wire-format.md` gives the bytes and the keys.
//!
//! | record | type | key |
//! | --- | --- | --- |
//! | a stream entry's fields (`p`, `a`, `f`) | [`stream_entry::StreamEntry`] | `<stream>`, and the schedule's levels |
//! | a single postback (wire versions 1, 2, 4) | [`postback::Postback`] | field `p` |
//! | a request's postbacks (version 3) | [`request::RequestEntry`] | field `p` |
//! | postbacks of an entry attempted again (version 5) | [`retried::RetriedEntry`] | field `p` |
//! | endpoint record | [`endpoint::Endpoint`] | `<stream>:endpoints`, counted in `<stream>:endpoints:refs` |
//! | finished positions | [`finished::FinishedPositions`] | `<stream>:finished` |
//! | the retry schedule: levels, index, count | [`schedule`] | `<stream>:schedule`, `<stream>:schedule:@<ms>`, `<stream>:scheduled` (and the old `<stream>:retry`) |
//! | dead letter | [`dead_letter::DeadLetter`] | `<stream>:dead` |
//! | delivery-log entry | [`log_entry::LogEntry`] | `<stream>:log` |
//! | a host's circuit breaker | [`crate::breaker`] | `<stream>:breaker:<host:port>`, `<stream>:breaker:open` |
//! | a rate budget (a caller's, a host's) | [`crate::gcra`] | `<stream>:rate:…`, `<stream>:hostrate:…` |

pub mod dead_letter;
pub mod endpoint;
pub mod finished;
pub mod log_entry;
pub mod postback;
pub mod request;
pub mod retried;
pub mod schedule;
pub mod stream_entry;
