//! The CLI's error: a message for the user, built from any error with `?`.
//!
//! The library's errors (`duct::Error`), I/O errors and the CLI's own checks all end up as
//! one line on stderr, `duct: <message>`, and exit code 1.

use std::fmt;

/// An error to show the user: its `Display` is the whole message.
#[derive(Debug)]
pub struct CliError(String);

/// Result with [`CliError`].
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// An error with this message.
    pub fn msg(message: impl Into<String>) -> CliError {
        CliError(message.into())
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> CliError {
        CliError(format!("{context}: {}", self.0))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// Like anyhow: any error converts, keeping its message. `CliError` itself does not
// implement `std::error::Error`, or this impl would overlap with `From<T> for T`.
impl<E: std::error::Error> From<E> for CliError {
    fn from(e: E) -> CliError {
        CliError(e.to_string())
    }
}

/// Adds context to the error of a `Result`, as in `.context("binding the listener")?`.
pub trait Context<T> {
    /// On error, puts `context: ` in front of the message.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// Like [`Context::context`], with the context built only on error.
    fn with_context<D: fmt::Display>(self, context: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<CliError>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }

    fn with_context<D: fmt::Display>(self, context: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

/// Returns early with a [`CliError`] built like `format!`.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::CliError::msg(format!($($arg)*)))
    };
}
pub(crate) use bail;
