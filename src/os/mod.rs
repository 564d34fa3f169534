//! Operating-system helpers shared by the parent and its child processes:
//! process trees, exit statuses, the allocator, shared-memory segments and
//! the descriptors that carry them, and locks that survive a
//! panic or a fork.

pub mod exit_status;
pub mod fd_passing;
pub mod fork_reset;
pub mod memory;
pub mod process_tree;
pub mod segment;
pub mod sync;
pub mod thread;
pub mod tree_memory;
