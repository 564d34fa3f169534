//! The wire: every byte layout and code that crosses a process or language
//! boundary, defined once. The bindings export each constant to Python
//! (`deadpool._core.TAG_OK`, `STATUS_PID`, `WORKER_REQUEST`, `EVENT_LOST`,
//! `CANCEL_KILLED_RUNNING`, `SUBMIT_FULL`, ...) and the Python side imports
//! them instead of keeping copies; tests/test_wire.py sends every kind across.
//!
//! - [`frame`]: pool <-> worker frames on the private task and result pipes.
//! - [`status`]: zygote -> pool records on a worker's status pipe.
//! - [`request`]: pool -> zygote messages on the control socket.
//! - [`dispatch`]: core -> shim event kinds, and the answers of a cancel and
//!   of a non-blocking submit.

/// A code on the wire: a `#[repr]` enum with every variant in `ALL` (so the
/// bindings export each one and decoders reject what is not listed). Python
/// sees each as `PREFIX_NAME`, the variant's name in upper snake case
/// (`Tag::Ok` is `TAG_OK`, `EventKind::TimedOut` is `EVENT_TIMED_OUT`).
macro_rules! wire_codes {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $repr:ty { $($variant:ident = $value:literal),+ $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr($repr)]
        pub enum $name { $($variant = $value),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            // Event kinds and cancel replies are decoded only in Python.
            #[allow(dead_code)]
            pub fn from_value(value: $repr) -> Option<$name> {
                $name::ALL.iter().copied().find(|code| *code as $repr == value)
            }

            pub fn python_name(self) -> String {
                let variant = match self {
                    $($name::$variant => stringify!($variant),)+
                };
                $crate::wire::upper_snake(variant)
            }
        }
    };
}

/// `TimedOut` -> `TIMED_OUT`.
pub fn upper_snake(camel: &str) -> String {
    let mut snake = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            snake.push('_');
        }
        snake.push(c.to_ascii_uppercase());
    }
    snake
}

pub mod dispatch;
pub mod frame;
pub mod request;
pub mod status;

#[cfg(test)]
mod tests {
    use super::dispatch::{CancelReply, EventKind, SubmitReply};
    use super::frame::Tag;
    use super::status::StatusKind;
    use std::collections::HashSet;

    fn assert_distinct<T: Copy>(all: &[T], value: fn(T) -> u32, name: fn(T) -> String) {
        let values: HashSet<u32> = all.iter().map(|c| value(*c)).collect();
        let names: HashSet<String> = all.iter().map(|c| name(*c)).collect();
        assert_eq!((values.len(), names.len()), (all.len(), all.len()));
    }

    #[test]
    fn python_names_are_upper_snake_case() {
        assert_eq!(EventKind::TimedOut.python_name(), "TIMED_OUT");
        assert_eq!(Tag::Ok.python_name(), "OK");
        assert_eq!(CancelReply::RemovedPending.python_name(), "REMOVED_PENDING");
    }

    #[test]
    fn every_code_has_its_own_value_and_name_and_round_trips() {
        assert_distinct(Tag::ALL, |c| c as u32, Tag::python_name);
        assert_distinct(StatusKind::ALL, |c| c as u32, StatusKind::python_name);
        assert_distinct(EventKind::ALL, |c| c as u32, EventKind::python_name);
        assert_distinct(CancelReply::ALL, |c| c as u32, CancelReply::python_name);
        assert_distinct(SubmitReply::ALL, |c| c as u32, SubmitReply::python_name);
        assert!(Tag::ALL
            .iter()
            .all(|c| Tag::from_value(*c as u8) == Some(*c)));
        assert!(StatusKind::ALL
            .iter()
            .all(|c| StatusKind::from_value(*c as u32) == Some(*c)));
    }
}
