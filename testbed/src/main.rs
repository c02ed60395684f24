//! `testbed serve`: the test control plane as a process (wired up once both servers land).
fn main() {}
