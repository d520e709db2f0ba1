//! Every value that more than one process or script reads or writes, each
//! owned by one type: the services, `postbackctl`, the test kit and the
//! tests build and read them only through these, and each Lua script that
//! touches one names, in its header, the type whose layout it mirrors.
//! `schemas/wire-format.md` gives the bytes and the keys.
//!
//! | record | type | key |
//! | --- | --- | --- |
//! | a single postback (wire versions 1, 2, 4) | [`postback::Postback`] | field `p` of a stream entry |
//! | a request's postbacks (version 3) | [`request::RequestEntry`] | field `p` of a stream entry |
//! | endpoint record | [`endpoint::Endpoint`] | `<stream>:endpoints` |
//! | finished positions | [`finished::FinishedPositions`] | `<stream>:finished` |
//! | dead letter | [`dead_letter::DeadLetter`] | `<stream>:dead` |

pub mod dead_letter;
pub mod endpoint;
pub mod finished;
pub mod postback;
pub mod request;
