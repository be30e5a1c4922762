//! berth-shim: one process per container (skeleton).

fn main() {}
