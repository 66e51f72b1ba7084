//! `aim sim bench` (filled in below).
