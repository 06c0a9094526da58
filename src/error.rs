//! A refused configuration. A leaf, so every stage that validates its own part of the config can
//! name the key without importing the config module.

use std::fmt;

/// The key (a path such as `ignored_patterns[1]`) and what is wrong with it. Messages never
/// quote a value that could be a secret pasted into the wrong key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "invalid plugin configuration: {}", self.message)
        } else {
            write!(
                f,
                "invalid plugin configuration: `{}`: {}",
                self.key, self.message
            )
        }
    }
}
