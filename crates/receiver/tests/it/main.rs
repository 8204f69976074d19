//! Receiver integration tests: a real broker, the real receiver on port 0, real sockets.

mod bad_input;
mod delivery;
mod helpers;
mod limits;
