//! One file per notifier kind, each sending one rendered message its way.
//! A kind's shape (what its messages are made of) is
//! [`crate::config::Shape`]; adding a kind touches its file here, the
//! channel enum and its shape, and the docs.

pub(crate) mod email;
pub(crate) mod log;
pub(crate) mod webhook;
