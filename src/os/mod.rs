//! Operating-system helpers shared by the parent and its child processes:
//! process trees, exit statuses, the allocator, and locks that survive a
//! panic or a fork.

pub mod exit_status;
pub mod fork_reset;
pub mod memory;
pub mod process_tree;
pub mod sync;
pub mod thread;
pub mod tree_memory;
