//! `aim sim fidelity` (filled in below).
