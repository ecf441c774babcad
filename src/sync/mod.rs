pub mod invite;
