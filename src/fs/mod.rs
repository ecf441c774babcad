//! The filesystem state machine: ops, registers with heads, and the projected tree.

pub mod op;
