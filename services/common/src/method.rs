//! The HTTP methods a postback may be delivered with.

use std::fmt;
use std::str::FromStr;

/// An HTTP method that deliver knows how to send.
///
/// GET and DELETE carry no body; POST, PUT and PATCH carry the postback's data
/// as a JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`: no body, the data travels in the URL only.
    Get,
    /// `POST`: the data object as a JSON body.
    Post,
    /// `PUT`: the data object as a JSON body.
    Put,
    /// `PATCH`: the data object as a JSON body.
    Patch,
    /// `DELETE`: no body.
    Delete,
}

/// Every supported method, in the order they are listed to users.
pub const SUPPORTED: [Method; 5] = [Method::Get, Method::Post, Method::Put, Method::Patch, Method::Delete];

impl Method {
    /// The canonical upper-case name, as sent on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// Whether a request with this method carries the data as a JSON body.
    pub const fn has_body(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The method name was not one of [`SUPPORTED`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unsupported method {0:?}; expected one of GET, POST, PUT, PATCH, DELETE")]
pub struct UnsupportedMethod(pub String);

impl FromStr for Method {
    type Err = UnsupportedMethod;

    /// Parses a method name case-insensitively (`get`, `Get` and `GET` alike).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SUPPORTED
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnsupportedMethod(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_case_insensitively() {
        assert_eq!("get".parse(), Ok(Method::Get));
        assert_eq!("Post".parse(), Ok(Method::Post));
        assert_eq!("PATCH".parse(), Ok(Method::Patch));
    }

    #[test]
    fn refuses_unknown_and_padded_names() {
        assert!("CONNECT".parse::<Method>().is_err());
        assert!(" GET".parse::<Method>().is_err());
        assert!("".parse::<Method>().is_err());
    }

    #[test]
    fn only_write_methods_carry_a_body() {
        let with_body: Vec<_> = SUPPORTED.into_iter().filter(|m| m.has_body()).collect();
        assert_eq!(with_body, [Method::Post, Method::Put, Method::Patch]);
    }
}
