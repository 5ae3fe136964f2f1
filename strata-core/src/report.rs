//! One-line error reports for binaries: an error and its causes, each cause shown once.

use std::error::Error;

/// `outer: cause: root cause`, skipping a cause whose text the report already ends with.
///
/// Library errors name what failed and often include their cause's text in their own
/// message (`cannot connect to /run/strata/fs.sock: No such file or directory`) while also
/// exposing it as `source()`; printing the plain chain would show the cause twice.
pub fn error_chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot connect to /s: {source}")]
    struct Connect {
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("calling fs.stat")]
    struct Calling {
        #[source]
        source: Connect,
    }

    #[test]
    fn a_cause_already_in_the_message_is_shown_once() {
        let io = std::io::Error::from_raw_os_error(2);
        let err = Calling {
            source: Connect { source: io },
        };
        assert_eq!(
            error_chain(&err),
            "calling fs.stat: cannot connect to /s: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_cause_not_in_the_message_is_appended() {
        let err = Calling {
            source: Connect {
                source: std::io::Error::other("boom"),
            },
        };
        assert_eq!(
            error_chain(&err),
            "calling fs.stat: cannot connect to /s: boom"
        );
    }
}
