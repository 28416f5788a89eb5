//! Errors that keep their source: a kind that says what failed (and, where it helps, with
//! what), and the boxed error that caused it, in the manner of async-nats' `Error<Kind>`.
//!
//! `Display` shows the kind, then the source's message (`cannot connect to NATS at
//! nats://…: connection refused`), so logs read as before; `source()` hands the cause on
//! to whoever wants to walk or downcast it.

use std::fmt;

/// The cause of an [`Error`]: any error that may cross threads.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of kind `K`, keeping the error that caused it.
pub struct Error<K> {
    kind: K,
    source: Option<BoxError>,
}

impl<K> Error<K> {
    /// An error of `kind` caused by `source`.
    pub fn new(kind: K, source: impl Into<BoxError>) -> Self {
        Error {
            kind,
            source: Some(source.into()),
        }
    }

    /// What failed.
    pub fn kind(&self) -> &K {
        &self.kind
    }

    /// The cause, as this error was given it (for downcasting).
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl<K> From<K> for Error<K> {
    /// An error with nothing underneath: the kind says it all.
    fn from(kind: K) -> Self {
        Error { kind, source: None }
    }
}

impl<K: fmt::Display> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {source}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<K: fmt::Debug> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl<K: fmt::Debug + fmt::Display> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The messages a chain of errors adds, outermost first, each once: a message that an
/// outer one already ends with (because its `Display` shows its source, as [`Error`]
/// does) is not repeated. For printing an error and its causes on one line.
pub fn chain_messages(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let message = e.to_string();
        if !out.ends_with(&message) {
            out.push_str(": ");
            out.push_str(&message);
        }
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Read,
    }

    impl fmt::Display for Kind {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("cannot read")
        }
    }

    #[test]
    fn keeps_its_source_and_shows_it_once_in_a_chain() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::new(Kind::Read, io);
        assert_eq!(*e.kind(), Kind::Read);
        assert_eq!(e.to_string(), "cannot read: no such file");
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("no such file"));
        let io = e.cause().and_then(|c| c.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
        assert_eq!(chain_messages(&e), "cannot read: no such file");
        let bare: Error<Kind> = Kind::Read.into();
        assert_eq!(bare.to_string(), "cannot read");
        assert!(std::error::Error::source(&bare).is_none());
    }
}
